"""Printed pages of a storybook: the layouts (storybook, comic, strip), their geometry, and the pages as pictures.

One plan (:func:`plan_pages`) places a story's frames and captions on pages; the same plan is drawn twice: as
pictures by :func:`render_pages` (Save Story's ``pages`` IMAGE output) and as a PDF whose text stays text by
:func:`seedstory_core.pdf.write_pdf`. Geometry is in PostScript points (1/72 inch) from the page's top-left corner.

Layouts (docs/nodes.md, "Pages and PDF"):

* ``storybook``: one frame per page, its sentence under it (the storybook page, printed);
* ``comic``: a grid of panels per page, ``2x2`` or ``3x2`` (columns x rows), a caption band under each panel;
* ``strip``: one row of 4 panels per page, landscape pages.

Every layout starts with a title page: the title, the opening line (and sentences left over after pairing), and an
optional cover frame. Pages are A4 or Letter with a margin; every page's footer says how the frames were scaled for
print (from ... px to ... px, with which resampling filter, at how many dots per inch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from .fonts import FontFile, font_for

MM = 72.0 / 25.4  # points per millimetre
#: Portrait page sizes in points.
PAGE_SIZES = {"A4": (595.28, 841.89), "Letter": (612.0, 792.0)}
LAYOUTS = ("storybook", "comic", "strip")
#: Comic grids: name -> (columns, rows).
GRIDS = {"2x2": (2, 2), "3x2": (3, 2)}
STRIP_PANELS = 4
RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
COVERS = ("start picture", "last frame", "none")
GAP = 10.0  # points between panels
FOOTER = 16.0  # points of the footer band (the scaling note, the page number)
LINE = 1.25  # line height, in font sizes
MIN_FONT = 6.0


@dataclass(frozen=True)
class PageOptions:
    """How the pages look.

    Attributes:
        layout: one of :data:`LAYOUTS`.
        grid: the comic grid, a key of :data:`GRIDS` (``"cols x rows"``); ignored by the other layouts.
        page_size: a key of :data:`PAGE_SIZES`.
        margin_mm: the page margin in millimetres (0..50).
        resampling: the filter that scales frames for print, a key of :data:`RESAMPLING`.
        dpi: print resolution in dots per inch (72..600): the frames are scaled to it, and the page pictures have
            it.
        cover: the title page's picture, one of :data:`COVERS`.

    Raises:
        ValueError: a value outside those lists or ranges (the message says what is allowed).
    """

    layout: str = "storybook"
    grid: str = "2x2"
    page_size: str = "A4"
    margin_mm: float = 12.0
    resampling: str = "lanczos"
    dpi: int = 150
    cover: str = "start picture"

    def __post_init__(self):
        for name, allowed in (
            ("layout", LAYOUTS),
            ("grid", tuple(GRIDS)),
            ("page_size", tuple(PAGE_SIZES)),
            ("resampling", tuple(RESAMPLING)),
            ("cover", COVERS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, found {getattr(self, name)!r}")
        if not 0 <= float(self.margin_mm) <= 50:
            raise ValueError(f"margin_mm must be between 0 and 50 millimetres, found {self.margin_mm}")
        if not 72 <= int(self.dpi) <= 600:
            raise ValueError(f"dpi must be between 72 and 600 dots per inch, found {self.dpi}")


@dataclass(frozen=True)
class Box:
    """A rectangle in points: left ``x``, top ``y``, width ``w``, height ``h`` (top-left origin)."""

    x: float
    y: float
    w: float
    h: float

    def px(self, dpi: int) -> Tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels at ``dpi``."""
        s = dpi / 72.0
        return round(self.x * s), round(self.y * s), round((self.x + self.w) * s), round((self.y + self.h) * s)


@dataclass(frozen=True)
class Panel:
    """One frame on a page: ``cell`` (its whole panel, framed by a border), ``image`` (the frame, aspect kept, centred
    in the space above the caption), ``caption`` (the caption band), the frame's number and its sentence, and the font
    size (points) the caption starts at (it shrinks to :data:`MIN_FONT` to fit)."""

    frame: int
    cell: Box
    image: Box
    caption: Box
    text: str
    font_size: float


@dataclass(frozen=True)
class Page:
    """One page: its number (1-based), size in points, panels, and for the title page its title, lines (opening
    line, left-over sentences) and cover panel; ``note`` is the footer (scaling note, page number)."""

    number: int
    size: Tuple[float, float]
    panels: Tuple[Panel, ...] = ()
    title: Optional[str] = None
    lines: Tuple[str, ...] = ()
    cover: Optional[Panel] = None
    note: str = ""
    footer: Box = field(default_factory=lambda: Box(0, 0, 0, 0))


