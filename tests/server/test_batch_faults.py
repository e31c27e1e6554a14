"""seedstory-batch under faults: nothing escapes, nothing is lost (issue 16, batch client).

Unit tests (no ComfyUI):
  * HTTP error answers are job errors carrying status and body, never "connection lost" (the real
    ``ComfyClient`` against a tiny local HTTP server, ``MiniComfy``; a custom transport raising
    ``requests.HTTPError`` / ``PermissionError``);
  * local file errors (start image gone or a folder, output folder blocked) are job errors naming the file;
  * only connection errors are retried; when every server is gone the rest are "not run" naming the servers;
  * a corrupt summary.json is kept as ``summary.json.corrupt-<time>`` with a warning;
  * Ctrl-C in the main thread (a real SIGINT to this process): the first interrupts the prompt, records the job
    ``interrupted`` and writes the summary; the second aborts at once; a pending prompt is taken out of the
    queue; a prompt that finished anyway is kept; a retry wait ends at once.

Real-server tests (``comfyui``; ``slow`` for the long one):
  * ``seedstory-batch`` in a subprocess gets SIGINT mid-job: exit 130, the job is ``interrupted`` in
    summary.json, and the server's queue/history show the prompt interrupted, not finished; twice: exits at once.
  * 20 jobs, ``kill -9`` of the server mid-batch, a new server, a resume: every job ok exactly once (summary,
    local files, server outputs, the servers' logs and histories), and the model loader ran once per server life.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import websocket

from seedstory_client import batch as B
from seedstory_client import launcher
from seedstory_client.batch import summary as batch_summary
from seedstory_client.client import ComfyClient, is_connection_error
from seedstory_client.errors import HTTPFailure
from tests.server.test_batch import (  # one copy of the subprocess environment and of the fake transport
    FakeTransport,
    cli_env,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
START_PNG = REPO_ROOT / "workflows" / "assets" / "seedstory_start.png"


def job(jid: str, image: Path = START_PNG, **kw) -> B.Job:
    return B.parse_job(
        {
            "id": jid,
            "image": str(image),
            "text": "A boat sails.",
            "frames": 1,
            "overrides": {"3.diffusion_steps": 1},
            **kw,
        },
        1,
        REPO_ROOT,
    )


def opts_for(tmp_path: Path, retries: int = 2, **kw):
    sleeps: list = []
    pol = B.RetryPolicy(retries=retries, backoff=0.25, sleep=sleeps.append)
    return B.Options(out_dir=tmp_path / "out", progress=False, retry=pol, poll=0.05, **kw), sleeps


def closed_port() -> int:
    """A port nothing listens on (bound and released: connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ================================================================================================ MiniComfy
class MiniComfy:
    """A tiny local HTTP server with just enough of ComfyUI's API for the real ``ComfyClient``'s HTTP calls.

    Every prompt "runs" at once: POST /prompt puts a finished entry in /history. ``fail(method, path, job)``
    makes requests whose path starts with ``path`` (and, when ``job`` is given, that concern that job: its
    upload name, its prompt, or its outputs) answer ``(status, body)``. ``requests`` lists (method, path, body).
    """

    def __init__(self):
        self.rules: list = []
        self.requests: list = []
        self.history: dict = {}
        self.prompts: dict = {}
        self.lock = threading.Lock()
        mini = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, status, body, ctype="application/json"):
                data = (
                    body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
                )
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                url = urlparse(self.path)
                with mini.lock:
                    mini.requests.append((method, url.path, body))
                rule = mini._rule(method, url.path, body, parse_qs(url.query))
                if rule:
                    return self._send(rule[0], rule[1], "text/plain")
                return self._send(*mini._answer(method, url.path, body, parse_qs(url.query)))

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail(self, method, path, status, body, job=None):
        self.rules.append((method, path, status, body, job))

    def _concerns(self, job_id, path, body, query):
        if job_id is None:
            return True
        tag = f"seedstory_batch_{job_id}_".encode()
        if path.startswith("/upload/image"):
            return tag in body
        if path.startswith("/prompt"):
            return f"seedstory_batch/{job_id}/".encode() in body
        if path.startswith("/view"):
            return f"seedstory_batch/{job_id}/" in (query.get("subfolder") or [""])[0]
        if path.startswith("/history/"):
            pid = path.rsplit("/", 1)[1]
            return f"seedstory_batch/{job_id}/" in json.dumps(self.prompts.get(pid, {}))
        return False

    def _rule(self, method, path, body, query):
        for m, p, status, text, job_id in self.rules:
            if m == method and path.startswith(p) and self._concerns(job_id, path, body, query):
                return status, text
        return None

    def _answer(self, method, path, body, query):
        if method == "GET" and path == "/object_info":
            return 200, {}
        if method == "POST" and path == "/upload/image":
            name = re.search(rb'filename="([^"]+)"', body).group(1).decode()
            return 200, {"name": name, "subfolder": "", "type": "input"}
        if method == "POST" and path == "/prompt":
            prompt = json.loads(body)["prompt"]
            pid = f"p{len(self.prompts)}"
            self.prompts[pid] = prompt
            prefix = next(v["inputs"]["filename_prefix"] for v in prompt.values() if v["class_type"] == B.SAVE_CLASS)
            sub = f"{prefix.rsplit('/', 1)[0]}/story_00001"
            self.history[pid] = {
                "outputs": {
                    "4": {
                        "images": [{"filename": "frame_000.png", "subfolder": sub, "type": "output"}],
                        "text": ["one"],
                        "storybook": [sub + "/index.html"],
                    }
                },
                "status": {"status_str": "success", "completed": True, "messages": []},
            }
            return 200, {"prompt_id": pid, "number": len(self.prompts), "node_errors": {}}
        if method == "GET" and path.startswith("/history/"):
            pid = path.rsplit("/", 1)[1]
            return 200, ({pid: self.history[pid]} if pid in self.history else {})
        if method == "GET" and path == "/queue":
            return 200, {"queue_running": [], "queue_pending": []}
        if method == "GET" and path == "/view":
            return 200, b"\x89PNG mini " + query["filename"][0].encode(), "image/png"
        if method == "POST" and path in ("/interrupt", "/queue"):
            return 200, b"", "text/plain"
        return 404, {"error": f"no route {method} {path}"}

    def count(self, method, path):
        return sum(1 for m, p, _ in self.requests if m == method and p.startswith(path))


class SilentWS:
    """A websocket that never says anything: the runner falls back to polling /history (opts.poll)."""

    def settimeout(self, t):
        pass

    def recv(self):
        time.sleep(0.01)
        raise websocket.WebSocketTimeoutException("idle")

    def close(self):
        pass


class HTTPOnlyTransport(ComfyClient):
    """The real client (requests, HTTPFailure) with a silent websocket, for MiniComfy."""

    def connect_ws(self, timeout: float = 30.0):
        return SilentWS()


@pytest.fixture
def mini():
    m = MiniComfy()
    yield m
    m.close()


def run_mini(mini, tmp_path, jobs, **kw):
    opts, sleeps = opts_for(tmp_path, **kw)
    logs: list = []
    data = B.run_batch(jobs, [mini.base_url], opts, transport_factory=HTTPOnlyTransport, log=logs.append)
    return data, sleeps, logs


