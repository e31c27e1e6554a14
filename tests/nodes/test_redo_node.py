"""SeedStory Redo Frame and SeedStory Example Picture as nodes (ComfyUI stand-ins, tiny random model): Generate
Story's story output, a redo of one frame through the node, its refusals; the bundled start pictures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.comfy_stubs import NODES, InputError, generate_inputs, run, tiny

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = dict(decoding="sample", temperature=1.3, top_p=0.95, top_k=50, seed=3)


def redo_inputs(agent, detok, story, **overrides):
    inputs = dict(agent=agent, detokenizer=detok, story=story, frame=2, seed=77, after="keep_sentences", sentence="")
    inputs.update(overrides)
    return inputs


def test_generate_story_outputs_its_story_and_redo_frame_remakes_one_frame(comfy):
    agent, vit, detok, _ = tiny()
    images, sentences, final, story = run(
        "SeedStoryGenerateStory", generate_inputs(agent, vit, detok, story_steps=4, **SAMPLE)
    )
    assert NODES["SeedStoryGenerateStory"].RETURN_TYPES[3] == "SEEDSTORY_STORY"
    assert story.steps == 4 and story.final_state is final and len(story.frames) == 5
    assert torch.equal(torch.cat(story.frames), images)
    assert story.render["steps"] == 1 and story.render["seed"] == 3 and story.decoding.seed == 3

    comfy.calls.clear()
    new_images, new_sentences, new_story = run("SeedStoryRedoFrame", redo_inputs(agent, detok, story))
    assert new_images.shape == images.shape
    assert torch.equal(new_images[:2], images[:2])  # frames 0 and 1: bit-identical
    assert not torch.equal(new_images[2], images[2])  # frame 2: another seed
    assert all(not torch.equal(new_images[j], images[j]) for j in (3, 4))  # re-drawn in the new context
    old, new = sentences.split("\n"), new_sentences.split("\n")
    assert new[:2] == old[:2] and new[3:] == old[3:]  # keep_sentences
    assert new_story.states[:2] == story.states[:2] and new_story.render["seed"] == 77
    progress = [c for c in comfy.calls if c[0] == "progress"]
    assert progress and progress[-1][1:] == (3, 3)  # frames 2, 3, 4 at one diffusion step each

    # a new sentence for the frame, and a redo of the redo (its story output chains)
    _, chained, _ = run(
        "SeedStoryRedoFrame", redo_inputs(agent, detok, new_story, frame=4, sentence="A red kite flies.")
    )
    assert chained.split("\n")[:4] == new[:4] and chained.split("\n")[4] == "A red kite flies."


def test_redo_frame_refusals_name_the_node_and_what_to_give(comfy):
    agent, vit, detok, _ = tiny()
    *_, story = run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, story_steps=2))
    with pytest.raises(
        InputError, match=r"SeedStory Redo Frame: frame 3 cannot be redone: this story has frames 0 to 2"
    ):
        run("SeedStoryRedoFrame", redo_inputs(agent, detok, story, frame=3))
    with pytest.raises(InputError, match=r"SeedStory Redo Frame: input 'story' expects a SEEDSTORY_STORY"):
        run("SeedStoryRedoFrame", redo_inputs(agent, detok, "not a story"))
    with pytest.raises(InputError, match=r"SeedStory Redo Frame: 'sentence' is .*Shorten it"):
        run("SeedStoryRedoFrame", redo_inputs(agent, detok, story, sentence="word " * 2000))
    # refused before anything is queued (POST /prompt answers 400), an empty sentence is fine
    validate = NODES["SeedStoryRedoFrame"].VALIDATE_INPUTS
    assert validate(sentence="") is True and validate(sentence=None) is True
    assert validate(sentence="word " * 2000).startswith("SeedStory Redo Frame: 'sentence' is 9,999 characters long")
    assert "control character U+001B" in validate(sentence="A \x1b cat.")


def test_a_story_drawn_with_the_retry_is_redone_with_it_and_keeps_its_cost(comfy):
    agent, vit, detok, _ = tiny()
    captions = "Ann came to the park.\nMax and Ann played.\nAnn waved.\nMax jumped."
    inputs = generate_inputs(
        agent,
        vit,
        detok,
        opening_text="Max sat in the park.",
        story_steps=4,
        mode="visualization",
        captions=captions,
        consistency_retry=1,
        retry_threshold=0.99,  # every checked frame is redrawn once
    )
    images, _, _, story = run("SeedStoryGenerateStory", inputs)
    assert story.retry is not None and story.retry.max_redraws == 1 and len(story.retry_frames) == 4
    report = story.retry_report()
    assert report.frames_checked == 3 and report.redraws == 3  # frame 1 brings Ann in: nothing to compare yet
    # the redo needs the visual tokenizer to apply the story's retry: refused (nothing lost) without it
    with pytest.raises(
        InputError,
        match=r"SeedStory Redo Frame: this story was drawn with the consistency retry.*"
        r"Connect the visual_tokenizer output.*Nothing was redone",
    ):
        run("SeedStoryRedoFrame", redo_inputs(agent, detok, story, frame=3))
    new_images, _, new_story = run(
        "SeedStoryRedoFrame", redo_inputs(agent, detok, story, frame=3, visual_tokenizer=vit)
    )
    assert torch.equal(new_images[:3], images[:3])
    assert new_story.retry_frames[:2] == story.retry_frames[:2]
    assert all(e["redraws"] == 1 and e["score"] is not None for e in new_story.retry_frames[2:])
    assert new_story.retry_report().redraws == 3
    # a story drawn without the retry ignores the input (its frames are drawn once)
    *_, plain = run("SeedStoryGenerateStory", generate_inputs(agent, vit, detok, story_steps=2))
    assert plain.retry is None and plain.retry_frames == ()
    *_, again = run("SeedStoryRedoFrame", redo_inputs(agent, detok, plain, frame=1, visual_tokenizer=vit))
    assert again.retry_report() is None


def test_example_picture_reads_the_bundled_pictures_without_the_input_folder(comfy):
    image, sentence = run("SeedStoryExamplePicture", {"picture": "seedstory_start.png"})
    want = np.asarray(Image.open(REPO_ROOT / "workflows/assets/seedstory_start.png").convert("RGB"), dtype=np.float32)
    assert image.shape == (1, *want.shape) and image.dtype == torch.float32
    assert torch.equal(image[0], torch.from_numpy(want / 255.0)) and sentence == ""
    demo, demo_sentence = run("SeedStoryExamplePicture", {"picture": "demo_start.png"})
    assert (
        demo.shape[0] == 1 and demo_sentence == (REPO_ROOT / "models/seedstory-tiny/demo_start.txt").read_text().strip()
    )
    spec = NODES["SeedStoryExamplePicture"].INPUT_TYPES()["required"]["picture"]
    assert spec[0] == ["seedstory_start.png", "demo_start.png", "seedstory_cast_max.png", "seedstory_cast_zoe.png"]
    assert spec[1]["default"] == "seedstory_start.png"
    with pytest.raises(InputError, match=r"'picture' must be one of the pack's example pictures.*Load Image"):
        run("SeedStoryExamplePicture", {"picture": "mine.png"})
    examples = sys.modules[NODES["SeedStoryExamplePicture"].__module__]
    with pytest.raises(InputError, match=r"could not be read.*reinstall"):
        examples.load_example_picture("seedstory_start.png", node="n", root=comfy.tmp)
