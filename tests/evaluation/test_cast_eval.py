"""The cast protocol (evaluation/cast_eval.py, evaluation/pooled.py) and the baselines it runs
(evaluation/baselines.py): valid baseline stories, exact segment slicing, paired differences, the runner end to end
on a random tiny model."""

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from evaluation import baselines as bl
from evaluation import cast_eval as ce
from evaluation import metrics as jm
from evaluation import pooled
from evaluation.judge import SLOT_NAMES, load_judge
from evaluation.stories import PACK_DECODING, run_story, true_looks
from seedstory_core.consistency import RetrySettings
from seedstory_core.data import mini
from seedstory_core.story import StoryEngine
from seedstory_core.tiny import random_tiny_bundle

SEED = 1000


def _px(im):
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def _valid(sentences):
    """Per generated sentence: (parses, new, continuous) with the full story so far, as the score judges it."""
    out = []
    for i, s in enumerate(sentences[1:], start=1):
        j = jm.judge_frame(s, sentences[:i], None)
        out.append((j["parsed"], j["new"], j["continuous"]))
    return out


# ------------------------------------------------------------------------------------------------ baselines
@pytest.mark.parametrize("index", range(6))
def test_static_start_tells_new_continuous_sentences_over_the_start_frame(index):
    story = mini.generate_story(SEED, index, frames=30)
    sentences, frames = bl.static_start(story, 30, SEED, index)
    assert len(sentences) == len(frames) == 30 and sentences[0] == story["captions"][0]
    assert _valid(sentences) == [(True, True, True)] * 29, sentences
    start = _px(bl.true_frames(story, 1)[0])
    assert all(np.array_equal(_px(f), start) for f in frames)
    # the stage never changes: every sentence is an action of the characters on stage
    stage = mini.sentence_attributes(sentences[0], [])["present"]
    for i, s in enumerate(sentences[1:], start=1):
        attrs = mini.sentence_attributes(s, sentences[:i])
        assert attrs["present"] == stage and attrs["background"] == story["attributes"][0]["background"]
    assert bl.static_start(story, 30, SEED, index)[0] == sentences  # seeded


@pytest.mark.parametrize("index", range(6))
def test_rule_based_walks_the_grammar_and_draws_with_the_renderer(index):
    story = mini.generate_story(SEED, index, frames=30)
    sentences, frames = bl.rule_based(story, 30, SEED, index)
    assert len(sentences) == len(frames) == 30 and sentences[0] == story["captions"][0]
    assert _valid(sentences) == [(True, True, True)] * 29, sentences
    assert np.array_equal(_px(frames[0]), _px(bl.true_frames(story, 1)[0]))
    for i in range(1, 30):  # each frame is the renderer's drawing of what its sentence states, in the true looks
        attrs = mini.sentence_attributes(sentences[i], sentences[:i])
        want = mini.render_frame({**attrs, "looks": {n: story["looks"][n] for n in attrs["present"]}}, size=64)
        assert np.array_equal(_px(frames[i]), _px(want)), i
        assert set(attrs["present"]) <= set(story["cast"])
    assert sentences[1:] != story["captions"][1:30]  # not the held-out story
    assert bl.rule_based(story, 30, SEED, index)[0] == sentences  # seeded


def test_rule_based_uses_the_whole_grammar():
    kinds = set()
    for index in range(6):
        story = mini.generate_story(SEED, index, frames=30)
        sentences, _ = bl.rule_based(story, 30, SEED, index)
        for i, cap in enumerate(sentences[1:], start=1):
            ctx = mini.story_context(sentences[:i])
            for s in mini.split_sentences(cap):
                p = mini.parse_sentence(s, ctx)
                mini.apply_sentence(p, ctx)
                kinds.add(p["kind"])
    assert {"travel", "leave", "bring", "play", "jump"} <= kinds and kinds & {"arrive", "hello"}, kinds


def test_baselines_refuse_unknown_names_and_a_missing_model():
    story = mini.generate_story(SEED, 0, frames=30)
    with pytest.raises(ValueError, match="copy_first"):
        bl.baseline_story("nonsense", story, 5, SEED, 0)
    with pytest.raises(ValueError, match="bundle"):
        bl.baseline_story("ground_truth_detok", story, 5, SEED, 0)


