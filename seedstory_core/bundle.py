"""A complete SEED-Story model in one folder: config, tokenizer, visual tokenizer, agent, de-tokenizer.

Folder layout (written by :meth:`SeedStoryBundle.save`, read by :meth:`SeedStoryBundle.load`; the bundled tiny
model and the training stages use it)::

    seedstory_config.json             SeedStoryConfig (all sizes)
    tokenizer/                        SeedStoryTokenizer.save (tokenizer.json + the 66 image tokens)
    visual_tokenizer/model.safetensors   ViT state dict, official key names (= qwen_vit_G.pt keys)
    agent/                            SeedStoryAgent.save_pretrained (model.safetensors + agent_config.json)
    detokenizer/adapter.safetensors   resampler.* + unet.*to_k/to_v (the official adapter layout,
                                      docs/reference.md §4.2)
    detokenizer/sdxl/                 diffusers folder (unet/, vae/, scheduler/) standing in for SD-XL base

The official release is not a bundle: load its files with the per-component loaders (see
:func:`load_visual_tokenizer`, :meth:`SeedStoryAgent.from_pretrained`, :meth:`SeedStoryDetokenizer.from_pretrained`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import save_file

from .agent import SeedStoryAgent
from .checkpoints import apply_state_dict, read_state_dict, require_kind
from .config import CONFIG_FILENAME, SeedStoryConfig, VisualTokenizerConfig
from .detokenizer import SeedStoryDetokenizer
from .preprocess import zero_image_pixels
from .story import default_policy, engine_for
from .tokenizer import SeedStoryTokenizer
from .visual_tokenizer import QwenVisualTokenizer

PathLike = Union[str, Path]


def load_visual_tokenizer(path: PathLike, config: VisualTokenizerConfig, *, device=None, dtype=None):
    """Load the Qwen-VL ViT (``qwen_vit_G.pt`` or a safetensors copy) without a second copy of the weights.

    Builds on the meta device, assigns the file's tensors (strict: every key accounted for, shapes checked with
    :class:`~seedstory_core.checkpoints.CheckpointMismatchError`), recomputes the frozen sin-cos table if absent.
    Returns ``(model, LoadReport)``; the model is in eval mode. Raises ``WrongCheckpointKindError`` for a file of
    another model.
    """
    path = Path(path)
    state = read_state_dict(path)
    require_kind(list(state), "visual_tokenizer", path)
    with torch.device("meta"):
        model = QwenVisualTokenizer(config)
    report = apply_state_dict(model, state, source=str(path), allowed_missing=lambda k: k == "attn_pool.pos_embed")
    if "attn_pool.pos_embed" in report.missing:
        model.reset_non_persistent()  # recomputed on the device the assigned tensors live on
        report.notes.append("attn_pool.pos_embed recomputed (frozen 2-D sin-cos table)")
    model.to(device=device or "cpu", dtype=dtype)
    return model.eval(), report


@dataclass
class SeedStoryBundle:
    """Every component of one model, ready to run. ``uncond_features`` = ViT features of an all-zero image
    (the de-tokenizer's unconditional branch, docs/reference.md §4.2), computed once."""

    config: SeedStoryConfig
    tokenizer: object
    visual_tokenizer: torch.nn.Module
    agent: torch.nn.Module
    detokenizer: torch.nn.Module
    uncond_features: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.uncond_features is None:
            self.uncond_features = self.compute_uncond_features()

    @torch.no_grad()
    def compute_uncond_features(self) -> torch.Tensor:
        vit = self.visual_tokenizer
        pixels = zero_image_pixels(self.config.visual_tokenizer.image_size)
        return vit(pixels.to(device=vit.device, dtype=vit.dtype))

    def engine(self, policy=None):
        """The story engine over this bundle's agent, tokenizer and ViT that runs ``policy`` (a
        :class:`~seedstory_core.cache.CachePolicy` or :class:`~seedstory_core.reencode.ReencodePolicy`; default
        the pack's default policy): see :func:`seedstory_core.story.engine_for`."""
        return engine_for(
            policy if policy is not None else default_policy(), self.agent, self.tokenizer, self.visual_tokenizer
        )

    def render(self, features, *, frame_index: int = 0, steps: int = 30, guidance_scale: float = 7.5, seed: int = 0):
        """One frame from (1, T, D) regressed features with the de-tokenizer (classifier-free guidance against
        :attr:`uncond_features`; noise seeded by ``(seed, frame_index)``). Returns a PIL image of the
        de-tokenizer's default size."""
        return self.detokenizer.generate(
            features,
            self.uncond_features,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            seed=seed,
            frame_index=frame_index,
            output="pil",
        )[0]

    def to(self, device=None, dtype=None) -> "SeedStoryBundle":
        for module in (self.visual_tokenizer, self.agent, self.detokenizer):
            module.to(device=device, dtype=dtype)
        vae = getattr(self.detokenizer, "vae", None)
        if vae is not None:
            vae.to(device=device)
        self.uncond_features = self.uncond_features.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, folder: PathLike) -> Path:
        """Write the bundle layout (module docstring) into ``folder``; returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        self.tokenizer.save(folder / "tokenizer")
        (folder / "visual_tokenizer").mkdir(exist_ok=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.visual_tokenizer.state_dict().items()},
            str(folder / "visual_tokenizer" / "model.safetensors"),
        )
        self.agent.save_pretrained(folder / "agent")
        det = folder / "detokenizer"
        det.mkdir(exist_ok=True)
        self.detokenizer.save_adapter(det / "adapter.safetensors")
        self.detokenizer.unet.save_pretrained(det / "sdxl" / "unet", safe_serialization=True)
        self.detokenizer.vae.save_pretrained(det / "sdxl" / "vae", safe_serialization=True)
        self.detokenizer.scheduler.save_pretrained(det / "sdxl" / "scheduler")
        return folder

    @classmethod
    def load(cls, folder: PathLike, *, device=None, dtype=None) -> "SeedStoryBundle":
        """Read a bundle folder. Raises ``FileNotFoundError`` naming the missing part."""
        folder = Path(folder)
        for part in (
            CONFIG_FILENAME,
            "tokenizer",
            "visual_tokenizer/model.safetensors",
            "agent",
            "detokenizer/adapter.safetensors",
            "detokenizer/sdxl",
        ):
            if not (folder / part).exists():
                raise FileNotFoundError(f"{folder} is not a complete seedstory model folder: {part} is missing")
        config = SeedStoryConfig.load(folder)
        tokenizer = SeedStoryTokenizer.from_folder(folder / "tokenizer", config.agent.image_tokens)
        vit, _ = load_visual_tokenizer(
            folder / "visual_tokenizer" / "model.safetensors", config.visual_tokenizer, device=device, dtype=dtype
        )
        agent, _ = SeedStoryAgent.from_pretrained(folder / "agent", config.agent, device=device, dtype=dtype)
        detok = SeedStoryDetokenizer.from_pretrained(
            folder / "detokenizer" / "adapter.safetensors",
            folder / "detokenizer" / "sdxl",
            config.detokenizer,
            device=device,
            dtype=dtype,
        )
        if tokenizer.vocab_size != config.agent.llm.vocab_size:
            raise ValueError(
                f"{folder}: tokenizer has {tokenizer.vocab_size} tokens "
                f"but the agent expects {config.agent.llm.vocab_size}"
            )
        return cls(config, tokenizer, vit, agent.eval(), detok.eval())
