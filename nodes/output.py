"""Output nodes: Save Story (storybook folder in ComfyUI's output) and Free Memory."""

from __future__ import annotations

import errno
import gc
import os
import re
import unicodedata
from typing import Tuple

import numpy as np
import torch

from seedstory_core.story import StoryState
from seedstory_core.storybook import write_storybook

from . import comfy_glue as glue
from .models import STATE, SeedStoryInputError, check_image, clear_cache, image_to_rgb
from .paths import MAX_COMPONENT_CHARS, MAX_TOTAL_CHARS, clean_name, is_inside, resolve_inside

NODE_NAME = "SeedStory Save Story"
#: Name used when filename_prefix ends with a separator ("seedstory/" -> seedstory/story_00001/).
DEFAULT_NAME = "story"
PREFIX_EXAMPLE = "seedstory/story"
OUTPUT_FOLDER = "ComfyUI's output folder"


def parse_prefix(prefix, node: str = NODE_NAME) -> Tuple[str, str]:
    """filename_prefix -> (relative folder with '/' or '', name); the checks of :func:`nodes.paths.clean_name`.

    A prefix ending with '/' (or '\\') names a folder: the storybook gets the name :data:`DEFAULT_NAME`
    (``seedstory/`` -> ``seedstory/story_00001/``), never the output folder's root.

    Raises:
        SeedStoryInputError: '..', absolute paths, drive letters, '~', control characters, '%', characters
            Windows forbids, Windows device names, over-long names (limits in nodes/paths.py).
    """
    parts = clean_name(prefix, node=node, what="filename_prefix", example=PREFIX_EXAMPLE, folder=OUTPUT_FOLDER)
    tail = unicodedata.normalize("NFKC", prefix).rstrip()
    if tail.endswith(("/", "\\")):
        parts = clean_name(
            "/".join(parts + [DEFAULT_NAME]),
            node=node,
            what="filename_prefix",
            example=PREFIX_EXAMPLE,
            folder=OUTPUT_FOLDER,
        )
    return "/".join(parts[:-1]), parts[-1]


def check_prefix_in(root: str, prefix, node: str = NODE_NAME) -> Tuple[str, str]:
    """:func:`parse_prefix`, then the storybook path resolved (symlinks followed) must lie inside ``root``.

    Raises:
        SeedStoryInputError: see :func:`parse_prefix` and :func:`nodes.paths.resolve_inside`.
    """
    rel_dir, name = parse_prefix(prefix, node)
    resolve_inside(
        root,
        f"{rel_dir}/{name}" if rel_dir else name,
        node=node,
        what="filename_prefix",
        example=PREFIX_EXAMPLE,
        folder=OUTPUT_FOLDER,
    )
    return rel_dir, name


def check_pixels(images: torch.Tensor, node: str = NODE_NAME) -> None:
    """Refuse integer images and non-finite pixels (they would be saved white / black without a word).

    Args:
        images (torch.Tensor): [B, H, W, C] IMAGE batch (shape already checked).

    Raises:
        SeedStoryInputError: the dtype is not floating point, or some values are NaN or infinite.
    """
    if not images.is_floating_point():
        lo, hi = (int(images.min()), int(images.max())) if images.numel() else (0, 0)
        raise SeedStoryInputError(
            f"{node}: input 'images' expects a ComfyUI IMAGE (float pixel values in [0, 1]), but found a "
            f"{str(images.dtype).replace('torch.', '')} tensor (values {lo}..{hi}); nothing was saved. The node "
            f"that made these images returns integers (e.g. 0..255): convert them to float and divide by 255 "
            f"there, or connect an IMAGE output such as VAE Decode or SeedStory De-tokenize."
        )
    bad = ~torch.isfinite(images)
    if bool(bad.any()):
        frames = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten().tolist()
        n_nan = int(torch.isnan(images).sum())
        raise SeedStoryInputError(
            f"{node}: input 'images' expects finite pixel values in [0, 1], but found {n_nan} NaN and "
            f"{int(bad.sum()) - n_nan} infinite values in frame(s) {frames[:10]}{' ...' if len(frames) > 10 else ''}"
            f" of {images.shape[0]}; nothing was saved. The node that rendered them failed numerically (often fp16 "
            f"overflow): run the models in fp32 (precision input of the loader) or try another seed."
        )


