"""seedstory-batch summary: OUT/summary.json (one record per job), read at start and rewritten after every job.

Files under OUT/ are written atomically (a temporary file, then a rename); a summary.json that cannot be parsed is
kept as ``summary.json.corrupt-<time>`` and a new one is started.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from .jobs import OK, SUMMARY_NAME, LocalFileError
from .progress import stderr_log


class SummaryError(RuntimeError):
    """OUT/summary.json exists but cannot be read (permissions, ...): the batch does not start."""


def make_dir(path: Path) -> None:
    """Create the folder ``path`` (and its parents). Raises LocalFileError naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalFileError(path, "create", e, "output folder") from None


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file + rename. Raises LocalFileError naming ``path``."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}_{threading.get_ident()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise LocalFileError(path, "write", e) from None


def _corrupt_backup_path(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    cand = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while cand.exists():
        cand = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    return cand


def load_summary(out_dir: Path, log: Optional[Callable[[str], None]] = None) -> dict:
    """OUT/summary.json as a dict with a ``jobs`` dict (empty when there is none yet).

    A file that is not a summary (not JSON, truncated, not an object, ``jobs`` not an object of records) is not
    dropped: it is renamed to ``summary.json.corrupt-<YYYYmmddTHHMMSS>`` and a warning naming the copy is logged;
    the batch then starts a new summary (so every job runs again). Raises SummaryError when the file exists but
    cannot be read (permissions, ...), or the corrupt file cannot be renamed.
    """
    log = log or stderr_log
    path = Path(out_dir) / SUMMARY_NAME
    if not path.exists():
        return {"jobs": {}}
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SummaryError(
            f"cannot read {path} ({type(e).__name__}: {e.strerror or e}); fix its permissions, or "
            "choose another output folder with -o"
        ) from None
    problem = None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        problem, data = f"not UTF-8 text ({e.reason} at byte {e.start})", None
    except json.JSONDecodeError as e:
        problem, data = f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", None
    if problem is None:
        if not isinstance(data, dict):
            problem = f"a JSON {type(data).__name__}, not an object"
        elif not isinstance(data.get("jobs", {}), dict):
            problem = f"its 'jobs' is a {type(data['jobs']).__name__}, not an object"
        elif any(not isinstance(r, dict) for r in data.get("jobs", {}).values()):
            problem = "some job records are not objects"
    if problem is None:
        data.setdefault("jobs", {})
        return data
    backup = _corrupt_backup_path(path)
    try:
        os.replace(path, backup)
    except OSError as e:
        raise SummaryError(
            f"{path} is {problem} and could not be kept as {backup} ({e.strerror or e}); move it "
            "away yourself and run again"
        ) from None
    log(
        f"[batch] warning: {path} is {problem}; kept it as {backup} and started a new summary "
        "(jobs it listed as done will run again)"
    )
    return {"jobs": {}, "corrupt_backup": str(backup)}


def is_done(record: Optional[dict]) -> bool:
    """Finished OK and every listed output still exists (resume skips it)."""
    if not record or record.get("status") != OK or not record.get("outputs"):
        return False
    return all(Path(p).is_file() for p in record["outputs"])


class Summary:
    """OUT/summary.json, rewritten atomically after every job (thread-safe).

    A write that fails (disk full, permissions) is logged once per failure with the job id and kept in memory
    (``write_error``); the next write retries."""

    def __init__(
        self,
        out_dir: Path,
        jobs_file: Optional[str],
        servers: Sequence[str],
        log: Optional[Callable[[str], None]] = None,
    ):
        self.path = Path(out_dir) / SUMMARY_NAME
        self.lock = threading.Lock()
        self.log = log or stderr_log
        self.write_error: Optional[str] = None
        self.data = load_summary(out_dir, self.log)
        self.data.pop("counts", None)
        self.data.pop("finished", None)
        self.data.pop("stopped", None)
        self.data.update(jobs_file=jobs_file, servers=list(servers), started=time.strftime("%Y-%m-%dT%H:%M:%S"))

    def record(self, rec: dict, timeout: float = -1) -> bool:
        """Store ``rec`` (keyed by its id) and rewrite the file. ``timeout`` (s) bounds the wait for the lock
        (-1: no bound); returns False when it was not stored."""
        if not self.lock.acquire(timeout=timeout):
            return False
        try:
            self.data["jobs"][rec["id"]] = rec
            self._write(rec["id"])
        finally:
            self.lock.release()
        return True

    def finish(self, order: Sequence[str], stopped: Optional[str] = None, timeout: float = -1) -> None:
        if not self.lock.acquire(timeout=timeout):
            return
        try:
            jobs = self.data["jobs"]
            counts: Dict[str, int] = {}
            for jid in order:
                st = (jobs.get(jid) or {}).get("status", "not run")
                counts[st] = counts.get(st, 0) + 1
            self.data["counts"] = counts
            if stopped:
                self.data["stopped"] = stopped
            self.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self._write(None)
        finally:
            self.lock.release()

    def _write(self, job_id: Optional[str]) -> None:
        try:
            make_dir(self.path.parent)
            atomic_write(self.path, json.dumps(self.data, indent=2, default=str).encode("utf-8"))
            self.write_error = None
        except LocalFileError as e:
            self.write_error = str(e)
            what = f"job {job_id}'s record" if job_id else "the final counts"
            self.log(f"[batch] ERROR: {e}; {what} is kept in memory and written with the next update")
