"""The next-sentence diagnosis (evaluation/next_sentence.py): the true story in the context, the agent's sentence
judged by the story grammar, per segment."""

import json
from pathlib import Path

import pytest
import torch

from evaluation import next_sentence as ns
from evaluation.cast_eval import FRAME_METRICS
from evaluation.stories import load_model
from seedstory_core.data import mini

TINY = Path(__file__).resolve().parents[2] / "models" / "seedstory-tiny"


@pytest.fixture(scope="module")
def bundle():
    torch.set_num_threads(1)
    return load_model(TINY)


def test_one_row_per_frame_judged_against_the_true_sentences(bundle):
    story = mini.generate_story(1000, 0, frames=30)
    rows = ns.next_sentences(bundle, story, 4, "true")
    assert [r["frame"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert isinstance(r["sentence"], str) and r["sentence"]
        assert isinstance(r["parsed"], bool) and isinstance(r["continuous"], bool)
    # frame 1 sees only the opening sentence and the true start picture, whatever --pictures says
    assert ns.next_sentences(bundle, story, 2, "own")[0]["sentence"] == rows[0]["sentence"]
    with pytest.raises(ValueError, match="pictures must be one of"):
        ns.next_sentences(bundle, story, 4, "rendered")
    with pytest.raises(ValueError, match="frames must be in"):
        ns.next_sentences(bundle, story, 1)


def test_segment_rates_need_the_whole_segment():
    # rows as next_sentences makes them: every judge_frame key (no picture: the shown keys False)
    blank = {k: False for k in FRAME_METRICS}
    rows = [{**blank, "frame": i, "parsed": i % 2 == 0, "continuous": True} for i in range(1, 10)]
    rates = ns.segment_rates(rows)
    assert rates["1x"] == {"parse_rate": 4 / 9, "continuity_rate": 1.0}
    assert rates["3x"] == {"parse_rate": None, "continuity_rate": None}
    assert rates["all"]["parse_rate"] == 4 / 9
    assert ns.segment_rates(rows[:5])["1x"]["parse_rate"] is None  # frames 1-5 do not cover 1x


def test_cli_writes_the_result_and_checks_its_options(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert ns.main(["--stories", "1", "--frames", "3", "--model", str(TINY), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pictures"] == "true" and result["stories"] == 1
    assert result["segments"]["all"]["parse_rate"]["n"] == 1
    assert result["segments"]["1x"]["parse_rate"]["per_story"] == [None]
    for argv in (["--frames", "31"], ["--stories", "0"]):
        with pytest.raises(SystemExit) as e:
            ns.main(argv)
        assert e.value.code == 2
    assert "--frames in [2, 30]" in capsys.readouterr().err


def test_versus_pairs_by_story_and_needs_the_same_stories():
    def result(values, seed=1000):
        return {"seed": seed, "stories": len(values), "segments": {"3x": {"parse_rate": {"per_story": values}}}}

    d = ns.versus(result([1.0, 0.5, None]), result([0.5, 0.5, 1.0]))["3x"]["parse_rate"]
    assert d["mean"] == 0.25 and d["n"] == 2
    with pytest.raises(ValueError, match="--versus needs a result of seed 1000 with 3 stories"):
        ns.versus(result([1.0, 0.5, 0.0]), result([0.5, 0.5, 1.0], seed=2000))