# ================================================================================================ HTTP errors
def test_http_500_on_upload_is_a_job_error_not_a_lost_server(mini, tmp_path):
    mini.fail("POST", "/upload/image", 500, "upload exploded: disk full on the server", job="b")
    data, sleeps, _ = run_mini(mini, tmp_path, [job("a"), job("b"), job("c")])
    recs = data["jobs"]
    assert recs["a"]["status"] == "ok" and recs["c"]["status"] == "ok", recs
    b = recs["b"]
    assert b["status"] == "error" and b["http_status"] == 500
    assert "upload exploded: disk full on the server" in b["http_body"]
    assert b["error"].startswith(f"POST /upload/image on {mini.base_url} answered HTTP 500: upload exploded")
    assert not b.get("server_gone") and b["attempts"] == 1 and sleeps == [], "an HTTP error is not retried"
    assert mini.count("POST", "/upload/image") == 3 and mini.count("POST", "/prompt") == 2
    assert data["counts"] == {"ok": 2, "error": 1}
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["jobs"]["b"]["http_status"] == 500


def test_http_4xx_on_view_history_and_prompt_are_job_errors_with_status_and_body(mini, tmp_path):
    mini.fail("GET", "/view", 404, "404: no such output file", job="v")
    mini.fail("GET", "/history/", 403, "forbidden by the proxy", job="h")
    mini.fail("POST", "/prompt", 503, "<html>maintenance</html>", job="p")
    data, sleeps, _ = run_mini(mini, tmp_path, [job("v"), job("h"), job("p"), job("ok")])
    recs = data["jobs"]
    assert recs["ok"]["status"] == "ok"
    assert recs["v"]["status"] == "error" and recs["v"]["http_status"] == 404
    assert "GET /view?filename=frame_000.png" in recs["v"]["error"] and "no such output file" in recs["v"]["error"]
    assert recs["h"]["status"] == "error" and recs["h"]["http_status"] == 403
    assert "forbidden by the proxy" in recs["h"]["http_body"]
    assert recs["p"]["status"] == "error" and recs["p"]["http_status"] == 503 and "maintenance" in recs["p"]["error"]
    assert sleeps == [] and not any(r.get("server_gone") for r in recs.values())


def test_http_error_and_local_oserror_from_any_transport_are_not_connection_loss(tmp_path):
    """requests.HTTPError and PermissionError are OSErrors: they must still be job errors, not retried."""

    class Flaky(FakeTransport):
        def upload_image(self, data, name):
            if "_h_" in name:
                resp = requests.Response()
                resp.status_code, resp._content = 502, b"bad gateway"
                raise requests.HTTPError("502 Server Error: Bad Gateway", response=resp)
            if "_f_" in name:
                raise PermissionError(13, "Permission denied", "/srv/comfy/input/x.png")
            return super().upload_image(data, name)

    fake = Flaky()
    opts, sleeps = opts_for(tmp_path)
    data = B.run_batch(
        [job("h"), job("f"), job("ok")], ["http://fake"], opts, transport_factory=lambda u: fake, log=lambda m: None
    )
    recs = data["jobs"]
    assert recs["h"]["status"] == "error" and "HTTPError" in recs["h"]["error"] and "502" in recs["h"]["error"]
    assert recs["f"]["status"] == "error" and "Permission denied" in recs["f"]["error"]
    assert recs["ok"]["status"] == "ok", "the server was not taken for gone"
    assert sleeps == [] and fake.connects == 3


@pytest.mark.parametrize(
    "exc, expected",
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (socket.gaierror(-2, "Name or service not known"), True),
        (OSError(101, "Network is unreachable"), True),
        (requests.ConnectionError("refused"), True),
        (requests.ReadTimeout("read timed out"), True),
        (websocket.WebSocketConnectionClosedException("lost"), True),
        (websocket.WebSocketTimeoutException("timed out"), True),
        (requests.HTTPError("500 Server Error"), False),
        (HTTPFailure("GET", "/queue", 500, "boom"), False),
        (websocket.WebSocketBadStatusException("Handshake status %d %s", 403, "Forbidden"), False),
        (FileNotFoundError(2, "No such file or directory", "/x/start.png"), False),
        (PermissionError(13, "Permission denied", "/x/out"), False),
        (IsADirectoryError(21, "Is a directory", "/x/start.png"), False),
        (OSError(28, "No space left on device"), False),
        (ValueError("bad json"), False),
    ],
)
def test_is_connection_error(exc, expected):
    assert is_connection_error(exc) is expected


def test_bad_handshake_on_the_websocket_is_an_http_error(tmp_path):
    """A server that answers /ws with an HTTP error (a proxy refusing websockets): job error with the status."""
    srv = MiniComfy()  # has no /ws route: answers 404
    try:
        opts, sleeps = opts_for(tmp_path)
        rec = B.JobRunner(ComfyClient(srv.base_url), opts, log=lambda m: None).run(job("w"))
    finally:
        srv.close()
    assert rec["status"] == "error" and rec["http_status"] == 404 and "GET /ws" in rec["error"], rec
    assert sleeps == [] and not rec.get("server_gone")


# ================================================================================================ local files
def test_start_image_gone_or_a_folder_is_a_job_error_naming_the_file(mini, tmp_path):
    gone = tmp_path / "gone.png"
    folder = tmp_path / "folder.png"
    for p in (gone, folder):
        p.write_bytes(START_PNG.read_bytes())
    jobs = [job("gone", gone), job("folder", folder), job("ok")]
    assert not any(j.invalid for j in jobs)
    gone.unlink()  # removed after the job file was read
    folder.unlink()
    folder.mkdir()
    data, sleeps, logs = run_mini(mini, tmp_path, jobs)
    recs = data["jobs"]
    assert recs["ok"]["status"] == "ok"
    for jid, path, why in (("gone", gone, "No such file or directory"), ("folder", folder, "Is a directory")):
        r = recs[jid]
        assert r["status"] == "error" and r["file"] == str(path), r
        assert (
            r["error"] == f"cannot read the start image {path}: {why} "
            f"({'FileNotFoundError' if jid == 'gone' else 'IsADirectoryError'})"
        )
        assert not r.get("server_gone")
    assert mini.count("POST", "/upload/image") == 1 and sleeps == []
    assert any(f"job gone: ERROR ({mini.base_url}): cannot read the start image {gone}" in m for m in logs)


def test_a_cast_picture_gone_a_folder_or_no_picture_any_more_fails_its_job_only(mini, tmp_path):
    """A cast sheet's picture that changes after the jobs file was read: the job fails naming the picture (its
    number and the character), nothing of it is uploaded or queued, and the other jobs run."""
    pics = {k: tmp_path / f"{k}.png" for k in ("gone", "folder", "text")}
    for p in pics.values():
        p.write_bytes(START_PNG.read_bytes())
    jobs = [
        job(k, cast=[{"name": "Max", "image": str(START_PNG)}, {"name": "Zoe", "image": str(p)}])
        for k, p in pics.items()
    ] + [job("ok")]
    assert not any(j.invalid for j in jobs)
    pics["gone"].unlink()
    pics["folder"].unlink()
    pics["folder"].mkdir()
    pics["text"].write_text("not a picture any more\n")
    data, sleeps, logs = run_mini(mini, tmp_path, jobs)
    recs = data["jobs"]
    assert recs["ok"]["status"] == "ok"
    for jid, why in (("gone", "No such file or directory"), ("folder", "Is a directory")):
        r = recs[jid]
        assert r["status"] == "error" and r["file"] == str(pics[jid]) and not r.get("server_gone"), r
        assert r["error"].startswith(f"cannot read the cast picture 2 (Zoe) {pics[jid]}: {why}"), r["error"]
    r = recs["text"]
    assert r["status"] == "invalid" and r["error"].startswith("job text (line 1): 'cast'[2].image"), r
    assert "is not a PNG, JPEG, WebP, BMP, GIF or TIFF" in r["error"]
    # only the good job's start picture was uploaded; nothing of the failed jobs was queued
    assert mini.count("POST", "/upload/image") == 1 and mini.count("POST", "/prompt") == 1 and sleeps == []


