"""SeedStory Story Cast, the cast input of Story Start / Generate Story and the consistency retry of Generate Story and
Story Step, as nodes (ComfyUI stand-ins, tiny random model); the retry's per-story loop
(:class:`seedstory_core.retry_render.StoryRetry`) on fake drawings; the example workflow's cast pictures."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seedstory_core.cast import CastSheet, cast_block_ids
from seedstory_core.consistency import RetrySettings
from seedstory_core.data import mini
from seedstory_core.retry_render import StoryRetry, retry_settings
from tests.support.comfy_stubs import NODES, STEP, InputError, generate_inputs, glue, run, start_image, tiny

REPO_ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = "Max runs to the sea."


def cast_inputs(vit, **overrides) -> dict:
    """Story Cast with Max (image_1) and Zoe (image_3, a batch of two: its first picture is used); slot 2 empty."""
    zoe = torch.cat([start_image(seed=3), start_image(seed=4)])
    inputs = dict(visual_tokenizer=vit, image_1=start_image(seed=2), name_1="Max", image_3=zoe, name_3=" Zoe ")
    inputs.update(overrides)
    return inputs


@pytest.fixture
def executing(monkeypatch):
    """Story Step runs as node "9" (ComfyUI's execution context, which the stand-ins lack)."""
    monkeypatch.setattr(glue, "executing_node_id", lambda: "9")


def texts_of(comfy, node_id: str):
    return [c[2] for c in comfy.calls if c[0] == "text" and c[1] == node_id]


# ------------------------------------------------------------------------------------------------ Story Cast
def test_story_cast_tokenizes_each_picture_as_vit_tokenize_does(comfy):
    agent, vit, _, _ = tiny()
    cls = NODES["SeedStoryStoryCast"]
    assert cls.RETURN_TYPES == ("SEEDSTORY_CAST",) and cls.CATEGORY == "SEED-Story/story"
    optional = cls.INPUT_TYPES()["optional"]
    assert list(optional) == [f"{kind}_{k}" for k in range(1, 6) for kind in ("image", "name")]
    inputs = cast_inputs(vit)
    (cast,) = run("SeedStoryStoryCast", inputs)
    assert isinstance(cast, CastSheet) and cast.names == ("Max", "Zoe")
    assert [tuple(f.shape) for f in cast.features] == [(1, 64, agent.feature_dim)] * 2
    assert all(f.dtype == torch.float32 for f in cast.features)
    (max_feats,) = run("SeedStoryViTTokenize", {"visual_tokenizer": vit, "image": inputs["image_1"]})
    (zoe_feats,) = run("SeedStoryViTTokenize", {"visual_tokenizer": vit, "image": inputs["image_3"][:1]})
    assert torch.equal(cast.features[0], max_feats) and torch.equal(cast.features[1], zoe_feats)
    (squashed,) = run("SeedStoryStoryCast", cast_inputs(vit, image_1=start_image(h=40, w=96, seed=2)))
    (cropped,) = run(
        "SeedStoryStoryCast", cast_inputs(vit, image_1=start_image(h=40, w=96, seed=2), resize_mode="keep_ratio")
    )
    assert not torch.equal(squashed.features[0], cropped.features[0])  # resize_mode reaches the tokenizer


def test_story_cast_refuses_bad_slots_naming_the_slot(comfy):
    _, vit, _, _ = tiny()
    cases = [
        (dict(image_2=start_image(), name_2=""), r"slot 2 has a picture \(image_2\) but no name: type the .*'name_2'"),
        (dict(name_4="Ben"), r"slot 4 has the name 'Ben' \(name_4\) but no picture: connect .*'image_4', or clear"),
        (dict(name_3="Max"), r"cast names must be distinct; \['Max'\] appear twice"),
        (dict(name_1="Max: the hero"), r"name_1: cast name 'Max: the hero': expected at most 40 characters"),
        (dict(image_1="not a picture"), r"input 'image_1' expects an IMAGE"),
        (dict(image_1=None, name_1="", image_3=None, name_3=""), r"the cast sheet is empty: connect .*'image_1'"),
    ]
    for overrides, message in cases:
        with pytest.raises(InputError, match=r"SeedStory Story Cast: " + message):
            run("SeedStoryStoryCast", cast_inputs(vit, **overrides))
    with pytest.raises(InputError, match=r"input 'visual_tokenizer' expects a SEEDSTORY_VISUAL_TOKENIZER"):
        run("SeedStoryStoryCast", cast_inputs("vit"))
    validate = NODES["SeedStoryStoryCast"].VALIDATE_INPUTS
    assert validate(name_1="Max", name_2="", name_3="Zoe") is True and validate() is True
    assert validate(name_2="A<b").startswith("SeedStory Story Cast: name_2: cast name 'A<b'")
    assert "distinct" in validate(name_1="Max", name_5=" Max")


def test_a_cast_sheet_of_another_width_or_type_is_refused_by_the_story_nodes(comfy):
    agent, vit, detok, _ = tiny()
    narrow = CastSheet(("Max",), (torch.zeros(1, 64, 8),))
    start = dict(agent=agent, opening_text="Hi.", image=start_image(), visual_tokenizer=vit)
    with pytest.raises(InputError, match=r"Story Start: the cast sheet's pictures have features of width 8, but this"):
        run("SeedStoryStoryStart", dict(start, cast=narrow))
    with pytest.raises(InputError, match=r"Generate Story: input 'cast' expects a SEEDSTORY_CAST \(connect the cast"):
        run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, cast="Max"))
    with pytest.raises(
        InputError, match=r"Generate Story: consistency retry: max_redraws must be in \[0, 8\], found 9"
    ):
        run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, consistency_retry=9))
    for node_id in ("SeedStoryGenerateStory", "SeedStoryStoryStep"):
        verdict = NODES[node_id].VALIDATE_INPUTS(retry_threshold=math.nan)
        assert isinstance(verdict, str) and "'retry_threshold' must be a finite number" in verdict, verdict
        assert (
            NODES[node_id]
            .VALIDATE_INPUTS(retry_threshold=1.5)
            .endswith("'retry_threshold' must be between -1.0 and 1.0, found 1.5.")
        )


