"""A client for one ComfyUI server: its HTTP API and its websocket (``requests`` + ``websocket-client``).

::

    from seedstory_client.client import ComfyClient
    client = ComfyClient("http://127.0.0.1:8188")
    result = client.run({"1": {...}, "2": {...}})       # POST /prompt, follow /ws, GET /history/{id}
    png = client.view(**result.images()[0])             # GET /view

Routes (ComfyUI's server.py): ``GET /object_info[/{class}]``, ``GET /system_stats``, ``GET /queue``,
``POST /queue {"delete": [...]}``, ``POST /prompt``, ``GET /history[/{id}]``, ``GET /view``, ``POST /upload/image``,
``POST /interrupt``, ``POST /free`` and the websocket ``/ws?clientId=...``.

Errors (:mod:`seedstory_client.errors`): an HTTP error answer raises :class:`HTTPFailure` (``POST /prompt``:
:class:`PromptRefused`, with the server's ``node_errors``); a broken connection raises the HTTP library's own
exception, which :func:`is_connection_error` recognises. The raw :meth:`ComfyClient.get` / :meth:`ComfyClient.post`
/ :meth:`ComfyClient.post_prompt` return the response unchecked.
"""

from __future__ import annotations

import errno
import json
import mimetypes
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

try:
    import requests
    import websocket  # websocket-client
except ImportError as _missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"seedstory_client needs requests and websocket-client ({_missing}); install the client: "
        "pip install ./seedstory_client (from the seedstory folder)"
    ) from _missing

from .errors import HTTPFailure, PromptRefused

# binary websocket frames: a 4-byte big-endian event type, then the payload (ComfyUI's protocol.py)
BINARY_PREVIEW_IMAGE = 1
BINARY_UNENCODED_PREVIEW_IMAGE = 2
BINARY_TEXT = 3
BINARY_PREVIEW_IMAGE_WITH_METADATA = 4


# ------------------------------------------------------------------------------------------------ connection loss
# errno values of a network failure (a plain OSError from a raw socket, e.g. websocket-client's connect)
_NET_ERRNOS = {
    getattr(errno, n)
    for n in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "EPIPE",
        "ETIMEDOUT",
        "EHOSTUNREACH",
        "ENETUNREACH",
        "EHOSTDOWN",
        "ENETDOWN",
        "ENETRESET",
        "ENOTCONN",
        "ESHUTDOWN",
    )
    if hasattr(errno, n)
}


def connection_errors() -> Tuple[type, ...]:
    """Exception classes that can mean 'the server went away'; use :func:`is_connection_error` to decide."""
    return (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        websocket.WebSocketConnectionClosedException,
        websocket.WebSocketTimeoutException,
        websocket.WebSocketAddressException,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
    )


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means the server could not be reached or the connection broke (refused, reset, timed
    out, DNS failure, a dropped websocket): retried, and a server that stays so is taken for gone.

    False for everything else: an HTTP error answer (HTTPFailure, ``requests.HTTPError``, a refused websocket
    handshake), a local file error (an OSError with a file name, or any errno that is not a network one), bad
    JSON, ... -- those are job errors. (``requests.HTTPError`` and file errors are OSErrors, so an ``except
    OSError`` cannot tell them apart.)
    """
    if isinstance(exc, (HTTPFailure, requests.HTTPError, websocket.WebSocketBadStatusException)):
        return False
    if isinstance(exc, connection_errors()):
        return True
    if isinstance(exc, OSError) and not getattr(exc, "filename", None) and exc.errno in _NET_ERRNOS:
        return True
    return False


# ------------------------------------------------------------------------------------------------ websocket
@dataclass
class WsMessage:
    """One websocket frame: a JSON message (``type``, ``data``) or a binary frame (``binary_type``, ``payload``)."""

    type: Optional[str] = None  # "status", "executing", "progress", "executed", "execution_error", ...
    data: dict = field(default_factory=dict)
    raw: Optional[dict] = None  # the whole JSON message
    binary_type: Optional[int] = None  # BINARY_* for a binary frame
    payload: Optional[bytes] = None  # the binary frame without its 4-byte type
    frame: Optional[bytes] = None  # the binary frame as received

    @property
    def is_binary(self) -> bool:
        return self.frame is not None

    @property
    def prompt_id(self) -> Optional[str]:
        """The message's ``data.prompt_id`` (None for binary frames and server-wide messages such as ``status``)."""
        return self.data.get("prompt_id")

    def ends(self, prompt_id: str) -> bool:
        """True for ``executing`` with ``node: null`` of ``prompt_id``: the server is done with that prompt (it
        is sent after success, error and interrupt alike)."""
        return self.type == "executing" and self.data.get("node") is None and self.prompt_id == prompt_id


