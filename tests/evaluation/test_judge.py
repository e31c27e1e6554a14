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
from evaluation.judge import (
    IGNORE,
    JUDGE_CHECK_SEED,
    JUDGE_TRAIN_SEED,
    SLOT_NAMES,
    frame_labels,
    judge_accuracy,
    load_judge,
    pixel_hash,
    training_hashes,
)
from seedstory_core.data import mini
from seedstory_core.tiny import random_tiny_bundle
from tests.evaluation.test_metrics_looks import perfect_reading, stated_reading

REPO = Path(__file__).resolve().parents[2]
JUDGE_DIR = REPO / "evaluation" / "judge"
#: thresholds from measurement with the shipped judge (the per-slot judge; "shown" also requires the actors' pose and
#: the object; evaluate() passes no looks yet). 10 stories of seed 1000: ground truth 0.944 (its own sentences
#: repeat now and then: 0.947 with a perfect reader on 100 stories; the judge misses an umbrella in the forest in 4
#: frames of one story), copy_first 0.000 (every sentence repeats the opening), retrieval 0.000. 30 stories of seeds
#: 2000 / 3000: ground truth 0.944 / 0.911, copy_first 0 / 0, retrieval 0 / 0.004 (upper 95% bound 0 / 0.011).
GROUND_TRUTH_MIN = 0.9
TRIVIAL_MAX = 0.1


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(1)
    return load_judge()


def _reading(attrs):
    """A perfect judge reading of frame attributes (place, cast, slots, object, looks and poses by slot)."""
    return perfect_reading(attrs)


# ----------------------------------------------------------------------------------------------- the judge itself
#: every attribute the judge reads, as judge_accuracy names it
ATTRIBUTES = ("background", "present_exact", "slots_exact", "object", "action", "pose", "look_colour", "look_accessory")


@pytest.fixture(scope="module")
def train_hashes():
    """Pixel hashes of the shipped judge's training frames (the arguments judge.json records)."""
    meta = json.loads((JUDGE_DIR / "judge.json").read_text())
    return training_hashes(meta["train_seed"], meta["train_looks"]["story"], meta["train_looks"]["fixed"])


