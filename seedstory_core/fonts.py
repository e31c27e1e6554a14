"""Fonts for the printed pages and the PDF: the bundled DejaVu Sans, and fallback fonts found on the machine.

The pack ships one font, **DejaVu Sans 2.37** (``seedstory_core/fonts/DejaVuSans.ttf``, unmodified, 742 KiB; licence:
the Bitstream Vera / Arev licence with DejaVu's changes in the public domain, a free licence that allows bundling and
redistribution, text in ``seedstory_core/fonts/LICENSE_DEJAVU``). It covers Latin with its accents, Greek, Cyrillic,
Hebrew and Arabic. Characters it lacks (Chinese, Japanese, Korean, Thai, ...) are looked for in fallback fonts
(TrueType / OpenType ``.ttf``, ``.otf``, collections ``.ttc``), searched in this order:

1. the folders the caller names (``font_dirs`` of :func:`seedstory_core.storybook.write_storybook`);
2. the folders in the environment variable ``SEEDSTORY_FONT_DIRS`` (separated like ``PATH``);
3. the system's font folders (``/usr/share/fonts``, ``~/.fonts``, ``/Library/Fonts``, ``C:\\Windows\\Fonts``, ...).

No font is downloaded. When no font has a character, :func:`choose_fonts` refuses with
:class:`MissingGlyphsError`, which names the characters and what to do (docs/nodes.md, "Pages and PDF").
"""

from __future__ import annotations

import functools
import os
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from fontTools.ttLib import TTCollection, TTFont

FONT_DIR = Path(__file__).resolve().parent / "fonts"
#: The font the pack ships (see the module docstring for its licence).
BUNDLED_FONT = FONT_DIR / "DejaVuSans.ttf"
BUNDLED_NAME = "DejaVu Sans"
FONT_DIRS_ENV = "SEEDSTORY_FONT_DIRS"
FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
#: How many font files a search reads at most (a machine with thousands of fonts stays quick).
MAX_FONT_FILES = 4000


class MissingGlyphsError(ValueError):
    """Some characters of the text are in no available font (the message names them and what to do)."""


@dataclass(frozen=True)
class FontFile:
    """One font: a file and, for a collection (``.ttc``), the font's number in it.

    Attributes:
        path: the font file.
        index: the font's number in a collection (0 for a single font).
        name: its family name (from the font's name table), for messages and the docs.
    """

    path: Path
    index: int = 0
    name: str = ""


def system_font_dirs() -> List[Path]:
    """The usual font folders of Linux, macOS and Windows that exist on this machine."""
    home = Path.home()
    dirs = [
        Path("/usr/share/fonts"),
        Path("/usr/local/share/fonts"),
        home / ".fonts",
        home / ".local" / "share" / "fonts",
    ]
    if sys.platform == "darwin":
        dirs += [Path("/System/Library/Fonts"), Path("/Library/Fonts"), home / "Library" / "Fonts"]
    if os.name == "nt":
        dirs += [Path(os.environ.get("WINDIR", "C:\\Windows")) / "Fonts"]
        local = os.environ.get("LOCALAPPDATA")
        if local:
            dirs.append(Path(local) / "Microsoft" / "Windows" / "Fonts")
    return [d for d in dirs if d.is_dir()]