# ------------------------------------------------------------------------------------------------ segments
def _reading(attrs, looks, wrong=False):
    """A perfect judge reading of frame attributes (``wrong``: another place, every look changed)."""
    slots = dict.fromkeys(SLOT_NAMES)
    look_by_slot, poses = dict.fromkeys(SLOT_NAMES), dict.fromkeys(SLOT_NAMES)
    for name, slot in attrs["positions"].items():
        slots[slot] = name
        look = dict(looks[name])
        if wrong:
            look["colour"] = next(c for c in mini.LOOK_COLOURS if c != look["colour"])
        look_by_slot[slot] = look
        poses[slot] = attrs["action"] if name in attrs["actors"] else "stand"
    scenes = [s for s in mini.SCENES if s != attrs["background"]]
    return {
        "background": scenes[0] if wrong else attrs["background"],
        "slots": slots,
        "present": list(attrs["present"]),
        "action": attrs["action"],
        "object": attrs["objects"][0]["name"] if attrs["objects"] else None,
        "looks": look_by_slot,
        "poses": poses,
    }


def test_segments_are_sliced_exactly_with_the_full_story_history():
    """The true story read perfectly, except frames 21-29 (another place, other looks): 1x is perfect, 3x scores 0;
    pooled over every frame, the per-frame values are exactly evaluation.metrics.story_metrics'."""
    story = mini.generate_story(SEED, 3, frames=30)
    looks = true_looks(story)
    readings = [_reading(a, looks, wrong=21 <= i <= 29) for i, a in enumerate(story["attributes"])]
    judged = ce.judge_story(story["captions"], readings, looks)
    assert [j["frame"] for j in judged] == list(range(1, 30))
    one, three = ce.segment_values(judged, 1, 9), ce.segment_values(judged, 21, 29)
    assert one["score"] == 1.0 and one["look_accuracy"] == 1.0 and one["look_consistency"] == 1.0, one
    assert three["score"] == 0.0 and three["look_accuracy"] == 0.0 and three["look_consistency"] == 0.0, three
    assert three["parse_rate"] == three["continuity_rate"] == 1.0  # the text is the true story's
    assert three["shown_cast_rate"] == 1.0 and three["shown_place_rate"] == 0.0 and three["shown_look_rate"] == 0.0
    # frames 10..20 are right: a segment 11..20 is perfect, 15..25 counts 6 right frames of 11
    assert ce.segment_values(judged, 11, 20)["score"] == 1.0
    assert ce.segment_values(judged, 15, 25)["score"] == pytest.approx(6 / 11)
    assert ce.segment_values(judged, 30, 39) is None
    whole = ce.segment_values(judged, 1, None)
    m = jm.story_metrics(story["captions"], readings, looks=looks)
    for key in ce.METRICS:
        if key.startswith("visualization_"):
            assert whole[key] is None, key  # no visualization run merged in
        elif key == "look_self_consistency":  # without a cast sheet it is look_consistency
            assert whole[key] == pytest.approx(m["look_consistency"]), key
        else:
            assert whole[key] == pytest.approx(m[key]), key
    # the visualization run, read the same way: the halves and the looks per segment
    for j, v in zip(judged, ce.visualization_frames(readings[1:], story["attributes"][1:], looks)):
        j.update(v)
    one, three = ce.segment_values(judged, 1, 9), ce.segment_values(judged, 21, 29)
    assert one["visualization_background"] == one["visualization_cast"] == one["visualization_look_accuracy"] == 1.0
    assert three["visualization_cast"] == 1.0
    assert three["visualization_background"] == three["visualization_look_accuracy"] == 0.0
    # the same with the cast sheet's looks as the reference
    ref = {n: dict(v) for n, v in story["looks"].items()}
    judged_ref = ce.judge_story(story["captions"], readings, looks, ref)
    m = jm.story_metrics(story["captions"], readings, looks=looks, reference_looks=ref)
    assert ce.segment_values(judged_ref, 1, None)["look_consistency"] == pytest.approx(m["look_consistency"])


