"""`train_and_evaluate` for the seed 000/001 encoder–attention–decoder model (configs/l1.py).

Trains with the shared loop (resume, logging, checkpoints); every `eval.every_epochs` it computes the
validation L1 (the best checkpoint is kept by it) and redraws the learning curve; every `report.every_epochs`
it writes prediction-vs-ground-truth sheets of fixed train and validation examples. At the end it restores
the best checkpoint and reports train / val / test L1 (and the CLIP score with a CLIP model) in
`workdir/results.json` and TensorBoard. Work directory::

    checkpoints/ best/            Orbax checkpoints (latest N; best by val_l1)
    events.out.tfevents.*         TensorBoard: losses, val_l1, sheets, final/* results
    learning_curves.{json,png}    train / validation L1 per evaluation (+ .pdf)
    sheets/{train,val}_step_*.png prediction-vs-ground-truth sheets (+ .pdf)
    results.json                  final metrics on the best checkpoint
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from pikagen_jax import config_utils
from pikagen_jax.data.pipeline import make_eval_loader, steps_per_epoch
from pikagen_jax.l1 import report
from pikagen_jax.l1.state import L1State, loss_needs_clip, validate_config
from pikagen_jax.l1.steps import EpochMeans, Predictor, make_train_step
from pikagen_jax.models.params import count_params
from pikagen_jax.training import checkpointing, early_stopping
from pikagen_jax.training.logging import create_writer
from pikagen_jax.training.loop import TrainResult, run_training
from pikagen_jax.training.mesh import Mesh, make_mesh, replicate_nodes

RESULTS_FILE = "results.json"
CURVE_SERIES = {"train_l1_epoch": "train L1 (training mode)", "val_l1": "validation L1"}


def resolve_schedule(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, int]:
    """A copy of `config` with the epoch-based fields turned into steps; returns it and the steps per epoch.

    One epoch is a pass over the training split, times `data.augment.rotations` with
    `train.epoch_counts_rotations` (seed 000 stored each rotation as its own example). Fields set > 0 in the
    config (`train.num_steps`, `eval.every_steps`, `train.sample_every`) are kept.
    """
    config = copy.deepcopy(config)
    rotations = int(config.data.augment.rotations)
    per_epoch = steps_per_epoch(config) * (rotations if config.train.epoch_counts_rotations and rotations > 1 else 1)
    if config.train.num_steps <= 0:
        config.train.num_steps = int(config.train.num_epochs) * per_epoch
    if config.eval.every_steps <= 0:
        config.eval.every_steps = int(config.eval.every_epochs) * per_epoch
    if config.train.sample_every <= 0:
        config.train.sample_every = int(config.report.every_epochs) * per_epoch
    return config, per_epoch


def median_train_image(config: ml_collections.ConfigDict) -> np.ndarray:
    """Per-pixel median [S, S, 3] of the training split's sprites at `data.image_size` (no augmentation)."""
    images = np.concatenate([np.asarray(batch["image"], np.float32)
                             for batch in make_eval_loader(config, "train", batch_size=64)])
    return np.median(images, axis=0)


def eval_uses_enriched(config: ml_collections.ConfigDict) -> bool:
    """Whether evaluation captions are the enriched descriptions (`eval.caption`, 'auto' follows training)."""
    if config.eval.caption == "auto":
        captions = config.data.captions
        return captions.enriched > max(captions.original, captions.paraphrase)
    return config.eval.caption == "enriched"


