"""Output nodes: Save Story (storybook folder in ComfyUI's output) and Free Memory."""

from __future__ import annotations

import html
import json
import os
import re
import time
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import comfy_glue as glue
from .models import STATE, SeedStoryInputError, check_image, clear_cache, image_to_rgb

_UNSAFE = re.compile(r"[^A-Za-z0-9._\- ]+")


def _safe_prefix(prefix: str, node: str):
    """'dir/sub/name' -> (relative dir, name); refuses absolute paths and '..'."""
    prefix = (prefix or "").strip().replace("\\", "/")
    parts = [p for p in prefix.split("/") if p not in ("", ".")]
    if not parts or prefix.startswith("/") or any(p == ".." for p in parts):
        raise SeedStoryInputError(f"{node}: filename_prefix {prefix!r} must be a relative name such as "
                                  "'seedstory/story' (no '..', not absolute).")
    parts = [_UNSAFE.sub("_", p).strip() or "_" for p in parts]
    return "/".join(parts[:-1]), parts[-1]


def _next_story_dir(root: str, rel_dir: str, name: str) -> str:
    parent = os.path.join(root, rel_dir)
    os.makedirs(parent, exist_ok=True)
    pat = re.compile(re.escape(name) + r"_(\d{5})$")
    used = [int(m.group(1)) for d in os.listdir(parent) if (m := pat.match(d))]
    n = max(used, default=0) + 1
    while True:
        rel = os.path.join(rel_dir, f"{name}_{n:05d}") if rel_dir else f"{name}_{n:05d}"
        try:
            os.makedirs(os.path.join(root, rel))
            return rel.replace(os.sep, "/")
        except FileExistsError:
            n += 1


def pair_frames(n_frames: int, sentences: List[str]):
    """(intro sentence or None, [sentence or '' per frame], [unpaired extra sentences])."""
    if len(sentences) == n_frames + 1:
        return sentences[0], sentences[1:], []
    paired = sentences[:n_frames] + [""] * max(0, n_frames - len(sentences))
    return None, paired, sentences[n_frames:]


def render_html(title: str, intro: Optional[str], frames, extra: List[str]) -> str:
    esc = html.escape
    rows = "\n".join(
        f'  <figure><img src="{esc(f["image"])}" alt="frame {f["index"]}"><figcaption>{esc(f["sentence"])}'
        "</figcaption></figure>" for f in frames)
    intro_html = f"  <p class=\"intro\">{esc(intro)}</p>\n" if intro else ""
    extra_html = "".join(f"  <p>{esc(s)}</p>\n" for s in extra)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{esc(title)}</title>\n"
        "<style>body{font-family:Georgia,serif;max-width:760px;margin:2em auto;padding:0 1em;background:#fbf8f1}"
        "figure{margin:1.5em 0;text-align:center}img{max-width:100%;image-rendering:auto;border-radius:6px;"
        "min-width:256px}figcaption{margin-top:.5em;font-size:1.1em}.intro{font-style:italic}</style>\n"
        f"</head>\n<body>\n  <h1>{esc(title)}</h1>\n{intro_html}{rows}\n{extra_html}"
        "  <p><small>Made with SEED-Story in ComfyUI (seedstory).</small></p>\n</body>\n</html>\n"
    )