def test_blocked_output_folder_is_a_job_error_naming_it(mini, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "blocked").write_text("a file where the job's folder should go")
    data, sleeps, _ = run_mini(mini, tmp_path, [job("blocked"), job("ok")])
    r = data["jobs"]["blocked"]
    assert r["status"] == "error" and r["file"] == str(tmp_path / "out" / "blocked"), r
    assert r["error"].startswith(f"cannot create the output folder {tmp_path / 'out' / 'blocked'}: ")
    assert data["jobs"]["ok"]["status"] == "ok" and sleeps == []


# ================================================================================================ connection loss
def test_refused_connections_are_retried_then_the_rest_name_the_servers_tried(tmp_path):
    urls = [f"http://127.0.0.1:{closed_port()}", f"http://127.0.0.1:{closed_port()}"]
    jobs = [job(f"j{i}") for i in range(5)]
    opts, sleeps = opts_for(tmp_path, retries=1)
    data = B.run_batch(jobs, urls, opts, log=lambda m: None)
    recs = data["jobs"]
    assert {r["status"] for r in recs.values()} == {"error"} and len(recs) == 5
    gone = [r for r in recs.values() if r.get("server_gone")]
    assert gone and all("unreachable after 2 attempt(s)" in r["error"] for r in gone)
    assert all(r["attempts"] == 2 for r in gone) and set(sleeps) == {0.25}
    not_run = [r for r in recs.values() if r["error"].startswith("not run")]
    assert len(not_run) + len(gone) == 5 and not_run
    want = f"not run: no reachable server (tried {', '.join(sorted(urls))}: each stayed unreachable"
    assert all(r["error"].startswith(want) for r in not_run), not_run[0]["error"]
    assert "tried []" not in json.dumps(data)


