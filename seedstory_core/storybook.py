"""The storybook: a folder that holds one story as ``index.html``, ``story.json`` and one PNG per frame.

Written by the Save Story node (inside ComfyUI's output folder; the node chooses and confines the folder) and by
``python -m seedstory_core.tell`` (a folder the user names). The layout is the same either way:

* ``frame_NNN.png``: frame ``NNN`` (0 = the start picture), its sentence in the PNG text chunk
  ``seedstory_sentence``;
* ``story.json``: format ``seedstory-storybook/1``: title, creation time, ``intro`` (the opening sentence when
  there is one sentence more than frames), ``frames`` (index, image file, sentence), ``extra_sentences``,
  ``sentences`` (every line as given) and ``state`` (what the caller records about the story state);
* ``index.html``: the frames and their sentences, readable in any browser (no script, no remote resource).
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

STORYBOOK_FORMAT = "seedstory-storybook/1"

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
    """

    folder: Path
    index: Path
    intro: Optional[str]
    sentences: List[str]
    extra: List[str]
    files: List[str]

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


def render_html(title: str, intro: Optional[str], frames: Sequence[dict], extra: Sequence[str]) -> str:
    """The storybook page. ``frames``: dicts with ``index``, ``image`` (file name) and ``sentence``; every text is
    HTML-escaped."""
    esc = html.escape
    rows = "\n".join(
        f'  <figure><img src="{esc(f["image"])}" alt="frame {f["index"]}"><figcaption>{esc(f["sentence"])}'
        "</figcaption></figure>"
        for f in frames
    )
    intro_html = f'  <p class="intro">{esc(intro)}</p>\n' if intro else ""
    extra_html = "".join(f"  <p>{esc(s)}</p>\n" for s in extra)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n"
        "<style>body{font-family:Georgia,serif;max-width:760px;margin:2em auto;padding:0 1em;background:#fbf8f1}"
        "figure{margin:1.5em 0;text-align:center}img{max-width:100%;image-rendering:auto;border-radius:6px;"
        "min-width:256px}figcaption{margin-top:.5em;font-size:1.1em}.intro{font-style:italic}</style>\n"
        f"</head>\n<body>\n  <h1>{esc(title)}</h1>\n{intro_html}{rows}\n{extra_html}"
        "  <p><small>Made with SEED-Story (seedstory).</small></p>\n</body>\n</html>\n"
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


def write_storybook(
    folder,
    images: Sequence[FrameImage],
    sentences: Sequence[str],
    *,
    title: str = "A SEED-Story story",
    state: Optional[dict] = None,
) -> Storybook:
    """Write a storybook into ``folder`` (created if missing; files of the same names are replaced).

    Args:
        folder: the storybook folder. The caller decides where it may be (the Save Story node confines it to
            ComfyUI's output folder before calling this).
        images: the frames in order: PIL images or (H, W, 3) uint8 arrays.
        sentences: the story's sentences in order (paired with the frames by :func:`pair_frames`).
        title: the page title.
        state: JSON-serialisable facts about the story state (step, policy, ...) for ``story.json``.

    Returns:
        :class:`Storybook`.

    Raises:
        TypeError: a frame that is neither a PIL image nor an (H, W, 3) uint8 array (nothing is written).
        OSError: the folder cannot be created or written.
    """
    arrays = [_as_uint8(im) for im in images]
    intro, paired, extra = pair_frames(len(arrays), [str(s) for s in sentences])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames, files = [], []
    for i, arr in enumerate(arrays):
        name = f"frame_{i:03d}.png"
        info = PngInfo()
        info.add_text("seedstory_sentence", paired[i])
        Image.fromarray(arr).save(folder / name, pnginfo=info, compress_level=4)
        frames.append({"index": i, "image": name, "sentence": paired[i]})
        files.append(name)
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
    (folder / "story.json").write_text(json.dumps(story, indent=2, ensure_ascii=False), encoding="utf-8")
    index = folder / "index.html"
    index.write_text(render_html(title, intro, frames, extra), encoding="utf-8")
    return Storybook(folder=folder, index=index, intro=intro, sentences=paired, extra=extra, files=files)