# ------------------------------------------------------------------------------------------------ Generate Story
def test_generate_story_with_a_cast_and_the_consistency_retry(comfy):
    agent, vit, detok, _ = tiny()
    (cast,) = run("SeedStoryStoryCast", cast_inputs(vit))
    story = dict(story_steps=1, mode="visualization", captions=CAPTIONS, opening_text="Max and Zoe are at the beach.")
    plain = run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, **story))
    with_cast = run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, cast=cast, **story))
    # the cast block is pinned between BOS and the opening sentence; the pictures change with the context
    final = with_cast[2]
    block, _, _ = cast_block_ids(agent.tokenizer, ["Max", "Zoe"])
    assert final.cast.names == ("Max", "Zoe") and final.cast_tokens == 1 + len(block)
    assert list(final.token_ids[1 : final.cast_tokens]) == block and plain[2].cast is None
    assert with_cast[1] == plain[1] and torch.equal(with_cast[0][0], plain[0][0])  # same sentences and start frame
    assert not torch.equal(with_cast[0][1], plain[0][1])
    assert with_cast[3].states[0].cast is final.cast  # the record's states carry it (Redo Frame)

    # retry against the cast sheet, threshold 1.0: the frame names Max and is redrawn once
    comfy.calls.clear()
    retried = run(
        "SeedStoryGenerateStory",
        generate_inputs(agent, vit, detok, cast=cast, consistency_retry=1, retry_threshold=1.0, unique_id="7", **story),
    )
    last = texts_of(comfy, "7")[-1].split("\n")
    assert last[:-1] == [f"{i}. {s}" for i, s in enumerate(with_cast[1].split("\n"))]
    assert last[-1].startswith("retry: 1 of 1 frames redrawn (1 redraws, ") and last[-1].endswith(" s)"), last
    assert any("frame 1: redraw 1 of at most 1" in t for t in texts_of(comfy, "7"))
    assert [c for c in comfy.calls if c[0] == "progress"][-1][1:] == (1, 1)  # the bar counts first drawings
    assert retried[2].token_ids == final.token_ids and retried[1] == with_cast[1]  # the story itself is unchanged
    assert retried[0].shape == with_cast[0].shape

    # a threshold nothing falls below: checked, never redrawn, the pictures of the run without the retry
    comfy.calls.clear()
    kept = run(
        "SeedStoryGenerateStory",
        generate_inputs(
            agent, vit, detok, cast=cast, consistency_retry=2, retry_threshold=-1.0, unique_id="7", **story
        ),
    )
    assert texts_of(comfy, "7")[-1].endswith("\nretry: 0 of 1 frames redrawn (0 redraws, 0.0 s)")
    assert torch.equal(kept[0], with_cast[0])

    # without a cast sheet the references are the first appearances: Max and Zoe in the start picture
    comfy.calls.clear()
    run(
        "SeedStoryGenerateStory",
        generate_inputs(agent, vit, detok, consistency_retry=1, retry_threshold=1.0, unique_id="7", **story),
    )
    assert texts_of(comfy, "7")[-1].split("\n")[-1].startswith("retry: 1 of 1 frames redrawn (1 redraws, ")


