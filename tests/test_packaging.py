"""Registry metadata: `comfy node validate` (comfy-cli) passes with no security warnings; pack layout."""

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import require_or_skip

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_has_registry_metadata():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert data["project"]["name"] and data["project"]["version"]
    deps = " ".join(data["project"]["dependencies"])
    for core in ("torch", "transformers", "diffusers", "peft", "safetensors", "accelerate", "numpy", "pillow"):
        assert core in deps, core


def test_comfy_node_validate(tmp_path):
    exe = shutil.which("comfy", path=str(Path(sys.executable).parent)) or shutil.which("comfy")
    if exe is None:
        require_or_skip("comfy-cli is not installed (it is in the test extras: pip install -e .[test])",
                        "SEEDSTORY_REQUIRE_COMFY_CLI")
    env = dict(os.environ, HOME=str(tmp_path), COMFY_CLI_NO_REMOTE_REFRESH="1")
    res = subprocess.run([exe, "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Security warnings found" not in out, out


def test_pack_layout():
    for path in ("nodes", "seedstory_core", "training", "workflows", "tests", "__init__.py", "pyproject.toml"):
        assert (REPO / path).exists(), path
