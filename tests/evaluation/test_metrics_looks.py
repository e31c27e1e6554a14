"""The looks and the pose/object parts of the evaluation's per-frame judgement (evaluation/metrics.py): hand-built
readings whose answers are known, so every rule can fail. (The judge's own accuracy: tests/evaluation/test_judge.py.)
"""

import pytest

from evaluation import metrics as jm
from seedstory_core.data import mini


def perfect_reading(attrs, looks=None):
    """What a perfect judge reads in a frame drawn from ``attrs`` (a ``mini`` frame dict or stated attributes):
    ``looks`` (default ``attrs["looks"]``, then the fixed looks) at each character's slot, the actors' pose."""
    looks = looks or attrs.get("looks") or mini.FIXED_LOOKS
    positions = attrs.get("positions") or mini.slot_layout(attrs["present"])
    by_slot = {s: n for n, s in positions.items()}
    actors = set(attrs.get("actors") or [])
    return {
        "background": attrs["background"],
        "present": list(attrs["present"]),
        "slots": {s: by_slot.get(s) for s in mini.SLOTS},
        "action": attrs["action"] if actors else "stand",
        "object": attrs["objects"][0]["name"] if attrs["objects"] else None,
        "looks": {s: (dict(looks[by_slot[s]]) if s in by_slot else None) for s in mini.SLOTS},
        "poses": {
            s: ((attrs["action"] if by_slot[s] in actors else "stand") if s in by_slot else None) for s in mini.SLOTS
        },
    }


def stated_reading(sentence, history, looks=None, **changes):
    """A perfect reading of what ``sentence`` states after ``history``, with ``changes`` applied."""
    r = perfect_reading(mini.sentence_attributes(sentence, history), looks)
    r.update(changes)
    return r


OPEN = "George and Lily are at the park."
LOOKS = {
    "George": {"colour": "lime", "accessory": "crown"},
    "Lily": {"colour": "teal", "accessory": "hat"},
    "Max": {"colour": "red", "accessory": "bow"},
    "Zoe": {"colour": "pink", "accessory": "cap"},
    "Ben": {"colour": "orange", "accessory": "glasses"},
}
PARTS = ("shown_place", "shown_cast", "shown_look", "shown_action_object")


def test_a_frame_that_shows_everything_is_shown():
    j = jm.judge_frame("George jumps.", [OPEN], stated_reading("George jumps.", [OPEN], LOOKS), looks=LOOKS)
    assert j["ok"] and j["shown"] and all(j[p] for p in PARTS), j


def test_the_wrong_colour_or_accessory_fails_shown_look():
    good = stated_reading("George jumps.", [OPEN], LOOKS)
    for change in ({"colour": "red"}, {"accessory": "hat"}):
        bad = dict(good, looks=dict(good["looks"], left=dict(good["looks"]["left"], **change)))  # George's slot
        j = jm.judge_frame("George jumps.", [OPEN], bad, looks=LOOKS)
        assert not j["shown_look"] and not j["shown"] and not j["ok"], (change, j)
        assert j["shown_place"] and j["shown_cast"] and j["shown_action_object"], j
        # without the story's looks the look is not checked
        assert jm.judge_frame("George jumps.", [OPEN], bad)["ok"]
    # the fixed look is wrong in a story that gave George another one
    fixed = stated_reading("George jumps.", [OPEN], mini.FIXED_LOOKS)
    assert not jm.judge_frame("George jumps.", [OPEN], fixed, looks=LOOKS)["shown_look"]
    assert jm.judge_frame("George jumps.", [OPEN], fixed, looks=mini.FIXED_LOOKS)["ok"]
    # a look read at the wrong slot (the two characters' looks swapped) is wrong
    swapped = dict(good, looks={"left": good["looks"]["right"], "center": None, "right": good["looks"]["left"]})
    assert not jm.judge_frame("George jumps.", [OPEN], swapped, looks=LOOKS)["shown_look"]


