"""The evaluation (evaluation/evaluate.py and evaluation/stories.py: values, not just keys; its fixed judge and story
metrics are tested in tests/evaluation/test_judge.py)."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.evaluate import build_parser, cli_decoding, evaluate
from evaluation.metrics import agreement_parts, attribute_agreement
from evaluation.stories import DEFAULT_MODEL, PACK_DECODING, frame_features, generate_story, pixel_distance
from seedstory_core.consistency import RetrySettings
from seedstory_core.data import mini
from seedstory_core.story import DEFAULT_NO_REPEAT_SENTENCES, DEFAULT_REPETITION_PENALTY, DecodingSettings
from seedstory_core.tiny import random_tiny_bundle
from tests.conftest import require_or_skip

REPO = Path(__file__).resolve().parents[2]


def test_evaluate_cli_runs_on_a_small_model(tmp_path):
    """A random-init model through the CLI: every metric is a fraction in [0, 1], and a model that writes no
    StoryStream-mini sentence scores ~0 on everything the judge reads from its sentences."""
    model = tmp_path / "model"
    random_tiny_bundle(0).save(model)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluation.evaluate",
            "--model",
            str(model),
            "--stories",
            "1",
            "--no-ablation",
            "--diffusion-steps",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
        "score",
        "parse_rate",
        "coherence",
        "consistency",
        "visualization_agreement",
        "visualization_background",
        "visualization_cast",
    ):
        assert 0.0 <= result[key] <= 1.0, (key, result)
    for key in ("pixel_l1", "attribute_agreement", "visualization_coherence"):
        assert 0.0 <= result["gt_distance"][key] <= 1.0, (key, result)
    assert result["gt_distance"]["pixel_l1"] > 0.0  # a random agent + random renderer cannot redraw the story
    assert result["parse_rate"] < 0.2 and result["score"] < 0.2 and result["coherence"] < 0.2, result
    assert result["system"] == "model" and len(result["judge"]["sha256"]) == 64
    assert (result["stories"], result["frames_per_story"], result["diffusion_steps"]) == (1, 10, 1)
    assert result["decoding"] == asdict(PACK_DECODING)  # the CLI decodes as the pack does


def test_cli_decoding_defaults_are_the_packs():
    """No option = the pack's decoding (repetition penalty 1.2 over the whole story, no repeated sentences, 40 tokens,
    greedy);
    ``--repetition-penalty 1.0 --allow-repeat-sentences`` = the official decoding."""
    parse = build_parser().parse_args
    default = cli_decoding(parse([]))
    assert default == PACK_DECODING
    assert default.repetition_penalty == DEFAULT_REPETITION_PENALTY == 1.2
    assert default.no_repeat_sentences is DEFAULT_NO_REPEAT_SENTENCES is True
    assert default.penalty_window == 0
    assert cli_decoding(parse(["--penalty-window", "10"])).penalty_window == 10
    assert default.max_sentence_tokens == 40 and not default.do_sample
    assert cli_decoding(parse(["--repetition-penalty", "1.0", "--allow-repeat-sentences"])) == DecodingSettings(
        max_sentence_tokens=40
    )
    assert cli_decoding(parse(["--no-repeat-sentences"])).no_repeat_sentences is True  # the old flag still works
    with pytest.raises(SystemExit):
        parse(["--no-repeat-sentences", "--allow-repeat-sentences"])
    args = parse(["--cast", "--retry", "2", "--retry-threshold", "0.7", "--baseline", "rule_based"])
    assert args.cast and args.retry == 2 and args.retry_threshold == 0.7 and args.baseline == "rule_based"


def test_new_baselines_tell_valid_stories():
    """static_start and rule_based write only sentences that parse, follow the rules and are new."""
    for baseline in ("static_start", "rule_based"):
        r = evaluate(seed=1000, stories=2, frames=12, baseline=baseline)
        assert r["system"] == baseline
        assert r["parse_rate"] == r["continuity_rate"] == r["distinct_sentence_rate"] == 1.0, r
        for key in ("shown_place_rate", "shown_cast_rate", "shown_look_rate", "shown_action_object_rate"):
            assert 0.0 <= r[key] <= 1.0 and len(r["ci95"][key]) == 2, key


def test_cast_and_retry_run_through_the_evaluation(tmp_path):
    """--cast and --retry on a random model: the look metrics and the retry's cost are reported; the pipeline's
    ceiling (ground_truth_detok) draws the true frames with the model's de-tokenizer."""
    model = tmp_path / "model"
    random_tiny_bundle(0).save(model)
    kw = dict(seed=1000, stories=1, frames=3, ablation=False, diffusion_steps=1)
    r = evaluate(model, cast=True, retry=RetrySettings(1.0, 1), **kw)
    assert r["cast"] is True and r["decoding"] == asdict(DecodingSettings(max_sentence_tokens=40))
    retry = r["retry"]
    assert retry["frames"] == 2 and retry["redraws"] == retry["frames_checked"] >= 1
    for key in ("look_consistency", "look_accuracy"):
        assert key in r and key in r["per_story"] and key in r["look_stories"]
    gt = evaluate(model, baseline="ground_truth_detok", **kw)
    assert gt["system"] == "ground_truth_detok" and gt["model"] == str(model)
    assert gt["parse_rate"] == gt["continuity_rate"] == 1.0
    with pytest.raises(ValueError, match="baseline"):
        evaluate(model, baseline="copy_first", cast=True, **kw)


