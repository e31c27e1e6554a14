"""seedstory-batch jobs: the JSONL job file, one :class:`Job` per line, and the job-level errors.

A line that cannot be used becomes a Job with ``invalid`` set (the batch records it ``invalid`` and goes on):
unknown or ill-typed fields, a start image that is not a picture (:mod:`.image`), a job id that cannot name its
folder OUT/<id>/ (:func:`id_problem`), a ``layout`` or ``pdf`` of the wrong kind, a ``cast`` that breaks the cast
sheet's rules (:func:`cast_problems`). :func:`load_jobs` raises only for problems of the whole file (not UTF-8 text,
duplicate ids, ids that map to one folder name).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .image import NotAPicture, encode_png, picture_problem

# statuses in summary.json
OK, ERROR, INVALID, INTERRUPTED = "ok", "error", "invalid", "interrupted"

# the client's own file in OUT/ (with its "<name>.corrupt-<time>" and "<name>.tmp<pid>_<thread>" companions): no job
# folder may take its name
SUMMARY_NAME = "summary.json"
# Save Story's page layouts (job field "layout"; the node's "layout" input, issue 27)
LAYOUTS = ("storybook", "comic", "strip")
# the cast sheet's rules (job field "cast"; seedstory_core.cast MAX_CAST and MAX_NAME_CHARS, which this light client
# cannot import: tests/server/test_batch_cast.py keeps them equal)
MAX_CAST = 5
MAX_NAME_CHARS = 40
CAST_NAME_FORBIDDEN = ":<>\n\r\t"
# names Windows reserves for devices, with or without an extension (CON, CON.txt, ...): no file or folder there
WINDOWS_DEVICE_NAMES = frozenset(["CON", "PRN", "AUX", "NUL"] + [f"{p}{i}" for p in ("COM", "LPT") for i in range(10)])


class JobInvalid(ValueError):
    """The job cannot be queued as given (bad JSON fields, an override naming a missing input, ...)."""


class LocalFileError(RuntimeError):
    """A local file (the start image, an output under OUT/) could not be read or written. A job error.

    Attributes: ``path`` (Path), ``action`` ("read" or "write"), ``cause`` (the OSError).
    """

    def __init__(self, path: Path, action: str, cause: OSError, what: str = "file"):
        self.path, self.action, self.cause = Path(path), action, cause
        reason = cause.strerror or str(cause) or type(cause).__name__
        super().__init__(f"cannot {action} the {what} {self.path}: {reason} ({type(cause).__name__})")


@dataclasses.dataclass
class CastMember:
    """One entry of a job's ``cast``: the character's ``name`` and the path of its reference picture."""

    name: str
    image: Path


@dataclasses.dataclass
class Job:
    """One line of the job file (see the JSONL fields in ``seedstory-batch --help``); ``line`` is its 1-based line
    number, ``invalid`` the reason it cannot be queued (None when it can)."""

    id: str
    line: int
    image: Optional[Path] = None
    text: Optional[str] = None
    frames: Optional[int] = None
    seed: Optional[int] = None
    captions: Optional[List[str]] = None
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    template: Optional[str] = None  # per-job template (optional field "template")
    layout: Optional[str] = None  # Save Story's "layout" input (one of LAYOUTS)
    pdf: Optional[bool] = None  # Save Story's "pdf" input
    cast: Optional[List[CastMember]] = None  # the cast sheet (Story Cast node wired to Generate Story)
    invalid: Optional[str] = None  # set when the line itself is unusable


_JOB_KEYS = {"id", "image", "text", "frames", "seed", "captions", "overrides", "template", "layout", "pdf", "cast"}
_CAST_KEYS = {"name", "image"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(job_id: str) -> str:
    """A file-system-safe version of a job id (used for OUT/<id>/, upload names and filename prefixes)."""
    s = _SAFE.sub("_", str(job_id)).strip("._") or "job"
    return s[:80]


def id_problem(job_id: str) -> Optional[str]:
    """Why ``job_id`` cannot name the job's folder OUT/<id>/ (None when it can): only dots (``.``, ``..``), a name
    Windows reserves for a device (CON, NUL, COM1, LPT1, ... also with an extension), or the name of the client's
    own file OUT/summary.json (or its ``.corrupt-*`` / ``.tmp*`` companions). Compared without case, as on Windows
    and macOS file systems."""
    raw = str(job_id).strip()
    if raw and set(raw) <= {"."}:
        return f"the id {raw!r} names no folder ('.' and '..' are the folder itself and its parent)"
    folder = safe_name(job_id)
    stem = folder.split(".", 1)[0].rstrip(" ").upper()
    if stem in WINDOWS_DEVICE_NAMES:
        return (
            f"the id {job_id!r} is a device name that Windows reserves (CON, PRN, AUX, NUL, COM0-9, LPT0-9, also "
            "with an extension): no folder can have that name there"
        )
    low = folder.lower()
    if low == SUMMARY_NAME or low.startswith(SUMMARY_NAME + "."):
        return (
            f"the id {job_id!r} would name its folder OUT/{folder}, the name of seedstory-batch's own file "
            "summary.json (and its copies summary.json.corrupt-*, summary.json.tmp*)"
        )
    return None


def is_int(v) -> bool:
    """True for an int that is not a bool (JSON ``true`` is not a frame count)."""
    return isinstance(v, int) and not isinstance(v, bool)


def local_path(value: str, base_dir: Path) -> Path:
    """A picture path of a job: ``~`` expanded; a relative path is taken in the job file's folder ``base_dir`` (or,
    when it is not there but exists from the current folder, from there)."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = base_dir / p if (base_dir / p).exists() or not p.exists() else p.resolve()
    return p


