"""Where the drawing pipeline loses the picture (evaluation/renderer_budget.py): the per-frame checks on hand-built
readings, the judge's own row on true frames, a VAE that cannot reconstruct scoring far below it, and the CLI."""

import json

import pytest
import torch

from evaluation import renderer_budget as rb
from evaluation.judge import load_judge
from evaluation.stories import load_model
from seedstory_core.data import mini
from seedstory_core.tiny import random_tiny_bundle


def _perfect_logits(y):
    """Judge-shaped logits whose argmax is exactly the labels ``y`` (ignored looks/poses read as class 0)."""
    out = {}
    for key, shape in rb._HEADS.items():
        target = y[key].clamp(min=0)
        out[key] = torch.nn.functional.one_hot(target, shape[-1]).float()
    return out


def test_correctness_counts_each_attribute_and_tells_positions_from_the_cast():
    story = mini.generate_story(1000, 0)
    y = rb._labels(story["attributes"])
    n = len(story["attributes"])
    logits = _perfect_logits(y)
    right = rb.correctness(logits, y)
    assert all(right[k].tolist() == [1.0] * n for k in rb.FRAME_KEYS)
    assert right["look_colour"].tolist() == right["occupied"].tolist()
    # the first frame with two characters: swap them -> positions wrong, the set of characters still right
    f = next(i for i in range(n) if int((y["slots"][i] > 0).sum()) >= 2)
    a, b = (y["slots"][f] > 0).nonzero().flatten().tolist()[:2]
    swapped = {k: v.clone() for k, v in logits.items()}
    swapped["slots"][f, [a, b]] = swapped["slots"][f, [b, a]]
    right = rb.correctness(swapped, y)
    assert right["slots_exact"][f] == 0 and right["present_exact"][f] == 1
    assert right["slots_exact"].sum() == n - 1
    # a wrong colour at one occupied slot: one fewer right slot in that frame
    wrong = {k: v.clone() for k, v in logits.items()}
    wrong["look_colour"][f, a] = wrong["look_colour"][f, a].roll(1)
    assert rb.correctness(wrong, y)["look_colour"][f] == right["occupied"][f] - 1


def test_the_judge_reads_true_frames_and_a_random_vae_loses_the_cast():
    judge = load_judge()
    bundle = load_model()
    good = rb.renderer_budget(bundle, judge, seed=1000, stories=2, stages=("frame",))
    assert good["frames"] == 60 and set(good["stages"]) == {"frame"}
    assert all(row["rate"] >= 0.95 for row in good["stages"]["frame"].values()), good["stages"]["frame"]
    # a random VAE reconstructs nothing: the characters are not read (the trained one keeps some, see the results)
    random = random_tiny_bundle(0, tokenizer=bundle.tokenizer)
    bad = rb.renderer_budget(random, judge, seed=1000, stories=2, stages=("vae",))
    assert bad["stages"]["vae"]["present_exact"]["rate"] < 0.3


def test_refusals_and_the_cli_writes_json_and_a_table(tmp_path, capsys):
    bundle, judge = load_model(), load_judge()
    with pytest.raises(ValueError, match="unknown stage"):
        rb.renderer_budget(bundle, judge, stages=("vae", "unet"))
    with pytest.raises(ValueError, match="probe_seed must differ from seed"):
        rb.renderer_budget(bundle, judge, seed=5, probe_seed=5, stages=("vit_probe",))
    out = tmp_path / "budget.json"
    rc = rb.main(
        ["--seed", "1000", "--stories", "1", "--stages", "frame,detok", "--diffusion-steps", "1", "--out", str(out)]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert list(result["stages"]) == ["frame", "detok"] and result["settings"]["diffusion_steps"] == 1
    lo, hi = result["stages"]["detok"]["slots_exact"]["ci95"]
    assert lo <= result["stages"]["detok"]["slots_exact"]["rate"] <= hi
    assert "| detok |" in capsys.readouterr().out


def _result(per_story_by_key, seed=1000, stories=3, stage="detok"):
    keys = rb.FRAME_KEYS + rb.SLOT_KEYS
    return {
        "seed": seed,
        "stories": stories,
        "stages": {
            stage: {
                k: {"rate": 0.0, "ci95": [0, 0], "per_story": per_story_by_key.get(k, [0.0] * stories)} for k in keys
            }
        },
    }


def test_paired_differences_pair_story_by_story_and_refuse_unpaired_results():
    a = _result({"slots_exact": [1.0, 0.5, 0.0], "pose": [1.0, None, 0.5]})
    b = _result({"slots_exact": [0.5, 0.5, 0.0], "pose": [0.5, 0.2, None]})
    d = rb.paired_differences(a, b)["detok"]
    assert d["slots_exact"]["mean"] == pytest.approx(0.5 / 3, abs=1e-4) and d["slots_exact"]["n"] == 3
    assert d["pose"] == {"mean": 0.5, "ci95": [0.5, 0.5], "n": 1}  # only the story both have
    assert d["object"]["mean"] == 0.0
    lo, hi = d["slots_exact"]["ci95"]
    assert 0.0 <= lo <= d["slots_exact"]["mean"] <= hi <= 0.5
    with pytest.raises(ValueError, match="same seed"):
        rb.paired_differences(a, _result({}, seed=1001))
    with pytest.raises(ValueError, match="same stories"):
        rb.paired_differences(a, _result({}, stories=4))
    with pytest.raises(ValueError, match="no stage in common"):
        rb.paired_differences(a, _result({}, stage="vae"))
    old = _result({})
    del old["stages"]["detok"]["pose"]["per_story"]
    with pytest.raises(ValueError, match="per-story values"):
        rb.paired_differences(a, old)


def test_cli_versus_prints_the_paired_difference(tmp_path, capsys):
    first = tmp_path / "a.json"
    assert rb.main(["--seed", "1000", "--stories", "1", "--stages", "frame", "--out", str(first)]) == 0
    saved = json.loads(first.read_text())
    assert len(saved["stages"]["frame"]["slots_exact"]["per_story"]) == 1
    second = tmp_path / "b.json"
    capsys.readouterr()
    argv = ["--seed", "1000", "--stories", "1", "--stages", "frame", "--out", str(second), "--versus", str(first)]
    assert rb.main(argv) == 0
    printed = capsys.readouterr().out
    assert "paired difference" in printed and "| frame | +0.000 [+0.000, +0.000]" in printed
    assert json.loads(second.read_text())["versus"]["paired"]["frame"]["slots_exact"]["mean"] == 0.0
    with pytest.raises(SystemExit):  # refused before any drawing: another story count
        rb.main(["--seed", "1000", "--stories", "2", "--stages", "frame", "--versus", str(first)])
    assert "pass the same" in capsys.readouterr().err
