"""SeedStory Adapt De-tokenizer reads only from ComfyUI's input folder, and bad training data gives clear errors.

``data_folder`` and every image path in its .jsonl must resolve inside the input folder (no absolute paths, no
``~``, no ``..``, no symbolic link leading out); a corrupt image is named (relative to the input folder) before any
training. Stand-ins for ComfyUI as in tests/nodes/test_adaptation_node.py (``adapt_env``, tests/conftest.py: input
folder = tmp/input with a 2-story StoryStream-mini set in input/mini). Files outside the input folder are real,
readable data, so a refusal can only come from the confinement rule.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.nodes.test_adaptation_node import NODE, _kwargs
from tests.support.comfy_stubs import PACK, make_mini, models, run, tiny

training = sys.modules[f"{PACK}.nodes.training"]
InputError = models.SeedStoryInputError
N = "SeedStory Adapt De-tokenizer"


@pytest.fixture
def env(adapt_env):
    """adapt_env plus a complete StoryStream-mini set OUTSIDE the input folder (tmp/outside/mini)."""
    make_mini(adapt_env.tmp / "outside" / "mini", seed=1)
    return adapt_env


def _jsonl(env) -> Path:
    return env.tmp / "input" / "mini" / "stories.jsonl"


def _rewrite_first_image(env, new_path: str) -> str:
    """Replace the first image path of the first story in input/mini/stories.jsonl; returns the old one."""
    path = _jsonl(env)
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[0])
    old, rec["images"][0] = rec["images"][0], new_path
    lines[0] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return old


def _nothing_trained(env, name="adapted_test"):
    assert not (env.tmp / "models" / "seed_story" / "detokenizer" / f"{name}.safetensors").exists()
    assert not (env.tmp / "temp" / "seedstory_adapt").exists()


# ------------------------------------------------------------------------------------------------ data_folder
@pytest.mark.parametrize(
    "make_value, words",
    [
        (lambda t: str(t / "outside" / "mini"), ["absolute path"]),
        (lambda t: str(t / "outside" / "mini" / "stories.jsonl"), ["absolute path"]),
        (lambda t: "~/mini", ["'~'"]),
        (lambda t: "../outside/mini", ["made of dots only"]),
        (lambda t: "mini/../../outside/mini", ["made of dots only"]),
        (lambda t: " .. /outside/mini", ["made of dots only"]),
        (lambda t: "mini\\..\\..\\outside\\mini", ["made of dots only"]),
        (lambda t: "\u2025/outside/mini", ["made of dots only"]),
        (lambda t: "C:\\data\\mini", ["drive letter"]),
        (lambda t: "escape", ["outside", "symbolic link"]),  # input/escape -> tmp/outside/mini
        (lambda t: "escape/stories.jsonl", ["outside", "symbolic link"]),
        (lambda t: "mini\x00", ["NUL"]),
    ],
)
def test_data_folder_outside_the_input_folder_is_refused(env, make_value, words):
    (env.tmp / "input" / "escape").symlink_to(env.tmp / "outside" / "mini")
    value = make_value(env.tmp)
    with pytest.raises(InputError) as err:
        training.resolve_data_folder(value, node=N)
    msg = str(err.value)
    for w in words:
        assert w in msg, (w, msg)
    assert msg.startswith(f"{N}: data_folder") and "ComfyUI's input folder" in msg, msg
    assert training.SeedStoryAdaptDetokenizer.IS_CHANGED(data_folder=value) == ""


def test_the_node_refuses_before_training(env):
    agent, vit, detok, _ = tiny()
    for value in (str(env.tmp / "outside" / "mini"), "~/mini", "../outside/mini"):
        with pytest.raises(InputError, match="data_folder"):
            run(NODE, _kwargs(agent, vit, detok, data_folder=value))
    _nothing_trained(env)


def test_tooltip_and_docstring_state_the_rule():
    tip = training.SeedStoryAdaptDetokenizer.INPUT_TYPES()["required"]["data_folder"][1]["tooltip"]
    for w in ("input folder", "absolute paths", "'~'", "'..'", "symbolic links"):
        assert w in tip, w
    assert "input folder" in training.resolve_data_folder.__doc__
    assert "input folder" in training.SeedStoryAdaptDetokenizer.adapt.__doc__


# ------------------------------------------------------------------------------------------------ image paths
@pytest.mark.parametrize(
    "make_path, words",
    [
        (lambda t: str(t / "outside" / "mini" / "images" / "mini-s1-00000" / "00.png"), ["absolute path"]),
        (lambda t: "../../outside/mini/images/mini-s1-00000/00.png", ["made of dots only"]),
        (lambda t: "mini-s0-00000/../../../outside/mini/images/mini-s1-00000/00.png", ["made of dots only"]),
        (lambda t: "~/00.png", ["'~'"]),
        (lambda t: "evil.png", ["outside", "symbolic link"]),  # input/mini/images/evil.png -> an outside image
        (lambda t: "evil_dir/00.png", ["outside", "symbolic link"]),
    ],
)
def test_image_paths_in_the_jsonl_must_stay_inside(env, make_path, words):
    images = env.tmp / "input" / "mini" / "images"
    (images / "evil.png").symlink_to(env.tmp / "outside" / "mini" / "images" / "mini-s1-00000" / "00.png")
    (images / "evil_dir").symlink_to(env.tmp / "outside" / "mini" / "images" / "mini-s1-00000")
    _rewrite_first_image(env, make_path(env.tmp))
    data = training.resolve_data_folder("mini", node=N)
    with pytest.raises(InputError) as err:
        training.load_data_records(data, node=N)
    msg = str(err.value)
    for w in words:
        assert w in msg, (w, msg)
    assert "mini/stories.jsonl line 1" in msg and "ComfyUI's input folder" in msg, msg


def test_the_node_refuses_an_outside_image_before_training(env):
    _rewrite_first_image(env, str(env.tmp / "outside" / "mini" / "images" / "mini-s1-00000" / "00.png"))
    agent, vit, detok, _ = tiny()
    with pytest.raises(InputError, match="absolute path"):
        run(NODE, _kwargs(agent, vit, detok))
    _nothing_trained(env)


def test_records_are_confined_complete_and_a_link_inside_is_fine(env):
    images = env.tmp / "input" / "mini" / "images"
    (images / "alias").symlink_to(images / "mini-s0-00000")  # stays inside the input folder: allowed
    _rewrite_first_image(env, "alias/00.png")
    data = training.resolve_data_folder("mini", node=N)
    t0 = time.perf_counter()
    records = training.load_data_records(data, node=N)
    ms = (time.perf_counter() - t0) * 1000
    root = os.path.realpath(env.tmp / "input")
    n_images = sum(len(r["images"]) for r in records)
    assert len(records) == 2 and n_images == 12
    assert all(os.path.commonpath([root, p]) == root and Path(p).is_file() for r in records for p in r["images"])
    assert records[0]["images"][0] == str(images.resolve() / "mini-s0-00000" / "00.png")
    print(f"\nchecked {n_images} images in {ms:.1f} ms")


# ------------------------------------------------------------------------------------------------ bad data
def test_corrupt_image_is_named_with_what_to_do(env):
    bad = env.tmp / "input" / "mini" / "images" / "mini-s0-00001" / "03.png"
    bad.write_bytes(b"this is not a picture")
    agent, vit, detok, _ = tiny()
    with pytest.raises(InputError) as err:
        run(NODE, _kwargs(agent, vit, detok))
    msg = str(err.value)
    assert (
        "image mini/images/mini-s0-00001/03.png (in ComfyUI's input folder, listed in mini/stories.jsonl line 2)"
    ) in msg
    assert "UnidentifiedImageError" in msg and "Expected a PNG/JPEG/WebP picture" in msg
    assert "replace the file or remove its story" in msg and str(env.tmp) not in msg
    _nothing_trained(env)


def test_truncated_image_is_caught_before_training(env):
    bad = env.tmp / "input" / "mini" / "images" / "mini-s0-00000" / "02.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"image mini/images/mini-s0-00000/02\.png .*not a readable image"):
        training.load_data_records(training.resolve_data_folder("mini", node=N), node=N)


def test_missing_image_and_malformed_line_are_named(env):
    good = _rewrite_first_image(env, "mini-s0-00000/99.png")
    with pytest.raises(
        InputError,
        match=r"image 'mini-s0-00000/99\.png' listed in mini/stories\.jsonl line 1 not "
        r"found .*add the image or fix the path",
    ):
        training.load_data_records(training.resolve_data_folder("mini", node=N), node=N)
    _rewrite_first_image(env, good)
    path = _jsonl(env)
    path.write_text(path.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"malformed: mini/stories\.jsonl line 3: malformed JSON"):
        training.load_data_records(training.resolve_data_folder("mini/stories.jsonl", node=N), node=N)


def test_outside_comfyui_the_node_says_it_needs_the_input_folder(monkeypatch):
    monkeypatch.setitem(sys.modules, "folder_paths", None)  # ComfyUI's module cannot be imported
    with pytest.raises(RuntimeError, match="input folder"):
        training.resolve_data_folder("mini", node=N)


def test_truncated_jpeg_that_passes_verify_is_named_when_training_reads_it(env):
    """PIL's verify() does not decode JPEG data: a truncated JPEG is found when training opens it, and named."""
    images = sorted((env.tmp / "input" / "mini" / "images").rglob("*.png"))
    for p in images:  # every frame a truncated JPEG (the file name does not matter to PIL)
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, format="JPEG")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 8 // 10])  # headers kept, data cut
    records = training.load_data_records(training.resolve_data_folder("mini", node=N), node=N)  # verify() passes
    assert len(records) == 2
    agent, vit, detok, _ = tiny()
    with pytest.raises(InputError) as err:
        run(NODE, _kwargs(agent, vit, detok, steps=1))
    msg = str(err.value)
    assert "image mini/images/mini-s0-00000/00.png (in ComfyUI's input folder) could not be decoded" in msg, msg
    assert "truncated" in msg and "re-export the damaged image" in msg
    assert not (env.tmp / "models" / "seed_story" / "detokenizer" / "adapted_test.safetensors").exists()
