"""Hostile inputs on a real ComfyUI server. Save Story's filename_prefix: hostile prefixes are refused at
validation (HTTP 400, before anything runs), nothing is written outside (or inside) the output folder; a non-ASCII
prefix is kept. Generate Story and Adapt De-tokenizer (issue 25): width 13, NaN floats, over-long texts, lone
surrogates and bad data folders are refused at validation with nothing queued; Adapt refuses a 50 MB line quickly
and stops within 2 s of /interrupt while it reads.

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

from tests.support.comfy_stubs import make_mini

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
            # ComfyUI repeats a VALIDATE_INPUTS message under every input its signature names (margin_mm too)
            names = [e["extra_info"]["input_name"] for e in errors]
            assert "filename_prefix" in names and set(names) <= {"filename_prefix", "margin_mm"}, errors
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


def _refused(comfy_server, prompt: dict, node: str, input_name: str) -> str:
    """POST /prompt must answer HTTP 400 with one custom_validation_failed error on ``node`` naming
    ``input_name``; returns its details."""
    raw = json.dumps({"prompt": prompt, "client_id": comfy_server.client_id})  # NaN/Infinity as Python's json writes
    r = comfy_server.post("/prompt", data=raw.encode("utf-8"), headers={"Content-Type": "application/json"})
    body = r.json()
    assert r.status_code == 400, (input_name, r.status_code, json.dumps(body)[:1500])
    errors = body["node_errors"][node]["errors"]
    assert any(e["type"] == "custom_validation_failed" for e in errors), errors
    mine = [e for e in errors if e["extra_info"]["input_name"] == input_name]
    assert mine, errors
    return mine[0]["details"]


@pytest.mark.comfyui
def test_adapt_node_refuses_data_outside_the_input_folder_on_the_server(comfy_server):
    """Through /prompt on a real server: absolute, '~', '..' and a link out of the input folder are refused at
    validation (HTTP 400, nothing queued) with the node's message, and nothing is written."""
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
    before, history = _tree(Path(comfy_server.output_dir)), set(comfy_server.history())
    for value, words in [
        ("/etc", "it is an absolute path"),
        ("~/data", "'~' (a home folder) is not allowed"),
        ("../adapt_outside", "is made of dots only"),
        ("adapt_escape_link", "which is outside"),
        ("no_such_folder", "not found"),
    ]:
        bad = copy.deepcopy(prompt)
        bad[adapt]["inputs"]["data_folder"] = value
        message = _refused(comfy_server, bad, adapt, "data_folder")
        assert message.startswith("data_folder - SeedStory Adapt De-tokenizer: "), message
        assert words in message and "ComfyUI's input folder" in message, message
    bad = copy.deepcopy(prompt)
    bad[adapt]["inputs"]["data_folder"] = _data_folder(comfy_server, "adapt_good", lambda rec: [json.dumps(rec)] * 2)
    bad[adapt]["inputs"]["learning_rate"] = float("nan")
    assert "'learning_rate' must be a finite number" in _refused(comfy_server, bad, adapt, "learning_rate")
    assert set(comfy_server.history()) == history
    queue = comfy_server.queue_state()
    assert not queue["queue_running"] and not queue["queue_pending"], queue
    assert _tree(Path(comfy_server.output_dir)) == before


@pytest.mark.comfyui
def test_hostile_story_inputs_are_refused_at_validation(comfy_server):
    """Width 13, a NaN or infinite float, a text surely over the token limit, a lone surrogate or a control
    character: POST /prompt answers HTTP 400 naming the input, and nothing is queued."""
    comfy_server.upload_image(
        (REPO_ROOT / "workflows" / "assets" / "seedstory_start.png").read_bytes(), name="seedstory_start.png"
    )
    prompt = json.loads(TINY_STORY.read_text(encoding="utf-8"))
    gen = next(k for k, v in prompt.items() if v["class_type"] == "SeedStoryGenerateStory")
    history = set(comfy_server.history())
    for name, value, words in [
        ("width", 13, "'width' must be a multiple of 8, found 13; use 8 or 16."),
        ("width", 4104, "'width' must be between 0 and 4096, found 4104."),
        ("guidance_scale", float("nan"), "'guidance_scale' must be a finite number between 0.0 and 30.0, found nan"),
        ("temperature", float("inf"), "'temperature' must be a finite number"),
        ("opening_text", "Max waves. " * 1000, "'opening_text' is 10,999 characters long, surely more than the 446"),
        ("opening_text", "Max\ud800 waves.", "'opening_text' has a lone surrogate U+D800 at character 4"),
        ("captions", "A.\nB\x07.", "'captions (line 2)' has the control character U+0007 at character 2"),
    ]:
        bad = copy.deepcopy(prompt)
        bad[gen]["inputs"][name] = value
        details = _refused(comfy_server, bad, gen, name)
        assert f"SeedStory Generate Story: {words}" in details, details
    assert set(comfy_server.history()) == history
    queue = comfy_server.queue_state()
    assert not queue["queue_running"] and not queue["queue_pending"], queue


