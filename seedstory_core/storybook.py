"""The storybook: a folder that holds one story as ``index.html``, ``story.json`` and one PNG per frame.

Written by the Save Story node (inside ComfyUI's output folder; the node chooses and confines the folder) and by
``python -m seedstory_core.tell`` (a folder the user names). The layout is the same either way:

* ``frame_NNN.png``: frame ``NNN`` (0 = the start picture), its sentence in the PNG text chunk
  ``seedstory_sentence``;
* ``story.json``: format ``seedstory-storybook/1``: title, creation time, ``intro`` (the opening sentence when
  there is one sentence more than frames), ``frames`` (index, image file, sentence), ``extra_sentences``,
  ``sentences`` (every line as given) and ``state`` (what the caller records about the story state);
* ``index.html``: the frames and their sentences, readable in any browser (no remote resource; a script only for
  the redo buttons, see below);
* ``story.pdf`` (when asked for): the printed pages of :mod:`seedstory_core.pages` (layout storybook, comic or
  strip) as one PDF whose text stays text (:mod:`seedstory_core.pdf`);
* ``prompt.json`` (Save Story inside ComfyUI): ``{"prompt": <the API-format prompt>, "save_node": "<id>"}``; then
  ``index.html`` has a ``redo`` button next to each generated frame (k >= 1) and loads ``/seedstory/redo.js``
  (served by the pack's route), which queues the prompt again with that frame redone.

Nothing half-written is ever visible: the files are written into a temporary folder next to ``folder`` (its name
starts with ``.seedstory-tmp-``; the route never serves a path with a component starting with '.'), ``story.json``
last, and the folder is then renamed into place (one atomic rename when ``folder`` is missing or empty). On any
failure the temporary folder is removed. Texts (title, sentences) are checked first by
:func:`seedstory_core.rules.check_clean_text`: a lone surrogate or a control character is refused before any file
is written.
"""

from __future__ import annotations

import html
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .fonts import choose_fonts
from .pages import PageOptions, plan_pages, render_pages
from .pdf import write_pdf
from .rules import check_clean_text

STORYBOOK_FORMAT = "seedstory-storybook/1"
PDF_NAME = "story.pdf"
PROMPT_NAME = "prompt.json"
#: The script the redo buttons load (served by nodes/routes.py from nodes/assets/redo.js).
REDO_SCRIPT = "/seedstory/redo.js"
#: The names of the files a storybook folder holds; the route serves these and nothing else.
STORYBOOK_FILE = re.compile(r"^(index\.html|story\.json|story\.pdf|prompt\.json|frame_\d{3,}\.png)$")
TEMP_PREFIX = ".seedstory-tmp-"

FrameImage = Union[Image.Image, np.ndarray]


@dataclass(frozen=True)
class Storybook:
    """What :func:`write_storybook` wrote.

    Attributes:
        folder: the storybook folder.
        index: ``folder/index.html``.
        intro: the opening sentence shown above the frames, or None.
        sentences: the sentence of each frame ('' where there is none), one per frame.
        extra: sentences left over after pairing (more sentences than frames + 1).
        files: the frame file names, in order.
        pdf: ``folder/story.pdf`` when written, else None.
        pages: the printed pages as pictures, (pages, H, W, 3) uint8, when pages were asked for, else None.
    """

    folder: Path
    index: Path
    intro: Optional[str]
    sentences: List[str]
    extra: List[str]
    files: List[str]
    pdf: Optional[Path] = None
    pages: Optional[np.ndarray] = None

    @property
    def text(self) -> str:
        """The story as plain text, one sentence per line (intro first)."""
        return "\n".join(([self.intro] if self.intro else []) + self.sentences + self.extra)


def pair_frames(n_frames: int, sentences: Sequence[str]) -> Tuple[Optional[str], List[str], List[str]]:
    """Pair sentences with frames, in order.

    With exactly one sentence more than frames, the first sentence is the opening line (``intro``) and the rest
    pair one to one. Otherwise sentence ``i`` goes with frame ``i``; frames without a sentence get '' and
    sentences without a frame are returned as ``extra``.

    Returns:
        (intro or None, one sentence per frame, extra sentences).
    """
    sentences = list(sentences)
    if len(sentences) == n_frames + 1:
        return sentences[0], sentences[1:], []
    paired = sentences[:n_frames] + [""] * max(0, n_frames - len(sentences))
    return None, paired, sentences[n_frames:]


