"""Shared pytest fixtures: where the reference material lives, torch determinism."""

import os
from pathlib import Path

import pytest
import torch

# The real-ComfyUI session fixture `comfy_server` (tests/comfy_harness.py); one server per test session.
pytest_plugins = ["comfy_harness"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    """The shared reference folder (``$SEEDSTORY_REFERENCE`` or ``<repo>/../shared/reference``)."""
    env = os.environ.get("SEEDSTORY_REFERENCE")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if not path.is_dir():
        pytest.skip(f"reference material not found at {path} (set SEEDSTORY_REFERENCE)")
    return path


@pytest.fixture(scope="session")
def golden_dir(reference) -> Path:
    return reference / "golden"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