# ------------------------------------------------------------------------------------------------ hand-built cases
def test_attribute_agreement_on_hand_built_cases():
    """Known answers of the judge's per-frame agreement (0.5 scene + 0.5 Jaccard of the cast)."""
    both = ["George", "Ben"]
    assert (
        attribute_agreement({"background": "forest", "present": both}, {"background": "forest", "present": both}) == 1.0
    )
    assert (
        attribute_agreement({"background": "beach", "present": both}, {"background": "forest", "present": both}) == 0.5
    )
    assert (
        attribute_agreement({"background": "forest", "present": ["George"]}, {"background": "forest", "present": both})
        == 0.75
    )  # 0.5 + 0.5 * |{G}| / |{G, B}|
    assert attribute_agreement({"background": "park", "present": []}, {"background": "park", "present": []}) == 1.0
    assert (
        attribute_agreement({"background": "park", "present": ["Max"]}, {"background": "beach", "present": []}) == 0.0
    )
    # its two halves, reported apart as visualization_background / visualization_cast
    assert agreement_parts(
        {"background": "forest", "present": ["George"]}, {"background": "forest", "present": both}
    ) == (
        1.0,
        0.5,
    )
    assert agreement_parts({"background": "beach", "present": both}, {"background": "forest", "present": both}) == (
        0.0,
        1.0,
    )


def test_pixel_distance_is_the_mean_absolute_difference():
    black, white = Image.new("RGB", (8, 8), (0, 0, 0)), Image.new("RGB", (8, 8), (255, 255, 255))
    half = Image.new("RGB", (8, 8), (255, 0, 0))
    assert pixel_distance(black, black) == 0.0
    assert pixel_distance(black, white) == 1.0
    assert pixel_distance(half, black) == pytest.approx(1 / 3)
    assert pixel_distance(Image.new("RGB", (16, 16), (255, 255, 255)), black) == 1.0  # resized to the reference


def test_trained_model_scores_above_a_random_one():
    """The same held-out story and the same fixed judge: the bundled (trained) tiny model must beat a random-init
    model of the same size on what it measures from the sentences and the drawn frames; an evaluation that ignored
    the model would score them alike. The headline score is not compared: since it checks every look and pose, the
    bundled model scores about 0.01 on held-out stories (docs/evaluation.md, "Characters who keep their looks") and
    0 on these stories, like the random model. (A random model writes no parsable sentence, so its coherence is 0.)
    Three stories with the pack's decoding (the CLI's default): on one story the official greedy decoding can loop on
    one sentence, and story 0 alone says little (continuity 0.22 there with the current agent, 0.59 over three)."""
    if not (DEFAULT_MODEL / "seedstory_config.json").is_file():
        require_or_skip(f"the bundled tiny model is not in this checkout ({DEFAULT_MODEL})")
    kw = dict(seed=1000, stories=3, ablation=False, diffusion_steps=10, decoding=PACK_DECODING)
    trained = evaluate(DEFAULT_MODEL, **kw)
    random = evaluate(DEFAULT_MODEL, random_init=True, **kw)
    pair = (trained, random)
    assert trained["parse_rate"] >= random["parse_rate"] + 0.5, pair
    assert trained["continuity_rate"] >= random["continuity_rate"] + 0.5, pair
    assert trained["coherence"] > random["coherence"] + 0.1, pair
    assert trained["visualization_agreement"] > random["visualization_agreement"], pair
    assert trained["gt_distance"]["pixel_l1"] < random["gt_distance"]["pixel_l1"], pair
    assert trained["judge"]["sha256"] == random["judge"]["sha256"]


def test_teacher_forcing_puts_ground_truth_frames_in_the_context():
    """generate_story(context_features=...) replaces the agent's regressed features of frame i-1 with the visual
    tokenizer's features of the given frame: frame 1 is drawn from the same context either way, later frames not."""
    torch.manual_seed(0)
    bundle = random_tiny_bundle(0)
    story = mini.generate_story(1001, 0, frames=4)
    gt = mini.render_story(story, size=64)
    kw = dict(captions=story["captions"][1:4], diffusion_steps=1, seed=3)
    _, free = generate_story(bundle, story, 4, **kw)
    _, forced = generate_story(bundle, story, 4, context_features=frame_features(bundle, gt), **kw)
    _, again = generate_story(bundle, story, 4, context_features=frame_features(bundle, gt), **kw)

    def px(im):
        return np.asarray(im, dtype=np.int16)

    assert np.array_equal(px(free[1]), px(forced[1]))  # nothing forced before frame 1 is drawn
    assert not np.array_equal(px(free[2]), px(forced[2]))  # frame 2 sees gt[1], not the regressed frame 1
    assert all(np.array_equal(px(a), px(b)) for a, b in zip(forced, again))  # deterministic
