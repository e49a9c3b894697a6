"""PyTorch reference of the seed-002 cGAN and its train step, mirroring `pikagen_jax.models.gan` and
`pikagen_jax.gan.steps.gan_step` (same widths, same parameter counts, same work per step).

    text = TorchTextEncoder(bert_mini_config(), finetune="partial")
    gen, disc = TorchGenerator(64), TorchDiscriminator(64)
    trainer = TorchGanTrainer(text, gen, disc)
    metrics = trainer.step(images_nchw, token_ids, attention_mask)

Layout is PyTorch's NCHW. Discriminator convolutions use `torch.nn.utils.spectral_norm` (one power iteration
in training mode, none in eval mode); MA-GP runs D in eval mode (frozen power iteration), as ours does with
`update_stats=False`.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

LEAKY_SLOPE = 0.2
GROUP_NORM_EPS = 1e-5


def bert_mini_config(**overrides) -> BertConfig:
    """Hugging Face config of BERT-mini (4 layers, 256 wide, 4 heads, FF 1024, bert-base-uncased vocab)."""
    values = dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024, max_position_embeddings=512, type_vocab_size=2)
    return BertConfig(**{**values, **overrides})


def num_stages(image_size: int) -> int:
    """Number of 2× stages between 4×4 and `image_size` (a power of two >= 8)."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8 (e.g. 64, 128, 256), got {image_size!r}")
    return int(math.log2(image_size)) - 2


