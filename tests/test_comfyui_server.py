"""Smoke tests of the real ComfyUI 0.3.75 server with this pack linked (fixture: comfy_harness)."""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

import pytest
from PIL import Image

# The session fixture ``comfy_server`` comes from tests/comfy_harness.py (tests/ is on sys.path).
# Registering it here is harmless when tests/conftest.py registers it too.
pytest_plugins = ["comfy_harness"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO_ROOT = Path(__file__).resolve().parents[1]


def empty_image_to_save(width=64, height=48, color=0xFF0000, prefix="seedstory_smoke"):
    """API-format core workflow: EmptyImage -> SaveImage."""
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


@pytest.mark.comfyui
def test_object_info_lists_core_nodes(comfy_server):
    info = comfy_server.object_info()
    for node in ("SaveImage", "EmptyImage", "LoadImage", "PreviewImage"):
        assert node in info, f"{node} missing from /object_info ({len(info)} nodes)"
    assert info["SaveImage"]["output_node"] is True
    assert comfy_server.object_info("EmptyImage")["EmptyImage"]["input"]["required"]["width"][1]["min"] == 1


@pytest.mark.comfyui
def test_pack_imported_without_failure(comfy_server):
    log = comfy_server.log_text()
    pack_lines = [line for line in log.splitlines() if re.search(r"custom_nodes[/\\]seedstory\b", line)]
    assert any("seconds" in line for line in pack_lines), (
        f"custom_nodes/seedstory not in ComfyUI's import times; log {comfy_server.log_path}:\n"
        + comfy_server.log_tail())
    bad = [line for line in pack_lines if "IMPORT FAILED" in line or "Skip" in line]
    assert not bad, f"the pack failed to import: {bad}; log {comfy_server.log_path}:\n{comfy_server.log_tail()}"
    assert "Traceback" not in "\n".join(
        line for line in log.splitlines() if "seedstory" in line and "site-packages" not in line
    )


@pytest.mark.comfyui
def test_core_workflow_runs_over_websocket_and_png_is_served(comfy_server):
    prefix = f"seedstory_smoke_{uuid.uuid4().hex[:8]}"
    res = comfy_server.run(empty_image_to_save(prefix=prefix), timeout=120)

    assert res.status == "success", f"error={res.error} interrupted={res.interrupted}"
    kinds = [e["type"] for e in res.events]
    assert kinds[0] == "execution_start" and kinds[-1] == "executing", kinds
    assert res.events[-1]["data"]["node"] is None
    assert "execution_success" in kinds
    assert "2" in res.executed, res.executed  # SaveImage reports its images over the ws
    assert res.history["status"]["status_str"] == "success"

    images = res.images()
    assert len(images) == 1 and images[0]["type"] == "output", images
    assert images[0]["filename"].startswith(prefix)
    png = comfy_server.view(**images[0])
    assert png.startswith(PNG_SIGNATURE)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    assert img.size == (64, 48)
    assert img.getpixel((10, 10)) == (255, 0, 0)
    assert (comfy_server.output_dir / images[0]["subfolder"] / images[0]["filename"]).is_file()


@pytest.mark.comfyui
def test_bad_input_comes_back_as_node_errors(comfy_server):
    with pytest.raises(comfy_server.PromptError) as info:
        comfy_server.queue_prompt(empty_image_to_save(width=0))
    err = info.value
    assert err.status_code == 400
    assert err.error.get("type") == "prompt_outputs_failed_validation"
    node = err.node_errors["1"]
    assert node["class_type"] == "EmptyImage"
    assert node["errors"][0]["type"] == "value_smaller_than_min"
    assert node["errors"][0]["details"] == "width"


@pytest.mark.comfyui
def test_interrupt_on_idle_server_is_harmless(comfy_server):
    assert comfy_server.interrupt().status_code == 200
    assert comfy_server.queue_state()["queue_running"] == []
    # a pending interrupt must not kill the next prompt
    res = comfy_server.run(empty_image_to_save(color=0x00FF00, prefix="after_interrupt"), timeout=120)
    assert res.status == "success", res.error or res.interrupted


@pytest.mark.comfyui
def test_upload_image_and_load_it(comfy_server):
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (0, 0, 255)).save(buf, format="PNG")
    name = f"upload_{uuid.uuid4().hex[:8]}.png"
    up = comfy_server.upload_image(buf.getvalue(), name=name, subfolder="smoke")
    assert up == {"name": name, "subfolder": "smoke", "type": "input"}
    assert (comfy_server.input_dir / "smoke" / name).is_file()

    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"smoke/{name}"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    res = comfy_server.run(prompt, timeout=120)
    assert res.status == "success", res.error
    [preview] = res.images()
    assert preview["type"] == "temp"
    img = Image.open(io.BytesIO(comfy_server.view(**preview)))
    assert img.size == (16, 8)
    assert comfy_server.free().status_code == 200


def test_ci_runs_the_readme_test_command():
    """.ci/run's last line is exactly the second command of the README's set-up block."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert block, "README.md has no code block"
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2, commands
    ci = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == commands[1], (ci[-1], commands[1])
