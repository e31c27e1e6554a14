"""SeedStory Adapt De-tokenizer does bounded work on hostile training data (issue 25), and refuses a bad
``data_folder`` before anything is queued.

* a 50 MB line is refused as soon as the first 1 MiB of it is read (memory measured with tracemalloc);
* a caption longer than a sentence the agent takes, or with a lone surrogate, is refused in the node's terms
  (its ``agent`` and ``data_folder`` inputs, not the training CLI's ``--max-length``);
* a .jsonl that is not UTF-8 is named with its file and line;
* Cancel (ComfyUI's ``/interrupt``) stops the reading within 2 s;
* ``VALIDATE_INPUTS`` refuses the data folder, the output name and a NaN learning rate (HTTP 400 on a real server,
  tests/server/test_server_confinement.py).

Stand-ins for ComfyUI as in tests/nodes/test_adaptation_node.py (fixture ``adapt_env``: input folder = tmp/input
with a 2-story StoryStream-mini set in input/mini).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import tracemalloc

import pytest

from tests.nodes.test_adaptation_node import NODE, _kwargs
from tests.support.comfy_stubs import PACK, Interrupted, models, run, tiny

training = sys.modules[f"{PACK}.nodes.training"]
InputError = models.SeedStoryInputError
N = "SeedStory Adapt De-tokenizer"
Adapt = training.SeedStoryAdaptDetokenizer


def _first_record(env) -> dict:
    return json.loads((env.tmp / "input" / "mini" / "stories.jsonl").read_text(encoding="utf-8").splitlines()[0])


def _write(env, folder: str, lines) -> str:
    path = env.tmp / "input" / folder
    path.mkdir()
    (path / "images").symlink_to(env.tmp / "input" / "mini" / "images")
    with open(path / "stories.jsonl", "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else line.encode("utf-8"))
            fh.write(b"\n")
    return folder


def _nothing_trained(env):
    assert not (env.tmp / "models" / "seed_story" / "detokenizer" / "adapted_test.safetensors").exists()
    assert not (env.tmp / "temp" / "seedstory_adapt").exists()


def test_a_50_mb_line_is_refused_quickly_with_bounded_memory(adapt_env):
    rec = _first_record(adapt_env)
    rec["captions"][0] = "George waves. " * (50_000_000 // 14)  # one 50 MB line
    folder = _write(adapt_env, "huge", [json.dumps(rec)])
    assert (adapt_env.tmp / "input" / folder / "stories.jsonl").stat().st_size > 50_000_000
    data = training.resolve_data_folder(folder, node=N)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError) as err:
            training.load_data_records(data, node=N)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert msg.startswith(
        f"{N}: the training data is malformed: huge/stories.jsonl line 1: longer than 1,048,576 bytes"
    )
    assert "Split long stories into chunks" in msg and "one-sentence captions" in msg
    print(f"\n50 MB line refused in {seconds * 1000:.0f} ms, peak Python allocations {peak / 2**20:.1f} MiB")
    assert seconds < 2.0 and peak < 8 * 2**20, (seconds, peak)


def test_the_node_refuses_a_50_mb_line_before_training(adapt_env):
    rec = _first_record(adapt_env)
    rec["captions"][0] = "x" * 50_000_000
    folder = _write(adapt_env, "huge", [json.dumps(rec)])
    agent, vit, detok, _ = tiny()
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"huge/stories\.jsonl line 1: longer than 1,048,576 bytes"):
        run(NODE, _kwargs(agent, vit, detok, data_folder=folder))
    assert time.perf_counter() - t0 < 5.0
    _nothing_trained(adapt_env)


@pytest.mark.parametrize(
    "caption, words",
    [
        ("George waves. " * 1500, ["caption 1 of long/stories.jsonl line 1", "20,999 characters long", "'agent'"]),
        ("George waves. " * 500, ["caption 1 of long/stories.jsonl line 1", "tokens long", "at most 446 tokens"]),
        ("Max\ud800 waves.", ["caption 1 of long/stories.jsonl line 1", "lone surrogate U+D800"]),
    ],
    ids=["20k-characters", "over-446-tokens", "lone-surrogate"],
)
def test_a_caption_the_agent_cannot_take_is_refused_in_the_nodes_terms(adapt_env, caption, words):
    rec = _first_record(adapt_env)
    rec["captions"][0] = caption
    folder = _write(adapt_env, "long", [json.dumps(rec)])  # JSON escapes the surrogate as \ud800
    agent, vit, detok, _ = tiny()
    with pytest.raises(InputError) as err:
        run(NODE, _kwargs(agent, vit, detok, data_folder=folder, steps=1))
    msg = str(err.value)
    for w in words + ["one frame's sentence", "data_folder"]:
        assert w in msg, (w, msg)
    assert "--max-length" not in msg and "raise it" not in msg, msg
    _nothing_trained(adapt_env)


def test_a_non_utf8_jsonl_names_the_file_and_the_line(adapt_env):
    rec = _first_record(adapt_env)
    good = json.dumps(rec)
    bad = json.dumps(dict(rec, captions=["Caf\u00e9 time."] + rec["captions"][1:]), ensure_ascii=False)
    folder = _write(adapt_env, "latin1", [good, bad.encode("latin-1")])
    with pytest.raises(InputError) as err:
        training.load_data_records(training.resolve_data_folder(folder, node=N), node=N)
    msg = str(err.value)
    assert "latin1/stories.jsonl line 2: not UTF-8 text (byte 0xe9 at column" in msg, msg
    assert "Save the file as UTF-8" in msg


def test_cancel_stops_the_reading_within_2_seconds(adapt_env, monkeypatch):
    """A long .jsonl (every line a valid story whose captions are tokenized): /interrupt 0.3 s into the reading
    stops it at once, long before the file is read."""
    rec = _first_record(adapt_env)
    folder = _write(adapt_env, "long", [json.dumps(rec)] * 5_000)  # ~20 s of reading without Cancel
    agent, _, _, _ = tiny()
    data = training.resolve_data_folder(folder, node=N)
    pressed = threading.Event()

    def throw():  # ComfyUI's check: raises once /interrupt was posted
        if pressed.is_set():
            raise Interrupted("interrupted")

    monkeypatch.setattr(sys.modules["comfy.model_management"], "throw_exception_if_processing_interrupted", throw)
    timer = threading.Timer(0.3, pressed.set)
    timer.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(Interrupted):
            training.load_data_records(data, node=N, check_caption=training.caption_checker(agent, N))
    finally:
        timer.cancel()
    stopped = time.perf_counter() - t0 - 0.3
    print(f"\nstopped {stopped * 1000:.0f} ms after the interrupt")
    assert stopped < 2.0


def test_no_sample_fits_message_is_in_the_nodes_terms():
    err = ValueError("no sample shorter than --max-length 1280 in 50 draws; raise it.")
    msg = str(training._training_data_error(N, {"data": "/x/input/mini", "max_length": 1280}, err))
    assert msg.startswith(f"{N}: no training sample of the stories in data_folder (mini) fitted the 1280-token")
    assert "--max-length" not in msg and "Shorten the captions" in msg


@pytest.mark.parametrize(
    "values, words",
    [
        ({"data_folder": "../outside"}, ["data_folder", "made of dots only"]),
        ({"data_folder": "/etc"}, ["absolute path"]),
        ({"data_folder": "no_such_folder"}, ["not found", "seedstory_core.data.mini"]),
        ({"output_name": "../evil"}, ["output_name"]),
        ({"learning_rate": float("nan")}, ["'learning_rate' must be a finite number", "found nan"]),
        ({"learning_rate": 2.0}, ["'learning_rate' must be between 0.0 and 1.0, found 2.0"]),
    ],
)
def test_validate_inputs_refuses_before_anything_is_queued(adapt_env, values, words):
    verdict = Adapt.VALIDATE_INPUTS(**values)
    assert isinstance(verdict, str) and verdict.startswith(N), verdict
    for w in words:
        assert w in verdict, (w, verdict)


def test_validate_inputs_lets_good_and_linked_values_through(adapt_env):
    assert Adapt.VALIDATE_INPUTS(data_folder="mini", output_name="adapted", learning_rate=1e-4) is True
    assert Adapt.VALIDATE_INPUTS(data_folder=None, output_name=None, learning_rate=None) is True