def cast_problems(value: Any, base_dir: Path) -> Tuple[List[CastMember], List[str]]:
    """The job field ``cast``: ``[{"name": "Max", "image": "max.png"}, ...]``, 1..:data:`MAX_CAST` entries with
    distinct one-line names of at most :data:`MAX_NAME_CHARS` characters without ``:``, ``<`` or ``>``, each picture a
    file Pillow reads as a picture (:func:`.image.picture_problem`; paths as for the start image).

    Returns:
        (the entries, the problems: each names the field, e.g. ``'cast'[2].name ...``; empty when the cast is good).
    """
    if not isinstance(value, list) or not value:
        return [], [
            '\'cast\' must be a non-empty list of {"name": ..., "image": ...} objects (one per character), '
            f"got {value!r}"[:300]
        ]
    if len(value) > MAX_CAST:
        return [], [f"'cast' holds at most {MAX_CAST} characters, got {len(value)}; leave some out"]
    members, problems = [], []
    for k, entry in enumerate(value, start=1):
        where = f"'cast'[{k}]"
        if not isinstance(entry, dict):
            problems.append(f'{where} must be an object {{"name": ..., "image": ...}}, got {entry!r}'[:300])
            continue
        unknown = sorted(set(entry) - _CAST_KEYS)
        if unknown:
            problems.append(f"{where} has unknown field(s) {unknown} (known: ['image', 'name'])")
        name, image = entry.get("name"), entry.get("image")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"{where}.name must be the character's name (a non-empty string), got {name!r}")
            name = None
        else:
            name = name.strip()
            if len(name) > MAX_NAME_CHARS or any(c in name for c in CAST_NAME_FORBIDDEN):
                problems.append(
                    f"{where}.name {name[:60]!r} must be at most {MAX_NAME_CHARS} characters on one line without "
                    "':', '<' or '>'; shorten or rename it"
                )
        if not isinstance(image, str) or not image:
            problems.append(f"{where}.image (path to the character's picture) is required")
            continue
        path = local_path(image, base_dir)
        if not path.is_file():
            problems.append(f"{where}.image {image!r} not found (looked at {path})")
        elif (why := picture_problem(path)) is not None:
            problems.append(f"{where}.{why}")
        if name is not None:
            members.append(CastMember(name, path))
    names = [m.name for m in members]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        problems.append(f"'cast' names must be distinct; {repeated} appear more than once: one picture per character")
    return members, problems


def parse_job(obj: Any, line: int, base_dir: Path) -> Job:
    """One JSONL record -> Job (``invalid`` set instead of raising, so the batch goes on)."""
    if not isinstance(obj, dict):
        return Job(id=str(line), line=line, invalid=f"line {line}: expected a JSON object, got {type(obj).__name__}")
    job = Job(id=str(obj.get("id", line)), line=line)
    problems = []
    unknown = sorted(set(obj) - _JOB_KEYS)
    if unknown:
        problems.append(f"unknown field(s) {unknown} (known: {sorted(_JOB_KEYS)})")
    if ("id" in obj and not isinstance(obj["id"], (str, int))) or str(job.id).strip() == "":
        problems.append(f"'id' must be a non-empty string or integer, got {obj.get('id')!r}")
    elif (why := id_problem(job.id)) is not None:
        problems.append(f"{why}; choose another id")
    image = obj.get("image")
    if not isinstance(image, str) or not image:
        problems.append("'image' (path to the start image) is required")
    else:
        p = local_path(image, base_dir)
        job.image = p
        if not p.is_file():
            problems.append(f"image {image!r} not found (looked at {p})")
        elif (why := picture_problem(p)) is not None:
            problems.append(why)
    text = obj.get("text")
    if not isinstance(text, str):
        problems.append("'text' (the opening sentence) is required and must be a string")
    else:
        job.text = text  # an empty/blank text is left for the server to refuse (node_errors)
    if "frames" in obj:
        if not is_int(obj["frames"]) or obj["frames"] < 1:
            problems.append(f"'frames' must be an integer >= 1, got {obj['frames']!r}")
        else:
            job.frames = obj["frames"]
    if "seed" in obj:
        if not is_int(obj["seed"]) or obj["seed"] < 0:
            problems.append(f"'seed' must be an integer >= 0, got {obj['seed']!r}")
        else:
            job.seed = obj["seed"]
    if "captions" in obj and obj["captions"] is not None:
        caps = obj["captions"]
        if not isinstance(caps, list) or not caps or not all(isinstance(c, str) and c.strip() for c in caps):
            problems.append("'captions' must be a non-empty list of non-empty strings (one per frame)")
        elif any("\n" in c for c in caps):
            problems.append("a caption may not contain a newline (captions are sent one per line)")
        else:
            job.captions = [c.strip() for c in caps]
            if job.frames is None:
                job.frames = len(job.captions)
            elif job.frames > len(job.captions):
                problems.append(
                    f"'frames'={job.frames} but only {len(job.captions)} caption(s): "
                    "visualization needs one caption per frame"
                )
    if "overrides" in obj:
        if not isinstance(obj["overrides"], dict):
            problems.append("'overrides' must be an object {\"<node id or title>.<input>\": value}")
        else:
            job.overrides = dict(obj["overrides"])
    if "template" in obj:
        if not isinstance(obj["template"], str):
            problems.append("'template' must be a path")
        else:
            job.template = obj["template"]
    if "layout" in obj and obj["layout"] is not None:
        if obj["layout"] not in LAYOUTS:
            problems.append(f"'layout' must be one of {', '.join(map(repr, LAYOUTS))}, got {obj['layout']!r}")
        else:
            job.layout = obj["layout"]
    if "pdf" in obj and obj["pdf"] is not None:
        if not isinstance(obj["pdf"], bool):
            problems.append(f"'pdf' must be true or false, got {obj['pdf']!r}")
        else:
            job.pdf = obj["pdf"]
    if "cast" in obj and obj["cast"] is not None:
        members, why = cast_problems(obj["cast"], base_dir)
        problems += why
        job.cast = members if not why else None
    if problems:
        job.invalid = f"job {job.id} (line {line}): " + "; ".join(problems)
    return job


