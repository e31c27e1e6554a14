"""Rewrite citations of the old, out-of-repository specification into citations of ``docs/reference.md``.

The code used to cite an external document as ``spec §2.1``, ``(spec §5)``, ``SEED_STORY_SPEC.md §1`` or
``SEED_STORY_SPEC.md, "Construction"``. ``docs/reference.md`` keeps that document's section numbers, so each
citation maps mechanically onto ``docs/reference.md §N``. Two named passages of the golden-fixture README that
describe the pipeline itself ("Dimension chaining", "Sink policy note") are documented in ``docs/reference.md`` too
and are rewritten with them.

Usage (from the repository root)::

    python scripts/rewrite_citations.py            # rewrite every tracked text file, print counts per file
    python scripts/rewrite_citations.py --check    # change nothing; exit 1 if any file would change

The rewrite is idempotent: a second run changes nothing. Files are listed with ``git ls-files`` (so ignored and
untracked files are left alone) and read as UTF-8; files that are not UTF-8 text are skipped.
``tests/test_reference_doc.py`` fails while any old citation is left.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Suffixes of the files that are rewritten.
TEXT_SUFFIXES = {".py", ".md", ".js", ".mjs", ".sh", ".json", ".yaml", ".yml", ".toml", ".txt", ".html", ".cfg"}

#: Files never rewritten: this script and the test (both name the old forms on purpose).
SKIP = {"scripts/rewrite_citations.py", "tests/test_reference_doc.py"}

#: (pattern, replacement), applied in order; the specific forms come before the general ones.
RULES: List[Tuple[re.Pattern, str]] = [
    # the preamble passage of the old document
    (re.compile(r'SEED_STORY_SPEC\.md, "Construction"'), 'docs/reference.md §0 "Construction"'),
    # golden-fixture README passages about the pipeline, cited next to the spec section they belong to
    (re.compile(r'golden/README\.md "Dimension chaining", spec §0'), 'docs/reference.md §0 "Dimension chaining"'),
    (re.compile(r'SEED_STORY_SPEC\.md §3\.2; golden/README\.md "Sink policy note"'),
     'docs/reference.md §3.2 "Sink policy note"'),
    # the document by name, with or without its suffix
    (re.compile(r"SEED_STORY_SPEC(?:\.md)? §"), "docs/reference.md §"),
    (re.compile(r"SEED_STORY_SPEC\.md"), "docs/reference.md"),
    # the short form "spec §N" (not part of a longer word such as "inspec §")
    (re.compile(r"(?<![\w/.-])spec §"), "docs/reference.md §"),
]


def rewrite_text(text: str) -> Tuple[str, int]:
    """Apply :data:`RULES` to ``text``.

    Args:
        text: the file's content.

    Returns:
        (the new text, the number of replacements made). Applying it again to the new text returns 0 replacements.
    """
    total = 0
    for pattern, replacement in RULES:
        text, n = pattern.subn(replacement, text)
        total += n
    return text, total


def tracked_files(root: Path) -> List[str]:
    """Repository-relative paths of the tracked text files (``git ls-files``), minus :data:`SKIP`.

    Raises:
        RuntimeError: ``root`` is not a git working tree, or git is not installed.
    """
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"cannot list the tracked files of {root} with git: {exc}") from exc
    names = [n for n in out.decode("utf-8").split("\0") if n]
    return [n for n in names if Path(n).suffix in TEXT_SUFFIXES and n not in SKIP]


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite 'spec §N' / SEED_STORY_SPEC.md citations into "
                                                 "'docs/reference.md §N' in every tracked text file.")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)

    changed_files = 0
    total = 0
    for name in tracked_files(args.root):
        path = args.root / name
        try:
            text = path.read_bytes().decode("utf-8")  # bytes, so line endings stay as they are
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        new, n = rewrite_text(text)
        if n == 0:
            continue
        changed_files += 1
        total += n
        print(f"{n:4d}  {name}")
        if not args.check:
            path.write_bytes(new.encode("utf-8"))
    verb = "would change" if args.check else "changed"
    print(f"{verb} {total} citation(s) in {changed_files} file(s)")
    return 1 if (args.check and total) else 0


if __name__ == "__main__":
    sys.exit(main())
