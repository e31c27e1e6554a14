"""The evaluation's fixed judge (evaluation/judge) and its headline score: pinned on the trivial baselines, the
per-frame rules on hand-built cases, the bootstrap interval, and the CLI (evaluation/evaluate.py)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation import metrics as jm
from evaluation.evaluate import evaluate
from evaluation.judge import JUDGE_CHECK_SEED, JUDGE_TRAIN_SEED, load_judge, pixel_hash
from seedstory_core.data import mini
from seedstory_core.tiny import random_tiny_bundle

REPO = Path(__file__).resolve().parents[2]
JUDGE_DIR = REPO / "evaluation" / "judge"
#: thresholds from measurement with the shipped judge (docs/evaluation.md). 10 stories of seed 1000: ground truth
#: 0.978 (its own sentences repeat now and then: 0.947 with a perfect reader on 100 stories), copy_first 0.000
#: (every sentence repeats the opening), retrieval 0.011. 30 stories of seeds 2000 / 3000: ground truth 0.944 /
#: 0.933, copy_first 0 / 0, retrieval 0.033 / 0.022 (upper 95% bounds 0.056 / 0.037).
GROUND_TRUTH_MIN = 0.9
TRIVIAL_MAX = 0.1


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(1)
    return load_judge()


def _reading(attrs):
    """A perfect judge reading of frame attributes."""
    return {
        "background": attrs["background"],
        "present": list(attrs["present"]),
        "slots": {s: n for n, s in attrs["positions"].items()},
        "action": attrs["action"],
        "object": attrs["objects"][0]["name"] if attrs["objects"] else None,
    }


# ----------------------------------------------------------------------------------------------- the judge itself
def test_the_judge_is_fixed_by_its_sha256(tmp_path, judge):
    meta = json.loads((JUDGE_DIR / "judge.json").read_text())
    assert judge.sha256 == meta["sha256"]
    assert meta["train_seed"] == JUDGE_TRAIN_SEED and meta["train_seed"] not in (0, 7) and meta["train_seed"] < 1000
    acc = meta["accuracy_unseen_frames"]
    assert acc["seed"] == JUDGE_CHECK_SEED and acc["frames"] > 300 and acc["frames_dropped_identical"] > 0
    assert acc["scene_and_cast"] >= 0.95, acc
    changed = tmp_path / "judge"
    shutil.copytree(JUDGE_DIR, changed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = bytearray((changed / "judge.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of one weight
    (changed / "judge.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_judge(changed)
    with pytest.raises(FileNotFoundError, match="judge.safetensors"):
        load_judge(tmp_path / "empty")


def test_the_judge_reads_frames_it_never_saw(judge):
    """Scene and cast of real frames of a seed no judge or model trained on, minus frames pixel-identical to the
    judge's training frames (a few stories: the full measurement is in judge.json)."""
    train_hashes = set()
    for k in range(120):  # the judge's training frames
        for img in mini.render_story(mini.generate_story(JUDGE_TRAIN_SEED, k), size=64):
            train_hashes.add(pixel_hash(img))
    hits = []
    for k in range(6):
        story = mini.generate_story(1002, k)
        frames = mini.render_story(story, size=64)
        keep = [i for i, f in enumerate(frames) if pixel_hash(f) not in train_hashes]
        for i, r in zip(keep, judge.predict([frames[i] for i in keep])):
            a = story["attributes"][i]
            hits.append(r["background"] == a["background"] and set(r["present"]) == set(a["present"]))
    assert len(hits) > 60
    assert np.mean(hits) >= 0.9, np.mean(hits)


# ------------------------------------------------------------------------------------- per-frame judgement (rules)
OPEN = "George and Lily are at the park."
PARK_GL = {
    "background": "park",
    "present": ["George", "Lily"],
    "slots": {"left": "George", "center": None, "right": "Lily"},
}


def test_a_good_frame_scores_one():
    j = jm.judge_frame("George jumps.", [OPEN], PARK_GL)
    assert j["ok"] and j["parsed"] and j["new"] and j["continuous"] and j["shown"], j


def test_a_repeated_sentence_scores_zero():
    j = jm.judge_frame("George jumps.", [OPEN, "George jumps.", "Lily waves."], PARK_GL)
    assert j["parsed"] and j["continuous"] and j["shown"] and not j["new"] and not j["ok"]
    assert not jm.judge_frame("George and  Lily are at the park. ", [OPEN], PARK_GL)["ok"]  # the opening, respaced


def test_an_unparsable_sentence_scores_zero():
    for bad in ("the the blue", "George jump.", "He jumps and.", "She brings his green kite.", ""):
        j = jm.judge_frame(bad, [OPEN], PARK_GL)
        assert not j["parsed"] and not j["ok"], bad


