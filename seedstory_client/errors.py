"""The errors of the ComfyUI client, and the one-line descriptions of a server's error answers.

Pure Python (no HTTP library): :mod:`seedstory_client.client` raises these, :mod:`seedstory_client.batch` turns
them into job records. Which exception is which:

* :class:`PromptRefused` -- ``POST /prompt`` answered with an error (validation: ``node_errors``);
* :class:`ExecutionFailed` -- the prompt ran and failed, or was interrupted;
* :class:`HTTPFailure` -- any other request answered with an HTTP error status (4xx/5xx);
* :class:`ServerGone` -- the server stayed unreachable through every retry.

A connection that breaks (refused, reset, timed out, a dropped websocket) surfaces as the HTTP library's own
exception; :func:`seedstory_client.client.is_connection_error` tells those apart from the errors above.
"""

from __future__ import annotations

from typing import Any, List, Optional


def node_sort_key(node_id: str):
    """Sort key of a prompt's node ids: numeric ids first in numeric order ("2" < "10"), then the others by name."""
    return (0, int(node_id), "") if str(node_id).isdigit() else (1, 0, str(node_id))


def describe_node_errors(node_errors: dict, prompt: Optional[dict] = None) -> List[str]:
    """One line per failed input: ``node 3 (SeedStoryGenerateStory) input 'opening_text': message: details``.

    Args:
        node_errors: ``node_errors`` of a ``POST /prompt`` answer (node id -> ``{"class_type", "errors": [...]}``).
        prompt: the API-format prompt, used for a node's class when the entry lacks ``class_type``.
    """
    lines = []
    for nid, entry in sorted((node_errors or {}).items(), key=lambda kv: node_sort_key(kv[0])):
        cls = entry.get("class_type") or ((prompt or {}).get(nid) or {}).get("class_type") or "?"
        for err in entry.get("errors") or [{}]:
            name = (err.get("extra_info") or {}).get("input_name") or err.get("details") or "?"
            msg = err.get("message") or err.get("type") or "error"
            details = err.get("details") or ""
            text = f"node {nid} ({cls}) input '{name}': {msg}"
            if details and details != name:
                text += f": {details}"
            lines.append(text)
    return lines


def describe_refusal(body: dict) -> str:
    """One line for a refused prompt: the server's ``error.message`` (``details``), then every node error."""
    err = body.get("error") or {}
    head = err.get("message") if isinstance(err, dict) else str(err)
    head = head or "prompt refused"
    if isinstance(err, dict) and err.get("details"):
        head += f" ({err['details']})"
    lines = describe_node_errors(body.get("node_errors") or {})
    return head + ("" if not lines else ": " + "; ".join(lines))


def describe_execution_error(data: dict) -> str:
    """One line for the data of an ``execution_error`` websocket message (node id, class, exception)."""
    return (
        f"node {data.get('node_id')} ({data.get('node_type')}) raised {data.get('exception_type', 'an error')}: "
        f"{str(data.get('exception_message', '')).strip()}"
    )


class PromptRefused(RuntimeError):
    """``POST /prompt`` answered with an HTTP error (400: validation failed; 5xx: the server failed).

    Attributes: ``status_code`` (int); ``body`` (the server's JSON answer, a dict; a non-JSON answer becomes
    ``{"error": {"type": "non_json_response", "message": ...}}``); ``error`` (``body["error"]``, a dict) and
    ``node_errors`` (node id -> ``{"class_type", "errors": [...]}``, empty when the prompt as a whole was refused).
    The message is :func:`describe_refusal` of the body.
    """

    def __init__(self, status_code: int, body: Any):
        self.status_code = int(status_code)
        self.body = body if isinstance(body, dict) else {"error": {"message": str(body)}}
        err = self.body.get("error")
        self.error: dict = err if isinstance(err, dict) else {"message": str(err or "")}
        self.node_errors: dict = self.body.get("node_errors") or {}
        super().__init__(describe_refusal(self.body))


class ExecutionFailed(RuntimeError):
    """The prompt ran and failed (``execution_error``) or was interrupted (``execution_interrupted``).

    Attributes: ``status`` (the batch's job status, e.g. ``"error"`` or ``"interrupted"``), ``details`` (dict: the
    websocket message's node id, node type, exception type/message and traceback, when known).
    """

    def __init__(self, status: str, message: str, details: Optional[dict] = None):
        self.status = status
        self.details = details or {}
        super().__init__(message)


class ServerGone(RuntimeError):
    """The server stayed unreachable through every retry."""


class HTTPFailure(RuntimeError):
    """The server answered, with an HTTP error status (4xx/5xx). A job error, never taken for connection loss.

    Attributes: ``method``, ``path`` (e.g. ``/upload/image``), ``status_code`` (int), ``body`` (the answer's text,
    at most 2000 characters), ``server`` (base URL).
    """

    def __init__(self, method: str, path: str, status_code: int, body: str, server: str = ""):
        self.method, self.path, self.status_code, self.server = method, path, int(status_code), server
        self.body = (body or "")[:2000]
        snippet = " ".join(self.body.split())[:300] or "(empty body)"
        where = f" on {server}" if server else ""
        super().__init__(f"{method} {path}{where} answered HTTP {self.status_code}: {snippet}")
