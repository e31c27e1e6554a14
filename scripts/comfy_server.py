"""Start/stop a real ComfyUI server and talk to it over HTTP and the websocket.

Library use (the tests do this)::

    from comfy_server import start
    with start("/path/to/ComfyUI") as server:          # free port on 127.0.0.1, --cpu
        client = server.client()
        result = client.run({"1": {...}, "2": {...}})   # POST /prompt + follow /ws
        png = client.view(**result.images()[0])         # GET /view

CLI (a server for you to use, like a hand-started ComfyUI)::

    python scripts/comfy_server.py start [--comfy-dir DIR] [--port N|auto] [--scratch-dir DIR] [--state FILE] [-- ARGS...]
    python scripts/comfy_server.py status [--state FILE]
    python scripts/comfy_server.py stop [--state FILE]

``start`` leaves the server running in the background on 127.0.0.1:8188 (``--port auto``: a free port) and
writes its pid, URL, log and folders to the state file (default ``<repo>/.comfyui/server.json``); ``stop`` reads
it. ``--comfy-dir`` defaults to ``$COMFYUI_DIR``, else ``<repo>/.comfyui/ComfyUI-0.30.0``. It uses the ComfyUI
tree's own ``input/`` and ``output/`` folders (storybooks land in ``<ComfyUI>/output/seedstory/``), and in a tree
that scripts/provision_comfyui.sh made it first refreshes the pack's copy in ``custom_nodes/seedstory``. With
``--scratch-dir DIR`` the input/output/temp/user folders are DIR's instead (the demo does this).

The tests use :func:`start` with a scratch folder per server: ``input/ output/ temp/ user/``, a file SQLite
database (``sqlite:///:memory:`` gives cross-thread errors in 0.3.75) and, with ``pack=True``, ComfyUI's
``--base-directory`` with the pack copied into its ``custom_nodes``, so test runs never touch the ComfyUI tree.
Needs ``requests`` and ``websocket-client``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import requests
import websocket  # websocket-client

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMFY_DIR = REPO_ROOT / ".comfyui" / "ComfyUI-0.30.0"
DEFAULT_STATE_FILE = REPO_ROOT / ".comfyui" / "server.json"
DEFAULT_PORT = 8188  # ComfyUI's own default; the README's API examples use it
HOST = "127.0.0.1"

BINARY_PREVIEW_IMAGE = 1
BINARY_UNENCODED_PREVIEW_IMAGE = 2
BINARY_TEXT = 3
BINARY_PREVIEW_IMAGE_WITH_METADATA = 4


class ComfyServerError(RuntimeError):
    """The server did not start, died, or did not answer in time."""


class ComfyPromptError(RuntimeError):
    """POST /prompt was refused (validation). ``body`` is the server's JSON answer."""

    def __init__(self, status_code: int, body: Any):
        self.status_code = status_code
        self.body = body
        self.node_errors: dict = body.get("node_errors", {}) if isinstance(body, dict) else {}
        self.error: dict = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"POST /prompt -> HTTP {status_code}: {json.dumps(body)[:2000]}")


