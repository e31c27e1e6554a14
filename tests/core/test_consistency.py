"""The consistency retry: similarity, references (cast sheet / first appearance), redraws and their cost."""

import pytest
import torch

from seedstory_core.cast import CastSheet
from seedstory_core.consistency import (
    LookReferences,
    RetryReport,
    RetrySettings,
    look_similarity,
    named_characters,
    redraw_seed,
    redraw_until_consistent,
)


def feats(seed, t=16, d=8):
    return torch.randn(1, t, d, generator=torch.Generator().manual_seed(seed))


def test_similarity_is_one_for_the_same_picture_and_lower_for_another():
    a, b = feats(1), feats(2)
    assert look_similarity(a, a) == pytest.approx(1.0, abs=1e-6)
    assert look_similarity(a, b) < 0.9
    # a recall: every reference token found among the frame's tokens scores 1 even if the frame has more
    assert look_similarity(torch.cat([a, b], dim=1), a) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="one width"):
        look_similarity(a, torch.zeros(1, 4, 3))


def test_named_characters_known_names_and_capitalised_words():
    assert named_characters("Zoe and Max dance.", ["Max", "Zoe", "Ben"]) == ["Zoe", "Max"]
    assert named_characters("Maxine waves.", ["Max"]) == []  # whole words only
    assert named_characters("He waves. Then Anna and Tom sing.") == ["Anna", "Tom"]


def test_references_cast_sheet_first_appearance_and_pronouns():
    tom, anna = feats(1), feats(2)
    refs = LookReferences(cast=CastSheet(("Tom", "Anna"), (tom, anna)))
    assert refs.score("Tom waves.", tom) == pytest.approx(1.0, abs=1e-6)
    assert refs.score("Tom and Anna wave.", tom) < 0.9  # the lowest over the named characters
    assert refs.score("The sun sets.", tom) is None  # nobody named, no previous sentence
    refs.observe("Anna sings.", anna)
    assert refs.score("She dances.", anna) == pytest.approx(1.0, abs=1e-6)  # the previous sentence's names
    # without a cast sheet: the first appearance is the reference, later frames do not replace it
    first = LookReferences(names=["Tom", "Anna"])
    assert first.score("Tom waves.", tom) is None
    first.observe("Tom waves.", tom)
    first.observe("Tom jumps.", anna)
    assert first.score("Tom sits.", tom) == pytest.approx(1.0, abs=1e-6)


def test_redraws_until_the_threshold_keeps_the_best_and_reports_the_cost():
    target = feats(0)
    drawings = {0: feats(5), redraw_seed(0, 1): feats(6), redraw_seed(0, 2): target}
    calls = []

    def render(seed):
        calls.append(seed)
        return f"picture-{seed}", drawings[seed]

    def score(f):
        return look_similarity(f, target)

    out = redraw_until_consistent(render, score, RetrySettings(threshold=0.99, max_redraws=4), seed=0)
    assert out.redraws == 2 and out.picture == f"picture-{redraw_seed(0, 2)}" and out.score == pytest.approx(1.0)
    assert calls == [0, redraw_seed(0, 1), redraw_seed(0, 2)]  # stops once the threshold is met
    capped = redraw_until_consistent(render, score, RetrySettings(threshold=0.99, max_redraws=1), seed=0)
    assert capped.redraws == 1 and capped.score == max(score(feats(5)), score(feats(6)))
    off = redraw_until_consistent(render, score, RetrySettings(threshold=0.99, max_redraws=0), seed=0)
    assert off.redraws == 0 and off.picture == "picture-0"
    nothing = redraw_until_consistent(render, lambda f: None, RetrySettings(threshold=0.99), seed=0)
    assert nothing.redraws == 0 and nothing.score is None
    report = RetryReport()
    for o in (out, capped, off, nothing):
        report.add(o)
    assert report.to_dict()["frames_redrawn"] == 2 and report.redraws == 3 and report.frames_checked == 3
    assert "2 of 4 frames redrawn" in report.summary()


def test_bad_retry_settings_are_refused():
    with pytest.raises(ValueError, match="threshold"):
        RetrySettings(threshold=2.0)
    with pytest.raises(ValueError, match="max_redraws"):
        RetrySettings(max_redraws=99)
