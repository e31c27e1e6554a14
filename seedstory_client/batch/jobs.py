"""seedstory-batch jobs: the JSONL job file, one :class:`Job` per line, and the job-level errors.

A line that cannot be used becomes a Job with ``invalid`` set (the batch records it ``invalid`` and goes on);
:func:`load_jobs` raises only for problems of the whole file (duplicate ids, ids that map to one folder name).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

# statuses in summary.json
OK, ERROR, INVALID, INTERRUPTED = "ok", "error", "invalid", "interrupted"


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
    invalid: Optional[str] = None  # set when the line itself is unusable


_JOB_KEYS = {"id", "image", "text", "frames", "seed", "captions", "overrides", "template"}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(job_id: str) -> str:
    """A file-system-safe version of a job id (used for OUT/<id>/, upload names and filename prefixes)."""
    s = _SAFE.sub("_", str(job_id)).strip("._") or "job"
    return s[:80]


def is_int(v) -> bool:
    """True for an int that is not a bool (JSON ``true`` is not a frame count)."""
    return isinstance(v, int) and not isinstance(v, bool)


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
    image = obj.get("image")
    if not isinstance(image, str) or not image:
        problems.append("'image' (path to the start image) is required")
    else:
        p = Path(image).expanduser()
        if not p.is_absolute():
            p = base_dir / p if (base_dir / p).exists() or not p.exists() else p.resolve()
        job.image = p
        if not p.is_file():
            problems.append(f"image {image!r} not found (looked at {p})")
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
    if problems:
        job.invalid = f"job {job.id} (line {line}): " + "; ".join(problems)
    return job


def load_jobs(path: Path) -> List[Job]:
    """Read a JSONL job file. Unparseable lines become invalid jobs; duplicate ids are an error (ValueError)."""
    path = Path(path)
    base = path.resolve().parent
    jobs: List[Job] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
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
    """The bytes of the job's start image. Raises LocalFileError naming the file (a job error, not a lost server)."""
    try:
        return Path(job.image).read_bytes()
    except OSError as e:
        raise LocalFileError(job.image, "read", e, "start image") from None
