"""Import the repository root as the ComfyUI pack package (as ComfyUI does), once per test session."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the package name the pack is imported under in tests (its modules are ``PACK.nodes.*``)
PACK = "seedstory_pack_under_test"


def load_pack():
    """The pack module (``__init__.py`` with its ``nodes`` subpackage); imported on first call, then reused."""
    if PACK in sys.modules:
        return sys.modules[PACK]
    spec = importlib.util.spec_from_file_location(
        PACK, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = mod
    spec.loader.exec_module(mod)
    return mod
