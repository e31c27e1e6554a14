"""Image input handling for the visual tokenizer (docs/reference.md §1 "Preprocessing", §4.2).

Importable without torchvision: the official transforms are re-created with PIL, which is exactly what
torchvision's ``Resize`` / ``CenterCrop`` / ``ToTensor`` / ``Normalize`` do for PIL input:

* ``'squash'`` — ``qwen_448_transform`` (inference and stage 2): ``Resize((S, S))``, bilinear.
* ``'keep_ratio'`` — ``qwen_448_transform_keep_ratio`` (stage 3): ``Resize(S)`` on the short side (long side
  ``int(S * long / short)``), then ``CenterCrop(S)`` with offsets ``int(round((h - S) / 2.0))``.
* then ``x / 255`` and per-channel CLIP normalisation ``(x - mean) / std`` in float32.

Every input kind (ComfyUI IMAGE tensors, PIL images in any mode, numpy arrays) is first turned into 8-bit RGB PIL
images with the official loader's ``PIL.Image.convert('RGB')`` (alpha dropped, grayscale replicated), so a ComfyUI
frame and the same picture loaded from a file give identical pixels.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "RESIZE_MODES",
    "to_pil_images",
    "preprocess_images",
    "zero_image_pixels",
    "to_comfy_image",
]

#: CLIP normalisation (docs/reference.md §1 "Preprocessing").
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: Resize modes accepted by :func:`preprocess_images`.
RESIZE_MODES = ("squash", "keep_ratio")

_CHANNEL_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
# How far outside [0, 1] a float image may stray before we assume it is in another range (0..255 or -1..1).
_FLOAT_RANGE_SLACK = 0.5

ImageInput = Union[torch.Tensor, np.ndarray, Image.Image, Sequence]


# ---------------------------------------------------------------------- helpers
def _describe(obj) -> str:
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return f"{type(obj).__name__} of shape {tuple(obj.shape)} and dtype {obj.dtype}"
    if isinstance(obj, Image.Image):
        return f"PIL image mode {obj.mode} size {obj.size}"
    return type(obj).__name__


def _quantise_float(arr: np.ndarray, what: str) -> np.ndarray:
    """float array in 0..1 -> uint8 via round(x * 255), clipped. Rejects NaN/inf and values far outside 0..1."""
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{what}: expected finite pixel values in 0..1, found NaN or inf; "
            "clean the image (e.g. torch.nan_to_num) first."
        )
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_FLOAT_RANGE_SLACK or hi > 1.0 + _FLOAT_RANGE_SLACK:
        hint = "divide by 255" if hi > 1.0 + _FLOAT_RANGE_SLACK else "map -1..1 images with (x + 1) / 2"
        raise ValueError(
            f"{what}: expected float pixel values in 0..1, found range [{lo:.4g}, {hi:.4g}]; {hint} first."
        )
    return np.clip(np.round(arr.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _hwc_to_pil(arr: np.ndarray, what: str) -> Image.Image:
    """One (H, W) or (H, W, C) array (C in 1..4; uint8, bool, other ints in 0..255, or float 0..1) -> RGB PIL."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    h, w, c = arr.shape
    if h == 0 or w == 0:
        raise ValueError(f"{what}: expected an image with non-zero height and width, found {h}x{w}.")
    if c not in _CHANNEL_MODES:
        raise ValueError(
            f"{what}: expected 1, 2, 3 or 4 channels in the last dimension ([H,W,C] / [B,H,W,C]), found {c} "
            f"(shape {arr.shape}); channels-first (C,H,W) data must be permuted to channels-last."
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = _quantise_float(arr, what)
    elif arr.dtype == np.uint16:
        # 16-bit data: scale to 8 bits (same rule as 16-bit PIL images, see _pil_to_rgb).
        arr = np.clip(np.round(arr.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(
                f"{what}: expected integer pixels in 0..255 (uint8), found range [{lo}, {hi}] with dtype {arr.dtype}; "
                "convert to uint8 or to float 0..1 first."
            )
        arr = arr.astype(np.uint8)
    else:
        raise ValueError(f"{what}: expected a uint8 or float image array, found dtype {arr.dtype}.")
    mode = _CHANNEL_MODES[c]
    img = Image.fromarray(np.ascontiguousarray(arr[:, :, 0] if c == 1 else arr), mode=mode)
    return img.convert("RGB")


def _pil_to_rgb(img: Image.Image, what: str) -> Image.Image:
    """PIL image of any mode -> RGB, as the official loader (``.convert('RGB')``), except 16/32-bit integer modes.

    16-bit modes (``I;16*``) are scaled by 1/257 to 8 bits, and mode ``I`` images whose values exceed 255 are
    treated as 16-bit the same way (PIL's own conversion would clip them to white; see module docs).
    """
    w, h = img.size
    if w == 0 or h == 0:
        raise ValueError(f"{what}: expected an image with non-zero width and height, found {w}x{h}.")
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img.convert("I") if img.mode != "I" else img, dtype=np.int64)
        if img.mode.startswith("I;16") or arr.max() > 255:
            arr = np.round(arr / 257.0)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as exc:  # unsupported mode conversions, truncated files
        raise ValueError(
            f"{what}: could not convert a PIL image of mode {img.mode!r} to RGB ({exc}); "
            "save it as an RGB/RGBA/grayscale PNG or JPEG and try again."
        ) from exc


def _tensor_to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def _array_to_pils(arr: np.ndarray, what: str) -> List[Image.Image]:
    if arr.ndim == 4:
        if arr.shape[0] == 0:
            raise ValueError(
                f"{what}: expected at least one image in the batch [B,H,W,C], found an empty batch {arr.shape}."
            )
        return [_hwc_to_pil(a, f"{what}[{i}]") for i, a in enumerate(arr)]
    if arr.ndim == 3:
        if arr.shape[-1] not in _CHANNEL_MODES:
            raise ValueError(
                f"{what}: expected [H,W,C] with C in 1..4 (or a [B,H,W,C] batch), found shape {arr.shape}; "
                "channels-first (C,H,W) data must be permuted to channels-last, masks [B,H,W] need a channel axis."
            )
        return [_hwc_to_pil(arr, what)]
    if arr.ndim == 2:
        return [_hwc_to_pil(arr, what)]
    raise ValueError(
        f"{what}: expected an image array of rank 2 [H,W], 3 [H,W,C] or 4 [B,H,W,C], found rank {arr.ndim} "
        f"(shape {arr.shape})."
    )


# ---------------------------------------------------------------------- public API
def to_pil_images(images: ImageInput) -> List[Image.Image]:
    """Turn any supported image input into a list of 8-bit RGB PIL images (docs/reference.md §1 "Preprocessing").

    Accepted:
        * ComfyUI IMAGE tensor, float [B, H, W, C] (or [H, W, C]) in 0..1 with C in 1, 2, 3, 4; quantised with
          round(x * 255) clipped to uint8, then converted like a file (so it matches the JPEG path exactly).
          uint8 tensors are taken as 0..255.
        * numpy arrays [H, W], [H, W, C] or [B, H, W, C]: uint8 (0..255), uint16 (scaled by 1/257), bool, other
          integers in 0..255, or float in 0..1 (quantised as above).
        * a PIL image of any mode (L, LA, P, RGBA, CMYK, 1, I;16, ...) or a list/tuple mixing any of the above.

    Conversion is ``PIL.Image.convert('RGB')`` (alpha dropped without compositing, grayscale replicated, palette
    expanded), except 16-bit modes, which are scaled to 8 bits instead of being clipped.

    Returns:
        list of ``PIL.Image.Image`` in mode ``'RGB'``, one per image, original sizes kept.

    Raises:
        ValueError: empty batch or list, wrong rank, channel count outside 1..4, zero-size image, NaN/inf, float
            values far outside 0..1, integer values outside 0..255, unsupported objects.
    """
    what = "to_pil_images"
    if isinstance(images, Image.Image):
        return [_pil_to_rgb(images, what)]
    if isinstance(images, torch.Tensor):
        return _array_to_pils(_tensor_to_numpy(images), f"{what}(tensor {tuple(images.shape)})")
    if isinstance(images, np.ndarray):
        return _array_to_pils(images, f"{what}(array {images.shape})")
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"{what}: expected at least one image, found an empty {type(images).__name__}.")
        out: List[Image.Image] = []
        for i, item in enumerate(images):
            if isinstance(item, (list, tuple)):
                raise ValueError(
                    f"{what}: expected a flat list of images, found a nested {type(item).__name__} at index {i}."
                )
            try:
                out.extend(to_pil_images(item))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from exc
        return out
    raise ValueError(
        f"{what}: expected a ComfyUI IMAGE tensor [B,H,W,C], a PIL image, a numpy array or a list of them, "
        f"found {_describe(images)}."
    )


def _resize_squash(img: Image.Image, size: int) -> Image.Image:
    # torchvision Resize((S, S)) on PIL input == PIL resize to (S, S) with BILINEAR.
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.BILINEAR)


