"""training.corrupt_context: cast-corrupted scheduled-sampling context (one character's presence flipped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.data import mini
from training.common import ImageSource
from training.corrupt_context import corrupt_cast, corrupt_context
from training.rollout import OWN_CONTEXT_FILE, OwnContext


def _story_with_entry():
    """A StoryStream-mini story (seed 0) in which a character enters after frame 0."""
    for k in range(200):
        st = mini.generate_story(0, k, frames=10)
        first = set(st["attributes"][0]["present"])
        if any(set(a["present"]) - first for a in st["attributes"][1:]):
            return st
    raise AssertionError("no story with an entering character in 200 stories")


def _story_without_entry():
    for k in range(200):
        st = mini.generate_story(0, k, frames=10)
        first = set(st["attributes"][0]["present"])
        if not any(set(a["present"]) - first for a in st["attributes"][1:]):
            return st
    raise AssertionError("no story without an entering character in 200 stories")


def test_an_entering_character_is_removed_from_the_drawn_frame_on():
    attrs = _story_with_entry()["attributes"]
    first = set(attrs[0]["present"])
    for seed in range(30):
        out, info = corrupt_cast(attrs, np.random.default_rng(seed))
        who, s = info["character"], info["from_frame"]
        assert info["kind"] == "entered" and who not in first
        first_in = min(f for f in range(1, len(attrs)) if who in attrs[f]["present"])
        assert first_in <= s <= len(attrs) - 1
        assert len(out) == len(attrs) - 1  # frame 0 is never part of the context that changes
        for f in range(1, len(attrs)):
            a, true = out[f - 1], attrs[f]
            if f < s or who not in true["present"]:
                assert a is true  # untouched frames are the true frames
            else:
                assert who not in a["present"] and set(a["present"]) == set(true["present"]) - {who}
                assert set(a["positions"]) == set(a["present"])
                assert all(o["holder"] != who for o in a["objects"]) and who not in a["actors"]
                assert a["background"] == true["background"]


def test_without_an_entry_a_present_character_is_dropped_or_an_absent_one_added():
    attrs = _story_without_entry()["attributes"]
    kinds = set()
    for seed in range(60):
        out, info = corrupt_cast(attrs, np.random.default_rng(seed))
        kinds.add(info["kind"])
        s, who = info["from_frame"], info["character"]
        assert info["kind"] in ("drop", "add") and 1 <= s <= len(attrs) - 1
        changed = [f for f in range(1, len(attrs)) if out[f - 1] is not attrs[f]]
        assert all(f >= s for f in changed)
        for f in changed:
            present, true = set(out[f - 1]["present"]), set(attrs[f]["present"])
            assert present ^ true == {who} and len(present) <= mini.MAX_PRESENT
            assert (who in true) == (info["kind"] == "drop")
    assert "drop" in kinds  # 60 draws on a story whose frames hold 1-3 characters


def test_too_short_record_is_refused():
    with pytest.raises(ValueError, match="at least 2 frames"):
        corrupt_cast(_story_with_entry()["attributes"][:1], np.random.default_rng(0))


def test_features_file_matches_the_rollout_format_and_is_seeded(tmp_path, init_bundle):
    """One (n-1, T, D) float16 tensor per record keyed like the rollouts; untouched frames are exactly the true
    frames' squash features, changed frames are the re-drawn frames'; the same seed gives the same file."""
    records = mini.make_records(0, 3, size=64, frames=5)
    meta = corrupt_context(init_bundle, None, tmp_path / "a", seed=3, records=records)
    corrupt_context(init_bundle, None, tmp_path / "b", seed=3, records=records)
    corrupt_context(init_bundle, None, tmp_path / "c", seed=4, records=records)
    assert meta["records"] == 3 and sum(meta["kinds"].values()) == 3
    a, b, c = (load_file(str(tmp_path / x / OWN_CONTEXT_FILE)) for x in "abc")
    src = ImageSource(records, None)
    assert set(a) == {src.key(r, 0) for r in range(3)}
    assert all(torch.equal(a[k], b[k]) for k in a)
    bundle = SeedStoryBundle.load(init_bundle)
    T, D = bundle.visual_tokenizer.encode_images([records[0]["images"][0]], mode="squash").shape[1:]
    for r, rec in enumerate(records):
        t = a[src.key(r, 0)]
        assert t.shape == (4, T, D) and t.dtype == torch.float16
        changed, _ = corrupt_cast(rec["attributes"], np.random.default_rng([3, r]), rec["looks"])
        for f in range(1, 5):
            frame = (
                rec["images"][f]
                if changed[f - 1] is rec["attributes"][f]
                else mini.render_frame(changed[f - 1], size=64)
            )
            want = bundle.visual_tokenizer.encode_images([frame], mode="squash")[0].float().to(torch.float16)
            assert torch.equal(t[f - 1], want)
    # another seed draws other changes, and the file follows them
    differs = [
        corrupt_cast(records[r]["attributes"], np.random.default_rng([3, r]))[1]
        != corrupt_cast(records[r]["attributes"], np.random.default_rng([4, r]))[1]
        for r in range(3)
    ]
    assert any(differs)
    for r in range(3):
        if differs[r]:
            assert not torch.equal(a[src.key(r, 0)], c[src.key(r, 0)])
    # stage 2 reads it through the rollouts' reader
    assert OwnContext(tmp_path / "a").get(src.key(0, 0), 4).shape == (T, D)


def test_data_without_attributes_is_refused_with_what_to_do(tmp_path, init_bundle):
    records = [{k: v for k, v in r.items() if k != "attributes"} for r in mini.make_records(0, 2, size=64, frames=3)]
    with pytest.raises(ValueError, match="attributes.*training.rollout"):
        corrupt_context(init_bundle, None, tmp_path, records=records)
    assert not (tmp_path / "own_context.safetensors").exists()


def test_other_window_takes_the_context_from_another_window_of_the_same_story(tmp_path, init_bundle):
    """other_window_prob=1: each record's context frames are another window (same id) of its story, cast-flipped;
    0 draws nothing extra, so it equals the default file."""
    story = mini.make_records(0, 1, size=64, frames=15)[0]
    records = [
        {k: story[k][5 * w : 5 * w + 5] for k in ("images", "captions", "attributes")} | {"id": story["id"]}
        for w in range(3)
    ]
    meta = corrupt_context(init_bundle, None, tmp_path / "swap", seed=2, other_window_prob=1.0, records=records)
    corrupt_context(init_bundle, None, tmp_path / "zero", seed=2, other_window_prob=0.0, records=records)
    corrupt_context(init_bundle, None, tmp_path / "default", seed=2, records=records)
    assert meta["other_window"] == 3
    swap, zero, default = (load_file(str(tmp_path / x / OWN_CONTEXT_FILE)) for x in ("swap", "zero", "default"))
    assert all(torch.equal(zero[k], default[k]) for k in default)
    bundle = SeedStoryBundle.load(init_bundle)
    keys = ImageSource(records, None)
    for r in range(3):
        rng = np.random.default_rng([2, r])
        others = [o for o in range(3) if o != r]
        assert rng.random() < 1.0
        src = others[int(rng.integers(len(others)))]
        changed, _ = corrupt_cast(records[src]["attributes"], rng)
        frames = [
            records[src]["images"][f]
            if changed[f - 1] is records[src]["attributes"][f]
            else mini.render_frame(changed[f - 1], size=64)
            for f in range(1, 5)
        ]
        want = bundle.visual_tokenizer.encode_images(frames, mode="squash").float().to(torch.float16)
        assert torch.equal(swap[keys.key(r, 0)], want)
    with pytest.raises(ValueError, match="other_window_prob"):
        corrupt_context(init_bundle, None, tmp_path / "bad", other_window_prob=1.5, records=records)
