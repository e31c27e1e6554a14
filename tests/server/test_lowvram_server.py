"""ComfyUI's ``--lowvram`` / ``--novram`` and a REAL server (docs/models.md "Partial loading").

What the flags do on a machine without an accelerator: **they cannot be used at all**. ComfyUI 0.30.0 puts
``--cpu``, ``--lowvram``, ``--novram``, ``--highvram`` and ``--gpu-only`` in one mutually exclusive argparse group
(``comfy/cli_args.py``), so ``--cpu --lowvram`` is refused at start-up; and without ``--cpu`` it asks CUDA for the
device while importing ``comfy.model_management`` and stops ("Found no NVIDIA driver"). Even where both could be
combined, a CPU server gets ``vram_state = DISABLED`` and ``load_models_gpu`` loads CPU models in full. So on a CPU
the first test checks that refusal (the fact docs/models.md states), and the pack's partial loading is driven
in-process by tests/nodes/test_partial_loading.py. On a machine with a CUDA GPU the second test starts real servers
with each flag (through bench/gpu_george.py's ``start_server``, which does not pass ``--cpu``) and checks the tiny
workflow gives the same storybook text as without the flag.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench.gpu_george import start_server, stop_server
from seedstory_client.client import ComfyClient
from tests.conftest import require_or_skip
from tests.support.workflows import API_DIR, WORKFLOWS

pytest_plugins = ["tests.support.comfy_harness"]
pytestmark = pytest.mark.comfyui

START_PNG = WORKFLOWS / "assets" / "seedstory_start.png"


@pytest.mark.parametrize("flag", ["--lowvram", "--novram"])
def test_comfyui_refuses_vram_flags_on_a_cpu_server(comfy_dir, flag):
    proc = subprocess.run(
        [sys.executable, "main.py", "--cpu", flag, "--quick-test-for-ci", "--disable-auto-launch"],
        cwd=comfy_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"argument {flag}: not allowed with argument --cpu" in proc.stderr, proc.stderr[-3000:]


def tiny_storybook(url: str, input_dir) -> str:
    """The storybook text of the tiny workflow (2 steps) on the server at ``url``."""
    (input_dir / "seedstory_start.png").write_bytes(START_PNG.read_bytes())
    prompt = json.loads((API_DIR / "seedstory_tiny_story.json").read_text())
    prompt["3"]["inputs"].update(opening_text="Max and Zoe walk to the lighthouse.", story_steps=2, diffusion_steps=2)
    res = ComfyClient(url).run(prompt, timeout=300)
    assert res.status == "success", json.dumps(res.error)[:3000]
    save = next(k for k, v in prompt.items() if v["class_type"] == "SeedStorySaveStory")
    return res.outputs()[save]["text"][0]


def test_tiny_workflow_under_vram_flags_gives_the_same_storybook_on_a_gpu(comfy_dir, tmp_path):
    if not torch.cuda.is_available():
        require_or_skip(
            "no CUDA GPU here: ComfyUI cannot start with --lowvram/--novram without one (see the module docstring)",
            "SEEDSTORY_REQUIRE_GPU",
            in_ci=False,
        )
    texts = {}
    for flag in ("", "--lowvram", "--novram"):
        scratch = tmp_path / (flag.strip("-") or "plain")
        (scratch / "input").mkdir(parents=True)
        proc, url, log = start_server(comfy_dir, scratch, [flag] if flag else [], {})
        try:
            texts[flag] = tiny_storybook(url, scratch / "input")
            assert "Set vram state to:" in log.read_text()
        finally:
            stop_server(proc)
        assert proc.poll() is not None
    assert texts["--lowvram"] == texts[""] == texts["--novram"], texts
