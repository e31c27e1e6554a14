"""Socket types, the small wrapper objects passed between nodes, our model cache, and input checks."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from seedstory_core import quant
from seedstory_core.story import default_policy, engine_for

from . import comfy_glue as glue

# Socket types (namespaced custom types, never "*": they connect only to the sockets meant for them).
AGENT = "SEEDSTORY_AGENT"
VISUAL_TOKENIZER = "SEEDSTORY_VISUAL_TOKENIZER"
DETOKENIZER = "SEEDSTORY_DETOKENIZER"
FEATURES = "SEEDSTORY_IMAGE_FEATURES"
STATE = "SEEDSTORY_STATE"
SETTINGS = "SEEDSTORY_STORY_SETTINGS"


class SeedStoryInputError(ValueError):
    """An input of a SeedStory node is not what the node expects (message: expected / found / what to do)."""


def _module_bytes(*modules) -> int:
    # stored (fp8 / torchao int8) weights counted at their real size, shared tensors once
    return quant.module_bytes(*modules)


@dataclass(eq=False)
class VisualTokenizerModel:
    """The Qwen-VL ViT visual tokenizer (``module``), its ComfyUI ModelPatcher and config."""

    module: torch.nn.Module
    patcher: Any
    config: Any  # VisualTokenizerConfig
    source: str

    @classmethod
    def wrap(cls, module, config, source: str, load_device, offload_device) -> "VisualTokenizerModel":
        """The socket value for a loaded visual tokenizer: ``module`` with a ComfyUI ModelPatcher over it."""
        return cls(module, glue.make_patcher(load_device, offload_device, visual_tokenizer=module), config, source)

    def loaded(self) -> torch.nn.Module:
        glue.load_models([self.patcher])
        return self.module

    def get_ram_usage(self) -> int:
        return _module_bytes(self.module)

    def __repr__(self) -> str:
        return f"SeedStory visual tokenizer ({self.source})"


@dataclass(eq=False)
class AgentModel:
    """The MLLM agent (``module``: SeedStoryAgent), its tokenizer, ModelPatcher and config."""

    module: torch.nn.Module
    patcher: Any
    tokenizer: Any  # SeedStoryTokenizer
    config: Any  # AgentConfig
    source: str

    @classmethod
    def wrap(cls, module, tokenizer, config, source: str, load_device, offload_device) -> "AgentModel":
        """The socket value for a loaded agent: ``module`` with its tokenizer and a ComfyUI ModelPatcher."""
        return cls(module, glue.make_patcher(load_device, offload_device, agent=module), tokenizer, config, source)

    def engine(self, visual_tokenizer: Optional[VisualTokenizerModel] = None, policy=None):
        """The story engine over the loaded (on-device) agent, and the visual tokenizer when given, for ``policy``
        (a story's ``settings.policy``; default: the pack's default policy), see
        :func:`seedstory_core.story.engine_for`."""
        self.ensure_loaded(visual_tokenizer)
        return engine_for(
            policy if policy is not None else default_policy(),
            self.module,
            self.tokenizer,
            visual_tokenizer.module if visual_tokenizer is not None else None,
        )

    def ensure_loaded(self, visual_tokenizer: Optional[VisualTokenizerModel] = None) -> None:
        """Ask ComfyUI's model management to (re)load the agent, and the visual tokenizer when given, onto their
        load device (after a render may have offloaded them)."""
        glue.load_models([self.patcher] + ([visual_tokenizer.patcher] if visual_tokenizer is not None else []))

    @property
    def feature_dim(self) -> int:
        return int(self.config.input_resampler.kv_dim)

    def get_ram_usage(self) -> int:
        return _module_bytes(self.module)

    def __repr__(self) -> str:
        return f"SeedStory agent ({self.source})"


@dataclass(eq=False)
class DetokenizerModel:
    """The de-tokenizer (ResamplerXLV2 + SD-XL UNet/VAE), its ModelPatcher, config and the unconditional
    features (ViT features of an all-zero image, computed once at load time; docs/reference.md §4.2)."""

    module: torch.nn.Module
    patcher: Any
    config: Any  # DetokenizerConfig
    uncond_features: torch.Tensor
    source: str

    @classmethod
    def wrap(cls, module, config, uncond: torch.Tensor, source: str, load_device, offload_device) -> "DetokenizerModel":
        """The socket value for a loaded de-tokenizer: ``module`` (and its VAE, which is not a submodule) under one
        ComfyUI ModelPatcher; ``uncond`` (1, T, D) is kept as float32 on the CPU."""
        patcher = glue.make_patcher(load_device, offload_device, detokenizer=module, vae=getattr(module, "vae", None))
        return cls(module, patcher, config, uncond.detach().float().cpu(), source)

    def loaded(self) -> torch.nn.Module:
        glue.load_models([self.patcher])
        return self.module

    @property
    def feature_dim(self) -> int:
        return int(self.config.resampler.embedding_dim)

    @property
    def native_size(self) -> int:
        return int(self.config.default_size)

    def get_ram_usage(self) -> int:
        return _module_bytes(self.module, getattr(self.module, "vae", None))

    def __repr__(self) -> str:
        return f"SeedStory de-tokenizer ({self.source})"


# ---------------------------------------------------------------------------------------------- our cache
# One entry per model kind: a second loader call with the same files/options returns the same object even when
# ComfyUI's output cache has moved on (classic cache keeps only the last prompt). "SeedStory Free Memory" clears it.
_CACHE: Dict[str, Tuple[Any, Any]] = {}
_LOCK = threading.Lock()
LOAD_COUNTS: Counter = Counter()  # kind -> number of real loads (tests read it)


def cached_load(kind: str, key: Any, load: Callable[[], Any]) -> Any:
    with _LOCK:
        hit = _CACHE.get(kind)
        if hit is not None and hit[0] == key:
            return hit[1]
    t0 = time.perf_counter()
    value = load()
    LOAD_COUNTS[kind] += 1
    # one line per real load (a cache hit logs nothing), so a server log shows how often models were loaded
    logging.info("[SeedStory] loaded %s in %.1f s", kind, time.perf_counter() - t0)
    with _LOCK:
        _CACHE[kind] = (key, value)
    return value


def clear_cache() -> int:
    with _LOCK:
        n = len(_CACHE)
        _CACHE.clear()
    return n


# ---------------------------------------------------------------------------------------------- checks
def _found(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} ({value.dtype})"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    return f"a {type(value).__name__}"


def require(value, cls, *, node: str, name: str, socket: str, hint: str):
    """Raise SeedStoryInputError unless ``value`` is a ``cls`` (e.g. a constant typed into a SEEDSTORY socket)."""
    if not isinstance(value, cls):
        raise SeedStoryInputError(
            f"{node}: input '{name}' expects a {socket} (connect the {hint}), but found {_found(value)}."
        )
    return value


#: The model sockets: the wrapper class each carries, and its socket type.
_MODEL_SOCKETS = {
    "agent": (AgentModel, AGENT),
    "visual_tokenizer": (VisualTokenizerModel, VISUAL_TOKENIZER),
    "detokenizer": (DetokenizerModel, DETOKENIZER),
}


def require_model(value, kind: str, *, node: str, name: Optional[str] = None):
    """:func:`require` for a model socket: ``kind`` is ``agent``, ``visual_tokenizer`` or ``detokenizer`` (the
    loader output to connect); ``name`` is the input's name (default: ``kind``).

    Raises:
        SeedStoryInputError: ``value`` is not that model (e.g. a constant typed into the socket).
    """
    cls, socket = _MODEL_SOCKETS[kind]
    return require(value, cls, node=node, name=name or kind, socket=socket, hint=f"{kind} output of a SeedStory loader")


def check_text(value, *, node: str, name: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise SeedStoryInputError(f"{node}: input '{name}' expects text (STRING), but found {_found(value)}.")
    if not allow_empty and not value.strip():
        raise SeedStoryInputError(
            f"{node}: input '{name}' is empty. Type the sentence that goes with the start image "
            "(e.g. 'George walked to the park.')."
        )
    return value


def check_image(value, *, node: str, name: str) -> torch.Tensor:
    """A ComfyUI IMAGE: float tensor [B, H, W, C] with C in 1..4 (any size; alpha/grayscale handled later)."""
    if not isinstance(value, torch.Tensor):
        raise SeedStoryInputError(
            f"{node}: input '{name}' expects an IMAGE (e.g. from Load Image), but found {_found(value)}."
        )
    original = tuple(value.shape)
    if value.dim() == 3 and value.shape[-1] in (1, 2, 3, 4):  # one [H, W, C] picture
        value = value.unsqueeze(0)
    if (
        value.dim() != 4
        or value.shape[0] < 1
        or value.shape[-1] not in (1, 2, 3, 4)
        or value.shape[1] < 1
        or value.shape[2] < 1
    ):
        raise SeedStoryInputError(
            f"{node}: input '{name}' expects an IMAGE batch [B, H, W, C] with C in 1..4, but found a tensor of shape "
            f"{original}. Connect an IMAGE output (Load Image, VAE Decode, ...), not a mask or latent."
        )
    return value


def check_features(value, *, node: str, name: str, dim: Optional[int] = None) -> torch.Tensor:
    """SEEDSTORY_IMAGE_FEATURES: a float tensor (B, T, D); ``dim`` = the model's D when known."""
    if not isinstance(value, torch.Tensor):
        raise SeedStoryInputError(
            f"{node}: input '{name}' expects {FEATURES} (from SeedStory ViT Tokenize, Story Start or Story Step), "
            f"but found {_found(value)}."
        )
    if value.dim() == 2:
        value = value.unsqueeze(0)
    if value.dim() != 3 or not value.is_floating_point() or value.shape[0] < 1:
        raise SeedStoryInputError(
            f"{node}: input '{name}' expects image features of shape (B, T, D), but found {_found(value)}."
        )
    if dim is not None and value.shape[-1] != dim:
        raise SeedStoryInputError(
            f"{node}: input '{name}' has features of width {value.shape[-1]}, but this model expects {dim}. The "
            "features come from another SEED-Story model (e.g. tiny vs official); use the same model everywhere."
        )
    return value


def image_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] (C in 1..4) -> [B, H, W, 3] float in 0..1 (alpha dropped, grayscale replicated). New tensor."""
    c = image.shape[-1]
    img = image.float()
    if c in (1, 2):
        img = img[..., :1].expand(*img.shape[:-1], 3)
    elif c == 4:
        img = img[..., :3]
    return img.clamp(0, 1).contiguous()


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H, W, 3] -> [B, height, width, 3] (bilinear, antialiased); returns a new tensor."""
    if image.shape[1] == height and image.shape[2] == width:
        return image.clone()
    x = image.permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).clamp(0, 1).contiguous()
