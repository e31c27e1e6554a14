"""StoryStream-mini: determinism, disjoint seeds, rendering matches attributes, captions parse back."""

import hashlib
import json


import numpy as np
import pytest

from seedstory_core.data import mini
from seedstory_core.data.storystream import read_jsonl


def _digest(seed, k, size=64):
    st = mini.generate_story(seed, k)
    h = hashlib.sha256()
    for im in mini.render_story(st, size):
        h.update(im.tobytes())
    h.update(json.dumps(st["captions"]).encode())
    return h.hexdigest(), st


def test_deterministic_and_seeds_disjoint():
    d0, st = _digest(3, 7)
    assert _digest(3, 7)[0] == d0
    assert st["id"] == "mini-s3-00007" and len(st["captions"]) == 30 and len(st["attributes"]) == 30
    a = {tuple(mini.generate_story(0, k)["captions"]) for k in range(40)}
    b = {tuple(mini.generate_story(1, k)["captions"]) for k in range(40)}
    assert len(a) == 40 and len(b) == 40 and not (a & b)


def test_every_caption_parses_to_ground_truth():
    keys = ("background", "present", "positions", "objects", "action", "actors")
    n_pron = 0
    for seed in (0, 5):
        for k in range(25):
            st = mini.generate_story(seed, k)
            parsed = mini.parse_story(st["captions"])
            for cap, p, gt in zip(st["captions"], parsed, st["attributes"]):
                assert p["parsed"], cap
                assert {x: p[x] for x in keys} == {x: gt[x] for x in keys}, cap
                n_pron += any(w in cap.split() for w in ("He", "She", "They"))
            # each 10-frame chunk parses on its own (anchor frames restate the state)
            for c in range(3):
                sub = mini.parse_story(st["captions"][10 * c : 10 * c + 10])
                assert [x["present"] for x in sub] == [x["present"] for x in st["attributes"][10 * c : 10 * c + 10]]
    assert n_pron > 100  # pronouns are common


def test_pronoun_resolution_and_grammar():
    ctx = ["George and Lily walk to the park."]
    p = mini.parse_sentence("He brings his green kite.", ctx)
    assert p["subject"] == ["George"] and p["pronoun"] == "He" and p["object"] == "kite"
    assert mini.parse_sentence("She brings her blue book.", ctx)["subject"] == ["Lily"]
    assert mini.parse_sentence("They dance.", ctx)["subject"] == ["George", "Lily"]
    assert mini.parse_sentence("He jumps.") is None  # no referent
    assert mini.parse_sentence("She brings his green kite.", ctx) is None  # wrong possessive
    assert mini.parse_sentence("George jump.") is None  # agreement
    assert mini.parse_sentence("The dog barks.") is None
    a = mini.sentence_attributes("He brings his green kite.", ctx)
    assert a["parsed"] and a["background"] == "park" and a["objects"] == [{"name": "kite", "holder": "George"}]
    assert a["positions"] == {"George": "left", "Lily": "right"}
    assert mini.sentence_attributes("Nonsense.", ctx)["parsed"] is False


def test_rendering_matches_attributes():
    for k in range(6):
        st = mini.generate_story(2, k)
        for size in (64, 96):
            for f in (0, 7, 15, 29):
                a = st["attributes"][f]
                img = np.asarray(mini.render_frame(a, size))
                assert img.shape == (size, size, 3)
                cols = {tuple(c) for c in img.reshape(-1, 3)}
                looks = st["looks"]  # the story's looks: every cast member's colour is its own
                colour = {n: np.array(mini.LOOK_COLOURS[looks[n]["colour"]]) for n in looks}
                counts = {n: int((img == colour[n]).all(-1).sum()) for n in looks}
                for name in looks:
                    if name in a["present"]:
                        assert a["looks"][name] == looks[name]  # per-frame ground truth of the look
                        assert counts[name] > 0.02 * size * size, (name, a)
                    else:
                        assert counts[name] == 0, (name, a)
                    if name in a["positions"]:  # drawn in its slot's third of the frame
                        xs = np.nonzero((img == colour[name]).all(-1))[1] / size
                        lo = {"left": 0.0, "center": 1 / 3, "right": 2 / 3}[a["positions"][name]]
                        assert lo - 0.02 <= np.median(xs) <= lo + 1 / 3 + 0.02
                for name, (_, col) in mini.OBJECTS.items():
                    assert (tuple(col) in cols) == (name in [o["name"] for o in a["objects"]]), (name, a)