def fit(box: Box, size: Tuple[int, int]) -> Box:
    """The largest rectangle of ``size``'s aspect ratio (width, height in pixels) inside ``box``, centred."""
    w, h = size
    s = min(box.w / w, box.h / h)
    fw, fh = w * s, h * s
    return Box(box.x + (box.w - fw) / 2, box.y + (box.h - fh) / 2, fw, fh)


def _panel(frame: int, cell: Box, size: Tuple[int, int], text: str, font_size: float, lines: int) -> Panel:
    band = min(cell.h * 0.4, font_size * LINE * lines + 8)
    image = fit(Box(cell.x + 4, cell.y + 4, cell.w - 8, cell.h - band - 8), size)
    caption = Box(cell.x + 4, cell.y + cell.h - band, cell.w - 8, band - 2)
    return Panel(frame, cell, image, caption, text, font_size)


def _grid(content: Box, cols: int, rows: int, aspect: float, band: float) -> List[Box]:
    """``cols`` x ``rows`` panel cells (left to right, top to bottom), each as tall as a frame of ``aspect``
    (height / width) at the cell's width plus a caption band of ``band`` points (less when the page is too short),
    the grid centred on the page."""
    cw = (content.w - (cols - 1) * GAP) / cols
    max_h = (content.h - (rows - 1) * GAP) / rows
    ch = min(max_h, (cw - 8) * aspect + band + 8)
    top = content.y + (content.h - (rows * ch + (rows - 1) * GAP)) / 2
    return [Box(content.x + c * (cw + GAP), top + r * (ch + GAP), cw, ch) for r in range(rows) for c in range(cols)]


def scaling_note(sizes: Sequence[Tuple[int, int]], panels: Sequence[Panel], options: PageOptions) -> str:
    """The footer's account of how frames were scaled: source and print sizes in pixels, filter, dpi."""
    if not panels:
        return f"SEED-Story pages, {options.dpi} dpi"
    src = sizes[panels[0].frame]
    dst = panels[0].image.px(options.dpi)
    return (
        f"frames scaled for print from {src[0]}x{src[1]} px to {dst[2] - dst[0]}x{dst[3] - dst[1]} px with "
        f"{options.resampling} resampling at {options.dpi} dpi"
    )


def plan_pages(
    sizes: Sequence[Tuple[int, int]],
    captions: Sequence[str],
    title: str,
    lines: Sequence[str] = (),
    options: PageOptions = PageOptions(),
) -> List[Page]:
    """Place the frames and captions of one story on pages.

    Args:
        sizes: each frame's (width, height) in pixels, in order.
        captions: each frame's sentence ('' for none), one per frame.
        title: the story's title (title page).
        lines: more text for the title page (the opening line, sentences left over after pairing).
        options: :class:`PageOptions`.

    Returns:
        The pages: the title page first, then the frames in order (``storybook``: 1 per page; ``comic``: cols x
        rows; ``strip``: 4, landscape). All pages of a story have one size.

    Raises:
        ValueError: no frames, or captions not one per frame.
    """
    if not sizes:
        raise ValueError("pages need at least one frame, found none")
    if len(captions) != len(sizes):
        raise ValueError(f"pages need one caption per frame, found {len(captions)} for {len(sizes)} frames")
    pw, ph = PAGE_SIZES[options.page_size]
    if options.layout == "strip":
        pw, ph = ph, pw
    m = float(options.margin_mm) * MM
    content = Box(m, m, pw - 2 * m, ph - 2 * m - FOOTER)
    footer = Box(m, ph - m - FOOTER + 4, pw - 2 * m, FOOTER - 4)
    cols, rows, font, nlines = {"storybook": (1, 1, 14.0, 4), "strip": (STRIP_PANELS, 1, 10.0, 4)}.get(
        options.layout, (*GRIDS[options.grid], 10.0, 3)
    )
    aspect = sizes[0][1] / sizes[0][0]
    per_page, cells = cols * rows, _grid(content, cols, rows, aspect, font * LINE * nlines + 8)
    body: List[List[Panel]] = []
    for start in range(0, len(sizes), per_page):
        body.append(
            [
                _panel(i, cells[i - start], sizes[i], captions[i], font, nlines)
                for i in range(start, min(start + per_page, len(sizes)))
            ]
        )
    note = scaling_note(sizes, body[0], options)
    cover_index = {"start picture": 0, "last frame": len(sizes) - 1}.get(options.cover)
    cover = None
    if cover_index is not None:
        top = content.y + content.h * 0.22
        cover = _panel(
            cover_index, Box(content.x, top, content.w, content.h - (top - content.y)), sizes[cover_index], "", 1.0, 0
        )
    total = len(body) + 1
    pages = [
        Page(
            1,
            (pw, ph),
            title=title,
            lines=tuple(x for x in lines if x),
            cover=cover,
            footer=footer,
            note=f"{note} - page 1 of {total}",
        )
    ]
    for k, panels in enumerate(body, start=2):
        pages.append(Page(k, (pw, ph), panels=tuple(panels), footer=footer, note=f"{note} - page {k} of {total}"))
    return pages


