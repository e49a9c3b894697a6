"""Jitted train and evaluation steps of the seed 000/001 model.

    train:  loss = L1(model(text), image)  |  CLIP(model(text), text)  |  L1 + λ·CLIP;  Adam + weight decay
    eval:   per-example L1 of model(text, z) in eval mode (dropout off, BatchNorm running statistics)

The CLIP loss runs the frozen JAX CLIP model held by the state (`L1State.clip`) inside the jitted step:
1 − cos(CLIP image embedding of the prediction, CLIP text embedding of the caption), the caption arriving
in CLIP's BPE as `clip_token_ids` / `clip_attention_mask` (see `pikagen_jax.data.pipeline`); gradients
flow through CLIP's vision tower and preprocessing into the model, CLIP's weights are not trained.
Dropout, the BERT-output noise and the latent z draw from the model's own rng streams, which are part of the
checkpointed state, so a resumed run draws the same numbers. A step whose loss or gradients are not finite
leaves the parameters and optimizer state unchanged (`skipped`=1).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from pikagen_jax.l1.state import L1State, loss_needs_clip
from pikagen_jax.losses.l1_clip import clip_loss, l1_loss
from pikagen_jax.training.distributed import local_copy
from pikagen_jax.training.guards import restore_nodes_if_nonfinite, snapshot_state
from pikagen_jax.training.jitted_step import make_jitted_step
from pikagen_jax.training.mesh import Mesh, pad_batch, shard_batch

Batch = dict[str, jax.Array]
BATCH_KEYS = ("image", "token_ids", "attention_mask")
CLIP_BATCH_KEYS = ("clip_token_ids", "clip_attention_mask")


def l1_step(state: L1State, batch: Batch, config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
    """Updates `state` in place for one batch; returns scalar metrics (`loss`, `l1`, `clip_loss`, norms,
    `skipped`). The CLIP losses need `state.clip` and the batch's `clip_token_ids` / `clip_attention_mask`."""
    images, ids, mask = batch["image"], batch["token_ids"], batch["attention_mask"]
    kind, weight = config.loss.kind, config.loss.clip_weight
    text_emb = None
    if loss_needs_clip(config):
        if state.clip is None or any(key not in batch for key in CLIP_BATCH_KEYS):
            raise ValueError(f"loss.kind={kind!r} needs the state's CLIP model (clip.checkpoint) and batches with "
                             f"{' and '.join(CLIP_BATCH_KEYS)} (text.clip_max_length > 0)")
        text_emb = jax.lax.stop_gradient(state.clip.text_embeds(batch["clip_token_ids"], batch["clip_attention_mask"]))
    old = snapshot_state(state.model, state.optimizer)  # the frozen CLIP is not updated

    def loss_fn(model, clip):
        pred = model(ids, mask)
        parts = {"l1": l1_loss(pred, images)}
        if text_emb is not None:
            parts["clip_loss"] = clip_loss(clip.image_embeds(pred), text_emb)
        loss = {"l1": lambda: parts["l1"], "clip": lambda: parts["clip_loss"],
                "l1+clip": lambda: parts["l1"] + weight * parts["clip_loss"]}[kind]()
        return loss, parts

    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, state.trainable), has_aux=True)
    (loss, parts), grads = grad_fn(state.model, state.clip)
    state.optimizer.update(state.model, grads)
    skipped = restore_nodes_if_nonfinite((loss, grads), old, state.model, state.optimizer)
    return {"loss": loss, **parts, "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(nnx.state(state.model, nnx.Param)), "skipped": skipped.astype(jnp.int32)}


@jax.jit
def _accumulate(sums: dict[str, jax.Array], count: jax.Array, metrics: dict[str, jax.Array], skipped: jax.Array
                ) -> tuple[dict[str, jax.Array], jax.Array]:
    keep = 1 - skipped.astype(jnp.int32)
    new = {name: sums[name] + jnp.where(keep > 0, metrics[name], 0.0).astype(jnp.float32) for name in sums}
    return new, count + keep


class EpochMeans:
    """Device-side running sums of training metrics between two evaluations (no host sync per step)."""

    def __init__(self, names: tuple[str, ...] = ("loss", "l1")):
        self.names = names
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Any] = {}
        self.count: Any = None

    def add(self, metrics: dict[str, jax.Array]) -> None:
        """Adds one step's metrics; skipped (non-finite) steps are left out."""
        present = {name: metrics[name] for name in self.names if name in metrics}
        if not present:
            return
        like = next(iter(present.values()))
        # Zeros of one dtype and placed like the metrics: every add has one signature and compiles once.
        zero = lambda dtype: jax.device_put(np.zeros((), dtype), like.sharding)  # noqa: E731
        skipped = metrics["skipped"] if "skipped" in metrics else zero(np.int32)
        count = self.count if self.count is not None else zero(np.int32)
        sums = {name: self.sums[name] if name in self.sums else zero(np.float32) for name in present}
        sums, self.count = _accumulate(sums, count, present, skipped)
        self.sums.update(sums)

    def means(self) -> dict[str, float]:
        """{name: mean over the counted steps} on the host (NaN when no step was counted); then resets."""
        count = float(jax.device_get(self.count)) if self.count is not None else 0.0
        out = {name: float(jax.device_get(self.sums[name])) / count if count and name in self.sums else float("nan")
               for name in self.names}
        self.reset()
        return out