# ================================================================================================ summary.json
@pytest.mark.parametrize(
    "content, why",
    [
        (b'{"jobs": {"a": {"status": "ok"', "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"jobs": []}', "its 'jobs' is a list"),
        (b'{"jobs": {"a": 3}}', "some job records are not objects"),
    ],
)
def test_corrupt_summary_is_kept_as_a_backup_with_a_warning(tmp_path, content, why):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_bytes(content)
    opts, _ = opts_for(tmp_path)
    logs: list = []
    data = B.run_batch([job("a")], ["http://fake"], opts, transport_factory=FakeTransport, log=logs.append)
    backups = sorted(out.glob("summary.json.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == content
    assert re.fullmatch(r"summary\.json\.corrupt-\d{8}T\d{6}", backups[0].name)
    warning = [m for m in logs if "warning" in m]
    assert warning == [f"[batch] warning: {out / 'summary.json'} is {why}" + warning[0].split(why, 1)[1]]
    assert f"kept it as {backups[0]} and started a new summary" in warning[0]
    assert data["jobs"]["a"]["status"] == "ok" and data["corrupt_backup"] == str(backups[0])
    assert json.loads((out / "summary.json").read_text())["jobs"]["a"]["status"] == "ok"
    # a second corrupt file in the same second gets its own name; a good summary is never backed up
    (out / "summary.json").write_bytes(content)
    B.run_batch([job("a")], ["http://fake"], opts, transport_factory=FakeTransport, log=logs.append)
    assert len(list(out.glob("summary.json.corrupt-*"))) == 2
    B.run_batch([job("a")], ["http://fake"], opts, transport_factory=FakeTransport, log=logs.append)
    assert len(list(out.glob("summary.json.corrupt-*"))) == 2


def test_summary_write_failure_is_reported_and_retried(tmp_path, monkeypatch):
    real = batch_summary.atomic_write
    fails = []

    def flaky(path, data):
        if path.name == "summary.json" and not fails:
            fails.append(path)
            raise B.LocalFileError(path, "write", OSError(28, "No space left on device"))
        return real(path, data)

    monkeypatch.setattr(batch_summary, "atomic_write", flaky)  # the summary's writes only
    opts, _ = opts_for(tmp_path)
    logs: list = []
    data = B.run_batch([job("a"), job("b")], ["http://fake"], opts, transport_factory=FakeTransport, log=logs.append)
    summary = tmp_path / "out" / "summary.json"
    err = [m for m in logs if "ERROR" in m]
    assert err == [
        f"[batch] ERROR: cannot write the file {summary}: No space left on device (OSError); "
        "job a's record is kept in memory and written with the next update"
    ]
    on_disk = json.loads(summary.read_text())["jobs"]
    assert {j: r["status"] for j, r in on_disk.items()} == {"a": "ok", "b": "ok"}, "the next write caught up"
    assert "write_error" not in data


def test_cli_corrupt_summary_warning_and_unreadable_summary(tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "image": str(START_PNG), "text": "Hi."}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{truncated")
    url = f"http://127.0.0.1:{closed_port()}"
    code = B.main([str(jobs), "-o", str(out), "-s", url, "--retries", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == B.EXIT_JOBS_FAILED
    backup = next(out.glob("summary.json.corrupt-*"))
    assert f"warning: {out / 'summary.json'} is not valid JSON" in err and f"kept it as {backup}" in err
    assert json.loads((out / "summary.json").read_text())["jobs"]["a"]["status"] == "error"
    # a summary that exists but cannot be read: a usage error before anything runs, the file left alone
    out2 = tmp_path / "out2"
    (out2 / "summary.json").mkdir(parents=True)
    assert B.main([str(jobs), "-o", str(out2), "-s", url, "--no-progress"]) == B.EXIT_USAGE
    err = capsys.readouterr().err
    assert f"cannot read {out2 / 'summary.json'} (IsADirectoryError" in err and "choose another output folder" in err
    assert (out2 / "summary.json").is_dir() and not list(out2.glob("*.corrupt-*"))


# ================================================================================================ Ctrl-C (unit)
class Running:
    """A fake server whose prompt runs until interrupted. ``on_interrupt``: "stop" (execution_interrupted, like
    ComfyUI), "ignore" (the server never stops it), "finish" (it completed just before the interrupt landed).
    ``pending``: the prompt waits in queue_pending (behind another client's prompt) until interrupted."""

    def __init__(self, on_interrupt="stop", pending=False, base_url="http://fake"):
        self.fake = FakeTransport(base_url, delay=0.02)
        self.fake.cancel = self.cancel
        self.fake.queue_state = self.queue_state
        self.on_interrupt, self.pending = on_interrupt, pending
        self.interrupts: list = []
        orig_post = self.fake.queue_prompt

        def post(prompt, prompt_id=None):
            res = orig_post(prompt, prompt_id)
            if pending:
                self.fake.frames = []  # nothing happens while it waits
            return res

        self.fake.queue_prompt = post

    def queue_state(self):
        ids = [[0, pid, {}, {}, []] for pid in self.fake.running]
        return {"queue_running": [] if self.pending else ids, "queue_pending": ids if self.pending else []}

    def cancel(self, pid):
        self.interrupts.append(pid)
        f = self.fake
        if self.on_interrupt == "ignore" or pid not in f.running:
            return
        if self.pending:  # removed from the queue: no message, no history
            f.running.remove(pid)
            f.frames = []
        elif self.on_interrupt == "stop":
            f.running.remove(pid)
            f.frames = [
                json.dumps(
                    {
                        "type": "execution_interrupted",
                        "data": {"prompt_id": pid, "node_id": "3", "node_type": "SeedStoryGenerateStory"},
                    }
                )
            ]
            f.histories[pid] = {
                "outputs": {},
                "status": {
                    "status_str": "error",
                    "completed": False,
                    "messages": [
                        [
                            "execution_interrupted",
                            {"prompt_id": pid, "node_id": "3", "node_type": "SeedStoryGenerateStory"},
                        ]
                    ],
                },
            }
        elif self.on_interrupt == "finish":
            f._complete(pid)
            f.frames = []


def _sigint_when(cond, times=1, gap=0.3):
    """Send SIGINT to this process (as a terminal's Ctrl-C does) once ``cond()`` holds (never, if it does not hold
    within 20 s: the test then fails on its own assertions instead of pytest being interrupted)."""
    return _signal_when(cond, signal.SIGINT, times=times, gap=gap)


def _long_jobs():
    return [job("long", frames=50, overrides={"3.diffusion_steps": 10}), job("next")]


def test_first_ctrl_c_interrupts_the_prompt_records_it_and_writes_the_summary(tmp_path):
    srv = Running("stop")
    opts, _ = opts_for(tmp_path)
    logs: list = []
    before = signal.getsignal(signal.SIGINT)
    _sigint_when(lambda: srv.fake.running)
    t0 = time.monotonic()
    data = B.run_batch(_long_jobs(), ["http://fake"], opts, transport_factory=lambda u: srv.fake, log=logs.append)
    assert time.monotonic() - t0 < 10
    assert signal.getsignal(signal.SIGINT) is before, "the SIGINT handler is restored"
    pid = srv.fake.posted[0][0]
    assert srv.interrupts and set(srv.interrupts) == {pid} and len(srv.fake.posted) == 1
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["stopped"] == "Ctrl-C" and on_disk["counts"] == {"interrupted": 2}
    long, nxt = on_disk["jobs"]["long"], on_disk["jobs"]["next"]
    assert long["status"] == "interrupted" and long["prompt_id"] == pid
    assert (
        long["error"] == f"interrupted (Ctrl-C) at node 3 (SeedStoryGenerateStory); prompt {pid} stopped on http://fake"
    )
    assert nxt["status"] == "interrupted" and nxt["error"].startswith("not run: stopped (Ctrl-C) before it started")
    assert any("Ctrl-C: interrupting the running prompt(s)" in m and "press Ctrl-C again" in m for m in logs)
    assert data["stopped"] == "Ctrl-C"


def test_second_ctrl_c_aborts_at_once_and_still_records_the_job(tmp_path):
    srv = Running("ignore")  # the server never confirms: only a second Ctrl-C gets the user out early
    opts, _ = opts_for(tmp_path, interrupt_grace=3.0)
    logs: list = []
    before = signal.getsignal(signal.SIGINT)
    _sigint_when(lambda: srv.fake.running, times=2, gap=0.3)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        B.run_batch(_long_jobs(), ["http://fake"], opts, transport_factory=lambda u: srv.fake, log=logs.append)
    took = time.monotonic() - t0
    assert signal.getsignal(signal.SIGINT) is before
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    pid = srv.fake.posted[0][0]
    assert on_disk["stopped"] == "Ctrl-C (aborted)" and on_disk["counts"] == {"interrupted": 2}
    assert on_disk["jobs"]["long"]["error"].startswith(
        f"aborted by a second Ctrl-C while running; prompt {pid} on http://fake: an interrupt was sent"
    )
    assert on_disk["jobs"]["next"]["error"].startswith("not run: stopped (Ctrl-C)")
    assert srv.interrupts.count(pid) >= 2, "the first press and the abort both sent an interrupt"
    assert took < 3.0, f"a second Ctrl-C must not wait for the server ({took:.1f} s)"
    assert any("aborted (second Ctrl-C)" in m for m in logs)


def test_ctrl_c_when_the_server_does_not_stop_the_prompt(tmp_path):
    srv = Running("ignore")
    opts, _ = opts_for(tmp_path, interrupt_grace=0.5)
    _sigint_when(lambda: srv.fake.running)
    data = B.run_batch(
        _long_jobs()[:1], ["http://fake"], opts, transport_factory=lambda u: srv.fake, log=lambda m: None
    )
    pid = srv.fake.posted[0][0]
    rec = data["jobs"]["long"]
    assert rec["status"] == "interrupted" and data["stopped"] == "Ctrl-C"
    assert rec["error"] == (
        f"interrupted (Ctrl-C): the interrupt was sent but prompt {pid} was still running on http://fake after 0.5 s"
    )
    assert len(srv.interrupts) >= 1


def test_ctrl_c_takes_a_pending_prompt_out_of_the_queue(tmp_path):
    srv = Running(pending=True)
    opts, _ = opts_for(tmp_path)
    _sigint_when(lambda: srv.fake.running)
    data = B.run_batch(
        _long_jobs()[:1], ["http://fake"], opts, transport_factory=lambda u: srv.fake, log=lambda m: None
    )
    pid = srv.fake.posted[0][0]
    rec = data["jobs"]["long"]
    assert rec["status"] == "interrupted" and srv.interrupts[0] == pid and not srv.fake.running
    assert rec["error"] == (
        f"interrupted (Ctrl-C): prompt {pid} was taken out of the queue of http://fake before it ran"
    )


def test_ctrl_c_keeps_a_prompt_that_finished_anyway(tmp_path):
    srv = Running("finish")
    opts, _ = opts_for(tmp_path)
    _sigint_when(lambda: srv.fake.running)
    data = B.run_batch(_long_jobs(), ["http://fake"], opts, transport_factory=lambda u: srv.fake, log=lambda m: None)
    rec = data["jobs"]["long"]
    assert rec["status"] == "ok" and rec["outputs"] and all(Path(p).is_file() for p in rec["outputs"]), rec
    assert data["jobs"]["next"]["status"] == "interrupted" and data["stopped"] == "Ctrl-C"


def test_ctrl_c_ends_a_retry_wait_at_once(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}"
    opts = B.Options(out_dir=tmp_path / "out", progress=False, retry=B.RetryPolicy(retries=3, backoff=30.0))
    logs: list = []
    _sigint_when(lambda: any("retry 1/3 in 30.0 s" in m for m in logs))
    t0 = time.monotonic()
    data = B.run_batch([job("a"), job("b")], [url], opts, log=logs.append)
    assert time.monotonic() - t0 < 10, "the 30 s backoff was cut short by Ctrl-C"
    assert data["jobs"]["a"]["status"] == "interrupted"
    assert data["jobs"]["a"]["error"] == "stopped (Ctrl-C) before the job finished"
    assert data["jobs"]["b"]["status"] == "interrupted" and data["stopped"] == "Ctrl-C"


def test_interrupt_deletes_from_the_queue_then_interrupts_that_prompt(mini):
    ComfyClient(mini.base_url).cancel("abc")
    sent = [(m, p, json.loads(b)) for m, p, b in mini.requests]
    assert sent == [("POST", "/queue", {"delete": ["abc"]}), ("POST", "/interrupt", {"prompt_id": "abc"})]


# ================================================================================================ SIGTERM, SIGHUP
def _signal_when(cond, signum, times=1, gap=0.3):
    """Send ``signum`` to this process once ``cond()`` holds (never, if it does not within 20 s)."""

    def go():
        deadline = time.monotonic() + 20
        while not cond():
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        for i in range(times):
            if i:
                time.sleep(gap)
            os.kill(os.getpid(), signum)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    return th


class _Guard:
    """While a test runs, a harmless handler for ``signum`` (recording it), so that a run_batch that does not handle
    the signal (the old client) fails the test's assertions instead of ending pytest."""

    def __init__(self, signum):
        self.signum, self.caught = signum, []

    def __enter__(self):
        self.handler = lambda s, f: self.caught.append(s)
        self.old = signal.signal(self.signum, self.handler)
        return self

    def __exit__(self, *exc):
        signal.signal(self.signum, self.old)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_like_the_first_ctrl_c(tmp_path, name):
    """What `docker stop`, systemd and `timeout` send (SIGTERM), or a closed terminal (SIGHUP): the running prompt
    is interrupted on the server, the job recorded ``interrupted``, the queued one "not run", summary.json written
    with ``"stopped": "<signal>"``; the test's own handler is back afterwards."""
    signum = getattr(signal, name)
    srv = Running("stop")
    opts, _ = opts_for(tmp_path)
    logs: list = []
    with _Guard(signum) as guard:
        _signal_when(lambda: srv.fake.running, signum)
        t0 = time.monotonic()
        data = B.run_batch(_long_jobs(), ["http://fake"], opts, transport_factory=lambda u: srv.fake, log=logs.append)
        took = time.monotonic() - t0
        assert guard.caught == [], "run_batch did not handle the signal"
        assert signal.getsignal(signum) is guard.handler, "the previous handler is restored"
    assert took < 10
    pid = srv.fake.posted[0][0]
    assert srv.interrupts and set(srv.interrupts) == {pid} and len(srv.fake.posted) == 1
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["stopped"] == name and on_disk["counts"] == {"interrupted": 2} and data["stopped"] == name
    long, nxt = on_disk["jobs"]["long"], on_disk["jobs"]["next"]
    assert (
        long["error"] == f"interrupted ({name}) at node 3 (SeedStoryGenerateStory); prompt {pid} stopped on http://fake"
    )
    assert nxt["error"] == f"not run: stopped ({name}) before it started; run the same command again to resume"
    assert any(
        f"{name}: interrupting the running prompt(s)" in m and f"press Ctrl-C or {name} again" in m for m in logs
    )


def test_a_second_sigterm_aborts_at_once_and_main_exits_143(tmp_path, monkeypatch, capsys):
    """Through the command's main(): SIGTERM twice (the server never confirms the interrupt) quits at once with
    exit 143, the job recorded; SIGTERM once exits 143 after the server stopped the prompt, SIGHUP once 129."""
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text(
        "".join(
            json.dumps(
                {
                    "id": j.id,
                    "image": str(START_PNG),
                    "text": "A boat sails.",
                    "frames": j.frames,
                    "overrides": j.overrides,
                }
            )
            + "\n"
            for j in _long_jobs()
        )
    )
    real_run_batch = B.cli.run_batch
    for name, times, on_interrupt, code, stopped in (
        ("SIGTERM", 2, "ignore", 143, "SIGTERM (aborted)"),
        ("SIGTERM", 1, "stop", 143, "SIGTERM"),
        ("SIGHUP", 1, "stop", 129, "SIGHUP"),
    ):
        srv = Running(on_interrupt)
        signum = getattr(signal, name)

        def fake_run(jobs, servers, opts, srv=srv, **kw):
            opts.interrupt_grace = 3.0
            return real_run_batch(jobs, servers, opts, transport_factory=lambda u: srv.fake, **kw)

        monkeypatch.setattr(B.cli, "run_batch", fake_run)
        out = tmp_path / f"out_{name}_{times}"
        with _Guard(signum) as guard:
            _signal_when(lambda srv=srv: srv.fake.running, signum, times=times)
            t0 = time.monotonic()
            rc = B.main([str(jobs_file), "-o", str(out), "-s", "http://fake", "--no-progress"])
            took = time.monotonic() - t0
        assert guard.caught == [] and rc == code, (name, times, rc, capsys.readouterr().err[-2000:])
        on_disk = json.loads((out / "summary.json").read_text())
        assert on_disk["stopped"] == stopped and on_disk["jobs"]["long"]["status"] == "interrupted"
        if times == 2:
            assert took < 3.0, f"a second SIGTERM must not wait for the server ({took:.1f} s)"
            assert on_disk["jobs"]["long"]["error"].startswith("aborted by a second SIGTERM while running; prompt ")
    assert B.EXIT_SIGTERM == 143 and B.EXIT_SIGHUP == 129 and B.EXIT_INTERRUPTED == 130


# ================================================================================================ dependencies
# for MiniComfy (no websocket): the client's websocket stays silent, so the runner polls /history (SilentWS)
_SILENT_WS = """
import time, websocket
from seedstory_client.client import ComfyClient
class _Silent:
    def settimeout(self, t): pass
    def recv(self):
        time.sleep(0.01)
        raise websocket.WebSocketTimeoutException("idle")
    def close(self): pass
ComfyClient.connect_ws = lambda self, timeout=30.0: _Silent()
"""


def _batch_without(modules, jobs_file: Path, out: Path, url: str, silent_ws=False) -> subprocess.CompletedProcess:
    """``python -m seedstory_client.batch`` in a fresh interpreter in which ``modules`` cannot be imported (as if
    they were not installed: ``sys.modules[name] = None`` makes ``import name`` raise ImportError); ``silent_ws``
    for MiniComfy."""
    code = (
        "import runpy, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    sys.modules[name] = None\n"
        + (_SILENT_WS if silent_ws else "")
        + f"sys.argv = ['seedstory-batch'] + {[str(jobs_file), '-o', str(out), '-s', url]!r}\n"
        "runpy.run_module('seedstory_client.batch', run_name='__main__', alter_sys=True)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=out.parent, env=cli_env(), capture_output=True, text=True, timeout=120
    )


def test_without_tqdm_the_batch_still_runs(mini, tmp_path):
    """tqdm only draws progress bars: without it the batch runs (progress on), the job is downloaded."""
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl",
        [{"id": "a", "image": str(START_PNG), "text": "Hi.", "frames": 1, "overrides": {"3.diffusion_steps": 1}}],
    )
    res = _batch_without(["tqdm"], jobs, tmp_path / "out", mini.base_url, silent_ws=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _summary(tmp_path / "out")["a"]["status"] == "ok"
    assert "job a: ok" in res.stderr


def test_a_missing_package_stops_the_batch_before_anything_is_queued(mini, tmp_path):
    """websocket-client and Pillow missing: one message names both (and how to install them) before the jobs file
    is even read; the server gets no request at all, no output folder is made."""
    jobs = _write_jobs(tmp_path / "jobs.jsonl", [{"id": "a", "image": str(START_PNG), "text": "Hi.", "frames": 1}])
    res = _batch_without(["websocket", "PIL"], jobs, tmp_path / "out", mini.base_url)
    assert res.returncode != 0
    assert (
        "seedstory-batch needs the Python package(s) websocket-client (module websocket), Pillow (module PIL), "
        "which " in res.stderr
    ), res.stderr[-3000:]
    assert "cannot import; nothing was run. Install the client: pip install ./seedstory_client" in res.stderr
    assert "-m pip install websocket-client Pillow" in res.stderr
    assert mini.requests == [] and not (tmp_path / "out").exists()


# ================================================================================================ real server
def _cli(jobs_file: Path, out: Path, *servers: str, extra=()) -> list:
    cmd = [sys.executable, "-m", "seedstory_client.batch", str(jobs_file), "-o", str(out), "--no-progress"]
    for s in servers:
        cmd += ["-s", s]
    return cmd + list(extra)


def _start_batch(cwd: Path, jobs_file: Path, out: Path, *servers: str, extra=()) -> subprocess.Popen:
    """``seedstory-batch`` started in the background (text pipes for stdout and stderr)."""
    return subprocess.Popen(
        _cli(jobs_file, out, *servers, extra=extra),
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _write_jobs(path: Path, objs) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def _summary(out: Path) -> dict:
    """OUT/summary.json's jobs ({} while it does not exist yet; it is always replaced atomically)."""
    try:
        return json.loads((out / "summary.json").read_text())["jobs"]
    except FileNotFoundError:
        return {}


def _running_prompt(client, proc, timeout=180.0) -> str:
    """The id of the prompt the server runs now (waits for one); fails if the batch process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = client.queue_state()["queue_running"]
        if running:
            return running[0][1]
        assert proc.poll() is None, f"seedstory-batch ended before its prompt ran:\n{proc.communicate()[1][-3000:]}"
        time.sleep(0.1)
    raise AssertionError("no prompt started running on the server")


def _gone_from_queue(client, prompt_id, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        q = client.queue_state()
        if not any(item[1] == prompt_id for key in ("queue_running", "queue_pending") for item in q[key]):
            return True
        time.sleep(0.2)
    return False


def _ctrl_c_running_prompt(client, proc, presses: int, timeout: float):
    """Once the server runs the batch's prompt (and 1 s more), Ctrl-C (SIGINT) ``presses`` times, 0.3 s apart, and
    wait for the batch process to end. Returns (the running prompt's id, the process's stderr, seconds from the last
    press to its end); the process is killed if it is still running when this returns or fails."""
    try:
        pid = _running_prompt(client, proc)
        time.sleep(1.0)
        for press in range(presses):
            if press:
                time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=timeout)
        return pid, err, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()


def _message_kinds(entry: dict) -> list:
    return [m[0] for m in (entry.get("status") or {}).get("messages") or []]


def _kill9(server) -> None:
    """``kill -9`` of a server started by seedstory_client.launcher.start (its own process group), like a crash or the
    OOM killer: no shutdown code runs. (Local helper: ServerHandle.stop() sends SIGTERM first.)"""
    os.killpg(server.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


LONG = {"3.diffusion_steps": 8}  # with 30 frames: far longer than the few seconds before the Ctrl-C


@pytest.mark.comfyui
def test_real_ctrl_c_interrupts_the_prompt_on_the_server_and_records_the_job(comfy_server, tmp_path):
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "long", "image": str(START_PNG), "text": "A long trip.", "frames": 30, "seed": 1, "overrides": LONG},
            {
                "id": "next",
                "image": str(START_PNG),
                "text": "Another.",
                "frames": 1,
                "seed": 2,
                "overrides": {"3.diffusion_steps": 1},
            },
        ],
    )
    client = comfy_server  # a ComfyClient of the session server
    out = tmp_path / "out"

    # ---- one Ctrl-C: the prompt is interrupted on the server, the job recorded, exit 130
    proc = _start_batch(tmp_path, jobs, out, comfy_server.base_url)
    pid, err, took = _ctrl_c_running_prompt(client, proc, presses=1, timeout=120)
    assert proc.returncode == B.EXIT_INTERRUPTED, err
    assert "Ctrl-C: interrupting the running prompt(s)" in err
    recs = _summary(out)
    assert set(recs) == {"long", "next"}, "no job vanishes from summary.json"
    assert recs["long"]["status"] == "interrupted" and recs["long"]["prompt_id"] == pid, recs["long"]
    assert recs["long"]["error"] == (
        f"interrupted (Ctrl-C) at node 3 (SeedStoryGenerateStory); prompt {pid} stopped on {comfy_server.base_url}"
    )
    assert recs["next"]["status"] == "interrupted" and recs["next"]["error"].startswith("not run: stopped (Ctrl-C)")
    assert json.loads((out / "summary.json").read_text())["stopped"] == "Ctrl-C"
    # the server: not running or queued any more, its history says interrupted, nothing saved for the job
    assert _gone_from_queue(client, pid, timeout=5)
    entry = client.history(pid)[pid]
    kinds = _message_kinds(entry)
    assert "execution_interrupted" in kinds and "execution_success" not in kinds, kinds
    assert entry["status"]["completed"] is False
    assert not (comfy_server.output_dir / "seedstory_batch" / "long").exists()
    assert f"Interrupting prompt {pid}" in comfy_server.log_text()
    print(f"\n[ctrl-c] one press: exit {proc.returncode} {took:.1f} s after SIGINT")

    # ---- two Ctrl-C: out at once; the running job is still recorded and the server still told to stop
    out2 = tmp_path / "out2"
    proc = _start_batch(tmp_path, jobs, out2, comfy_server.base_url)
    pid2, err, took2 = _ctrl_c_running_prompt(client, proc, presses=2, timeout=60)
    assert pid2 != pid
    assert proc.returncode == B.EXIT_INTERRUPTED, err
    assert took2 < 5.0, f"a second Ctrl-C must quit at once (took {took2:.1f} s)"
    recs = _summary(out2)
    assert recs["long"]["status"] == "interrupted" and recs["long"]["prompt_id"] == pid2
    assert recs["next"]["status"] == "interrupted"
    assert _gone_from_queue(client, pid2, timeout=60), "the server was told to stop the prompt"
    assert "execution_interrupted" in _message_kinds(client.history(pid2)[pid2])
    print(f"[ctrl-c] two presses: exit {proc.returncode} {took2:.1f} s after the second SIGINT")


N_JOBS = 20
KILL_AFTER = 6  # ok jobs before the kill


@pytest.mark.comfyui
@pytest.mark.slow
def test_kill9_mid_batch_then_resume_runs_every_job_exactly_once(comfy_server, tmp_path):
    """20 short jobs on server A; ``kill -9`` of A while a job runs (after KILL_AFTER are done); the client gives
    up on A ("not run: no reachable server (tried A...)"); a new server B (new port, fresh scratch folders) and
    ``seedstory-batch`` again on the same OUT finish the rest. Checked: every job ok in summary.json, the done
    ones skipped, each job's files exactly once locally and on the servers, no finished job executed again
    (the servers' logs and histories), and the model loader node ran once per server life."""
    t_start = time.monotonic()
    ids = [f"j{i:02d}" for i in range(N_JOBS)]
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {
                "id": jid,
                "image": str(START_PNG),
                "text": f"Story number {i}.",
                "frames": 1,
                "seed": i,
                "overrides": {"3.diffusion_steps": 1},
            }
            for i, jid in enumerate(ids)
        ],
    )
    out = tmp_path / "out"
    a = launcher.start(comfy_server.comfy_dir, python=sys.executable, scratch_dir=tmp_path / "srvA")
    b = None
    try:
        # ---- run 1 on A, killed mid-batch
        proc = _start_batch(tmp_path, jobs, out, a.base_url, extra=["--retries", "1", "--backoff", "0.5"])
        client_a = a.client()
        try:
            deadline = time.monotonic() + 600
            running = []
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"the batch ended before the kill:\n{proc.communicate()[1][-3000:]}"
                done = sum(1 for r in _summary(out).values() if r.get("status") == "ok")
                running = client_a.queue_state()["queue_running"] if done >= KILL_AFTER else []
                if running:
                    break
                time.sleep(0.05)
            assert running, "no job was running after KILL_AFTER jobs"
            killed_pid = running[0][1]
            _kill9(a)
            _, err1 = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        t_killed = time.monotonic()
        assert proc.returncode == B.EXIT_JOBS_FAILED, err1
        recs1 = _summary(out)
        assert set(recs1) == set(ids), "every job is in summary.json after the crash"
        ok1 = {j for j, r in recs1.items() if r["status"] == "ok"}
        lost = [j for j, r in recs1.items() if r.get("server_gone")]
        not_run = [j for j, r in recs1.items() if r["status"] != "ok" and not r.get("server_gone")]
        assert len(ok1) >= KILL_AFTER and len(lost) == 1 and recs1[lost[0]]["prompt_id"] == killed_pid, recs1
        assert recs1[lost[0]]["error"].startswith(f"server {a.base_url} unreachable after 2 attempt(s)")
        assert len(ok1) + 1 + len(not_run) == N_JOBS and not_run
        for j in not_run:
            assert recs1[j]["error"].startswith(f"not run: no reachable server (tried {a.base_url}: "), recs1[j]
        assert recs1[ids[0]]["status"] == "ok"  # the first job (the one that loaded the model) finished on A

        # ---- run 2 (resume) on a new server B
        b = launcher.start(comfy_server.comfy_dir, python=sys.executable, scratch_dir=tmp_path / "srvB")
        proc2 = subprocess.run(
            _cli(jobs, out, b.base_url), cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=900
        )
        assert proc2.returncode == 0, proc2.stderr[-3000:]
        recs2 = _summary(out)
        assert {j: r["status"] for j, r in recs2.items()} == {j: "ok" for j in ids}
        assert {j for j, r in recs2.items() if r.get("skipped")} == ok1
        assert all(recs2[j]["server"] == a.base_url and recs2[j]["prompt_id"] == recs1[j]["prompt_id"] for j in ok1)
        rerun = sorted(set(ids) - ok1)
        assert all(recs2[j]["server"] == b.base_url for j in rerun)

        # ---- local files: each job's outputs exactly once, nothing half-written
        pdf = B.load_template(B.DEFAULT_TEMPLATE_DIR / B.DEFAULT_TEMPLATE)["4"]["inputs"].get("pdf")
        expected = sorted(
            ["frame_000.png", "frame_001.png", "index.html", "story.json", "story.txt"] + (["story.pdf"] if pdf else [])
        )
        for j in ids:
            r = recs2[j]
            assert sorted(Path(p).name for p in r["outputs"]) == expected, r["outputs"]
            assert all(Path(p).parent == out / j and Path(p).is_file() for p in r["outputs"])
            assert sorted(p.name for p in (out / j).iterdir()) == sorted(expected + ["history.json", "prompt.json"])
            assert json.loads((out / j / "story.json").read_text())["frames"], j
        assert not [p for p in out.rglob("*") if ".tmp" in p.name], "no temporary files left"

        # ---- server side: one storybook per job, on the server that ran it; no finished job run again
        def books(server, j):
            return sorted((server.output_dir / "seedstory_batch" / j).glob("story_*/index.html"))

        for j in ids:
            on_a, on_b = books(a, j), books(b, j)
            if j in ok1:
                assert len(on_a) == 1 and not on_b, (j, on_a, on_b)
            else:
                assert len(on_b) == 1, (j, on_b)
                assert not on_a or j == lost[0], (j, on_a)  # only the killed prompt may have saved on A
        log_a, log_b = a.log_text(), b.log_text()
        assert log_a.count("got prompt") == len(ok1) + 1  # one prompt per job that ran on A, plus the killed one
        assert len(ok1) <= log_a.count("Prompt executed in") <= len(ok1) + 1
        assert log_b.count("got prompt") == len(rerun) == log_b.count("Prompt executed in")
        hist_b = b.client().history()
        prefixes_b = sorted(
            next(n["inputs"]["filename_prefix"] for n in e["prompt"][2].values() if n["class_type"] == B.SAVE_CLASS)
            for e in hist_b.values()
        )
        assert prefixes_b == [f"seedstory_batch/{j}/story" for j in rerun]
        assert all("execution_success" in _message_kinds(e) for e in hist_b.values())

        # ---- the model loads once per server life: ComfyUI ran the loader node (id "1") in exactly one prompt
        # of each life and served it from its cache in all the others. (The pack's loader prints nothing;
        # ComfyUI's history lists the cached nodes of each prompt. A's history died with it: the client's copy
        # of each finished prompt's history entry, OUT/<id>/history.json, is used for A.)
        def loader_ran(entry):
            cached = [m[1].get("nodes", []) for m in entry["status"]["messages"] if m[0] == "execution_cached"]
            assert len(cached) == 1, entry["status"]
            return "1" not in cached[0]

        life_a = [json.loads((out / j / "history.json").read_text()) for j in sorted(ok1)]
        assert [j for j, e in zip(sorted(ok1), life_a, strict=True) if loader_ran(e)] == [ids[0]]
        assert sum(loader_ran(e) for e in hist_b.values()) == 1
        # and ComfyUI's model manager moved the models in only while the first prompt of each life ran
        for log in (log_a, log_b):
            first_done = log.index("Prompt executed in")
            assert "Requested to load" in log[:first_done] and "Requested to load" not in log[first_done:]
        print(
            f"\n[kill -9] {len(ok1)} ok on A before the kill, {len(rerun)} resumed on B; "
            f"{t_killed - t_start:.0f} s to the kill, {time.monotonic() - t_start:.0f} s in all"
        )
    finally:
        if b is not None:
            b.stop()
        a.stop()


def _books(server, jid: str) -> list:
    """The storybooks the server saved for job ``jid`` (its Save Story folders)."""
    return sorted((server.output_dir / "seedstory_batch" / jid).glob("story_*/index.html"))


@pytest.mark.comfyui
def test_real_sigterm_interrupts_the_prompt_records_the_job_and_resume_does_not_duplicate(comfy_server, tmp_path):
    """``seedstory-batch`` in a subprocess gets SIGTERM (what `docker stop`, systemd and `timeout` send) while its
    long prompt runs: exit 143, the job ``interrupted`` in summary.json, the server's queue empty and its history
    interrupted within seconds, nothing saved. The resume (the long job shortened) saves each job's storybook once."""
    first = [
        {"id": "long", "image": str(START_PNG), "text": "A long trip.", "frames": 30, "seed": 1, "overrides": LONG},
        {"id": "next", "image": str(START_PNG), "text": "Another.", "frames": 1, "overrides": {"3.diffusion_steps": 1}},
    ]
    jobs = _write_jobs(tmp_path / "jobs.jsonl", first)
    client, out = comfy_server, tmp_path / "out"
    proc = _start_batch(tmp_path, jobs, out, comfy_server.base_url)
    try:
        pid = _running_prompt(client, proc)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == B.EXIT_SIGTERM == 143, err
    assert "SIGTERM: interrupting the running prompt(s)" in err
    data = json.loads((out / "summary.json").read_text())
    recs = data["jobs"]
    assert data["stopped"] == "SIGTERM" and set(recs) == {"long", "next"}
    assert recs["long"]["status"] == "interrupted" and recs["long"]["prompt_id"] == pid
    assert recs["long"]["error"] == (
        f"interrupted (SIGTERM) at node 3 (SeedStoryGenerateStory); prompt {pid} stopped on {comfy_server.base_url}"
    )
    assert recs["next"]["error"].startswith("not run: stopped (SIGTERM) before it started")
    assert _gone_from_queue(client, pid, timeout=5)
    q = client.queue_state()
    assert q["queue_running"] == [] and q["queue_pending"] == [], q
    kinds = _message_kinds(client.history(pid)[pid])
    assert "execution_interrupted" in kinds and "execution_success" not in kinds, kinds
    assert _books(comfy_server, "long") == []

    # resume: the same ids; the long job made short so that the test stays quick
    first[0].update(frames=1, overrides={"3.diffusion_steps": 1})
    _write_jobs(jobs, first)
    proc2 = subprocess.run(
        _cli(jobs, out, comfy_server.base_url), cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    recs2 = _summary(out)
    assert {j: r["status"] for j, r in recs2.items()} == {"long": "ok", "next": "ok"}
    assert len(_books(comfy_server, "long")) == 1 and len(_books(comfy_server, "next")) == 1
    print(f"\n[sigterm] exit {proc.returncode} {took:.1f} s after SIGTERM")


@pytest.mark.comfyui
def test_real_kill9_of_the_client_then_resume_queues_the_job_again(comfy_server, tmp_path):
    """``kill -9`` of seedstory-batch cannot be caught (kept as it was): no record is written for the running job,
    the prompt runs on to its end on the server, and the resume queues the same prompt again -- the job ends ``ok``
    once in summary.json and OUT/; the server ran it anew (two storybooks) or served it from its cache."""
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {
                "id": "k9",
                "image": str(START_PNG),
                "text": "A cat naps.",
                "frames": 6,
                "overrides": {"3.diffusion_steps": 3},
            }
        ],
    )
    client, out = comfy_server, tmp_path / "out"
    proc = _start_batch(tmp_path, jobs, out, comfy_server.base_url)
    try:
        pid = _running_prompt(client, proc)
        proc.kill()
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert "k9" not in _summary(out), "a killed client writes nothing more"
    assert _gone_from_queue(client, pid, timeout=300), "the orphaned prompt runs to its end"
    assert "execution_success" in _message_kinds(client.history(pid)[pid])
    proc2 = subprocess.run(
        _cli(jobs, out, comfy_server.base_url), cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    rec = _summary(out)["k9"]
    assert rec["status"] == "ok" and rec["prompt_id"] != pid
    assert sorted(p.name for p in (out / "k9").glob("frame_*.png")) == [f"frame_{i:03d}.png" for i in range(7)]
    # the same prompt again: ComfyUI ran it anew (a second storybook) or served it from its cache (the orphan's)
    again = client.history(rec["prompt_id"])[rec["prompt_id"]]
    assert again["prompt"][2] == client.history(pid)[pid]["prompt"][2]
    books = [str(p.relative_to(comfy_server.output_dir)) for p in _books(comfy_server, "k9")]
    assert rec["storybook"] in books and 1 <= len(books) <= 2, (rec["storybook"], books)


@pytest.mark.comfyui
def test_real_hostile_jobs_are_refused_before_queueing(comfy_server, tmp_path):
    """Against a real server: a non-picture image (a passwd-like file), ids CON and summary.json, a bad layout --
    each 'invalid' before queueing, the file's bytes never uploaded nor readable through GET /view; a binary jobs
    file exits 2 naming it; a job with layout "comic" and pdf true gets both inputs on Save Story and its PDF."""
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\nsecret-token-456\n")
    good = {"image": str(START_PNG), "text": "A red kite.", "frames": 1, "overrides": {"3.diffusion_steps": 1}}
    jobs = _write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {**good, "id": "leak", "image": str(secret)},
            {**good, "id": "CON"},
            {**good, "id": "summary.json"},
            {**good, "id": "poster", "layout": "poster"},
            {**good, "id": "comic", "layout": "comic", "pdf": True},
        ],
    )
    client, out = comfy_server, tmp_path / "out"
    prompts_before = comfy_server.log_text().count("got prompt")
    proc = subprocess.run(
        _cli(jobs, out, comfy_server.base_url), cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == B.EXIT_JOBS_FAILED, proc.stderr[-3000:]
    recs = _summary(out)
    assert {j: r["status"] for j, r in recs.items()} == {
        "leak": "invalid",
        "CON": "invalid",
        "summary.json": "invalid",
        "poster": "invalid",
        "comic": "ok",
    }, proc.stderr[-3000:]
    assert f"image {secret} is not a PNG, JPEG, WebP, BMP, GIF or TIFF picture" in recs["leak"]["error"]
    assert recs["CON"]["error"].startswith("job CON (line 2): the id 'CON' is a device name that Windows reserves")
    assert recs["summary.json"]["error"].startswith("job summary.json (line 3): the id 'summary.json' would name")
    assert "'layout' must be one of 'storybook', 'comic', 'strip', got 'poster'" in recs["poster"]["error"]
    assert not any("filename_prefix" in r["error"] for r in recs.values() if r["error"])
    assert all(r["prompt_id"] is None for j, r in recs.items() if j != "comic")
    assert comfy_server.log_text().count("got prompt") == prompts_before + 1  # the comic job only
    # nothing of the secret reached the server
    assert not [p for p in comfy_server.input_dir.rglob("*") if p.is_file() and b"secret-token-456" in p.read_bytes()]
    assert not list(comfy_server.input_dir.glob("seedstory_batch_leak*"))
    assert client.get("/view", params={"filename": "passwd", "type": "input"}).status_code == 404
    assert (out / "summary.json").is_file() and not (out / "CON").exists()
    # the comic job: both inputs reached Save Story, the PDF came back
    entry = client.history(recs["comic"]["prompt_id"])[recs["comic"]["prompt_id"]]
    save = next(n["inputs"] for n in entry["prompt"][2].values() if n["class_type"] == B.SAVE_CLASS)
    assert save["layout"] == "comic" and save["pdf"] is True
    assert Path(recs["comic"]["local_pdf"]).read_bytes().startswith(b"%PDF")
    # a binary jobs file: refused as a whole, naming the file; nothing queued
    binary = tmp_path / "start.jsonl"
    binary.write_bytes(START_PNG.read_bytes())
    proc = subprocess.run(
        _cli(binary, tmp_path / "out2", comfy_server.base_url),
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == B.EXIT_USAGE and f"seedstory-batch: {binary} " in proc.stderr, proc.stderr
    assert "codec" not in proc.stderr and comfy_server.log_text().count("got prompt") == prompts_before + 1
