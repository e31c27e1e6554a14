"""Shared pytest fixtures: where the reference material lives, torch determinism, and the skip-or-fail rule.

A test that needs a component the machine may lack (the reference set in ``../shared``, the LLaMA-2 tokenizer
files, comfy-cli, the ``hf`` CLI, curl, the bundled tiny model, ComfyUI, a browser) calls :func:`require_or_skip`
with the reason. Outside CI that is a skip that names what is missing and how to get it; under ``CI=true`` -- the
CI runs on a fresh clone with ``../shared`` present, after ``scripts/setup_env.sh``, which installs all of them --
or with the component's own ``SEEDSTORY_REQUIRE_<NAME>=1`` (or ``SEEDSTORY_REQUIRE_ALL=1``), it is a failure.
The one exception is curl, a system tool the set-up does not install (``in_ci=False``: its flag still applies).
(ComfyUI's own rule lives in tests/support/comfy_harness.py and is the same.)

Also here: the fixtures more than one test folder uses -- ``comfy`` and ``adapt_env`` (the ComfyUI stand-ins of
tests/support/comfy_stubs.py put into ``sys.modules`` for one test) and ``init_bundle``.

Layout: tests/core (seedstory_core), tests/nodes (nodes/ with the stand-ins, no server), tests/server (a real
ComfyUI server and the batch client), tests/browser, tests/training, tests/evaluation, tests/project (docs,
packaging, workflows, benchmarks, these skip rules); shared helpers in tests/support. Every folder is a package
(``tests.core.test_agent`` ...), so helpers are imported by their full name (``from tests.support.comfy_stubs import
run``) and no folder name can shadow a real module (a bare ``import server`` must keep failing outside ComfyUI).
"""

import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import pytest
import torch

from seedstory_core.tiny import random_tiny_bundle
from tests.support.comfy_stubs import glue, make_mini, make_stubs, models

# The real-ComfyUI session fixture `comfy_server` (tests/support/comfy_harness.py); one server per test session.
pytest_plugins = ["tests.support.comfy_harness"]

REPO_ROOT = Path(__file__).resolve().parents[1]
TRUTHY = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    """True when the environment variable ``name`` is set to 1/true/yes/on (any case)."""
    return os.environ.get(name, "").strip().lower() in TRUTHY


def must_run(flag: Optional[str] = None, *, in_ci: bool = True) -> bool:
    """Whether a missing component is an error here: under ``CI=true`` (unless ``in_ci`` is False),
    ``SEEDSTORY_REQUIRE_ALL=1`` or ``flag=1``."""
    return (in_ci and env_flag("CI")) or env_flag("SEEDSTORY_REQUIRE_ALL") or (flag is not None and env_flag(flag))


def require_or_skip(reason: str, flag: Optional[str] = None, *, in_ci: bool = True) -> NoReturn:
    """Skip the test because ``reason`` (what is missing and how to get it) -- or fail with it where it must run.

    Args:
        reason: what is missing and the command or setting that provides it.
        flag: the component's own ``SEEDSTORY_REQUIRE_*`` variable (e.g. ``SEEDSTORY_REQUIRE_REFERENCE``).
        in_ci: False only for a system tool that ``scripts/setup_env.sh`` does not install (then CI=true alone
            does not make it required; its flag or SEEDSTORY_REQUIRE_ALL still does).

    Raises: ``pytest.fail`` under :func:`must_run`, else ``pytest.skip`` (both end the test).
    """
    if must_run(flag, in_ci=in_ci):
        why = (
            "CI=true"
            if (in_ci and env_flag("CI"))
            else ("SEEDSTORY_REQUIRE_ALL=1" if env_flag("SEEDSTORY_REQUIRE_ALL") else f"{flag}=1")
        )
        pytest.fail(f"required here ({why}) but missing: {reason}", pytrace=False)
    pytest.skip(reason)


def reference_dir() -> Path:
    """The shared reference folder (``$SEEDSTORY_REFERENCE`` or ``<repo>/../shared/reference``)."""
    env = os.environ.get("SEEDSTORY_REFERENCE")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if not path.is_dir():
        require_or_skip(
            f"reference material not found at {path} (clone the shared folder next to the repository, "
            "or set SEEDSTORY_REFERENCE)",
            "SEEDSTORY_REQUIRE_REFERENCE",
        )
    return path


@pytest.fixture(scope="session")
def golden_dir(reference) -> Path:
    path = reference / "golden"
    if not path.is_dir():
        require_or_skip(
            f"golden fixtures not found at {path} (the reference set is incomplete)", "SEEDSTORY_REQUIRE_REFERENCE"
        )
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def init_bundle(tmp_path_factory):
    """A random tiny bundle saved to disk (the ``--init bundle:DIR`` of the training-stage tests)."""
    folder = tmp_path_factory.mktemp("init") / "bundle"
    random_tiny_bundle(0).save(folder)
    return folder


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """The ComfyUI stand-ins (tests/support/comfy_stubs.py) in ``sys.modules`` for one test, model folders and the
    output folder under ``tmp_path``, the pack's loader cache cleared before and after; yields the ``Recorder``
    (``tmp`` and ``folder_paths`` added)."""
    mods, rec = make_stubs(tmp_path)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(glue, "_REGISTERED", False)
    monkeypatch.setattr(glue, "TINY_BUNDLE_DIR", str(tmp_path / "no-bundle"))
    models.clear_cache()
    rec.tmp = tmp_path
    rec.folder_paths = mods["folder_paths"]
    yield rec
    models.clear_cache()


@pytest.fixture
def adapt_env(comfy, tmp_path):
    """The stand-ins plus ComfyUI's input/temp folders and the non-throwing interrupt probe."""
    fp = comfy.folder_paths
    (tmp_path / "input").mkdir()
    fp.get_input_directory = lambda: str(tmp_path / "input")
    fp.get_temp_directory = lambda: str(tmp_path / "temp")
    comfy.interrupt_requested = False
    sys.modules["comfy.model_management"].processing_interrupted = lambda: comfy.interrupt_requested
    make_mini(tmp_path / "input" / "mini")
    return comfy
