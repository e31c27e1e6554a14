"""Loader nodes: visual tokenizer, MLLM agent, de-tokenizer, and the one-click bundled tiny model."""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from seedstory_core import quant
from seedstory_core.agent import AGENT_CONFIG_FILENAME, SeedStoryAgent
from seedstory_core.bundle import SeedStoryBundle, load_visual_tokenizer
from seedstory_core.checkpoints import CheckpointError
from seedstory_core.config import CONFIG_FILENAME, AgentConfig, SeedStoryConfig, official_config
from seedstory_core.detokenizer import SeedStoryDetokenizer
from seedstory_core.preprocess import zero_image_pixels
from seedstory_core.tiny import random_tiny_bundle, tiny_config
from seedstory_core.tokenizer import SeedStoryTokenizer

from . import comfy_glue as glue
from .models import (
    AGENT,
    DETOKENIZER,
    VISUAL_TOKENIZER,
    AgentModel,
    DetokenizerModel,
    SeedStoryInputError,
    VisualTokenizerModel,
    cached_load,
    require,
)

CATEGORY = "SEED-Story/loaders"
CONFIG_CHOICES = ("auto", "official", "tiny")
CONFIG_TOOLTIP = (
    "Model sizes. auto = read seedstory_config.json next to the file (or one folder up) when there is "
    "one, else the official SEED-Story sizes. official = the released SEED-Story-George model. tiny = "
    "the small test/demo model."
)
NONE = "none"


WEIGHT_DTYPE_TOOLTIP = (
    "How the big weight matrices are stored (like ComfyUI's weight_dtype). default = in the precision above. "
    "fp8_e4m3fn = 1 byte per weight, cast per layer to the precision above (about half of fp16). int8 = weight-only "
    "int8 through torchao (about half of fp16; runs on the CPU too). Measured quality cost and memory per card: "
    "docs/models.md."
)


def _device_inputs():
    return {
        "precision": (list(glue.PRECISIONS), {"default": "auto", "tooltip": glue.PRECISION_TOOLTIP}),
        "device": (list(glue.DEVICES), {"default": "auto", "tooltip": glue.DEVICE_TOOLTIP}),
    }


def _weight_dtype_input(choices=quant.WEIGHT_STORAGES, tooltip: str = WEIGHT_DTYPE_TOOLTIP):
    return {"weight_dtype": (list(choices), {"default": quant.DEFAULT, "tooltip": tooltip})}


def _storage(node: str, weight_dtype: str, choices=quant.WEIGHT_STORAGES) -> str:
    if weight_dtype not in choices:
        raise SeedStoryInputError(
            f"{node}: weight_dtype must be one of {list(choices)}, found {weight_dtype!r}. Pick one of those."
        )
    return weight_dtype


def _resolve_config(choice: str, path: str):
    if choice == "official":
        return official_config()
    if choice == "tiny":
        return tiny_config()
    if choice != "auto":
        raise SeedStoryInputError(f"config must be one of {CONFIG_CHOICES}, found {choice!r}.")
    here = path if os.path.isdir(path) else os.path.dirname(path)
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, CONFIG_FILENAME)):
            return SeedStoryConfig.load(folder)
    return official_config()


def _loading_errors(node: str, what: str, fn):
    """Run ``fn``; turn the core library's file errors into one clear node error."""
    try:
        return fn()
    except (CheckpointError, FileNotFoundError, OSError, ValueError, KeyError) as err:
        if isinstance(err, SeedStoryInputError):
            raise
        raise SeedStoryInputError(f"{node}: could not load the {what}: {err}") from err


def _placement(precision: str, device: str):
    load_device, offload_device = glue.resolve_device(device)
    dtype = glue.resolve_dtype(precision, load_device)
    return load_device, offload_device, dtype