def render_html(
    title: str,
    intro: Optional[str],
    frames: Sequence[dict],
    extra: Sequence[str],
    *,
    pdf: Optional[str] = None,
    redo: bool = False,
) -> str:
    """The storybook page. ``frames``: dicts with ``index``, ``image`` (file name) and ``sentence``; every text is
    HTML-escaped. ``pdf``: the PDF's file name, linked at the top when given. ``redo``: a
    ``<button class="seedstory-redo" data-frame="k">`` next to each generated frame (k >= 1) and the redo script at
    the end (only for a storybook with ``prompt.json``)."""
    esc = html.escape

    def button(i: int) -> str:
        return f'<button class="seedstory-redo" data-frame="{i}">redo</button>' if redo and i >= 1 else ""

    rows = "\n".join(
        f'  <figure><img src="{esc(f["image"])}" alt="frame {f["index"]}"><figcaption>{esc(f["sentence"])}'
        f"</figcaption>{button(int(f['index']))}</figure>"
        for f in frames
    )
    intro_html = f'  <p class="intro">{esc(intro)}</p>\n' if intro else ""
    extra_html = "".join(f"  <p>{esc(s)}</p>\n" for s in extra)
    pdf_html = f'  <p class="pdf"><a href="{esc(pdf)}">PDF of this story</a></p>\n' if pdf else ""
    script = f'<script src="{REDO_SCRIPT}"></script>\n' if redo else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n"
        "<style>body{font-family:Georgia,serif;max-width:760px;margin:2em auto;padding:0 1em;background:#fbf8f1}"
        "figure{margin:1.5em 0;text-align:center}img{max-width:100%;image-rendering:auto;border-radius:6px;"
        "min-width:256px}figcaption{margin-top:.5em;font-size:1.1em}.intro{font-style:italic}</style>\n"
        f"</head>\n<body>\n  <h1>{esc(title)}</h1>\n{pdf_html}{intro_html}{rows}\n{extra_html}"
        f"  <p><small>Made with SEED-Story (seedstory).</small></p>\n{script}</body>\n</html>\n"
    )


def _as_uint8(image: FrameImage) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"storybook frames must be PIL images or (H, W, 3) uint8 arrays, found dtype {arr.dtype}")
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise TypeError(f"storybook frames must be (H, W, 3) RGB arrays, found shape {arr.shape}")
    return arr


