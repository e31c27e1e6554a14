"""StoryStream jsonl reading and the official 10-frame chunker (docs/reference.md §5).

A StoryStream line is a JSON object ``{"id", "images": [relative paths], "captions": [texts], "orders"}``; the
images live under an ``image_dir`` (``data/image/george_full`` in the official configs). Records returned here
are plain dicts, the format the training sample builder consumes::

    {"id": ..., "images": [absolute paths], "captions": [str, ...], "orders": [...]?, "attributes": [...]?}

Official quirks handled:

* **empty records are dropped** (the datapipe's "drop empty" step): a line whose ``images`` or ``captions`` is
  empty/missing-and-empty, or a blank line, yields nothing;
* lines written by the GPT-4 story tools (``build_story.py``) are Python ``repr`` lines, not JSON: a line that
  is not valid JSON is retried with :func:`ast.literal_eval` before it is reported;
* anything else that is wrong (not a dict, bad JSON, ``images``/``captions`` of different lengths, non-string
  captions) raises :class:`StoryStreamError` naming the file and the 1-based line number.

:func:`chunk_stories` reproduces ``chunk_data.py``: chunks of ``chunk_len`` (10) consecutive frames, incomplete
trailing chunks dropped (a 30-frame story gives exactly 3 chunks), ``id`` = index of the source story, ``orders``
dropped. A StoryStream *folder* (the training stages' ``--data``, the Adapt De-tokenizer node's ``data_folder``) holds
one such jsonl (:func:`find_jsonl`) and its images (:func:`image_candidates`); :func:`read_records` /
:func:`load_records` read it as the training stages do. CLI::

    python -m seedstory_core.data.storystream chunk IN.jsonl OUT.jsonl --len 10 [--keep attributes]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from PIL import Image

__all__ = [
    "StoryStreamError",
    "MAX_LINE_BYTES",
    "iter_lines",
    "parse_line",
    "iter_jsonl",
    "read_jsonl",
    "write_jsonl",
    "load_image",
    "chunk_stories",
    "JSONL_NAMES",
    "MIN_FRAMES",
    "find_jsonl",
    "image_candidates",
    "read_records",
    "load_records",
    "main",
]

PathLike = Union[str, Path]
#: The story file of a StoryStream folder, in order of preference (the official 10-frame chunks first); a folder
#: with neither must hold exactly one ``*.jsonl``.
JSONL_NAMES = ("chunks10.jsonl", "stories.jsonl")
#: Stories with fewer frames are skipped by the training stages and the Adapt De-tokenizer node (a training sample
#: needs a context frame and a target frame).
MIN_FRAMES = 2


#: The longest StoryStream line read, in bytes (1 MiB). A line holds one story: an official chunk of 10 frames is
#: 10 image paths and 10 one-sentence captions (at most 446 tokens, about 1,500 characters, each), a few kB; a line
#: over this is refused without being read whole, so a damaged or hostile file cannot fill the memory.
MAX_LINE_BYTES = 1 << 20


class StoryStreamError(ValueError):
    """A StoryStream jsonl line is malformed; the message names the file and the 1-based line number."""


def iter_lines(
    path: PathLike,
    *,
    where: Optional[str] = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    on_line: Optional[Callable[[], None]] = None,
) -> Iterator[Tuple[int, str]]:
    """The lines of a jsonl file as ``(1-based line number, text without its line end)``, read with a cap.

    The file is read in binary, one ``readline(max_line_bytes + 1)`` at a time, so at most ``max_line_bytes + 1``
    bytes of a line are ever held: an over-long line is refused as soon as its first ``max_line_bytes + 1`` bytes
    are read, never materialised whole. Each line is decoded as UTF-8 (a leading byte-order mark is dropped).

    Args:
        path: the .jsonl file.
        where: how messages name the file (default: ``str(path)``).
        max_line_bytes: the longest line accepted, in bytes without the line end (default :data:`MAX_LINE_BYTES`).
        on_line: called before each line is read (e.g. a Cancel check that raises); None = nothing.

    Yields:
        (int, str): the line number and the decoded line.

    Raises:
        StoryStreamError: a line longer than ``max_line_bytes`` (named by file and line number, with the cap and
            what to do), or bytes that are not UTF-8 (file, line, column of the first bad byte).
        FileNotFoundError, OSError: the file cannot be opened or read.
    """
    shown = where if where is not None else str(path)
    with open(path, "rb") as fh:
        lineno = 0
        while True:
            if on_line is not None:
                on_line()
            raw = fh.readline(max_line_bytes + 1)
            if not raw:
                return
            lineno += 1
            body = raw.rstrip(b"\r\n")
            if len(body) > max_line_bytes:
                raise StoryStreamError(
                    f"{shown} line {lineno}: longer than {max_line_bytes:,} bytes (the longest StoryStream line "
                    "read; a line holds one story: its image paths and one-sentence captions). Split long stories "
                    "into chunks (python -m seedstory_core.data.storystream chunk IN OUT --len 10) and keep each "
                    "caption to one sentence."
                )
            if lineno == 1 and body.startswith(b"\xef\xbb\xbf"):
                body = body[3:]
            try:
                yield lineno, body.decode("utf-8")
            except UnicodeDecodeError as err:
                raise StoryStreamError(
                    f"{shown} line {lineno}: not UTF-8 text (byte 0x{body[err.start]:02x} at column {err.start + 1} "
                    f"cannot be decoded: {err.reason}). Save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
                ) from None


def parse_line(line: str, where: str = "<line>") -> Optional[Dict[str, Any]]:
    """Parse one StoryStream line into a validated record (paths untouched), or ``None`` for an empty record.

    Args:
        line (str): the raw text of the line.
        where (str): ``"file:line"`` used in error messages.

    Returns:
        dict | None: ``{"id", "images", "captions", ...}`` with every other key kept as is, or ``None`` when the
        line is blank or the record has no frames (dropped like the official datapipe does).

    Raises:
        StoryStreamError: bad JSON (and not a Python literal either), not an object, ``images``/``captions`` not
            lists, of different lengths, or captions that are not strings.
    """
    text = line.strip()
    if not text:
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        try:  # build_story.py writes Python repr lines (docs/reference.md §5)
            rec = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise StoryStreamError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rec, dict):
        raise StoryStreamError(f"{where}: expected a JSON object, found {type(rec).__name__}")
    images = rec.get("images") or []
    captions = rec.get("captions") or []
    if not isinstance(images, list) or not isinstance(captions, list):
        raise StoryStreamError(f"{where}: 'images' and 'captions' must be lists")
    if not images and not captions:
        return None  # the official "drop empty" step
    if len(images) != len(captions):
        raise StoryStreamError(
            f"{where}: {len(images)} images but {len(captions)} captions (story id {rec.get('id')!r})"
        )
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise StoryStreamError(f"{where}: caption {i} is {type(c).__name__}, expected a string")
    for i, p in enumerate(images):
        if not isinstance(p, str):
            raise StoryStreamError(f"{where}: image {i} is {type(p).__name__}, expected a path string")
    attrs = rec.get("attributes")
    if attrs is not None and (not isinstance(attrs, list) or len(attrs) != len(images)):
        raise StoryStreamError(f"{where}: 'attributes' must be a list with one entry per frame")
    rec = dict(rec)
    rec["images"] = list(images)
    rec["captions"] = list(captions)
    return rec


def iter_jsonl(path: PathLike) -> Iterator[Dict[str, Any]]:
    """Yield validated records of a StoryStream jsonl file with image paths exactly as stored (relative).

    Raises:
        StoryStreamError: see :func:`parse_line`.
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    for lineno, line in iter_lines(path):
        rec = parse_line(line, where=f"{path}:{lineno}")
        if rec is not None:
            yield rec