# ---------------------------------------------------------------------------------------------- visual tokenizer
class SeedStoryVisualTokenizerLoader:
    NODE_ID = "SeedStoryVisualTokenizerLoader"
    DISPLAY_NAME = "SeedStory Visual Tokenizer Loader"
    SEARCH_ALIASES = ["load vit", "qwen-vl vit", "visual encoder", "seed story"]
    DESCRIPTION = (
        "Loads the SEED-Story visual tokenizer (the Qwen-VL ViT-G that turns a picture into 64 feature "
        "vectors) from ComfyUI/models/seed_story/visual_tokenizer, e.g. qwen_vit_G.pt of the official "
        "release. Needed to start a story from an IMAGE and by the de-tokenizer loader."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (VISUAL_TOKENIZER,)
    RETURN_NAMES = ("visual_tokenizer",)
    OUTPUT_TOOLTIPS = (
        "The visual tokenizer, for ViT Tokenize, Story Start, Generate Story and the de-tokenizer loader.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vit_name": (
                    glue.list_files("seed_story_visual_tokenizer"),
                    {
                        "tooltip": "Visual tokenizer weights in models/seed_story/visual_tokenizer "
                        "(official: qwen_vit_G.pt; .safetensors copies are loaded without pickle)."
                    },
                ),
                "config": (list(CONFIG_CHOICES), {"default": "auto", "tooltip": CONFIG_TOOLTIP}),
                **_device_inputs(),
                **_weight_dtype_input(),
            }
        }

    def load(self, vit_name, config="auto", precision="auto", device="auto", weight_dtype=quant.DEFAULT):
        node = self.DISPLAY_NAME
        storage = _storage(node, weight_dtype)
        path = _loading_errors(
            node, "visual tokenizer", lambda: glue.full_path("seed_story_visual_tokenizer", vit_name)
        )
        load_device, offload_device, dtype = _placement(precision, device)
        key = (os.path.realpath(path), os.path.getmtime(path), config, str(load_device), str(dtype), storage)

        def load():
            cfg = _resolve_config(config, path)
            module, _report = load_visual_tokenizer(path, cfg.visual_tokenizer, device=offload_device, dtype=dtype)
            quant.store_weights(module, storage)
            return VisualTokenizerModel.wrap(module, cfg.visual_tokenizer, vit_name, load_device, offload_device)

        return (cached_load("visual_tokenizer", key, lambda: _loading_errors(node, "visual tokenizer", load)),)


# ---------------------------------------------------------------------------------------------- agent
class SeedStoryAgentLoader:
    NODE_ID = "SeedStoryAgentLoader"
    DISPLAY_NAME = "SeedStory Agent Loader"
    SEARCH_ALIASES = ["load llm", "llama lora", "story model", "mllm", "seed story"]
    DESCRIPTION = (
        "Loads the SEED-Story MLLM agent (LLaMA-2 + LoRA + input/output resamplers) that writes the story "
        "and regresses each next image's features. Agent weights from models/seed_story/agent (official: "
        "SEED-Story-George pytorch_model.bin), the tokenizer folder from models/seed_story/tokenizer "
        "(cvlm_llama2_tokenizer) and, for agent files that hold only the trainable tensors, the base "
        "Llama-2-7b-hf folder from models/seed_story/llm."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (AGENT,)
    RETURN_NAMES = ("agent",)
    OUTPUT_TOOLTIPS = ("The story agent with its tokenizer, for Story Start / Story Step / Generate Story.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "agent_name": (
                    glue.list_files("seed_story_agent"),
                    {
                        "tooltip": "Agent weights in models/seed_story/agent: the official pytorch_model.bin, "
                        "a .safetensors file, or model.safetensors(.index.json) written by seedstory "
                        "(agent_config.json next to it)."
                    },
                ),
                "tokenizer_name": (
                    glue.list_subfolders("seed_story_tokenizer"),
                    {
                        "tooltip": "Tokenizer folder in models/seed_story/tokenizer (official: cvlm_llama2_tokenizer, "
                        "the LLaMA-2 tokenizer with the 66 image tokens)."
                    },
                ),
                "base_llm": (
                    [NONE] + glue.list_subfolders("seed_story_llm", depth=1) + glue.list_files("seed_story_llm"),
                    {
                        "default": NONE,
                        "tooltip": "Base LLaMA weights (folder in models/seed_story/llm, e.g. Llama-2-7b-hf) for agent "
                        "files that hold only the trainable LoRA/resampler tensors. none = the agent file is complete.",
                    },
                ),
                "config": (list(CONFIG_CHOICES), {"default": "auto", "tooltip": CONFIG_TOOLTIP}),
                **_device_inputs(),
                **_weight_dtype_input(),
            }
        }

    def load(
        self,
        agent_name,
        tokenizer_name,
        base_llm=NONE,
        config="auto",
        precision="auto",
        device="auto",
        weight_dtype=quant.DEFAULT,
    ):
        node = self.DISPLAY_NAME
        storage = _storage(node, weight_dtype)
        path = _loading_errors(node, "agent", lambda: glue.full_path("seed_story_agent", agent_name))
        tok_path = _loading_errors(
            node, "tokenizer", lambda: glue.full_path("seed_story_tokenizer", tokenizer_name, folder=True)
        )
        llm_path: Optional[str] = None
        if base_llm and base_llm != NONE:
            llm_path = _loading_errors(node, "base LLaMA", lambda: _file_or_folder("seed_story_llm", base_llm))
        load_device, offload_device, dtype = _placement(precision, device)
        key = (
            os.path.realpath(path),
            os.path.getmtime(path),
            os.path.realpath(tok_path),
            llm_path,
            config,
            str(load_device),
            str(dtype),
            storage,
        )

        def load():
            agent_cfg, cfg_name = _agent_config(config, path)
            tokenizer = SeedStoryTokenizer.from_folder(tok_path, agent_cfg.image_tokens)
            if tokenizer.vocab_size != agent_cfg.llm.vocab_size:
                raise SeedStoryInputError(
                    f"{node}: tokenizer {tokenizer_name!r} has {tokenizer.vocab_size} tokens but the agent config "
                    f"({cfg_name}) expects {agent_cfg.llm.vocab_size}. Pick the tokenizer that belongs to this agent "
                    "(official: cvlm_llama2_tokenizer) or the matching config."
                )
            module, _report = SeedStoryAgent.from_pretrained(
                path, agent_cfg, base_llama=llm_path, device=offload_device, dtype=dtype
            )
            module.quantize_weights(storage)
            return AgentModel.wrap(module.eval(), tokenizer, agent_cfg, agent_name, load_device, offload_device)

        return (cached_load("agent", key, lambda: _loading_errors(node, "agent", load)),)


