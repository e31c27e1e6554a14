"""seedstory-batch runner: runs jobs on ComfyUI servers (:class:`JobRunner` per server, :func:`run_batch` over all).

One job: upload the start image (and the cast sheet's pictures), queue the filled prompt, follow it over the websocket
(a tqdm bar), download its outputs into OUT/<job id>/. Connection losses are retried with backoff
(:class:`RetryPolicy`); a server that stays unreachable hands its job to another one. Ctrl-C, SIGTERM, SIGHUP
(:data:`STOP_SIGNALS`): the first one interrupts the running prompts on their servers and records them ``interrupted``;
a second one aborts at once.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..client import ComfyClient, is_connection_error, read_message
from ..errors import (
    ExecutionFailed,
    HTTPFailure,
    PromptRefused,
    ServerGone,
    describe_execution_error,
    describe_node_errors,
    node_sort_key,
)
from .jobs import (
    ERROR,
    INTERRUPTED,
    INVALID,
    OK,
    Job,
    JobInvalid,
    LocalFileError,
    read_cast_images,
    read_start_image,
    safe_name,
)
from .prompt import (
    build_prompt,
    cast_upload_name,
    load_template,
    resolve_template,
    set_images,
    total_progress,
    upload_name,
)
from .progress import progress_bar, stderr_log
from .summary import Summary, atomic_write, is_done, make_dir

# after a first Ctrl-C: how long to wait for the server to confirm that it stopped the prompt
INTERRUPT_GRACE_S = 20.0
# the signals that stop a batch cleanly (as the first Ctrl-C does) and the name each one is recorded under: Ctrl-C,
# and what `docker stop`, systemd, `timeout` and `kill` send (SIGTERM), or a closed terminal (SIGHUP; not on Windows)
STOP_SIGNALS = {
    getattr(signal, name): label
    for name, label in (("SIGINT", "Ctrl-C"), ("SIGTERM", "SIGTERM"), ("SIGHUP", "SIGHUP"))
    if hasattr(signal, name)
}
STOP_REQUESTED = "stop requested"  # the batch was stopped through run_batch's ``stop`` event, not by a signal


class BatchAborted(KeyboardInterrupt):
    """A second stop signal: run_batch recorded what it could and gives up at once. ``reason``: the first signal's
    name ("Ctrl-C", "SIGTERM", "SIGHUP"), which sets the exit code (seedstory_client.batch.cli.exit_code_for)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass
class RetryPolicy:
    """Reconnects after a connection loss: at most ``retries`` per job, waiting ``backoff`` s doubled each time
    (at most ``max_backoff`` s)."""

    retries: int = 5  # reconnect attempts per job after a connection loss
    backoff: float = 1.0  # first wait (s); doubles each attempt
    max_backoff: float = 30.0
    sleep: Optional[Callable[[float], Any]] = None  # None: wait on the runner's stop event (Ctrl-C ends it)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect number ``attempt`` + 1 (``attempt`` counts from 0)."""
        return min(self.max_backoff, self.backoff * (2**attempt))


