"""Qwen-VL ViT-G/14 with attention pooling: SEED-Story's visual tokenizer (docs/reference.md §1).

:class:`QwenVisualTokenizer` reproduces the official ``VisionTransformerWithAttnPool`` (``src/models/qwen_visual.py``,
a verbatim copy of Qwen-VL's ``visual.py``). Parameter names equal the official state-dict keys, so the released
``qwen_vit_G.pt`` (594 keys, no prefix, docs/reference.md §1 "The weight file") loads with
``load_state_dict(strict=True)`` and no key map:

* ``conv1.weight`` (no bias), ``positional_embedding`` (always 256 x width, a 16x16 grid), ``ln_pre.*``
* ``transformer.resblocks.{i}.{ln_1,ln_2}.*``, ``transformer.resblocks.{i}.attn.{in_proj,out_proj}.*``,
  ``transformer.resblocks.{i}.mlp.{c_fc,c_proj}.*``
* ``attn_pool.*`` (a :class:`~seedstory_core.resampler.QwenResampler`), ``ln_post.*``, ``proj``

:func:`seedstory_core.golden.golden_vit` runs a golden fixture (``golden/vit_*.json`` + ``.safetensors``) through
this module (the golden adapters import the model modules, never the reverse).
"""

from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from .config import ResamplerConfig, VisualTokenizerConfig
from .preprocess import preprocess_images
from .resampler import QwenResampler, resize_pos_embed

__all__ = [
    "VisualAttention",
    "VisualMLP",
    "ResidualAttentionBlock",
    "VisualTransformer",
    "QwenVisualTokenizer",
    "POSITIONAL_EMBEDDING_ROWS",
]

#: The official ``positional_embedding`` always has 256 rows (a 16x16 grid), whatever the image size
#: (docs/reference.md §1 step 2).
POSITIONAL_EMBEDDING_ROWS = 256