def _agent_config(choice: str, path: str):
    """(AgentConfig, name): auto prefers agent_config.json next to the weights (written by seedstory)."""
    here = path if os.path.isdir(path) else os.path.dirname(path)
    if choice == "auto" and os.path.isfile(os.path.join(here, AGENT_CONFIG_FILENAME)):
        with open(os.path.join(here, AGENT_CONFIG_FILENAME), encoding="utf-8") as f:
            return AgentConfig.from_dict(json.load(f)), AGENT_CONFIG_FILENAME
    cfg = _resolve_config(choice, path)
    return cfg.agent, cfg.name


def _file_or_folder(name: str, relative: str) -> str:
    try:
        return glue.full_path(name, relative, folder=True)
    except FileNotFoundError:
        return glue.full_path(name, relative)


# ---------------------------------------------------------------------------------------------- de-tokenizer
SDXL_PREFIXES = {"checkpoints": "checkpoints", "seed_story/sdxl": "seed_story_sdxl", "diffusers": "diffusers"}


def sdxl_choices():
    """'checkpoints/<single file>' and '<folder kind>/<diffusers folder with unet/>' entries."""
    out = [f"checkpoints/{f}" for f in glue.list_files("checkpoints")]
    for prefix, name in (("seed_story/sdxl", "seed_story_sdxl"), ("diffusers", "diffusers")):
        for sub in glue.list_subfolders(name, depth=1):
            if any(os.path.isdir(os.path.join(root, sub, "unet")) for root in glue.folder_dirs(name)):
                out.append(f"{prefix}/{sub}")
    return out


def resolve_sdxl(choice: str) -> str:
    for prefix, name in SDXL_PREFIXES.items():
        if choice.startswith(prefix + "/"):
            rel = choice[len(prefix) + 1 :]
            return glue.full_path(name, rel, folder=(name != "checkpoints"))
    raise FileNotFoundError(
        f"sdxl_base {choice!r} is not one of 'checkpoints/<file>', 'seed_story/sdxl/<folder>' or 'diffusers/<folder>'."
    )


UNET_WEIGHT_DTYPE_TOOLTIP = (
    "How the SD-XL UNet's blocks are stored (ComfyUI's weight_dtype). default = in the precision above. fp8_e4m3fn "
    "= 1 byte per weight (linear and conv layers), cast per layer to the precision above. The resampler and the VAE "
    "keep the precision above. Quality cost and memory per card: docs/models.md."
)