# --------------------------------------------------------------------------------------
# Server process
# --------------------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _supports_flag(comfy_dir: Path, flag: str) -> bool:
    try:
        return flag in (comfy_dir / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    except OSError:
        return False


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass
class ServerHandle:
    """A running ComfyUI server started by :func:`start`."""

    comfy_dir: Path
    port: int
    process: subprocess.Popen | None
    pid: int
    log_path: Path
    scratch_dir: Path
    command: list[str] = field(default_factory=list)
    host: str = HOST

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    own_folders: bool = False

    @property
    def _folders(self) -> Path:
        return self.comfy_dir if self.own_folders else self.scratch_dir

    @property
    def input_dir(self) -> Path:
        return self._folders / "input"

    @property
    def output_dir(self) -> Path:
        return self._folders / "output"

    @property
    def temp_dir(self) -> Path:
        # ComfyUI appends "temp" to --temp-directory; its own default is <tree>/temp
        return self.comfy_dir / "temp" if self.own_folders else self.scratch_dir / "temp" / "temp"

    @property
    def user_dir(self) -> Path:
        return self._folders / "user"

    def client(self, client_id: str | None = None) -> "ComfyClient":
        return ComfyClient(self.base_url, client_id=client_id)

    def is_running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _pid_alive(self.pid)

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL after ``timeout`` s. Returns the exit code."""
        return _stop_pid(self.pid, self.process, timeout)

    def to_json(self) -> dict:
        return {
            "pid": self.pid,
            "port": self.port,
            "base_url": self.base_url,
            "comfy_dir": str(self.comfy_dir),
            "log_path": str(self.log_path),
            "scratch_dir": str(self.scratch_dir),
            "command": self.command,
            "own_folders": self.own_folders,
        }

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still "exists"; treat it as dead
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_our_server(pid: int, port: int) -> bool:
    """The pid still runs ComfyUI's main.py on ``port`` (guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid
    return b"main.py" in args and str(port).encode() in args


def _stop_pid(pid: int, process: subprocess.Popen | None, timeout: float) -> int | None:
    def signal_group(sig: int) -> None:
        try:
            os.killpg(pid, sig)  # started with start_new_session=True: pgid == pid
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)

    def wait(t: float) -> bool:
        if process is not None:
            try:
                process.wait(t)
                return True
            except subprocess.TimeoutExpired:
                return False
        end = time.monotonic() + t
        while time.monotonic() < end:
            if not _pid_alive(pid):
                return True
            time.sleep(0.2)
        return not _pid_alive(pid)

    if process is not None and process.poll() is not None:
        return process.returncode
    signal_group(signal.SIGTERM)
    if not wait(timeout):
        signal_group(signal.SIGKILL)
        wait(10)
    return process.returncode if process is not None else None