def channels_at(resolution: int, image_size: int, base_channels: int, max_channels: int) -> int:
    return min(max_channels, base_channels * (image_size // resolution))


def num_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of a torch module (optionally only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, num_groups), channels, eps=GROUP_NORM_EPS)


# ------------------------------------------------------------------------------------------- text encoder


def partial_finetune_names(bert: BertModel, mode: str) -> list[str]:
    """Names of BERT parameters trained under `mode` ('none' | 'partial' | 'full'), as seed 002 §3.1.3:
    partial = word embeddings, last layer, every LayerNorm, pooler."""
    if mode not in ("none", "partial", "full"):
        raise ValueError(f"unknown finetune mode {mode!r}; use 'none', 'partial' or 'full'")
    last = f"encoder.layer.{bert.config.num_hidden_layers - 1}."
    names = []
    for name, _ in bert.named_parameters():
        if mode == "full" or (mode == "partial" and (
                name.startswith(("embeddings.word_embeddings.", "pooler.", last)) or "LayerNorm" in name)):
            names.append(name)
    return names


class TorchTextEncoder(nn.Module):
    """Hugging Face BertModel (random init) -> (token states [B, T, H], pooled sentence [B, H]).

    The BERT width equals the GAN's text width (256), so there are no projection heads, as in ours with
    BERT-mini. Runs in eval mode (no dropout), like ours (`deterministic=True`).
    """

    def __init__(self, config: BertConfig | None = None, *, finetune: str = "partial"):
        super().__init__()
        self.bert = BertModel(config or bert_mini_config(), add_pooling_layer=True)
        trained = set(partial_finetune_names(self.bert, finetune))
        for name, param in self.bert.named_parameters():
            param.requires_grad_(name in trained)
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


# ----------------------------------------------------------------------------------------------- generator


class Upsample(nn.Module):
    def __init__(self, c_in: int, c_out: int, mode: str = "bilinear"):
        super().__init__()
        if mode not in ("bilinear", "transposed"):
            raise ValueError(f"upsample must be 'bilinear' or 'transposed', got {mode!r}")
        self.mode = mode
        self.conv = (nn.Conv2d(c_in, c_out, 3, padding=1) if mode == "bilinear"
                     else nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "bilinear":
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(x)


class GeneratorResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_groups: int = 32):
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(c_in, c_out, 3, padding=1), _group_norm(c_out, num_groups)
        self.conv2, self.norm2 = nn.Conv2d(c_out, c_out, 3, padding=1), _group_norm(c_out, num_groups)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = F.silu(self.norm2(self.conv2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class CrossAttention(nn.Module):
    """Pixels attend to tokens with L2-normalised q/k (scale 1/sqrt(head_dim)); added residually."""

    def __init__(self, channels: int, token_dim: int = 256, num_heads: int = 4, head_dim: int = 64):
        super().__init__()
        inner = num_heads * head_dim
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(token_dim, inner, bias=False)
        self.to_v = nn.Linear(token_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, channels)
        self.num_heads, self.head_dim = num_heads, head_dim

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        split = lambda t: t.view(batch, t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = split(self.to_q(x.flatten(2).transpose(1, 2)))
        k, v = split(self.to_k(tokens)), split(self.to_v(tokens))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=(mask > 0)[:, None, None, :],
                                                  scale=1.0 / math.sqrt(self.head_dim))
        out = self.to_out(attended.transpose(1, 2).reshape(batch, height * width, -1))
        return x + out.transpose(1, 2).reshape(batch, channels, height, width)


class GeneratorStage(nn.Module):
    def __init__(self, c_in: int, c_out: int, *, upsample: str, num_groups: int, token_dim: int, num_heads: int,
                 head_dim: int):
        super().__init__()
        self.upsample = Upsample(c_in, c_out, upsample)
        self.block = GeneratorResBlock(c_out, c_out, num_groups)
        self.attention = CrossAttention(c_out, token_dim, num_heads, head_dim)

    def forward(self, x, tokens, mask):
        return self.attention(self.block(self.upsample(x)), tokens, mask)


class TorchGenerator(nn.Module):
    """(z [B, z_dim], sentence [B, S], tokens [B, T, S], mask [B, T]) -> images [B, 3, size, size] in [-1, 1]."""

    def __init__(self, image_size: int = 128, *, z_dim: int = 100, sentence_dim: int = 256, token_dim: int = 256,
                 base_channels: int = 32, max_channels: int = 256, upsample: str = "bilinear",
                 num_groups: int = 32, num_heads: int = 4, head_dim: int = 64):
        super().__init__()
        stages = num_stages(image_size)
        self.widths = [channels_at(4 * 2**i, image_size, base_channels, max_channels) for i in range(stages + 1)]
        self.z_dim = z_dim
        self.project = nn.Linear(z_dim + sentence_dim, 16 * self.widths[0])
        self.stages = nn.ModuleList([
            GeneratorStage(a, b, upsample=upsample, num_groups=num_groups, token_dim=token_dim, num_heads=num_heads,
                           head_dim=head_dim) for a, b in zip(self.widths[:-1], self.widths[1:])])
        self.head_norm = _group_norm(self.widths[-1], num_groups)
        self.head_conv = nn.Conv2d(self.widths[-1], 3, 3, padding=1)

    def forward(self, z, sentence, tokens, mask):
        x = self.project(torch.cat([z, sentence], dim=-1)).view(z.shape[0], 4, 4, self.widths[0])
        x = x.permute(0, 3, 1, 2)  # ours reshapes to NHWC: same element order, then NCHW for torch
        for stage in self.stages:
            x = stage(x, tokens, mask)
        return torch.tanh(self.head_conv(F.silu(self.head_norm(x))))


# ------------------------------------------------------------------------------------------- discriminator


def sn_conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.utils.spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding))


class DiscriminatorResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, downsample: str = "strided"):
        super().__init__()
        if downsample not in ("strided", "avgpool"):
            raise ValueError(f"downsample must be 'strided' or 'avgpool', got {downsample!r}")
        self.conv1, self.conv2 = sn_conv(c_in, c_out, 3, padding=1), sn_conv(c_out, c_out, 3, padding=1)
        if downsample == "strided":
            self.down = sn_conv(c_out, c_out, 4, 2, 1)
            self.skip = sn_conv(c_in, c_out, 4, 2, 1)
        else:
            self.down = None
            self.skip = sn_conv(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), LEAKY_SLOPE)
        h = F.leaky_relu(self.conv2(h), LEAKY_SLOPE)
        if self.down is not None:
            return self.skip(x) + self.down(h)
        skip = F.avg_pool2d(x, 2)
        return (skip if self.skip is None else self.skip(skip)) + F.avg_pool2d(h, 2)