def _default_image_dir(path: Path) -> Path:
    cand = path.parent / "images"
    return cand if cand.is_dir() else path.parent


def read_jsonl(path: PathLike, image_dir: Optional[PathLike] = None) -> Iterator[Dict[str, Any]]:
    """Read a StoryStream jsonl file, yielding records whose ``images`` are absolute paths.

    Args:
        path: the jsonl file.
        image_dir: folder the relative image paths are resolved against (``data/image/george_full`` for the
            official data). ``None``: ``<jsonl folder>/images`` if it exists (the StoryStream-mini layout), else
            the jsonl's folder. Absolute paths in the file are kept.

    Yields:
        dict: ``{"id", "images": [absolute str paths], "captions": [str], "orders"?, "attributes"?, ...}``.

    Raises:
        StoryStreamError: on a malformed line (message names the line), see :func:`parse_line`.
    """
    path = Path(path)
    root = Path(image_dir) if image_dir is not None else _default_image_dir(path)
    root = root.resolve()
    for rec in iter_jsonl(path):
        rec["images"] = [p if os.path.isabs(p) else str(root / p) for p in rec["images"]]
        yield rec


def write_jsonl(records: Iterable[Dict[str, Any]], path: PathLike) -> int:
    """Write records as one compact JSON object per line; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def load_image(path: Union[PathLike, Image.Image]) -> Image.Image:
    """Open an image as PIL RGB (a PIL image is converted and returned). The file is read fully and closed."""
    if isinstance(path, Image.Image):
        return path.convert("RGB")
    with Image.open(path) as im:
        return im.convert("RGB")


def chunk_stories(
    records: Iterable[Dict[str, Any]], chunk_len: int = 10, keep: Sequence[str] = (), keep_whole: Sequence[str] = ()
) -> List[Dict[str, Any]]:
    """The official chunker (``chunk_data.py``, docs/reference.md §5).

    Every story is cut into consecutive chunks of ``chunk_len`` frames; an incomplete trailing chunk is dropped
    (30 frames -> 3 chunks of 10; 25 frames -> 2 chunks). Each chunk is ``{"id": <index of the source story in
    ``records``>, "images", "captions"}``; ``orders`` (and every other key) is dropped, as officially.

    Args:
        records: story records (as from :func:`read_jsonl` / :func:`iter_jsonl`).
        chunk_len: frames per chunk (>= 1).
        keep: extra keys to carry, an extension for StoryStream-mini: a per-frame list key (e.g.
            ``"attributes"``) is sliced like the captions; ``"source_id"`` adds the source record's ``id``.
            Empty (the default) reproduces the official output exactly.
        keep_whole: story-level keys copied unchanged into every chunk of the story (e.g. StoryStream-mini's cast
            sheet ``"cast"`` and ``"looks"``).

    Returns:
        list[dict]
    """
    if not isinstance(chunk_len, int) or chunk_len < 1:
        raise ValueError(f"chunk_stories: chunk_len must be an int >= 1, found {chunk_len!r}")
    out = []
    for idx, rec in enumerate(records):
        images, captions = rec["images"], rec["captions"]
        n = min(len(images), len(captions))
        for start in range(0, n - chunk_len + 1, chunk_len):
            chunk = {
                "id": idx,
                "images": list(images[start : start + chunk_len]),
                "captions": list(captions[start : start + chunk_len]),
            }
            for key in keep:
                if key == "source_id":
                    chunk["source_id"] = rec.get("id")
                elif isinstance(rec.get(key), list) and len(rec[key]) == len(images):
                    chunk[key] = list(rec[key][start : start + chunk_len])
            for key in keep_whole:
                if key in rec:
                    chunk[key] = rec[key]
            out.append(chunk)
    return out


# ---------------------------------------------------------------------------------------------- folders
def find_jsonl(folder: PathLike) -> Path:
    """The story file of a StoryStream folder: the first of :data:`JSONL_NAMES` that exists, else its only ``*.jsonl``.

    Raises:
        FileNotFoundError: neither name exists and the folder holds zero or several ``*.jsonl`` files (the message
            lists them).
    """
    folder = Path(folder)
    for name in JSONL_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.jsonl"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"{folder}: expected chunks10.jsonl, stories.jsonl or a single *.jsonl, found {[f.name for f in found]}"
    )


def image_candidates(root: Optional[PathLike], item: PathLike) -> List[Path]:
    """Where the frame ``item`` of a record is looked for, in order: an absolute path as it is; a relative one under
    the image root (the jsonl's folder) and under its ``images/`` sub-folder (the StoryStream-mini layout); without
    a root, the path as given."""
    path = Path(item)
    if path.is_absolute() or root is None:
        return [path]
    root = Path(root)
    return [root / path, root / "images" / path]


def _json_line(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise StoryStreamError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None


def read_records(
    data: Optional[PathLike] = None,
    records: Optional[List[dict]] = None,
    image_root: Optional[PathLike] = None,
    *,
    what: str = "",
    hint: str = "StoryStream folder or .jsonl",
) -> Tuple[List[dict], Optional[Path]]:
    """The raw records and the image root: ``records`` as given, else every non-blank line of ``data`` (a folder's
    jsonl, see :func:`find_jsonl`, or a .jsonl file) with the image root defaulting to that file's folder.

    Args:
        data: a StoryStream folder or .jsonl file.
        records: records built in memory (win over ``data``).
        image_root: folder relative image paths are resolved against (see :func:`image_candidates`).
        what: prefix of the messages (e.g. ``"stage 0: "``).
        hint: what the caller expects, named in the message when nothing is given.

    Returns:
        (list of record dicts as stored, image root or None).

    Raises:
        ValueError: neither ``data`` nor ``records``.
        StoryStreamError: a line that is not JSON, not UTF-8 or longer than :data:`MAX_LINE_BYTES` (file and line
            named, see :func:`iter_lines`).
        FileNotFoundError: the jsonl is missing (see :func:`find_jsonl`).
    """
    root = Path(image_root) if image_root else None
    if records is None:
        if data is None:
            raise ValueError(f"{what}no training data: pass --data ({hint}) or records=[...].")
        path = Path(data)
        jsonl = find_jsonl(path) if path.is_dir() else path
        if not jsonl.is_file():
            raise FileNotFoundError(f"{what}training data not found: {jsonl}")
        records = [_json_line(line, f"{jsonl}:{n}") for n, line in iter_lines(jsonl) if line.strip()]
        root = root or jsonl.parent
    return records, root


def load_records(
    data: Optional[PathLike] = None,
    records: Optional[List[dict]] = None,
    image_root: Optional[PathLike] = None,
    max_records: int = 0,
    keep: Tuple[str, ...] = (),
) -> Tuple[List[dict], Optional[Path]]:
    """Story records ``{id, images: [paths or PIL images], captions: [...]}`` and the image root folder, as the
    training stages read them (:func:`read_records`).

    Records with fewer than :data:`MIN_FRAMES` frames or mismatched image/caption counts are skipped.

    Args:
        data, records, image_root: see :func:`read_records`.
        max_records: keep only the first N usable records (0 = all).
        keep: further keys copied from each record when present (e.g. ``("attributes",)`` for StoryStream-mini's
            per-frame attributes).

    Raises:
        ValueError: no usable record; see also :func:`read_records`.
        FileNotFoundError: see :func:`read_records`.
    """
    records, root = read_records(data, records, image_root)
    out = []
    for i, r in enumerate(records):
        images, captions = list(r.get("images", [])), list(r.get("captions", []))
        if len(images) < MIN_FRAMES or len(images) != len(captions):
            continue
        out.append({"id": r.get("id", i), "images": images, "captions": captions, **{k: r[k] for k in keep if k in r}})
    if max_records:
        out = out[: int(max_records)]
    if not out:
        raise ValueError("no usable story records (each needs >= 2 images and as many captions).")
    return out, root


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seedstory_core.data.storystream", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    ch = sub.add_parser("chunk", help="cut stories into fixed-length chunks (official chunk_data.py)")
    ch.add_argument("input", help="StoryStream jsonl")
    ch.add_argument("output", help="output jsonl")
    ch.add_argument("--len", dest="chunk_len", type=int, default=10)
    ch.add_argument("--keep", nargs="*", default=[], help="extra keys to carry (attributes, source_id)")
    args = parser.parse_args(argv)
    try:
        stories = list(iter_jsonl(args.input))
    except StoryStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chunks = chunk_stories(stories, args.chunk_len, keep=args.keep)
    write_jsonl(chunks, args.output)
    print(f"{len(stories)} stories -> {len(chunks)} chunks of {args.chunk_len} -> {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
