"""Redo one frame from the storybook page, and the templates on a fresh install, in headless Chromium on a real
ComfyUI (driver tests/browser/drive.mjs; requirements and skips as in tests/browser/test_browser.py).

* ``test_storybook_redo_button_opens_the_new_storybook``: the tiny story is queued, its storybook page (served by the
  pack at /seedstory/storybook/...) is opened, frame 2's "redo" button is clicked; the page (nodes/assets/redo.js)
  queues the same prompt with a SeedStory Redo Frame node and opens the new storybook when it is done. The frames
  before 2 are the same bytes, frame 2 is new, frame 3 keeps its sentence; the story itself came from ComfyUI's cache.
* ``test_every_template_runs_from_the_templates_dialog_with_an_empty_input``: a fresh server whose input folder is
  empty (a plain install: nothing copied by hand); every template is opened from the Templates dialog and queued
  with the Run button. The ones this repository has the models for run to the end; the ones that need external
  weights are refused for their model files only, the de-tokenizer adaptation for its training data only (never
  for the start picture). Nothing is written to input/.

Marks: ``comfyui`` and ``browser``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from seedstory_client.launcher import ComfyServerError, start
from tests.browser.test_browser import MODULE, NAMES, browser, drive, publish  # noqa: F401 (browser: a fixture)
from tests.support.comfy_harness import ComfyHarness
from tests.support.workflows import API_DIR, NEEDS_EXTERNAL_WEIGHTS, WORKFLOWS

pytest_plugins = ["tests.support.comfy_harness"]

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

START_PNG = WORKFLOWS / "assets" / "seedstory_start.png"
STORY_ROUTE = "/seedstory/storybook/"
REDO_FRAME = 2
#: Templates that read training data from the input folder (a StoryStream folder, made by a command the refusal
#: names): on an empty input folder they are refused for that, and only that.
NEEDS_TRAINING_DATA = set()  # the adaptation template trains on the pack's example data


def frame_bytes(folder: Path) -> list:
    return [p.read_bytes() for p in sorted(folder.glob("frame_*.png"))]


def test_storybook_redo_button_opens_the_new_storybook(comfy_server, browser, tmp_path):  # noqa: F811
    server = comfy_server
    server.upload_image(START_PNG.read_bytes(), name="seedstory_start.png")
    prompt = json.loads((API_DIR / "seedstory_tiny_story.json").read_text())
    prompt["3"]["inputs"]["opening_text"] = "Max and Zoe build a sand castle."  # no other test tells this story
    prompt["4"]["inputs"]["filename_prefix"] = "seedstory/redo_test"
    first = server.run(prompt, timeout=240)
    assert first.status == "success", first.error
    book = first.outputs()["4"]["storybook"][0]
    folder = server.output_dir / Path(book).parent
    assert (folder / "prompt.json").is_file(), "Save Story wrote no prompt.json (the redo buttons need it)"
    url = server.base_url + STORY_ROUTE + quote(book)

    shot = tmp_path / "storybook_redo.png"
    out = drive({"action": "redo", "url": url, "frame": REDO_FRAME, "shot": str(shot)}, browser, timeout=260)
    assert not out["log"]["page_errors"], out["log"]["page_errors"]
    steps = prompt["3"]["inputs"]["story_steps"]
    assert out["before"]["redo_buttons"] == [str(k) for k in range(1, steps + 1)], out["before"]
    # the page loaded its script from the pack, read prompt.json (relative to the page) and queued the redo
    paths = {(r["method"], r["path"]): r for r in reversed(out["requests"])}  # the first of each (the old page's)
    assert paths[("GET", "/seedstory/redo.js")]["status"] == 200
    assert paths[("GET", str(Path(STORY_ROUTE + quote(book)).parent) + "/prompt.json")]["status"] == 200
    assert paths[("POST", "/prompt")]["status"] == 200 and out["prompt_response"]["node_errors"] == {}
    # ... and opened the new storybook when it was done
    new_url = out["after"]["url"]
    assert new_url.startswith(server.base_url + STORY_ROUTE) and new_url != url
    assert len(out["after"]["images"]) == steps + 1 and all(ok and w > 0 for ok, w, _src in out["after"]["images"])
    new_book = new_url[len(server.base_url + STORY_ROUTE) :]
    new_folder = server.output_dir / Path(new_book).parent
    assert new_folder != folder and (new_folder / "index.html").is_file()

    # what ComfyUI ran: the same prompt with a Redo Frame of frame 2 feeding Save Story; the story came from the cache
    hist = server.history(out["prompt_response"]["prompt_id"])[out["prompt_response"]["prompt_id"]]
    ran = hist["prompt"][2]
    redo = [k for k, v in ran.items() if v["class_type"] == "SeedStoryRedoFrame"]
    assert len(redo) == 1 and ran[redo[0]]["inputs"]["frame"] == REDO_FRAME
    assert ran[redo[0]]["inputs"]["story"] == ["3", 3] and ran["4"]["inputs"]["images"] == [redo[0], 0]
    cached = [m[1]["nodes"] for m in hist["status"]["messages"] if m[0] == "execution_cached"]
    assert cached and "3" in cached[0], hist["status"]["messages"]  # Generate Story did not run again

    # frames 0-1 bit-identical, frame 2 new; the sentences of the other frames kept
    old_frames, new_frames = frame_bytes(folder), frame_bytes(new_folder)
    assert len(new_frames) == len(old_frames) == steps + 1
    assert new_frames[:REDO_FRAME] == old_frames[:REDO_FRAME]
    assert new_frames[REDO_FRAME] != old_frames[REDO_FRAME]
    old_story = json.loads((folder / "story.json").read_text())
    new_story = json.loads((new_folder / "story.json").read_text())
    # greedy decoding writes frame 2's sentence again (only its picture's seed changed); the later ones are kept
    assert new_story["sentences"] == old_story["sentences"]
    # the new storybook can be redone again (its prompt.json holds the redo)
    assert json.loads((new_folder / "prompt.json").read_text())["prompt"][redo[0]]["class_type"] == "SeedStoryRedoFrame"
    publish(shot, "storybook_redo.png")
    sys.stderr.write(f"\n[test_redo_browser] redo from click to new storybook: {out['redo_ms'] / 1000:.1f} s\n")


# ------------------------------------------------------------------------------------------------ fresh install
@pytest.fixture(scope="module")
def fresh_server(comfy_dir, browser, tmp_path_factory):  # noqa: F811
    """A server of its own, as after a plain install: this pack in custom_nodes, an empty input folder."""
    extra = shlex.split(os.environ.get("SEEDSTORY_COMFYUI_ARGS", ""))
    try:
        handle = start(
            comfy_dir, extra_args=extra, python=sys.executable, scratch_dir=tmp_path_factory.mktemp("fresh"), pack=True
        )
    except ComfyServerError as e:
        pytest.fail(f"ComfyUI did not start: {e}", pytrace=False)
    harness = ComfyHarness(handle)
    try:
        yield harness
    finally:
        handle.stop()


def test_every_template_runs_from_the_templates_dialog_with_an_empty_input(fresh_server, browser):  # noqa: F811
    server = fresh_server
    input_dir = Path(server.input_dir)
    # (ComfyUI makes the empty folder input/3d at start-up; no file is there)
    assert not [p for p in input_dir.rglob("*") if p.is_file()], sorted(input_dir.rglob("*"))
    runnable = [n for n in NAMES if n not in NEEDS_EXTERNAL_WEIGHTS and n not in NEEDS_TRAINING_DATA]
    order = runnable + [n for n in NAMES if n not in runnable]  # the refused ones last (their error dialog)
    out = drive({"action": "runtemplates", "base": server.base_url, "module": MODULE, "workflows": order}, browser, 900)
    assert not out["log"]["page_errors"], out["log"]["page_errors"]
    problems = []
    for name in order:
        got = out["workflows"][name]
        assert got["load"]["via"] == "template-browser" and got["load"]["http_status"] == 200, (name, got)
        ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
        picture = [str(n["id"]) for n in ui["nodes"] if n["type"] == "SeedStoryExamplePicture"]
        assert picture and not [n for n in ui["nodes"] if n["type"] == "LoadImage"], name
        errors = got.get("node_errors") or {}
        if set(picture) & set(errors):
            problems.append((name, "the start picture was refused", errors))
        elif name in NEEDS_TRAINING_DATA:  # refused for its training data only, with the command that makes it
            bad = {k: v for k, v in errors.items() if v["class_type"] != "SeedStoryAdaptDetokenizer"}
            text = json.dumps(errors)
            if got["status"] != "refused" or bad or "data_folder" not in text or "seedstory_core.data.mini" not in text:
                problems.append((name, "expected a refusal for its training data only", got))
        elif name in runnable:
            if got["status"] != "success":
                problems.append((name, "did not run", got))
        else:  # refused before anything ran, for the model files this repository does not ship
            kinds = {e["type"] for v in errors.values() for e in v["errors"]}
            if got["status"] != "refused" or kinds != {"value_not_in_list"}:
                problems.append((name, "expected a refusal for model files only", got))
    assert not problems, json.dumps(problems, indent=1)[:6000]
    assert not [p for p in input_dir.rglob("*") if p.is_file()], "a template wrote into input/"
