"""The alignment encoder's jitted step: the trained heads (dropout on) on cached frozen features of augmented
sprites and their captions (`alignment.features`), symmetric InfoNCE over the batch, same-species pairs left
out of each other's negatives."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from pikagen_jax.alignment.state import AlignmentState
from pikagen_jax.losses.alignment import info_nce_loss
from pikagen_jax.training.guards import restore_nodes_if_nonfinite, snapshot_state
from pikagen_jax.training.jitted_step import make_jitted_step
from pikagen_jax.training.mesh import Mesh

MAX_LOG_SCALE = float(jnp.log(100.0))  # CLIP clamps its logit scale at 100
BATCH_KEYS = ("image_features", "text_features", "species")


def alignment_step(state: AlignmentState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """One AdamW update of the heads on a batch of cached features; returns scalar metrics."""
    old = snapshot_state(state.heads, state.opt)

    def loss_fn(heads):
        image_emb = heads.embed_images(batch["image_features"], deterministic=False)
        text_emb = heads.embed_texts(batch["text_features"], deterministic=False)
        return info_nce_loss(image_emb, text_emb, jnp.clip(heads.log_scale[...], 0.0, MAX_LOG_SCALE),
                             groups=batch["species"])

    (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(state.heads)
    state.opt.update(state.heads, grads)
    skipped = restore_nodes_if_nonfinite((loss, grads), old, state.heads, state.opt)
    return {"loss": loss, **parts, "grad_norm": optax.global_norm(grads), "skipped": skipped.astype(jnp.int32)}


def make_train_step(state: AlignmentState, config: ml_collections.ConfigDict, mesh: Mesh
                    ) -> Callable[[dict[str, jax.Array], int], dict[str, jax.Array]]:
    """The jitted, data-parallel step over a batch of cached features."""
    del config  # dropout draws come from the heads' own RNG streams
    return make_jitted_step(state, lambda model, batch, step: alignment_step(model, batch), mesh,
                            batch_keys=BATCH_KEYS)