def test_look_consistency_is_judged_against_the_first_appearance():
    """Without a reference, a character drawn consistently in a wrong look keeps consistency 1 and accuracy 0; the
    first appearance is the reference, not a pair (a judge that reads nobody there defers it)."""
    story = mini.generate_story(SEED, 3, frames=30)
    looks = true_looks(story)
    readings = [_reading(a, looks, wrong=True) for a in story["attributes"]]
    readings = [{**r, "background": a["background"]} for r, a in zip(readings, story["attributes"])]
    judged = ce.judge_story(story["captions"], readings, looks)
    whole = ce.segment_values(judged, 1, None)
    assert whole["look_consistency"] == 1.0 and whole["look_accuracy"] == 0.0
    # nobody read at the opening frame: the first generated appearance becomes the reference and is not scored
    blank = {**readings[0], "looks": dict.fromkeys(SLOT_NAMES)}
    judged2 = ce.judge_story(story["captions"], [blank] + readings[1:], looks)
    opening = set(story["attributes"][0]["present"])
    n_pairs = lambda js: sum(len(j["look_consistency"]) for j in js)  # noqa: E731
    assert n_pairs(judged2) == n_pairs(judged) - len(opening)
    m = jm.story_metrics(story["captions"], [blank] + readings[1:], looks=looks)
    assert ce.segment_values(judged2, 1, None)["look_consistency"] == pytest.approx(m["look_consistency"])


def test_look_self_consistency_uses_the_first_appearance_with_or_without_a_cast_sheet():
    """A character drawn in a wrong but stable look: against the cast sheet's (true) looks consistency is 0, against
    its first appearance 1. look_self_consistency is the first-appearance reading for both, so a cast and a no-cast
    system are compared on the same reference; without a sheet it equals look_consistency pair for pair."""
    story = mini.generate_story(SEED, 3, frames=30)
    looks = true_looks(story)
    readings = [_reading(a, looks, wrong=True) for a in story["attributes"]]
    readings = [{**r, "background": a["background"]} for r, a in zip(readings, story["attributes"])]
    ref = {n: dict(v) for n, v in story["looks"].items()}
    with_sheet = ce.segment_values(ce.judge_story(story["captions"], readings, looks, ref), 1, None)
    assert with_sheet["look_consistency"] == 0.0 and with_sheet["look_self_consistency"] == 1.0
    judged = ce.judge_story(story["captions"], readings, looks)
    assert all(j["look_self_consistency"] == j["look_consistency"] for j in judged)
    assert sum(len(j["look_self_consistency"]) for j in judged) > 0
    # a look that changes half-way: the later frames disagree with the first appearance
    flipped = [_reading(a, looks, wrong=i >= 15) for i, a in enumerate(story["attributes"])]
    flipped = [{**r, "background": a["background"]} for r, a in zip(flipped, story["attributes"])]
    late = ce.segment_values(ce.judge_story(story["captions"], flipped, looks, ref), 21, 29)
    assert late["look_self_consistency"] == 0.0 and late["look_consistency"] == 0.0


def test_ground_truth_scores_the_ceiling():
    """The true continuation, read by the fixed judge: every sentence counts and the frames show what they state,
    far above copying the start frame or redrawing it under new sentences."""
    judge = load_judge()
    res = {
        s: ce.evaluate_system(s, seed=SEED, stories=3, frames=30, judge=judge)
        for s in ("ground_truth", "static_start", "copy_first")
    }
    gt = res["ground_truth"]["segments"]
    for seg in ("1x", "3x"):
        assert gt[seg]["parse_rate"]["mean"] == gt[seg]["continuity_rate"]["mean"] == 1.0
        assert gt[seg]["score"]["mean"] >= 0.8, gt[seg]["score"]
        assert gt[seg]["look_accuracy"]["mean"] >= 0.9, gt[seg]["look_accuracy"]
        for other in ("static_start", "copy_first"):
            assert res[other]["segments"][seg]["score"]["mean"] < gt[seg]["score"]["mean"] - 0.3, other
    assert res["static_start"]["segments"]["all"]["parse_rate"]["mean"] == 1.0
    vis = {s: r["segments"]["all"] for s, r in res.items()}
    assert vis["ground_truth"]["visualization_cast"]["mean"] >= 0.95
    assert vis["ground_truth"]["visualization_look_accuracy"]["mean"] >= 0.95
    assert (
        vis["copy_first"]["visualization_background"]["mean"] < vis["ground_truth"]["visualization_background"]["mean"]
    )
    assert res["copy_first"]["segments"]["all"]["distinct_sentence_rate"]["mean"] == 0.0