def _resize_keep_ratio(img: Image.Image, size: int) -> Image.Image:
    # torchvision Resize(S) (int): short side -> S, long side int(S * long / short); then CenterCrop(S).
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess_images(
    images: ImageInput,
    image_size: int = 448,
    mode: str = "squash",
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Images -> CLIP-normalised pixel batch for :class:`~seedstory_core.visual_tokenizer.QwenVisualTokenizer`.

    Args:
        images: anything :func:`to_pil_images` accepts.
        image_size: output side S (448 officially; use the model's ``config.image_size``).
        mode: ``'squash'`` — ``Resize((S, S))`` bilinear (docs/reference.md §1 ``qwen_448_transform``, inference /
            stage 2); ``'keep_ratio'`` — short side to S, then centre crop S x S (docs/reference.md §1, stage-3
            transform).
        mean, std: per-channel normalisation (CLIP values by default).

    Returns:
        torch.float32 tensor (B, 3, S, S) on the CPU: ``((uint8 / 255) - mean) / std``.

    Raises:
        ValueError: bad image input (see :func:`to_pil_images`), unknown ``mode``, ``image_size`` < 1, or
            mean/std that are not 3 numbers (std non-zero).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"preprocess_images: expected mode in {RESIZE_MODES}, found {mode!r}.")
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"preprocess_images: expected a positive integer image_size, found {image_size!r}.")
    image_size = int(image_size)
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)
    if mean_t.shape != (3,) or std_t.shape != (3,):
        raise ValueError(f"preprocess_images: expected 3 mean and 3 std values, found {list(mean)} and {list(std)}.")
    if bool((std_t == 0).any()):
        raise ValueError(f"preprocess_images: std must be non-zero, found {list(std)}.")
    resize = _resize_squash if mode == "squash" else _resize_keep_ratio
    batch = []
    for img in to_pil_images(images):
        img = resize(img, image_size)
        arr = np.asarray(img, dtype=np.uint8)  # (S, S, 3)
        # torchvision ToTensor + Normalize: float32 / 255, then (x - mean) / std.
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div(255)
        batch.append(x.sub(mean_t[:, None, None]).div(std_t[:, None, None]))
    return torch.stack(batch, 0)


