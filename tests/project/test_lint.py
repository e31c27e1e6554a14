"""The code is clean under the repository's ruff configuration (pyproject.toml [tool.ruff]): formatted, and free of
the lint findings it selects (pycodestyle, pyflakes, and the security rules `comfy node validate` runs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_or_skip

REPO_ROOT = Path(__file__).resolve().parents[2]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        require_or_skip(
            "ruff is not installed (requirements-dev.txt; scripts/setup_env.sh installs it)", "SEEDSTORY_REQUIRE_RUFF"
        )
    return [exe]


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_is_clean(args):
    proc = subprocess.run(_ruff() + args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ruff {' '.join(args)} found problems:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"
