"""Images from a trained run of any system, behind one interface (used by `generate` and evaluation).

    sampler = load_run_sampler("workdirs/gan64")                       # latest checkpoint
    sampler = load_run_sampler("workdirs/diffusion", sampler="ddim", sampling_steps=50, guidance_scale=3.0)
    images = sampler.generate(token_ids, attention_mask, seed)         # [N, S, S, 3] float32 in [-1, 1]

`load_run_sampler` reads `config.system` from the run's saved config and calls
`pikagen_jax.<system>.sampling.load_run_sampler(workdir, step, best, **options)`:

| system | conditional | options |
|---|---|---|
| gan | yes | batch_size |
| l1 | yes | batch_size |
| diffusion | yes | sampler ('ddim' / 'ddpm'), sampling_steps, guidance_scale, eta, stage, batch_size |
| dcgan | no (the text arrays only give the image count) | batch_size |

`generate(ids [N, T], mask [N, T], seed)` gives one image per row, deterministic in `seed` (the same seed
and inputs give the same images; for the GAN, L1 and DCGAN, and DDIM diffusion, image i depends only on
row i and the seed). Tokenize text with `pikagen_jax.data.pipeline.tokenizer_from_config(sampler.config)`.
A work directory without checkpoints raises FileNotFoundError; an option the system does not take, or
`best=True` for a run without best checkpoints, raises ValueError.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from pikagen_jax.errors import NoCheckpointError, UsageError
from pikagen_jax.training.sampler import RunSampler

SYSTEM_TRAIN_COMMANDS = "python launch.py --config=configs/<system>.py --workdir={workdir}"


def checkpoint_dirs(workdir: str | Path) -> list[Path]:
    """The run directories under `workdir` that hold `checkpoints/`: workdir itself, or the stage
    sub-folders of a staged run (the diffusion system's `vae/`, `unet/`, `text/`)."""
    workdir = Path(workdir)
    if (workdir / "checkpoints").is_dir():
        return [workdir]
    if not workdir.is_dir():
        return []
    return sorted(p for p in workdir.iterdir() if (p / "checkpoints").is_dir())


def run_system(workdir: str | Path) -> str:
    """`config.system` of the run in `workdir` (read from its latest checkpoint's config)."""
    from pikagen_jax.training.checkpointing import Checkpointer

    for run_dir in checkpoint_dirs(workdir):
        checkpointer = Checkpointer(run_dir, read_only=True)
        if checkpointer.latest_step() is not None:
            return str(checkpointer.restore_config()["system"])
    raise NoCheckpointError(f"no checkpoints in {workdir}: train first with "
                            f"`{SYSTEM_TRAIN_COMMANDS.format(workdir=workdir)}`")


def load_run_sampler(workdir: str | Path, step: int | None = None, best: bool = False, **options: Any
                     ) -> RunSampler:
    """The RunSampler of the run in `workdir` (latest checkpoint, or `step`, or the best with `best`).

    `options` are passed to the system's loader (see the module docstring); unknown ones raise ValueError.
    An exported model folder (`pikagen_jax.export`) works as `workdir` too (`step` and `best` are its own).
    """
    from pikagen_jax import model_folder

    if model_folder.is_model_folder(workdir):
        if step is not None or best:
            raise UsageError(f"{workdir} is an exported model folder: it holds one checkpoint, so --step / --best "
                             "do not apply")
        system = model_folder.read_manifest(workdir)["system"]
    else:
        system = run_system(workdir)
    module = importlib.import_module(f"pikagen_jax.{system}.sampling")
    loader = module.load_run_sampler
    accepted = [name for name, p in inspect.signature(loader).parameters.items()
                if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UsageError(f"{workdir} holds a {system!r} run, whose sampler takes no option(s) {unknown} "
                         f"(it takes {accepted})")
    if model_folder.is_model_folder(workdir):
        return model_folder.load_model_sampler(workdir, **options)
    return loader(Path(workdir), step, best, **options)
