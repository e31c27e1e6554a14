"""Plain-dataclass configuration of every SEED-Story component; the defaults are the official sizes.

Every config round-trips through JSON (``to_dict`` / ``from_dict``) so it can be saved next to the weights it
describes (``seedstory_config.json``). Field names follow the official constructor arguments where one exists
(docs/reference.md §1, §2.2-2.3, §4.1), so a golden fixture's ``constructor_kwargs`` maps 1:1 onto them.

Dimension chaining (docs/reference.md §0 "Dimension chaining"):

* ``vit.output_dim == llm.hidden_size == input/output resampler embed_dim == detokenizer.embedding_dim``
* ``vit.n_queries == output_resampler.num_queries == number of ViT tokens the de-tokenizer reads``
* ``input_resampler.num_queries == number of <img_xxxxx> tokens per image``

:func:`SeedStoryConfig.validate` checks these and raises ``ValueError`` naming the mismatching fields.
:func:`official_config` is the released model; the small sizes of tests and the bundled demo model are
:func:`seedstory_core.tiny.tiny_config`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from transformers import LlamaConfig

CONFIG_FILENAME = "seedstory_config.json"


def _filter_kwargs(cls, data: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown config keys {unknown}; expected a subset of {sorted(names)}. "
            "Check that the JSON was written by this version of seedstory."
        )
    return {k: v for k, v in data.items() if k in names}


class _JsonMixin:
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        return cls(**_filter_kwargs(cls, dict(data)))


@dataclass(frozen=True)
class VisualTokenizerConfig(_JsonMixin):
    """Qwen-VL ViT-G/14 with attention pooling (docs/reference.md §1).

    Field names are the official ``VisionTransformerWithAttnPool`` constructor arguments. The trunk LayerNorms
    and the attention-pool LayerNorms use ``layernorm_eps`` (1e-6 officially). Output: (B, n_queries, output_dim).
    """

    image_size: int = 448
    patch_size: int = 14
    width: int = 1664
    layers: int = 48
    heads: int = 16
    mlp_ratio: float = 4.9231
    n_queries: int = 256
    output_dim: int = 4096
    layernorm_eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_width(self) -> int:
        # Truncation, not rounding (docs/reference.md §1: int(1664 x 4.9231) = 8192).
        return int(self.width * self.mlp_ratio)

    @property
    def attn_pool_heads(self) -> int:
        return self.output_dim // 128


@dataclass(frozen=True)
class ResamplerConfig(_JsonMixin):
    """Qwen ``Resampler`` used as the agent's input / output resampler (docs/reference.md §2.3).

    ``num_queries = grid_size ** 2``. ``kv_dim == embed_dim`` makes ``kv_proj`` an identity with no weights.
    """

    grid_size: int = 8
    embed_dim: int = 4096
    num_heads: int = 32
    kv_dim: int = 4096
    layernorm_eps: float = 1e-5

    @property
    def num_queries(self) -> int:
        return self.grid_size**2


@dataclass(frozen=True)
class LoraSettings(_JsonMixin):
    """peft LoRA of the official ``llama2chat7b_lora.yaml`` (docs/reference.md §2.2)."""

    r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: Tuple[str, ...] = ("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj")
    modules_to_save: Tuple[str, ...] = ("input_layernorm", "post_attention_layernorm", "norm")

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        data = {k: v for k, v in dict(data).items() if k not in ("task_type", "bias")}
        for key in ("target_modules", "modules_to_save"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**_filter_kwargs(cls, data))


@dataclass(frozen=True)
class LlamaSettings(_JsonMixin):
    """The LLaMA decoder (transformers ``LlamaConfig`` fields; docs/reference.md §2.2).

    ``vocab_size`` is after the resize.
    """

    vocab_size: int = 32066
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def to_transformers(self):
        """Return a ``transformers.LlamaConfig`` (untied lm_head, silu, no attention/MLP bias)."""
        kwargs = self.to_dict()
        rope_theta = kwargs.pop("rope_theta")
        cfg = LlamaConfig(
            **kwargs,
            hidden_act="silu",
            tie_word_embeddings=False,
            attention_bias=False,
            mlp_bias=False,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        )
        return cfg


@dataclass(frozen=True)
class ImageTokenSettings(_JsonMixin):
    """The 2 + n image tokens added to the LLaMA vocabulary (docs/reference.md §2.1)."""

    boi: str = "<img>"
    eoi: str = "</img>"
    img_template: str = "<img_{:05d}>"
    num_img_tokens: int = 64

    def img_strings(self):
        return [self.img_template.format(i) for i in range(self.num_img_tokens)]


@dataclass(frozen=True)
class AgentConfig(_JsonMixin):
    """ContinuousLVLM: LLaMA + LoRA + input/output resamplers (docs/reference.md §2)."""

    llm: LlamaSettings = field(default_factory=LlamaSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    input_resampler: ResamplerConfig = field(default_factory=lambda: ResamplerConfig(grid_size=8))
    output_resampler: ResamplerConfig = field(default_factory=lambda: ResamplerConfig(grid_size=16))
    image_tokens: ImageTokenSettings = field(default_factory=ImageTokenSettings)
    lm_loss_scale: float = 1.0
    rec_loss_scale: float = 1.0

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        data = dict(data)
        return cls(
            llm=LlamaSettings.from_dict(data.pop("llm", {})),
            lora=LoraSettings.from_dict(data.pop("lora", {})),
            input_resampler=ResamplerConfig.from_dict(data.pop("input_resampler", {})),
            output_resampler=ResamplerConfig.from_dict(data.pop("output_resampler", {})),
            image_tokens=ImageTokenSettings.from_dict(data.pop("image_tokens", {})),
            **_filter_kwargs(cls, data),
        )


@dataclass(frozen=True)
class DetokenizerResamplerConfig(_JsonMixin):
    """``ResamplerXLV2`` + its ``unet_attnpool`` head (docs/reference.md §4.1); official constructor argument names."""

    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 16
    num_queries: int = 64
    embedding_dim: int = 4096
    output1_dim: int = 768
    output2_dim: int = 1280
    ff_mult: int = 4

    @property
    def prompt_embeds_dim(self) -> int:
        return self.output1_dim + self.output2_dim


@dataclass(frozen=True)
class DetokenizerConfig(_JsonMixin):
    """De-tokenizer: ``ResamplerXLV2`` feeding an SD-XL UNet (docs/reference.md §4).

    ``sdxl_preset`` names a folder under ``seedstory_core/configs/`` holding diffusers ``unet/``, ``vae/`` and
    ``scheduler/`` config JSONs (``sdxl_base`` = the official SD-XL base 1.0 layout, ``sdxl_tiny`` = tests).
    ``default_size`` is the generated image side in pixels (1024 officially).
    """

    resampler: DetokenizerResamplerConfig = field(default_factory=DetokenizerResamplerConfig)
    sdxl_preset: str = "sdxl_base"
    default_size: int = 1024

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        data = dict(data)
        return cls(
            resampler=DetokenizerResamplerConfig.from_dict(data.pop("resampler", {})), **_filter_kwargs(cls, data)
        )


@dataclass(frozen=True)
class SeedStoryConfig(_JsonMixin):
    """All components of one SEED-Story model. Saved as ``seedstory_config.json`` next to the weights."""

    name: str = "official"
    visual_tokenizer: VisualTokenizerConfig = field(default_factory=VisualTokenizerConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    detokenizer: DetokenizerConfig = field(default_factory=DetokenizerConfig)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        data = dict(data)
        cfg = cls(
            name=data.pop("name", "custom"),
            visual_tokenizer=VisualTokenizerConfig.from_dict(data.pop("visual_tokenizer", {})),
            agent=AgentConfig.from_dict(data.pop("agent", {})),
            detokenizer=DetokenizerConfig.from_dict(data.pop("detokenizer", {})),
        )
        if data:
            raise ValueError(f"SeedStoryConfig: unknown top-level keys {sorted(data)}")
        return cfg

    # ------------------------------------------------------------------ persistence
    def save(self, folder) -> Path:
        """Write ``seedstory_config.json`` into ``folder`` (created if needed); returns the file path."""
        path = Path(folder) / CONFIG_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "SeedStoryConfig":
        """Read a config from a ``seedstory_config.json`` file or a folder containing one.

        Raises ``FileNotFoundError`` naming the path when it is missing.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"No SEED-Story config at {path}: expected a {CONFIG_FILENAME} written by seedstory."
            )
        cfg = cls.from_dict(json.loads(path.read_text()))
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------ checks
    def validate(self) -> "SeedStoryConfig":
        """Check the dimension chaining; raises ``ValueError`` listing every broken link."""
        v, a, d = self.visual_tokenizer, self.agent, self.detokenizer.resampler
        problems = []
        hidden = a.llm.hidden_size
        for label, value in (
            ("visual_tokenizer.output_dim", v.output_dim),
            ("agent.input_resampler.embed_dim", a.input_resampler.embed_dim),
            ("agent.output_resampler.embed_dim", a.output_resampler.embed_dim),
            ("detokenizer.resampler.embedding_dim", d.embedding_dim),
        ):
            if value != hidden:
                problems.append(f"{label}={value} but agent.llm.hidden_size={hidden}")
        if a.output_resampler.num_queries != v.n_queries:
            problems.append(
                f"agent.output_resampler.grid_size**2={a.output_resampler.num_queries} "
                f"but visual_tokenizer.n_queries={v.n_queries}"
            )
        if a.input_resampler.num_queries != a.image_tokens.num_img_tokens:
            problems.append(
                f"agent.input_resampler.grid_size**2={a.input_resampler.num_queries} "
                f"but image_tokens.num_img_tokens={a.image_tokens.num_img_tokens}"
            )
        if int(math.isqrt(v.n_queries)) ** 2 != v.n_queries:
            problems.append(f"visual_tokenizer.n_queries={v.n_queries} is not a square")
        if problems:
            raise ValueError("Inconsistent SEED-Story config:\n  " + "\n  ".join(problems))
        return self


# ---------------------------------------------------------------------- the official sizes
def official_config() -> SeedStoryConfig:
    """Full-size SEED-Story (docs/reference.md §1, §2, §4): ViT-G 448, Llama-2-7b + LoRA r16, SD-XL base
    de-tokenizer."""
    return SeedStoryConfig(name="official").validate()


def torch_dtype(dtype):
    """A ``torch.dtype`` from its name (``fp32``/``float32``, ``fp16``/``float16``, ``bf16``/``bfloat16``); a
    ``torch.dtype`` or None is returned as it is.

    Raises:
        ValueError: an unknown name (the message lists the accepted ones).
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    if dtype not in names:
        raise ValueError(f"Unknown dtype {dtype!r}; expected a torch.dtype or one of {sorted(names)}")
    return names[dtype]