def read_message(ws, wait: float) -> Optional[WsMessage]:
    """Read one frame from a connected websocket (:meth:`ComfyClient.connect_ws`).

    Args:
        ws: the websocket (anything with ``settimeout(seconds)`` and ``recv()``).
        wait: seconds to wait for a frame.

    Returns:
        A :class:`WsMessage`, or None when nothing arrived within ``wait`` s.

    Raises:
        websocket.WebSocketConnectionClosedException: the connection broke or the server closed it.
        ValueError: a text frame that is not JSON.
    """
    ws.settimeout(wait)
    try:
        frame = ws.recv()
    except websocket.WebSocketTimeoutException:
        return None
    if isinstance(frame, (bytes, bytearray)):
        frame = bytes(frame)
        if len(frame) < 4:
            return WsMessage(binary_type=None, payload=b"", frame=frame)
        (kind,) = struct.unpack(">I", frame[:4])
        return WsMessage(binary_type=kind, payload=frame[4:], frame=frame)
    if frame == "":
        raise websocket.WebSocketConnectionClosedException("websocket closed by the server")
    msg = json.loads(frame)
    return WsMessage(type=msg.get("type"), data=msg.get("data") or {}, raw=msg)


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

    def add(self, m: WsMessage) -> None:
        """Record a frame: a JSON message of this prompt, or a binary frame (streamed text, previews)."""
        if m.is_binary:
            if m.binary_type is None:
                return
            body = m.payload or b""
            if m.binary_type == BINARY_TEXT and len(body) >= 4:
                (n,) = struct.unpack(">I", body[:4])
                node = body[4 : 4 + n].decode("utf-8", errors="replace")
                self.texts.append((node, body[4 + n :].decode("utf-8", errors="replace")))
            else:
                self.previews.append((m.binary_type, body))
            return
        if m.prompt_id != self.prompt_id:
            return
        self.events.append(m.raw)
        data = m.data
        if m.type == "progress":
            self.progress.append(data)
        elif m.type == "executed":
            self.executed[str(data.get("node"))] = data.get("output") or {}
        elif m.type == "execution_cached":
            self.cached.extend(str(n) for n in data.get("nodes", []))
        elif m.type == "execution_error":
            self.error = data
        elif m.type == "execution_interrupted":
            self.interrupted = data
        elif m.type == "execution_success":
            self.success = True

    def outputs(self) -> dict:
        """``history["outputs"]`` (node id -> ui output), or what ``executed`` reported."""
        if self.history and "outputs" in self.history:
            return self.history["outputs"]
        return self.executed

    def images(self) -> list[dict]:
        """Every ``{"filename","subfolder","type"}`` image in the outputs."""
        return [img for out in self.outputs().values() for img in out.get("images", [])]


