"""The storybook as one multi-page PDF (``story.pdf``), drawn from the page plan of :mod:`seedstory_core.pages`.

Written with **fpdf2** (pure Python, LGPL-3.0; its own dependencies, fontTools, Pillow and defusedxml, are
already in a ComfyUI environment or small): it embeds TrueType/OpenType fonts as subsets with a ToUnicode map, so
the text stays text (selectable, searchable: ``pdftotext`` reads it back); with **uharfbuzz** (HarfBuzz's Python
binding) it shapes and orders right-to-left scripts (Hebrew, Arabic: joined letters, right-to-left runs) by the
Unicode bidirectional algorithm; and it falls back per character to further fonts (e.g. a CJK font for Chinese).
Why not reportlab: it needs a separate shaping add-on and its own font registry for the same result, and has C
extensions; fpdf2 does the same job in one pure-Python package. Fonts: :mod:`seedstory_core.fonts`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from fpdf import FPDF
from fpdf.enums import MethodReturnValue, XPos, YPos

from .fonts import FontFile
from .pages import LINE, MIN_FONT, Box, Page, PageOptions, scale_frame

CREATOR = "SEED-Story (seedstory)"


def _family(i: int) -> str:
    return f"seedstory{i}"


class _Writer:
    def __init__(self, fonts: Sequence[FontFile], title: str):
        pdf = FPDF(unit="pt")
        pdf.set_auto_page_break(False)
        pdf.set_margin(0)
        for i, font in enumerate(fonts):
            pdf.add_font(_family(i), fname=str(font.path), collection_font_number=font.index)
        if len(fonts) > 1:
            pdf.set_fallback_fonts([_family(i) for i in range(1, len(fonts))], exact_match=False)
        pdf.set_font(_family(0), size=12)
        # HarfBuzz shaping + the Unicode bidi algorithm (uharfbuzz, requirements.txt)
        pdf.set_text_shaping(True)
        pdf.set_title(title)
        pdf.set_creator(CREATOR)
        pdf.set_text_color(20, 20, 20)
        pdf.set_draw_color(40, 40, 40)
        self.pdf = pdf

    def text(self, text: str, box: Box, size: float) -> None:
        """``text`` centred in ``box``, the font shrunk until it fits (down to MIN_FONT points)."""
        pdf = self.pdf
        while True:
            pdf.set_font_size(size)
            lines = pdf.multi_cell(box.w, size * LINE, text, align="C", dry_run=True, output=MethodReturnValue.LINES)
            if len(lines) * size * LINE <= box.h or size <= MIN_FONT:
                break
            size = max(MIN_FONT, size - 1)
        pdf.set_xy(box.x, box.y)
        # fpdf2 2.8.9 forgets to select the main font again after a text drawn wholly in a fallback font (a Chinese
        # caption): the next text would have no font ("No font in show"); this makes it select the font anew.
        pdf.current_font_is_set_on_page = False
        pdf.multi_cell(box.w, size * LINE, text, align="C", new_x=XPos.LEFT, new_y=YPos.NEXT)

    def page(self, page: Page, frames: Sequence[np.ndarray], options: PageOptions) -> None:
        pdf = self.pdf
        pdf.add_page(format=page.size)
        if page.title is not None:
            m = page.footer.x
            self.text(page.title, Box(m, m, page.size[0] - 2 * m, 60), 24.0)
            if page.lines:
                self.text("\n".join(page.lines), Box(m, m + 66, page.size[0] - 2 * m, 80), 13.0)
        for panel in ([page.cover] if page.cover else []) + list(page.panels):
            im = panel.image
            pdf.image(scale_frame(frames[panel.frame], im, options), x=im.x, y=im.y, w=im.w, h=im.h)
            if page.panels:
                pdf.set_line_width(1.0)
                pdf.rect(panel.cell.x, panel.cell.y, panel.cell.w, panel.cell.h)
                self.text(panel.text, panel.caption, panel.font_size)
        self.text(page.note, page.footer, 7.0)


def write_pdf(
    path: os.PathLike | str,
    pages: Sequence[Page],
    frames: Sequence[np.ndarray],
    fonts: Sequence[FontFile],
    options: PageOptions,
    title: str,
) -> Path:
    """Write the pages as one PDF: frames as images scaled for print, every text as real text.

    Args:
        path: the file to write (its folder must exist).
        pages: from :func:`seedstory_core.pages.plan_pages`.
        frames: the frames, (H, W, 3) uint8 each.
        fonts: from :func:`seedstory_core.fonts.choose_fonts` (the first is the main font, the others fallbacks).
        options: the :class:`~seedstory_core.pages.PageOptions` of the plan.
        title: the document title (PDF metadata).

    Returns:
        ``Path(path)``.

    Raises:
        OSError: the file cannot be written.
    """
    writer = _Writer(fonts, title)
    for page in pages:
        writer.page(page, frames, options)
    path = Path(path)
    writer.pdf.output(str(path))
    return path
