"""The no-repeated-sentence decoding rule (DecodingSettings.no_repeat_sentences, StoryEngine._decode_sentence).

Runs on the bundled tiny model: greedy decoding without a repetition penalty loops on it ("She plays with the
balloon." five times in a row), which is what the rule is for.
"""

from pathlib import Path

import pytest
import torch

from evaluation.decoding import decoding_for
from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.data import mini
from seedstory_core.reencode import ReencodePolicy
from seedstory_core.story import MAX_SENTENCE_RETRIES, DecodingSettings, StorySettings, sentence_key, text_history
from seedstory_core.tokens import TokenKind
from seedstory_core.tell import build_parser

TINY = Path(__file__).resolve().parents[2] / "models" / "seedstory-tiny"


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    return SeedStoryBundle.load(TINY)


def _start(engine, k):
    story = mini.generate_story(5, k, frames=3)
    picture = mini.render_story(
        {**story, "captions": story["captions"][:1], "attributes": story["attributes"][:1]}, size=64
    )[0]
    return engine.start(story["captions"][0], image=picture)


def _story(engine, state, rule, steps=9, penalty=1.0):
    decoding = DecodingSettings(repetition_penalty=penalty, no_repeat_sentences=rule, max_sentence_tokens=40)
    _, results = engine.run(state, steps, decoding=decoding)
    return [state.sentences[0]] + [r.sentence for r in results]


def _repeats(sentences):
    return len(sentences) - len({sentence_key(s) for s in sentences})


@pytest.mark.parametrize("k", [0, 1])
def test_the_rule_removes_the_loops_and_changes_nothing_before_the_first_repeat(bundle, k):
    engine = bundle.engine()
    state = _start(engine, k)
    plain = _story(engine, state, rule=False)
    ruled = _story(engine, state, rule=True)
    assert _repeats(plain) >= 3, plain  # the setting loops without the rule, so this test exercises it
    first = next(i for i, s in enumerate(plain) if s in plain[:i])
    assert ruled[:first] == plain[:first]
    assert ruled[first] != plain[first]
    # the rule retries a repeated sentence at most MAX_SENTENCE_RETRIES times, then keeps it: on the bundled model
    # story 0 ends with two repeats (from 5: "George arrives." and "George and Zoe play with the balloon." kept after
    # 3 retries each) and story 1 with one ("Ben and George play with the cake.", from 4)
    assert _repeats(ruled) <= 2 and _repeats(plain) - _repeats(ruled) >= 3, ruled
    # the rule writes sentences, not fragments: each one is a real StoryStream-mini sentence ending in a full stop
    assert all(s.endswith(".") and len(s.split()) >= 2 for s in ruled), ruled


def test_off_is_the_plain_decoding_and_the_input_state_is_untouched(bundle):
    engine = bundle.engine()
    state = _start(engine, 0)
    before = (state.token_ids, state.sentences, state.context.length)
    once = _story(engine, state, rule=False, steps=4)
    _story(engine, state, rule=True, steps=4)
    assert (state.token_ids, state.sentences, state.context.length) == before
    assert _story(engine, state, rule=False, steps=4) == once


def test_retries_stop_after_the_limit_and_each_bans_the_first_word(bundle, monkeypatch):
    engine = bundle.engine()
    state = _start(engine, 0)
    copy = engine._text_ids(state.sentences[0], instruction=True)
    seen = []

    def always_the_same(self, state, cache, logits, sentence_ids, decoding, check_cancel, on_text, bans=None):
        seen.append({p: set(b) for p, b in (bans or {}).items()})
        sentence_ids.extend(copy)
        return False

    monkeypatch.setattr(type(engine), "_decode_text", always_the_same)
    result = engine.step(state, decoding=DecodingSettings(no_repeat_sentences=True, max_sentence_tokens=40))
    assert len(seen) == MAX_SENTENCE_RETRIES + 1  # the first attempt and the retries, then the copy is kept
    first = len(engine.tokenizer.inst_ids)  # the token after the [INST] the model writes
    assert seen[0] == {} and seen[1] == {first: {copy[first]}}
    assert sentence_key(result.sentence) == sentence_key(state.sentences[0])
    seen.clear()
    engine.step(state, decoding=DecodingSettings(no_repeat_sentences=False, max_sentence_tokens=40))
    assert seen == [{}]