# ------------------------------------------------------------------------------------------------ Story Step
def test_story_step_keeps_the_cast_through_branches_and_renders_its_frame(comfy, executing):
    agent, vit, detok, _ = tiny()
    (cast,) = run("SeedStoryStoryCast", cast_inputs(vit))
    cls = NODES["SeedStoryStoryStep"]
    assert cls.RETURN_TYPES[:3] == ("SEEDSTORY_STATE", "STRING", "SEEDSTORY_IMAGE_FEATURES")  # old links still fit
    assert cls.RETURN_TYPES[3] == "IMAGE" and cls.RETURN_NAMES[3] == "image"
    state, _ = run(
        "SeedStoryStoryStart",
        dict(agent=agent, opening_text="Hi.", image=start_image(), visual_tokenizer=vit, cast=cast),
    )
    a = run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state))
    b = run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, text="Suddenly"))
    a2 = run("SeedStoryStoryStep", dict(STEP, agent=agent, state=a[0]))
    for branch in (a[0], b[0], a2[0]):
        assert branch.cast is state.cast and branch.cast_tokens == state.cast_tokens > 1
        assert branch.token_ids[: state.cast_tokens] == state.token_ids[: state.cast_tokens]
    assert a[3] is None and b[3] is None  # no detokenizer: no picture

    # with a detokenizer the step renders its frame as Generate Story renders the same frame of the same story
    render = dict(detokenizer=detok, diffusion_steps=1, guidance_scale=2.0)
    stepped = run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, **render))
    generated = run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, story_steps=1, cast=cast))
    assert stepped[3].shape == (1, 64, 64, 3) and torch.equal(stepped[3][0], generated[0][1])

    # the retry against the state's cast sheet: threshold 1.0 -> one redraw, the cost shown on the node
    retried = run(
        "SeedStoryStoryStep",
        dict(STEP, agent=agent, state=state, mode="visualization", text="Max waves.", visual_tokenizer=vit, **render)
        | dict(consistency_retry=1, retry_threshold=1.0),
    )
    assert retried[3].shape == (1, 64, 64, 3) and retried[1] == "Max waves."
    note = texts_of(comfy, "9")[-1]
    assert note.startswith("look ") and " (threshold 1.00); retry: 1 of 1 frames redrawn (1 redraws, " in note