class SeedStoryDetokenizerLoader:
    NODE_ID = "SeedStoryDetokenizerLoader"
    DISPLAY_NAME = "SeedStory De-tokenizer Loader"
    SEARCH_ALIASES = ["load detokenizer", "sdxl unet", "seed story"]
    DESCRIPTION = (
        "Loads the SEED-Story de-tokenizer: the adapter (resampler + adapted UNet to_k/to_v; official: "
        "detokenizer pytorch_model.bin) from models/seed_story/detokenizer on top of SD-XL base "
        "(sd_xl_base_1.0.safetensors in models/checkpoints, or a diffusers folder in "
        "models/seed_story/sdxl or models/diffusers). The visual tokenizer computes the unconditional "
        "(all-zero image) features once, for classifier-free guidance."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (DETOKENIZER,)
    RETURN_NAMES = ("detokenizer",)
    OUTPUT_TOOLTIPS = ("The de-tokenizer, for De-tokenize, Generate Story and Features to Conditioning.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "visual_tokenizer": (
                    VISUAL_TOKENIZER,
                    {
                        "tooltip": "The visual tokenizer of the same model; used once to compute the unconditional "
                        "features."
                    },
                ),
                "adapter_name": (
                    glue.list_files("seed_story_detokenizer"),
                    {
                        "tooltip": "De-tokenizer adapter in models/seed_story/detokenizer (official: pytorch_model.bin "
                        "with resampler.* and unet.*to_k/to_v keys)."
                    },
                ),
                "sdxl_base": (
                    sdxl_choices(),
                    {
                        "tooltip": "SD-XL base 1.0: a single file in models/checkpoints (sd_xl_base_1.0.safetensors) "
                        "or a diffusers folder (with unet/ and vae/) in models/seed_story/sdxl or models/diffusers."
                    },
                ),
                "config": (list(CONFIG_CHOICES), {"default": "auto", "tooltip": CONFIG_TOOLTIP}),
                **_device_inputs(),
                **_weight_dtype_input(quant.UNET_WEIGHT_STORAGES, UNET_WEIGHT_DTYPE_TOOLTIP),
            }
        }

    def load(
        self,
        visual_tokenizer,
        adapter_name,
        sdxl_base,
        config="auto",
        precision="auto",
        device="auto",
        weight_dtype=quant.DEFAULT,
    ):
        node = self.DISPLAY_NAME
        storage = _storage(node, weight_dtype, quant.UNET_WEIGHT_STORAGES)
        vit = require(
            visual_tokenizer,
            VisualTokenizerModel,
            node=node,
            name="visual_tokenizer",
            socket=VISUAL_TOKENIZER,
            hint="SeedStory Visual Tokenizer Loader output",
        )
        path = _loading_errors(
            node, "de-tokenizer adapter", lambda: glue.full_path("seed_story_detokenizer", adapter_name)
        )
        base = _loading_errors(node, "SD-XL base", lambda: resolve_sdxl(sdxl_base))
        load_device, offload_device, dtype = _placement(precision, device)
        key = (
            os.path.realpath(path),
            os.path.getmtime(path),
            os.path.realpath(base),
            id(vit),
            config,
            str(load_device),
            str(dtype),
            storage,
        )

        def load():
            cfg = _resolve_config(config, path)
            if cfg.detokenizer.resampler.embedding_dim != vit.config.output_dim:
                raise SeedStoryInputError(
                    f"{node}: the de-tokenizer config ({cfg.name}) takes features of width "
                    f"{cfg.detokenizer.resampler.embedding_dim} but the visual tokenizer gives "
                    f"{vit.config.output_dim}. Use the visual tokenizer and de-tokenizer of the same model."
                )
            module = SeedStoryDetokenizer.from_pretrained(
                path, base, cfg.detokenizer, device=offload_device, dtype=dtype
            )
            quant.store_weights(module, storage)
            uncond = uncond_features(vit)
            return DetokenizerModel.wrap(module, cfg.detokenizer, uncond, adapter_name, load_device, offload_device)

        return (cached_load("detokenizer", key, lambda: _loading_errors(node, "de-tokenizer", load)),)


@torch.no_grad()
def uncond_features(vit: VisualTokenizerModel) -> torch.Tensor:
    """ViT features of an all-zero CLIP-normalised image (the de-tokenizer's negative branch), float32 on CPU."""
    module = vit.loaded()
    pixels = zero_image_pixels(vit.config.image_size)
    return module(pixels.to(device=module.device, dtype=module.dtype)).float().cpu()