class TorchDiscriminator(nn.Module):
    """(images [B, 3, size, size], sentence [B, S]) -> logits [B]; spectral norm on every conv."""

    def __init__(self, image_size: int = 128, *, sentence_dim: int = 256, base_channels: int = 32,
                 max_channels: int = 256, downsample: str = "strided"):
        super().__init__()
        blocks = num_stages(image_size)
        widths = [channels_at(image_size // 2**i, image_size, base_channels, max_channels) for i in range(blocks + 1)]
        self.stem = sn_conv(3, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList([DiscriminatorResBlock(a, b, downsample) for a, b in zip(widths[:-1], widths[1:])])
        self.head_conv = sn_conv(widths[-1] + sentence_dim, widths[-1], 3, padding=1)
        self.head_out = sn_conv(widths[-1], 1, 4)

    def forward(self, images: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(images), sentence)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The text-free trunk: [B, 3, size, size] -> [B, C, 4, 4]."""
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return x

    def logits(self, features: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """The conditional head: (features [B, C, 4, 4], sentence [B, S]) -> logits [B]."""
        text = sentence[:, :, None, None].expand(-1, -1, *features.shape[2:])
        x = F.leaky_relu(self.head_conv(torch.cat([features, text], dim=1)), LEAKY_SLOPE)
        return self.head_out(x).view(features.shape[0])


# ----------------------------------------------------------------------------------------- losses and step


def d_hinge_loss(real: torch.Tensor, fake: torch.Tensor, mismatch: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real).mean() + 0.5 * F.relu(1 + fake).mean() + 0.5 * F.relu(1 + mismatch).mean()


def ma_gp(disc: TorchDiscriminator, images: torch.Tensor, sentence: torch.Tensor, *, weight: float = 1.5,
          power: float = 6.0) -> torch.Tensor:
    """weight · mean_b(||[∂D/∂x_b, ∂D/∂s_b]||₂^power) on real images with matching text, from its own
    forward pass (the 'separate' D pass). D runs in eval mode here, so its power iteration is frozen."""
    was_training = disc.training
    disc.eval()
    images = images.detach().requires_grad_(True)
    sentence = sentence.detach().requires_grad_(True)
    logits = disc(images, sentence)
    penalty = ma_gp_from_logits(logits, images, sentence, weight=weight, power=power)
    disc.train(was_training)
    return penalty


def ma_gp_from_logits(logits: torch.Tensor, images: torch.Tensor, sentence: torch.Tensor, *, weight: float = 1.5,
                      power: float = 6.0) -> torch.Tensor:
    """MA-GP from logits that `images` and `sentence` (both requires_grad) produced, as DF-GAN's MA_GP."""
    grad_images, grad_sentence = torch.autograd.grad(logits.sum(), (images, sentence), create_graph=True)
    squared = grad_images.pow(2).flatten(1).sum(1) + grad_sentence.pow(2).sum(1)
    return weight * (squared ** (power / 2)).mean()


def d_loss_shared(disc: TorchDiscriminator, images: torch.Tensor, fake: torch.Tensor, sentence: torch.Tensor, *,
                  magp_weight: float = 1.5, magp_power: float = 6.0) -> torch.Tensor:
    """L_D as DF-GAN computes it (and `pikagen_jax.gan.steps.discriminator_loss`): D's trunk runs once on the
    real and once on the fake batch, the real features serve the matching and the mismatched text, and MA-GP
    differentiates the real batch's own forward pass. The real pass runs in D's mode (training: one power
    iteration); the others in eval mode, which reuses the vectors it stored (the same normalised weights)."""
    was_training = disc.training
    images = images.detach().requires_grad_(True)
    sentence_gp = sentence.detach().requires_grad_(True)
    real_features = disc.features(images)
    real = disc.logits(real_features, sentence_gp)
    disc.eval()
    sentence = sentence.detach()
    fake_logits, mismatch = disc.logits(torch.cat([disc.features(fake), real_features]),
                                        torch.cat([sentence, torch.roll(sentence, 1, dims=0)])).chunk(2)
    disc.train(was_training)
    gp = ma_gp_from_logits(real, images, sentence_gp, weight=magp_weight, power=magp_power)
    return d_hinge_loss(real, fake_logits, mismatch) + gp


class TorchGanTrainer:
    """One D update (hinge on real / fake / mismatched text + MA-GP), then one G + text update, then the EMA
    generator, with Adam β=(0, 0.9) and the TTUR learning rates of configs/gan.py.

    `d_pass='shared'` (default) computes L_D as DF-GAN and our step do (`d_loss_shared`: D's trunk on 2B
    images, MA-GP from the real batch's pass); 'separate' runs D on a 3B batch [real; fake; real] and
    MA-GP on its own forward pass (the same loss, 4B images through D instead of 2B)."""

    def __init__(self, text: TorchTextEncoder, gen: TorchGenerator, disc: TorchDiscriminator, *,
                 lr_g: float = 1e-4, lr_d: float = 4e-4, lr_text: float = 2e-5, betas=(0.0, 0.9),
                 magp_weight: float = 1.5, magp_power: float = 6.0, ema_decay: float = 0.999,
                 d_pass: str = "shared"):
        if d_pass not in ("shared", "separate"):
            raise ValueError(f"d_pass must be 'shared' or 'separate', got {d_pass!r}")
        self.d_pass = d_pass
        self.text, self.gen, self.disc = text, gen, disc
        self.ema_gen = copy.deepcopy(gen).requires_grad_(False)
        self.opt_g = torch.optim.Adam(gen.parameters(), lr=lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(disc.parameters(), lr=lr_d, betas=betas)
        text_params = [p for p in text.parameters() if p.requires_grad]
        self.opt_text = torch.optim.Adam(text_params, lr=lr_text, betas=betas) if text_params else None
        self.magp_weight, self.magp_power, self.ema_decay = magp_weight, magp_power, ema_decay

    def step(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
        """images [B, 3, S, S] in [-1, 1], ids / mask int [B, T] -> {'d_loss', 'g_loss'} (host floats)."""
        batch = images.shape[0]
        z_dim = self.gen.z_dim
        # ---- discriminator
        self.disc.train()
        with torch.no_grad():
            tokens, sentence = self.text(ids, mask)
            fake = self.gen(torch.randn(batch, z_dim), sentence, tokens, mask)
        if self.d_pass == "shared":
            d_loss = d_loss_shared(self.disc, images, fake, sentence, magp_weight=self.magp_weight,
                                   magp_power=self.magp_power)
        else:
            logits = self.disc(torch.cat([images, fake, images]),
                               torch.cat([sentence, sentence, torch.roll(sentence, 1, dims=0)]))
            real, fake_logits, mismatch = logits.chunk(3)
            d_loss = d_hinge_loss(real, fake_logits, mismatch) + ma_gp(
                self.disc, images, sentence, weight=self.magp_weight, power=self.magp_power)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # ---- generator (+ text encoder); D frozen and read-only
        self.disc.eval().requires_grad_(False)
        tokens, sentence = self.text(ids, mask)
        fake = self.gen(torch.randn(batch, z_dim), sentence, tokens, mask)
        g_loss = -self.disc(fake, sentence).mean()
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_text is not None:
            self.opt_text.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        if self.opt_text is not None:
            self.opt_text.step()
        self.disc.train().requires_grad_(True)
        with torch.no_grad():
            for ema, param in zip(self.ema_gen.parameters(), self.gen.parameters()):
                ema.lerp_(param, 1.0 - self.ema_decay)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    @torch.inference_mode()
    def sample(self, ids: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Text -> images [B, 3, S, S] with the EMA generator (as `pikagen_jax.gan.sampling`)."""
        tokens, sentence = self.text(ids, mask)
        return self.ema_gen(z, sentence, tokens, mask)
