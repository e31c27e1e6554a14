"""docs/reference.md, the project's reference for the official SEED-Story code, and the citations that point into it.

* Every citation ``reference.md §N`` in a tracked file names a numbered section of docs/reference.md; a quoted
  passage after it (``§1 "Preprocessing"``) occurs in that section, and a cited step (``§3.1 steps 4-6``) is a
  numbered item of that section.
* Every numbered section names its paper section and the official file(s) it describes.
* No tracked file cites the old, out-of-repository specification any more (``spec §N``, ``SEED_STORY_SPEC``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List, Tuple


REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = REPO_ROOT / "docs" / "reference.md"

#: Suffixes of the files whose citations are checked.
TEXT_SUFFIXES = {".py", ".md", ".js", ".mjs", ".sh", ".json", ".yaml", ".yml", ".toml", ".txt", ".html", ".cfg"}

#: A numbered heading of docs/reference.md: "## §2.1 Tokens".
HEADING = re.compile(r"^(#{2,4}) §(\d+(?:\.\d+)?) \S", re.M)

_ID = r"\d+(?:\.\d+)?"
#: One cited item inside a citation clause: "§2.2", "§2.2-2.3", "§3.1 steps 4-6", '§1 "Preprocessing"'.
ITEM = re.compile(rf'§({_ID})(?:\s*-\s*({_ID}))?(?:\s+steps?\s+(\d+)(?:\s*-\s*(\d+))?)?(?:,?\s+"([^"\n]+)")?')


def _sections() -> Dict[str, str]:
    """Section id ("2.1") -> the text from its heading to the next numbered heading."""
    text = REFERENCE.read_text(encoding="utf-8")
    heads = list(HEADING.finditer(text))
    out: Dict[str, str] = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        assert m.group(2) not in out, f"docs/reference.md: section §{m.group(2)} appears twice"
        out[m.group(2)] = text[m.start() : end]
    return out


def _tracked_text_files() -> List[Path]:
    """The repository's tracked text files (``git ls-files``); without git, every file outside hidden/venv folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True).stdout
        names = [REPO_ROOT / n for n in out.decode("utf-8").split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [
            p
            for p in REPO_ROOT.rglob("*")
            if not any(
                part.startswith(".") or part in ("node_modules", "__pycache__")
                for part in p.relative_to(REPO_ROOT).parts
            )
        ]
    return [p for p in names if p.suffix in TEXT_SUFFIXES and p.is_file()]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ""


def _citations() -> List[Tuple[str, int, str, str | None, Tuple[int, int] | None, str | None]]:
    """(file, line, section id, range end id, (first step, last step), quoted passage) for every cited item.

    A citation starts at ``reference.md §``; its clause runs to the next ``)``, ``;`` or end of line, and every
    ``§N`` item in the clause is collected (``docs/reference.md §2.1, §3.1, §5`` gives three).
    """
    found = []
    for path in _tracked_text_files():
        rel = path.relative_to(REPO_ROOT).as_posix()
        for lineno, line in enumerate(_read(path).splitlines(), 1):
            for m in re.finditer(r"reference\.md (?=§)", line):
                clause = re.split(r"[);]", line[m.end() :], maxsplit=1)[0]
                for item in ITEM.finditer(clause):
                    steps = None
                    if item.group(3):
                        steps = (int(item.group(3)), int(item.group(4) or item.group(3)))
                    found.append((rel, lineno, item.group(1), item.group(2), steps, item.group(5)))
    return found


def test_reference_numbers_every_section_of_the_old_layout():
    """The numbering §0-§9 with subsections 2.1-2.6, 3.1-3.3, 4.1-4.2 is what every citation relies on."""
    ids = set(_sections())
    expected = {str(n) for n in range(10)} | {f"2.{i}" for i in range(1, 7)} | {"3.1", "3.2", "3.3", "4.1", "4.2"}
    assert expected <= ids, f"docs/reference.md lacks sections {sorted(expected - ids)}"


def test_every_section_names_its_paper_section_and_official_files():
    missing = []
    for sid, text in _sections().items():
        if sid.startswith("8."):  # the quirks: each names the official file it is about
            if not re.search(r"`(src|scripts|configs|StoryStream)/[^`]+`", text):
                missing.append(f"§{sid}: no official file")
            continue
        if "*Paper:*" not in text:
            missing.append(f"§{sid}: no '*Paper:*' line")
        if not re.search(r"\*Official files?:\*", text):
            missing.append(f"§{sid}: no '*Official file(s):*' line")
    assert not missing, missing


def test_every_reference_citation_names_an_existing_section():
    """(a) Every ``reference.md §N`` citation in the repository resolves into docs/reference.md."""
    sections = _sections()
    cites = _citations()
    assert cites, "no citation of docs/reference.md found at all (did the citation rewrite run?)"
    bad = []
    for rel, lineno, sid, sid_end, steps, passage in cites:
        where = f"{rel}:{lineno}"
        for s in filter(None, (sid, sid_end)):
            if s not in sections:
                bad.append(f"{where}: §{s} is not a section of docs/reference.md")
        if sid not in sections:
            continue
        body = sections[sid]
        if steps:
            for n in range(steps[0], steps[1] + 1):
                if not re.search(rf"^\s*{n}\. ", body, re.M):
                    bad.append(f"{where}: §{sid} has no numbered step {n}")
        if passage and passage not in body:
            bad.append(f'{where}: §{sid} has no passage "{passage}"')
    assert not bad, "\n".join(bad)


# (b) -------------------------------------------------------------------------------------------------------------
# No tracked file may cite the old specification, which is not part of the repository (every citation was rewritten
# to point into docs/reference.md).
OLD_CITATION = re.compile(r"(?<![\w/.-])spec §|SEED_STORY_SPEC")
#: Files that name the old forms on purpose: this test.
OLD_CITATION_ALLOWED = {"tests/project/test_reference_doc.py"}


def test_no_file_cites_the_out_of_repository_spec():
    """(b) "spec §N" and "SEED_STORY_SPEC" are gone: cite ``docs/reference.md §N`` instead."""
    left = []
    for path in _tracked_text_files():
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel in OLD_CITATION_ALLOWED:
            continue
        for lineno, line in enumerate(_read(path).splitlines(), 1):
            if OLD_CITATION.search(line):
                left.append(f"{rel}:{lineno}: {line.strip()[:120]}")
    assert not left, "citations of the old, out-of-repository specification (cite docs/reference.md §N):\n" + "\n".join(
        left
    )
