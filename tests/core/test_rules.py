"""seedstory_core.rules: the model's rules for a story run, checked before any model work (one check for the nodes,
``tell`` and the evaluation)."""

from __future__ import annotations

import dataclasses

import pytest

from seedstory_core.config import official_config
from seedstory_core.rules import (
    StoryRuleError,
    check_feature_width,
    check_mode,
    check_story_run,
    check_text_length,
    max_text_tokens,
    story_texts,
)
from seedstory_core.tiny import default_tiny_tokenizer, tiny_config


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config().agent
    n_img = config.image_tokens.num_img_tokens
    return default_tiny_tokenizer(config.llm.vocab_size - 2 - n_img), config


def _short(config, positions: int):
    return dataclasses.replace(config, llm=dataclasses.replace(config.llm, max_position_embeddings=positions))


def test_max_text_tokens_is_an_eighth_of_the_positions_minus_the_image():
    official = official_config().agent
    assert max_text_tokens(official) == 4096 // 8 - 66 == 446
    assert max_text_tokens(_short(official, 1024)) == 62
    assert max_text_tokens(_short(official, 64)) == 16  # never below 16


def test_text_length_counts_tokens_of_the_stripped_text(tiny):
    tokenizer, config = tiny
    limit = max_text_tokens(config)
    assert check_text_length(tokenizer, config, "  Max waves.  ", name="t") == "  Max waves.  "
    assert check_text_length(tokenizer, config, "   ", name="t") == "   "  # empty is the caller's rule
    long = "Max waves at Zoe. " * 200
    n = len(tokenizer.encode(long.strip()))
    assert n > limit
    with pytest.raises(StoryRuleError, match=rf"'opening_text' is {n} tokens long .* at most {limit} tokens"):
        check_text_length(tokenizer, config, long, name="opening_text")


def test_visualization_needs_one_non_empty_caption_per_step():
    assert story_texts([" a ", "", "b"], 2, "visualization") == ["a", "b"]
    assert story_texts([" a ", "", "b"], 5, "generation") == ["a", "", "b"]  # beginnings, kept in place
    assert story_texts(None, 3, "generation") == []
    with pytest.raises(StoryRuleError, match="one caption per step: story_steps=3 needs 3 .*has 1 non-empty"):
        story_texts(["a", "", " "], 3, "visualization")
    with pytest.raises(StoryRuleError, match="--frames=2 needs 2 non-empty lines in '--captions'"):
        story_texts([], 2, "visualization", captions_name="--captions", steps_name="--frames")
    with pytest.raises(StoryRuleError, match="story_steps must be >= 1, found 0"):
        story_texts([], 0, "generation")
    with pytest.raises(StoryRuleError, match="mode must be one of"):
        check_mode("draw")


def test_feature_width_of_agent_and_de_tokenizer_must_agree():
    check_feature_width(256, 256)
    with pytest.raises(StoryRuleError, match="takes features of width 4096 but the agent makes 256"):
        check_feature_width(256, 4096)


def test_story_run_checks_every_rule_before_any_model_work(tiny):
    tokenizer, config = tiny
    run = check_story_run(
        tokenizer, config, opening_text="Hi.", steps=2, mode="visualization", captions=["A.", "", "B."]
    )
    assert run.texts == ["A.", "B."] and run.opening_text == "Hi."
    long = "Max waves at Zoe. " * 200
    with pytest.raises(StoryRuleError, match=r"'captions \(line 2\)' is \d+ tokens long"):
        check_story_run(tokenizer, config, opening_text="Hi.", steps=2, captions=["A.", long])
    with pytest.raises(StoryRuleError, match="'--text' is"):
        check_story_run(tokenizer, config, opening_text=long, steps=1, opening_name="--text")
    width = config.input_resampler.kv_dim
    check_story_run(tokenizer, config, opening_text="Hi.", steps=1, detokenizer_width=width)
    with pytest.raises(StoryRuleError, match="load both from the same model"):
        check_story_run(tokenizer, config, opening_text="Hi.", steps=1, detokenizer_width=width + 1)
