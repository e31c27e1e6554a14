"""Render nodes: De-tokenize (features -> IMAGE) and Features -> CONDITIONING (for the native KSampler)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from seedstory_core.detokenizer import SCHEDULER_NAMES

from . import comfy_glue as glue
from .inputs import check_widgets, require_widgets
from .models import DETOKENIZER, FEATURES, DetokenizerModel, SeedStoryInputError, check_features, require_model

RENDER_TOOLTIPS = {
    "steps": "Diffusion steps per frame (official 30-50; the tiny model needs only 2-4).",
    "guidance_scale": "Classifier-free guidance against the all-zero image (official 7.5; <=1 turns it off).",
    "scheduler": "Diffusion sampler (euler = the official choice).",
    "seed": "Noise seed. Frame i of a batch uses the noise of (seed, frame_index + i) so every frame differs "
    "reproducibly; frame 0 with seed 42 matches the official code.",
    "frame_index": "Index of the first frame (sets its noise, see seed); use the story step number.",
    "same_noise": "Use the same starting noise (the seed) for every frame, like the official scripts.",
    "width": "Output width in pixels, a multiple of 8 (0 = the model's native size: 1024 official, 64 tiny).",
    "height": "Output height in pixels, a multiple of 8 (0 = the model's native size: 1024 official, 64 tiny).",
}


def check_render_values(node: str, detok: DetokenizerModel, *, guidance_scale, width: int, height: int) -> None:
    """The render values a node checks before any model work: a finite guidance scale, and a size (pixels, after 0
    was replaced by the native size) that is a positive multiple of the de-tokenizer's VAE factor (8 for SD-XL and
    the tiny model). Validation already refused non-multiples of the widgets' step (8); this also holds for a linked
    value and a de-tokenizer of another factor.

    Raises:
        SeedStoryInputError: ``"<node>: ..."`` with the value found and one to use.
    """
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise SeedStoryInputError(
            f"{node}: 'guidance_scale' must be a finite number (official 7.5; <= 1 turns guidance off), found "
            f"{guidance_scale!r}."
        )
    f = int(getattr(detok.module, "vae_scale_factor", 8))
    if width <= 0 or height <= 0 or width % f or height % f:
        raise SeedStoryInputError(
            f"{node}: width and height must be positive multiples of {f} (the de-tokenizer's VAE factor), found "
            f"{width}x{height}; use {max(f, width // f * f)}x{max(f, height // f * f)}. Nothing was rendered."
        )


def render_features(
    detok: DetokenizerModel,
    features: torch.Tensor,
    *,
    steps: int,
    guidance_scale: float,
    scheduler: str,
    seed: int,
    frame_index: int,
    same_noise: bool,
    width: int,
    height: int,
    node: str,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> torch.Tensor:
    """Render (B, T, D) features -> IMAGE [B, H, W, 3] float 0..1 on ComfyUI's intermediate device.

    ``node`` (the calling node's name) starts the error messages.

    Raises:
        SeedStoryInputError: an unknown scheduler, a guidance scale that is not finite or a size the de-tokenizer
            refuses (:func:`check_render_values`), before any model work.
    """
    if scheduler not in SCHEDULER_NAMES:
        raise SeedStoryInputError(f"{node}: scheduler must be one of {list(SCHEDULER_NAMES)}, found {scheduler!r}.")
    check_render_values(node, detok, guidance_scale=guidance_scale, width=int(width), height=int(height))
    module = detok.loaded()

    def callback(step, total):
        glue.check_interrupted()
        if on_step is not None:
            on_step(step, total)

    try:
        images = module.generate(
            features,
            detok.uncond_features,
            num_inference_steps=int(steps),
            guidance_scale=float(guidance_scale),
            scheduler=scheduler,
            width=int(width),
            height=int(height),
            seed=int(seed),
            frame_index=int(frame_index),
            same_noise_every_frame=bool(same_noise),
            callback=callback,
            output="tensor",
        )
    except ValueError as err:
        raise SeedStoryInputError(f"{node}: {err}") from err
    return images.to(glue.intermediate_device())


class SeedStoryDetokenize:
    NODE_ID = "SeedStoryDetokenize"
    DISPLAY_NAME = "SeedStory De-tokenize"
    SEARCH_ALIASES = ["render", "decode features", "image from features", "story frames"]
    DESCRIPTION = (
        "Renders SEED-Story image features into pictures with the de-tokenizer (resampler -> SD-XL UNet "
        "-> VAE). A batch of features gives a batch of images; progress is shown per diffusion step."
    )
    CATEGORY = "SEED-Story/render"
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The rendered frames [B, H, W, 3].",)

    @classmethod
    def INPUT_TYPES(cls):
        t = RENDER_TOOLTIPS
        return {
            "required": {
                "detokenizer": (
                    DETOKENIZER,
                    {"tooltip": "The de-tokenizer (SeedStory De-tokenizer Loader or Tiny Model Loader)."},
                ),
                "features": (FEATURES, {"tooltip": "Image features from Story Step / Story Start / ViT Tokenize."}),
                "steps": ("INT", {"default": 30, "min": 1, "max": 200, "tooltip": t["steps"]}),
                "guidance_scale": (
                    "FLOAT",
                    {"default": 7.5, "min": 0.0, "max": 30.0, "step": 0.1, "tooltip": t["guidance_scale"]},
                ),
                "scheduler": (list(SCHEDULER_NAMES), {"default": "euler", "tooltip": t["scheduler"]}),
                "seed": (
                    "INT",
                    {"default": 42, "min": 0, "max": 2**63 - 1, "control_after_generate": True, "tooltip": t["seed"]},
                ),
                "frame_index": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": t["frame_index"]}),
                "same_noise": ("BOOLEAN", {"default": False, "tooltip": t["same_noise"]}),
                "width": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": t["width"]}),
                "height": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 8, "tooltip": t["height"]}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, guidance_scale=None, width=None, height=None):
        # naming them skips ComfyUI's own min/max check: check_widgets redoes it (nodes/inputs.py)
        return check_widgets(cls, guidance_scale=guidance_scale, width=width, height=height)

    def render(
        self,
        detokenizer,
        features,
        steps=30,
        guidance_scale=7.5,
        scheduler="euler",
        seed=42,
        frame_index=0,
        same_noise=False,
        width=0,
        height=0,
    ):
        node = self.DISPLAY_NAME
        require_widgets(self.__class__, guidance_scale=guidance_scale)  # the size: render_features, for the model
        detok = require_model(detokenizer, "detokenizer", node=node)
        feats = check_features(features, node=node, name="features", dim=detok.feature_dim)
        progress = glue.Progress(int(steps))
        images = render_features(
            detok,
            feats,
            steps=int(steps),
            guidance_scale=guidance_scale,
            scheduler=scheduler,
            seed=int(seed),
            frame_index=int(frame_index),
            same_noise=same_noise,
            width=int(width) or detok.native_size,
            height=int(height) or detok.native_size,
            on_step=lambda s, total: progress.set(s),
            node=node,
        )
        return (images,)


class SeedStoryFeaturesToConditioning:
    NODE_ID = "SeedStoryFeaturesToConditioning"
    DISPLAY_NAME = "SeedStory Features to Conditioning"
    SEARCH_ALIASES = ["conditioning", "sdxl", "ksampler", "image prompt"]
    DESCRIPTION = (
        "Turns SEED-Story image features into SD-XL CONDITIONING (the de-tokenizer resampler's prompt "
        "embeddings + pooled vector) so the native KSampler / VAE Decode can render frames with an SD-XL "
        "checkpoint. Note: the official de-tokenizer also adapts the UNet (to_k/to_v weights differ from "
        "plain SD-XL), so a stock SD-XL UNet gives lower quality than SeedStory De-tokenize. The "
        "conditioning width must match the checkpoint (2048/1280 for the official model and SD-XL)."
    )
    CATEGORY = "SEED-Story/render"
    FUNCTION = "convert"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    OUTPUT_TOOLTIPS = (
        "SD-XL conditioning of the features (one entry per frame in the batch).",
        "SD-XL conditioning of the all-zero image (the de-tokenizer's unconditional branch).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "detokenizer": (DETOKENIZER, {"tooltip": "The de-tokenizer whose resampler encodes the features."}),
                "features": (FEATURES, {"tooltip": "Image features (B, T, D)."}),
                "width": (
                    "INT",
                    {
                        "default": 1024,
                        "min": 8,
                        "max": 8192,
                        "step": 8,
                        "tooltip": "SD-XL size conditioning: the image width you will sample.",
                    },
                ),
                "height": (
                    "INT",
                    {
                        "default": 1024,
                        "min": 8,
                        "max": 8192,
                        "step": 8,
                        "tooltip": "SD-XL size conditioning: the image height you will sample.",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None):
        return check_widgets(cls, width=width, height=height)

    def convert(self, detokenizer, features, width=1024, height=1024):
        node = self.DISPLAY_NAME
        require_widgets(self.__class__, width=width, height=height)
        detok = require_model(detokenizer, "detokenizer", node=node)
        feats = check_features(features, node=node, name="features", dim=detok.feature_dim)
        module = detok.loaded()
        with torch.no_grad():
            embeds, pooled = module.encode(feats)
            neg_embeds, neg_pooled = module.encode(detok.uncond_features)
        dev = glue.intermediate_device()
        size = {
            "width": int(width),
            "height": int(height),
            "crop_w": 0,
            "crop_h": 0,
            "target_width": int(width),
            "target_height": int(height),
        }
        positive = [[embeds.float().to(dev), {"pooled_output": pooled.float().to(dev), **size}]]
        negative = [[neg_embeds.float().to(dev), {"pooled_output": neg_pooled.float().to(dev), **size}]]
        return (positive, negative)
