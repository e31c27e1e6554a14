"""The printed pages and the PDF (seedstory_core.pages, seedstory_core.pdf, seedstory_core.fonts).

The PDF is read back as a person and a search tool would: ``pdftoppm`` renders its pages (the panels must be where the
layout plan puts them, in the frame's colour) and ``pdftotext`` reads its text layer (every caption must be there as
text). Both come from Debian's poppler-utils (scripts/setup_browser.sh installs it; required under CI=true).
A Chinese caption is drawn with a fallback font found in a font folder (here a small TrueType font the test builds
with fontTools, mapping the caption's characters) or refused with a message when no font has it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.ttGlyphPen import TTGlyphPen
from PIL import Image

from seedstory_core import fonts as fonts_mod
from seedstory_core.data import mini
from seedstory_core.fonts import MissingGlyphsError
from seedstory_core.pages import GRIDS, PageOptions, plan_pages
from seedstory_core.storybook import write_storybook
from tests.conftest import require_or_skip

DPI = 72  # render at the plan's own unit: 1 point = 1 pixel


def poppler() -> None:
    for tool in ("pdftoppm", "pdftotext", "pdfinfo"):
        if shutil.which(tool) is None:
            require_or_skip(f"{tool} not found: install Debian poppler-utils (bash scripts/setup_browser.sh)")


def colours(n: int):
    """n clearly different RGB colours."""
    return [((i * 67) % 256, (60 + i * 131) % 256, (200 + i * 37) % 256) for i in range(n)]


def story(n: int = 12):
    frames = [np.full((64, 64, 3), c, np.uint8) for c in colours(n)]
    sentences = ["Max and Zoë find a map."] + [
        f"Panel {i}: they sail past the lighthouse, and the naïve gull follows ({i})." for i in range(1, n + 1)
    ]
    return frames, sentences


def render(pdf: Path, out: Path, dpi: int = DPI):
    subprocess.run(["pdftoppm", "-r", str(dpi), "-png", str(pdf), str(out / "p")], check=True, timeout=120)
    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("p-*.png"))]


def text_layer(pdf: Path) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def flat(text: str) -> str:
    """Whitespace collapsed and bidi marks dropped (captions wrap over lines in the PDF)."""
    return " ".join(re.sub("[\u200e\u200f\u202a-\u202e\u2066-\u2069]", "", text).split())


def check_panels(page_images, plan, frames, dpi=DPI):
    """Every panel's frame is where the plan puts it (mean colour of its inner part = the frame's colour)."""
    for page, im in zip(plan, page_images):
        for panel in ([page.cover] if page.cover else []) + list(page.panels):
            left, top, right, bottom = panel.image.px(dpi)
            inner = im[top + 3 : bottom - 3, left + 3 : right - 3].reshape(-1, 3).astype(float)
            assert inner.size, (page.number, panel.frame)
            want = frames[panel.frame][0, 0].astype(float)
            assert np.abs(inner.mean(0) - want).max() < 4, (page.number, panel.frame, inner.mean(0), want)
            # just outside the image is paper, not the frame's colour
            strip = im[top + 3 : bottom - 3, max(0, left - 3)].astype(float)
            assert np.abs(strip.mean(0) - want).max() > 20, (page.number, panel.frame)


@pytest.mark.parametrize(("layout", "grid", "pages"), [("comic", "2x2", 4), ("comic", "3x2", 3), ("strip", "2x2", 4)])
def test_twelve_frames_as_pdf_pages_text_and_panels(tmp_path, layout, grid, pages):
    poppler()
    frames, sentences = story(12)
    options = PageOptions(layout=layout, grid=grid, margin_mm=10)
    book = write_storybook(tmp_path / "book", frames, sentences, title="The Map of Zoë", pages=options, pdf=True)
    assert book.pdf == tmp_path / "book" / "story.pdf"
    info = subprocess.run(["pdfinfo", str(book.pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(rf"^Pages:\s+{pages}$", info, re.M), info
    w, h = map(float, re.search(r"Page size:\s+([\d.]+) x ([\d.]+)", info).groups())
    assert (w > h) == (layout == "strip")
    text = flat(text_layer(book.pdf))
    for s in sentences + ["The Map of Zoë", "lanczos resampling at 150 dpi"]:
        assert flat(s) in text, s
    plan = plan_pages([(64, 64)] * 12, sentences[1:], "The Map of Zoë", [sentences[0]], options)
    assert len(plan) == pages
    cols, rows = GRIDS[grid] if layout == "comic" else (4, 1)
    assert [len(p.panels) for p in plan[1:]] == [cols * rows] * (pages - 1)
    # left to right, then top to bottom
    first = plan[1].panels
    assert first[1].cell.x > first[0].cell.x and abs(first[1].cell.y - first[0].cell.y) < 1e-6
    if rows > 1:
        assert first[cols].cell.y > first[0].cell.y + first[0].cell.h
    rendered = render(book.pdf, tmp_path)
    assert len(rendered) == pages
    check_panels(rendered, plan, frames)
    # the page pictures (Save Story's pages output) are the same plan, drawn at the chosen dpi
    assert book.pages.shape == (pages, round(h * 150 / 72), round(w * 150 / 72), 3)
    check_panels(list(book.pages), plan, frames, dpi=150)


def test_storybook_layout_one_frame_per_page_and_the_footer_names_the_resampling(tmp_path):
    poppler()
    frames, sentences = story(3)
    options = PageOptions(layout="storybook", page_size="Letter", resampling="nearest", dpi=96, cover="none")
    book = write_storybook(tmp_path / "b", frames, sentences, title="T", pages=options, pdf=True)
    info = subprocess.run(["pdfinfo", str(book.pdf)], capture_output=True, text=True, check=True).stdout
    assert re.search(r"^Pages:\s+4$", info, re.M) and "612 x 792 pts (letter)" in info
    text = flat(text_layer(book.pdf))
    assert text.count("with nearest resampling at 96 dpi") == 4
    plan = plan_pages([(64, 64)] * 3, sentences[1:], "T", [sentences[0]], options)
    assert plan[0].cover is None and [len(p.panels) for p in plan[1:]] == [1, 1, 1]
    check_panels(render(book.pdf, tmp_path), plan, frames)


def test_accented_hebrew_and_arabic_captions_are_text_in_reading_order(tmp_path):
    poppler()
    frames = [np.full((32, 32, 3), c, np.uint8) for c in colours(3)]
    captions = ["Crème brûlée à la façon de Zoë, Ångström, Łódź.", "שלום עולם קטן", "مرحبا بالعالم الجميل"]
    book = write_storybook(tmp_path / "b", frames, captions, pages=PageOptions(layout="comic"), pdf=True)
    text = text_layer(book.pdf)
    assert flat(captions[0]) in flat(text)
    for word in captions[1].split() + captions[2].split():
        assert word in text, word
    # right to left: the first word of a Hebrew / Arabic caption stands right of the last one on the page
    bbox = subprocess.run(["pdftotext", "-bbox", str(book.pdf), "-"], capture_output=True, text=True).stdout
    xs = {m.group(2): float(m.group(1)) for m in re.finditer(r'<word xMin="([\d.]+)"[^>]*>([^<]+)</word>', bbox)}
    # pdftotext writes each right-to-left word in visual order (letters reversed)
    for caption in captions[1:]:
        words = caption.split()
        first, last = words[0][::-1], words[-1][::-1]
        assert xs[first] > xs[last], (caption, xs)


def build_font(path: Path, chars: str) -> Path:
    """A minimal TrueType font whose glyphs (squares) map ``chars`` (a stand-in for a CJK font)."""
    names = [".notdef"] + [f"uni{ord(c):04X}" for c in chars]
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap({ord(c): f"uni{ord(c):04X}" for c in chars})
    glyphs = {}
    for n in names:
        pen = TTGlyphPen(None)
        pen.moveTo((100, 0))
        pen.lineTo((100, 800))
        pen.lineTo((900, 800))
        pen.lineTo((900, 0))
        pen.closePath()
        glyphs[n] = pen.glyph()
    fb.setupGlyf(glyphs)
    fb.setupHorizontalMetrics({n: (1000, 100) for n in names})
    fb.setupHorizontalHeader(ascent=880, descent=-120)
    fb.setupNameTable({"familyName": "Stand-in CJK", "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=880, sTypoDescender=-120, usWinAscent=880, usWinDescent=120)
    fb.setupPost()
    path.parent.mkdir(parents=True, exist_ok=True)
    fb.save(str(path))
    return path


@pytest.fixture
def no_system_fonts(monkeypatch):
    monkeypatch.setattr(fonts_mod, "system_font_dirs", lambda: [])
    monkeypatch.delenv(fonts_mod.FONT_DIRS_ENV, raising=False)


def test_chinese_caption_with_a_fallback_font_is_text_in_the_pdf(tmp_path, no_system_fonts):
    poppler()
    build_font(tmp_path / "fonts" / "standin.ttf", "小猫在船上你好")
    frames = [np.full((32, 32, 3), c, np.uint8) for c in colours(3)]
    # a caption wholly in the fallback font, then Latin ones: the main font must be selected again after it
    captions = ["小猫在船上", "Ünïcödé after Chinese", "你好 Zoë"]
    book = write_storybook(
        tmp_path / "b", frames, captions, pages=PageOptions(layout="strip"), pdf=True, font_dirs=[tmp_path / "fonts"]
    )
    text = flat(text_layer(book.pdf))
    for c in captions:
        assert flat(c) in text, (c, text)
    bad = subprocess.run(["pdftoppm", "-r", "20", "-png", str(book.pdf), str(tmp_path / "r")], capture_output=True)
    assert bad.returncode == 0 and b"Error" not in bad.stderr, bad.stderr[-500:]


def test_chinese_caption_without_a_font_is_refused_and_nothing_is_written(tmp_path, no_system_fonts):
    frames = [np.zeros((16, 16, 3), np.uint8)] * 2
    with pytest.raises(MissingGlyphsError) as err:
        write_storybook(tmp_path / "out" / "b", frames, ["小猫在船上", "ok"], pdf=True, font_dirs=[tmp_path / "none"])
    msg = str(err.value)
    assert "U+5C0F" in msg and "DejaVu Sans" in msg and "Noto Sans" in msg and "SEEDSTORY_FONT_DIRS" in msg
    assert "without the PDF" in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # without the PDF the same story is saved (the page pictures draw the missing characters as boxes)
    book = write_storybook(tmp_path / "out" / "b", frames, ["小猫在船上", "ok"], pages=PageOptions())
    assert book.pdf is None and book.pages.shape[0] == 3


def test_page_options_are_checked():
    for bad in ({"layout": "manga"}, {"grid": "4x4"}, {"page_size": "A5"}, {"margin_mm": 80}, {"dpi": 10}):
        with pytest.raises(ValueError, match="must be"):
            PageOptions(**bad)


DOC_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
DOC_PAGES = {"pages_comic.png": ("comic", 2), "pages_storybook_pdf.png": ("storybook", 2)}


@pytest.mark.parametrize("name", sorted(DOC_PAGES))
def test_doc_images_are_pdf_pages_rendered_by_pdftoppm(tmp_path, name):
    """README and docs/nodes.md show these pages: a StoryStream-mini story saved as a PDF, one page rendered by
    pdftoppm at 60 dpi. SEEDSTORY_WRITE_DOC_IMAGES=1 writes them; otherwise the committed picture must be that
    rendering (same size, mean pixel difference under 3 of 255: other poppler/FreeType versions anti-alias a little
    differently)."""
    poppler()
    layout, page = DOC_PAGES[name]
    s = mini.generate_story(3, 0, frames=8)
    frames = [np.asarray(im) for im in mini.render_story(s, size=128)]
    book = write_storybook(
        tmp_path / "b",
        frames,
        s["captions"],
        title="Ben and George",
        pages=PageOptions(layout=layout, margin_mm=10),
        pdf=True,
    )
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            "60",
            "-f",
            str(page),
            "-l",
            str(page),
            "-png",
            "-singlefile",
            str(book.pdf),
            str(tmp_path / "p"),
        ],
        check=True,
        timeout=60,
    )
    fresh = Image.open(tmp_path / "p.png").convert("RGB")
    if os.environ.get("SEEDSTORY_WRITE_DOC_IMAGES") == "1":
        DOC_IMG.mkdir(parents=True, exist_ok=True)
        fresh.save(DOC_IMG / name, optimize=True)
    committed = Image.open(DOC_IMG / name).convert("RGB")
    assert committed.size == fresh.size
    diff = np.abs(np.asarray(committed, float) - np.asarray(fresh, float)).mean()
    assert diff < 3, diff
    assert all(flat(c) in flat(text_layer(book.pdf)) for c in s["captions"])