def test_cli_writes_storystream_layout(tmp_path):
    assert mini.main(["--seed", "4", "--stories", "2", "--out", str(tmp_path), "--frames", "20"]) == 0
    recs = list(read_jsonl(tmp_path / "stories.jsonl"))
    assert [r["id"] for r in recs] == ["mini-s4-00000", "mini-s4-00001"]
    assert len(recs[0]["images"]) == 20 and (tmp_path / "images" / "mini-s4-00001" / "19.png").is_file()
    assert recs[0]["images"][3].endswith("mini-s4-00000/03.png") and len(recs[0]["attributes"]) == 20
    chunks = [json.loads(line) for line in (tmp_path / "chunks10.jsonl").read_text().splitlines()]
    assert [c["id"] for c in chunks] == [0, 0, 1, 1] and len(chunks[3]["attributes"]) == 10


def test_looks_are_drawn_per_story_and_the_fixed_world_is_kept():
    stories = [mini.generate_story(6, k) for k in range(30)]
    # a look is the story's: the same character gets different colours and accessories across stories
    for name in mini.CHARACTER_NAMES:
        seen = {(s["looks"][name]["colour"], s["looks"][name]["accessory"]) for s in stories if name in s["looks"]}
        assert len(seen) >= 4, (name, seen)
    for st in stories:
        cols = [v["colour"] for v in st["looks"].values()]
        accs = [v["accessory"] for v in st["looks"].values()]
        assert len(set(cols)) == len(cols) and len(set(accs)) == len(accs)  # distinct within a story
        assert sorted(st["looks"]) == sorted(st["cast"]) and st["world"] == "story"
        for a in st["attributes"]:
            assert set(a["looks"]) == set(a["present"])
    # the fixed world: the same plot (its own RNG draws the looks), every character's one look
    fixed = mini.generate_story(6, 3, looks="fixed")
    assert fixed["captions"] == stories[3]["captions"]
    assert all(fixed["looks"][n] == mini.FIXED_LOOKS[n] for n in fixed["cast"])
    img = np.asarray(mini.render_frame(fixed["attributes"][0]))
    for n in fixed["attributes"][0]["present"]:
        c = next(ch for ch in mini.CHARACTERS if ch.name == n)
        assert (img == np.array(c.colour)).all(-1).sum() > 50
    with pytest.raises(ValueError, match="looks must be one of"):
        mini.generate_story(6, 3, looks="random")


def test_cast_pictures_show_one_character_with_the_story_look():
    st = mini.generate_story(7, 2)
    sheet = mini.cast_pictures(st)
    assert [n for n, _ in sheet] == st["cast"]
    for name, pic in sheet:
        arr = np.asarray(pic)
        colour = np.array(mini.LOOK_COLOURS[st["looks"][name]["colour"]])
        assert (arr == colour).all(-1).sum() > 100
        others = [v["colour"] for n, v in st["looks"].items() if n != name]
        for other in others:
            assert (arr == np.array(mini.LOOK_COLOURS[other])).all(-1).sum() == 0
        assert tuple(arr[0, 0]) == mini.CAST_BACKGROUND  # no place
    with pytest.raises(ValueError, match="unknown character"):
        mini.render_cast_picture("Nobody")


def test_dataset_records_carry_the_cast_sheet(tmp_path):
    mini.generate_dataset(tmp_path, seed=8, stories=2, frames=20)
    recs = list(read_jsonl(tmp_path / "stories.jsonl"))
    assert [c["name"] for c in recs[0]["cast"]] == mini.generate_story(8, 0, 20)["cast"]
    assert all((tmp_path / "images" / c["image"]).is_file() for c in recs[0]["cast"])
    chunks = [json.loads(line) for line in (tmp_path / "chunks10.jsonl").read_text().splitlines()]
    assert (
        chunks[0]["cast"] == chunks[1]["cast"]
        and chunks[0]["looks"] == json.loads((tmp_path / "stories.jsonl").read_text().splitlines()[0])["looks"]
    )