def _move_into_place(tmp: Path, folder: Path) -> None:
    """Rename the finished temporary folder to ``folder``: one atomic rename when ``folder`` is missing or an empty
    folder; into an earlier storybook's folder, each file is replaced by its own atomic rename (``story.json``
    last) and the earlier storybook's files the new one does not have are removed."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    if folder.is_dir() and not any(folder.iterdir()):
        try:
            os.replace(tmp, folder)  # POSIX: atomic over an empty folder
        except OSError:  # Windows will not rename over a folder
            os.rmdir(folder)
            os.rename(tmp, folder)
        return
    new = sorted(p.name for p in tmp.iterdir())
    for name in sorted(new, key=lambda n: n == "story.json"):
        os.replace(tmp / name, folder / name)
    for old in folder.iterdir():
        if old.is_file() and STORYBOOK_FILE.match(old.name) and old.name not in new:
            old.unlink()
    os.rmdir(tmp)


def write_storybook(
    folder,
    images: Sequence[FrameImage],
    sentences: Sequence[str],
    *,
    title: str = "A SEED-Story story",
    state: Optional[dict] = None,
    pages: Optional[PageOptions] = None,
    pdf: bool = False,
    prompt: Optional[dict] = None,
    font_dirs: Sequence[Union[str, os.PathLike]] = (),
) -> Storybook:
    """Write a storybook into ``folder``, atomically (see the module docstring).

    Args:
        folder: the storybook folder: missing or empty (one atomic rename), or an earlier storybook (its files are
            replaced). The caller decides where it may be (the Save Story node confines it to ComfyUI's output
            folder before calling this).
        images: the frames in order: PIL images or (H, W, 3) uint8 arrays.
        sentences: the story's sentences in order (paired with the frames by :func:`pair_frames`).
        title: the page title.
        state: JSON-serialisable facts about the story state (step, policy, ...) for ``story.json``.
        pages: the printed pages' :class:`~seedstory_core.pages.PageOptions`; when given (or ``pdf``), the pages are
            drawn as pictures (``Storybook.pages``).
        pdf: also write ``story.pdf`` (the pages; needs a font for every character: see
            :func:`seedstory_core.fonts.choose_fonts`).
        prompt: the ComfyUI prompt that made the story, ``{"prompt": ..., "save_node": ...}``: written as
            ``prompt.json``, and the page gets its redo buttons.
        font_dirs: folders searched first for fallback fonts (:func:`seedstory_core.fonts.font_dirs`).

    Returns:
        :class:`Storybook`.

    Raises:
        TypeError: a frame that is neither a PIL image nor an (H, W, 3) uint8 array (nothing is written).
        seedstory_core.rules.StoryRuleError: a title or sentence with a lone surrogate or a control character
            (nothing is written).
        seedstory_core.fonts.MissingGlyphsError: ``pdf`` and a character no font has (nothing is written).
        ValueError: bad page options (nothing is written).
        OSError: the folder cannot be created or written (nothing is left behind).
    """
    arrays = [_as_uint8(im) for im in images]
    title = check_clean_text(str(title), "title")
    sentences = [check_clean_text(str(s), f"sentence {i + 1}") for i, s in enumerate(sentences)]
    intro, paired, extra = pair_frames(len(arrays), sentences)
    if pdf and pages is None:
        pages = PageOptions()
    plan = fonts = None
    if pages is not None and arrays:
        fonts = choose_fonts([title, *sentences], font_dirs, strict=pdf)
        lines = ([intro] if intro else []) + list(extra)
        plan = plan_pages([(a.shape[1], a.shape[0]) for a in arrays], paired, title, lines, pages)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    tmp.mkdir()  # with the process's umask, like the folders ComfyUI makes
    try:
        book = _write_files(tmp, arrays, paired, sentences, intro, extra, title, state, plan, fonts, pages, pdf, prompt)
        _move_into_place(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Storybook(
        folder=folder,
        index=folder / "index.html",
        intro=intro,
        sentences=paired,
        extra=extra,
        files=book["files"],
        pdf=folder / PDF_NAME if book["pdf"] else None,
        pages=book["pages"],
    )


def _write_files(tmp, arrays, paired, sentences, intro, extra, title, state, plan, fonts, pages, pdf, prompt) -> dict:
    """Write every file of the storybook into ``tmp`` (``story.json`` last)."""
    frames, files = [], []
    for i, arr in enumerate(arrays):
        name = f"frame_{i:03d}.png"
        info = PngInfo()
        info.add_text("seedstory_sentence", paired[i])
        Image.fromarray(arr).save(tmp / name, pnginfo=info, compress_level=4)
        frames.append({"index": i, "image": name, "sentence": paired[i]})
        files.append(name)
    page_images = render_pages(plan, arrays, fonts, pages) if plan is not None else None
    if pdf and plan is not None:
        write_pdf(tmp / PDF_NAME, plan, arrays, fonts, pages, title)
    if prompt is not None:
        (tmp / PROMPT_NAME).write_text(json.dumps(prompt, ensure_ascii=False), encoding="utf-8")
    (tmp / "index.html").write_text(
        render_html(title, intro, frames, extra, pdf=PDF_NAME if pdf and plan else None, redo=prompt is not None),
        encoding="utf-8",
    )
    story = {
        "format": STORYBOOK_FORMAT,
        "title": title,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "intro": intro,
        "frames": frames,
        "extra_sentences": extra,
        "sentences": list(sentences),
        "state": state or {},
    }
    if pages is not None:
        story["pages"] = {
            "layout": pages.layout,
            "grid": pages.grid,
            "page_size": pages.page_size,
            "margin_mm": pages.margin_mm,
            "resampling": pages.resampling,
            "dpi": pages.dpi,
            "cover": pages.cover,
            "count": 0 if plan is None else len(plan),
            "pdf": PDF_NAME if pdf and plan else None,
        }
    (tmp / "story.json").write_text(json.dumps(story, indent=2, ensure_ascii=False), encoding="utf-8")
    return {"files": files, "pdf": bool(pdf and plan), "pages": page_images}
