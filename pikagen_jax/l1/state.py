"""What the seed 000/001 model trains: the L1Model, its optimizer, and the config checks they rely on."""

from __future__ import annotations

import ml_collections
import optax
from flax import nnx

from pikagen_jax.models.l1_model import L1Model, L1ModelConfig
from pikagen_jax.training.precision import compute_dtype

# Names under which the parts are checkpointed.
CHECKPOINT_ITEMS = ("model", "optimizer")
LOSS_KINDS = ("l1", "clip", "l1+clip")
WEIGHT_DECAY_MODES = ("l2", "decoupled")
EVAL_CAPTIONS = ("auto", "original", "enriched")


def loss_needs_clip(config: ml_collections.ConfigDict) -> bool:
    """True for the 'clip' and 'l1+clip' losses."""
    return "clip" in config.loss.kind


def validate_config(config: ml_collections.ConfigDict) -> None:
    """The L1 system's own checks (the shared ones are in config_utils.validate_common), with the fix named."""
    if config.loss.kind not in LOSS_KINDS:
        raise ValueError(f"loss.kind={config.loss.kind!r} must be one of {LOSS_KINDS}")
    if loss_needs_clip(config) and not config.clip.checkpoint:
        raise ValueError(
            f"loss.kind={config.loss.kind!r} needs a CLIP model, but clip.checkpoint is empty. No CLIP weights "
            "exist offline: pass a Hugging Face CLIP checkpoint, e.g. --config.clip.checkpoint=/path/to/"
            "clip-vit-base-patch32 (or the hub name openai/clip-vit-base-patch32 with internet access), or train "
            "with --config.loss.kind=l1")
    if config.loss.clip_weight < 0:
        raise ValueError(f"loss.clip_weight must be >= 0, got {config.loss.clip_weight}")
    if config.optim.weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"optim.weight_decay_mode={config.optim.weight_decay_mode!r} must be one of "
                         f"{WEIGHT_DECAY_MODES}")
    if config.optim.lr <= 0 or config.optim.weight_decay < 0:
        raise ValueError(f"need optim.lr > 0 and optim.weight_decay >= 0, got lr={config.optim.lr}, "
                         f"weight_decay={config.optim.weight_decay}")
    if config.eval.caption not in EVAL_CAPTIONS:
        raise ValueError(f"eval.caption={config.eval.caption!r} must be one of {EVAL_CAPTIONS}")
    for name in ("every_epochs", "batch_size"):
        if config.eval[name] < 1:
            raise ValueError(f"eval.{name} must be >= 1, got {config.eval[name]}")
    if config.report.every_epochs < 1 or config.report.num_examples < 1:
        raise ValueError("report.every_epochs and report.num_examples must be >= 1")
    if config.train.early_stop_patience < 0 or config.train.early_stop_min_delta < 0:
        raise ValueError("train.early_stop_patience and train.early_stop_min_delta must be >= 0 (patience 0 = "
                         f"no early stopping), got {config.train.early_stop_patience} and "
                         f"{config.train.early_stop_min_delta}")
    compute_dtype(config)  # checks train.mixed_precision
    model_config(config)  # checks the model fields


def model_config(config: ml_collections.ConfigDict) -> L1ModelConfig:
    """`config.model` (+ `data.image_size`) as an L1ModelConfig; unknown or invalid fields raise."""
    values = config.model.to_dict()
    if "image_size" in values:
        raise ValueError("set the output size with data.image_size, not model.image_size")
    return L1ModelConfig.from_dict({**values, "image_size": config.data.image_size})


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam with weight decay.

    'l2' (default, the seed's `torch.optim.Adam(lr, weight_decay=wd)`): wd·θ is added to the gradient
    before Adam's moments, i.e. `chain(add_decayed_weights(wd), adam(lr))`. 'decoupled': AdamW, where the
    decay bypasses the moments (`optax.adamw`). Both decay every parameter, as PyTorch does.
    """
    if optim.weight_decay_mode == "l2":
        return optax.chain(optax.add_decayed_weights(optim.weight_decay),
                           optax.adam(optim.lr, b1=optim.b1, b2=optim.b2))
    if optim.weight_decay_mode == "decoupled":
        return optax.adamw(optim.lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    raise ValueError(f"optim.weight_decay_mode={optim.weight_decay_mode!r} must be one of {WEIGHT_DECAY_MODES}")


def trainable_filter(config: ml_collections.ConfigDict):
    """Parameters the optimizer updates: all of them, or all but BERT's with `optim.freeze_bert`."""
    if config.optim.freeze_bert:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("bert")))
    return nnx.Param


def check_text_fits_model(config: ml_collections.ConfigDict, model: L1Model) -> None:
    """The tokenizer's ids and lengths must fit BERT's tables (a larger id would silently become NaN)."""
    from pikagen_jax.data.pipeline import tokenizer_from_config

    bert = model.encoder.bert.config
    tokenizer = tokenizer_from_config(config)
    if tokenizer.vocab_size > bert.vocab_size:
        raise ValueError(
            f"the {config.text.tokenizer} tokenizer has {tokenizer.vocab_size} tokens but the BERT stage "
            f"{config.model.bert_checkpoint!r} embeds only {bert.vocab_size}: use a BERT with the bert-base-uncased "
            "vocabulary (model.bert_checkpoint='minilm', 'bert_mini' or a Hugging Face checkpoint)")
    if config.text.max_length > bert.max_position_embeddings:
        raise ValueError(f"text.max_length={config.text.max_length} exceeds BERT's {bert.max_position_embeddings} "
                         f"positions; use --config.text.max_length={bert.max_position_embeddings}")


class L1State(nnx.Module):
    """The model, its optimizer and, for the CLIP losses, the frozen CLIP model the loss runs (not trained,
    not checkpointed). The model stays in train mode; evaluation passes `deterministic=True`."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs, clip: nnx.Module | None = None):
        """`clip`: a loaded `pikagen_jax.models.clip.CLIPModel`; the CLIP losses load `clip.checkpoint`
        when it is not given."""
        self.model = L1Model(model_config(config), dtype=compute_dtype(config), rngs=rngs)
        check_text_fits_model(config, self.model)
        self.trainable = trainable_filter(config)
        self.optimizer = nnx.Optimizer(self.model, make_optimizer(config.optim), wrt=self.trainable)
        if loss_needs_clip(config) and clip is None:
            from pikagen_jax.models.clip import CLIPModel

            clip = CLIPModel.from_pretrained(config.clip.checkpoint, dtype=compute_dtype(config))
        self.clip = clip if loss_needs_clip(config) else None

    def checkpoint_items(self) -> dict:
        """The named nodes saved in checkpoints."""
        return {name: getattr(self, name) for name in CHECKPOINT_ITEMS}
