"""PyTorch reference of the seed-000/001 encoder–attention–decoder model and its L1 train step, mirroring
`pikagen_jax.models.l1_model.L1Model` (seed 001's final configuration; same parameter counts).

    model = TorchL1Model()                                   # BERT-mini (random) -> 2 encoder layers -> ...
    trainer = TorchL1Trainer(model)
    loss = trainer.step(ids, mask, target_nchw)              # images [B, 3, 215, 215]

BERT is `transformers.BertModel` with BERT-mini's shape (random init, trained); the encoder stack is
`nn.TransformerEncoder` (post-LN, ReLU, dropout 0.3); attention blocks are four Linear layers around
`scaled_dot_product_attention` (query width may differ from the token width, as in ours); the decoder uses
`nn.ConvTranspose2d` stages. Optimiser: Adam(lr 1e-4, weight_decay 1e-5) — PyTorch's coupled L2 decay,
which `optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))` reproduces.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertModel

from bench.torch_reference.gan import bert_mini_config

STAGE_KERNEL, STAGE_STRIDE, STAGE_PADDING = 4, 2, 1


def final_conv_padding(in_size: int, image_size: int, kernel: int, stride: int = 2) -> tuple[int, int]:
    """(padding, output_padding) of the ConvTranspose2d taking in_size to image_size (128 -> 215: 22, 1)."""
    surplus = (in_size - 1) * stride + kernel - image_size
    if surplus < 0:
        raise ValueError(f"cannot crop {in_size} px to {image_size} px: the decoder is too shallow")
    padding = (surplus + 1) // 2
    return padding, 2 * padding - surplus


def masked_mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = (mask > 0).to(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class MultiHeadAttention(nn.Module):
    """Queries [B, Q, query_dim] attend over [B, T, kv_dim] (padding masked) -> [B, Q, out_dim]."""

    def __init__(self, query_dim: int, kv_dim: int, width: int, out_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.query, self.key = nn.Linear(query_dim, width), nn.Linear(kv_dim, width)
        self.value, self.out = nn.Linear(kv_dim, width), nn.Linear(width, out_dim)
        self.num_heads, self.dropout = num_heads, dropout

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        split = lambda t: t.view(t.shape[0], t.shape[1], self.num_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(queries)), split(self.key(keys_values)), split(self.value(keys_values))
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=(mask > 0)[:, None, None, :],
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.out(context.transpose(1, 2).reshape(queries.shape[0], queries.shape[1], -1))


class AttentionBlock(nn.Module):
    """Masked-mean (or given) query -> attention over the tokens -> context [B, out_dim]."""

    def __init__(self, token_dim: int, attention_dim: int, out_dim: int, *, num_heads: int = 4,
                 query_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.attention = MultiHeadAttention(query_dim or token_dim, token_dim, attention_dim, out_dim, num_heads,
                                            dropout)

    def forward(self, tokens, mask, query_source=None):
        if query_source is None:
            query_source = masked_mean_pool(tokens, mask)
        return self.attention(query_source[:, None, :], tokens, mask)[:, 0]


class TextEncoder(nn.Module):
    """BERT -> nn.TransformerEncoder (post-LN, ReLU) -> H [B, T, D]."""

    def __init__(self, num_layers: int = 2, num_heads: int = 4, ff_dim: int = 1024, dropout: float = 0.3,
                 bert_dropout: float = 0.1):
        super().__init__()
        config = bert_mini_config(hidden_dropout_prob=bert_dropout, attention_probs_dropout_prob=bert_dropout)
        self.bert = BertModel(config, add_pooling_layer=True)
        width = self.bert.config.hidden_size
        layer = nn.TransformerEncoderLayer(width, num_heads, ff_dim, dropout, activation="relu", batch_first=True,
                                           norm_first=False)
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.layers(hidden, src_key_padding_mask=mask == 0)


class DecoderStage(nn.Module):
    """ConvTranspose2d(4, 2, 1) -> BatchNorm -> ReLU -> + projected attention context -> Dropout."""

    def __init__(self, c_in: int, c_out: int, token_dim: int, *, attention_dim: int, attention_heads: int,
                 attention_dropout: float, dropout: float):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c_in, c_out, STAGE_KERNEL, STAGE_STRIDE, STAGE_PADDING)
        self.norm = nn.BatchNorm2d(c_out)
        self.attention = AttentionBlock(token_dim, attention_dim, c_out, num_heads=attention_heads, query_dim=c_out,
                                        dropout=attention_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, tokens, mask):
        x = F.relu(self.norm(self.conv(x)))
        context = self.attention(tokens, mask, x.mean(dim=(2, 3)))
        return self.dropout(x + context[:, :, None, None])


class ImageGenerator(nn.Module):
    def __init__(self, context_dim: int, token_dim: int, z_dim: int, *,
                 channels: Sequence[int] = (1024, 512, 256, 128, 64), base_size: int = 8, image_size: int = 215,
                 final_kernel: int = 4, attention_dim: int = 256, attention_heads: int = 4,
                 attention_dropout: float = 0.3, dropout: float = 0.3):
        super().__init__()
        self.channels, self.base_size = tuple(channels), base_size
        self.input_proj = nn.Linear(context_dim + z_dim, base_size * base_size * channels[0])
        self.stages = nn.ModuleList([
            DecoderStage(a, b, token_dim, attention_dim=attention_dim, attention_heads=attention_heads,
                         attention_dropout=attention_dropout, dropout=dropout)
            for a, b in zip(channels[:-1], channels[1:])])
        last = base_size * STAGE_STRIDE ** (len(channels) - 1)
        padding, output_padding = final_conv_padding(last, image_size, final_kernel, STAGE_STRIDE)
        self.to_rgb = nn.ConvTranspose2d(channels[-1], 3, final_kernel, STAGE_STRIDE, padding, output_padding)

    def forward(self, context, z, tokens, mask):
        h = self.input_proj(torch.cat([context, z], dim=-1))
        h = h.view(h.shape[0], self.base_size, self.base_size, self.channels[0]).permute(0, 3, 1, 2)
        for stage in self.stages:
            h = stage(h, tokens, mask)
        return torch.tanh(self.to_rgb(h))


class TorchL1Model(nn.Module):
    """Text -> sprite [B, 3, 215, 215]; defaults are seed 001's final configuration (configs/l1.py: dropout 0.3
    everywhere, BERT included)."""

    def __init__(self, *, bert_dropout: float = 0.3, encoder_layers: int = 2, encoder_heads: int = 4,
                 encoder_ff_dim: int = 1024, encoder_dropout: float = 0.3, attention_dim: int = 256,
                 attention_heads: int = 4, attention_dropout: float = 0.3, z_dim: int = 100,
                 decoder_channels: Sequence[int] = (1024, 512, 256, 128, 64), image_size: int = 215,
                 decoder_dropout: float = 0.3):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = TextEncoder(encoder_layers, encoder_heads, encoder_ff_dim, encoder_dropout, bert_dropout)
        width = self.encoder.bert.config.hidden_size
        self.attention = AttentionBlock(width, attention_dim, attention_dim, num_heads=attention_heads,
                                        dropout=attention_dropout)
        self.decoder = ImageGenerator(attention_dim, width, z_dim, channels=decoder_channels, image_size=image_size,
                                      attention_dim=attention_dim, attention_heads=attention_heads,
                                      attention_dropout=attention_dropout, dropout=decoder_dropout)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        if z is None:
            z = torch.randn(ids.shape[0], self.z_dim)
        tokens = self.encoder(ids, mask)
        return self.decoder(self.attention(tokens, mask), z, tokens, mask)


class TorchL1Trainer:
    """model.train(); L1 loss; Adam(lr, weight_decay) over every parameter (seed 000/001)."""

    def __init__(self, model: TorchL1Model, *, lr: float = 1e-4, weight_decay: float = 1e-5):
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    def step(self, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> float:
        self.model.train()
        loss = F.l1_loss(self.model(ids, mask), target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()

