"""Weight storage: keep the big matrices of a model in fp8 or int8 and compute in the model's dtype.

What ComfyUI calls ``weight_dtype`` on its diffusion-model loader, for our three models (docs/models.md "Weight
storage"):

* ``default``: the weights stay in the compute dtype (fp32 / fp16 / bf16, the loader's ``precision``).
* ``fp8_e4m3fn``: every selected ``nn.Linear`` (and ``nn.Conv2d`` where asked, the SD-XL UNet) keeps its weight in
  ``torch.float8_e4m3fn`` with one float32 scale per output channel (absmax / 448), and casts it to the input's
  dtype and device at each call (``W = fp8.to(dtype) * scale``): 1 byte per weight at rest, one layer at a time in
  the compute dtype. The per-channel scale keeps small LLaMA weights out of fp8's subnormal range (a plain cast, as
  ComfyUI does for UNets, loses them).
* ``int8``: weight-only int8 (symmetric, per output channel) through torchao's ``Int8WeightOnlyConfig``
  (``torchao.quantization.quantize_``); activations stay in the compute dtype. Runs on the CPU and on CUDA. torchao
  (0.18.0 measured against optimum-quanto 0.2.7: same error, no dependencies, maintained by PyTorch; numbers in
  docs/models.md) is imported only when int8 is asked for.

Layers converted here become :class:`CastLinear` / :class:`CastConv2d`: they compute with their weight moved to the
input's device and dtype when those differ, so ComfyUI may leave them on the offload device when VRAM is short (its
partial loading, ``comfy.model_patcher.ModelPatcher.load``); the ``comfy_cast_weights`` attribute tells ComfyUI
such a layer can stay offloaded. :func:`make_castable` converts the layers of a model without changing their
storage (what the ComfyUI nodes do for partial loading).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT = "default"
FP8 = "fp8_e4m3fn"
INT8 = "int8"
#: Weight storages of the agent and the visual tokenizer (the loaders' ``weight_dtype``).
WEIGHT_STORAGES = (DEFAULT, FP8, INT8)
#: Weight storages of the SD-XL UNet (the de-tokenizer loader's ``weight_dtype``).
UNET_WEIGHT_STORAGES = (DEFAULT, FP8)
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def check_storage(storage: str, allowed=WEIGHT_STORAGES) -> str:
    """``storage`` if it is one of ``allowed``.

    Raises:
        ValueError: another value (names the allowed ones).
    """
    if storage not in allowed:
        raise ValueError(f"weight storage must be one of {allowed}, found {storage!r}.")
    return storage


def _input_cast(t: Optional[torch.Tensor], like: torch.Tensor) -> Optional[torch.Tensor]:
    if t is None or (t.device == like.device and t.dtype == like.dtype):
        return t
    return t.to(device=like.device, dtype=like.dtype)


def _weight_for(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The weight of a cast layer ready to multiply ``x``: on x's device; fp8 -> x's dtype times the scale."""
    w = module.weight
    storage = getattr(module, "weight_storage", DEFAULT)
    if storage == FP8:
        w = w.to(device=x.device).to(x.dtype)
        scale = module.weight_scale.to(device=x.device, dtype=x.dtype)
        w = w * scale.view(-1, *([1] * (w.dim() - 1)))
    elif storage == INT8:
        if w.device != x.device:
            w = w.to(x.device)
        return w  # torchao's tensor: F.linear dequantizes (or runs an int8 kernel)
    else:
        w = _input_cast(w, x)
    for fn in getattr(module, "weight_function", ()):  # ComfyUI's low-VRAM patches (none for our models)
        w = fn(w)
    return w


