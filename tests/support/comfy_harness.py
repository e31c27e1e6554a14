"""pytest plugin: a real ComfyUI server with this pack installed as a user installs it, shared by the session.

Register it once, in tests/conftest.py (tests/ is a package; the repository root is on sys.path)::

    pytest_plugins = ["tests.support.comfy_harness"]

(a test module may also say ``pytest_plugins = ["tests.support.comfy_harness"]``; registering twice is a
no-op). Do not ``from tests.support.comfy_harness import comfy_server`` into modules as well: that defines
a second fixture and starts a second server.

The fixture ``comfy_server``:
  1. runs ``scripts/provision_comfyui.sh --no-pack`` (uses ``$COMFYUI_DIR`` when set, else ComfyUI
     ``$SEEDSTORY_COMFYUI_VERSION`` -- default 0.30.0, or 0.3.75 -- in ``<repo>/.comfyui/ComfyUI-<version>``);
  2. starts it with this interpreter (``sys.executable``, whose environment holds ComfyUI's requirements.txt
     and this pack's requirements.txt, see scripts/setup_env.sh; the pack itself is not pip-installed) on a
     free 127.0.0.1 port with ``--cpu`` and a scratch ``--base-directory`` holding input/output/temp/user/models
     and ``custom_nodes/seedstory``, a COPY of this pack (seedstory_client.install), so every test session tests
     exactly what a user installs and never touches the ComfyUI tree;
  3. yields a :class:`ComfyHarness` (a ``seedstory_client`` ``ComfyClient`` plus ``output_dir``, ``input_dir``,
     ``log_path``, ``log_text()``, ``server``, ``comfy_version``);
  4. stops the server at the end of the session.

When ComfyUI cannot be provisioned or its requirements are missing, tests that use the
fixture are skipped with the reason -- except under ``CI=true`` (or
``SEEDSTORY_REQUIRE_COMFYUI=1``), where that is an error.
Extra ``main.py`` arguments: ``SEEDSTORY_COMFYUI_ARGS="--cache-none ..."``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from seedstory_client.client import ComfyClient
from seedstory_client.errors import PromptRefused
from seedstory_client.launcher import ComfyServerError, ServerHandle, start

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = REPO_ROOT / "scripts"
# The pack is not pip-installed (scripts/setup_env.sh): pytest puts the repository on sys.path (pyproject
# `pythonpath`), and this puts it on PYTHONPATH for the Python subprocesses tests start (`python -m
# seedstory_client.batch` from a temp folder, ...). seedstory_client.launcher.start() removes it again for ComfyUI
# itself, which must load the pack only from its copy in custom_nodes.
_pp = os.environ.get("PYTHONPATH", "")
if str(REPO_ROOT) not in _pp.split(os.pathsep):
    os.environ["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + _pp if _pp else "")

__all__ = ["ComfyHarness", "comfy_server"]

# Modules ComfyUI imports at start-up (from its requirements.txt). torchaudio: 0.30.0 does not start without it
# (0.3.75 only logs IMPORT FAILED for its audio nodes), so it is checked once the version is known.
_COMFY_RUNTIME_MODULES = (
    "aiohttp",
    "comfyui_frontend_package",
    "torchvision",
    "yaml",
    "sqlalchemy",
    "alembic",
    "av",
    "scipy",
    "einops",
    "torchsde",
    "kornia",
    "spandrel",
)
#: The ComfyUI release provisioned when COMFYUI_DIR is not set (scripts/provision_comfyui.sh --version).
DEFAULT_COMFYUI_VERSION = "0.30.0"


def _must_run() -> bool:
    truthy = {"1", "true", "yes"}
    return (
        os.environ.get("CI", "").lower() in truthy or os.environ.get("SEEDSTORY_REQUIRE_COMFYUI", "").lower() in truthy
    )


def _unavailable(reason: str):
    if _must_run():
        pytest.fail(f"ComfyUI is required here (CI) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"ComfyUI unavailable: {reason}")


class ComfyHarness(ComfyClient):
    """Client for the session's server, with its folders and log."""

    PromptError = PromptRefused  # raised by queue_prompt()/run() when validation fails

    def __init__(self, server: ServerHandle):
        super().__init__(server.base_url)
        self.server = server
        self.comfy_dir: Path = server.comfy_dir
        self.output_dir: Path = server.output_dir
        self.input_dir: Path = server.input_dir
        self.temp_dir: Path = server.temp_dir
        self.log_path: Path = server.log_path
        self.comfy_version: str = comfyui_version(server.comfy_dir)

    def log_text(self) -> str:
        return self.server.log_text()

    def log_tail(self, n: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def new_client(self) -> ComfyClient:
        """Another client (its own websocket client id) on the same server."""
        return ComfyClient(self.base_url)


def comfyui_version(comfy_dir: Path) -> str:
    """``__version__`` from ``comfyui_version.py`` of a ComfyUI tree ('unknown' when it has none)."""
    try:
        text = (Path(comfy_dir) / "comfyui_version.py").read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    m = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return m.group(1) if m else "unknown"


def provision_comfyui() -> Path:
    """Run scripts/provision_comfyui.sh; returns the ComfyUI folder (skips/fails if it can't)."""
    version = os.environ.get("SEEDSTORY_COMFYUI_VERSION", DEFAULT_COMFYUI_VERSION)
    cmd = ["bash", str(SCRIPTS / "provision_comfyui.sh"), "--no-pack", "--version", version, "--venv", sys.prefix]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        _unavailable(f"{' '.join(cmd)} failed: {e}")
    if proc.returncode != 0:
        _unavailable(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    comfy_dir = Path(lines[-1]) if lines else None
    if comfy_dir is None or not (comfy_dir / "main.py").is_file():
        _unavailable(f"provision_comfyui.sh printed no ComfyUI folder: {proc.stdout!r}")
    return comfy_dir


def _start(comfy_dir: Path, extra: list[str], scratch: Path) -> "ComfyHarness":
    try:
        server = start(comfy_dir, extra_args=extra, python=sys.executable, scratch_dir=scratch, pack=True)
    except ComfyServerError as e:
        pytest.fail(f"ComfyUI did not start: {e}", pytrace=False)
    harness = ComfyHarness(server)
    sys.stderr.write(
        f"\n[comfy_harness] ComfyUI {harness.comfy_version} {server.base_url} (pid {server.pid}) "
        f"{' '.join(extra)}, log {server.log_path}\n"
    )
    return harness


def _stop(harness: "ComfyHarness") -> None:
    server = harness.server
    alive = server.is_running()
    code = server.stop()
    if not alive:
        sys.stderr.write(f"\n[comfy_harness] ComfyUI had died (exit {code}); log {server.log_path}\n")


@pytest.fixture(scope="session")
def comfy_dir() -> Path:
    """The provisioned ComfyUI tree (or $COMFYUI_DIR)."""
    missing = [m for m in _COMFY_RUNTIME_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        _unavailable(f"modules {missing} are not installed in {sys.prefix}; run scripts/setup_env.sh")
    path = provision_comfyui()
    if comfyui_version(path) != "0.3.75" and importlib.util.find_spec("torchaudio") is None:
        _unavailable(
            f"ComfyUI {comfyui_version(path)} needs torchaudio, which is not installed in {sys.prefix}; "
            "run scripts/setup_env.sh (or SEEDSTORY_COMFYUI_VERSION=0.3.75 for the oldest release)"
        )
    return path


@pytest.fixture(scope="session")
def comfy_server(comfy_dir, tmp_path_factory):
    """A running ComfyUI (this pack copied into its custom_nodes); yields ComfyHarness."""
    extra = shlex.split(os.environ.get("SEEDSTORY_COMFYUI_ARGS", ""))
    harness = _start(comfy_dir, extra, tmp_path_factory.mktemp("comfyui"))
    try:
        yield harness
    finally:
        _stop(harness)
