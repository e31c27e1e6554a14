"""The decoding measurement (evaluation/decoding.py): its setting names, and the n-gram rule they can ask for."""

import pytest

from evaluation.decoding import decoding_for
from seedstory_core.story import DecodingSettings, StoryEngine


def test_decoding_setting_names():
    """The decoding measurement's setting names map to DecodingSettings."""
    d = decoding_for("greedy")
    assert not d.do_sample and d.repetition_penalty == 1.0 and d.no_repeat_ngram_size == 0
    d = decoding_for("sample0.7+rep1.2", seed=3)
    assert d.do_sample and d.temperature == 0.7 and d.top_p == 0.9 and d.repetition_penalty == 1.2 and d.seed == 3
    d = decoding_for("ngram6+rep1.2")
    assert d.no_repeat_ngram_size == 6 and d.repetition_penalty == 1.2
    with pytest.raises(ValueError, match="unknown decoding setting"):
        decoding_for("rep")


def test_no_repeat_ngram_is_a_processor_of_the_engine_after_the_others():
    assert StoryEngine.logits_processors(DecodingSettings()) is None
    procs = StoryEngine.logits_processors(decoding_for("ngram4"))
    assert [type(p).__name__ for p in procs] == ["NoRepeatNGramLogitsProcessor"]
    procs = StoryEngine.logits_processors(decoding_for("sample0.7+rep1.2+ngram3"))
    names = [type(p).__name__ for p in procs]
    assert names[0] == "RepetitionPenaltyLogitsProcessor" and names[-1] == "NoRepeatNGramLogitsProcessor"
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        DecodingSettings(no_repeat_ngram_size=-1)
