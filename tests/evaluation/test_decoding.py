"""The decoding measurement (evaluation/decoding.py): its setting names, and the n-gram rule they can ask for."""

import json
from pathlib import Path

import pytest

from evaluation.decoding import decoding_for, main, paired_segments, text_keys, versus_file
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


def test_window_setting_names():
    """``repK@N`` / ``nosent@N`` set the penalty's and the sentence rule's windows; no ``@N`` = the whole story."""
    d = decoding_for("rep1.2@8+nosent@5")
    assert (d.repetition_penalty, d.penalty_window, d.no_repeat_sentences, d.no_repeat_window) == (1.2, 8, True, 5)
    d = decoding_for("rep1.2+nosent")
    assert (d.penalty_window, d.no_repeat_window) == (0, 0)
    for bad in ("rep1.2@", "nosent@x", "nosent5"):
        with pytest.raises(ValueError, match="unknown decoding setting"):
            decoding_for(bad)


@pytest.mark.parametrize("field", ["penalty_window", "no_repeat_window"])
@pytest.mark.parametrize("value", [-1, 2.0, True, "3"])
def test_windows_must_be_counts(field, value):
    with pytest.raises(ValueError, match=f"{field} must be an int >= 0"):
        DecodingSettings(**{field: value})


def test_text_keys_per_segment():
    judged = [
        {"parsed": True, "new": True, "continuous": True},
        {"parsed": True, "new": False, "continuous": True},
        {"parsed": False, "new": True, "continuous": False},
        {"parsed": True, "new": True, "continuous": False},
    ]
    assert text_keys(judged) == {
        "parse_rate": 0.75,
        "distinct_sentence_rate": 0.75,
        "continuity_rate": 0.5,
        "text_score": 0.25,
    }
    with pytest.raises(ValueError, match="at least one judged frame"):
        text_keys([])


def test_paired_segments_are_differences_by_story():
    def res(values):
        return {"segments": {"3x": {"parse_rate": {"per_story": values}}}}

    results = {"a": res([1.0, 0.5, 0.0]), "b": res([0.5, 0.5, 0.5])}
    out = paired_segments(results, "b")
    assert list(out) == ["a"]
    d = out["a"]["3x"]["parse_rate"]
    assert d["mean"] == 0.0 and d["n"] == 3 and d["ci95"][0] < 0 < d["ci95"][1]
    with pytest.raises(ValueError, match="not one of the measured settings"):
        paired_segments(results, "c")
    with pytest.raises(ValueError, match="no per-segment values"):
        paired_segments({"a": {}, "b": res([0.5])}, "b")


def test_paired_against_needs_text_only_and_a_measured_setting(capsys):
    for argv in (["--settings", "greedy", "--paired-against", "greedy"], ["--no-render", "--paired-against", "x"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "--paired-against needs --no-render" in capsys.readouterr().err


def test_window_images_must_not_be_negative(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--no-render", "--settings", "greedy", "--window-images", "-1"])
    assert e.value.code == 2 and "--window-images must be >= 0" in capsys.readouterr().err


def test_versus_file_pairs_the_same_setting_over_this_runs_stories():
    def run(seed, values, name="rep1.2+nosent"):
        return {
            "seed": seed,
            "stories": len(values),
            "results": {name: {"segments": {"3x": {"parse_rate": {"per_story": values}}}}},
        }

    this, other = run(1000, [1.0, 0.0]), run(1000, [0.0, 0.0, 1.0])
    out = versus_file(this["results"], other, 1000, 2)  # the other run's first 2 stories
    assert (
        out["rep1.2+nosent"]["3x"]["parse_rate"]["mean"] == 0.5 and out["rep1.2+nosent"]["3x"]["parse_rate"]["n"] == 2
    )
    for bad in (run(2000, [0.0, 0.0]), run(1000, [0.0])):
        with pytest.raises(ValueError, match="--versus needs a run of seed 1000"):
            versus_file(this["results"], bad, 1000, 2)
    with pytest.raises(ValueError, match="no setting of this run"):
        versus_file(this["results"], run(1000, [0.0, 0.0], name="greedy"), 1000, 2)


def test_versus_is_checked_before_any_work(tmp_path, capsys):
    other = tmp_path / "o.json"
    other.write_text(json.dumps({"seed": 5, "stories": 1, "results": {}}))
    for argv, message in (
        (["--settings", "greedy", "--versus", str(other)], "--versus needs --no-render"),
        (["--no-render", "--settings", "greedy", "--versus", str(tmp_path / "missing.json")], "cannot read"),
        (["--no-render", "--settings", "greedy", "--versus", str(other)], "expected a --no-render run of seed 1000"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_measures_and_pairs_per_segment_on_the_bundled_model(tmp_path, capsys):
    """The documented text-only run, on one 10-frame story: per-segment keys, the pairing, and --versus against its own
    output (every difference 0)."""
    tiny = str(Path(__file__).resolve().parents[2] / "models" / "seedstory-tiny")
    argv = ["--no-render", "--stories", "1", "--frames", "10", "--model", tiny, "--settings", "rep1.2+nosent,rep1.2@2"]
    assert main(argv + ["--paired-against", "rep1.2+nosent"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    seg = first["results"]["rep1.2+nosent"]["segments"]
    assert list(seg) == ["1x"] and len(seg["1x"]["parse_rate"]["per_story"]) == 1
    assert first["paired"]["rep1.2@2"]["1x"]["parse_rate"]["n"] == 1
    saved = tmp_path / "first.json"
    saved.write_text(json.dumps(first))
    assert main(argv + ["--versus", str(saved), "--window-images", "10"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(v["mean"] == 0.0 for v in again["versus"]["paired"]["rep1.2+nosent"]["1x"].values())
    with pytest.raises(SystemExit) as e:
        main(["--no-render", "--frames", "5", "--settings", "greedy,rep1.2", "--paired-against", "greedy"])
    assert e.value.code == 2 and "need --frames >= 10" in capsys.readouterr().err