@dataclasses.dataclass
class Options:
    """Settings of a batch: the output folder, the template, --force, the per-job limits and the retry policy."""

    out_dir: Path
    template: Optional[str] = None
    force: bool = False
    timeout: float = 3600.0  # per job, seconds of execution
    poll: float = 5.0  # seconds of websocket silence before /history is polled
    progress: bool = True
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    interrupt_grace: float = INTERRUPT_GRACE_S  # after Ctrl-C: seconds to wait for the server to stop the prompt


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
        why: Optional[Callable[[], str]] = None,
    ):
        self.t = transport
        self.opts = opts
        self.position = position
        self.stop = stop or threading.Event()
        self.log = log or stderr_log
        self.why = why or (lambda: "Ctrl-C")  # what set ``stop`` ("Ctrl-C", "SIGTERM", ...), for the messages
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
        return progress_bar(total, f"job {job.id}", self.position)

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
            cast_bytes = read_cast_images(job)
            self._run_with_retries(job, template, rec, image_bytes, cast_bytes)
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

    def _upload(self, data: bytes, name: str) -> str:
        """Upload one picture; its name as LoadImage takes it (``subfolder/name`` when the server put it in one)."""
        up = self.t.upload_image(data, name)
        uploaded = up.get("name") or name
        return f"{up['subfolder']}/{uploaded}" if up.get("subfolder") else uploaded

    def _run_with_retries(
        self, job: Job, template: dict, rec: dict, image_bytes: bytes, cast_bytes: Sequence[bytes] = ()
    ) -> None:
        pol = self.opts.retry
        last: Optional[BaseException] = None
        prompt: Optional[dict] = None
        name = upload_name(job, image_bytes)
        cast_names = [cast_upload_name(job, k, data) for k, data in enumerate(cast_bytes, start=1)]
        for attempt in range(pol.retries + 1):
            rec["attempts"] = attempt + 1
            if self.stop.is_set():
                where = (
                    f"; prompt {rec['prompt_id']} may still be queued on {self.t.base_url}" if rec["prompt_id"] else ""
                )
                raise ExecutionFailed(INTERRUPTED, f"stopped ({self.why()}) before the job finished{where}")
            try:
                ws = self.t.connect_ws()
                try:
                    if prompt is None:
                        prompt = build_prompt(template, job, name, self.object_info(), cast_names=cast_names)
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
                        uploaded = self._upload(image_bytes, name)
                        cast = [self._upload(data, n) for data, n in zip(cast_bytes, cast_names)]
                        set_images(prompt, uploaded, cast)
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
                f"interrupted ({self.why()}): prompt {prompt_id} was taken out of the "
                f"queue of {self.t.base_url} before it ran",
            )
        if time.monotonic() - sent_at > self.opts.interrupt_grace:
            raise ExecutionFailed(
                INTERRUPTED,
                f"interrupted ({self.why()}): the interrupt was sent but prompt {prompt_id} "
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
                by = f"interrupted ({self.why()})" if self.stop.is_set() else "interrupted on the server"
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
        make_dir(out_dir)
        outputs = entry.get("outputs") or {}
        many = len(outputs) > 1
        files: List[str] = []
        texts: List[str] = []
        for nid, out in sorted(outputs.items(), key=lambda kv: node_sort_key(kv[0])):
            dest = out_dir / f"node_{safe_name(nid)}" if many else out_dir
            make_dir(dest)
            refs = list(out.get("images") or [])
            for book in out.get("storybook") or []:
                sub, _, _ = str(book).rpartition("/")
                refs.append({"filename": "index.html", "subfolder": sub, "type": "output"})
                refs.append({"filename": "story.json", "subfolder": sub, "type": "output"})
                rec["storybook"] = str(book)
                rec["local_storybook"] = str(dest / "index.html")
            for pdf in out.get("pdf") or []:  # Save Story with pdf=true (the job's "pdf" field)
                sub, _, fname = str(pdf).rpartition("/")
                refs.append({"filename": fname, "subfolder": sub, "type": "output"})
                rec["pdf"] = str(pdf)
                rec["local_pdf"] = str(dest / Path(fname).name)
            for ref in refs:
                name = Path(ref["filename"]).name
                data = self.t.view(ref["filename"], ref.get("subfolder", ""), ref.get("type", "output"))
                atomic_write(dest / name, data)
                files.append(str(dest / name))
            for i, text in enumerate(out.get("text") or []):
                name = "story.txt" if i == 0 else f"story_{i}.txt"
                atomic_write(dest / name, (str(text).rstrip("\n") + "\n").encode("utf-8"))
                files.append(str(dest / name))
                texts.append(str(text))
        atomic_write(out_dir / "prompt.json", json.dumps(prompt, indent=2).encode("utf-8"))
        atomic_write(out_dir / "history.json", json.dumps(entry, indent=2, default=str).encode("utf-8"))
        rec["outputs"] = files
        rec["texts"] = texts
        if not files:
            raise ExecutionFailed(ERROR, "the prompt finished but produced no outputs (no output node ran?)")


class _CtrlC:
    """Stop-signal policy of run_batch (Ctrl-C = SIGINT, SIGTERM, SIGHUP: :data:`STOP_SIGNALS`): the first one sets
    ``stop`` (every worker interrupts its prompt on the server, records the job ``interrupted`` and ends; the summary
    is written); a second one (of any of them) asks for an abort at once. ``reason`` names the first one.

    As a signal handler it never raises on the first signal, so the main thread is not disturbed while it waits for
    the workers (in Python 3.11 a KeyboardInterrupt inside ``Thread.join()`` marks the still-running thread as
    finished, which is how jobs used to vanish from summary.json); it raises BatchAborted on the second.
    """

    def __init__(self, stop: threading.Event, log: Callable[[str], None]):
        self.stop = stop
        self.log = log
        self.presses = 0
        self.reason: Optional[str] = None  # the first signal's name
        self.last: Optional[str] = None  # the latest signal's name

    def press(self, label: str = "Ctrl-C") -> bool:
        """Count one stop signal named ``label``; True when the batch must abort now (second signal)."""
        self.presses += 1
        self.last = label
        if self.presses == 1:
            self.reason = label
            again = "Ctrl-C" if label == "Ctrl-C" else f"Ctrl-C or {label}"
            self.log(
                f"[batch] {label}: interrupting the running prompt(s) on the server(s), then writing the summary "
                f"(press {again} again to quit at once)"
            )
            self.stop.set()
            return False
        return True

    def __call__(self, signum, frame) -> None:
        if self.press(STOP_SIGNALS.get(signum, f"signal {signum}")):
            raise BatchAborted(self.reason or "Ctrl-C")


def run_batch(
    jobs: Sequence[Job],
    servers: Sequence[str],
    opts: Options,
    *,
    jobs_file: Optional[str] = None,
    transport_factory: Callable[[str], ComfyClient] = ComfyClient,
    stop: Optional[threading.Event] = None,
    log: Callable[[str], None] = stderr_log,
    handle_sigint: bool = True,
) -> dict:
    """Run ``jobs`` over ``servers`` (one worker thread per server, a shared queue). Returns the summary dict.

    A worker whose server stays unreachable puts its job back for the other workers (once per server) and
    retires; the job fails only when no server is left (the rest are recorded "not run", naming the servers). A
    worker that finds the queue empty waits while another worker still runs a job (it may be handed back), so a
    job is never left behind by a live server.

    Ctrl-C, SIGTERM and SIGHUP (:data:`STOP_SIGNALS`; handled when called from the main thread with
    ``handle_sigint``, the previous handlers are restored on return): the first one stops the batch cleanly --
    running prompts are interrupted on their servers and recorded ``interrupted``, queued jobs are recorded
    ``interrupted`` ("not run"), the summary gets ``"stopped": "<name>"`` (``Ctrl-C``, ``SIGTERM``, ``SIGHUP``). A
    second one records the running jobs as ``interrupted`` (a best-effort interrupt is sent, for at most about
    1.5 s), writes the summary (``"<name> (aborted)"``) and raises BatchAborted (a KeyboardInterrupt). Setting
    ``stop`` from elsewhere stops the batch like a first Ctrl-C (``"stopped": "stop requested"``).
    """
    opts.out_dir = Path(opts.out_dir)
    make_dir(opts.out_dir)
    summary = Summary(opts.out_dir, jobs_file, servers, log)
    stop = stop or threading.Event()
    ctrl_c = _CtrlC(stop, log)

    def why() -> str:
        return ctrl_c.reason or STOP_REQUESTED

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
            runner = JobRunner(transport_factory(server), opts, position=pos, stop=stop, log=log, why=why)
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

    old_handlers: Dict[int, Any] = {}
    if handle_sigint and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            try:
                old_handlers[signum] = signal.signal(signum, ctrl_c)
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
            except KeyboardInterrupt as e:
                # our handler raises only on the second signal; without it, Python's raises on every Ctrl-C
                if not isinstance(e, BatchAborted) and not ctrl_c.press():
                    continue
                _abort(runners, todo, summary, jobs, log, ctrl_c.reason or "Ctrl-C", ctrl_c.last or "Ctrl-C")
                raise BatchAborted(ctrl_c.reason or "Ctrl-C") from None
    finally:
        for signum, old in old_handlers.items():
            signal.signal(signum, old)
    _record_left_over(todo, summary, stop, alive, why=why())
    stopped = None
    if stop.is_set():
        stopped = why()
    summary.finish([j.id for j in jobs], stopped=stopped)
    if summary.write_error:
        summary.data["write_error"] = summary.write_error
    return summary.data


def _record_left_over(
    todo: "queue.Queue",
    summary: Summary,
    stop: threading.Event,
    alive: Dict[str, bool],
    timeout: float = -1,
    why: str = "Ctrl-C",
) -> None:
    """Record the jobs still in the queue: 'interrupted' (stopped) or 'error' (every server gone)."""
    gone = sorted(s for s, ok in alive.items() if not ok)
    while True:
        try:
            job, tried = todo.get_nowait()
        except queue.Empty:
            break
        if stop.is_set():
            st, msg = INTERRUPTED, f"not run: stopped ({why}) before it started; run the same command again to resume"
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
    runners: Sequence[JobRunner],
    todo: "queue.Queue",
    summary: Summary,
    jobs: Sequence[Job],
    log: Callable[[str], None],
    reason: str = "Ctrl-C",
    second: str = "Ctrl-C",
) -> None:
    """Second stop signal (``reason``: the first one's name, ``second``: this one's): send a last interrupt for
    every running prompt (at most ~1.5 s in all, in the background), record those jobs 'interrupted' and the queued
    ones 'not run', write the summary. Never blocks for long."""
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
        rec.update(status=INTERRUPTED, error=f"aborted by a second {second} while running; {where}")
        rec.setdefault("seconds", 0.0)
        summary.record(rec, timeout=1.0)
    stop = threading.Event()
    stop.set()
    _record_left_over(todo, summary, stop, {}, timeout=1.0, why=reason)
    summary.finish([j.id for j in jobs], stopped=f"{reason} (aborted)", timeout=1.0)
    log(
        f"[batch] aborted (second {second}): {len(running)} running job(s) recorded as interrupted; "
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
