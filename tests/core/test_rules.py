"""seedstory_core.rules: the model's rules for a story run, checked before any model work (one check for the nodes,
``tell`` and the evaluation)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from seedstory_core.config import official_config
from seedstory_core.tokenizer import SeedStoryTokenizer
from seedstory_core.rules import (
    LONGEST_PIECE_CHARS,
    MAX_TEXT_CHARS,
    SHIPPED_TEXT_TOKENS,
    StoryRuleError,
    check_clean_text,
    check_text_chars,
    check_feature_width,
    check_mode,
    check_story_run,
    check_text_length,
    max_text_tokens,
    story_texts,
)
from seedstory_core.tiny import default_tiny_tokenizer, tiny_config
from tests.conftest import require_or_skip
from tests.core.test_tokenizer import llama2_folder


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


def test_clean_text_refuses_lone_surrogates_and_control_characters_naming_input_and_place():
    fine = "Max waves.\n\tZoe smiles. \u00e9\U0001f600\r\n"
    assert check_clean_text(fine, "opening_text") is fine
    with pytest.raises(StoryRuleError, match=r"'opening_text' has a lone surrogate U\+D800 at character 4: "):
        check_clean_text("Max\ud800", "opening_text")
    with pytest.raises(
        StoryRuleError, match=r"'text' has a lone surrogate U\+DC01 at character 5 \(line 2, column 2\)"
    ):
        check_clean_text("ab\nc\udc01", "text")
    for char, code in (("\x00", "0000"), ("\x1b", "001B"), ("\x7f", "007F"), ("\x85", "0085")):
        with pytest.raises(StoryRuleError, match=rf"'captions' has the control character U\+{code} at character 2; "):
            check_clean_text("a" + char + "b", "captions")
    with pytest.raises(StoryRuleError, match=r"U\+0000 at character 6 \(line 2, column 2\); .*newlines and tabs only"):
        check_clean_text("abc\nd\x00", "text")


def test_story_run_refuses_unclean_opening_text_and_captions(tiny):
    tokenizer, config = tiny
    with pytest.raises(StoryRuleError, match=r"'opening_text' has a lone surrogate U\+D800"):
        check_story_run(tokenizer, config, opening_text="Hi \ud800", steps=1)
    with pytest.raises(StoryRuleError, match=r"'captions \(line 2\)' has the control character U\+0007"):
        check_story_run(tokenizer, config, opening_text="Hi.", steps=2, captions=["A.", "B\x07."])


def _longest_piece(tokenizer) -> int:
    """The longest text one token of ``tokenizer`` stands for (sentencepiece's word-start mark is one space)."""
    return max(len(piece.replace("\u2581", " ")) for piece in tokenizer._tok.get_vocab())


def test_the_bound_in_characters_holds_for_the_shipped_models(tiny):
    tokenizer, config = tiny
    assert SHIPPED_TEXT_TOKENS == max_text_tokens(official_config().agent) == max_text_tokens(config) == 446
    assert _longest_piece(tokenizer) <= LONGEST_PIECE_CHARS and MAX_TEXT_CHARS == 446 * 16
    worst = ("abcdefghijklmnopqrstuvwxyz " * 400)[: MAX_TEXT_CHARS + 1]  # any text this long is over the limit
    assert len(worst.strip()) == MAX_TEXT_CHARS + 1 and len(tokenizer.encode(worst)) > SHIPPED_TEXT_TOKENS
    assert check_text_chars("x" * MAX_TEXT_CHARS, "t") == "x" * MAX_TEXT_CHARS
    with pytest.raises(StoryRuleError, match=r"'captions \(line 3\)' is 7,137 characters long, surely more than"):
        check_text_chars("y" * (MAX_TEXT_CHARS + 1), "captions (line 3)")


def test_the_bound_in_characters_holds_for_llama2():
    folder = llama2_folder()
    if not (folder / "tokenizer.json").is_file():
        require_or_skip(f"real LLaMA-2 tokenizer not found at {folder}", "SEEDSTORY_REQUIRE_LLAMA_TOKENIZER")
    vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    assert max(len(piece.replace("\u2581", " ")) for piece in vocab) == LONGEST_PIECE_CHARS
    llama = SeedStoryTokenizer.from_folder(folder)
    worst = ("representations " * 500)[: MAX_TEXT_CHARS + 1]  # 446 of LLaMA-2's longest pieces, and one more letter
    assert len(worst.strip()) == MAX_TEXT_CHARS + 1 and len(llama.encode(worst)) > SHIPPED_TEXT_TOKENS


def test_huge_text_is_refused_without_tokenizing(tiny):
    tokenizer, config = tiny

    class Counting:
        calls = 0

        def encode(self, text):
            Counting.calls += 1
            return tokenizer.encode(text)

    with pytest.raises(StoryRuleError, match=r"'opening_text' is 50,000,000 characters long"):
        check_story_run(Counting(), config, opening_text="a" * 50_000_000, steps=1)
    with pytest.raises(StoryRuleError, match=r"at least 3,125,000 tokens, but this model takes at most 446"):
        check_text_length(Counting(), config, "a" * 50_000_000, name="t")
    assert Counting.calls == 0