def zero_image_pixels(image_size: int = 448) -> torch.Tensor:
    """The de-tokenizer's unconditional input: an all-zero (1, 3, S, S) float32 tensor in NORMALISED space.

    Spec §4.2: the negative prompt / pooled embeddings are the ViT features of an all-zero 1x3x448x448 image in
    CLIP-normalised space (i.e. not a black image, which would be -mean/std after normalisation).
    Raises ``ValueError`` for a non-positive ``image_size``.
    """
    if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or image_size < 1:
        raise ValueError(f"zero_image_pixels: expected a positive integer image_size, found {image_size!r}.")
    return torch.zeros(1, 3, int(image_size), int(image_size), dtype=torch.float32)


def to_comfy_image(images, value_range: Optional[str] = None) -> torch.Tensor:
    """Images -> ComfyUI IMAGE tensor, float32 [B, H, W, 3] in 0..1 on the CPU.

    Args:
        images: a PIL image or a list of PIL images (all the same size; converted to RGB), or a torch tensor
            (B, 3, H, W) / (3, H, W), e.g. a VAE decode (-1..1) or a pipeline output (0..1).
        value_range: for tensors, ``'-1..1'`` or ``'0..1'``; ``None`` guesses ``'-1..1'`` when the minimum is
            below -1e-3 and ``'0..1'`` otherwise (pass it explicitly when you know it). Values are clamped to 0..1.

    Raises:
        ValueError: empty input, PIL images of different sizes, a tensor that is not (B, 3, H, W), NaN/inf,
            or an unknown ``value_range``.
    """
    ranges = (None, "-1..1", "0..1")
    if value_range not in ranges:
        raise ValueError(f"to_comfy_image: expected value_range in {ranges}, found {value_range!r}.")
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("to_comfy_image: expected at least one image, found an empty list.")
        if not all(isinstance(i, Image.Image) for i in images):
            raise ValueError(
                "to_comfy_image: expected a list of PIL images, found "
                + ", ".join(sorted({type(i).__name__ for i in images}))
                + "; pass a single (B,3,H,W) tensor instead."
            )
        rgb = [_pil_to_rgb(i, "to_comfy_image") for i in images]
        sizes = sorted({i.size for i in rgb})
        if len(sizes) > 1:
            raise ValueError(
                f"to_comfy_image: a ComfyUI IMAGE batch needs images of one size, found sizes (W,H) {sizes}; "
                "resize them to a common size first."
            )
        arr = np.stack([np.asarray(i, dtype=np.uint8) for i in rgb], 0)
        return torch.from_numpy(arr).to(torch.float32).div(255.0)
    if isinstance(images, torch.Tensor):
        t = images.detach()
        if t.dim() == 3:
            t = t.unsqueeze(0)
        if t.dim() != 4 or t.shape[1] != 3 or t.shape[0] == 0 or t.shape[2] == 0 or t.shape[3] == 0:
            raise ValueError(
                f"to_comfy_image: expected a non-empty (B, 3, H, W) tensor, found shape {tuple(images.shape)}; "
                "ComfyUI [B,H,W,C] tensors are already in the right layout."
            )
        t = t.to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ValueError("to_comfy_image: expected finite values, found NaN or inf in the tensor.")
        if value_range is None:
            value_range = "-1..1" if float(t.min()) < -1e-3 else "0..1"
        if value_range == "-1..1":
            t = (t + 1.0) / 2.0
        return t.clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()
    raise ValueError(
        f"to_comfy_image: expected a PIL image, a list of PIL images or a (B,3,H,W) tensor, found {_describe(images)}."
    )
