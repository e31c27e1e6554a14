"""seedstory-batch: run many SEED-Story jobs through one or more ComfyUI servers (HTTP API + websocket).

Usage::

    seedstory-batch jobs.jsonl -o OUT [--server URL ...] [--template FILE] [--force] ...
    python -m seedstory_client.batch --help

jobs.jsonl has one JSON object per line (blank lines and lines starting with '#' are ignored)::

    {"id": "boat", "image": "start.png", "text": "A little red boat sets out.", "frames": 3, "seed": 7}
    {"image": "start.png", "text": "George woke up.", "captions": ["He ate.", "He played."], "seed": 1}
    {"image": "start.png", "text": "Hi.", "overrides": {"3.diffusion_steps": 4, "SeedStory Save Story.title": "T"}}

For every job: the start image is uploaded (POST /upload/image, a per-job name, overwrite), the API-format
template is filled (LoadImage.image, SeedStoryGenerateStory.opening_text/story_steps/seed/captions/mode,
SeedStorySaveStory.filename_prefix, then the overrides), the prompt is queued (POST /prompt), followed over the
websocket (a tqdm bar over frames x diffusion steps), and its outputs (/history -> /view: the frames, the texts
and the storybook's index.html + story.json) are downloaded into OUT/<job id>/. OUT/summary.json is rewritten
after every job. All HTTP and websocket traffic goes through :class:`seedstory_client.client.ComfyClient` (one per
server); besides that client's ``requests`` and ``websocket-client`` it needs only ``tqdm``.

Faults (each keeps every job in summary.json):
  * Ctrl-C: the first one interrupts the running prompt(s) on the server(s) (``POST /queue {"delete": [id]}``
    then ``POST /interrupt {"prompt_id": id}``), records them ``interrupted``, writes the summary and exits 130;
    a second Ctrl-C quits at once (still recording the running jobs as ``interrupted``).
  * Connection errors (refused, reset, timeouts, a dropped websocket) are retried with backoff; a server that
    stays unreachable hands its job to another server or, when none is left, the rest are ``not run``.
  * An HTTP error answer (4xx/5xx) is a job error with its status and body (``http_status``, ``http_body``); a
    local file that cannot be read or written is a job error naming the file. Neither retires the server.
  * A summary.json that cannot be parsed is kept as ``summary.json.corrupt-<time>`` with a warning.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import queue
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .client import ComfyClient, is_connection_error, read_message
from .errors import (
    ExecutionFailed,
    HTTPFailure,
    PromptRefused,
    ServerGone,
    describe_execution_error,
    describe_node_errors,
    node_sort_key,
)

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TEMPLATE_DIR = PACKAGE_ROOT / "workflows" / "api"
DEFAULT_TEMPLATE = "seedstory_tiny_story.json"
CAPTIONS_TEMPLATE = "seedstory_visualize_captions.json"
DEFAULT_SERVER = "http://127.0.0.1:8188"
SUMMARY_NAME = "summary.json"

GENERATE_CLASS = "SeedStoryGenerateStory"
SAVE_CLASS = "SeedStorySaveStory"
LOAD_IMAGE_CLASS = "LoadImage"

# statuses in summary.json
OK, ERROR, INVALID, INTERRUPTED = "ok", "error", "invalid", "interrupted"

# exit codes
EXIT_OK, EXIT_JOBS_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# after a first Ctrl-C: how long to wait for the server to confirm that it stopped the prompt
INTERRUPT_GRACE_S = 20.0


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


class SummaryError(RuntimeError):
    """OUT/summary.json exists but cannot be read (permissions, ...): the batch does not start."""


# ------------------------------------------------------------------------------------------------ jobs
@dataclasses.dataclass
class Job:
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


def _is_int(v) -> bool:
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
        if not _is_int(obj["frames"]) or obj["frames"] < 1:
            problems.append(f"'frames' must be an integer >= 1, got {obj['frames']!r}")
        else:
            job.frames = obj["frames"]
    if "seed" in obj:
        if not _is_int(obj["seed"]) or obj["seed"] < 0:
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


# ------------------------------------------------------------------------------------------------ templates
def resolve_template(name: Optional[str], captions: bool = False) -> Path:
    """A template path: explicit file, a name in workflows/api/, or the default for the mode."""
    if not name:
        name = CAPTIONS_TEMPLATE if captions else DEFAULT_TEMPLATE
    p = Path(name).expanduser()
    if p.is_file():
        return p
    # the pack's own templates (editable install / ComfyUI custom_nodes checkout), then ./workflows/api
    for folder in (DEFAULT_TEMPLATE_DIR, Path.cwd() / "workflows" / "api"):
        for cand in (folder / name, folder / f"{name}.json"):
            if cand.is_file():
                return cand
    raise FileNotFoundError(f"template {name!r} not found (neither a file nor in {DEFAULT_TEMPLATE_DIR})")


def load_template(path: Path) -> dict:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(v, dict) and "class_type" in v for v in data.values())
    ):
        raise ValueError(
            f"{path} is not an API-format workflow ({{id: {{class_type, inputs}}}}); "
            "export it with 'Export (API)' in ComfyUI"
        )
    return data


def nodes_of(prompt: dict, class_type: str) -> List[str]:
    return sorted((k for k, v in prompt.items() if v.get("class_type") == class_type), key=node_sort_key)


def resolve_node(prompt: dict, ref: str) -> str:
    """Node id for ``ref`` (an id, else a unique ``_meta.title``); JobInvalid otherwise."""
    if ref in prompt:
        return ref
    hits = [k for k, v in prompt.items() if (v.get("_meta") or {}).get("title") == ref]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise JobInvalid(f"node title {ref!r} is ambiguous (nodes {sorted(hits, key=node_sort_key)}); use the node id")
    known = ", ".join(
        f"{k} ({(v.get('_meta') or {}).get('title') or v['class_type']})"
        for k, v in sorted(prompt.items(), key=lambda kv: node_sort_key(kv[0]))
    )
    raise JobInvalid(f"no node {ref!r} in the template (nodes: {known})")


def allowed_inputs(node: dict, object_info: Optional[dict] = None) -> set:
    """Input names a node accepts: those in the template, plus required/optional ones from /object_info."""
    names = set((node.get("inputs") or {}).keys())
    info = (object_info or {}).get(node.get("class_type"))
    if info:
        for section in ("required", "optional"):
            names.update((info.get("input") or {}).get(section, {}).keys())
    return names


def apply_overrides(prompt: dict, overrides: Dict[str, Any], object_info: Optional[dict] = None) -> List[str]:
    """Set ``"<node id or title>.<input>": value`` pairs in ``prompt`` (in place). Every key is checked first;
    JobInvalid lists all bad ones. Returns the applied keys as ``id.input``."""
    problems, plan = [], []
    for key, value in overrides.items():
        if not isinstance(key, str) or "." not in key:
            problems.append(f"override {key!r} must look like '<node id or title>.<input name>'")
            continue
        ref, name = key.rsplit(".", 1)
        try:
            nid = resolve_node(prompt, ref)
        except JobInvalid as e:
            problems.append(f"override {key!r}: {e}")
            continue
        node = prompt[nid]
        ok = allowed_inputs(node, object_info)
        if name not in ok:
            problems.append(
                f"override {key!r}: node {nid} ({node['class_type']}) has no input {name!r} "
                f"(inputs: {', '.join(sorted(ok))})"
            )
            continue
        plan.append((nid, name, value))
    if problems:
        raise JobInvalid("; ".join(problems))
    for nid, name, value in plan:
        prompt[nid].setdefault("inputs", {})[name] = value
    return [f"{nid}.{name}" for nid, name, _ in plan]


def job_prefix(job: Job) -> str:
    return f"seedstory_batch/{safe_name(job.id)}/story"


def upload_name(job: Job, data: bytes) -> str:
    ext = (job.image.suffix.lower() if job.image else "") or ".png"
    return f"seedstory_batch_{safe_name(job.id)}_{hashlib.sha256(data).hexdigest()[:10]}{ext}"


def build_prompt(
    template: dict, job: Job, image_name: Optional[str] = None, object_info: Optional[dict] = None
) -> dict:
    """Fill a copy of the API-format ``template`` for ``job``. Raises JobInvalid."""
    if job.invalid:
        raise JobInvalid(job.invalid)
    prompt = copy.deepcopy(template)
    loads = nodes_of(prompt, LOAD_IMAGE_CLASS)
    gens = nodes_of(prompt, GENERATE_CLASS)
    saves = nodes_of(prompt, SAVE_CLASS)
    if not loads:
        raise JobInvalid(f"the template has no {LOAD_IMAGE_CLASS} node for the start image")
    if not gens:
        raise JobInvalid(f"the template has no {GENERATE_CLASS} node")
    for nid in loads:
        prompt[nid]["inputs"]["image"] = image_name or (job.image.name if job.image else "")
    for nid in gens:
        inp = prompt[nid]["inputs"]
        inp["opening_text"] = job.text
        if job.frames is not None:
            inp["story_steps"] = job.frames
        if job.seed is not None:
            inp["seed"] = job.seed
        if job.captions is not None:
            inp["captions"] = "\n".join(job.captions)
            inp["mode"] = "visualization"
    for nid in saves:
        prompt[nid]["inputs"]["filename_prefix"] = job_prefix(job) if len(saves) == 1 else f"{job_prefix(job)}_{nid}"
    apply_overrides(prompt, job.overrides, object_info)
    return prompt


def total_progress(prompt: dict) -> int:
    """Expected progress units of the Generate Story nodes: frames x diffusion steps (0 when unknown)."""
    total = 0
    for nid in nodes_of(prompt, GENERATE_CLASS):
        inp = prompt[nid]["inputs"]
        s, d = inp.get("story_steps"), inp.get("diffusion_steps")
        if _is_int(s) and _is_int(d):
            total += s * d
    return total


# ------------------------------------------------------------------------------------------------ running
@dataclasses.dataclass
class RetryPolicy:
    retries: int = 5  # reconnect attempts per job after a connection loss
    backoff: float = 1.0  # first wait (s); doubles each attempt
    max_backoff: float = 30.0
    sleep: Optional[Callable[[float], Any]] = None  # None: wait on the runner's stop event (Ctrl-C ends it)

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * (2**attempt))


@dataclasses.dataclass
class Options:
    out_dir: Path
    template: Optional[str] = None
    force: bool = False
    timeout: float = 3600.0  # per job, seconds of execution
    poll: float = 5.0  # seconds of websocket silence before /history is polled
    progress: bool = True
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    interrupt_grace: float = INTERRUPT_GRACE_S  # after Ctrl-C: seconds to wait for the server to stop the prompt


def read_start_image(job: Job) -> bytes:
    """The bytes of the job's start image. Raises LocalFileError naming the file (a job error, not a lost server)."""
    try:
        return Path(job.image).read_bytes()
    except OSError as e:
        raise LocalFileError(job.image, "read", e, "start image") from None