# ------------------------------------------------------------------------------------------------ pooled
def _fake_result(system, seed, ids, values):
    """A cast_eval JSON with ``values[segment][metric]`` = per-story lists (other metrics 0.5)."""
    segments = {}
    for seg in ce.SEGMENTS:
        per = {m: [0.5] * len(ids) for m in ce.METRICS}
        per.update(values.get(seg, {}))
        segments[seg] = {"per_story": per}
    return {"system": system, "seed": seed, "story_ids": list(ids), "segments": segments, "seconds_per_story": [1.0]}


def _write_fake_protocol(tmp_path, seeds=(7, 8), n=6):
    rng = np.random.default_rng(0)
    for seed in seeds:
        ids = [f"mini-s{seed}-{k:05d}" for k in range(n)]
        base = rng.uniform(0.3, 0.5, n)
        cons = rng.uniform(0.2, 0.4, n)
        files = {
            "model": {seg: {"score": list(base + 0.3), "look_consistency": list(cons)} for seg in ("1x", "3x")},
            "model_cast": {
                "1x": {"look_consistency": list(cons + 0.2), "shown_cast_rate": list(base + 0.4)},
                "3x": {"look_consistency": list(cons + 0.2)},
            },
            "static_start": {seg: {"score": list(base)} for seg in ("1x", "3x")},
            "copy_first": {
                "1x": {"score": list(base - 0.2), "shown_cast_rate": list(base)},
                "3x": {"score": list(base + 0.5)},  # above the model at 3x: that criterion must FAIL
            },
            "ground_truth": {seg: {"distinct_sentence_rate": [1.0] * n} for seg in ("1x", "3x")},
        }
        for system, values in files.items():
            r = _fake_result(system, seed, ids, values)
            if system == "model_cast":  # another story order, one story without a look pair: paired by id
                order = list(range(n))[::-1]
                r["story_ids"] = [ids[i] for i in order]
                for seg in r["segments"].values():
                    seg["per_story"] = {m: [v[i] for i in order] for m, v in seg["per_story"].items()}
                r["segments"]["3x"]["per_story"]["look_consistency"][0] = None
            (tmp_path / f"{system}_{seed}.json").write_text(json.dumps(r))