def make_train_step(state: L1State, config: ml_collections.ConfigDict, mesh: Mesh,
                    epoch_means: EpochMeans | None = None) -> Callable[[Batch, int], dict[str, jax.Array]]:
    """A host callable `(sharded batch, step) -> metrics` running the jitted step on the replicated,
    donated state (CLIP included) and writing the new state back into `state`; metrics are also added to
    `epoch_means`. Randomness comes from the model's checkpointed rng streams, not from the step number."""
    keys = BATCH_KEYS + (CLIP_BATCH_KEYS if loss_needs_clip(config) else ())
    jitted_step = make_jitted_step(state, lambda model, batch, step: l1_step(model, batch, config), mesh,
                                   batch_keys=keys)

    def train_step(batch: Batch, step: int) -> dict[str, jax.Array]:
        metrics = jitted_step(batch, step)
        if epoch_means is not None:
            epoch_means.add(metrics)
        return metrics

    train_step.jitted = jitted_step.jitted  # for compile-count checks and cost analysis
    return train_step


def eval_noise(seed: int, batch_index: int, batch_size: int, z_dim: int) -> jax.Array:
    """The latent codes of evaluation batch `batch_index` (the same in every evaluation)."""
    key = jax.random.fold_in(jax.random.key(seed), batch_index)
    return jax.random.normal(key, (batch_size, z_dim), jnp.float32)


class Predictor:
    """Eval-mode predictions and per-example L1 over fixed-size, mesh-sharded batches (one compilation).

    Reads the model's current weights at every call, so the same Predictor serves every evaluation.
    """

    def __init__(self, model: nnx.Module, mesh: Mesh, batch_size: int, seed: int):
        num_devices = mesh.devices.size
        self.model, self.mesh, self.seed = model, mesh, seed
        self.batch_size = -(-batch_size // num_devices) * num_devices
        graphdef, _ = nnx.split(model)

        def _predict(variables, ids, mask, z, images):
            model = nnx.merge(graphdef, variables)
            pred = model(ids, mask, z, deterministic=True)
            per_example = jnp.mean(jnp.abs(pred - images.astype(jnp.float32)), axis=(1, 2, 3))
            return pred, per_example

        self._predict = jax.jit(_predict)

    def __call__(self, batch: dict[str, np.ndarray], batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Host batch (up to batch_size examples) -> (predictions [n, S, S, 3], per-example L1 [n]) on host."""
        n = len(batch["token_ids"])
        if n > self.batch_size:
            raise ValueError(f"evaluation batch of {n} exceeds the Predictor's batch size {self.batch_size}")
        arrays = {k: np.asarray(batch[k]) for k in ("image", "token_ids", "attention_mask")}
        padded, _ = pad_batch(arrays, self.batch_size)
        z = eval_noise(self.seed, batch_index, self.batch_size, self.model.config.z_dim)
        variables = nnx.state(self.model)
        if jax.process_count() > 1:
            # every process predicts the whole (small) batch on its own device from its copy of the replicated
            # weights, so all of them compute the same metric (and the same best-checkpoint decision)
            variables, inputs = local_copy(variables), padded
        else:
            inputs = shard_batch(padded, self.mesh)
        pred, per_example = self._predict(variables, inputs["token_ids"], inputs["attention_mask"], z,
                                          inputs["image"])
        pred, per_example = jax.device_get((pred, per_example))
        return np.asarray(pred)[:n], np.asarray(per_example)[:n]