def test_story_step_retry_needs_a_cast_sheet_and_the_models(comfy, executing):
    agent, vit, detok, _ = tiny()
    plain, _ = run(
        "SeedStoryStoryStart", dict(agent=agent, opening_text="Hi.", image=start_image(), visual_tokenizer=vit)
    )
    retry = dict(consistency_retry=2, detokenizer=detok, visual_tokenizer=vit)
    with pytest.raises(
        InputError,
        match=r"Story Step: consistency_retry is 2, but this story has no cast sheet .*"
        r"Connect a SeedStory Story Cast node .* or use Generate Story",
    ):
        run("SeedStoryStoryStep", dict(STEP, agent=agent, state=plain, **retry))
    (cast,) = run("SeedStoryStoryCast", cast_inputs(vit))
    state, _ = run("SeedStoryStoryStart", dict(agent=agent, opening_text="Hi.", features=cast.features[0], cast=cast))
    with pytest.raises(
        InputError, match=r"consistency_retry is 1, but 'detokenizer' and 'visual_tokenizer' are not conn"
    ):
        run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, consistency_retry=1))
    with pytest.raises(InputError, match=r"consistency_retry is 1, but 'visual_tokenizer' is not connected"):
        run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, consistency_retry=1, detokenizer=detok))
    # the image output linked to another node of the prompt, no detokenizer: refused before the step runs
    prompt = {"9": {"class_type": "SeedStoryStoryStep", "inputs": {}}, "5": {"inputs": {"images": ["9", 3]}}}
    with pytest.raises(InputError, match=r"Story Step: the image output is connected, but no 'detokenizer' is"):
        run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, prompt=prompt))
    prompt["5"]["inputs"]["images"] = ["9", 2]  # the features output: fine
    assert run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, prompt=prompt))[3] is None
    with pytest.raises(InputError, match=r"unknown input\(s\) \['colour'\]"):
        run("SeedStoryStoryStep", dict(STEP, agent=agent, state=state, colour=1))


# ------------------------------------------------------------------------------------------------ the retry loop
def test_story_retry_keeps_the_best_drawing_and_learns_first_appearances():
    """Fake drawings: the picture is its seed, its features a direction whose cosine to the reference is known."""
    ref = torch.tensor([[[1.0, 0.0]]])
    looks = {}  # seed -> similarity of that drawing to the reference

    def feats(sim):
        return torch.tensor([[[sim, math.sqrt(1 - sim * sim)]]])

    def draw(seed, redraw):
        looks.setdefault(seed, [0.1, 0.7, 0.4][redraw])
        return seed

    retry = StoryRetry(RetrySettings(threshold=0.9, max_redraws=2), lambda seed: feats(looks[seed]), names=["Max"])
    retry.observe("Max is at the beach.", ref)
    outcome = retry.draw("He runs.", draw, seed=5)  # a pronoun: the previous sentence's characters
    assert outcome.redraws == 2 and outcome.score == pytest.approx(0.7) and outcome.picture == outcome.seed != 5
    nobody = retry.draw("The sea is blue.", draw, seed=6)  # names nobody: drawn once, nothing checked
    assert nobody.score is None and nobody.redraws == 0 and nobody.picture == 6
    report = retry.report.to_dict()
    assert report["frames"] == 2 and report["frames_checked"] == 1 and report["frames_redrawn"] == 1
    assert report["redraws"] == 2 and retry.report.summary().startswith("retry: 1 of 2 frames redrawn (2 redraws, ")
    assert retry_settings(0) is None and retry_settings(3, 0.5) == RetrySettings(0.5, 3)
    for bad in ((-1, 0.8), (9, 0.8), (1, math.nan), (1, True), (1.5, 0.8)):
        with pytest.raises(ValueError):
            retry_settings(*bad)


# ------------------------------------------------------------------------------------------------ example pictures
def test_the_cast_pictures_of_the_example_workflow_are_the_demo_storys_cast_sheet(comfy):
    story = mini.generate_story(1000, 0, looks="fixed")  # the looks workflows/assets/seedstory_start.png shows
    start = np.asarray(Image.open(REPO_ROOT / "workflows/assets/seedstory_start.png").convert("RGB"))
    assert np.array_equal(np.asarray(mini.render_story(story, 64)[0].convert("RGB")), start)
    for name, picture in mini.cast_pictures(story):
        shipped = REPO_ROOT / f"workflows/assets/seedstory_cast_{name.lower()}.png"
        assert np.array_equal(np.asarray(Image.open(shipped).convert("RGB")), np.asarray(picture.convert("RGB")))
        image, sentence = run("SeedStoryExamplePicture", {"picture": shipped.name})
        assert image.shape == (1, 64, 64, 3) and sentence == ""