# ------------------------------------------------------------------------------------------------ client
class ComfyClient:
    """HTTP + websocket access to one ComfyUI server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8188`` (``http://`` is added when there is no scheme).
        client_id: the websocket client id sent with every prompt (default: a new random one).
        timeout: seconds per HTTP request.
    """

    def __init__(self, base_url: str, client_id: str | None = None, timeout: float = 60.0):
        self.base_url = base_url.rstrip("/")
        if "://" not in self.base_url:
            self.base_url = "http://" + self.base_url
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.session = requests.Session()

    # ---- plain HTTP -------------------------------------------------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        """``GET base_url + path`` (unchecked response)."""
        return self.session.get(self.base_url + path, timeout=kw.pop("timeout", self.timeout), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        """``POST base_url + path`` (unchecked response)."""
        return self.session.post(self.base_url + path, timeout=kw.pop("timeout", self.timeout), **kw)

    def _check(self, r: requests.Response, method: str, path: str) -> requests.Response:
        """Raise HTTPFailure (status + body) for a 4xx/5xx answer; returns ``r`` otherwise."""
        if r.status_code >= 400:
            try:
                body = r.text
            except Exception:  # noqa: BLE001 - an undecodable body
                body = repr(r.content[:2000])
            raise HTTPFailure(method, path, r.status_code, body, self.base_url)
        return r

    def _json(self, r: requests.Response, method: str, path: str) -> Any:
        self._check(r, method, path)
        try:
            return r.json()
        except ValueError:
            raise HTTPFailure(method, path, r.status_code, "not JSON: " + r.text[:1900], self.base_url) from None

    def object_info(self, node_class: str | None = None) -> dict:
        """``GET /object_info`` (every node class), or ``/object_info/{node_class}``. Raises HTTPFailure."""
        path = "/object_info" + (f"/{node_class}" if node_class else "")
        return self._json(self.get(path), "GET", path)

    def system_stats(self) -> dict:
        """``GET /system_stats``. Raises HTTPFailure."""
        return self._json(self.get("/system_stats"), "GET", "/system_stats")

    def queue_state(self) -> dict:
        """``GET /queue``: ``{"queue_running": [...], "queue_pending": [...]}``, items ``[number, prompt_id, ...]``.
        Raises HTTPFailure."""
        return self._json(self.get("/queue"), "GET", "/queue")

    def post_prompt(
        self, prompt: dict, *, extra_data: dict | None = None, prompt_id: str | None = None, front: bool = False
    ) -> requests.Response:
        """``POST /prompt`` and return the raw response (no status check); :meth:`queue_prompt` checks it."""
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            body["extra_data"] = extra_data
        if prompt_id:
            body["prompt_id"] = prompt_id
        if front:
            body["front"] = True
        return self.post("/prompt", json=body)

    def queue_prompt(self, prompt: dict, **kw) -> dict:
        """``POST /prompt`` (API-format ``prompt``; ``kw`` as :meth:`post_prompt`).

        Returns:
            ``{"prompt_id", "number", "node_errors"}`` (``node_errors`` may list outputs left out).

        Raises:
            PromptRefused: the server answered with an HTTP error (400: validation, with ``node_errors``).
        """
        r = self.post_prompt(prompt, **kw)
        if r.status_code >= 400:
            try:
                payload = r.json()
            except ValueError:
                payload = {"error": {"type": "non_json_response", "message": f"HTTP {r.status_code}: {r.text[:2000]}"}}
            if r.status_code >= 500 and isinstance(payload, dict):
                payload.setdefault("error", {"message": f"HTTP {r.status_code}"})
            raise PromptRefused(r.status_code, payload)
        return r.json()

    def history(self, prompt_id: str | None = None, max_items: int | None = None) -> dict:
        """``GET /history`` (every entry) or ``/history/{prompt_id}``: prompt id -> entry. Raises HTTPFailure."""
        path = f"/history/{prompt_id}" if prompt_id else "/history"
        return self._json(self.get(path, params={"max_items": max_items} if max_items else None), "GET", path)

    def history_entry(self, prompt_id: str) -> Optional[dict]:
        """The ``/history/{prompt_id}`` entry (``outputs``, ``status``), or None while the server has none."""
        data = self.history(prompt_id)
        return data.get(prompt_id) if isinstance(data, dict) else None

    def view(self, filename: str, subfolder: str = "", type: str = "output", **params) -> bytes:
        """``GET /view``: the bytes of an output/input/temp file. Raises HTTPFailure."""
        r = self.get("/view", params={"filename": filename, "subfolder": subfolder, "type": type, **params})
        self._check(r, "GET", f"/view?filename={filename}&subfolder={subfolder}&type={type}")
        return r.content

    def interrupt(self, prompt_id: str | None = None) -> requests.Response:
        """``POST /interrupt`` (with ``prompt_id``: only that prompt, when it is the one running; without: whatever
        runs). Raises HTTPFailure."""
        return self._check(
            self.post("/interrupt", json={"prompt_id": prompt_id} if prompt_id else {}), "POST", "/interrupt"
        )

    def cancel(self, prompt_id: str) -> None:
        """Stop ``prompt_id``: first take it out of the pending queue (``POST /queue {"delete": [id]}``), then
        interrupt it if it runs (``POST /interrupt {"prompt_id": id}``: ComfyUI 0.3.75 interrupts only the prompt
        with that id, so other clients' prompts are left alone). In this order a prompt that starts running between
        the two calls is still caught. Raises HTTPFailure or a connection error."""
        self._check(self.post("/queue", json={"delete": [prompt_id]}), "POST", "/queue")
        self.interrupt(prompt_id)

    def free(self, unload_models: bool = True, free_memory: bool = True) -> requests.Response:
        """``POST /free`` (unload models / free memory). Raises HTTPFailure."""
        return self._check(
            self.post("/free", json={"unload_models": unload_models, "free_memory": free_memory}), "POST", "/free"
        )

    def upload_image(
        self,
        image: str | os.PathLike | bytes,
        name: str | None = None,
        subfolder: str = "",
        overwrite: bool = True,
        type: str = "input",
    ) -> dict:
        """``POST /upload/image`` of a file or bytes (``name``: the file name on the server, default the file's
        own, ``upload.png`` for bytes). Returns ``{"name", "subfolder", "type"}``. Raises HTTPFailure."""
        if isinstance(image, (bytes, bytearray)):
            data, name = bytes(image), name or "upload.png"
        else:
            path = Path(image)
            data, name = path.read_bytes(), name or path.name
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        r = self.post(
            "/upload/image",
            files={"image": (name, data, ctype)},
            data={"overwrite": "true" if overwrite else "false", "subfolder": subfolder, "type": type},
        )
        return self._json(r, "POST", "/upload/image")

    # ---- websocket --------------------------------------------------------------------------------------------
    def connect_ws(self, timeout: float = 30.0) -> websocket.WebSocket:
        """Open ``/ws?clientId=<client_id>`` (the server sends this client's prompts' events there).

        Raises:
            HTTPFailure: the server answered the handshake with an HTTP error (e.g. a proxy without websockets).
            a connection error (see :func:`is_connection_error`) when the server cannot be reached.
        """
        ws_url = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        ws = websocket.WebSocket()
        try:
            ws.connect(f"{ws_url}/ws?clientId={self.client_id}", timeout=timeout)
        except websocket.WebSocketBadStatusException as e:  # the server answered the handshake with an error
            body = getattr(e, "resp_body", None)
            body = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or e)
            raise HTTPFailure("GET", "/ws", getattr(e, "status_code", 0) or 0, body, self.base_url) from None
        return ws

    def follow(
        self,
        ws: websocket.WebSocket,
        prompt_id: str,
        timeout: float = 600.0,
        on_event: Callable[[RunResult, dict | None, bytes | None], None] | None = None,
        result: RunResult | None = None,
    ) -> RunResult:
        """Read the websocket until ``executing`` with ``node: null`` for ``prompt_id``.

        ``on_event(result, message, binary)`` is called for every frame (e.g. to interrupt): JSON messages of this
        prompt or of none (``message``), binary frames (``binary``). Raises TimeoutError when the prompt has not
        finished within ``timeout`` s, a connection error when the websocket breaks.
        """
        res = result or RunResult(prompt_id)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"prompt {prompt_id} did not finish within {timeout:.0f} s "
                    f"(last events: {[e.get('type') for e in res.events[-5:]]})"
                )
            m = read_message(ws, min(left, 5.0))
            if m is None:
                continue
            if m.is_binary:
                res.add(m)
                if on_event:
                    on_event(res, None, m.frame)
                continue
            if m.prompt_id not in (None, prompt_id):
                continue
            res.add(m)
            if on_event:
                on_event(res, m.raw, None)
            if m.ends(prompt_id):
                return res

    def run(
        self,
        prompt: dict,
        timeout: float = 600.0,
        *,
        extra_data: dict | None = None,
        on_event: Callable[[RunResult, dict | None, bytes | None], None] | None = None,
        fetch_history: bool = True,
    ) -> RunResult:
        """Queue ``prompt`` (API format), follow it to the end, then read ``/history``.

        Raises:
            PromptRefused: the prompt was refused at validation.
            TimeoutError: it did not finish within ``timeout`` s.
        """
        ws = self.connect_ws()
        try:
            queued = self.queue_prompt(prompt, extra_data=extra_data)
            res = RunResult(queued["prompt_id"], queued.get("number"), node_errors=queued.get("node_errors") or {})
            self.follow(ws, res.prompt_id, timeout, on_event=on_event, result=res)
        finally:
            ws.close()
        if fetch_history:
            res.history = self.history_entry(res.prompt_id)
        return res
