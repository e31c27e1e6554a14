"""The attribute probe, the story metrics and the evaluation CLI (training/evaluate.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seedstory_core.data import mini
from seedstory_core.data.attribute_probe import (
    AttributeProbe,
    attribute_agreement,
    consistency,
    parse_rate,
    probe_accuracy,
    story_coherence,
    train_probe,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe():
    torch.set_num_threads(1)
    return train_probe()  # the evaluation default: 80 stories x 30 frames, 8 epochs (~20 s)


def test_probe_beats_chance_on_held_out_frames(probe, tmp_path):
    acc = probe_accuracy(probe, seed=1001, stories=4)
    assert acc["background_accuracy"] > 0.8  # chance: 1 / len(SCENES)
    assert acc["character_f1"] > 0.6
    probe.save(tmp_path / "p")
    again = AttributeProbe.load(tmp_path / "p")
    x = mini.render_story(mini.generate_story(1001, 0), size=64)[:3]
    assert probe.predict(x) == again.predict(x)


def test_metrics_on_ground_truth_are_high_and_on_nonsense_low(probe):
    story = mini.generate_story(1002, 0)
    frames = mini.render_story(story, size=64)[:10]
    captions = story["captions"][:10]
    preds = probe.predict(frames[1:])
    assert parse_rate(captions[1:], context=captions[:1]) == 1.0
    assert story_coherence(preds, captions) > 0.8
    assert consistency(frames[1:], preds, captions) > 0.8
    assert all(0.0 <= attribute_agreement(p, a) <= 1.0 for p, a in zip(preds, story["attributes"][1:10]))
    nonsense = [captions[0]] + ["the the blue"] * 9
    assert parse_rate(nonsense[1:], context=nonsense[:1]) == 0.0
    assert story_coherence(preds, nonsense) == 0.0


def test_evaluate_cli_runs_on_a_small_model(tmp_path, probe):
    from seedstory_core.bundle import SeedStoryBundle

    model = tmp_path / "model"
    SeedStoryBundle.random_tiny(0).save(model)
    probe.save(model / "probe")
    out = subprocess.run([sys.executable, "-m", "training.evaluate", "--model", str(model), "--stories", "1",
                          "--no-ablation", "--diffusion-steps", "1"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("parse_rate", "coherence", "consistency", "gt_distance"):
        assert key in result
    assert 0.0 <= result["coherence"] <= 1.0
    assert result["probe"] == str(model / "probe")


def test_probe_resolution_is_one_judge_for_all_models(tmp_path, probe, monkeypatch):
    """An explicit --probe wins, then the model's own probe/, then the bundled model's; a --probe folder without
    probe.safetensors is an error that names what was expected (not a silently re-trained judge)."""
    from training import evaluate as ev

    bundled, own, explicit = tmp_path / "bundled", tmp_path / "model", tmp_path / "judge"
    probe.save(bundled / "probe")
    probe.save(explicit)
    monkeypatch.setattr(ev, "DEFAULT_MODEL", bundled)
    assert ev.probe_path(own) == bundled / "probe"  # a run folder's model has no probe: the bundled judge
    probe.save(own / "probe")
    assert ev.probe_path(own) == own / "probe"
    assert ev.probe_path(own, explicit) == explicit
    with pytest.raises(FileNotFoundError, match="probe.safetensors"):
        ev.probe_path(own, tmp_path / "empty")
    monkeypatch.setattr(ev, "DEFAULT_MODEL", tmp_path / "nowhere")
    assert ev.probe_path(tmp_path / "bare") is None  # nothing saved anywhere: evaluate trains one


def test_teacher_forcing_puts_ground_truth_frames_in_the_context():
    """generate_story(context_features=...) replaces the agent's regressed features of frame i-1 with the visual
    tokenizer's features of the given frame: frame 1 is drawn from the same context either way, later frames not."""
    import numpy as np

    from seedstory_core.bundle import SeedStoryBundle
    from seedstory_core.data import mini
    from training.evaluate import frame_features, generate_story

    torch.manual_seed(0)
    bundle = SeedStoryBundle.random_tiny(0)
    story = mini.generate_story(1001, 0, frames=4)
    gt = mini.render_story(story, size=64)
    kw = dict(captions=story["captions"][1:4], diffusion_steps=1, seed=3)
    _, free = generate_story(bundle, story, 4, **kw)
    _, forced = generate_story(bundle, story, 4, context_features=frame_features(bundle, gt), **kw)
    _, again = generate_story(bundle, story, 4, context_features=frame_features(bundle, gt), **kw)
    px = lambda im: np.asarray(im, dtype=np.int16)
    assert np.array_equal(px(free[1]), px(forced[1]))  # nothing forced before frame 1 is drawn
    assert not np.array_equal(px(free[2]), px(forced[2]))  # frame 2 sees gt[1], not the regressed frame 1
    assert all(np.array_equal(px(a), px(b)) for a, b in zip(forced, again))  # deterministic