def test_the_wrong_place_without_an_opener_scores_zero():
    beach = dict(PARK_GL, background="beach")
    j = jm.judge_frame("George jumps.", [OPEN], beach)
    assert j["parsed"] and j["continuous"] and not j["shown"] and not j["ok"]
    # the same picture after a sentence that moves the story there is right
    assert jm.judge_frame("George and Lily walk to the beach.", [OPEN], beach)["ok"]
    # ... and a travel sentence with the old place drawn is wrong
    assert not jm.judge_frame("George and Lily walk to the beach.", [OPEN], PARK_GL)["ok"]


def test_the_wrong_cast_in_the_picture_scores_zero():
    only_george = dict(PARK_GL, present=["George"])
    assert not jm.judge_frame("George jumps.", [OPEN], only_george)["ok"]
    with_max = dict(PARK_GL, present=["George", "Lily", "Max"])
    assert not jm.judge_frame("George jumps.", [OPEN], with_max)["ok"]
    assert jm.judge_frame("Max arrives.", [OPEN], with_max)["ok"]
    assert not jm.judge_frame("Lily jumps.", [OPEN], None)["ok"]  # no image at all


@pytest.mark.parametrize(
    "sentence, why",
    [
        ("Max jumps.", "act but are not on stage"),
        ("Lily comes to say hello.", "already on stage"),
        ("Max goes home.", "not on stage"),
        ("George and Lily go home.", "everybody leaves"),
        ("George plays with the kite.", "not on stage"),
        ("George and Lily eat the cake.", "cake is not on stage"),
        ("George and Lily walk to the park.", "already at"),
        ("George is at the beach.", "restates the place"),
    ],
)
def test_story_rule_breaks_score_zero(sentence, why):
    story = [OPEN, "Lily jumps."]
    state = mini.sentence_attributes(sentence, story)
    reading = {"background": state["background"], "present": state["present"], "slots": {}}  # the picture agrees
    j = jm.judge_frame(sentence, story, reading)
    assert j["parsed"] and j["shown"], (sentence, j)
    assert not j["continuous"] and not j["ok"] and any(why in v for v in j["violations"]), j["violations"]


def test_object_rules():
    story = [OPEN, "George brings his green kite."]
    assert not jm.continuity_violations("Lily plays with the kite.", jm.context_of(story))
    assert jm.continuity_violations("Lily puts the kite away.", jm.context_of(story))  # only the holder
    assert jm.continuity_violations("Lily brings her blue book.", jm.context_of(story))  # one object at a time
    assert not jm.continuity_violations("He puts the kite away.", jm.context_of(story))


def test_a_fifth_character_breaks_the_cast_rule():
    story = [OPEN, "Max arrives.", "Max goes home.", "Zoe arrives.", "Zoe goes home."]
    v = jm.continuity_violations("Ben arrives.", jm.context_of(story), ["George", "Lily", "Max", "Zoe"])
    assert v and "distinct characters" in v[0]


def test_every_real_story_follows_the_rules():
    """The rules are StoryStream-mini's: no frame of 60 generated 30-frame stories (3 seeds) breaks one."""
    for seed in (0, 1000, 3000):
        for k in range(20):
            story = mini.generate_story(seed, k, frames=30)
            m = jm.story_metrics(story["captions"], [_reading(a) for a in story["attributes"]])
            assert m["continuity_rate"] == 1.0 and m["parse_rate"] == 1.0 and m["shown_rate"] == 1.0, (seed, k)
            assert m["consistency"] == 1.0


def test_consistency_uses_the_pictures():
    story = mini.generate_story(1000, 3, frames=10)
    states = mini.parse_story(story["captions"])
    readings = [_reading(a) for a in story["attributes"]]
    assert jm.picture_consistency(states, readings) == 1.0
    swapped = [
        dict(r, slots={s: ("Ben" if i % 2 else n) for s, n in r["slots"].items()}) for i, r in enumerate(readings)
    ]
    assert jm.picture_consistency(states, swapped) < 0.6  # every other frame draws someone else at their place
    empty = [dict(r, slots={}) for r in readings]
    assert jm.picture_consistency(states, empty) == 0.0


def test_story_metrics_on_copying():
    story = mini.generate_story(1000, 0, frames=10)
    first = _reading(story["attributes"][0])
    m = jm.story_metrics([story["captions"][0]] * 10, [first] * 10)
    assert m["score"] == 0.0 and m["distinct_sentence_rate"] == 0.0 and m["parse_rate"] == 1.0
    with pytest.raises(ValueError, match="opening"):
        jm.story_metrics(["x"], [first])