def wrap(text: str, width: float, measure: Callable[[str], float]) -> List[str]:
    """Break ``text`` into lines no wider than ``width`` (``measure(s)`` gives a string's width): at spaces, and
    inside a word (e.g. Chinese, which has no spaces) only when the word alone is too wide."""
    lines: List[str] = []
    for para in str(text).split("\n"):
        cur = ""
        for word in para.split(" "):
            trial = f"{cur} {word}" if cur else word
            if measure(trial) <= width:
                cur = trial
                continue
            if cur:
                lines.append(cur)
            cur = ""
            for ch in word:
                if cur and measure(cur + ch) > width:
                    lines.append(cur)
                    cur = ""
                cur += ch
        lines.append(cur)
    return lines


def scale_frame(frame: np.ndarray, box: Box, options: PageOptions) -> Image.Image:
    """A frame ((H, W, 3) uint8) scaled to ``box`` at the print resolution with the chosen resampling filter."""
    left, top, right, bottom = box.px(options.dpi)
    return Image.fromarray(frame).resize((max(1, right - left), max(1, bottom - top)), RESAMPLING[options.resampling])


class _Fonts:
    """PIL fonts by (file, size), with the bidirectional / shaping layout engine (libraqm) when Pillow has it."""

    def __init__(self, fonts: Sequence[FontFile], dpi: int):
        self.fonts, self.dpi, self.cache = list(fonts), dpi, {}
        self.engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC

    def get(self, text: str, size_pt: float) -> ImageFont.FreeTypeFont:
        ff = font_for(text, self.fonts)
        px = max(1, round(size_pt * self.dpi / 72.0))
        key = (str(ff.path), ff.index, px)
        if key not in self.cache:
            self.cache[key] = ImageFont.truetype(str(ff.path), px, index=ff.index, layout_engine=self.engine)
        return self.cache[key]


def _text_block(draw: ImageDraw.ImageDraw, fonts: _Fonts, text: str, box: Box, size: float, dpi: int) -> None:
    """Draw ``text`` centred in ``box``, shrinking the font until it fits (down to :data:`MIN_FONT`)."""
    s = dpi / 72.0
    while True:
        font = fonts.get(text, size)
        lines = wrap(text, box.w * s, font.getlength)
        if len(lines) * size * LINE <= box.h or size <= MIN_FONT:
            break
        size = max(MIN_FONT, size - 1)
    y = box.y * s
    for line in lines:
        draw.text(((box.x + box.w / 2) * s, y), line, fill=(20, 20, 20), font=font, anchor="ma")
        y += size * LINE * s


def render_pages(pages: Sequence[Page], frames: Sequence[np.ndarray], fonts: Sequence[FontFile], options: PageOptions):
    """Draw the pages as pictures.

    Args:
        pages: from :func:`plan_pages`.
        frames: the frames, (H, W, 3) uint8 each.
        fonts: from :func:`seedstory_core.fonts.choose_fonts`; each caption is drawn with the first that has all its
            characters.
        options: the same :class:`PageOptions` as the plan (dpi, resampling).

    Returns:
        np.ndarray: (pages, H, W, 3) uint8, H x W the page size at ``options.dpi``.
    """
    dpi, s = options.dpi, options.dpi / 72.0
    out = []
    pil_fonts = _Fonts(fonts, dpi)
    for page in pages:
        canvas = Image.new("RGB", (round(page.size[0] * s), round(page.size[1] * s)), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        if page.title is not None:
            m = page.footer.x
            _text_block(draw, pil_fonts, page.title, Box(m, m, page.size[0] - 2 * m, 60), 24.0, dpi)
            if page.lines:
                _text_block(draw, pil_fonts, "\n".join(page.lines), Box(m, m + 66, page.size[0] - 2 * m, 80), 13.0, dpi)
        for panel in ([page.cover] if page.cover else []) + list(page.panels):
            left, top, _r, _b = panel.image.px(dpi)
            canvas.paste(scale_frame(frames[panel.frame], panel.image, options), (left, top))
            if panel.text or page.panels:
                draw.rectangle(panel.cell.px(dpi), outline=(40, 40, 40), width=max(1, round(s)))
                _text_block(draw, pil_fonts, panel.text, panel.caption, panel.font_size, dpi)
        _text_block(draw, pil_fonts, page.note, page.footer, 7.0, dpi)
        out.append(np.asarray(canvas))
    return np.stack(out)