def test_pooled_pairs_stories_by_id_across_seeds(tmp_path, capsys):
    _write_fake_protocol(tmp_path)
    data = pooled.load(tmp_path, [7, 8])
    assert set(data) == {"model", "model_cast", "static_start", "copy_first", "ground_truth"}
    d = pooled.paired(data, "model_cast", "model", "3x", "look_consistency")
    assert d["mean"] == pytest.approx(0.2) and d["ci95"] == pytest.approx([0.2, 0.2]) and d["n"] == 10  # 1 None a seed
    d = pooled.paired(data, "model", "static_start", "1x", "score")
    assert d["mean"] == pytest.approx(0.3) and d["n"] == 12
    pool = pooled.pooled(data)
    assert pool["model_cast"]["3x"]["look_consistency"]["n"] == 10
    assert pool["ground_truth"]["1x"]["distinct_sentence_rate"]["mean"] == 1.0
    checks = {name: ok for name, ok, _ in pooled.criteria(data, pool)}
    assert checks["model score above static_start @ 1x"] is True
    assert checks["model score above copy_first @ 3x"] is False
    assert checks["look consistency with cast > without @ 3x"] is True
    assert checks["cast half (shown_cast_rate) of model_cast > copy_first @ 1x"] is True
    assert checks["cast half (visualization_cast) of model_cast > copy_first @ 1x"] is False  # 0.5 vs 0.5
    assert checks["model parse >= 0.9 @ 1x"] is False  # 0.5 in the fake files
    assert checks["model distinct >= 0.85 x ground truth @ 3x"] is False
    assert pooled.main(["--dir", str(tmp_path), "--seeds", "7,8", "--markdown", "--out", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert "PASS: look consistency with cast > without @ 3x" in out
    assert "FAIL: model score above copy_first @ 3x" in out
    for system in data:  # every system x segment has a row in the table
        for seg in ce.SEGMENTS:
            assert sum(line.startswith(f"| {system} | {seg} | ") for line in out.splitlines()) == 1
    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["paired"]["model_cast - model: look_consistency @ 3x"]["mean"] == pytest.approx(0.2)


def test_pooled_against_another_bundle_pairs_each_system_by_story(tmp_path, capsys):
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    old.mkdir()
    _write_fake_protocol(new)
    _write_fake_protocol(old)
    for f in old.glob("model_cast_*.json"):  # the old bundle's model_cast: 0.1 lower look consistency everywhere
        r = json.loads(f.read_text())
        for seg in r["segments"].values():
            seg["per_story"]["look_consistency"] = [
                None if v is None else v - 0.1 for v in seg["per_story"]["look_consistency"]
            ]
        f.write_text(json.dumps(r))
    (old / "static_start_8.json").unlink()  # a system missing a seed in the other folder is not compared
    d = pooled.versus(pooled.load(new, [7, 8]), pooled.load(old, [7, 8]))
    assert (
        d["model_cast: look_consistency @ 3x"]["mean"] == pytest.approx(0.1)
        and d["model_cast: look_consistency @ 3x"]["n"] == 10
    )
    assert d["model: score @ 1x"]["mean"] == pytest.approx(0.0) and d["model: score @ 1x"]["n"] == 12
    assert not any(k.startswith("static_start:") for k in d)
    assert (
        pooled.main(["--dir", str(new), "--seeds", "7,8", "--against", str(old), "--out", str(tmp_path / "p.json")])
        == 0
    )
    assert f"this bundle - {old} (paired by story):" in capsys.readouterr().out
    summary = json.loads((tmp_path / "p.json").read_text())
    assert summary["against"]["paired"]["model_cast: look_consistency @ 1x"]["mean"] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    random_tiny_bundle(0).save(path)
    return path


def test_cast_eval_runs_end_to_end_and_resumes(tiny_model, tmp_path, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "cast"
    argv = ["--seed", str(SEED), "--stories", "2", "--frames", "4", "--out", str(out), "--model", str(tiny_model)]
    argv += ["--systems", "model,model_cast_retry,copy_first,static_start", "--diffusion-steps", "1"]
    argv += ["--retry", "1", "--retry-threshold", "1.0"]  # every checked frame is redrawn once
    assert ce.main(argv) == 0
    for system in ("model", "model_cast_retry", "copy_first", "static_start"):
        r = json.loads((out / f"{system}_{SEED}.json").read_text())
        assert r["story_ids"] == [f"mini-s{SEED}-00000", f"mini-s{SEED}-00001"]
        assert r["segments"]["1x"]["frames"] == [1, 3] and r["segments"]["3x"]["frames"] is None
        for m in ce.METRICS:
            assert len(r["segments"]["1x"]["per_story"][m]) == 2
            assert r["segments"]["3x"]["per_story"][m] == [None, None]
        assert r["segments"]["1x"]["score"]["mean"] is not None
        assert len(r["seconds_per_story"]) == len(r["generation_seconds_per_story"]) == 2
    model = json.loads((out / f"model_{SEED}.json").read_text())
    assert model["decoding"] == asdict(PACK_DECODING)
    assert model["cast_sheet"] is False and "retry" not in model
    both = json.loads((out / f"model_cast_retry_{SEED}.json").read_text())
    assert both["cast_sheet"] is True
    retry = both["retry"]
    assert retry["frames"] == 6 and retry["frames_checked"] >= 1
    assert retry["redraws"] == retry["frames_redrawn"] == retry["frames_checked"]
    assert json.loads((out / f"static_start_{SEED}.json").read_text())["segments"]["1x"]["parse_rate"]["mean"] == 1.0
    for r in (model, both):  # the visualization run (true sentences drawn) is scored too
        assert 0.0 <= r["segments"]["1x"]["visualization_cast"]["mean"] <= 1.0
        assert r["segments"]["1x"]["visualization_look_accuracy"]["n"] == 2
    stamp = (out / f"model_{SEED}.json").stat().st_mtime_ns
    capsys.readouterr()
    assert ce.main(argv) == 0  # resumable: every file exists, nothing is recomputed
    assert capsys.readouterr().out.count("skipped") == 4
    assert (out / f"model_{SEED}.json").stat().st_mtime_ns == stamp


def test_cast_sheet_and_retry_change_what_they_should():
    """The cast sheet changes the context (so the drawn frames); the retry only redraws pictures: the sentences stay
    those of the run without it, and the first drawing is the plain run's frame."""
    torch.set_num_threads(1)
    bundle = random_tiny_bundle(0)
    story = mini.generate_story(SEED, 0, frames=30)
    kw = dict(diffusion_steps=1, seed=3, decoding=PACK_DECODING)
    plain = run_story(bundle, story, 3, **kw)
    cast = run_story(bundle, story, 3, cast=True, **kw)
    assert not np.array_equal(_px(plain.frames[1]), _px(cast.frames[1]))
    retry = run_story(bundle, story, 3, retry=RetrySettings(1.0, 0), **kw)
    assert retry.sentences == plain.sentences and retry.retry.redraws == 0
    assert all(np.array_equal(_px(a), _px(b)) for a, b in zip(retry.frames, plain.frames))
    redrawn = run_story(bundle, story, 3, retry=RetrySettings(1.0, 2), **kw)
    assert redrawn.sentences == plain.sentences
    assert redrawn.retry.redraws == 2 * redrawn.retry.frames_checked and redrawn.retry.frames_checked >= 1
    with pytest.raises(ValueError, match="render"):
        run_story(bundle, story, 3, retry=RetrySettings(), render=False)


@pytest.mark.parametrize("retry", [None, RetrySettings(1.0, 1)])
def test_feed_drawn_stores_each_kept_drawings_features_in_the_context(monkeypatch, retry):
    """``feed_drawn``: the features stored for frame i are the visual tokenizer's features of the drawing kept for
    frame i (with the retry: the redrawn one), not the regressed ones; without it nothing is replaced."""
    torch.set_num_threads(1)
    bundle = random_tiny_bundle(0)
    story = mini.generate_story(SEED, 0, frames=30)
    stored = []
    original = StoryEngine.step

    def spy(self, state, **kw):
        stored.append(kw.get("context_features"))
        return original(self, state, **kw)

    monkeypatch.setattr(StoryEngine, "step", spy)
    kw = dict(diffusion_steps=1, seed=3, decoding=PACK_DECODING, retry=retry)
    plain = run_story(bundle, story, 4, **kw)
    assert stored == [None, None, None]
    stored.clear()
    fed = run_story(bundle, story, 4, feed_drawn=True, **kw)
    assert stored[0] is None and len(stored) == 3
    for i in (1, 2):
        drawn = bundle.visual_tokenizer.encode_images(fed.frames[i])[:1]
        assert stored[i] is not None and torch.allclose(stored[i], drawn, atol=1e-5)
    assert fed.sentences[:2] == plain.sentences[:2]  # the first step reads the same context
    with pytest.raises(ValueError, match="feed_drawn"):
        run_story(bundle, story, 3, feed_drawn=True, render=False)


def test_cast_eval_penalty_window_reaches_the_model_decoding(tiny_model, tmp_path, capsys):
    """``--penalty-window N`` is the model systems' ``DecodingSettings.penalty_window`` and ``--context`` what their
    context stores (both recorded in the JSON); a negative window exits 2 before any work."""
    torch.set_num_threads(1)
    out = tmp_path / "cast"
    argv = ["--seed", str(SEED), "--stories", "1", "--frames", "3", "--out", str(out), "--model", str(tiny_model)]
    argv += ["--systems", "model", "--diffusion-steps", "1", "--no-visualization"]
    assert ce.main(argv + ["--penalty-window", "2"]) == 0
    result = json.loads((out / f"model_{SEED}.json").read_text())
    assert result["decoding"] == asdict(replace(PACK_DECODING, penalty_window=2))
    assert result["context"] == "regressed"
    assert ce.main(argv + ["--context", "drawn", "--out", str(tmp_path / "drawn")]) == 0
    assert json.loads((tmp_path / "drawn" / f"model_{SEED}.json").read_text())["context"] == "drawn"
    with pytest.raises(SystemExit) as e:
        ce.main(argv + ["--penalty-window", "-1", "--out", str(tmp_path / "other")])
    assert e.value.code == 2 and "--penalty-window must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_pooled_paired_segments_pairs_by_index_and_skips_missing_values():
    """The per-segment pairing evaluation.decoding and evaluation.next_sentence share: story k against story k, over
    the first run's stories (the second may hold more), a story without a value on either side left out."""
    mine = {"3x": {"parse_rate": {"per_story": [1.0, None, 0.5]}}}
    theirs = {"3x": {"parse_rate": {"per_story": [0.5, 0.0, 0.5, 1.0]}}}
    d = pooled.paired_segments(mine, theirs)["3x"]["parse_rate"]
    assert d["n"] == 2 and d["mean"] == 0.25
