"""Latent diffusion end to end: the three-stage smoke run from launch.py, stage chaining, resume after an
interruption, the NaN guard, generation through the shared sampler interface (DDIM / DDPM / guidance)."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from tests.launch_helpers import as_numpy, launch, small_config


def _smoke_config(small_data, *overrides: str):
    return small_config("configs/diffusion.py:smoke", small_data, *overrides)


@pytest.fixture(scope="module")
def smoke_run(small_data, tmp_path_factory):
    """`launch.py --config=configs/diffusion.py:smoke` (all three stages) in a subprocess."""
    workdir = tmp_path_factory.mktemp("diffusion_smoke")
    return workdir, launch("configs/diffusion.py:smoke", workdir, small_data)


def _restore(folder, names):
    """The latest checkpoint's items `names` in `folder`, as saved (nested dicts of arrays)."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(folder.resolve() / "checkpoints",
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    restored = manager.restore(manager.latest_step(),
                               args=ocp.args.Composite(**{name: ocp.args.StandardRestore() for name in names}))
    return {name: jax.tree.map(as_numpy, restored[name]) for name in names}


def test_smoke_run_writes_each_stage_checkpoints_events_and_grids(smoke_run):
    from PIL import Image

    workdir, log = smoke_run
    expected = {"vae": {"text_encoder", "vae", "opt_vae"},
                "unet": {"text_encoder", "vae", "latent_stats", "unet", "ema_unet", "opt_unet"},
                "text": {"text_encoder", "vae", "latent_stats", "unet", "ema_unet", "opt_text"}}
    for stage, items in expected.items():
        folder = workdir / stage
        assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["2"], stage
        saved = {p.name for p in (folder / "checkpoints" / "2").iterdir() if p.is_dir()}
        assert items | {"config", "data_iterator"} == saved, stage
        assert list(folder.glob("events.out.tfevents.*")), stage
        grid = np.asarray(Image.open(folder / "samples" / "step_0000002.png"))
        assert grid.shape == (2 * 64 + 2, 3 * 64 + 2 * 2, 3), stage  # real row + reconstruction / sample row
        assert grid.std() > 0
    record = json.loads((workdir / "vae" / "perceptual.json").read_text())
    assert record["network"] == "none" and "no perceptual term" in record["description"]
    assert "stage unet: restored ['text_encoder', 'vae']" in log and "latent scale" in log
    assert log.count("step 2/2") == 3


def test_stages_take_over_the_previous_stage_networks(smoke_run):
    workdir, _ = smoke_run
    vae_stage = _restore(workdir / "vae", ["vae", "text_encoder"])
    unet_stage = _restore(workdir / "unet", ["vae", "text_encoder", "unet", "ema_unet", "latent_stats"])
    text_stage = _restore(workdir / "text", ["vae", "text_encoder", "unet", "ema_unet", "latent_stats"])
    same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)  # noqa: E731
    same(unet_stage["vae"], vae_stage["vae"])  # the U-Net stage trained on the VAE stage's final VAE
    same(unet_stage["text_encoder"], vae_stage["text_encoder"])  # frozen in both
    for name in ("vae", "unet", "ema_unet", "latent_stats"):
        same(text_stage[name], unet_stage[name])  # frozen in the text stage
    scale = float(np.asarray(unet_stage["latent_stats"]["scale"]["value"]))
    assert scale > 0 and scale != 1.0  # estimated from the VAE's latents
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), text_stage["text_encoder"],
                                           unet_stage["text_encoder"]))
    assert any(changed)  # the text stage fine-tuned (part of) the text encoder


def test_a_stage_without_its_previous_stage_fails_with_the_command(small_data, tmp_path):
    from pikagen_jax.diffusion.train import train_and_evaluate

    with pytest.raises(FileNotFoundError, match="--config.stage=vae"):
        train_and_evaluate(_smoke_config(small_data, "stage=unet"), tmp_path)


def test_taking_over_networks_of_another_configuration_fails(smoke_run, small_data, tmp_path):
    from pikagen_jax.diffusion.train import train_and_evaluate

    workdir, _ = smoke_run
    shutil.copytree(workdir / "vae", tmp_path / "vae")
    with pytest.raises(ValueError, match="config.vae"):
        train_and_evaluate(_smoke_config(small_data, "stage=unet", "vae.latent_channels=4"), tmp_path)