# ---------------------------------------------------------------------------------------------- tiny bundle
def tiny_bundle_fingerprint(folder: str = None) -> str:
    """'random' or the bundle folder + mtimes of its files (changes when the trained tiny model lands)."""
    folder = folder or glue.TINY_BUNDLE_DIR
    if not os.path.isfile(os.path.join(folder, CONFIG_FILENAME)):
        return "random"
    parts = [folder]
    for root, _dirs, files in os.walk(folder):
        for f in sorted(files):
            p = os.path.join(root, f)
            parts.append(f"{os.path.relpath(p, folder)}:{os.path.getmtime(p)}:{os.path.getsize(p)}")
    return "|".join(parts)


TINY_WEIGHT_DTYPE_TOOLTIP = (
    "How the tiny model's big weight matrices are stored: default, fp8_e4m3fn or int8 for the agent and the visual "
    "tokenizer; the de-tokenizer's UNet gets fp8_e4m3fn with fp8 and stays default otherwise (as on the "
    "De-tokenizer Loader, which has no int8)."
)


class SeedStoryTinyModelLoader:
    NODE_ID = "SeedStoryTinyModelLoader"
    DISPLAY_NAME = "SeedStory Tiny Model Loader"
    SEARCH_ALIASES = ["story", "storybook", "comic", "storyboard", "seed story", "load story model"]
    DESCRIPTION = (
        "One click: the bundled tiny SEED-Story model (agent, visual tokenizer, de-tokenizer) for demos "
        "and tests; runs on a CPU in seconds at 64x64 px. Loads the trained bundle in "
        "<this pack>/models/seedstory-tiny/ when it exists, otherwise builds seeded random weights "
        "(the story text is then gibberish; the pipeline is the real one)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (AGENT, VISUAL_TOKENIZER, DETOKENIZER, "STRING")
    RETURN_NAMES = ("agent", "visual_tokenizer", "detokenizer", "info")
    OUTPUT_TOOLTIPS = (
        "The tiny story agent with its tokenizer.",
        "The tiny visual tokenizer (112 px input, 64 feature vectors).",
        "The tiny de-tokenizer (renders 64x64 px).",
        "Which weights were loaded (trained bundle folder or random seed).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "random_seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 2**31 - 1,
                        "tooltip": "Seed of the random weights, used only when the trained bundle "
                        "(models/seedstory-tiny in this pack) is not there.",
                    },
                ),
                **_device_inputs(),
                **_weight_dtype_input(tooltip=TINY_WEIGHT_DTYPE_TOOLTIP),
            }
        }

    @classmethod
    def IS_CHANGED(cls, random_seed=0, precision="auto", device="auto", weight_dtype=quant.DEFAULT):
        # Re-run when the trained bundle appears or changes; identical otherwise (so ComfyUI's cache works).
        return tiny_bundle_fingerprint()

    def load(self, random_seed=0, precision="auto", device="auto", weight_dtype=quant.DEFAULT):
        node = self.DISPLAY_NAME
        storage = _storage(node, weight_dtype)
        load_device, offload_device, dtype = _placement(precision, device)
        fingerprint = tiny_bundle_fingerprint()
        key = (
            fingerprint,
            int(random_seed) if fingerprint == "random" else None,
            str(load_device),
            str(dtype),
            storage,
        )

        def load():
            if fingerprint == "random":
                bundle = random_tiny_bundle(int(random_seed)).to(offload_device, dtype)
                info = (
                    f"tiny SEED-Story model with random weights (seed {int(random_seed)}); "
                    f"no trained bundle at {glue.TINY_BUNDLE_DIR}"
                )
            else:
                bundle = SeedStoryBundle.load(glue.TINY_BUNDLE_DIR, device=offload_device, dtype=dtype)
                info = f"trained tiny SEED-Story model from {glue.TINY_BUNDLE_DIR}"
            quant.store_bundle_weights(bundle, storage)
            source = "tiny (random)" if fingerprint == "random" else "tiny (trained)"
            if storage != quant.DEFAULT:
                source += f", {storage}"
                info += f"; weights stored as {storage}"
            cfg = bundle.config
            agent = AgentModel.wrap(
                bundle.agent.eval(), bundle.tokenizer, cfg.agent, source, load_device, offload_device
            )
            vit = VisualTokenizerModel.wrap(
                bundle.visual_tokenizer.eval(), cfg.visual_tokenizer, source, load_device, offload_device
            )
            detok = DetokenizerModel.wrap(
                bundle.detokenizer.eval(), cfg.detokenizer, bundle.uncond_features, source, load_device, offload_device
            )
            return agent, vit, detok, info

        return cached_load("tiny", key, lambda: _loading_errors(node, "tiny model", load))
