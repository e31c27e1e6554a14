"""The retry threshold's choice (evaluation.tune_retry): the vectorised search equals a brute-force one, the
interval covers the choice, and a clean separation is found."""

import json

import numpy as np
import pytest
import torch

from evaluation.tune_retry import best_threshold, choose_threshold, look_right, main


def _brute(scores, right):
    best = (0.0, float(np.median(scores)))
    for t in np.unique(scores):
        flag = scores < t
        tpr = flag[~right].mean() if (~right).any() else 0.0
        tnr = (~flag[right]).mean() if right.any() else 0.0
        bal = 0.5 * (tpr + tnr)
        if bal > best[0]:
            best = (float(bal), float(t))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_best_threshold_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 80))
    scores = np.round(rng.uniform(-1, 1, n), 2)  # rounding makes ties
    right = rng.random(n) < rng.uniform(0, 1)
    bal, t = best_threshold(scores, right)
    b_bal, b_t = _brute(scores, right)
    assert t == b_t
    assert bal == pytest.approx(b_bal)


def test_clean_separation_and_interval():
    rows = []
    for story in range(10):
        rows += [{"score": 0.3 + 0.01 * story, "right": False, "story": story}] * 5
        rows += [{"score": 0.8 + 0.01 * story, "right": True, "story": story}] * 2
        rows.append({"score": None, "right": True, "story": story})  # no score: not counted
        rows.append({"score": 0.5, "right": None, "story": story})  # no verdict: not counted
    out = choose_threshold(rows, resamples=200)
    assert out["balanced_accuracy"] == 1.0
    assert 0.39 < out["threshold"] <= 0.8  # the lowest right score: every wrong frame is below it
    lo, hi = out["threshold_interval"]
    assert lo <= out["threshold"] <= hi
    assert out["frames"] == 70 and out["frames_look_wrong"] == 50
    assert out["frames_redrawn_at_threshold"] == 50


def test_choose_threshold_refuses_no_rows():
    with pytest.raises(ValueError, match="raise --stories"):
        choose_threshold([{"score": None, "right": True}])


def test_look_right():
    looks = {"Max": "red", "Zoe": "blue"}
    attrs = {"parsed": True, "positions": {"Max": "left", "Zoe": "right"}}
    assert look_right({"looks": {"left": "red", "right": "blue"}}, attrs, looks) is True
    assert look_right({"looks": {"left": "red", "right": "red"}}, attrs, looks) is False
    assert look_right({"looks": {}}, attrs, looks) is False
    assert look_right({"looks": {}}, {"parsed": False}, looks) is None
    assert look_right({"looks": {}}, {"parsed": True, "positions": {}}, looks) is None


def test_cli_on_the_bundled_model_with_a_first_story(capsys):
    """The whole command on one short story of the tuning seed: 5 generated frames with and without the cast sheet
    (at most 10 scored frames), the chosen threshold inside its interval."""
    threads = torch.get_num_threads()
    try:
        assert main(["--stories", "1", "--first-story", "3", "--frames", "6"]) == 0
    finally:
        torch.set_num_threads(threads)  # the CLI sets 1 for itself; the rest of the suite keeps its own
    out = json.loads(capsys.readouterr().out)
    assert (out["seed"], out["stories"], out["first_story"]) == (1000, 1, 3)
    assert 1 <= out["frames"] <= 10 and out["frames_look_wrong"] <= out["frames"]
    lo, hi = out["threshold_interval"]
    assert lo <= out["threshold"] <= hi and -1.0 <= out["threshold"] <= 1.0
    assert out["frames_redrawn_at_threshold"] <= out["frames"]


@pytest.mark.parametrize("argv", [["--stories", "0"], ["--first-story", "-1"]])
def test_cli_refuses_an_empty_or_negative_sample(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "--first-story >= 0" in capsys.readouterr().err