class SplitEvaluator:
    """Eval-mode L1 over whole splits, sheets of fixed examples, and the CLIP score (with a CLIP model)."""

    def __init__(self, model: nnx.Module, config: ml_collections.ConfigDict, mesh: Mesh, clip: Any = None):
        self.config, self.clip = config, clip
        self.enriched = eval_uses_enriched(config)
        self.predictor = Predictor(model, mesh, config.eval.batch_size, seed=config.seed)
        self._fixed: dict[str, dict[str, np.ndarray]] = {}

    def _batches(self, split: str, batch_size: int | None = None):
        loader = make_eval_loader(self.config, split, batch_size=batch_size or self.predictor.batch_size,
                                  enriched=self.enriched)
        return iter(loader)

    def evaluate(self, split: str, clip_score: bool = False) -> dict[str, float]:
        """{'<split>_l1': mean per-example L1, '<split>_count': examples} (+ '<split>_clip_score')."""
        l1, scores = [], []
        for index, batch in enumerate(self._batches(split)):
            predictions, per_example = self.predictor(batch, index)
            l1.append(per_example)
            if clip_score and self.clip is not None:
                scores.append(self.clip.score(predictions, [str(c) for c in batch["caption"]]))
        values = np.concatenate(l1)
        out = {f"{split}_l1": float(values.mean()), f"{split}_count": int(values.size)}
        if scores:
            out[f"{split}_clip_score"] = float(np.concatenate(scores).mean())
        return out

    def fixed_examples(self, split: str) -> dict[str, np.ndarray]:
        """The first `report.num_examples` examples of `split` (cached): the sheets' prompts."""
        if split not in self._fixed:
            batch = next(self._batches(split, batch_size=self.config.report.num_examples))
            self._fixed[split] = {k: np.asarray(v) for k, v in batch.items()}
        return self._fixed[split]

    def sheet(self, split: str, title: str) -> np.ndarray:
        """Prediction-vs-ground-truth sheet (uint8) of the fixed examples of `split`."""
        examples = self.fixed_examples(split)
        size = self.predictor.batch_size
        predictions = np.concatenate([
            self.predictor({k: v[start:start + size] for k, v in examples.items()}, start // size)[0]
            for start in range(0, len(examples["token_ids"]), size)])
        return report.prediction_sheet(examples["image"], predictions, [str(c) for c in examples["caption"]],
                                       title=title)


def _load_clip(config: ml_collections.ConfigDict):
    """A ClipScorer of `clip.checkpoint` (JAX CLIP model + BPE tokenizer), or None without a checkpoint."""
    if not config.clip.checkpoint:
        return None
    from pikagen_jax.metrics.clip_score import ClipScorer
    from pikagen_jax.models.clip import CLIPModel
    from pikagen_jax.training.precision import compute_dtype

    return ClipScorer(CLIPModel.from_pretrained(config.clip.checkpoint, dtype=compute_dtype(config)))


def with_clip_tokens(config: ml_collections.ConfigDict, clip_model: nnx.Module | None) -> ml_collections.ConfigDict:
    """For the CLIP losses, a copy of `config` whose training batches also carry each caption in CLIP's BPE
    (`text.clip_max_length` = the CLIPModel's text length); otherwise `config` itself."""
    if clip_model is None or not loss_needs_clip(config):
        return config
    config = copy.deepcopy(config)
    with config.unlocked():
        config.text.clip_max_length = clip_model.max_text_length
    return config


def final_evaluation(config: ml_collections.ConfigDict, workdir: Path, state: L1State, evaluator: SplitEvaluator,
                     steps_per_epoch_: int, result: TrainResult | None = None) -> dict[str, Any]:
    """Restores the best checkpoint (else keeps the latest weights), evaluates `eval.splits`, writes
    results.json and `final/*` TensorBoard scalars; returns the results. With the run's `result`, results.json
    also records the trained steps and why the run stopped early (None: it ran all `train.num_steps`)."""
    checkpointer = checkpointing.Checkpointer.from_config(workdir, config, read_only=True)
    try:
        source, step = "latest", checkpointer.latest_step()
        if checkpointer.best_metric and checkpointer.best_step() is not None:
            source, step = "best", checkpointer.best_step()
            restored = checkpointer.restore({"model": nnx.state(state.model)}, best=True)
            nnx.update(state.model, restored["model"])
        best_value = checkpointer.best_value
    finally:
        checkpointer.close()
    results: dict[str, Any] = {"checkpoint": source, "step": step, "epoch": (step or 0) / steps_per_epoch_,
                               "best_" + (config.checkpoint.best_metric or "metric"): best_value}
    if result is not None:
        results.update({"trained_steps": result.final_step, "trained_epochs": result.final_step / steps_per_epoch_,
                        "stopped_early": result.stopped_early})
    for split in config.eval.splits:
        try:
            results.update(evaluator.evaluate(split, clip_score=split == "test"))
        except ValueError as error:  # a split the dataset does not have (empty splits are not written)
            logging.warning("final evaluation skips split %r: %s", split, error)
    if evaluator.clip is None:
        results["test_clip_score"] = None  # no CLIP model configured (clip.checkpoint)
    path = Path(workdir) / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    writer = create_writer(workdir)
    writer.write_scalars(step or 0, {f"final/{k}": v for k, v in results.items()
                                     if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None})
    writer.flush()
    logging.info("final results (%s checkpoint, step %s): %s", source, step, results)
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainResult:
    """Trains the seed 000/001 model, resuming from `workdir`; writes results.json on the best checkpoint."""
    workdir = Path(workdir)
    config_utils.validate_common(config, jax.device_count())
    validate_config(config)
    config, per_epoch = resolve_schedule(config)
    logging.info("%d steps per epoch, %d steps (%g epochs); validation every %d steps", per_epoch,
                 config.train.num_steps, config.train.num_steps / per_epoch, config.eval.every_steps)
    mesh = make_mesh()
    clip = _load_clip(config)
    config = with_clip_tokens(config, clip.model if clip is not None else None)
    state = L1State(config, rngs=nnx.Rngs(config.seed), clip=clip.model if clip is not None else None)
    if state.clip is not None:
        replicate_nodes(mesh, state.clip)  # run_training replicates the checkpointed nodes only
    logging.info("parameters: %d (BERT stage %d)", count_params(state.model),
                 count_params(state.model.encoder.bert))
    if config.model.output_prior == "train_median":  # restored from the checkpoint when resuming
        state.model.decoder.set_output_prior(median_train_image(config))
    epoch_means = EpochMeans(("loss", "l1", "clip_loss") if loss_needs_clip(config) else ("loss", "l1"))
    train_step = make_train_step(state, config, mesh, epoch_means)
    evaluator = SplitEvaluator(state.model, config, mesh, clip)
    history = report.CurveHistory(workdir / "learning_curves.json")
    series = dict(CURVE_SERIES, **({"train_loss_epoch": f"train loss ({config.loss.kind})"}
                                   if config.loss.kind != "l1" else {}))

    def eval_fn(step: int) -> dict[str, float]:
        epoch = step / per_epoch
        values = {f"train_{name}_epoch": value for name, value in epoch_means.means().items()}
        values["val_l1"] = evaluator.evaluate("val")["val_l1"]
        history.record(step, epoch, values)
        report.save_figure(report.draw_learning_curves(history.points, series, y_label="L1"),
                           workdir / "learning_curves.png", pdf=config.report.pdf)
        return {**{k: v for k, v in values.items() if math.isfinite(v)}, "epoch": epoch}

    def sample_fn(step: int, writer) -> None:
        epoch = step / per_epoch
        for split in ("train", "val"):
            sheet = evaluator.sheet(split, f"{split}: prediction vs ground truth, epoch {epoch:.4g} (step {step})")
            writer.write_images(step, {f"sheets/{split}": sheet[None]})
            report.save_figure(sheet, workdir / "sheets" / f"{split}_step_{step:07d}.png", pdf=config.report.pdf)

    def stop_fn(step: int) -> str | None:
        values = [p["val_l1"] for p in history.points if p["step"] <= step and "val_l1" in p]
        return early_stopping.stop_reason(values, patience=int(config.train.early_stop_patience),
                                          min_delta=float(config.train.early_stop_min_delta), name="val_l1")

    result = run_training(config, workdir, mesh=mesh, nodes=state.checkpoint_items(), train_step=train_step,
                          sample_fn=sample_fn, eval_fn=eval_fn, stop_fn=stop_fn)
    final_evaluation(config, workdir, state, evaluator, per_epoch, result)
    return result
