"""Refused before work (issue 25): what can be checked without the model is checked in ``VALIDATE_INPUTS`` (ComfyUI
answers POST /prompt with HTTP 400 and queues nothing; tests/server/test_server_confinement.py), and again when the
node runs, before any model work, for values that arrive through a link.

* every FLOAT input of every node: NaN and infinity (ComfyUI's own min/max test lets NaN through), the range
  (naming an input in ``VALIDATE_INPUTS`` skips ComfyUI's own check, nodes/inputs.py);
* width and height: multiples of the widget's step (8);
* story texts: lone surrogates, control characters, and texts surely over the token limit
  (:data:`seedstory_core.rules.MAX_TEXT_CHARS`); the exact count in tokens needs the agent's tokenizer and stays a
  run-time check.

Node functions run with the stand-ins of tests/support/comfy_stubs.py (fixture ``comfy``).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from tests.support.comfy_stubs import NODES, STEP, detokenize_inputs, generate_inputs, models, run, tiny

InputError = models.SeedStoryInputError


def _widgets(cls, kind):
    spec = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, entry in spec.get(group, {}).items():
            if entry[0] == kind:
                yield name, entry[1]


def _named(cls) -> set:
    hook = getattr(cls, "VALIDATE_INPUTS", None)
    return set(inspect.signature(hook).parameters) if hook is not None else set()


FLOATS = [(node_id, name) for node_id, cls in NODES.items() for name, _ in _widgets(cls, "FLOAT")]
STEPPED = [
    (node_id, name) for node_id, cls in NODES.items() for name, o in _widgets(cls, "INT") if o.get("step", 1) > 1
]


def test_there_are_float_and_stepped_widgets_to_check():
    assert len(FLOATS) >= 8 and len(STEPPED) >= 6, (FLOATS, STEPPED)


@pytest.mark.parametrize("node_id, name", FLOATS, ids=[f"{n}.{i}" for n, i in FLOATS])
def test_every_float_input_refuses_nan_infinity_and_out_of_range_at_validation(node_id, name):
    cls = NODES[node_id]
    assert name in _named(cls), f"{node_id}.VALIDATE_INPUTS does not check {name}"
    opts = dict(_widgets(cls, "FLOAT"))[name]
    for bad in (math.nan, math.inf, -math.inf):
        verdict = cls.VALIDATE_INPUTS(**{name: bad})
        assert isinstance(verdict, str) and verdict.startswith(f"{cls.DISPLAY_NAME}: '{name}' must be a finite"), (
            verdict
        )
    too_big = opts["max"] + 1
    assert f"'{name}' must be between {opts['min']} and {opts['max']}, found {too_big}" in cls.VALIDATE_INPUTS(
        **{name: too_big}
    )
    assert cls.VALIDATE_INPUTS(**{name: opts["default"]}) is True
    assert cls.VALIDATE_INPUTS(**{name: None}) is True  # linked: checked when the node runs


@pytest.mark.parametrize("node_id, name", STEPPED, ids=[f"{n}.{i}" for n, i in STEPPED])
def test_width_and_height_must_be_multiples_of_the_step_at_validation(node_id, name):
    cls = NODES[node_id]
    assert name in _named(cls), f"{node_id}.VALIDATE_INPUTS does not check {name}"
    verdict = cls.VALIDATE_INPUTS(**{name: 13})
    assert verdict == f"{cls.DISPLAY_NAME}: '{name}' must be a multiple of 8, found 13; use 8 or 16.", verdict
    assert "must be between" in cls.VALIDATE_INPUTS(**{name: 8192 + 8})
    assert cls.VALIDATE_INPUTS(**{name: 64}) is True


STORY_TEXTS = [
    ("SeedStoryStoryStart", "opening_text"),
    ("SeedStoryStoryStep", "text"),
    ("SeedStoryGenerateStory", "opening_text"),
    ("SeedStoryGenerateStory", "captions"),
]


@pytest.mark.parametrize("node_id, name", STORY_TEXTS, ids=[f"{n}.{i}" for n, i in STORY_TEXTS])
def test_story_texts_are_refused_at_validation(node_id, name):
    cls = NODES[node_id]
    other = {"opening_text": "Hi."} if name != "opening_text" and "opening_text" in _named(cls) else {}
    shown = f"{name} (line 2)" if name == "captions" else name
    prefix = "Fine.\n" if name == "captions" else ""
    cases = [
        (prefix + "Max\ud800 waves.", f"'{shown}' has a lone surrogate U+D800 at character 4"),
        (prefix + "Max\x1b waves.", f"'{shown}' has the control character U+001B at character 4"),
        (prefix + "Max waves. " * 700, f"'{shown}' is 7,699 characters long, surely more than the 446 tokens"),
    ]
    for text, expected in cases:
        verdict = cls.VALIDATE_INPUTS(**{name: text}, **other)
        assert isinstance(verdict, str) and verdict.startswith(f"{cls.DISPLAY_NAME}: {expected}"), verdict
    assert cls.VALIDATE_INPUTS(**{name: "Max waves.\n\tZoe smiles."}, **other) is True


# ------------------------------------------------------------------------------------------------ run time
def test_generate_story_refuses_a_bad_size_before_any_model_work(comfy):
    """A size that skipped validation (a linked value) fails before the story starts, not after frame 1."""
    agent, vit, detok, _ = tiny()
    comfy.calls.clear()
    with pytest.raises(InputError) as err:
        run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, width=12, height=64))
    msg = str(err.value)
    assert msg.startswith("SeedStory Generate Story: width and height must be positive multiples of 8"), msg
    assert "found 12x64; use 8x64. Nothing was rendered." in msg and "step 1" not in msg
    assert not [c for c in comfy.calls if c[0] in ("load_models_gpu", "ProgressBar", "text")]  # nothing ran


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_nan_or_infinite_float_never_runs_silently(comfy, bad):
    agent, vit, detok, _ = tiny()
    features = torch.zeros(1, *detok.uncond_features.shape[-2:])
    comfy.calls.clear()
    with pytest.raises(InputError, match=r"SeedStory De-tokenize: 'guidance_scale' must be a finite number"):
        run("SeedStoryDetokenize", detokenize_inputs(detok, features, guidance_scale=bad))
    with pytest.raises(InputError, match=r"SeedStory Generate Story: 'guidance_scale' must be a finite number"):
        run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, guidance_scale=bad))
    with pytest.raises(InputError, match=r"SeedStory Generate Story: 'temperature' must be a finite number"):
        run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, temperature=bad))
    assert not [c for c in comfy.calls if c[0] in ("load_models_gpu", "ProgressBar", "text")]  # nothing ran


@pytest.mark.parametrize("text", ["Max\ud800 waves.", "Max\x00 waves."])
def test_unclean_story_texts_are_refused_when_the_node_runs(comfy, text):
    agent, vit, detok, _ = tiny()
    with pytest.raises(InputError, match=r"SeedStory Generate Story: 'opening_text' has "):
        run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, opening_text=text))
    with pytest.raises(InputError, match=r"SeedStory Generate Story: 'captions \(line 2\)' has "):
        run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, captions="Fine.\n" + text))
    with pytest.raises(InputError, match=r"SeedStory Story Start: 'opening_text' has "):
        run("SeedStoryStoryStart", {"agent": agent, "opening_text": text, "batch_index": 0})
    image = torch.rand(1, 64, 64, 3)
    state, _ = run(
        "SeedStoryStoryStart", {"agent": agent, "opening_text": "Hi.", "image": image, "visual_tokenizer": vit}
    )
    with pytest.raises(InputError, match=r"SeedStory Story Step: 'text' has "):
        run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, text=text))
    with pytest.raises(InputError, match=r"SeedStory Story Step: 'temperature' must be a finite number"):
        run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, temperature=math.nan))