def test_an_actor_without_the_pose_fails_shown_action_object():
    good = stated_reading("George jumps.", [OPEN], LOOKS)
    assert good["poses"] == {"left": "jump", "center": None, "right": "stand"}
    for pose in ("stand", "wave", None):
        bad = dict(good, poses=dict(good["poses"], left=pose))
        j = jm.judge_frame("George jumps.", [OPEN], bad, looks=LOOKS)
        assert not j["shown_action_object"] and not j["shown"] and not j["ok"], (pose, j)
        assert j["shown_place"] and j["shown_cast"] and j["shown_look"], j
    # the pose of a character who does not act is not checked
    assert jm.judge_frame("George jumps.", [OPEN], dict(good, poses=dict(good["poses"], right="dance")))["ok"]
    # every actor must take the pose
    both = stated_reading("George and Lily dance.", [OPEN])
    assert jm.judge_frame("George and Lily dance.", [OPEN], both)["ok"]
    half = dict(both, poses=dict(both["poses"], right="stand"))
    assert not jm.judge_frame("George and Lily dance.", [OPEN], half)["shown_action_object"]
    # a reading without poses shows no action
    assert not jm.judge_frame("George jumps.", [OPEN], {k: v for k, v in good.items() if k != "poses"})["shown"]
    # a sentence without an action checks no pose
    j = jm.judge_frame("Max arrives.", [OPEN], stated_reading("Max arrives.", [OPEN]))
    assert j["ok"], j
    quiet = stated_reading("George brings his green kite.", [OPEN])
    assert quiet["poses"] == {"left": "stand", "center": None, "right": "stand"}
    assert jm.judge_frame("George brings his green kite.", [OPEN], dict(quiet, poses={}))["ok"]


def test_the_wrong_object_fails_shown_action_object():
    story = [OPEN, "George brings his green kite."]
    good = stated_reading("Lily plays with the kite.", story)
    assert good["object"] == "kite" and jm.judge_frame("Lily plays with the kite.", story, good)["ok"]
    for obj in (None, "ball"):
        j = jm.judge_frame("Lily plays with the kite.", story, dict(good, object=obj))
        assert not j["shown_action_object"] and not j["ok"] and j["shown_cast"], (obj, j)
    # an object drawn when none is on stage is wrong too
    j = jm.judge_frame("George jumps.", [OPEN], stated_reading("George jumps.", [OPEN], object="cake"))
    assert not j["shown_action_object"]


def test_an_unparsable_sentence_or_no_image_shows_nothing():
    j = jm.judge_frame("George jump.", [OPEN], stated_reading("George jumps.", [OPEN]), looks=LOOKS)
    assert not j["parsed"] and not any(j[p] for p in PARTS) and not j["shown"]
    j = jm.judge_frame("George jumps.", [OPEN], None, looks=LOOKS)
    assert j["parsed"] and not any(j[p] for p in PARTS)


@pytest.mark.parametrize("seed, index", [(1000, 0), (1000, 1), (2000, 5)])
def test_a_perfect_rendering_of_the_true_story_scores_one(seed, index):
    story = mini.generate_story(seed, index, frames=30)
    readings = [perfect_reading(a) for a in story["attributes"]]
    looks = mini.story_looks(seed, index)
    for ref in (None, story["looks"]):
        m = jm.story_metrics(story["captions"], readings, looks=looks, reference_looks=ref)
        assert m["look_accuracy"] == 1.0 and m["look_consistency"] == 1.0, m
        for key in ("shown_rate", "shown_place_rate", "shown_cast_rate", "shown_look_rate"):
            assert m[key] == 1.0, (key, m)
        assert m["shown_action_object_rate"] == 1.0 and m["continuity_rate"] == 1.0
        assert m["score_strict"] == m["score"]
    m = jm.story_metrics(story["captions"], readings)  # no looks: no look accuracy, no look check
    assert m["look_accuracy"] is None and m["look_consistency"] == 1.0 and m["shown_look_rate"] == 1.0


def test_the_static_start_picture_fails_where_the_action_or_the_cast_changes():
    """The true sentences with the true start frame repeated: a frame is shown only while the stated place, cast and
    object are the start frame's and nobody acts (the start frame shows nobody acting)."""
    failing, shown_somewhere = 0, 0
    for k in range(4):
        story = mini.generate_story(1000, k, frames=30)
        start = perfect_reading(story["attributes"][0])
        assert set(start["poses"].values()) <= {"stand", None}
        m = jm.story_metrics(story["captions"], [start] * 30, looks=mini.story_looks(1000, k))
        first = story["attributes"][0]
        for i in range(1, 30):
            a = story["attributes"][i]
            j = jm.judge_frame(story["captions"][i], story["captions"][:i], start, looks=mini.story_looks(1000, k))
            same = (
                a["background"] == first["background"]
                and a["present"] == first["present"]
                and a["objects"] == first["objects"]
            )
            assert j["shown"] == (same and not a["actors"]), (k, i, story["captions"][i], j)
            if a["actors"] or a["present"] != first["present"]:
                assert not j["shown"]
                failing += 1
            shown_somewhere += j["shown"]
            if a["present"] == first["present"]:
                assert j["shown_look"], j  # the same characters at the same places, with their looks
        assert m["shown_rate"] < 0.7 and m["score"] < 0.7, m
    assert failing > 40 and shown_somewhere > 0


