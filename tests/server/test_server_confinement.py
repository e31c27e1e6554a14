"""Save Story's filename_prefix on a real ComfyUI server: hostile prefixes are refused at validation (HTTP 400,
before anything runs), nothing is written outside (or inside) the output folder; a non-ASCII prefix is kept.

Fixture ``comfy_server`` (tests/support/comfy_harness.py): a real ComfyUI with this pack linked; skipped with the reason
when ComfyUI is unavailable, an error under ``CI=true``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import pytest

pytest_plugins = ["tests.support.comfy_harness"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_STORY = REPO_ROOT / "workflows" / "api" / "seedstory_tiny_story.json"
HOSTILE = [
    "a/ ../ ../ ../x",
    "a/ .. / .. /x",
    "a/ ..\\ ..\\x",
    "/tmp/x",
    "%2e%2e%2fx",
    "x" * 300,
    "seedstory_escape_link/x",
]


def _tree(root: Path) -> dict:
    snap = {}
    for cur, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(cur) / name
            snap[str(p.relative_to(root))] = os.readlink(p) if p.is_symlink() else (p.is_dir() or p.stat().st_size)
    return snap


@pytest.mark.comfyui
def test_hostile_prefixes_are_refused_at_validation_and_nothing_is_written(comfy_server):
    output = Path(comfy_server.output_dir)
    sandbox = output.parent.parent  # the session's temp folder: output is <sandbox>/comfyuiN/output
    outside = sandbox / "seedstory_escape_target"
    outside.mkdir(exist_ok=True)
    link = output / "seedstory_escape_link"
    if not link.is_symlink():
        link.symlink_to(outside)  # a folder inside the output folder that leads outside
    start = REPO_ROOT / "workflows" / "assets" / "seedstory_start.png"
    comfy_server.upload_image(start.read_bytes(), name="seedstory_start.png")  # so only our input is wrong
    prompt = json.loads(TINY_STORY.read_text(encoding="utf-8"))
    save = next(k for k, v in prompt.items() if v["class_type"] == "SeedStorySaveStory")
    before_out, before_outside = _tree(output), _tree(outside)
    # where an escape would land: a/ ../ ../ ../x from <sandbox>/comfyuiN/output is <sandbox>/x_00001/
    levels = [sandbox, output.parent, Path("/tmp")]
    before_levels = [sorted(os.listdir(d)) for d in levels]
    history_before = set(comfy_server.history())
    try:
        for prefix in HOSTILE:
            bad = copy.deepcopy(prompt)
            bad[save]["inputs"]["filename_prefix"] = prefix
            t0 = time.perf_counter()
            r = comfy_server.post_prompt(bad)
            elapsed = time.perf_counter() - t0
            body = r.json()
            assert r.status_code == 400, (prefix, r.status_code, json.dumps(body)[:1500])
            assert body["error"]["type"] == "prompt_outputs_failed_validation", body["error"]
            assert set(body["node_errors"]) == {save}, body["node_errors"]
            errors = body["node_errors"][save]["errors"]
            assert body["node_errors"][save]["class_type"] == "SeedStorySaveStory"
            assert all(e["type"] == "custom_validation_failed" for e in errors), errors
            assert [e["extra_info"]["input_name"] for e in errors] == ["filename_prefix"], errors
            details = errors[0]["details"]
            assert details.startswith("filename_prefix - SeedStory Save Story: filename_prefix"), details
            assert "File name too long" not in details and "Traceback" not in details
            print(f"\n{prefix[:40]!r}: HTTP 400 in {elapsed * 1000:.0f} ms: {details[:160]}")
        # nothing ran: no history entry, nothing in the queue, nothing written anywhere we can see
        assert set(comfy_server.history()) == history_before
        queue = comfy_server.queue_state()
        assert not queue["queue_running"] and not queue["queue_pending"], queue
        assert _tree(output) == before_out
        assert _tree(outside) == before_outside == {}
        new = [sorted(set(os.listdir(d)) - set(b)) for d, b in zip(levels, before_levels)]
        assert not any(n for n in new[:2]), new
        assert not [n for n in new[2] if n.startswith("x_")], new[2]
    finally:
        link.unlink()


@pytest.mark.comfyui
def test_non_ascii_prefix_is_kept_and_saved_inside(comfy_server):
    output = Path(comfy_server.output_dir)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 2, "color": 0x336699}},
        "2": {
            "class_type": "SeedStorySaveStory",
            "inputs": {"images": ["1", 0], "filename_prefix": "\u7ae5\u8bdd/\u6545\u4e8b", "title": "t"},
        },
    }
    res = comfy_server.run(prompt, timeout=120)
    assert res.status == "success", f"error={json.dumps(res.error)[:2000]}\n{comfy_server.log_tail(30)}"
    images = res.images()
    sub = images[0]["subfolder"]
    assert sub.startswith("\u7ae5\u8bdd/\u6545\u4e8b_"), sub
    folder = output / sub
    assert (folder / "index.html").is_file() and len(images) == 2
    assert os.path.commonpath([os.path.realpath(folder), os.path.realpath(output)]) == os.path.realpath(output)


ADAPT = REPO_ROOT / "workflows" / "api" / "seedstory_adapt_detokenizer.json"


@pytest.mark.comfyui
def test_adapt_node_refuses_data_outside_the_input_folder_on_the_server(comfy_server):
    """Through /prompt on a real server: absolute, '~', '..' and a link out of the input folder are refused with
    the node's message before any training, and nothing is written."""
    inp = Path(comfy_server.input_dir)
    outside = inp.parent / "adapt_outside"
    outside.mkdir(exist_ok=True)
    (outside / "stories.jsonl").write_text('{"images": ["a.png", "b.png"], "captions": ["x.", "y."]}\n')
    link = inp / "adapt_escape_link"
    if not link.is_symlink():
        link.symlink_to(outside)
    comfy_server.upload_image(
        (REPO_ROOT / "workflows" / "assets" / "seedstory_start.png").read_bytes(), name="seedstory_start.png"
    )
    prompt = json.loads(ADAPT.read_text(encoding="utf-8"))
    adapt = next(k for k, v in prompt.items() if v["class_type"] == "SeedStoryAdaptDetokenizer")
    before = _tree(Path(comfy_server.output_dir))
    for value, words in [
        ("/etc", "it is an absolute path"),
        ("~/data", "'~' (a home folder) is not allowed"),
        ("../adapt_outside", "is made of dots only"),
        ("adapt_escape_link", "which is outside"),
    ]:
        bad = copy.deepcopy(prompt)
        bad[adapt]["inputs"]["data_folder"] = value
        res = comfy_server.run(bad, timeout=300)
        assert res.status == "error", (value, res.status)
        message = res.error.get("exception_message", "")
        assert "data_folder" in message and words in message and "ComfyUI's input folder" in message, message
        assert res.error.get("node_id") == adapt and not res.progress, (value, res.progress[:3])
    assert _tree(Path(comfy_server.output_dir)) == before
