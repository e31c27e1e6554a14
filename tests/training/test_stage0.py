"""Stage 0 (training/stage0_visual_tokenizer.py): CLIP-style pretraining of the tiny visual tokenizer, then frozen."""

import pytest
import torch
from safetensors.torch import load_file

from seedstory_core.data import mini
from seedstory_core.tiny import random_tiny_bundle
from training.stage0_visual_tokenizer import (
    attribute_tokens,
    attribute_vocabulary,
    load_attribute_records,
    measure_bundles,
    train_stage0,
)
from training.stage1_detokenizer import train_stage1


def _vit_weights(folder):
    return load_file(str(folder / "visual_tokenizer" / "model.safetensors"))


def test_attribute_tokens_keep_who_is_where_and_who_holds_what():
    a = {
        "background": "park",
        "present": ["George", "Lily"],
        "objects": [{"name": "kite", "holder": "George"}],
        "action": "walk",
        "actors": ["George"],
    }
    b = dict(a, objects=[{"name": "kite", "holder": "Lily"}])
    c = dict(a, actors=["Lily"])
    ta, tb, tc = attribute_tokens(a), attribute_tokens(b), attribute_tokens(c)
    assert ta == sorted(["scene:park", "George@left", "Lily@right", "George:walk", "Lily:stand", "kite@George"])
    assert len({tuple(ta), tuple(tb), tuple(tc)}) == 3
    vocab = set(attribute_vocabulary())
    story = mini.generate_story(0, 0)
    assert all(t in vocab for attrs in story["attributes"] for t in attribute_tokens(attrs))


def test_records_without_attributes_are_refused_with_a_hint():
    records = [{"id": 0, "images": ["a.png", "b.png"], "captions": ["x", "y"]}]
    with pytest.raises(ValueError, match="attributes"):
        load_attribute_records(records=records)


@pytest.fixture(scope="module")
def stage0_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stage0")
    records = mini.make_records(seed=0, stories=4)
    metrics = train_stage0(
        {
            "records": records,
            "init": "tiny",
            "out": str(out),
            "max_steps": 16,
            "batch_size": 32,
            "lr": 2e-3,
            "warmup_steps": 2,
            "seed": 0,
            "no_progress": True,
        }
    )
    return out, records, metrics


def test_a_few_steps_lower_the_contrastive_loss(stage0_run):
    out, _, metrics = stage0_run
    losses = metrics["losses"]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert (out / "model" / "visual_tokenizer" / "model.safetensors").is_file()
    assert (out / "text_encoder.safetensors").is_file()
    # the whole ViT was trained (no part left at its random init)
    init = random_tiny_bundle(0).visual_tokenizer.state_dict()
    trained = _vit_weights(out / "model")
    assert metrics["trainable"] and all(n in trained for n in metrics["trainable"])
    changed = [k for k in metrics["trainable"] if not torch.equal(trained[k], init[k].float())]
    assert len(changed) == len(metrics["trainable"]), set(metrics["trainable"]) - set(changed)


def test_stage1_keeps_the_stage0_visual_tokenizer_frozen(stage0_run, tmp_path):
    """Stage 1 started from stage 0's bundle encodes with exactly stage 0's ViT and exports it unchanged."""
    out, records, _ = stage0_run
    train_stage1(
        {
            "records": records,
            "init": f"bundle:{out / 'model'}",
            "out": str(tmp_path / "s1"),
            "max_steps": 2,
            "batch_size": 2,
            "unet_train": "full",
            "seed": 0,
            "no_progress": True,
        }
    )
    written, after = _vit_weights(out / "model"), _vit_weights(tmp_path / "s1" / "model")
    assert written.keys() == after.keys()
    assert all(torch.equal(written[k], after[k]) for k in written)


def test_measure_reports_cast_separation(stage0_run):
    out, _, _ = stage0_run
    res = measure_bundles(["tiny", str(out / "model")], stories=3, epochs=50)
    assert res["frames"]["test_frames_kept"] > 0 and res["frames"]["diff_cast_pairs"] > 0
    for m in res["bundles"].values():
        assert -1.0 <= m["cos_consecutive_diff_cast"] <= 1.0 and 0.0 <= m["probe_cast_exact"] <= 1.0