class SeedStorySaveStory:
    DESCRIPTION = ("Saves a storybook into ComfyUI's output folder: a new sub-folder per story with index.html "
                   "(frames and sentences, open it in a browser), story.json and the PNG frames; shows the frames "
                   "and the text on the node. Sentences pair with frames in order; with one sentence more than "
                   "frames, the first is the opening line.")
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
                "images": ("IMAGE", {"tooltip": "The story frames, in order (e.g. Generate Story's images)."}),
                "filename_prefix": ("STRING", {"default": "seedstory/story",
                                               "tooltip": "Folder/name inside ComfyUI's output folder; a counter is "
                                                          "appended (seedstory/story_00001/)."}),
                "title": ("STRING", {"default": "A SEED-Story story", "tooltip": "Title of the storybook page."}),
            },
            "optional": {
                "sentences": ("STRING", {"forceInput": True,
                                         "tooltip": "The sentences, one per line (Generate Story's sentences output)."}),
                "state": (STATE, {"tooltip": "Optional story state: its sentences are used when 'sentences' is not "
                                             "connected, and its step/policy go into story.json."}),
            },
        }

    def save(self, images, filename_prefix="seedstory/story", title="A SEED-Story story", sentences=None, state=None):
        node = "SeedStory Save Story"
        imgs = image_to_rgb(check_image(images, node=node, name="images"))
        meta = {}
        if state is not None:
            from seedstory_core.story import StoryState

            if not isinstance(state, StoryState):
                raise SeedStoryInputError(f"{node}: input 'state' expects a {STATE}, but found a {type(state).__name__}.")
            meta = {"step": state.step, "tokens": len(state.token_ids), "kv_length": state.kv_length,
                    "policy": "reencode_window" if state.settings.reencode_window else state.settings.policy.kind,
                    "settings": state.settings.to_dict()}
        if sentences is not None:
            if not isinstance(sentences, str):
                raise SeedStoryInputError(f"{node}: input 'sentences' expects text (one sentence per line), found a "
                                          f"{type(sentences).__name__}.")
            # one sentence per line; empty lines are kept (a model may write an empty sentence), trailing ones not
            lines = [line.strip() for line in sentences.rstrip("\n").split("\n")] if sentences.strip() else []
        elif state is not None:
            lines = [" ".join(s.split()) for s in state.sentences]
        else:
            lines = []
        intro, paired, extra = pair_frames(imgs.shape[0], lines)

        root = glue.output_directory()
        rel_dir, name = _safe_prefix(filename_prefix, node)
        sub = _next_story_dir(root, rel_dir, name)
        folder = os.path.join(root, sub)
        frames, ui_images = [], []
        arr = (imgs.detach().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        for i in range(arr.shape[0]):
            fname = f"frame_{i:03d}.png"
            info = PngInfo()
            info.add_text("seedstory_sentence", paired[i])
            Image.fromarray(arr[i]).save(os.path.join(folder, fname), pnginfo=info, compress_level=4)
            frames.append({"index": i, "image": fname, "sentence": paired[i]})
            ui_images.append({"filename": fname, "subfolder": sub, "type": "output"})
        story = {"format": "seedstory-storybook/1", "title": title, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "intro": intro, "frames": frames, "extra_sentences": extra, "sentences": lines, "state": meta}
        with open(os.path.join(folder, "story.json"), "w", encoding="utf-8") as f:
            json.dump(story, f, indent=2, ensure_ascii=False)
        index = os.path.join(folder, "index.html")
        with open(index, "w", encoding="utf-8") as f:
            f.write(render_html(title, intro, frames, extra))
        text = "\n".join(([intro] if intro else []) + [fr["sentence"] for fr in frames] + extra)
        return {"ui": {"images": ui_images, "text": [text], "storybook": [sub + "/index.html"]}, "result": (index,)}


class SeedStoryFreeMemory:
    DESCRIPTION = ("Frees memory: unloads every model from ComfyUI's model management (unload_all_models + "
                   "soft_empty_cache), drops SeedStory's own model cache and asks ComfyUI to clear cached node "
                   "outputs (story states, KV caches) after this run. Runs every time it is queued.")
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
                "clear_node_cache": ("BOOLEAN", {"default": True,
                                                 "tooltip": "Also drop ComfyUI's cached node outputs (loaded models, "
                                                            "story states) once this run ends; the next run reloads."}),
            },
            "optional": {
                "after": ("STRING", {"forceInput": True,
                                     "tooltip": "Connect any text output (e.g. the storybook path) so this runs after it."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never equal to itself: always re-run

    def free(self, clear_node_cache=True, after=None):
        n = clear_cache()
        parts = [f"SeedStory model cache: {n} entr{'y' if n == 1 else 'ies'} dropped"]
        mm = glue.model_management()
        if mm is not None:
            mm.unload_all_models()
            mm.soft_empty_cache()
            parts.append("ComfyUI models unloaded")
        if clear_node_cache:
            done = glue.request_cache_reset()
            if done:
                parts.append("node output caches cleared after this run")
        import gc

        gc.collect()
        report = "; ".join(parts)
        return {"ui": {"text": [report]}, "result": (report,)}