class JobRunner:
    """Runs jobs on one server: upload, queue, follow, download; retries on connection loss.

    ``current`` is the record of the job being run (``None`` between jobs): run_batch reads it when a second
    Ctrl-C aborts the batch.
    """

    def __init__(
        self,
        transport: ComfyClient,
        opts: Options,
        position: int = 0,
        stop: Optional[threading.Event] = None,
        log: Callable[[str], None] = None,
    ):
        self.t = transport
        self.opts = opts
        self.position = position
        self.stop = stop or threading.Event()
        self.log = log or _log
        self._object_info: Optional[dict] = None
        self.current: Optional[dict] = None

    # ---- helpers ------------------------------------------------------------------------------------------
    def object_info(self) -> Optional[dict]:
        if self._object_info is None:
            try:
                self._object_info = self.t.object_info()
            except Exception as e:  # noqa: BLE001
                if is_connection_error(e):
                    raise
                self._object_info = {}  # an old server without /object_info: validate against the template
        return self._object_info

    def _bar(self, job: Job, total: int):
        if not self.opts.progress:
            return None
        from tqdm import tqdm

        return tqdm(
            total=total or None,
            desc=f"job {job.id}",
            unit="step",
            position=self.position,
            leave=False,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def _wait(self, seconds: float) -> None:
        pol = self.opts.retry
        if pol.sleep is not None:
            pol.sleep(seconds)
        else:
            self.stop.wait(seconds)

    # ---- one job --------------------------------------------------------------------------------------------
    def run(self, job: Job) -> dict:
        """Run ``job``; returns its summary record (never raises for job-level problems)."""
        t0 = time.monotonic()
        rec: Dict[str, Any] = {
            "id": job.id,
            "line": job.line,
            "server": self.t.base_url,
            "status": None,
            "error": None,
            "node_errors": None,
            "prompt_id": None,
            "outputs": [],
            "storybook": None,
            "local_storybook": None,
            "texts": [],
            "attempts": 0,
        }
        self.current = rec
        try:
            if job.invalid:
                raise JobInvalid(job.invalid)
            template_path = resolve_template(job.template or self.opts.template, captions=job.captions is not None)
            rec["template"] = str(template_path)
            template = load_template(template_path)
            image_bytes = read_start_image(job)
            self._run_with_retries(job, template, rec, image_bytes)
            rec["status"] = OK
        except JobInvalid as e:
            rec.update(status=INVALID, error=str(e))
        except PromptRefused as e:
            rec.update(
                status=INVALID if e.status_code < 500 else ERROR,
                error=str(e),
                node_errors=e.node_errors,
                http_status=e.status_code,
            )
            rec["node_error_lines"] = describe_node_errors(e.node_errors)
        except ExecutionFailed as e:
            rec.update(status=e.status, error=str(e), execution_error=e.details or None)
        except ServerGone as e:
            rec.update(status=ERROR, error=str(e), server_gone=True)
        except HTTPFailure as e:
            rec.update(status=ERROR, error=str(e), http_status=e.status_code, http_body=e.body)
        except LocalFileError as e:
            rec.update(status=ERROR, error=str(e), file=str(e.path))
        except (FileNotFoundError, ValueError) as e:  # template missing or not API format
            rec.update(status=INVALID, error=str(e))
        except Exception as e:  # noqa: BLE001 - one broken job must not stop the batch
            rec.update(status=ERROR, error=f"{type(e).__name__}: {e}")
        finally:
            self.current = None
        rec["seconds"] = round(time.monotonic() - t0, 3)
        return rec

    def _run_with_retries(self, job: Job, template: dict, rec: dict, image_bytes: bytes) -> None:
        pol = self.opts.retry
        last: Optional[BaseException] = None
        prompt: Optional[dict] = None
        name = upload_name(job, image_bytes)
        for attempt in range(pol.retries + 1):
            rec["attempts"] = attempt + 1
            if self.stop.is_set():
                where = (
                    f"; prompt {rec['prompt_id']} may still be queued on {self.t.base_url}" if rec["prompt_id"] else ""
                )
                raise ExecutionFailed(INTERRUPTED, f"stopped (Ctrl-C) before the job finished{where}")
            try:
                ws = self.t.connect_ws()
                try:
                    if prompt is None:
                        prompt = build_prompt(template, job, name, self.object_info())
                        rec["total_steps"] = total_progress(prompt)
                    entry = None
                    if rec["prompt_id"]:
                        # reconnected: is it still queued/running, or did it finish, before re-queueing? (the
                        # queue is asked first: a prompt only moves from the queue to the history, never back)
                        if not self._in_queue(rec["prompt_id"]):
                            entry = self.t.history_entry(rec["prompt_id"])
                            if entry is not None and (entry.get("status") or {}).get("completed") is None:
                                entry = None
                            if entry is not None:
                                entry = self._checked(entry, None)
                            else:
                                self.log(
                                    f"[batch] job {job.id}: prompt {rec['prompt_id']} is unknown to "
                                    f"{self.t.base_url} (server restarted?); queueing it again"
                                )
                                rec["prompt_id"] = None
                    if rec["prompt_id"] is None:
                        up = self.t.upload_image(image_bytes, name)
                        uploaded = up.get("name") or name
                        if up.get("subfolder"):
                            uploaded = f"{up['subfolder']}/{uploaded}"
                        for nid in nodes_of(prompt, LOAD_IMAGE_CLASS):
                            prompt[nid]["inputs"]["image"] = uploaded
                        queued = self.t.queue_prompt(prompt)
                        rec["prompt_id"] = queued["prompt_id"]
                        if queued.get("node_errors"):
                            rec["node_errors"] = queued["node_errors"]
                            rec["node_error_lines"] = describe_node_errors(queued["node_errors"], prompt)
                    if entry is None:
                        entry = self._follow(ws, job, rec["prompt_id"], rec.get("total_steps") or 0)
                finally:
                    try:
                        ws.close()
                    except Exception:  # noqa: BLE001
                        pass
                self._finish(job, entry, rec, prompt)
                return
            except Exception as e:  # noqa: BLE001 - only connection errors are retried; the rest are job errors
                if not is_connection_error(e):
                    raise
                last = e
                if attempt >= pol.retries:
                    break
                wait = pol.delay(attempt)
                self.log(
                    f"[batch] job {job.id}: connection to {self.t.base_url} lost ({type(e).__name__}: {e}); "
                    f"retry {attempt + 1}/{pol.retries} in {wait:.1f} s"
                )
                self._wait(wait)
        raise ServerGone(
            f"server {self.t.base_url} unreachable after {pol.retries + 1} attempt(s): {type(last).__name__}: {last}"
        )

    def _in_queue(self, prompt_id: str) -> bool:
        return self._queue_state(prompt_id) is not None

    def _queue_state(self, prompt_id: str) -> Optional[str]:
        """'running', 'pending' or None (not in the server's queue)."""
        q = self.t.queue_state()
        for key, state in (("queue_running", "running"), ("queue_pending", "pending")):
            if any(len(item) > 1 and item[1] == prompt_id for item in q.get(key, [])):
                return state
        return None

    def _send_interrupt(self, prompt_id: str) -> None:
        try:
            self.t.cancel(prompt_id)
        except Exception as e:  # noqa: BLE001 - best effort; the confirmation is checked by polling
            self.log(f"[batch] could not interrupt prompt {prompt_id} on {self.t.base_url}: {type(e).__name__}: {e}")

    def _after_interrupt(self, prompt_id: str, sent_at: float, resend: bool = False) -> Optional[dict]:
        """After a Ctrl-C interrupt was sent: the prompt's /history entry once the server has stopped (or finished)
        it; None while it still runs. Raises ExecutionFailed(INTERRUPTED) when it left the queue without running
        or the server did not stop it within ``opts.interrupt_grace`` s."""
        state = self._queue_state(prompt_id)
        if state is None:
            entry = self.t.history_entry(prompt_id)
            if entry is not None and (entry.get("status") or {}).get("completed") is not None:
                return entry
            raise ExecutionFailed(
                INTERRUPTED,
                f"interrupted (Ctrl-C): prompt {prompt_id} was taken out of the "
                f"queue of {self.t.base_url} before it ran",
            )
        if time.monotonic() - sent_at > self.opts.interrupt_grace:
            raise ExecutionFailed(
                INTERRUPTED,
                f"interrupted (Ctrl-C): the interrupt was sent but prompt {prompt_id} "
                f"was still {state} on {self.t.base_url} after "
                f"{self.opts.interrupt_grace:g} s",
            )
        if resend:
            self._send_interrupt(prompt_id)  # again: it may have started running after the first request
        return None

    def _follow(self, ws, job: Job, prompt_id: str, total: int) -> dict:
        """Read the websocket until the prompt is done; returns its /history entry."""
        bar = self._bar(job, total)
        deadline = time.monotonic() + self.opts.timeout
        last_msg = time.monotonic()
        done_units: Dict[str, int] = {}
        interrupt_sent: Optional[float] = None
        next_check = 0.0
        try:
            while True:
                now = time.monotonic()
                if self.stop.is_set():
                    if interrupt_sent is None:
                        interrupt_sent = last_sent = next_check = now
                        self.log(f"[batch] job {job.id}: interrupting prompt {prompt_id} on {self.t.base_url}")
                        self._send_interrupt(prompt_id)
                    if now >= next_check:
                        next_check = now + 0.5
                        resend = now - last_sent >= 2.0
                        entry = self._after_interrupt(prompt_id, interrupt_sent, resend)
                        last_sent = now if resend else last_sent
                        if entry is not None:
                            return self._checked(entry, None)
                if now > deadline:
                    self._send_interrupt(prompt_id)
                    raise ExecutionFailed(
                        ERROR, f"prompt {prompt_id} did not finish within {self.opts.timeout:.0f} s (interrupted)"
                    )
                msg = read_message(ws, 0.5 if interrupt_sent is not None else 1.0)
                if msg is None:
                    if time.monotonic() - last_msg >= self.opts.poll:
                        last_msg = time.monotonic()
                        entry = self.t.history_entry(prompt_id)  # guards against missed 'done' messages
                        if entry is not None and (entry.get("status") or {}).get("completed") is not None:
                            return self._checked(entry, None)
                    continue
                last_msg = time.monotonic()
                if msg.is_binary or msg.prompt_id != prompt_id:
                    continue  # previews / streamed text, other prompts: not needed here
                kind, data = msg.type, msg.data
                if kind == "progress" and bar is not None:
                    node = str(data.get("node"))
                    done_units[node] = int(data.get("value", 0))
                    if not total and data.get("max"):
                        bar.total = int(data["max"])
                    bar.n = sum(done_units.values()) if total else int(data.get("value", 0))
                    bar.refresh()
                elif kind == "execution_error":
                    return self._checked(self.t.history_entry(prompt_id) or {}, ("error", data))
                elif kind == "execution_interrupted":
                    return self._checked(self.t.history_entry(prompt_id) or {}, ("interrupted", data))
                elif msg.ends(prompt_id):
                    entry = self.t.history_entry(prompt_id)
                    if entry is None:
                        raise ExecutionFailed(ERROR, f"prompt {prompt_id} finished but is not in /history")
                    return self._checked(entry, None)
        finally:
            if bar is not None:
                bar.close()

    def _checked(self, entry: dict, ws_failure: Optional[Tuple[str, dict]]) -> dict:
        if ws_failure is None:
            for m in (entry.get("status") or {}).get("messages") or []:
                if isinstance(m, list) and len(m) == 2 and m[0] in ("execution_error", "execution_interrupted"):
                    ws_failure = ("error" if m[0] == "execution_error" else "interrupted", m[1])
        if ws_failure is not None:
            kind, data = ws_failure
            if kind == "interrupted" or self.stop.is_set():
                by = "interrupted (Ctrl-C)" if self.stop.is_set() else "interrupted on the server"
                raise ExecutionFailed(
                    INTERRUPTED,
                    f"{by} at node {data.get('node_id')} ({data.get('node_type')}); "
                    f"prompt {data.get('prompt_id')} stopped on {self.t.base_url}",
                    data,
                )
            details = {
                k: data.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message", "traceback")
            }
            raise ExecutionFailed(ERROR, describe_execution_error(data), details)
        return entry

    # ---- outputs ------------------------------------------------------------------------------------------
    def _finish(self, job: Job, entry: dict, rec: dict, prompt: dict) -> None:
        out_dir = self.opts.out_dir / safe_name(job.id)
        _mkdir(out_dir)
        outputs = entry.get("outputs") or {}
        many = len(outputs) > 1
        files: List[str] = []
        texts: List[str] = []
        for nid, out in sorted(outputs.items(), key=lambda kv: node_sort_key(kv[0])):
            dest = out_dir / f"node_{safe_name(nid)}" if many else out_dir
            _mkdir(dest)
            refs = list(out.get("images") or [])
            for book in out.get("storybook") or []:
                sub, _, _ = str(book).rpartition("/")
                refs.append({"filename": "index.html", "subfolder": sub, "type": "output"})
                refs.append({"filename": "story.json", "subfolder": sub, "type": "output"})
                rec["storybook"] = str(book)
                rec["local_storybook"] = str(dest / "index.html")
            for ref in refs:
                name = Path(ref["filename"]).name
                data = self.t.view(ref["filename"], ref.get("subfolder", ""), ref.get("type", "output"))
                _atomic_write(dest / name, data)
                files.append(str(dest / name))
            for i, text in enumerate(out.get("text") or []):
                name = "story.txt" if i == 0 else f"story_{i}.txt"
                _atomic_write(dest / name, (str(text).rstrip("\n") + "\n").encode("utf-8"))
                files.append(str(dest / name))
                texts.append(str(text))
        _atomic_write(out_dir / "prompt.json", json.dumps(prompt, indent=2).encode("utf-8"))
        _atomic_write(out_dir / "history.json", json.dumps(entry, indent=2, default=str).encode("utf-8"))
        rec["outputs"] = files
        rec["texts"] = texts
        if not files:
            raise ExecutionFailed(ERROR, "the prompt finished but produced no outputs (no output node ran?)")


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalFileError(path, "create", e, "output folder") from None


def _atomic_write(path: Path, data: bytes) -> None:
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


def _log(msg: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    except Exception:  # noqa: BLE001
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ summary
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
    log = log or _log
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
        self.log = log or _log
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
            _mkdir(self.path.parent)
            _atomic_write(self.path, json.dumps(self.data, indent=2, default=str).encode("utf-8"))
            self.write_error = None
        except LocalFileError as e:
            self.write_error = str(e)
            what = f"job {job_id}'s record" if job_id else "the final counts"
            self.log(f"[batch] ERROR: {e}; {what} is kept in memory and written with the next update")


# ------------------------------------------------------------------------------------------------ batch
class _CtrlC:
    """Ctrl-C policy of run_batch: the first press sets ``stop`` (every worker interrupts its prompt on the server,
    records the job ``interrupted`` and ends; the summary is written); the second asks for an abort at once.

    As a SIGINT handler it never raises on the first press, so the main thread is not disturbed while it waits for
    the workers (in Python 3.11 a KeyboardInterrupt inside ``Thread.join()`` marks the still-running thread as
    finished, which is how jobs used to vanish from summary.json); it raises KeyboardInterrupt on the second.
    """

    def __init__(self, stop: threading.Event, log: Callable[[str], None]):
        self.stop = stop
        self.log = log
        self.presses = 0

    def press(self) -> bool:
        """Count one Ctrl-C; True when the batch must abort now (second press)."""
        self.presses += 1
        if self.presses == 1:
            self.log(
                "[batch] Ctrl-C: interrupting the running prompt(s) on the server(s), then writing the summary "
                "(press Ctrl-C again to quit at once)"
            )
            self.stop.set()
            return False
        return True

    def __call__(self, signum, frame) -> None:
        if self.press():
            raise KeyboardInterrupt


def run_batch(
    jobs: Sequence[Job],
    servers: Sequence[str],
    opts: Options,
    *,
    jobs_file: Optional[str] = None,
    transport_factory: Callable[[str], ComfyClient] = ComfyClient,
    stop: Optional[threading.Event] = None,
    log: Callable[[str], None] = _log,
    handle_sigint: bool = True,
) -> dict:
    """Run ``jobs`` over ``servers`` (one worker thread per server, a shared queue). Returns the summary dict.

    A worker whose server stays unreachable puts its job back for the other workers (once per server) and
    retires; the job fails only when no server is left (the rest are recorded "not run", naming the servers). A
    worker that finds the queue empty waits while another worker still runs a job (it may be handed back), so a
    job is never left behind by a live server.

    Ctrl-C (when called from the main thread with ``handle_sigint``; SIGINT's handler is restored on return): the
    first one stops the batch cleanly -- running prompts are interrupted on their servers and recorded
    ``interrupted``, queued jobs are recorded ``interrupted`` ("not run"), the summary gets ``"stopped": "Ctrl-C"``.
    A second Ctrl-C records the running jobs as ``interrupted`` (a best-effort interrupt is sent, for at most
    about 1.5 s), writes the summary and raises KeyboardInterrupt. Setting ``stop`` from elsewhere stops the batch
    like a first Ctrl-C (``"stopped": "stop requested"``).
    """
    opts.out_dir = Path(opts.out_dir)
    _mkdir(opts.out_dir)
    summary = Summary(opts.out_dir, jobs_file, servers, log)
    stop = stop or threading.Event()
    ctrl_c = _CtrlC(stop, log)
    todo: "queue.Queue[Tuple[Job, set]]" = queue.Queue()
    for job in jobs:
        prev = summary.data["jobs"].get(job.id)
        if not opts.force and is_done(prev):
            log(f"[batch] job {job.id}: already done ({len(prev['outputs'])} outputs), skipped (--force to redo)")
            prev["skipped"] = True
            summary.record(prev)
            continue
        if job.invalid:  # no server needed to refuse it
            summary.record(
                {
                    "id": job.id,
                    "line": job.line,
                    "status": INVALID,
                    "error": job.invalid,
                    "server": None,
                    "prompt_id": None,
                    "outputs": [],
                    "seconds": 0.0,
                }
            )
            log(f"[batch] job {job.id}: INVALID: {job.invalid}")
            continue
        todo.put((job, set()))
    alive = {s: True for s in servers}
    alive_lock = threading.Lock()
    runners: List[JobRunner] = []
    remaining = [len(servers)]
    all_done = threading.Event()

    busy = [0]  # workers running a job: a job can still come back to the queue while one is

    def next_job() -> Optional[Tuple[Job, set]]:
        """The next queued job (counted busy atomically with taking it); None when the batch has nothing left
        for this worker: the queue is empty and no other worker runs a job that could be handed back."""
        while not stop.is_set():
            with alive_lock:
                try:
                    item = todo.get_nowait()
                    busy[0] += 1
                    return item
                except queue.Empty:
                    if busy[0] == 0:
                        return None
            stop.wait(0.02)
        return None

    def worker(pos: int, server: str) -> None:
        try:
            runner = JobRunner(transport_factory(server), opts, position=pos, stop=stop, log=log)
            runners.append(runner)
            while (item := next_job()) is not None:
                job, tried = item
                try:
                    rec = runner.run(job)
                    if rec.get("server_gone"):
                        tried.add(server)
                        with alive_lock:
                            alive[server] = False
                            others = [s for s, ok in alive.items() if ok and s not in tried]
                        if others:
                            log(f"[batch] job {job.id}: {server} is gone; handing the job to another server")
                            todo.put((job, tried))  # before this worker stops counting as busy
                            return
                    _report(rec, log)
                    summary.record(rec)
                    if rec.get("server_gone"):
                        return
                finally:
                    with alive_lock:
                        busy[0] -= 1
        except Exception as e:  # noqa: BLE001 - a bug here must not hang the batch
            log(f"[batch] worker for {server} failed: {type(e).__name__}: {e}")
        finally:
            with alive_lock:
                remaining[0] -= 1
                if remaining[0] <= 0:
                    all_done.set()

    installed, old_handler = False, None
    if handle_sigint and threading.current_thread() is threading.main_thread():
        try:
            old_handler = signal.signal(signal.SIGINT, ctrl_c)
            installed = True
        except (ValueError, OSError):  # not allowed here (embedded interpreter, ...): KeyboardInterrupt path below
            pass
    try:
        threads = [
            threading.Thread(target=worker, args=(i, s), name=f"seedstory-batch-{i}", daemon=True)
            for i, s in enumerate(servers)
        ]
        for th in threads:
            th.start()
        if not threads:
            all_done.set()
        while not all_done.is_set():
            try:
                all_done.wait(0.25)  # never Thread.join(): see _CtrlC
            except KeyboardInterrupt:
                # our handler raises only on the second press; without it, Python's raises on every press
                if not installed and not ctrl_c.press():
                    continue
                _abort(runners, todo, summary, jobs, log)
                raise
    finally:
        if installed:
            signal.signal(signal.SIGINT, old_handler)
    _record_left_over(todo, summary, stop, alive)
    stopped = None
    if stop.is_set():
        stopped = "Ctrl-C" if ctrl_c.presses else "stop requested"
    summary.finish([j.id for j in jobs], stopped=stopped)
    if summary.write_error:
        summary.data["write_error"] = summary.write_error
    return summary.data


def _record_left_over(
    todo: "queue.Queue", summary: Summary, stop: threading.Event, alive: Dict[str, bool], timeout: float = -1
) -> None:
    """Record the jobs still in the queue: 'interrupted' (stopped) or 'error' (every server gone)."""
    gone = sorted(s for s, ok in alive.items() if not ok)
    while True:
        try:
            job, tried = todo.get_nowait()
        except queue.Empty:
            break
        if stop.is_set():
            st, msg = INTERRUPTED, "not run: stopped (Ctrl-C) before it started; run the same command again to resume"
        else:
            names = sorted(set(tried) | set(gone)) or sorted(alive)
            st, msg = (
                ERROR,
                (
                    f"not run: no reachable server (tried {', '.join(names)}: each stayed unreachable "
                    "through its retries); run the same command again to resume"
                ),
            )
        summary.record(
            {
                "id": job.id,
                "line": job.line,
                "status": st,
                "error": msg,
                "server": None,
                "prompt_id": None,
                "outputs": [],
                "seconds": 0.0,
            },
            timeout=timeout,
        )


def _abort(
    runners: Sequence[JobRunner], todo: "queue.Queue", summary: Summary, jobs: Sequence[Job], log: Callable[[str], None]
) -> None:
    """Second Ctrl-C: send a last interrupt for every running prompt (at most ~1.5 s in all, in the background),
    record those jobs 'interrupted' and the queued ones 'not run', write the summary. Never blocks for long."""
    running = [(r, dict(r.current)) for r in list(runners) if r.current is not None]
    done = threading.Event()

    def send():
        for r, rec in running:
            if rec.get("prompt_id"):
                try:
                    r.t.cancel(rec["prompt_id"])
                except Exception:  # noqa: BLE001 - best effort
                    pass
        done.set()

    threading.Thread(target=send, name="seedstory-batch-abort", daemon=True).start()
    done.wait(1.5)
    for r, rec in running:
        pid = rec.get("prompt_id")
        where = (
            (f"prompt {pid} on {r.t.base_url}: an interrupt was sent" + ("" if done.is_set() else " (not confirmed)"))
            if pid
            else "it had not been queued yet"
        )
        rec.update(status=INTERRUPTED, error=f"aborted by a second Ctrl-C while running; {where}")
        rec.setdefault("seconds", 0.0)
        summary.record(rec, timeout=1.0)
    stop = threading.Event()
    stop.set()
    _record_left_over(todo, summary, stop, {}, timeout=1.0)
    summary.finish([j.id for j in jobs], stopped="Ctrl-C (aborted)", timeout=1.0)
    log(
        f"[batch] aborted (second Ctrl-C): {len(running)} running job(s) recorded as interrupted; "
        f"summary {summary.path}"
    )


def _report(rec: dict, log: Callable[[str], None]) -> None:
    if rec["status"] == OK:
        where = rec.get("local_storybook") or (rec["outputs"][0] if rec["outputs"] else "")
        log(f"[batch] job {rec['id']}: ok in {rec['seconds']:.1f} s on {rec['server']} -> {where}")
        for line in rec.get("node_error_lines") or []:
            log(f"[batch]   warning: {line}")
        return
    log(f"[batch] job {rec['id']}: {rec['status'].upper()} ({rec.get('server')}): {rec.get('error')}")


def _positive_float(s: str) -> float:
    v = float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seedstory-batch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a JSONL file of SEED-Story jobs through ComfyUI server(s) and download the results.",
        epilog=f"""\
JOBS FILE (JSONL, one object per line; blank and '#' lines are ignored):
  id         job id (default: the line number); names OUT/<id>/
  image      path of the start image (relative paths: to the JSONL file's folder)
  text       the opening sentence (caption of the start image)
  frames     number of new frames = story steps (the storybook has frames+1 pictures);
             default: the template's value, or len(captions)
  seed       sampling/rendering seed (default: the template's)
  captions   ["...", ...] one caption per frame: visualization mode (template {CAPTIONS_TEMPLATE})
  overrides  {{"<node id or node title>.<input name>": value}}, applied last, e.g.
             {{"3.diffusion_steps": 4, "SeedStory Save Story.title": "My story"}};
             an override naming a missing node/input makes the job 'invalid' (not queued)
  template   per-job template (same rules as --template)

TEMPLATES: API-format workflows (ComfyUI 'Export (API)'); a file path or a name in {DEFAULT_TEMPLATE_DIR}.
  Filled by class: LoadImage.image <- the uploaded start image; SeedStoryGenerateStory.opening_text/
  story_steps/seed (+ captions, mode=visualization); SeedStorySaveStory.filename_prefix <-
  seedstory_batch/<id>/story.

OUTPUT: OUT/<id>/ gets the frames (frame_000.png ...), index.html + story.json (the storybook),
  story.txt, prompt.json and history.json; OUT/summary.json has per job: status (ok | error | invalid |
  interrupted), error (with node_errors details: node id, class_type, input, message), seconds, outputs,
  storybook (path under the server's output folder), local_storybook, prompt_id, server, attempts.
  'invalid' = refused before running (bad job line, bad override, server validation/node_errors).

  An HTTP error answer (4xx/5xx) makes that job 'error' with http_status and http_body; a local file that
  cannot be read or written (start image, OUT/...) makes it 'error' naming the file; the batch goes on.

RESUME: jobs with status ok in OUT/summary.json whose outputs still exist are skipped (--force redoes).
  A summary.json that cannot be parsed is kept as summary.json.corrupt-<time> (with a warning) and a new
  one is started.
RETRIES: only on connection loss (refused, reset, timeout, dropped websocket) the client reconnects with
  exponential backoff, asks /queue (and /history) about the prompt before queueing it again, at most
  --retries times per job; with several servers, a job whose server stays down is handed to another
  server; when none is left the remaining jobs are 'error' ("not run: no reachable server (tried URL...)").
CTRL-C: the first Ctrl-C interrupts the running prompt(s) on the server(s) (removed from the queue if still
  pending), records them 'interrupted', records the queued jobs 'interrupted' (not run), writes
  summary.json and exits 130; run the same command again to resume. A second Ctrl-C quits at once
  (running jobs still recorded 'interrupted').
SERVERS: --server is repeatable; one worker thread per server pulls jobs from a shared queue.
EXIT CODE: 0 all jobs ok (or skipped); 1 some job failed/invalid/interrupted; 2 usage error (also: an
  unreadable summary.json); 130 stopped by Ctrl-C.
""",
    )
    p.add_argument("jobs", help="JSONL job file")
    p.add_argument("-o", "--out", default="seedstory_batch_out", help="output folder (default: %(default)s)")
    p.add_argument(
        "-s",
        "--server",
        action="append",
        dest="servers",
        metavar="URL",
        help=f"ComfyUI base URL; repeat for several servers (default: $SEEDSTORY_COMFY_URL or {DEFAULT_SERVER})",
    )
    p.add_argument(
        "-t",
        "--template",
        default=None,
        help=f"API-format template (file or name in workflows/api; default {DEFAULT_TEMPLATE}, "
        f"{CAPTIONS_TEMPLATE} for jobs with captions)",
    )
    p.add_argument("--force", action="store_true", help="redo jobs that summary.json says are done")
    p.add_argument("--retries", type=int, default=5, help="reconnect attempts per job (default: %(default)s)")
    p.add_argument(
        "--backoff",
        type=_positive_float,
        default=1.0,
        help="first reconnect wait in s, doubled each time, max 30 s (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=3600.0,
        help="per-job limit in s; the prompt is interrupted after it (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument(
        "--print-storybooks",
        action="store_true",
        help="print each ok job's storybook (server-relative path) on stdout, one per line",
    )
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    servers = args.servers or [os.environ.get("SEEDSTORY_COMFY_URL") or DEFAULT_SERVER]
    servers = list(dict.fromkeys(s.rstrip("/") for s in servers))
    if args.retries < 0:
        print("seedstory-batch: --retries must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        jobs = load_jobs(Path(args.jobs))
        if args.template:
            resolve_template(args.template)
    except (OSError, ValueError) as e:
        print(f"seedstory-batch: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not jobs:
        print(f"seedstory-batch: no jobs in {args.jobs}", file=sys.stderr)
        return EXIT_USAGE
    opts = Options(
        out_dir=Path(args.out),
        template=args.template,
        force=args.force,
        timeout=args.timeout,
        progress=not args.no_progress,
        retry=RetryPolicy(retries=args.retries, backoff=args.backoff),
    )
    _log(f"[batch] {len(jobs)} job(s) from {args.jobs} on {len(servers)} server(s): {', '.join(servers)}")
    try:
        data = run_batch(jobs, servers, opts, jobs_file=str(args.jobs))
    except SummaryError as e:
        print(f"seedstory-batch: {e}", file=sys.stderr)
        return EXIT_USAGE
    except LocalFileError as e:  # the output folder itself
        print(f"seedstory-batch: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # second Ctrl-C: run_batch has recorded what it could
        return EXIT_INTERRUPTED
    recs = [data["jobs"].get(j.id) or {} for j in jobs]
    failed = [r for r in recs if r.get("status") != OK]
    _log(f"[batch] done: {data.get('counts')}; summary {Path(args.out) / SUMMARY_NAME}")
    if args.print_storybooks:
        for r in recs:
            if r.get("status") == OK and r.get("storybook"):
                print(r["storybook"], flush=True)
    if data.get("stopped"):
        return EXIT_INTERRUPTED
    return EXIT_JOBS_FAILED if failed or data.get("write_error") else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