def test_look_consistency_against_the_cast_sheet_or_the_first_appearance():
    story = mini.generate_story(1000, 2, frames=30)
    true = mini.story_looks(1000, 2)
    drawn = {
        n: {"colour": "lime" if true[n]["colour"] != "lime" else "red", "accessory": true[n]["accessory"]} for n in true
    }  # every character drawn with one wrong colour, the same in every frame
    readings = [perfect_reading(a, drawn) for a in story["attributes"]]
    m = jm.story_metrics(story["captions"], readings, looks=true)
    assert m["look_accuracy"] == 0.0 and m["shown_look_rate"] == 0.0
    assert m["look_consistency"] == 1.0  # consistent with itself: the first appearance is the reference
    assert jm.story_metrics(story["captions"], readings, looks=true, reference_looks=true)["look_consistency"] == 0.0
    assert jm.story_metrics(story["captions"], readings, reference_looks=drawn)["look_consistency"] == 1.0

    # the look changes half way: a known fraction of the pairs disagree
    half = [perfect_reading(a, true if i < 15 else drawn) for i, a in enumerate(story["attributes"])]
    states = mini.parse_story(story["captions"])
    pairs = [(i, n) for i, st in enumerate(states) if i > 0 for n in st["present"]]
    first_seen = {}
    for i, st in enumerate(states):
        for n in st["present"]:
            first_seen.setdefault(n, i)
    scored = [(i, n) for i, n in pairs if i > first_seen[n]]
    # reference = the look read at the first appearance: the true one before frame 15, the drawn one after
    expected = sum((i < 15) == (first_seen[n] < 15) for i, n in scored) / len(scored)
    m = jm.story_metrics(story["captions"], half, looks=true)
    assert m["look_consistency"] == pytest.approx(expected)
    assert m["look_accuracy"] == pytest.approx(sum(i < 15 for i, n in pairs) / len(pairs))
    sheet = jm.story_metrics(story["captions"], half, looks=true, reference_looks=drawn)
    assert sheet["look_consistency"] == pytest.approx(sum(i >= 15 for i, n in pairs) / len(pairs))

    # a character read as nobody at its first appearance takes its reference from the next appearance
    blank0 = [dict(half[0], looks={s: None for s in mini.SLOTS})] + half[1:]
    ref = {n: min(i for i, n2 in pairs if n2 == n) if n in states[0]["present"] else first_seen[n] for n in first_seen}
    assert states[0]["present"] and any(ref[n] > 0 for n in states[0]["present"])
    scored0 = [(i, n) for i, n in pairs if i > ref[n]]
    m0 = jm.story_metrics(story["captions"], blank0, looks=true)
    assert m0["look_accuracy"] == m["look_accuracy"]  # frame 0 is never scored
    assert m0["look_consistency"] == pytest.approx(sum((i < 15) == (ref[n] < 15) for i, n in scored0) / len(scored0))


def test_look_metrics_without_a_scorable_pair_are_none():
    r = stated_reading(OPEN, [])
    m = jm.story_metrics([OPEN, "the the blue", "George jump."], [r, r, r], looks=LOOKS)
    assert m["look_accuracy"] is None and m["look_consistency"] is None and m["score"] == 0.0
    # one generated frame: the opening is the reference, the frame is scored
    m = jm.story_metrics([OPEN, "George jumps."], [r, stated_reading("George jumps.", [OPEN])])
    assert m["look_consistency"] == 1.0 and m["look_accuracy"] is None


def test_look_pairs_are_what_look_scores_pools_and_refuse_mismatched_lengths():
    story = mini.generate_story(1000, 3, frames=12)
    true = mini.story_looks(1000, 3)
    drawn = {
        n: {"colour": "lime" if true[n]["colour"] != "lime" else "red", "accessory": true[n]["accessory"]} for n in true
    }
    readings = [perfect_reading(a, true if i % 3 else drawn) for i, a in enumerate(story["attributes"])]
    states = mini.parse_story(story["captions"])
    for ref in (None, true, {next(iter(true)): true[next(iter(true))]}):
        pairs = jm.look_pairs(states, readings, true, ref)
        assert len(pairs) == len(states) and not any(pairs[0].values())  # the opening is never scored
        pooled = jm.look_scores(states, readings, true, ref)
        for key in ("look_accuracy", "look_consistency"):
            flat = [p for f in pairs for p in f[key]]
            assert pooled[key] == pytest.approx(sum(flat) / len(flat))
        # the self-consistency pairs never read the sheet
        assert [f["look_self_consistency"] for f in pairs] == [
            f["look_self_consistency"] for f in jm.look_pairs(states, readings, true, None)
        ]
    assert 0 < jm.look_scores(states, readings, true)["look_accuracy"] < 1
    with pytest.raises(ValueError, match="one reading per frame"):
        jm.look_pairs(states, readings[:-1], true)
