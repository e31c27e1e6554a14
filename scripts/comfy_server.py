"""Start/stop a ComfyUI server for seedstory: the command line of :mod:`seedstory_client.launcher`.

    python scripts/comfy_server.py start [--comfy-dir DIR] [--port N|auto] [--scratch-dir DIR] [--state FILE]
                                         [-- ARGS...]
    python scripts/comfy_server.py status [--state FILE]
    python scripts/comfy_server.py stop [--state FILE]

``start`` leaves the server running in the background on 127.0.0.1:8188 (``--port auto``: a free port), prints
its URL on stdout (URL, PID, log and folders on stderr) and writes them to the state file (default
``<repo>/.comfyui/server.json``); ``status`` prints the state as JSON (exit 1 when the server is not running);
``stop`` stops it and deletes the state file. ``--comfy-dir`` defaults to ``$COMFYUI_DIR``, else
``<repo>/.comfyui/ComfyUI-0.30.0``. The details (folders, the pack's copy) are in the launcher's docstring.
Needs the ``client`` extra (``requests``, ``websocket-client``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.append(str(REPO_ROOT))  # seedstory_client, when run as `python scripts/comfy_server.py`

from seedstory_client.launcher import (  # noqa: E402
    DEFAULT_COMFY_DIR,
    DEFAULT_PORT,
    DEFAULT_STATE_FILE,
    recorded_server,
    start_detached,
    stop_recorded,
)


def main(argv: Iterable[str] | None = None) -> int:
    """Run ``start``, ``stop`` or ``status`` (see the module docstring); returns the exit code."""
    p = argparse.ArgumentParser(description="Start/stop a ComfyUI server for seedstory.")
    sub = p.add_subparsers(dest="cmd", required=True)
    ps = sub.add_parser("start", help="start in the background; prints URL, PID, log")
    ps.add_argument("--comfy-dir", default=os.environ.get("COMFYUI_DIR") or str(DEFAULT_COMFY_DIR))
    ps.add_argument("--port", default=str(DEFAULT_PORT), help=f"TCP port (default {DEFAULT_PORT}; 'auto': a free one)")
    ps.add_argument(
        "--scratch-dir", default=None, help="input/output/temp/user folder (default: the ComfyUI tree's own folders)"
    )
    ps.add_argument("--timeout", type=float, default=300.0)
    ps.add_argument("--state", default=str(DEFAULT_STATE_FILE))
    ps.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more main.py arguments")
    for name in ("stop", "status"):
        q = sub.add_parser(name)
        q.add_argument("--state", default=str(DEFAULT_STATE_FILE))
    a = p.parse_args(list(argv) if argv is not None else None)
    state = Path(a.state)

    if a.cmd == "start":
        old = recorded_server(state)
        if old is not None and old["running"]:
            print(f"already running: {old['base_url']} (pid {old['pid']}, state {state})", file=sys.stderr)
            print(old["base_url"])
            return 0
        extra = [x for x in a.extra if x != "--"]
        port = None if a.port == "auto" else int(a.port)
        h = start_detached(a.comfy_dir, port, extra, state=state, scratch_dir=a.scratch_dir, timeout=a.timeout)
        print(
            f"ComfyUI running at {h.base_url} (pid {h.pid})\n  log:    {h.log_path}\n"
            f"  input:  {h.input_dir}\n  output: {h.output_dir}\n  state:  {state}",
            file=sys.stderr,
        )
        print(h.base_url)
        return 0

    if a.cmd == "status":
        info = recorded_server(state)
    else:
        info = stop_recorded(state)
    if info is None:
        print(f"no server state at {state}", file=sys.stderr)
        return 0 if a.cmd == "stop" else 1
    if a.cmd == "status":
        print(json.dumps(info, indent=2))
        return 0 if info["running"] else 1
    if info["running"]:
        print(f"stopped ComfyUI pid {info['pid']} ({info['base_url']})", file=sys.stderr)
    else:
        print(f"ComfyUI pid {info['pid']} was not running", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