class VisualAttention(nn.Module):
    """Qwen-VL ``VisualAttention``: self-attention with a fused, per-head interleaved ``in_proj``
    (docs/reference.md §1 step 4).

    Args:
        width: model width D. heads: number of heads H; ``D % H == 0``, head dim hd = D // H.

    Parameters: ``in_proj`` Linear(D -> 3D, bias) whose 3D outputs are grouped **per head** as
    ``[q(hd), k(hd), v(hd)] x H`` (not the ``[Q; K; V]`` layout of ``nn.MultiheadAttention``); ``out_proj``
    Linear(D -> D, bias).

    Forward: x (B, T, D) batch-first, any float dtype -> (B, T, D). Logits are (q / sqrt(hd)) . k^T, softmax
    over keys, no mask (computed with ``F.scaled_dot_product_attention``).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(
                f"VisualAttention: width {width} is not divisible by heads {heads}; choose heads dividing width."
            )
        self.width = width
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        mixed = self.in_proj(x).view(b, t, self.heads, 3 * self.head_dim)
        q, k, v = mixed.split(self.head_dim, dim=-1)  # each (B, T, H, hd): per-head [q | k | v]
        q, k, v = (y.transpose(1, 2) for y in (q, k, v))  # (B, H, T, hd)
        # Official: q_scaled = q / sqrt(hd); probs = softmax(q_scaled @ k^T). Pre-scale q and pass scale=1.
        q = q / math.sqrt(self.head_dim)
        ctx = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        ctx = ctx.transpose(1, 2).reshape(b, t, self.width)
        return self.out_proj(ctx)


class VisualMLP(nn.Module):
    """``c_fc`` Linear(D -> M) -> exact (erf) GELU -> ``c_proj`` Linear(M -> D); M = int(D * mlp_ratio)
    (docs/reference.md §1 step 4).

    Forward: x (..., D) -> (..., D).
    """

    def __init__(self, width: int, mlp_width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, mlp_width)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(mlp_width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: x += attn(ln_1(x)); x += mlp(ln_2(x)) (docs/reference.md §1 step 4). x: (B, T, D) -> (B, T, D)."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.attn = VisualAttention(width, heads)
        self.mlp = VisualMLP(width, mlp_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VisualTransformer(nn.Module):
    """The trunk: ``resblocks`` = ``layers`` x :class:`ResidualAttentionBlock`. x (B, T, D) -> (B, T, D), batch-first.

    (The official trunk runs sequence-first; attention has no mask so the layout does not change the result.)
    """

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, eps: float):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads, mlp_width, eps) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class QwenVisualTokenizer(nn.Module):
    """Qwen-VL ViT-G/14 + attention pooling, SEED-Story's image encoder (docs/reference.md §1).

    Args:
        config: :class:`~seedstory_core.config.VisualTokenizerConfig` (official: 448 px, patch 14, width 1664,
            48 layers, 16 heads, mlp_ratio 4.9231, 256 queries, output 4096, LayerNorm eps 1e-6).

    Forward (``forward(pixel_values)``):
        pixel_values: (B, 3, image_size, image_size) floating tensor in CLIP-normalised space (see
        :func:`seedstory_core.preprocess.preprocess_images`). It is cast to the module's parameter dtype and device
        (as the official code does).
        Returns (B, n_queries, output_dim) in the parameter dtype.

    Steps (docs/reference.md §1): conv1 patchify (no bias) -> + positional_embedding (256 rows, bicubic-resized to
    grid x grid) -> ln_pre -> ``layers`` pre-LN blocks -> attn_pool (QwenResampler, grid sqrt(n_queries),
    output_dim // 128 heads, kv_proj width -> output_dim) -> ln_post -> x @ proj.

    Raises:
        ValueError: at construction when ``n_queries`` is not a square, ``width % heads != 0``,
            ``image_size % patch_size != 0`` or ``output_dim < 128``; at forward for a wrong rank, channel count,
            spatial size or a non-floating dtype.
    """

    def __init__(self, config: VisualTokenizerConfig):
        super().__init__()
        if not isinstance(config, VisualTokenizerConfig):
            raise TypeError(
                f"QwenVisualTokenizer expects a VisualTokenizerConfig, got {type(config).__name__}; "
                "build one with VisualTokenizerConfig(...) or official_config().visual_tokenizer."
            )
        self._check_config(config)
        self.config = config
        width, out = config.width, config.output_dim
        eps = config.layernorm_eps
        self.grid = config.grid

        self.conv1 = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.positional_embedding = nn.Parameter(torch.randn(POSITIONAL_EMBEDDING_ROWS, width) * width**-0.5)
        self.ln_pre = nn.LayerNorm(width, eps=eps)
        self.transformer = VisualTransformer(width, config.layers, config.heads, config.mlp_width, eps)
        self.attn_pool = QwenResampler(
            ResamplerConfig(
                grid_size=int(math.isqrt(config.n_queries)),
                embed_dim=out,
                num_heads=config.attn_pool_heads,
                kv_dim=width,
                layernorm_eps=eps,
            )
        )
        # QwenResampler builds its sin-cos table with numpy, i.e. on the CPU even inside ``with torch.device(...)``;
        # put it on the device every other parameter was created on (meta / cuda default-device construction).
        if self.attn_pool.pos_embed.device != self.attn_pool.query.device:
            self.attn_pool.reset_pos_embed()
        self.ln_post = nn.LayerNorm(out, eps=eps)
        self.proj = nn.Parameter(torch.randn(out, out) * out**-0.5)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_config(c: VisualTokenizerConfig) -> None:
        problems = []
        if c.image_size % c.patch_size:
            problems.append(f"image_size {c.image_size} is not a multiple of patch_size {c.patch_size}")
        if c.width % c.heads:
            problems.append(f"width {c.width} is not divisible by heads {c.heads}")
        if math.isqrt(c.n_queries) ** 2 != c.n_queries:
            problems.append(f"n_queries {c.n_queries} is not a square number")
        if c.attn_pool_heads < 1 or c.output_dim % c.attn_pool_heads:
            problems.append(
                f"output_dim {c.output_dim} must be >= 128 and divisible by output_dim // 128 attn_pool heads"
            )
        if c.output_dim % 4:
            problems.append(f"output_dim {c.output_dim} must be divisible by 4 (2-D sin-cos pos_embed)")
        if problems:
            raise ValueError("Invalid VisualTokenizerConfig: " + "; ".join(problems) + " (docs/reference.md §1).")

    def _check_pixels(self, pixel_values: torch.Tensor) -> None:
        s = self.config.image_size
        expected = f"(B, 3, {s}, {s}) float CLIP-normalised pixels"
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(
                f"QwenVisualTokenizer expected a torch.Tensor of shape {expected}, "
                f"found {type(pixel_values).__name__}; "
                "use encode_images() for PIL images / ComfyUI IMAGE tensors."
            )
        shape = tuple(pixel_values.shape)
        if pixel_values.dim() != 4:
            raise ValueError(
                f"QwenVisualTokenizer expected a 4-D tensor {expected}, found shape {shape}; "
                "add a batch dimension (x[None]) or use encode_images() for [B,H,W,C] ComfyUI images."
            )
        if shape[1] != 3:
            hint = " (it looks channels-last: permute(0, 3, 1, 2) it)" if shape[-1] == 3 else ""
            raise ValueError(f"QwenVisualTokenizer expected 3 channels {expected}, found shape {shape}{hint}.")
        if shape[2] != s or shape[3] != s:
            raise ValueError(
                f"QwenVisualTokenizer expected spatial size {s}x{s} {expected}, found {shape[2]}x{shape[3]}; "
                "resize with seedstory_core.preprocess.preprocess_images(images, image_size=model.config.image_size)."
            )
        if shape[0] == 0:
            raise ValueError(
                f"QwenVisualTokenizer expected at least one image {expected}, found an empty batch {shape}."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"QwenVisualTokenizer expected floating-point {expected}, found dtype {pixel_values.dtype}; "
                "normalise uint8 images with preprocess_images() first."
            )

    # ------------------------------------------------------------------ forward
    def _param_ref(self) -> torch.Tensor:
        return self.conv1.weight

    def forward_with_intermediates(self, pixel_values: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Forward pass that also returns the golden-fixture intermediates (docs/reference.md §1 steps 1-6).

        Args:
            pixel_values: (B, 3, image_size, image_size) float, CLIP-normalised.

        Returns:
            dict with
            ``'features'`` (B, n_queries, output_dim): the final output (same as :meth:`forward`);
            ``'intermediate.ln_pre_out'`` (B, grid**2, width): after patchify + positions + ln_pre;
            ``'intermediate.transformer_out'`` (B, grid**2, width): trunk output, batch-first;
            ``'intermediate.attn_pool_out'`` (B, n_queries, output_dim): attn_pool output before ln_post / proj.

        Raises:
            ValueError: wrong rank / channels / size / dtype (see class docstring).
        """
        self._check_pixels(pixel_values)
        ref = self._param_ref()
        x = pixel_values.to(device=ref.device, dtype=ref.dtype)
        x = self.conv1(x)  # (B, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        x = x + resize_pos_embed(self.positional_embedding, x.shape[1])
        ln_pre_out = self.ln_pre(x)
        trunk = self.transformer(ln_pre_out)
        pooled = self.attn_pool(trunk)
        features = self.ln_post(pooled) @ self.proj
        return {
            "features": features,
            "intermediate.ln_pre_out": ln_pre_out,
            "intermediate.transformer_out": trunk,
            "intermediate.attn_pool_out": pooled,
        }

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, image_size, image_size) CLIP-normalised float -> (B, n_queries, output_dim) (docs/reference.md §1).

        Raises ``ValueError`` for a wrong rank, channel count, spatial size or non-floating dtype.
        """
        return self.forward_with_intermediates(pixel_values)["features"]

    # ------------------------------------------------------------------ conveniences
    @torch.no_grad()
    def encode_images(self, images, mode: str = "squash") -> torch.Tensor:
        """Preprocess arbitrary images and encode them (docs/reference.md §1 "Preprocessing").

        Args:
            images: anything :func:`seedstory_core.preprocess.to_pil_images` accepts (a ComfyUI IMAGE tensor
                [B,H,W,C] float 0..1, PIL image(s), numpy arrays).
            mode: ``'squash'`` (official inference / stage 2, ``qwen_448_transform``) or ``'keep_ratio'``
                (stage 3: short-side resize + centre crop).

        Returns:
            (B, n_queries, output_dim) tensor on the model's device, in the model's dtype. Runs under
            ``torch.no_grad``; the module's train/eval mode is left unchanged (the ViT has no dropout).

        Raises:
            ValueError: for invalid images or mode (from :func:`~seedstory_core.preprocess.preprocess_images`).
        """
        pixels = preprocess_images(images, image_size=self.config.image_size, mode=mode)
        ref = self._param_ref()
        return self(pixels.to(device=ref.device, dtype=ref.dtype))

    def reset_non_persistent(self) -> None:
        """Recompute deterministic constants: the attn_pool's frozen 2-D sin-cos ``pos_embed``
        (docs/reference.md §1 step 5).

        Call after building on the ``meta`` device and ``to_empty()`` when the checkpoint does not carry
        ``attn_pool.pos_embed`` (the official file does; loading it afterwards overrides this value anyway).
        """
        self.attn_pool.reset_pos_embed()

    def materialize_constants(self) -> None:
        """Alias of :meth:`reset_non_persistent`."""
        self.reset_non_persistent()

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        return self._param_ref().device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the parameters."""
        return self._param_ref().dtype
