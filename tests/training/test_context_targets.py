"""Context targets (training/context_targets.py, stage 2 --context-targets): each appended query block regresses
exactly what the official sample with that image as its target regresses, the sample's own logits are unchanged,
and stage 2 trains with it."""

import csv
import random

import pytest
import torch

from seedstory_core.tiny import random_tiny_bundle
from tests.training.test_training import FAST, _records, _story_batches
from training import context_targets as ct
from training.stage2_instruction import train_stage2


@pytest.fixture(scope="module")
def bundle():
    b = random_tiny_bundle(0)
    b.agent.eval()  # LoRA dropout off: the comparison is exact up to float rounding
    return b


@pytest.fixture(scope="module")
def records():
    return _records(n=2, frames=6)


def _batches(records, bundle, n):
    return _story_batches(records, bundle, context_targets=n)


def _official_regression(bundle, sb, r, frame, cast=()):
    """The official forward on the sample of record r whose target is story frame ``frame``."""
    s = sb.builder.build(sb.records[r]["captions"], frame - 1, cast=cast)
    feats = torch.stack([sb.cast_features(r, c) for c in s.cast] + [sb.features(r, f) for f in s.image_indices])
    batch = sb.collate([s], [feats])
    assert ct.CONTEXT_POSITIONS not in batch
    with torch.no_grad():
        return bundle.agent(**batch)


def test_choose_frames_takes_the_last_context_frames_after_the_first(records, bundle):
    sb = _batches(records, bundle, 0)
    s = sb.builder.build(records[0]["captions"], 3)  # frames 0..3 given, 4 the target
    assert ct.choose_frames(s, 2) == [2, 3]
    assert ct.choose_frames(s, 9) == [1, 2, 3]
    assert ct.choose_frames(s, 0) == []
    assert ct.choose_frames(sb.builder.build(records[0]["captions"], 0), 3) == []
    with pytest.raises(ValueError, match="not a context frame"):
        ct.image_positions(s, 4, bundle.agent.num_img_tokens)


@pytest.mark.parametrize("cast", [False, True])
def test_query_blocks_regress_what_the_official_sample_regresses(records, bundle, cast):
    sb = _batches(records, bundle, 3)
    names = ("Max", "Zoe") if cast else ()
    if cast:  # a cast sheet whose pictures are two of the story's own frames
        sb.cast_features = lambda r, name: sb.features(r, 5 if name == "Max" else 4)
    # two samples with different numbers of context targets: the second has a padding slot
    a = sb.builder.build(records[0]["captions"], 3, cast=names)
    b = sb.builder.build(records[1]["captions"], 2, cast=names)
    for s in (a, b):
        s.extras["context_frames"] = ct.choose_frames(s, 3)
    assert a.extras["context_frames"] == [1, 2, 3] and b.extras["context_frames"] == [1, 2]
    samples, feats, _ = sb.load([(0, a), (1, b)])
    batch = sb.collate(samples, feats)
    assert batch[ct.CONTEXT_POSITIONS].shape == (2, 3, bundle.agent.num_img_tokens)
    assert bool((batch[ct.CONTEXT_POSITIONS][1, 2] == -1).all())
    with torch.no_grad():
        dense = ct.forward(bundle.agent, **batch)
        plain = bundle.agent(**{k: v for k, v in batch.items() if not k.startswith("context_")})
    # the sample tokens see nothing of the blocks: logits and the last images' regressions are the official ones
    width = batch["input_ids"].shape[1]
    assert dense["logits"].shape == plain["logits"].shape
    torch.testing.assert_close(dense["logits"], plain["logits"], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(dense["recon_image_embeds"][:2], plain["recon_image_embeds"], atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(dense["lm_loss"], plain["lm_loss"], atol=1e-5, rtol=1e-5)
    assert width == max(len(a), len(b))
    # each block = the official sample whose target is that frame
    blocks = dense["recon_image_embeds"][2:]
    assert blocks.shape[0] == 5
    expected = [(0, f) for f in (1, 2, 3)] + [(1, f) for f in (1, 2)]
    losses = []
    for got, (r, frame) in zip(blocks, expected):
        ref = _official_regression(bundle, sb, r, frame, cast=names)
        torch.testing.assert_close(got, ref["recon_image_embeds"][0], atol=2e-4, rtol=1e-4)
        losses.append(ref["rec_loss"])
    # the loss is the mean over all 7 targets (2 last images + 5 context targets), each of T tokens
    want = (2 * plain["rec_loss"] + torch.stack(losses).sum()) / 7
    torch.testing.assert_close(dense["rec_loss"], want, atol=1e-5, rtol=1e-5)


def test_targets_are_true_features_and_no_draw_changes(records, bundle):
    """The option draws nothing from the rng (the sample stream is the official one) and its targets are the true
    frames' features."""
    plain, dense = _batches(records, bundle, 0), _batches(records, bundle, 2)
    pa, pb = plain.pick(random.Random(5), 6), dense.pick(random.Random(5), 6)
    assert [(r, s.input_ids) for r, s in pa] == [(r, s.input_ids) for r, s in pb]
    samples, _, _ = dense.load(pb)
    for r, s in pb:
        frames = s.extras["context_frames"]
        assert frames == s.image_indices[1:-1][-2:]
        if frames:
            want = torch.stack([dense.features(r, f) for f in frames])
            assert torch.equal(s.extras["context_features"], want)
    with pytest.raises(ValueError, match="--context-targets must be >= 0"):
        _batches(records, bundle, -1)


def test_stage2_trains_with_context_targets(tmp_path, records, init_bundle):
    common = dict(FAST, records=records, init=f"bundle:{init_bundle}", seed=3)
    train_stage2(dict(common, out=str(tmp_path / "plain")))
    m = train_stage2(dict(common, out=str(tmp_path / "dense"), context_targets=3))
    assert (tmp_path / "dense" / "model").is_dir() and m["model"]
    rows = {name: list(csv.DictReader((tmp_path / name / "train_log.csv").open())) for name in ("plain", "dense")}
    assert len(rows["dense"]) == 2
    # the first step sees the same weights and samples: the LM loss is the same; the regression loss differs as
    # soon as a sample has a context frame after the first
    assert float(rows["dense"][0]["lm_loss"]) == pytest.approx(float(rows["plain"][0]["lm_loss"]), rel=1e-4)
    assert any(
        float(d["rec_loss"]) != pytest.approx(float(p["rec_loss"]), rel=1e-4)
        for d, p in zip(rows["dense"], rows["plain"])
    )