def _adapt_on(comfy_server, folder: str) -> dict:
    comfy_server.upload_image(
        (REPO_ROOT / "workflows" / "assets" / "seedstory_start.png").read_bytes(), name="seedstory_start.png"
    )
    prompt = json.loads(ADAPT.read_text(encoding="utf-8"))
    adapt = next(k for k, v in prompt.items() if v["class_type"] == "SeedStoryAdaptDetokenizer")
    prompt[adapt]["inputs"].update(data_folder=folder, steps=1, output_name="hostile_data")
    return prompt


def _data_folder(comfy_server, folder: str, lines) -> str:
    mini = Path(comfy_server.input_dir) / f"{folder}_images"
    if not mini.exists():
        make_mini(mini)
    rec = json.loads((mini / "stories.jsonl").read_text(encoding="utf-8").splitlines()[0])
    path = Path(comfy_server.input_dir) / folder
    path.mkdir(exist_ok=True)
    if not (path / "images").exists():
        (path / "images").symlink_to(mini / "images")
    with open(path / "stories.jsonl", "w", encoding="utf-8") as fh:
        for line in lines(rec):
            fh.write(line + "\n")
    return folder


@pytest.mark.comfyui
def test_adapt_refuses_a_50_mb_line_quickly(comfy_server):
    def lines(rec):
        rec = dict(rec, captions=["George waves. " * (50_000_000 // 14)] + rec["captions"][1:])
        return [json.dumps(rec)]

    prompt = _adapt_on(comfy_server, _data_folder(comfy_server, "adapt_huge_line", lines))
    t0 = time.perf_counter()
    res = comfy_server.run(prompt, timeout=300)
    elapsed = time.perf_counter() - t0
    assert res.status == "error", res.status
    message = res.error.get("exception_message", "")
    assert "adapt_huge_line/stories.jsonl line 1: longer than 1,048,576 bytes" in message, message
    print(f"\n50 MB line refused; the prompt (tiny model load included) took {elapsed:.1f} s")
    assert elapsed < 60 and not res.progress


@pytest.mark.comfyui
def test_interrupt_stops_adapt_while_it_reads(comfy_server):
    """/interrupt while Adapt reads a long .jsonl (every caption tokenized, every line's images confined): the
    node stops within 2 s."""
    prompt = _adapt_on(
        comfy_server, _data_folder(comfy_server, "adapt_long_read", lambda rec: [json.dumps(rec)] * 8000)
    )
    adapt = next(k for k, v in prompt.items() if v["class_type"] == "SeedStoryAdaptDetokenizer")
    sent = {}

    def on_event(res, message, _binary):
        if not message:
            return
        if message.get("type") == "executing" and message["data"].get("node") == adapt and "at" not in sent:
            time.sleep(1.0)  # well into the reading (8,000 lines take tens of seconds)
            sent["at"] = time.perf_counter()
            comfy_server.interrupt()
        elif message.get("type") in ("execution_interrupted", "execution_error") and "end" not in sent:
            sent["end"] = time.perf_counter()

    res = comfy_server.run(prompt, timeout=600, on_event=on_event)
    stopped = sent["end"] - sent["at"]
    print(f"\nAdapt stopped {stopped:.2f} s after /interrupt")
    assert res.status == "interrupted", (res.status, res.error)
    assert res.interrupted.get("node_id") == adapt, res.interrupted
    assert stopped < 2.0