def test_the_judge_is_fixed_by_its_sha256(tmp_path, judge):
    meta = json.loads((JUDGE_DIR / "judge.json").read_text())
    assert judge.sha256 == meta["sha256"]
    assert meta["train_seed"] == JUDGE_TRAIN_SEED and meta["train_seed"] not in (0, 7) and meta["train_seed"] < 1000
    assert meta["command"].startswith("python -m evaluation.judge --out evaluation/judge")
    assert meta["colours"] == list(mini.LOOK_COLOURS) and meta["accessories"] == list(mini.ACCESSORIES)
    assert meta["train_looks"]["story"] > 0 and 0 < meta.get("cpu_seconds", meta["seconds"]) <= 15 * 60
    acc = meta["accuracy_unseen_frames"]
    assert acc["seed"] == JUDGE_CHECK_SEED and acc["frames"] > 1000 and acc["frames_dropped_identical"] > 0
    assert acc["scene_and_cast"] >= 0.95, acc
    for key in ATTRIBUTES:
        assert acc[key] >= 0.9, (key, acc)
    assert acc["shown_exact"] >= 0.8, acc
    changed = tmp_path / "judge"
    shutil.copytree(JUDGE_DIR, changed, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    data = bytearray((changed / "judge.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of one weight
    (changed / "judge.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_judge(changed)
    with pytest.raises(FileNotFoundError, match="judge.safetensors"):
        load_judge(tmp_path / "empty")
    relabelled = tmp_path / "relabelled"
    shutil.copytree(JUDGE_DIR, relabelled, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (relabelled / "judge.json").write_text(json.dumps(dict(meta, colours=meta["colours"][::-1])))
    with pytest.raises(ValueError, match="colours"):
        load_judge(relabelled)


def test_the_judge_reads_frames_it_never_saw(judge, train_hashes):
    """Scene and cast of real frames of a seed no judge or model trained on, minus frames pixel-identical to the
    judge's training frames (a few stories: the full measurement is in judge.json)."""
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


def test_the_judge_reads_every_attribute_of_unseen_frames(judge, train_hashes):
    """Per attribute (per occupied slot for the looks and poses) on 6 held-out stories of the check seed, frames
    pixel-identical to training frames dropped; and on the fixed-looks world of an evaluation seed."""
    acc = judge_accuracy(judge, JUDGE_CHECK_SEED, 6, exclude=train_hashes)
    assert acc["frames"] > 150 and acc["occupied_slots"] > 250, acc
    for key in ATTRIBUTES:
        assert acc[key] >= 0.85, (key, acc)
    # the same readings through predict(), on the fixed-looks world
    right = {"pose": [], "look": [], "cast": []}
    for k in range(3):
        story = mini.generate_story(1003, k, looks="fixed")
        for r, a in zip(judge.predict(mini.render_story(story)), story["attributes"]):
            right["cast"].append(r["present"] == a["present"])
            by_slot = {s: n for n, s in a["positions"].items()}
            for s, n in by_slot.items():
                right["look"].append(r["looks"][s] == mini.FIXED_LOOKS[n])
                right["pose"].append(r["poses"][s] == (a["action"] if n in a["actors"] else "stand"))
    for key, hits in right.items():
        assert np.mean(hits) >= 0.85, (key, np.mean(hits))


def test_predict_format(judge):
    looks = {"George": {"colour": "lime", "accessory": "crown"}, "Lily": {"colour": "teal", "accessory": "hat"}}
    attrs = {
        "background": "beach",
        "present": ["George", "Lily"],
        "positions": {"George": "left", "Lily": "right"},
        "objects": [{"name": "book", "holder": "Lily"}],
        "action": "wave",
        "actors": ["George"],
        "looks": looks,
    }
    frame = mini.render_frame(attrs)
    (r,) = judge.predict([frame])
    assert r == {
        "background": "beach",
        "slots": {"left": "George", "center": None, "right": "Lily"},
        "present": ["George", "Lily"],
        "action": "wave",
        "object": "book",
        "looks": {"left": looks["George"], "center": None, "right": looks["Lily"]},
        "poses": {"left": "wave", "center": None, "right": "stand"},
    }, r
    tensor = torch.from_numpy(np.asarray(frame, dtype=np.float32) / 255.0)[None]
    assert judge.predict(tensor) == [r]  # a (B, H, W, 3) tensor in 0..1 reads the same
    assert judge.predict([]) == []
    logits = judge(torch.zeros(2, 3, 64, 64))
    shapes = {k: tuple(v.shape) for k, v in logits.items()}
    assert shapes == {
        "background": (2, 5),
        "slots": (2, 3, 6),
        "action": (2, 8),
        "object": (2, 7),
        "look_colour": (2, 3, 6),
        "look_accessory": (2, 3, 5),
        "pose": (2, 3, 8),
    }


def test_frame_labels():
    attrs = {
        "background": "night",
        "present": ["Lily", "Max", "Ben"],
        "objects": [{"name": "umbrella", "holder": "Max"}],
        "action": "dance",
        "actors": ["Max", "Ben"],
        "looks": {"Lily": {"colour": "lime", "accessory": "cap"}, "Max": {"colour": "red", "accessory": "bow"}},
    }  # no positions: the canonical layout; Ben has no look: his fixed one (teal, cap)
    lab = frame_labels(attrs)
    colours, accessories = list(mini.LOOK_COLOURS), list(mini.ACCESSORIES)
    assert lab == {
        "background": mini.SCENES.index("night"),
        "slots": [2, 3, 5],  # Lily, Max, Ben (0 = nobody)
        "action": mini.ACTIONS.index("dance"),
        "object": 1 + mini.OBJECT_NAMES.index("umbrella"),
        "look_colour": [colours.index("lime"), colours.index("red"), colours.index("teal")],
        "look_accessory": [accessories.index("cap"), accessories.index("bow"), accessories.index("cap")],
        "pose": [mini.ACTIONS.index("stand"), mini.ACTIONS.index("dance"), mini.ACTIONS.index("dance")],
    }
    alone = frame_labels({"background": "park", "present": ["Zoe"], "objects": [], "action": "stand", "actors": []})
    assert alone["slots"] == [0, 4, 0] and alone["object"] == 0 and alone["action"] == mini.ACTIONS.index("stand")
    assert alone["look_colour"] == [IGNORE, colours.index("purple"), IGNORE]
    assert alone["look_accessory"] == [IGNORE, accessories.index("crown"), IGNORE]
    assert alone["pose"] == [IGNORE, mini.ACTIONS.index("stand"), IGNORE]
    # every frame of a generated story: its labels are the looks it was drawn with
    story = mini.generate_story(JUDGE_TRAIN_SEED, 0)
    for a in story["attributes"]:
        lab = frame_labels(a)
        for name, slot in a["positions"].items():
            j = SLOT_NAMES.index(slot)
            assert colours[lab["look_colour"][j]] == story["looks"][name]["colour"]
            assert accessories[lab["look_accessory"][j]] == story["looks"][name]["accessory"]


def test_a_real_rendering_of_the_true_story_is_shown(judge):
    """The judge on the true frames of held-out stories, with their true looks: (nearly) every frame is shown, the
    looks are read right and kept; the start frame redrawn (a static picture) is not. (Pooled over 4 stories: the
    judge's errors cluster, e.g. a sleeping circle under an umbrella read as the tall figure in every frame of one
    story.)"""
    m, static = [], []
    for k in range(4):
        story = mini.generate_story(1004, k, frames=10)
        looks = mini.story_looks(1004, k)
        readings = judge.predict(mini.render_story(story))
        m.append(jm.story_metrics(story["captions"], readings, looks=looks, reference_looks=story["looks"]))
        static.append(jm.story_metrics(story["captions"], [readings[0]] * 10, looks=looks))
    mean = {key: np.mean([x[key] for x in m]) for key in ("shown_rate", "look_accuracy", "look_consistency")}
    assert mean["shown_rate"] >= 0.85 and mean["look_accuracy"] >= 0.9 and mean["look_consistency"] >= 0.9, mean
    assert np.mean([x["shown_rate"] for x in static]) < mean["shown_rate"] - 0.3, static


# ------------------------------------------------------------------------------------- per-frame judgement (rules)
OPEN = "George and Lily are at the park."
#: a perfect reading of "George jumps." after OPEN: the park, George (left, jumping) and Lily (right)
PARK_GL = stated_reading("George jumps.", [OPEN])


def test_a_good_frame_scores_one():
    assert PARK_GL["slots"] == {"left": "George", "center": None, "right": "Lily"}
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
    assert j["parsed"] and j["continuous"] and not j["shown"] and not j["ok"] and not j["shown_place"]
    assert j["shown_cast"] and j["shown_look"] and j["shown_action_object"]
    # the same picture after a sentence that moves the story there is right
    travel = "George and Lily walk to the beach."
    walking = stated_reading(travel, [OPEN])
    assert walking["background"] == "beach" and jm.judge_frame(travel, [OPEN], walking)["ok"]
    # ... and a travel sentence with the old place drawn is wrong
    assert not jm.judge_frame(travel, [OPEN], dict(walking, background="park"))["ok"]


def test_the_wrong_cast_in_the_picture_scores_zero():
    only_george = dict(PARK_GL, present=["George"])
    assert not jm.judge_frame("George jumps.", [OPEN], only_george)["ok"]
    with_max = dict(PARK_GL, present=["George", "Lily", "Max"])
    assert not jm.judge_frame("George jumps.", [OPEN], with_max)["ok"]
    assert jm.judge_frame("Max arrives.", [OPEN], stated_reading("Max arrives.", [OPEN]))["ok"]
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
    reading = perfect_reading(state)  # the picture agrees
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
            readings = [_reading(a) for a in story["attributes"]]
            m = jm.story_metrics(story["captions"], readings, looks=mini.story_looks(seed, k))
            assert m["continuity_rate"] == 1.0 and m["parse_rate"] == 1.0 and m["shown_rate"] == 1.0, (seed, k)
            assert m["consistency"] == 1.0 and m["look_accuracy"] == 1.0 and m["look_consistency"] == 1.0


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
    narrower (the ground truth's first stories all score 1: a zero-width interval; retrieval's score is 0 on every
    story of seed 1000 now that the picture must also show the stated pose and object: a zero-width interval too).
    Measured widths (previous judge), 4 -> 24 stories: coherence 0.123 -> 0.089, continuity 0.278 -> 0.125."""
    few = evaluate(seed=1000, stories=4, baseline="retrieval")
    many = evaluate(seed=1000, stories=24, baseline="retrieval")
    for r in (few, many):
        lo, hi = r["score_ci95"]
        assert lo <= r["score"] <= hi
        for key in ("coherence", "parse_rate", "visualization_agreement"):
            assert r["ci95"][key][0] <= r[key] <= r["ci95"][key][1], key
        assert len(r["per_story"]["score"]) == r["stories"]
    for key in ("coherence", "continuity_rate", "parse_rate"):
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