def _next_story_dir(root: str, rel_dir: str, name: str, node: str = NODE_NAME) -> str:
    """Create ``root/rel_dir/name_NNNNN`` with the next free counter; returns it relative to root ('/')."""
    parent = os.path.join(root, rel_dir)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise _os_error(node, parent, err) from err
    if not is_inside(root, parent):  # a symlink appeared after the check
        raise SeedStoryInputError(
            f"{node}: the folder {parent} resolves outside ComfyUI's output folder {root}; "
            "nothing was saved. Remove the symbolic link or choose another filename_prefix."
        )
    pat = re.compile(re.escape(name) + r"_(\d{5})$")
    used = [int(m.group(1)) for d in os.listdir(parent) if (m := pat.match(d))]
    n = max(used, default=0) + 1
    while True:
        rel = f"{rel_dir}/{name}_{n:05d}" if rel_dir else f"{name}_{n:05d}"
        try:
            os.mkdir(os.path.join(root, rel))
            return rel
        except FileExistsError:
            n += 1
        except OSError as err:
            raise _os_error(node, os.path.join(root, rel), err) from err


def _os_error(node: str, path: str, err: OSError) -> Exception:
    if err.errno == errno.ENAMETOOLONG:
        return SeedStoryInputError(
            f"{node}: the storybook path is too long for this file system ({len(path)} characters: {path[:80]}...); "
            "nothing was saved. Use a shorter filename_prefix (or a shorter --output-directory for ComfyUI)."
        )
    return OSError(
        err.errno,
        f"{node}: could not create the storybook folder {path}: {err.strerror}. Check that "
        "ComfyUI's output folder is writable and has free space.",
    )


PREFIX_TOOLTIP = (
    "Folder/name inside ComfyUI's output folder; a counter is appended (seedstory/story -> seedstory/story_00001/). "
    "Ending with '/' uses the name 'story' (seedstory/ -> seedstory/story_00001/). Letters of any language are "
    f"kept. Refused before the prompt runs: '..', absolute paths, drive letters (C:), '~', '%', <>:\"|?*, control "
    f"characters, a path through a symbolic link leading outside the output folder, names over "
    f"{MAX_COMPONENT_CHARS} characters per folder or {MAX_TOTAL_CHARS} in all."
)