# --------------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_interval_contains_the_mean_and_shrinks():
    rng = np.random.default_rng(0)
    few = rng.random(8)
    many = np.tile(few, 8)
    lo, hi = jm.bootstrap_ci(few, seed=1)
    lo2, hi2 = jm.bootstrap_ci(many, seed=1)
    assert lo <= few.mean() <= hi and lo2 <= many.mean() <= hi2
    assert (hi2 - lo2) < 0.6 * (hi - lo)  # ~1/sqrt(8) of the width with 8x the stories
    assert jm.bootstrap_ci(few, seed=1) == (lo, hi)  # seeded
    assert jm.bootstrap_ci([0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError):
        jm.bootstrap_ci([])


# --------------------------------------------------------------------------------------- the baselines (pinned)
@pytest.fixture(scope="module")
def baselines(judge):
    return {b: evaluate(seed=1000, stories=10, baseline=b) for b in ("ground_truth", "copy_first", "retrieval")}


def test_ground_truth_scores_high(baselines):
    gt = baselines["ground_truth"]
    assert gt["score"] >= GROUND_TRUTH_MIN, gt["score"]
    assert gt["parse_rate"] == 1.0 and gt["continuity_rate"] == 1.0
    assert gt["visualization_agreement"] > 0.95 and gt["consistency"] > 0.9


def test_copying_and_retrieval_score_low(baselines):
    for name in ("copy_first", "retrieval"):
        assert baselines[name]["score"] <= TRIVIAL_MAX, (name, baselines[name]["score"])
        assert baselines[name]["score_ci95"][1] < baselines["ground_truth"]["score_ci95"][0]
    assert baselines["copy_first"]["distinct_sentence_rate"] == 0.0
    assert baselines["copy_first"]["coherence"] > 0.9  # what the old headline rewarded: a copy is coherent
    assert baselines["retrieval"]["continuity_rate"] < 0.5


def test_visualization_agreement_is_the_mean_of_its_halves(baselines):
    """Per story, visualization_agreement = 0.5 x visualization_background + 0.5 x visualization_cast (per-story
    values are rounded to 4 places); the ceiling reads both halves right, and copying the start frame loses the place
    where the story moves (StoryStream-mini stories change place, seed 1000 included)."""
    for name, r in baselines.items():
        ps = r["per_story"]
        for va, bg, cast in zip(
            ps["visualization_agreement"], ps["visualization_background"], ps["visualization_cast"]
        ):
            assert abs(va - (0.5 * bg + 0.5 * cast)) < 2e-4, name
        assert (
            abs(r["visualization_agreement"] - 0.5 * (r["visualization_background"] + r["visualization_cast"])) < 1e-9
        )
    gt, copy = baselines["ground_truth"], baselines["copy_first"]
    assert gt["visualization_background"] > 0.95 and gt["visualization_cast"] > 0.9, gt
    assert copy["visualization_background"] < gt["visualization_background"] - 0.1, copy


def test_score_interval_contains_the_mean_and_narrows_with_stories():
    """score_ci95 and ci95 bracket the mean; with 6x the stories the intervals of retrieval's varied metrics are
    narrower (the ground truth's first stories all score 1: a zero-width interval). Measured widths, 4 -> 24
    stories: score 0.083 -> 0.032, coherence 0.123 -> 0.089, continuity 0.278 -> 0.125."""
    few = evaluate(seed=1000, stories=4, baseline="retrieval")
    many = evaluate(seed=1000, stories=24, baseline="retrieval")
    for r in (few, many):
        lo, hi = r["score_ci95"]
        assert lo <= r["score"] <= hi
        for key in ("coherence", "parse_rate", "visualization_agreement"):
            assert r["ci95"][key][0] <= r[key] <= r["ci95"][key][1], key
        assert len(r["per_story"]["score"]) == r["stories"]
    for key in ("score", "coherence", "continuity_rate", "parse_rate"):
        width = lambda r: r["ci95"][key][1] - r["ci95"][key][0]  # noqa: E731
        assert 0 < width(many) < width(few), (key, width(many), width(few))


# ----------------------------------------------------------------------------------------------------- the CLI
def test_cli_prints_one_json_object_last_with_the_judge_hash(judge):
    out = subprocess.run(
        [sys.executable, "-m", "evaluation.evaluate", "--seed", "1000", "--stories", "2", "--baseline", "copy_first"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["system"] == "copy_first" and result["judge"]["sha256"] == judge.sha256
    for key in (
        "score",
        "score_ci95",
        "parse_rate",
        "distinct_sentence_rate",
        "coherence",
        "visualization_agreement",
        "consistency",
    ):
        assert key in result
    bad = subprocess.run(
        [sys.executable, "-m", "evaluation.evaluate", "--baseline", "nonsense"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert bad.returncode != 0 and "copy_first" in bad.stderr


def test_a_models_own_probe_is_never_used(tmp_path, judge):
    """A model folder that ships a (broken) probe/ is still judged by the fixed judge."""
    model = tmp_path / "model"
    random_tiny_bundle(0).save(model)
    (model / "probe").mkdir()
    (model / "probe" / "probe.safetensors").write_bytes(b"not a probe")
    result = evaluate(model, seed=1000, stories=1, frames=3, ablation=False, diffusion_steps=1)
    assert result["judge"]["sha256"] == judge.sha256
    assert result["system"] == "model" and 0.0 <= result["score"] <= 1.0