def font_dirs(extra: Iterable[os.PathLike | str] = ()) -> List[Path]:
    """Where fallback fonts are looked for, in order: ``extra``, ``$SEEDSTORY_FONT_DIRS``, the system's folders."""
    env = [p for p in os.environ.get(FONT_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    out: List[Path] = []
    for d in [Path(p) for p in extra] + [Path(p) for p in env] + system_font_dirs():
        if d.is_dir() and d not in out:
            out.append(d)
    return out


@functools.lru_cache(maxsize=4096)
def _font_info(path: str, index: int, mtime: float) -> Tuple[str, frozenset]:
    """(family name, code points) of one font; cached per file version."""
    font = TTFont(path, fontNumber=index, lazy=True)
    try:
        cmap = font.getBestCmap() or {}
        name = font["name"].getDebugName(1) or Path(path).stem
        return name, frozenset(cmap)
    finally:
        font.close()


def coverage(font: FontFile) -> frozenset:
    """The code points ``font`` has a glyph for (its best Unicode cmap)."""
    return _font_info(str(font.path), font.index, font.path.stat().st_mtime)[1]


def _font_files(dirs: Sequence[Path]) -> List[FontFile]:
    found: List[FontFile] = []
    for d in dirs:
        for root, _subdirs, files in os.walk(d):
            for name in sorted(files):
                if not name.lower().endswith(FONT_SUFFIXES):
                    continue
                path = Path(root) / name
                if name.lower().endswith(".ttc"):
                    try:
                        with TTCollection(str(path), lazy=True) as coll:
                            count = len(coll.fonts)
                    except Exception:  # an unreadable file is skipped, like a font manager does
                        continue
                    found += [FontFile(path, i) for i in range(count)]
                else:
                    found.append(FontFile(path, 0))
                if len(found) >= MAX_FONT_FILES:
                    return found
    return found


def needed_chars(texts: Iterable[str]) -> List[str]:
    """The characters of ``texts`` that need a glyph: all but white space, controls and format marks (bidi marks,
    zero-width joiners), which fonts need not draw. Sorted, without repeats."""
    chars = set()
    for text in texts:
        for ch in str(text):
            if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
                continue
            chars.add(ch)
    return sorted(chars)


def _describe(chars: Sequence[str]) -> str:
    shown = ", ".join(f"'{c}' (U+{ord(c):04X})" for c in chars[:8]) + (" ..." if len(chars) > 8 else "")
    blocks = sorted({unicodedata.name(c, "?").split(" ")[0] for c in chars})
    return f"{len(chars)} character(s) {shown}; scripts: {', '.join(blocks[:6])}"


def choose_fonts(
    texts: Iterable[str], extra_dirs: Iterable[os.PathLike | str] = (), *, strict: bool = True
) -> List[FontFile]:
    """The bundled font, then the fewest fallback fonts that together have every character of ``texts``.

    Args:
        texts: every text the pages print (title, sentences).
        extra_dirs: folders searched first for fallback fonts (see the module docstring for the order).
        strict: refuse characters no font has (for the PDF); False returns the fonts found anyway (the page
            pictures then draw such characters as the font's empty box).

    Returns:
        ``[bundled font, fallback, ...]``: the bundled font first; fallbacks only when it lacks characters.

    Raises:
        MissingGlyphsError: characters that no font in the searched folders has; the message names them, the
            folders searched, and what to do (add a font such as Noto Sans SC / Noto Sans CJK for Chinese, or save
            without the PDF).
    """
    chars = needed_chars(texts)
    bundled = FontFile(BUNDLED_FONT, 0, BUNDLED_NAME)
    missing = [c for c in chars if ord(c) not in coverage(bundled)]
    chosen = [bundled]
    if not missing:
        return chosen
    dirs = font_dirs(extra_dirs)
    candidates = []
    for font in _font_files(dirs):
        try:
            name, cover = _font_info(str(font.path), font.index, font.path.stat().st_mtime)
        except Exception:  # unreadable or not a font: skipped
            continue
        if any(ord(c) in cover for c in missing):
            candidates.append((FontFile(font.path, font.index, name), cover))
    while missing and candidates:
        best, cover = max(candidates, key=lambda fc: sum(ord(c) in fc[1] for c in missing))
        now = [c for c in missing if ord(c) not in cover]
        if len(now) == len(missing):
            break
        chosen.append(best)
        missing = now
    if missing and strict:
        where = ", ".join(str(d) for d in dirs) or "none found"
        raise MissingGlyphsError(
            f"no available font can draw {_describe(missing)}: the bundled {BUNDLED_NAME} covers "
            f"Latin, Greek, Cyrillic, Hebrew and Arabic, and no fallback font was found in the font folders "
            f"searched ({where}). Put a TrueType/OpenType font that has them (for Chinese e.g. Noto Sans SC or "
            f"Noto Sans CJK, SIL Open Font License) into one of those folders or a folder named in the environment "
            f"variable {FONT_DIRS_ENV}, then run again; or save without the PDF."
        )
    return chosen


def font_for(text: str, fonts: Sequence[FontFile]) -> FontFile:
    """The first of ``fonts`` that has every character of ``text``, else the one that has the most (for drawing a
    caption with one font, as the printed pages do)."""
    chars = needed_chars([text])
    best: Optional[FontFile] = None
    best_n = -1
    for font in fonts:
        cover = coverage(font)
        n = sum(ord(c) in cover for c in chars)
        if n == len(chars):
            return font
        if n > best_n:
            best, best_n = font, n
    assert best is not None, "fonts must not be empty"
    return best