def read_lines(path: Path) -> List[str]:
    """The lines of a JSONL file (split at newlines only, a UTF-8 byte-order mark dropped, ``\\r`` stripped).

    Raises ValueError naming the file (and the line) when it is not UTF-8 text: a NUL byte (a binary file) or bytes
    that are not UTF-8; OSError when it cannot be read."""
    data = Path(path).read_bytes()
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ValueError(
            f"{path} is not a text file (a NUL byte at line {line}, byte {nul}): a jobs file is JSON Lines, UTF-8 "
            "text with one job object per line"
        )
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{path} line {n} is not UTF-8 text ({e.reason} at byte {e.start} of the line): a jobs file is "
                "JSON Lines, UTF-8 text with one job object per line; save it as UTF-8"
            ) from None
    return lines


def load_jobs(path: Path) -> List[Job]:
    """Read a JSONL job file. Unparseable lines become invalid jobs; a file that is not UTF-8 text, duplicate ids
    and ids that map to one folder are errors of the whole file (ValueError naming the file)."""
    path = Path(path)
    base = path.resolve().parent
    jobs: List[Job] = []
    for n, raw in enumerate(read_lines(path), start=1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        try:
            obj = json.loads(s)
        except json.JSONDecodeError as e:
            jobs.append(Job(id=str(n), line=n, invalid=f"line {n}: not valid JSON: {e}"))
            continue
        jobs.append(parse_job(obj, n, base))
    seen: Dict[str, int] = {}
    for j in jobs:
        if j.id in seen:
            raise ValueError(f"{path}: duplicate job id {j.id!r} (lines {seen[j.id]} and {j.line})")
        seen[j.id] = j.line
    safe_seen: Dict[str, str] = {}
    for j in jobs:
        s = safe_name(j.id)
        if s in safe_seen and safe_seen[s] != j.id:
            raise ValueError(f"{path}: job ids {safe_seen[s]!r} and {j.id!r} map to the same folder name {s!r}")
        safe_seen[s] = j.id
    return jobs


def read_start_image(job: Job) -> bytes:
    """The job's start image as PNG bytes (:func:`.image.encode_png`: decoded and re-encoded, so only its pixels are
    uploaded). Raises LocalFileError naming the file when it cannot be read (a job error, not a lost server), and
    JobInvalid when it is not a picture (any more)."""
    try:
        data = Path(job.image).read_bytes()
    except OSError as e:
        raise LocalFileError(job.image, "read", e, "start image") from None
    try:
        return encode_png(data, Path(job.image))
    except NotAPicture as e:
        raise JobInvalid(f"job {job.id} (line {job.line}): {e}") from None


def read_cast_images(job: Job) -> List[bytes]:
    """The pictures of the job's ``cast`` as PNG bytes, in order (:func:`.image.encode_png`, as the start image);
    empty without a cast. Raises LocalFileError naming the picture when one cannot be read, and JobInvalid when one
    is not a picture (any more)."""
    out = []
    for k, member in enumerate(job.cast or [], start=1):
        try:
            data = Path(member.image).read_bytes()
        except OSError as e:
            raise LocalFileError(member.image, "read", e, f"cast picture {k} ({member.name})") from None
        try:
            out.append(encode_png(data, Path(member.image)))
        except NotAPicture as e:
            raise JobInvalid(f"job {job.id} (line {job.line}): 'cast'[{k}].{e}") from None
    return out
