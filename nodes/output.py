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

from seedstory_core.fonts import BUNDLED_NAME, FONT_DIRS_ENV, MissingGlyphsError
from seedstory_core.pages import COVERS, GRIDS, LAYOUTS, PAGE_SIZES, RESAMPLING, PageOptions
from seedstory_core.rules import StoryRuleError, check_clean_text
from seedstory_core.story import StoryState
from seedstory_core.storybook import PDF_NAME, write_storybook

from . import comfy_glue as glue
from .inputs import bool_input, check_widgets, choice_input, float_input, int_input
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


def story_meta(state, node: str = NODE_NAME) -> dict:
    """What story.json records of a story state (step, token count, KV length, policy, settings); {} for None.

    Raises:
        SeedStoryInputError: ``state`` is not a story state.
    """
    if state is None:
        return {}
    if not isinstance(state, StoryState):
        raise SeedStoryInputError(f"{node}: input 'state' expects a {STATE}, but found a {type(state).__name__}.")
    return {
        "step": state.step,
        "tokens": len(state.token_ids),
        "kv_length": state.kv_length,
        "policy": state.settings.policy.kind,
        "settings": state.settings.to_dict(),
    }


def story_lines(sentences, state, node: str = NODE_NAME) -> list:
    """The sentences to save: ``sentences`` one per line (empty lines kept, trailing ones not), else the state's.

    Raises:
        SeedStoryInputError: ``sentences`` is not text.
    """
    if sentences is not None:
        if not isinstance(sentences, str):
            raise SeedStoryInputError(
                f"{node}: input 'sentences' expects text (one sentence per line), found a {type(sentences).__name__}."
            )
        return [line.strip() for line in sentences.rstrip("\n").split("\n")] if sentences.strip() else []
    if state is not None:
        return [" ".join(s.split()) for s in state.sentences]
    return []


def check_texts(title, lines, node: str = NODE_NAME) -> None:
    """Refuse a title or sentence with a lone surrogate or a control character (seedstory_core.rules), before any
    folder is made.

    Raises:
        SeedStoryInputError: naming the input ('title' or 'sentences' line N), the character and what to do.
    """
    try:
        check_clean_text(str(title), "title")
        for i, line in enumerate(lines):
            check_clean_text(line, f"sentences (line {i + 1})")
    except StoryRuleError as err:
        raise SeedStoryInputError(f"{node}: {err} Nothing was saved.") from err


def page_options(node, layout, grid, page_size, margin_mm, resampling, dpi, cover) -> PageOptions:
    """The page inputs as :class:`seedstory_core.pages.PageOptions`.

    Raises:
        SeedStoryInputError: a value outside its list or range (named, with what is allowed).
    """
    try:
        return PageOptions(
            layout=layout,
            grid=grid,
            page_size=page_size,
            margin_mm=float(margin_mm),
            resampling=resampling,
            dpi=int(dpi),
            cover=cover,
        )
    except ValueError as err:
        raise SeedStoryInputError(f"{node}: input {err}; nothing was saved.") from err


def pages_wanted(prompt, unique_id) -> bool:
    """Whether the ``pages`` output (slot 1) is linked to another node of the prompt (True when unknown)."""
    if not isinstance(prompt, dict) or unique_id is None:
        return True
    for node in prompt.values():
        for value in (node.get("inputs") or {}).values() if isinstance(node, dict) else ():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) == str(unique_id) and value[1] == 1:
                return True
    return False


def as_image_batch(pages) -> torch.Tensor:
    """(pages, H, W, 3) uint8 -> ComfyUI IMAGE [B, H, W, 3] float32 in [0, 1]; a 1x64x64 white picture for None."""
    if pages is None:
        return torch.ones(1, 64, 64, 3)
    return torch.from_numpy(np.ascontiguousarray(pages)).float().div_(255.0)


PREFIX_TOOLTIP = (
    "Folder/name inside ComfyUI's output folder; a counter is appended (seedstory/story -> seedstory/story_00001/). "
    "Ending with '/' uses the name 'story' (seedstory/ -> seedstory/story_00001/). Letters of any language are "
    f"kept. Refused before the prompt runs: '..', absolute paths, drive letters (C:), '~', '%', <>:\"|?*, control "
    f"characters, a path through a symbolic link leading outside the output folder, names over "
    f"{MAX_COMPONENT_CHARS} characters per folder or {MAX_TOTAL_CHARS} in all."
)