class CastLinear(nn.Linear):
    """``nn.Linear`` whose weight may live in another dtype (fp8 + per-row scale, torchao int8) or on another device
    than its input: forward (..., in) -> (..., out) in the input's dtype, on the input's device.

    ``weight_storage`` is ``default``, ``fp8_e4m3fn`` (``weight`` float8_e4m3fn (out, in), buffer ``weight_scale``
    float32 (out,)) or ``int8`` (``weight`` a torchao int8 tensor). ``comfy_cast_weights`` marks the layer as one
    ComfyUI's partial loading may leave offloaded (docs/models.md "Partial loading")."""

    weight_storage = DEFAULT
    comfy_cast_weights = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _weight_for(self, x), _input_cast(self.bias, x))


class CastConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the weight handling of :class:`CastLinear` (``default`` or ``fp8_e4m3fn``); forward
    (B, C, H, W) -> (B, C', H', W') in the input's dtype and device."""

    weight_storage = DEFAULT
    comfy_cast_weights = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _weight_for(self, x), _input_cast(self.bias, x))


_CAST = {nn.Linear: CastLinear, nn.Conv2d: CastConv2d}


def _castable(m: nn.Module, convs: bool) -> bool:
    return type(m) is nn.Linear or (convs and type(m) is nn.Conv2d) or isinstance(m, (CastLinear, CastConv2d))


def make_castable(model: nn.Module, *, convs: bool = True) -> int:
    """Turn every plain ``nn.Linear`` (and ``nn.Conv2d`` when ``convs``) of ``model`` into its cast layer, in place
    (same parameters, same results; the class changes). Returns the number of layers converted."""
    n = 0
    for m in model.modules():
        cast = _CAST.get(type(m))
        if cast is not None and (convs or cast is CastLinear):
            m.__class__ = cast
            n += 1
    return n


def _fp8_(m: nn.Module) -> None:
    w = m.weight.detach()
    flat = w.float().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    q = (flat / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).reshape(w.shape)
    m.weight = nn.Parameter(q, requires_grad=False)
    m.register_buffer("weight_scale", scale, persistent=True)


def _int8_(model: nn.Module, chosen: Dict[int, nn.Module]) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_  # lazy: torchao only when int8 is asked for

    for m in chosen.values():
        m.weight.requires_grad_(False)
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, _name: id(m) in chosen)


def quantize_module(
    model: nn.Module,
    storage: str,
    *,
    include: Optional[Callable[[str, nn.Module], bool]] = None,
    convs: bool = False,
) -> int:
    """Store the weights of ``model``'s ``nn.Linear`` layers (and ``nn.Conv2d`` when ``convs``, fp8 only) in
    ``storage``, in place; ``include(name, module)`` picks the layers (default: all). Biases, norms, embeddings and
    every other tensor keep their dtype. ``default`` changes nothing. Returns the number of layers converted.

    Raises:
        ValueError: unknown ``storage``, or ``int8`` with ``convs`` (torchao's int8 here is for linear layers).
        ImportError: ``int8`` without torchao installed (``pip install torchao``).
    """
    check_storage(storage)
    if storage == DEFAULT:
        return 0
    if storage == INT8 and convs:
        raise ValueError("int8 weight storage covers linear layers only; use fp8_e4m3fn for convolutions.")
    chosen = {
        id(m): m
        for name, m in model.named_modules()
        if _castable(m, convs)
        and getattr(m, "weight_storage", DEFAULT) == DEFAULT
        and not m.weight.is_meta
        and (include is None or include(name, m))
    }
    if storage == FP8:
        for m in chosen.values():
            _fp8_(m)
    else:
        _int8_(model, chosen)
    for m in chosen.values():
        m.__class__ = _CAST.get(type(m), type(m))
        m.weight_storage = storage
    return len(chosen)


def storage_of(module: nn.Module) -> str:
    """The weight storage of one layer (``default`` for any layer this module did not convert)."""
    return getattr(module, "weight_storage", DEFAULT)


def model_storage(model: nn.Module) -> str:
    """The storage of ``model``'s converted layers (the first found), ``default`` when none is converted."""
    for m in model.modules():
        s = storage_of(m)
        if s != DEFAULT:
            return s
    return DEFAULT


def dequantized_weight(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """A new plain tensor: ``module``'s weight in ``dtype`` on its own device (fp8 times its scale; int8 through
    torchao's ``dequantize``)."""
    w = module.weight
    storage = storage_of(module)
    if storage == FP8:
        return w.to(dtype) * module.weight_scale.to(dtype).view(-1, *([1] * (w.dim() - 1)))
    if storage == INT8:
        return w.dequantize().to(dtype)
    return w.detach().to(dtype).clone()


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds, tensor subclasses (torchao int8: data + scales) included."""
    flatten = getattr(type(t), "__tensor_flatten__", None)
    if flatten is not None and type(t) is not torch.Tensor and type(t) is not nn.Parameter:
        names, _ctx = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(*modules: Optional[nn.Module]) -> int:
    """Bytes of the parameters and buffers of ``modules`` (shared tensors once; None skipped)."""
    seen, total = set(), 0
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += tensor_bytes(t)
    return total


def weight_blocks(model: nn.Module) -> List[nn.Module]:
    """The repeated blocks that hold almost all of a SEED-Story model's weights, for storage and partial loading:
    the agent's decoder layers (``decoder.layers``), the visual tokenizer's transformer blocks
    (``transformer.resblocks``), the de-tokenizer UNet's down/mid/up blocks. Everything outside them (embeddings,
    lm_head, norms, resamplers, the UNet's conv_in/out and time embedding, the VAE) stays in the compute dtype and
    is always loaded whole: those tensors also tell the library which device and dtype a model runs on.

    Raises:
        TypeError: ``model`` is none of the three.
    """
    decoder = getattr(model, "decoder", None)
    if decoder is not None and hasattr(decoder, "layers"):
        return [decoder.layers]
    transformer = getattr(model, "transformer", None)
    if transformer is not None and hasattr(transformer, "resblocks"):
        return [transformer.resblocks]
    unet = getattr(model, "unet", None)
    if unet is not None and hasattr(unet, "down_blocks"):
        return [b for b in (unet.down_blocks, unet.mid_block, unet.up_blocks) if b is not None]
    raise TypeError(
        f"weight_blocks: {type(model).__name__} is not a SEED-Story agent, visual tokenizer or de-tokenizer"
    )


def store_weights(model: nn.Module, storage: str) -> int:
    """:func:`quantize_module` over :func:`weight_blocks` (LoRA A/B excluded; the UNet's convolutions included
    for fp8). Returns the number of layers converted; ``default`` converts none."""
    convs = storage == FP8 and hasattr(model, "unet")
    n = 0
    for block in weight_blocks(model):
        n += quantize_module(
            block, storage, convs=convs, include=lambda name, _m: "lora_" not in name and "modules_to_save" not in name
        )
    return n


def make_blocks_castable(model: nn.Module) -> int:
    """:func:`make_castable` over :func:`weight_blocks`: the layers ComfyUI's partial loading may leave offloaded."""
    return sum(make_castable(block) for block in weight_blocks(model))


def store_bundle_weights(bundle, storage: str) -> int:
    """Store a model bundle's weights as ``storage`` (what the Tiny Model Loader's ``weight_dtype`` does): the
    agent's decoder layers and the visual tokenizer's blocks in ``storage``; the de-tokenizer UNet's blocks in fp8
    when ``storage`` is fp8, else left as they are (the UNet has no int8 choice). ``bundle`` is anything with
    ``agent`` / ``visual_tokenizer`` / ``detokenizer`` (a :class:`seedstory_core.bundle.SeedStoryBundle`). Returns
    the number of layers converted (docs/models.md "Weight storage").

    Raises:
        ValueError: unknown ``storage``.
        ImportError: ``int8`` without torchao.
    """
    check_storage(storage)
    n = bundle.agent.quantize_weights(storage)
    n += store_weights(bundle.visual_tokenizer, storage)
    if storage in UNET_WEIGHT_STORAGES:
        n += store_weights(bundle.detokenizer, storage)
    return n
