"""docs/reliability.md stays true.

Every row of its tables names the message a user sees and the tests that keep it true. This module checks, for
every row:

* each cited test (``tests/<file>.py::<name>``, a parametrised id allowed) exists as a test function;
* the message is really what users see: the message is split at its placeholders (``<...>`` and ``…``), and
  every literal piece of 12 characters or more must occur inside one string literal of the pack's code
  (``nodes/``, ``seedstory_core/``, ``seedstory_client/``, ``training/``, ``scripts/``; an f-string's ``{...}``
  fields count as placeholders too) or of a cited test (which then asserts the rendered text). Rows whose message
  comes from ComfyUI or a library, not from us, start with ``ComfyUI:`` or ``Python:``; only their tests are
  checked.

So a reworded error fails here until the document says what users now see, and a renamed or deleted test fails
here until the document cites what keeps the row true.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "reliability.md"
CODE_DIRS = ("nodes", "seedstory_core", "seedstory_client", "training", "scripts")
HOLE = "\x00"
MIN_PIECE = 12
TEST_REF = re.compile(r"tests/(?P<file>[\w/]+\.py)::(?P<name>\w+)")
FOREIGN = ("ComfyUI:", "Python:")


def _rows():
    """(line number, message cell, tests cell) of every table row with a message in backticks."""
    rows = []
    for lineno, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0].lower() in {"input or fault", "what"}:
            continue
        rows.append((lineno, cells[-2], cells[-1]))
    return rows


def _string_value(node) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        out = []
        for part in node.values:
            out.append(part.value if isinstance(part, ast.Constant) else HOLE)
        return "".join(out)
    return None


@lru_cache(maxsize=None)
def _file_strings(path: Path) -> tuple[str, ...]:
    """Every string literal of one Python file (implicit concatenation joined, f-string fields as holes)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        s = _string_value(node)
        if s and len(s) >= MIN_PIECE:
            found.append(" ".join(s.split()))
    return tuple(found)


@lru_cache(maxsize=1)
def _code_strings() -> tuple[str, ...]:
    return tuple(s for d in CODE_DIRS for path in sorted((REPO_ROOT / d).rglob("*.py")) for s in _file_strings(path))


def _message_pieces(cell: str) -> list[str]:
    quoted = re.findall(r"`([^`]+)`", cell)
    pieces = []
    for q in quoted:
        q = re.sub(r"<[^<>]*>", HOLE, q).replace("…", HOLE).replace("...", HOLE)
        pieces += [" ".join(p.split()) for p in q.split(HOLE)]
    return [p for p in pieces if len(p) >= MIN_PIECE]


def test_the_document_has_rows():
    rows = _rows()
    assert len(rows) >= 40, f"docs/reliability.md has only {len(rows)} table rows"
    assert all(TEST_REF.search(tests) for _, _, tests in rows), [
        n for n, _, tests in rows if not TEST_REF.search(tests)
    ]


@pytest.mark.parametrize("lineno,message,tests", _rows(), ids=lambda v: str(v)[:40] if isinstance(v, int) else None)
def test_row_is_kept_true(lineno, message, tests):
    refs = list(TEST_REF.finditer(tests))
    assert refs, f"docs/reliability.md line {lineno}: no test cited"
    for ref in refs:
        path = REPO_ROOT / "tests" / ref["file"]
        assert path.is_file(), f"line {lineno}: {path} does not exist"
        names = {
            n.name
            for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        assert ref["name"] in names, f"line {lineno}: {ref['file']} has no test {ref['name']}"
    if message.startswith(FOREIGN):
        return
    pieces = _message_pieces(message)
    assert pieces, f"line {lineno}: no message in backticks: {message!r}"
    strings = _code_strings() + tuple(s for ref in refs for s in _file_strings(REPO_ROOT / "tests" / ref["file"]))
    missing = [p for p in pieces if not any(p in s for s in strings)]
    assert not missing, (
        f"docs/reliability.md line {lineno}: neither the pack's code nor the cited tests hold "
        f"{missing}; update the document to what users now see"
    )


def test_checker_catches_a_reworded_message():
    """The check can fail: a piece that the code does not contain is reported."""
    strings = _code_strings()
    assert not any("this sentence is in no error message of the pack" in s for s in strings)
    assert _message_pieces("`abc <x> this piece is long enough … tail piece is long enough`") == [
        "this piece is long enough",
        "tail piece is long enough",
    ]