PAGE_INPUTS = {
    "layout": choice_input(
        LAYOUTS,
        "storybook",
        "Printed pages (the pages output and the PDF): storybook = one frame per page with its sentence; comic = "
        "a grid of panels per page (see grid), a caption band under each; strip = one row of 4 panels per "
        "landscape page. A title page comes first.",
    ),
    "pdf": bool_input(
        False,
        f"Also write story.pdf (the pages; text stays selectable). The bundled font {BUNDLED_NAME} covers Latin, "
        f"Greek, Cyrillic, Hebrew and Arabic; other scripts (Chinese ...) need a font on the system or in "
        f"{FONT_DIRS_ENV}, otherwise the node stops with a message and saves nothing.",
    ),
    "grid": choice_input(list(GRIDS), "2x2", "Comic layout: panels per page, columns x rows."),
    "page_size": choice_input(list(PAGE_SIZES), "A4", "Page size (strip pages are landscape)."),
    "margin_mm": float_input(12.0, 0.0, 50.0, 0.5, "Page margin in millimetres."),
    "resampling": choice_input(
        list(RESAMPLING),
        "lanczos",
        "Filter that scales the frames to print size (nearest keeps hard pixels); every page's footer names it.",
    ),
    "dpi": int_input(150, 72, 600, "Print resolution (dots per inch) of the frames and of the pages output."),
    "cover": choice_input(COVERS, "start picture", "The picture on the title page."),
}


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
    #: hand-written part of its docs/nodes.md section (scripts/gen_node_docs.py); pictures relative to docs/
    DOCS_MARKDOWN = (
        "**Pages and PDF.** `layout` lays the story out on printed pages after a title page (title, opening line, "
        "`cover` frame): `storybook` one frame per page, `comic` a `grid` of panels per page with a caption band "
        "under each, `strip` one row of 4 panels on landscape pages; `page_size` A4 or Letter, `margin_mm`. Frames "
        "are scaled for print at `dpi` with `resampling` (lanczos, bicubic, bilinear, nearest), and each page's "
        "footer says so. The `pages` output is those pages as an IMAGE batch [B, H, W, 3] (A4 at 150 dpi: "
        "1240 x 1754, about 26 MB per page as float32; drawn only when the output is connected or `pdf` is on).",
        "",
        "| a comic page (2x2) | a page of the PDF (`storybook`) |",
        "|---|---|",
        "| ![A comic page](img/pages_comic.png) | ![A storybook page of the PDF](img/pages_storybook_pdf.png) |",
        "",
        "With `pdf` on, `story.pdf` holds the same pages, written with **fpdf2** (pure Python, LGPL-3.0) plus "
        "**uharfbuzz** (HarfBuzz shaping): fonts are embedded as subsets with a Unicode map, so the text is real "
        "text, selectable and searchable, and Hebrew and Arabic are shaped and run right to left. fpdf2 was chosen "
        "over reportlab because it does this in one pure-Python package (reportlab needs a separate shaping add-on "
        "for right-to-left scripts). The pack ships one font, **DejaVu Sans 2.37** "
        "(`seedstory_core/fonts/DejaVuSans.ttf`, 742 KiB, Bitstream Vera licence with DejaVu's changes in the "
        "public domain: free to bundle; text in `seedstory_core/fonts/LICENSE_DEJAVU`): Latin with accents, Greek, "
        "Cyrillic, Hebrew, Arabic. For other characters (Chinese, Japanese, Korean, Thai, ...) the node looks for "
        "a TrueType/OpenType font (`.ttf`, `.otf`, `.ttc`) that has them in the folders of the environment "
        "variable `SEEDSTORY_FONT_DIRS` and then the system's font folders (e.g. Debian's `fonts-noto-cjk`, or "
        "Noto Sans SC, SIL Open Font License); none is downloaded. When no font has a character, the node stops "
        "with a message naming the characters and where it looked, and nothing is saved (turn `pdf` off to save "
        "the storybook anyway).",
        "",
        "The folder appears whole or not at all (written into a temporary `.seedstory-tmp-*` folder, then renamed). "
        "Inside ComfyUI the node also writes `prompt.json` (the prompt and this node's id); the storybook page "
        "then has a **redo** button next to each generated frame.",
    )
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("storybook", "pages")
    OUTPUT_TOOLTIPS = (
        "Absolute path of the storybook's index.html.",
        "The printed pages as pictures [B, H, W, 3] (title page first; the layout, page size and dpi chosen), for "
        "Save Image, upscalers and the like. Drawn only when this output is connected or a PDF is written.",
    )

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
                **PAGE_INPUTS,
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, filename_prefix=None, margin_mm=None):
        """Refuse a bad filename_prefix or margin before anything in the prompt runs (ComfyUI calls this at
        validation).

        Returns True or the error message (ComfyUI reports it as ``custom_validation_failed``, HTTP 400 on
        /prompt). A linked value is None here and is checked when the node runs. Naming ``margin_mm`` skips
        ComfyUI's own min/max check for it: :func:`nodes.inputs.check_widgets` redoes it (and refuses NaN).
        """
        if margin_mm is not None:
            verdict = check_widgets(cls, margin_mm=margin_mm)
            if verdict is not True:
                return verdict
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

    def save(
        self,
        images,
        filename_prefix="seedstory/story",
        title="A SEED-Story story",
        sentences=None,
        state=None,
        layout="storybook",
        pdf=False,
        grid="2x2",
        page_size="A4",
        margin_mm=12.0,
        resampling="lanczos",
        dpi=150,
        cover="start picture",
        prompt=None,
        unique_id=None,
    ):
        """Write ``<output>/<prefix>_NNNNN/`` (index.html, story.json, frame_NNN.png, story.pdf when ``pdf``,
        prompt.json when ComfyUI gives the prompt) and return its index.html and the printed pages.

        The prefix is checked again here (defence in depth, and for a linked prefix): it must resolve inside
        ComfyUI's output folder (see :data:`PREFIX_TOOLTIP`). Images: [B, H, W, C] float in [0, 1]. The folder
        appears whole or not at all (seedstory_core.storybook writes into a temporary folder and renames it).

        Raises:
            SeedStoryInputError: bad prefix, integer or non-finite images, wrong input types, a title or sentence
                with a lone surrogate or control character, a PDF caption no font can draw; nothing is written.
        """
        node = self.DISPLAY_NAME
        root = glue.output_directory()
        rel_dir, name = check_prefix_in(root, filename_prefix, node)
        images = check_image(images, node=node, name="images")
        check_pixels(images, node)
        imgs = image_to_rgb(images)
        meta = story_meta(state, node)
        lines = story_lines(sentences, state, node)
        check_texts(title, lines, node)
        options = page_options(node, layout, grid, page_size, margin_mm, resampling, dpi, cover)
        want_pages = bool(pdf) or pages_wanted(prompt, unique_id)
        redo = {"prompt": prompt, "save_node": str(unique_id)} if isinstance(prompt, dict) else None
        sub = _next_story_dir(root, rel_dir, name, node)
        folder = os.path.join(root, sub)
        resolve_inside(root, sub, node=node, what="filename_prefix", example=PREFIX_EXAMPLE, folder=OUTPUT_FOLDER)
        arr = (imgs.detach().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        book = _write(node, folder, arr, lines, title, meta, options if want_pages else None, bool(pdf), redo)
        return {"ui": ui_of(book, sub), "result": (str(book.index), as_image_batch(book.pages))}


def _write(node, folder, arr, lines, title, meta, options, pdf, redo):
    """write_storybook into the reserved (empty) folder; on failure the folder is removed and a missing font becomes
    a SeedStoryInputError."""
    try:
        return write_storybook(
            folder,
            list(arr),
            lines,
            title=title,
            state=meta,
            pages=options,
            pdf=pdf,
            prompt=redo,
        )
    except BaseException as err:
        _remove_if_empty(folder)
        if isinstance(err, MissingGlyphsError):
            raise SeedStoryInputError(f"{node}: story.pdf cannot be written: {err} Nothing was saved.") from err
        raise


def ui_of(book, sub: str) -> dict:
    """Save Story's ``ui`` result: the frames, the text, the storybook page and (when written) the PDF, relative to
    the output folder."""
    ui = {
        "images": [{"filename": f, "subfolder": sub, "type": "output"} for f in book.files],
        "text": [book.text],
        "storybook": [sub + "/index.html"],
    }
    if book.pdf is not None:
        ui["pdf"] = [f"{sub}/{PDF_NAME}"]
    return ui


def _remove_if_empty(folder: str) -> None:
    """Remove the reserved storybook folder after a failed write (it is empty: the files went to a temp folder)."""
    try:
        os.rmdir(folder)
    except OSError:
        pass


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
