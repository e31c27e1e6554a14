"""``ResamplerXLV2``: the de-tokenizer's feature resampler with its ``unet_attnpool`` head (docs/reference.md §4.1).

It turns ViT-space features (B, T, E) (T = 256, E = 4096 officially) into SD-XL conditioning:

* ``prompt_embeds`` (B, Q, output1_dim + output2_dim) = [unet_proj_1(h); unet_proj_2(h)] -- (B, 64, 2048) officially,
  taking the place of the CLIP-L (768) and CLIP-G (1280) penultimate hidden states;
* ``pooled`` (B, output2_dim) = unet_attnpool(h) -- (B, 1280) officially, in place of CLIP-G's pooled embedding.

Parameter names equal the official state-dict keys (``latents``, ``proj_in.*``, ``layers.{i}.0.{norm1,norm2,to_q,
to_kv,to_out}.*``, ``layers.{i}.1.{0,1,3}.*``, ``norm_out.*``, ``unet_proj_1/2.*``, ``unet_attnpool.*``), so an
official SDXLAdapter checkpoint loads after stripping its ``resampler.`` prefix, with no key map.

Official quirk kept on purpose (docs/reference.md §4.1 step 2, §8 item 2): ``forward`` starts with ``F.normalize(x)``
using the default ``dim=1``, i.e. an L2 normalisation over the **token** axis (per channel), not over the channel
axis.

The golden-fixture adapter (:func:`seedstory_core.golden.golden_detok_resampler`) lives with the other golden
adapters in :mod:`seedstory_core.golden`, which imports this module.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import DetokenizerResamplerConfig

__all__ = [
    "PerceiverAttention",
    "feed_forward",
    "AttentionPool2d",
    "ResamplerXLV2",
]


class PerceiverAttention(nn.Module):
    """Latent cross-attention block of ``ResamplerXLV2`` (docs/reference.md §4.1 step 4).

    ``norm1`` normalises the input tokens, ``norm2`` the latents; ``to_q`` reads the latents, ``to_kv`` reads
    [x; latents] concatenated along the token axis. ``heads`` heads of ``dim_head`` channels (inner width
    ``heads * dim_head``, which may differ from ``dim``); q and k are each scaled by ``dim_head ** -0.25``; the
    softmax runs in float32 and is cast back. No biases.
    """

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, heads, N, dim_head)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """x: (B, T, dim) projected features; latents: (B, Q, dim). Returns the attention update (B, Q, dim)."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, q_len, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        scale = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).reshape(b, q_len, self.heads * self.dim_head)
        return self.to_out(out)


def feed_forward(dim: int, mult: float) -> nn.Sequential:
    """``Sequential(LayerNorm(dim), Linear(dim, int(dim*mult), no bias), GELU, Linear(.., dim, no bias))``.

    The Sequential indices 0/1/3 are the official key names ``layers.{i}.1.{0,1,3}`` (docs/reference.md §4.1 step 4).
    """
    inner = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner, bias=False),
        nn.GELU(),
        nn.Linear(inner, dim, bias=False),
    )


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling over the resampler's Q output tokens (docs/reference.md §4.1 "Outputs").

    Prepends the token mean, adds ``positional_embedding`` ((seq_len + 1) x embed_dim, official init
    randn / sqrt(embed_dim)), runs ``num_heads``-head attention with separate q/k/v projections (embed_dim ->
    embed_dim, with bias) and the output projection ``c_proj`` (embed_dim -> output_dim), and returns the result
    for token 0 (the mean token).

    Args:
        seq_len: number of input tokens Q (64 officially).
        embed_dim: token width (1024 officially); must be divisible by ``num_heads``.
        num_heads: attention heads (16 officially; the resampler's ``heads``).
        output_dim: width of the pooled output (1280 officially); defaults to ``embed_dim``.
    """

    def __init__(self, seq_len: int, embed_dim: int, num_heads: int, output_dim: int | None = None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"AttentionPool2d: embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                "choose a resampler dim that is a multiple of heads."
            )
        self.positional_embedding = nn.Parameter(torch.randn(seq_len + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Q, embed_dim) -> pooled (B, output_dim), same dtype as x.

        Raises ValueError when Q differs from the positional table (seq_len)."""
        if x.shape[1] + 1 != self.positional_embedding.shape[0]:
            raise ValueError(
                f"AttentionPool2d expected {self.positional_embedding.shape[0] - 1} tokens, found {x.shape[1]}."
            )
        x = x.permute(1, 0, 2)  # (Q, B, C): sequence-first, as F.multi_head_attention_forward expects
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        out, _ = F.multi_head_attention_forward(
            query=x[:1],
            key=x,
            value=x,
            embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight,
            in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None,
            bias_v=None,
            add_zero_attn=False,
            dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True,
            training=self.training,
            need_weights=False,
        )
        return out[0]


class ResamplerXLV2(nn.Module):
    """SEED-Story's de-tokenizer resampler (official ``src.models_ipa.resampler.ResamplerXLV2``;
    docs/reference.md §4.1).

    Args:
        config: :class:`~seedstory_core.config.DetokenizerResamplerConfig` (official: dim 1024, depth 4,
            dim_head 64, heads 16, num_queries 64, embedding_dim 4096, output1 768, output2 1280, ff_mult 4).

    Parameters are created on the current default device/dtype (use ``torch.device('meta')`` as a context for a
    weightless build). ``latents`` (1, Q, dim) are initialised randn / sqrt(dim) as officially.

    Forward: features (B, T, embedding_dim), any float dtype matching the weights ->
    ``(prompt_embeds (B, Q, output1_dim + output2_dim), pooled (B, output2_dim))``.
    """

    def __init__(self, config: DetokenizerResamplerConfig):
        super().__init__()
        c = config
        self.config = c
        self.latents = nn.Parameter(torch.randn(1, c.num_queries, c.dim) / c.dim**0.5)
        self.proj_in = nn.Linear(c.embedding_dim, c.dim)
        self.norm_out = nn.LayerNorm(c.dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(c.dim, c.dim_head, c.heads), feed_forward(c.dim, c.ff_mult)])
            for _ in range(c.depth)
        )
        self.unet_proj_1 = nn.Linear(c.dim, c.output1_dim)
        self.unet_proj_2 = nn.Linear(c.dim, c.output2_dim)
        self.unet_attnpool = AttentionPool2d(c.num_queries, c.dim, c.heads, c.output2_dim)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.config.embedding_dim:
            found = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"ResamplerXLV2 expected features of shape (B, T, {self.config.embedding_dim}), found {found}. "
                "Pass ViT / output-resampler features of the width this de-tokenizer was built for."
            )

    def forward_with_intermediates(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`forward`, also returning ``h`` = ``norm_out`` output (B, Q, dim).

        Returns ``(prompt_embeds (B, Q, out1 + out2), pooled (B, out2), h (B, Q, dim))``.
        Raises ValueError on a wrongly shaped input.
        """
        self._check_input(x)
        latents = self.latents.expand(x.shape[0], -1, -1)
        # Official quirk (docs/reference.md §4.1 step 2): default dim=1 = L2 over the token axis, per channel.
        x = F.normalize(x)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        h = self.norm_out(latents)
        prompt_embeds = torch.cat([self.unet_proj_1(h), self.unet_proj_2(h)], dim=-1)
        pooled = self.unet_attnpool(h)
        return prompt_embeds, pooled, h

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, embedding_dim) -> (prompt_embeds (B, Q, out1 + out2), pooled (B, out2)). Spec §4.1."""
        prompt_embeds, pooled, _ = self.forward_with_intermediates(x)
        return prompt_embeds, pooled