class SeedStorySaveStory:
    NODE_ID = "SeedStorySaveStory"
    DISPLAY_NAME = NODE_NAME
    SEARCH_ALIASES = ["save", "storybook", "comic", "storyboard", "html", "picture book"]
    DESCRIPTION = (
        "Saves a storybook into ComfyUI's output folder (never outside it): a new sub-folder per story "
        "with index.html (frames and sentences, open it in a browser), story.json and the PNG frames; "
        "shows the frames and the text on the node. Sentences pair with frames in order; with one "
        "sentence more than frames, the first is the opening line."
    )
    CATEGORY = "SEED-Story/output"
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("storybook",)
    OUTPUT_TOOLTIPS = ("Absolute path of the storybook's index.html.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": (
                    "IMAGE",
                    {
                        "tooltip": "The story frames, in order (e.g. Generate Story's images): float "
                        "pixels in [0, 1] (values outside are clipped); integer or NaN "
                        "images are refused with an error."
                    },
                ),
                "filename_prefix": ("STRING", {"default": PREFIX_EXAMPLE, "tooltip": PREFIX_TOOLTIP}),
                "title": ("STRING", {"default": "A SEED-Story story", "tooltip": "Title of the storybook page."}),
            },
            "optional": {
                "sentences": (
                    "STRING",
                    {"forceInput": True, "tooltip": "The sentences, one per line (Generate Story's sentences output)."},
                ),
                "state": (
                    STATE,
                    {
                        "tooltip": "Optional story state: its sentences are used when 'sentences' is not "
                        "connected, and its step/policy go into story.json."
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None):
        """Refuse a bad filename_prefix before anything in the prompt runs (ComfyUI calls this at validation).

        Returns True or the error message (ComfyUI reports it as ``custom_validation_failed`` for the input
        ``filename_prefix``, HTTP 400 on /prompt). A linked prefix is None here and is checked when the node runs.
        """
        if filename_prefix is None:
            return True
        try:
            if glue.in_comfyui():
                check_prefix_in(glue.output_directory(), filename_prefix)
            else:
                parse_prefix(filename_prefix)
        except SeedStoryInputError as err:
            return str(err)
        return True

    def save(self, images, filename_prefix="seedstory/story", title="A SEED-Story story", sentences=None, state=None):
        """Write ``<output>/<prefix>_NNNNN/`` (index.html, story.json, frame_NNN.png) and return its index.html.

        The prefix is checked again here (defence in depth, and for a linked prefix): it must resolve inside
        ComfyUI's output folder (see :data:`PREFIX_TOOLTIP`). Images: [B, H, W, C] float in [0, 1].

        Raises:
            SeedStoryInputError: bad prefix, integer or non-finite images, wrong input types; nothing is written.
        """
        node = self.DISPLAY_NAME
        root = glue.output_directory()
        rel_dir, name = check_prefix_in(root, filename_prefix, node)
        images = check_image(images, node=node, name="images")
        check_pixels(images, node)
        imgs = image_to_rgb(images)
        meta = {}
        if state is not None:
            if not isinstance(state, StoryState):
                raise SeedStoryInputError(
                    f"{node}: input 'state' expects a {STATE}, but found a {type(state).__name__}."
                )
            meta = {
                "step": state.step,
                "tokens": len(state.token_ids),
                "kv_length": state.kv_length,
                "policy": state.settings.policy.kind,
                "settings": state.settings.to_dict(),
            }
        if sentences is not None:
            if not isinstance(sentences, str):
                raise SeedStoryInputError(
                    f"{node}: input 'sentences' expects text (one sentence per line), found a "
                    f"{type(sentences).__name__}."
                )
            # one sentence per line; empty lines are kept (a model may write an empty sentence), trailing ones not
            lines = [line.strip() for line in sentences.rstrip("\n").split("\n")] if sentences.strip() else []
        elif state is not None:
            lines = [" ".join(s.split()) for s in state.sentences]
        else:
            lines = []
        sub = _next_story_dir(root, rel_dir, name, node)
        resolve_inside(
            root, sub, node=node, what="filename_prefix", example=PREFIX_EXAMPLE, folder=OUTPUT_FOLDER
        )  # after creating it
        arr = (imgs.detach().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        book = write_storybook(os.path.join(root, sub), list(arr), lines, title=title, state=meta)
        ui_images = [{"filename": f, "subfolder": sub, "type": "output"} for f in book.files]
        index = str(book.index)
        text = book.text
        return {"ui": {"images": ui_images, "text": [text], "storybook": [sub + "/index.html"]}, "result": (index,)}


class SeedStoryFreeMemory:
    NODE_ID = "SeedStoryFreeMemory"
    DISPLAY_NAME = "SeedStory Free Memory"
    SEARCH_ALIASES = ["unload models", "clear cache", "free vram", "free memory"]
    DESCRIPTION = (
        "Frees memory: unloads every model from ComfyUI's model management (unload_all_models + "
        "soft_empty_cache), drops SeedStory's own model cache and asks ComfyUI to clear cached node "
        "outputs (story states, KV caches) after this run. Runs every time it is queued."
    )
    CATEGORY = "SEED-Story/output"
    FUNCTION = "free"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("report",)
    OUTPUT_TOOLTIPS = ("What was freed.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clear_node_cache": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Also drop ComfyUI's cached node outputs (loaded models, "
                        "story states) once this run ends; the next run reloads.",
                    },
                ),
            },
            "optional": {
                "after": (
                    "STRING",
                    {
                        "forceInput": True,
                        "tooltip": "Connect any text output (e.g. the storybook path) so this runs after it.",
                    },
                ),
            },
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never equal to itself: always re-run

    def free(self, clear_node_cache=True, after=None):
        n = clear_cache()
        parts = [f"SeedStory model cache: {n} entr{'y' if n == 1 else 'ies'} dropped"]
        if glue.unload_all_models():
            parts.append("ComfyUI models unloaded")
        if clear_node_cache:
            done = glue.request_cache_reset()
            if done:
                parts.append("node output caches cleared after this run")
        gc.collect()
        report = "; ".join(parts)
        return {"ui": {"text": [report]}, "result": (report,)}
