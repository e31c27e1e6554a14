"""Start/stop a real ComfyUI server (ports, logs, scratch folders, the pack's copy in custom_nodes).

Talking to it is :mod:`seedstory_client.client` (``ComfyClient``: HTTP + websocket); this module only manages the
process.

Library use (the tests do this)::

    from seedstory_client.launcher import start
    with start("/path/to/ComfyUI") as server:          # free port on 127.0.0.1, --cpu
        client = server.client()                        # a seedstory_client.client.ComfyClient
        result = client.run({"1": {...}, "2": {...}})   # POST /prompt + follow /ws
        png = client.view(**result.images()[0])         # GET /view

CLI (scripts/comfy_server.py: a server for you to use, like a hand-started ComfyUI)::

    python scripts/comfy_server.py start [--comfy-dir DIR] [--port N|auto] [--scratch-dir DIR] [--state FILE]
                                         [-- ARGS...]
    python scripts/comfy_server.py status [--state FILE]
    python scripts/comfy_server.py stop [--state FILE]

``start`` (:func:`start_detached`) leaves the server running in the background on 127.0.0.1:8188 (``--port auto``:
a free port) and writes its pid, URL, log and folders to the state file (default ``<repo>/.comfyui/server.json``);
``stop`` (:func:`stop_recorded`) reads it. ``--comfy-dir`` defaults to ``$COMFYUI_DIR``, else
``<repo>/.comfyui/ComfyUI-0.30.0``. It uses the ComfyUI tree's own ``input/`` and ``output/`` folders (storybooks
land in ``<ComfyUI>/output/seedstory/``), and in a tree that scripts/provision_comfyui.sh made it first refreshes
the pack's copy in ``custom_nodes/seedstory``. With ``--scratch-dir DIR`` the input/output/temp/user folders are
DIR's instead (the demo does this). ``<repo>`` is the checkout holding this package
(:data:`seedstory_client.install.REPO_ROOT`), which is also the pack that gets copied.

The tests use :func:`start` with a scratch folder per server: ``input/ output/ temp/ user/``, a file SQLite
database (``sqlite:///:memory:`` gives cross-thread errors in 0.3.75) and, with ``pack=True``, ComfyUI's
``--base-directory`` with the pack copied into its ``custom_nodes``, so test runs never touch the ComfyUI tree.
Needs the ``client`` extra (``requests``, ``websocket-client``) for :mod:`seedstory_client.client`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .client import ComfyClient, connection_errors
from .errors import HTTPFailure
from .install import REPO_ROOT, copy_pack

DEFAULT_COMFY_DIR = REPO_ROOT / ".comfyui" / "ComfyUI-0.30.0"
DEFAULT_STATE_FILE = REPO_ROOT / ".comfyui" / "server.json"
DEFAULT_PORT = 8188  # ComfyUI's own default; the README's API examples use it
HOST = "127.0.0.1"


class ComfyServerError(RuntimeError):
    """The server did not start, died, or did not answer in time."""


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

    def client(self, client_id: str | None = None) -> ComfyClient:
        """A :class:`seedstory_client.client.ComfyClient` for this server."""
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
        pack: (default True) make ``scratch_dir`` ComfyUI's base directory (``--base-directory``: its
            ``custom_nodes`` and ``models`` are used instead of the tree's) and COPY this pack into
            ``scratch_dir/custom_nodes/seedstory`` (:func:`seedstory_client.install.copy_pack`) -- the pack exactly
            as a user installs it, isolated from other servers and from whatever the ComfyUI tree's own
            ``custom_nodes`` holds. False: the tree's own
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
        copy_pack(scratch / "custom_nodes" / "seedstory")
        (scratch / "models").mkdir(exist_ok=True)

    attempts = 1 if port is not None else 3
    last_error: Exception | None = None
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        try:
            return _start_once(comfy_dir, chosen, extra_args, python, scratch, timeout, env, attempt, pack, own_folders)
        except _PortTaken as e:
            last_error = e
    raise ComfyServerError(f"could not bind a port for ComfyUI: {last_error}")


class _PortTaken(ComfyServerError):
    pass


def _start_once(
    comfy_dir, port, extra_args, python, scratch, timeout, env, attempt, pack=False, own_folders=False
) -> ServerHandle:
    log_path = scratch / ("comfyui.log" if attempt == 0 else f"comfyui.{attempt}.log")
    cmd = [
        python or sys.executable,
        "-u",
        "main.py",
        "--listen",
        HOST,
        "--port",
        str(port),
        "--cpu",
        "--disable-auto-launch",
    ]
    if pack:
        cmd += ["--base-directory", str(scratch)]
    if not own_folders:
        cmd += [
            "--input-directory",
            str(scratch / "input"),
            "--output-directory",
            str(scratch / "output"),
            "--temp-directory",
            str(scratch / "temp"),
            "--user-directory",
            str(scratch / "user"),
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
            cmd,
            cwd=comfy_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=proc_env,
            start_new_session=True,
        )
    handle = ServerHandle(comfy_dir, port, process, process.pid, log_path, scratch, cmd, own_folders=own_folders)
    probe = ComfyClient(handle.base_url, timeout=10)
    deadline = time.monotonic() + timeout
    while True:
        code = process.poll()
        if code is not None:
            tail = _tail(log_path)
            if "address already in use" in tail.lower() or "errno 98" in tail.lower():
                raise _PortTaken(f"port {port} taken")
            raise ComfyServerError(f"ComfyUI exited with code {code} before answering; log {log_path}:\n{tail}")
        try:
            if isinstance(probe.object_info(), dict):
                return handle
        except (HTTPFailure, ValueError, *connection_errors()):
            pass
        if time.monotonic() > deadline:
            handle.stop()
            raise ComfyServerError(
                f"ComfyUI did not answer GET /object_info within {timeout:.0f} s; log {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.5)


# --------------------------------------------------------------------------------------
# A background server and its state file (scripts/comfy_server.py start|stop|status)
# --------------------------------------------------------------------------------------


def recorded_server(state: str | os.PathLike) -> dict | None:
    """The server a state file records (:meth:`ServerHandle.to_json`) plus ``"running"``: whether its pid still
    runs ComfyUI on its port. None when there is no state file.

    Raises:
        OSError, ValueError: the state file cannot be read or is not JSON.
    """
    state = Path(state)
    if not state.exists():
        return None
    info = json.loads(state.read_text())
    return {**info, "running": _pid_alive(info["pid"]) and _is_our_server(info["pid"], info["port"])}


def start_detached(
    comfy_dir: str | os.PathLike,
    port: int | None,
    extra_args: Sequence[str] = (),
    *,
    state: str | os.PathLike = DEFAULT_STATE_FILE,
    scratch_dir: str | os.PathLike | None = None,
    timeout: float = 300.0,
) -> ServerHandle:
    """Start ComfyUI to keep running after this process exits, and record it in the ``state`` file.

    A tree that scripts/provision_comfyui.sh made (``.seedstory_provisioned``) first gets a fresh copy of the pack
    in its ``custom_nodes/seedstory``; another ComfyUI (a user's own) is left as it is. The server uses the tree's
    own ``custom_nodes`` and ``models``, and its own input/output/temp/user folders unless ``scratch_dir`` is given;
    the log goes to ``scratch_dir``, else to ``<state folder>/server_logs``.

    Args:
        comfy_dir: the ComfyUI tree (has ``main.py``).
        port: TCP port on 127.0.0.1; ``None`` picks a free one.
        extra_args: more ``main.py`` arguments.
        state: the state file to write (its folder is created).
        scratch_dir: input/output/temp/user folder instead of the tree's own.
        timeout: seconds to wait for the server to answer.

    Returns:
        The :class:`ServerHandle` (``process`` None: stopping it is :func:`stop_recorded`'s job).

    Raises:
        ComfyServerError: the server exited or did not answer in time.
        OSError: the pack could not be copied or the state file written.
    """
    state = Path(state)
    comfy = Path(comfy_dir)
    if (comfy / ".seedstory_provisioned").is_file():  # ours, not a user's own ComfyUI: refresh the pack copy
        copy_pack(comfy / "custom_nodes" / "seedstory")
    own = scratch_dir is None
    scratch = scratch_dir or str(state.parent / "server_logs")
    h = start(comfy, port, extra_args, scratch_dir=scratch, timeout=timeout, pack=False, own_folders=own)
    h.process = None  # leave it running after we exit
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(h.to_json(), indent=2))
    return h


def stop_recorded(state: str | os.PathLike, timeout: float = 20.0) -> dict | None:
    """Stop the server a state file records (SIGTERM, SIGKILL after ``timeout`` s) and delete the file.

    Returns:
        :func:`recorded_server`'s record from before the stop (``"running"``: whether there was a server to stop),
        or None when there is no state file.

    Raises:
        OSError, ValueError: the state file cannot be read or is not JSON.
    """
    info = recorded_server(state)
    if info is None:
        return None
    if info["running"]:
        _stop_pid(info["pid"], None, timeout)
    Path(state).unlink()
    return info