def start(
    comfy_dir: str | os.PathLike,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    *,
    python: str | None = None,
    scratch_dir: str | os.PathLike | None = None,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    pack: bool = True,
    own_folders: bool = False,
) -> ServerHandle:
    """Start ComfyUI from ``comfy_dir`` and wait until ``GET /object_info`` answers.

    Args:
        comfy_dir: the ComfyUI tree (has ``main.py``).
        port: TCP port on 127.0.0.1; ``None`` picks a free one (retried if it gets taken).
        extra_args: more ``main.py`` arguments (e.g. ``["--cache-none"]``).
        python: interpreter to run it with (default: this one, ``sys.executable``).
        scratch_dir: where input/output/temp/user, the database and ``comfyui.log`` go
            (default: a new temporary folder).
        timeout: seconds to wait for the server to answer.
        env: extra environment variables for the server.
        pack: (default True) make ``scratch_dir`` ComfyUI's base directory (``--base-directory``: its ``custom_nodes`` and
            ``models`` are used instead of the tree's) and COPY this pack into ``scratch_dir/custom_nodes/seedstory``
            (scripts/install_pack.py) -- the pack exactly as a user installs it, isolated from other servers
            and from whatever the ComfyUI tree's own ``custom_nodes`` holds. False: the tree's own
            ``custom_nodes`` and ``models`` (the CLI's ``start``).
        own_folders: use the ComfyUI tree's own ``input/``, ``output/``, ``temp/`` and ``user/`` folders (as a
            user's hand-started ComfyUI does) instead of scratch ones; the log still goes to ``scratch_dir``.

    Returns:
        A :class:`ServerHandle`; call ``stop()`` (or use it as a context manager).

    Raises:
        ComfyServerError: the server exited or did not answer in time (message has the log tail).
    """
    comfy_dir = Path(comfy_dir).resolve()
    if not (comfy_dir / "main.py").is_file():
        raise ComfyServerError(f"{comfy_dir} is not a ComfyUI folder (no main.py)")
    scratch = Path(scratch_dir) if scratch_dir else Path(tempfile.mkdtemp(prefix="comfyui-run-"))
    scratch = scratch.resolve()
    for sub in ("input", "output", "temp", "user"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    if pack:
        from install_pack import copy_pack  # scripts/ is on sys.path when this module is imported

        copy_pack(scratch / "custom_nodes" / "seedstory")
        (scratch / "models").mkdir(exist_ok=True)

    attempts = 1 if port is not None else 3
    last_error: Exception | None = None
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        try:
            return _start_once(comfy_dir, chosen, extra_args, python, scratch, timeout, env, attempt, pack,
                               own_folders)
        except _PortTaken as e:
            last_error = e
    raise ComfyServerError(f"could not bind a port for ComfyUI: {last_error}")


class _PortTaken(ComfyServerError):
    pass


def _start_once(comfy_dir, port, extra_args, python, scratch, timeout, env, attempt, pack=False,
                own_folders=False) -> ServerHandle:
    log_path = scratch / ("comfyui.log" if attempt == 0 else f"comfyui.{attempt}.log")
    cmd = [
        python or sys.executable, "-u", "main.py",
        "--listen", HOST, "--port", str(port), "--cpu",
        "--disable-auto-launch",
    ]
    if pack:
        cmd += ["--base-directory", str(scratch)]
    if not own_folders:
        cmd += [
            "--input-directory", str(scratch / "input"),
            "--output-directory", str(scratch / "output"),
            "--temp-directory", str(scratch / "temp"),
            "--user-directory", str(scratch / "user"),
        ]
        if _supports_flag(comfy_dir, "--database-url"):
            cmd += ["--database-url", f"sqlite:///{scratch / 'comfyui.db'}"]
    cmd += list(extra_args)
    proc_env = dict(os.environ)
    proc_env["PYTHONUNBUFFERED"] = "1"
    proc_env.pop("PYTEST_CURRENT_TEST", None)
    # ComfyUI loads the pack from custom_nodes only: never from this repository through PYTHONPATH (the tests
    # export it for their own subprocesses, see tests/support/comfy_harness.py)
    here = {str(REPO_ROOT), str(REPO_ROOT.resolve())}
    kept = [p for p in proc_env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in here]
    if kept:
        proc_env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        proc_env.pop("PYTHONPATH", None)
    if env:
        proc_env.update(env)
    with open(log_path, "wb") as log:
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        process = subprocess.Popen(
            cmd, cwd=comfy_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=proc_env, start_new_session=True,
        )
    handle = ServerHandle(comfy_dir, port, process, process.pid, log_path, scratch, cmd, own_folders=own_folders)
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            tail = _tail(log_path)
            if "address already in use" in tail.lower() or "errno 98" in tail.lower():
                raise _PortTaken(f"port {port} taken")
            raise ComfyServerError(
                f"ComfyUI exited with code {code} before answering; log {log_path}:\n{tail}"
            )
        try:
            r = requests.get(f"{handle.base_url}/object_info", timeout=10)
            if r.status_code == 200 and isinstance(r.json(), dict):
                return handle
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline:
            handle.stop()
            raise ComfyServerError(
                f"ComfyUI did not answer GET /object_info within {timeout:.0f} s; "
                f"log {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.5)


# --------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What the websocket said about one prompt, plus its ``/history`` entry."""

    prompt_id: str
    number: int | None = None
    events: list[dict] = field(default_factory=list)  # every JSON message for this prompt
    progress: list[dict] = field(default_factory=list)  # "progress" data, in order
    executed: dict[str, dict] = field(default_factory=dict)  # node id -> ui output
    cached: list[str] = field(default_factory=list)  # node ids served from the cache
    error: dict | None = None  # "execution_error" data
    interrupted: dict | None = None  # "execution_interrupted" data
    success: bool = False  # "execution_success" was seen
    texts: list[tuple[str, str]] = field(default_factory=list)  # binary type 3: (node id, text)
    previews: list[tuple[int, bytes]] = field(default_factory=list)  # binary types 1/2/4
    history: dict | None = None  # GET /history/{id} [id]
    node_errors: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        if self.interrupted is not None:
            return "interrupted"
        return "success" if self.success else "unknown"

    def outputs(self) -> dict:
        """``history["outputs"]`` (node id -> ui output), or what ``executed`` reported."""
        if self.history and "outputs" in self.history:
            return self.history["outputs"]
        return self.executed

    def images(self) -> list[dict]:
        """Every ``{"filename","subfolder","type"}`` image in the outputs."""
        return [img for out in self.outputs().values() for img in out.get("images", [])]


class ComfyClient:
    """A small client for ComfyUI's HTTP API and websocket (see COMFYUI_NOTES §7)."""

    def __init__(self, base_url: str, client_id: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.session = requests.Session()

    # ---- plain HTTP ------------------------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=kw.pop("timeout", self.timeout), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.session.post(self.base_url + path, timeout=kw.pop("timeout", self.timeout), **kw)

    def object_info(self, node_class: str | None = None) -> dict:
        r = self.get("/object_info" + (f"/{node_class}" if node_class else ""))
        r.raise_for_status()
        return r.json()

    def system_stats(self) -> dict:
        r = self.get("/system_stats")
        r.raise_for_status()
        return r.json()

    def queue_state(self) -> dict:
        r = self.get("/queue")
        r.raise_for_status()
        return r.json()

    def post_prompt(self, prompt: dict, *, extra_data: dict | None = None,
                    prompt_id: str | None = None, front: bool = False) -> requests.Response:
        """POST /prompt and return the raw response (no status check)."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if prompt_id:
            body["prompt_id"] = prompt_id
        if front:
            body["front"] = True
        return self.post("/prompt", json=body)

    def queue_prompt(self, prompt: dict, **kw) -> dict:
        """POST /prompt; returns ``{"prompt_id","number","node_errors"}``.

        Raises:
            ComfyPromptError: the server refused the prompt (its ``node_errors`` attached).
        """
        r = self.post_prompt(prompt, **kw)
        try:
            body = r.json()
        except ValueError:
            body = {"error": {"type": "non_json_response", "message": r.text[:2000]}}
        if r.status_code != 200:
            raise ComfyPromptError(r.status_code, body)
        return body

    def history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict:
        path = f"/history/{prompt_id}" if prompt_id else "/history"
        r = self.get(path, params={"max_items": max_items} if max_items else None)
        r.raise_for_status()
        return r.json()

    def view(self, filename: str, subfolder: str = "", type: str = "output", **params) -> bytes:
        """GET /view: the bytes of an output/input/temp file."""
        r = self.get("/view", params={"filename": filename, "subfolder": subfolder, "type": type, **params})
        r.raise_for_status()
        return r.content

    def interrupt(self, prompt_id: str | None = None) -> requests.Response:
        r = self.post("/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})
        r.raise_for_status()
        return r

    def free(self, unload_models: bool = True, free_memory: bool = True) -> requests.Response:
        r = self.post("/free", json={"unload_models": unload_models, "free_memory": free_memory})
        r.raise_for_status()
        return r

    def upload_image(self, image: str | os.PathLike | bytes, name: str | None = None,
                     subfolder: str = "", overwrite: bool = True, type: str = "input") -> dict:
        """POST /upload/image; returns ``{"name","subfolder","type"}``."""
        if isinstance(image, (bytes, bytearray)):
            data, name = bytes(image), name or "upload.png"
        else:
            path = Path(image)
            data, name = path.read_bytes(), name or path.name
        r = self.post(
            "/upload/image",
            files={"image": (name, data, "image/png")},
            data={"overwrite": "true" if overwrite else "false", "subfolder": subfolder, "type": type},
        )
        r.raise_for_status()
        return r.json()

    # ---- websocket -------------------------------------------------------------------
    def connect_ws(self, timeout: float = 30.0) -> websocket.WebSocket:
        ws_url = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        ws = websocket.WebSocket()
        ws.connect(f"{ws_url}/ws?clientId={self.client_id}", timeout=timeout)
        return ws

    def follow(self, ws: websocket.WebSocket, prompt_id: str, timeout: float = 600.0,
               on_event: Callable[[RunResult, dict | None, bytes | None], None] | None = None,
               result: RunResult | None = None) -> RunResult:
        """Read the websocket until ``executing`` with ``node: null`` for ``prompt_id``.

        ``on_event(result, message, binary)`` is called for every frame (e.g. to interrupt).
        Raises TimeoutError when the prompt has not finished within ``timeout`` s.
        """
        res = result or RunResult(prompt_id)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s "
                                   f"(last events: {[e.get('type') for e in res.events[-5:]]})")
            ws.settimeout(min(left, 5.0))
            try:
                frame = ws.recv()
            except websocket.WebSocketTimeoutException:
                continue
            if isinstance(frame, (bytes, bytearray)):
                self._binary(res, bytes(frame))
                if on_event:
                    on_event(res, None, bytes(frame))
                continue
            msg = json.loads(frame)
            data = msg.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            kind = msg.get("type")
            if data.get("prompt_id") == prompt_id:
                res.events.append(msg)
            if kind == "progress" and data.get("prompt_id") == prompt_id:
                res.progress.append(data)
            elif kind == "executed" and data.get("prompt_id") == prompt_id:
                res.executed[str(data.get("node"))] = data.get("output") or {}
            elif kind == "execution_cached" and data.get("prompt_id") == prompt_id:
                res.cached.extend(str(n) for n in data.get("nodes", []))
            elif kind == "execution_error" and data.get("prompt_id") == prompt_id:
                res.error = data
            elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                res.interrupted = data
            elif kind == "execution_success" and data.get("prompt_id") == prompt_id:
                res.success = True
            if on_event:
                on_event(res, msg, None)
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return res

    @staticmethod
    def _binary(res: RunResult, frame: bytes) -> None:
        if len(frame) < 4:
            return
        (kind,) = struct.unpack(">I", frame[:4])
        body = frame[4:]
        if kind == BINARY_TEXT and len(body) >= 4:
            (n,) = struct.unpack(">I", body[:4])
            node = body[4:4 + n].decode("utf-8", errors="replace")
            res.texts.append((node, body[4 + n:].decode("utf-8", errors="replace")))
        else:
            res.previews.append((kind, body))

    def run(self, prompt: dict, timeout: float = 600.0, *, extra_data: dict | None = None,
            on_event: Callable[[RunResult, dict | None, bytes | None], None] | None = None,
            fetch_history: bool = True) -> RunResult:
        """Queue ``prompt`` (API format), follow it to the end, then read ``/history``.

        Raises:
            ComfyPromptError: the prompt was refused at validation.
            TimeoutError: it did not finish within ``timeout`` s.
        """
        ws = self.connect_ws()
        try:
            queued = self.queue_prompt(prompt, extra_data=extra_data)
            res = RunResult(queued["prompt_id"], queued.get("number"),
                            node_errors=queued.get("node_errors") or {})
            self.follow(ws, res.prompt_id, timeout, on_event=on_event, result=res)
        finally:
            ws.close()
        if fetch_history:
            res.history = self.history(res.prompt_id).get(res.prompt_id)
        return res


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _cli(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Start/stop a ComfyUI server for seedstory.")
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("start", help="start in the background; prints URL, PID, log")
    ps.add_argument("--comfy-dir", default=os.environ.get("COMFYUI_DIR") or str(DEFAULT_COMFY_DIR))
    ps.add_argument("--port", default=str(DEFAULT_PORT), help=f"TCP port (default {DEFAULT_PORT}; 'auto': a free one)")
    ps.add_argument("--scratch-dir", default=None,
                    help="input/output/temp/user folder (default: the ComfyUI tree's own folders)")
    ps.add_argument("--timeout", type=float, default=300.0)
    ps.add_argument("--state", default=str(DEFAULT_STATE_FILE))
    ps.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more main.py arguments")
    for name in ("stop", "status"):
        q = sub.add_parser(name)
        q.add_argument("--state", default=str(DEFAULT_STATE_FILE))
    a = p.parse_args(list(argv) if argv is not None else None)
    state = Path(a.state)

    if a.cmd == "start":
        if state.exists():
            old = json.loads(state.read_text())
            if _pid_alive(old["pid"]) and _is_our_server(old["pid"], old["port"]):
                print(f"already running: {old['base_url']} (pid {old['pid']}, state {state})", file=sys.stderr)
                print(old["base_url"])
                return 0
        extra = [x for x in a.extra if x != "--"]
        port = None if a.port == "auto" else int(a.port)
        comfy = Path(a.comfy_dir)
        if (comfy / ".seedstory_provisioned").is_file():  # ours, not a user's own ComfyUI: refresh the pack copy
            from install_pack import copy_pack

            copy_pack(comfy / "custom_nodes" / "seedstory")
        own = a.scratch_dir is None
        scratch = a.scratch_dir or str(state.parent / "server_logs")
        h = start(comfy, port, extra, scratch_dir=scratch, timeout=a.timeout, pack=False, own_folders=own)
        h.process = None  # leave it running after we exit
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(h.to_json(), indent=2))
        print(f"ComfyUI running at {h.base_url} (pid {h.pid})\n  log:    {h.log_path}\n"
              f"  input:  {h.input_dir}\n  output: {h.output_dir}\n  state:  {state}", file=sys.stderr)
        print(h.base_url)
        return 0

    if not state.exists():
        print(f"no server state at {state}", file=sys.stderr)
        return 0 if a.cmd == "stop" else 1
    info = json.loads(state.read_text())
    alive = _pid_alive(info["pid"]) and _is_our_server(info["pid"], info["port"])
    if a.cmd == "status":
        print(json.dumps({**info, "running": alive}, indent=2))
        return 0 if alive else 1
    if alive:
        _stop_pid(info["pid"], None, 20.0)
        print(f"stopped ComfyUI pid {info['pid']} ({info['base_url']})", file=sys.stderr)
    else:
        print(f"ComfyUI pid {info['pid']} was not running", file=sys.stderr)
    state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