@pytest.mark.slow  # two U-Net stage runs: ~2 min on 2 CPU cores
def test_unet_stage_resumes_after_a_crash_with_identical_losses(smoke_run, small_data, tmp_path):
    """The U-Net stage, having lost its step-4 checkpoint (a crash after step 2's), resumes at step 2 (latent
    scale and EMA restored, not re-estimated) and reaches the uninterrupted run's step-4 metrics."""
    from pikagen_jax.diffusion import train

    workdir, _ = smoke_run
    config = _smoke_config(small_data, "stage=unet", "stages.unet.num_steps=4")
    shutil.copytree(workdir / "vae", tmp_path / "vae")
    straight = train.train_and_evaluate(config, tmp_path)
    assert straight.recompiles == 0
    shutil.rmtree(tmp_path / "unet" / "checkpoints" / "4")
    resumed = train.train_and_evaluate(config, tmp_path)
    assert resumed.start_step == 2 and resumed.final_step == 4
    for name in ("loss", "mse", "grad_norm", "lr", "ema_decay"):
        np.testing.assert_allclose(resumed.last_metrics[name], straight.last_metrics[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_nonfinite_vae_batch_is_skipped_and_state_unchanged(small_data):
    from pikagen_jax.diffusion.state import DiffusionState
    from pikagen_jax.diffusion.steps import vae_step

    config = _smoke_config(small_data, "train.num_steps=10")
    state = DiffusionState(config, "vae", rngs=nnx.Rngs(0))
    batch = {"image": np.full((4, 64, 64, 3), np.nan, np.float32),
             "token_ids": np.full((4, 16), 1000, np.int32), "attention_mask": np.ones((4, 16), np.int32)}
    before = jax.tree.map(as_numpy, nnx.state((state.vae, state.opt_vae)))
    metrics = nnx.jit(lambda s, b: vae_step(s, b, 0, config, 10))(state, batch)
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    after = jax.tree.map(as_numpy, nnx.state((state.vae, state.opt_vae)))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_generation_through_the_run_sampler(smoke_run):
    from pikagen_jax.data.pipeline import tokenizer_from_config
    from pikagen_jax.run_sampler import load_run_sampler

    workdir, _ = smoke_run
    sampler = load_run_sampler(workdir, sampling_steps=4, guidance_scale=2.0, batch_size=4)
    assert sampler.conditional and sampler.step == 2 and sampler.config.system == "diffusion"
    assert "stage text" in sampler.description and "ddim, 4 steps, guidance 2" in sampler.description
    ids, mask = tokenizer_from_config(sampler.config)(["A small blue turtle.", "A fiery lizard.", "A bird."])
    images = sampler.generate(ids, mask, 3)
    assert images.shape == (3, 64, 64, 3) and np.abs(images).max() <= 1.0
    np.testing.assert_array_equal(images, sampler.generate(ids, mask, 3))  # same seed, same images
    assert not np.allclose(images, sampler.generate(ids, mask, 4))
    # DDIM (eta 0): an image depends on its own noise and text only, not on the batch it is computed in
    small_batches = load_run_sampler(workdir, sampling_steps=4, guidance_scale=2.0, batch_size=2)
    np.testing.assert_allclose(small_batches.generate(ids, mask, 3), images, atol=1e-5)
    with pytest.raises(ValueError, match="no best checkpoint"):
        load_run_sampler(workdir, best=True)
    with pytest.raises(ValueError, match="takes no option"):
        load_run_sampler(workdir, z_dim=3)


def test_generate_command_flags_for_diffusion(smoke_run, tmp_path):
    from pikagen_jax import generate

    workdir, _ = smoke_run
    out = tmp_path / "grid.png"
    args = generate.parse_args([f"--workdir={workdir}", "--prompt=A green seed creature.", "--num=2", f"--out={out}",
                                "--sampler=ddpm", "--guidance_scale=1.5"])
    images = generate.generate(args)  # DDPM: all 1000 steps
    assert images.shape == (2, 64, 64, 3) and out.is_file() and not np.allclose(images[0], images[1])
    assert generate.main([f"--workdir={workdir}", "--prompt=x", "--sampling_steps=0"]) == 2
    assert generate.main([f"--workdir={workdir}", "--num=2"]) == 2  # a text-conditioned run needs a prompt
    only_vae = tmp_path / "only_vae"
    shutil.copytree(workdir / "vae", only_vae / "vae")
    assert generate.main([f"--workdir={only_vae}", "--prompt=x"]) == 2  # no U-Net trained yet
