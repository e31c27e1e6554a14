"""Smoke tests of the real ComfyUI server (0.30.0 by default, 0.3.75 in the oldest lane) with this pack installed
as a copy in its custom_nodes (fixture: comfy_harness)."""

from __future__ import annotations

import http.client
import io
import json
import re
import sys
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from PIL import Image

from seedstory_client import launcher
from tests.support.pack_loader import load_pack

# The session fixture ``comfy_server`` comes from tests/support/comfy_harness.py.
# Registering it here is harmless when tests/conftest.py registers it too.
pytest_plugins = ["tests.support.comfy_harness"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: A Python warning as the warnings module prints it ("path:line: FutureWarning: ...").
PY_WARNING = re.compile(r"\b[A-Z]\w*Warning: ")


def empty_image_to_save(width=64, height=48, color=0xFF0000, prefix="seedstory_smoke"):
    """API-format core workflow: EmptyImage -> SaveImage."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
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
        + comfy_server.log_tail()
    )
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


@pytest.mark.comfyui
def test_fresh_server_loads_every_node_and_logs_no_warning(comfy_dir, tmp_path):
    """A server of its own (a fresh scratch base directory, the pack COPIED into its custom_nodes, nothing
    pip-installed but ComfyUI's and the pack's requirements): all 17 nodes load, the tiny story runs, and the log has
    no traceback, no IMPORT FAILED and no warning (e.g. transformers' deprecated-argument FutureWarning)."""
    pack = load_pack()
    assert len(pack.NODE_CLASS_MAPPINGS) == 17
    server = launcher.start(comfy_dir, python=sys.executable, scratch_dir=tmp_path / "fresh", pack=True)
    try:
        installed = tmp_path / "fresh" / "custom_nodes" / "seedstory"
        assert installed.is_dir() and not installed.is_symlink()
        assert (installed / "requirements.txt").is_file() and (installed / "__init__.py").is_file()
        client = server.client()
        info = client.object_info()
        missing = sorted(set(pack.NODE_CLASS_MAPPINGS) - set(info))
        assert not missing, f"nodes missing from /object_info: {missing}; log {server.log_path}"
        client.upload_image(
            (REPO_ROOT / "workflows" / "assets" / "seedstory_start.png").read_bytes(), name="seedstory_start.png"
        )
        prompt = json.loads((REPO_ROOT / "workflows" / "api" / "seedstory_tiny_story.json").read_text())
        res = client.run(prompt, timeout=300)
        assert res.status == "success", res.error
        # Save Story shows frames and sentences on the node, and its storybook opens through the pack's route
        save = res.outputs()["4"]
        assert save["images"] and save["text"][0].strip() and save["storybook"], save
        check_storybook_route(client, save["storybook"][0], server.output_dir)
    finally:
        server.stop()
    log = server.log_text()
    lines = log.splitlines()
    assert any(re.search(r"custom_nodes[/\\]seedstory\b", line) and "seconds" in line for line in lines), log[-3000:]
    bad = [
        line
        for line in lines
        if "Traceback" in line or "IMPORT FAILED" in line or PY_WARNING.search(line) or "[WARNING]" in line
    ]
    assert not bad, f"the server log has tracebacks or warnings ({server.log_path}):\n" + "\n".join(bad[:20])


def _raw_get(base_url: str, raw_path: str) -> tuple[int, str, bytes]:
    """GET with the path sent exactly as given (no client-side '..' normalisation)."""
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read()
    finally:
        conn.close()


def check_storybook_route(client, storybook: str, output_dir: Path) -> None:
    """The storybook page opens inline from the pack's route (also under /api); hostile paths never get a file."""
    assert (output_dir / storybook).is_file()
    for prefix in ("/seedstory/storybook/", "/api/seedstory/storybook/"):
        r = client.get(prefix + quote(storybook))
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html"), (prefix, r.status_code)
        assert "attachment" not in r.headers.get("Content-Disposition", "")
        assert "<figure>" in r.text and "frame_000.png" in r.text
        frame = storybook.rsplit("/", 1)[0] + "/frame_000.png"
        assert client.get(prefix + quote(frame)).content.startswith(PNG_SIGNATURE)
    secret = output_dir.parent / "secret.txt"
    secret.write_text("not for the browser")
    hostile = [
        "/seedstory/storybook/../secret.txt",
        "/seedstory/storybook/%2e%2e/secret.txt",
        "/seedstory/storybook/%2e%2e%2fsecret.txt",
        "/seedstory/storybook/..%2f..%2fetc%2fpasswd",
        "/seedstory/storybook/%2fetc%2fpasswd",
        "/seedstory/storybook/seedstory%00.png",
        "/seedstory/storybook/" + quote(storybook.rsplit("/", 1)[0] + "/../../../secret.txt"),
        "/api/seedstory/storybook/%2e%2e/%2e%2e/secret.txt",
    ]
    for path in hostile:
        status, _kind, body = _raw_get(client.base_url, path)
        assert status in (400, 403, 404), (path, status)
        assert b"not for the browser" not in body and b"root:" not in body, path


@pytest.mark.comfyui
def test_in_app_help_pages_and_search_aliases_are_served(comfy_server):
    """WEB_DIRECTORY: every node's help page (web/docs/<NodeId>.md) and the Save Story extension are served where the
    frontend looks for them; on ComfyUI >= 0.30 /object_info carries the search aliases."""
    pack = load_pack()
    exts = comfy_server.get("/extensions").json()
    assert "/extensions/seedstory/seedstory.js" in exts, exts
    assert exts.count("/extensions/seedstory/seedstory.js") == 1  # registered once (WEB_DIRECTORY only)
    for node_id in pack.NODE_CLASS_MAPPINGS:
        r = comfy_server.get(f"/extensions/seedstory/docs/{node_id}.md")
        assert r.status_code == 200, (node_id, r.status_code)
        assert r.content.decode("utf-8") == (REPO_ROOT / "web" / "docs" / f"{node_id}.md").read_text(encoding="utf-8")
    info = comfy_server.object_info("SeedStoryGenerateStory")["SeedStoryGenerateStory"]
    if "search_aliases" in info or comfy_server.comfy_version != "0.3.75":
        assert {"story", "comic", "storyboard"} <= set(info["search_aliases"]), info.get("search_aliases")