def test_a_users_text_is_kept_even_when_it_is_an_earlier_sentence(bundle):
    engine = bundle.engine()
    state = _start(engine, 0)
    given = state.sentences[0]
    result = engine.step(state, text=given, decoding=DecodingSettings(no_repeat_sentences=True, max_sentence_tokens=40))
    assert result.sentence.startswith(given.rstrip(".").split()[0])
    assert result.state.step == state.step + 1


def test_bad_setting_is_refused():
    with pytest.raises(ValueError, match="no_repeat_sentences must be True or False"):
        DecodingSettings(no_repeat_sentences="yes")
    assert sentence_key("  She  waves. ") == "She waves." and sentence_key("she waves.") != "She waves."


def test_tell_keeps_the_rule_unless_asked_and_the_evaluation_can_turn_it_on():
    base = ["--model", "m", "--image", "i.png", "--text", "t", "--out", "o"]
    assert build_parser().parse_args(base).allow_repeats is False
    assert build_parser().parse_args(base + ["--allow-repeats"]).allow_repeats is True
    assert decoding_for("rep1.2+nosent").no_repeat_sentences is True
    assert decoding_for("rep1.2").no_repeat_sentences is False


def test_the_official_loop_engine_keeps_the_rule_too(bundle):
    kv = bundle.engine()
    settings = StorySettings(policy=ReencodePolicy(window_images=8))
    official = bundle.engine(settings.policy)
    assert type(official).__name__ == "ReencodeStoryEngine"
    state = official.start(_start(kv, 0).sentences[0], features=_start(kv, 0).last_features, settings=settings)
    plain = _story(official, state, rule=False, steps=6)
    ruled = _story(official, state, rule=True, steps=6)
    assert _repeats(plain) >= 2 and _repeats(ruled) == 0, (plain, ruled)
    assert ruled == _story(kv, _start(kv, 0), rule=True, steps=6)  # nothing evicted yet: the same story


def test_text_history_keeps_the_last_sentences_text_runs():
    """The penalty's history: each run of text tokens is a sentence; images and special tokens separate them."""
    T, G, B = TokenKind.TEXT, TokenKind.IMG, TokenKind.BOI
    ids = [1, 2, 90, 91, 3, 4, 5, 92, 93, 6]
    kinds = [T, T, B, G, T, T, T, B, G, T]
    assert text_history(ids, kinds) == [1, 2, 3, 4, 5, 6]
    assert text_history(ids, kinds, 0) == [1, 2, 3, 4, 5, 6]
    assert text_history(ids, kinds, 2) == [3, 4, 5, 6]
    assert text_history(ids, kinds, 1) == [6]
    assert text_history(ids, kinds, 10) == [1, 2, 3, 4, 5, 6]
    assert text_history([], [], 3) == []


def test_a_windowed_rule_allows_an_old_sentence_again_and_never_a_recent_one(bundle):
    """``no_repeat_window=N``: a sentence may copy one written more than N sentences ago, never one of the last N;
    a window as long as the story is the whole-story rule."""
    engine = bundle.engine()
    state = _start(engine, 0)
    steps = 12

    def run(**kw):
        decoding = DecodingSettings(no_repeat_sentences=True, max_sentence_tokens=40, **kw)
        _, results = engine.run(state, steps, decoding=decoding)
        return [state.sentences[0]] + [r.sentence for r in results]

    whole = run()
    assert run(no_repeat_window=steps + 1) == whole
    window = 2
    windowed = run(no_repeat_window=window)
    assert windowed != whole  # the window changes this story, so the checks below exercise it
    for i, s in enumerate(windowed):
        if i:
            recent = [sentence_key(x) for x in windowed[max(0, i - window) : i]]
            # a copy of a recent sentence is kept only after MAX_SENTENCE_RETRIES retries: none on this story
            assert sentence_key(s) not in recent, (i, windowed)
    assert _repeats(windowed) > 0  # an older sentence came back: the rule no longer looks that far
