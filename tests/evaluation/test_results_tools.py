"""The two helpers that turn evaluation JSONs into the tables of the model card (evaluation/results/)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "evaluation" / "results"


def _run(script, *args):
    out = subprocess.run(
        [sys.executable, str(RESULTS / script), *args], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout


def test_table_rows_give_each_key_with_its_interval():
    r = json.loads((RESULTS / "ss_model_rp12_5000.json").read_text())
    lines = _run("table.py", "--keys", "score,visualization_agreement", "model=ss_model_rp12_5000").splitlines()
    assert lines[0] == "| seed | system | score | visualization_agreement |"
    lo, hi = r["score_ci95"]
    vlo, vhi = r["ci95"]["visualization_agreement"]
    assert lines[2] == (
        f"| 5000 | model | {r['score']:.3f} [{lo:.2f}, {hi:.2f}] | "
        f"{r['visualization_agreement']:.3f} [{vlo:.2f}, {vhi:.2f}] |"
    )


def test_paired_differences_are_per_story_and_skip_missing_keys():
    same = json.loads(_run("paired.py", "ss_model_rp12_5000:ss_model_rp12_5000"))
    diffs = same["ss_model_rp12_5000 - ss_model_rp12_5000"]
    assert diffs["score"] == {"mean": 0.0, "ci95": [0.0, 0.0], "n": 30}
    a = json.loads((RESULTS / "ss_model_rp12_5000.json").read_text())["per_story"]["score"]
    b = json.loads((RESULTS / "baseline_copy_first_5000.json").read_text())["per_story"]["score"]
    vs_copy = json.loads(_run("paired.py", "ss_model_rp12_5000:baseline_copy_first_5000"))
    got = vs_copy["ss_model_rp12_5000 - baseline_copy_first_5000"]["score"]
    assert abs(got["mean"] - round(sum(x - y for x, y in zip(a, b)) / len(a), 4)) < 1e-9
    assert got["ci95"][0] <= got["mean"] <= got["ci95"][1]
    # a key one of the two evaluations lacks (older JSONs have no visualization halves) is left out, not an error
    old = json.loads(_run("paired.py", "ss_model_rp12_2000:ss_noss_rp12_2000"))[
        "ss_model_rp12_2000 - ss_noss_rp12_2000"
    ]
    assert "visualization_cast" not in old and "visualization_agreement" in old


def test_table_marks_a_key_an_older_evaluation_lacks():
    r = json.loads((RESULTS / "ss_noss_rp12_2000.json").read_text())
    assert "visualization_cast" not in r  # made before the visualization halves existed
    row = _run("table.py", "--keys", "visualization_cast", "ss_noss_rp12_2000").splitlines()[2]
    assert row == "| 2000 | ss_noss_rp12_2000 | — |"


def test_paired_leaves_out_stories_without_a_value():
    spec = importlib.util.spec_from_file_location("paired_script", RESULTS / "paired.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = {"seed": 1, "stories": 4, "per_story": {"look_consistency": [0.5, None, 1.0, 0.0], "score": [1, 1, 1, 1]}}
    b = {"seed": 1, "stories": 4, "per_story": {"look_consistency": [0.25, 0.5, None, 0.5], "score": [0, 0, 0, 0]}}
    out = mod.paired(a, b)
    assert out["look_consistency"]["n"] == 2 and out["look_consistency"]["mean"] == -0.125  # (0.25 - 0.5) / 2
    assert out["score"] == {"mean": 1.0, "ci95": [1.0, 1.0], "n": 4}
    none = {"seed": 1, "stories": 4, "per_story": {"look_consistency": [None] * 4}}
    assert "look_consistency" not in mod.paired(none, b)
    with pytest.raises(ValueError, match="different stories"):
        mod.paired(a, dict(b, stories=5))
