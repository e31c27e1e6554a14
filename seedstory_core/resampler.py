"""Qwen-VL attention-pool ``Resampler``: the ViT's ``attn_pool`` and the agent's input/output resamplers.

Source: docs/reference.md §1 step 5 (ViT attention pool, LayerNorm eps 1e-6, ``kv_proj`` 1664→4096) and §2.3
(agent resamplers: embed 4096, 32 heads, ``kv_dim == embed_dim`` so ``kv_proj`` is an identity, eps 1e-5).
Parameter names equal the official state-dict keys (``query``, ``pos_embed``, ``kv_proj.weight``,
``attn.in_proj_weight``, ``attn.in_proj_bias``, ``attn.out_proj.*``, ``ln_q.*``, ``ln_kv.*``), so official
weights load without a key map.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ResamplerConfig


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table, as the official (MAE-style) ``get_2d_sincos_pos_embed``.

    Returns a float32 tensor of shape (grid_size**2, embed_dim). The first half of the channels encodes the
    column-varying meshgrid coordinate, the second half the row-varying one (official channel order); each half is
    [sin | cos] over ``embed_dim // 4`` frequencies 1 / 10000**(i / (embed_dim/4)). Raises ``ValueError`` if
    embed_dim % 4 != 0.
    """
    if embed_dim % 4:
        raise ValueError(f"sincos_pos_embed_2d needs embed_dim divisible by 4, got {embed_dim}")
    coords = np.arange(grid_size, dtype=np.float32)
    # np.meshgrid(w, h): the first array varies along the column (w) axis, the second along the row (h) axis.
    first, second = np.meshgrid(coords, coords)

    def encode_1d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # The official code encodes meshgrid's first array into the first half of the channels (it calls it emb_h).
    emb = np.concatenate([encode_1d(embed_dim // 2, first), encode_1d(embed_dim // 2, second)], axis=1)
    return torch.from_numpy(emb.astype(np.float32))


def resize_pos_embed(table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bicubically resize a square position table to ``num_tokens`` rows (official ``get_abs_pos``).

    ``table``: (S*S, C); returns (T, C) with T = ``num_tokens`` (a square), computed in float32 with
    ``align_corners=False`` and cast back to the table's dtype. Returns ``table`` itself when sizes match.
    """
    src = int(math.isqrt(table.shape[0]))
    tgt = int(math.isqrt(num_tokens))
    if tgt * tgt != num_tokens:
        raise ValueError(f"resize_pos_embed: {num_tokens} tokens is not a square grid")
    if src == tgt:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)


class QwenResampler(nn.Module):
    """Cross-attention pooling of N tokens onto ``grid_size**2`` learned queries (Qwen-VL ``Resampler``).

    Args:
        config: :class:`~seedstory_core.config.ResamplerConfig`.

    Forward:
        x: (B, T, kv_dim) float — T must be a square number (its key position table is the query table
        bicubic-resized to sqrt(T) x sqrt(T)).
        Returns (B, grid_size**2, embed_dim) in x's dtype.

    Queries = ln_q(query) + pos_embed; keys = ln_kv(kv_proj(x)) + resized pos_embed; values = ln_kv(kv_proj(x));
    attention is a standard ``nn.MultiheadAttention`` (docs/reference.md §1 step 5, §2.3).
    """

    def __init__(self, config: ResamplerConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.num_queries = config.num_queries
        self.query = nn.Parameter(torch.zeros(self.num_queries, dim))
        # The table is built with numpy (CPU); follow the construction device (meta, cuda, ...) like other params.
        table = sincos_pos_embed_2d(dim, config.grid_size).to(self.query.device)
        self.pos_embed = nn.Parameter(table, requires_grad=False)
        nn.init.trunc_normal_(self.query, std=0.02)
        if config.kv_dim != dim:
            self.kv_proj = nn.Linear(config.kv_dim, dim, bias=False)
        else:
            self.kv_proj = nn.Identity()
        self.attn = nn.MultiheadAttention(dim, config.num_heads)
        self.ln_q = nn.LayerNorm(dim, eps=config.layernorm_eps)
        self.ln_kv = nn.LayerNorm(dim, eps=config.layernorm_eps)

    def reset_pos_embed(self) -> None:
        """Recompute the frozen sin-cos table (used after meta-device construction, where it has no data)."""
        table = sincos_pos_embed_2d(self.config.embed_dim, self.config.grid_size)
        self.pos_embed = nn.Parameter(table.to(device=self.query.device, dtype=self.query.dtype), requires_grad=False)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"QwenResampler expects (B, tokens, {self.config.kv_dim}) features, got shape {tuple(x.shape)}"
            )
        key_pos = resize_pos_embed(self.pos_embed, x.shape[1])
        kv = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # (T, B, D)
        batch = kv.shape[1]
        q = self.ln_q(self.query)
        q = q.unsqueeze(1).expand(-1, batch, -1)
        out = self.attn(
            q + self.pos_embed.unsqueeze(1), kv + key_pos.unsqueeze(1), kv, attn_mask=attn_mask, need_weights=False
        )[0]
        return out.permute(1, 0, 2)
