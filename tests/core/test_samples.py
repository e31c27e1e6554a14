"""Training sample builder (docs/reference.md §5): golden parity with the official decode_long_story_data + collate,
dropping of over-long samples, right padding, collate shapes, and the stage-3 time_ids crop-offset fix."""

import json
import random
import re
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from seedstory_core.data.samples import (
    IGNORE_INDEX,
    StorySampleBuilder,
    collate,
    crop_geometry,
    draw_k,
    sd_target,
    sd_time_ids,
)
from seedstory_core.tiny import default_tiny_tokenizer


class ToyTokenizer:
    """The golden fixture's toy tokenizer (agent_public.json 'tokens'): 'w<id>' -> id, '[INST]' -> 3 ids,
    BOI/EOI/IMG after the base vocabulary, pad 0, BOS 1, EOS 2."""

    def __init__(self, tokens: dict):
        self.bos_id, self.eos_id, self.pad_id = tokens["bos"], tokens["eos"], tokens["pad"]
        self.inst = list(tokens["[INST]"])
        boi, eoi = tokens["BOI <img>"], tokens["EOI </img>"]
        lo, hi = tokens["IMG <img_00000>.."]
        self.n_img = tokens["num_img_tokens_per_image"]
        assert hi - lo + 1 == self.n_img
        self.image_ids = SimpleNamespace(boi=boi, eoi=eoi, img=tuple(range(lo, hi + 1)))
        self._tags = {"<img>": [boi], "</img>": [eoi], "[INST]": self.inst}
        self._tags.update({f"<img_{i:05d}>": [lo + i] for i in range(self.n_img)})

    def image_token_string(self) -> str:
        return "<img>" + "".join(f"<img_{i:05d}>" for i in range(self.n_img)) + "</img>"

    def encode_prompt(self, text: str):
        ids = []
        for piece in re.split(r"(<img>|</img>|<img_\d{5}>|\[INST\])", text):
            if piece in self._tags:
                ids += self._tags[piece]
            else:
                ids += [int(w[1:]) for w in piece.split()]
        return ids


@pytest.fixture(scope="module")
def golden(golden_dir):
    meta = json.loads((golden_dir / "agent_public.json").read_text())
    tensors = load_file(str(golden_dir / "agent_public.safetensors"))
    inputs = {k[len("input.forward.") :]: v for k, v in tensors.items() if k.startswith("input.forward.")}
    return meta, inputs


def test_golden_training_batch_exact(golden):
    """The official code's training batch (input_ids, labels, attention, all masks) is reproduced exactly."""
    meta, inputs = golden
    tb = meta["training_batch"]
    tok = ToyTokenizer(meta["tokens"])
    builder = StorySampleBuilder(tok, max_length=tb["max_length"] + 1)
    samples = []
    for spec in tb["samples"]:
        rng = random.Random(spec["python_random_seed_for_k"])
        k = draw_k(spec["n_story_images"], rng)
        assert k == spec["num_image_given_k"]  # the official python random call: randint(0, n - 2)
        s = builder.build(spec["captions"], k)
        assert len(s) == spec["unpadded_length"]
        instr, resp = builder.texts(spec["captions"], k)
        assert instr + resp == spec["text"]
        samples.append(s)
    batch = collate(
        samples, tok.pad_id, pad_to=tb["max_length"], images=[torch.zeros(len(s.embeds_cmp_mask), 1) for s in samples]
    )
    for name in (
        "input_ids",
        "attention_mask",
        "labels",
        "ids_gen_mask",
        "ids_cmp_mask",
        "embeds_gen_mask",
        "embeds_cmp_mask",
    ):
        want = inputs[name]
        got = batch[name].to(want.dtype)
        assert torch.equal(got, want), name
    assert batch["image_embeds"].shape[0] == inputs["image_embeds"].shape[0]


def _sample_with_real_tokenizer(k=2, max_length=1280):
    tok = default_tiny_tokenizer()
    caps = [
        "George the pig runs to the park.",
        "Peppa smiles at George.",
        "They find a red ball!",
        "Later, they go home.",
    ]
    return tok, caps, StorySampleBuilder(tok, max_length=max_length).build(caps, k)


def test_layout_and_masks_real_tokenizer():
    tok, caps, s = _sample_with_real_tokenizer(k=2)
    img = tok.image_token_string()
    full = caps[0] + img + "[INST]" + caps[1] + img + "[INST]" + caps[2] + img + "[INST]" + caps[3] + img
    ids = torch.tensor(s.input_ids)
    assert s.input_ids == [tok.bos_id] + tok.encode_prompt(full) + [tok.eos_id]
    boi, img_ids = tok.image_ids.boi, set(tok.image_ids.img)
    bois = (ids == boi).nonzero().flatten().tolist()
    assert len(bois) == 4
    last_boi = bois[-1]
    resp_start = len(
        [tok.bos_id] + tok.encode_prompt(caps[0] + img + "[INST]" + caps[1] + img + "[INST]" + caps[2] + img)
    )
    labels = torch.tensor(s.labels)
    assert (labels[:resp_start] == IGNORE_INDEX).all()
    # loss on [INST] + caption_{k+1} + target BOI + EOS; target IMG tokens and EOI ignored
    assert labels[resp_start : last_boi + 1].tolist() == s.input_ids[resp_start : last_boi + 1]
    assert (labels[last_boi + 1 : -1] == IGNORE_INDEX).all() and len(labels[last_boi + 1 : -1]) == len(img_ids) + 1
    assert labels[-1].item() == tok.eos_id
    assert s.input_ids[resp_start : resp_start + len(tok.inst_ids)] == list(tok.inst_ids)
    cmp, gen = torch.tensor(s.ids_cmp_mask), torch.tensor(s.ids_gen_mask)
    is_img = torch.tensor([i in img_ids for i in s.input_ids])
    assert torch.equal(cmp | gen, is_img) and not (cmp & gen).any()
    assert cmp.sum() == 3 * len(img_ids) and gen.sum() == len(img_ids)
    assert gen.nonzero().min() > last_boi and cmp.nonzero().max() < resp_start
    assert s.embeds_cmp_mask == [True, True, True, False] and s.embeds_gen_mask == [False, False, False, True]
    assert s.image_indices == [0, 1, 2, 3]


def test_k0_and_bounds():
    tok, caps, s = _sample_with_real_tokenizer(k=0)
    assert s.embeds_cmp_mask == [True, False] and s.image_indices == [0, 1]
    builder = StorySampleBuilder(tok)
    with pytest.raises(ValueError):
        builder.build(caps, 3)
    with pytest.raises(ValueError):
        draw_k(1, random.Random(0))
    ks = {draw_k(10, random.Random(i)) for i in range(200)}
    assert ks == set(range(9))  # k in [0, 8]: 2..10 images


def test_overlong_samples_are_dropped_not_truncated():
    tok, caps, s = _sample_with_real_tokenizer(k=2)
    n = len(s)
    builder = StorySampleBuilder(tok, max_length=n)
    assert builder.build(caps, 2) is None  # length >= max_length -> dropped
    kept = StorySampleBuilder(tok, max_length=n + 1).build(caps, 2)
    assert kept is not None and kept.input_ids == s.input_ids


def test_sample_is_deterministic_given_rng():
    tok, caps, _ = _sample_with_real_tokenizer()
    b = StorySampleBuilder(tok)
    a1 = [b.sample(caps, random.Random(7)).k for _ in range(3)]
    a2 = [b.sample(caps, random.Random(7)).k for _ in range(3)]
    assert a1 == a2


def test_collate_right_padding_and_shapes():
    tok, caps, s2 = _sample_with_real_tokenizer(k=2)
    _, _, s0 = _sample_with_real_tokenizer(k=0)
    feats = [torch.randn(4, 8, 16), torch.randn(2, 8, 16)]
    b = collate([s2, s0], tok.pad_id, images=feats)
    L = len(s2)
    assert b["input_ids"].shape == (2, L) and b["labels"].shape == (2, L)
    n0 = len(s0)
    assert (b["input_ids"][1, n0:] == tok.pad_id).all()
    assert (b["attention_mask"][1, n0:] == 0).all() and (b["attention_mask"][1, :n0] == 1).all()
    assert (b["labels"][1, n0:] == IGNORE_INDEX).all()
    assert not b["ids_cmp_mask"][1, n0:].any() and not b["ids_gen_mask"][1, n0:].any()
    assert b["image_embeds"].shape == (6, 8, 16)
    assert torch.equal(b["image_embeds"][4:], feats[1])
    assert b["embeds_cmp_mask"].tolist() == [True, True, True, False, True, False]
    assert b["embeds_gen_mask"].tolist() == [False, False, False, True, False, True]
    padded = collate([s2, s0], tok.pad_id, pad_to=L + 5)
    assert padded["input_ids"].shape == (2, L + 5)
    with pytest.raises(ValueError):
        collate([s2], tok.pad_id, pad_to=L - 1)


def test_time_ids_crop_offsets_fixed_vs_official_swap():
    # landscape 100 x 200 (H x W) -> 64 x 128, centre crop 64: the crop is horizontal
    assert crop_geometry(100, 200, 64) == (64, 128, 0, 32)
    assert sd_time_ids(100, 200, 64).tolist() == [100, 200, 0, 32, 64, 64]
    assert sd_time_ids(100, 200, 64, official_crop_swap=True).tolist() == [100, 200, 32, 0, 64, 64]
    # portrait 300 x 150 -> 128 x 64: vertical crop
    assert sd_time_ids(300, 150, 64).tolist() == [300, 150, 32, 0, 64, 64]
    assert sd_time_ids(300, 150, 64, official_crop_swap=True).tolist() == [300, 150, 0, 32, 64, 64]
    # square: identical
    assert torch.equal(sd_time_ids(80, 80, 64), sd_time_ids(80, 80, 64, official_crop_swap=True))


def test_sd_target_crops_the_centre_and_maps_to_minus1_1():
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    img.paste((255, 255, 255), (50, 0, 150, 100))  # white centre band, black sides
    x, tids = sd_target(img, 64)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x[:, :, 8:56].mean() > 0.95  # the centre crop is (almost) all white
    assert tids.tolist() == [100, 200, 0, 32, 64, 64]


def test_text_loss_all_labels_every_caption_after_the_first_image():
    tok = default_tiny_tokenizer()
    caps = ["Tom is at the park.", "He jumps.", "Lily comes.", "They dance."]
    last = StorySampleBuilder(tok).build(caps, 2)
    dense = StorySampleBuilder(tok, text_loss="all").build(caps, 2)
    assert last.input_ids == dense.input_ids and last.ids_gen_mask == dense.ids_gen_mask
    # the response part is labelled identically; the instruction part only in 'all' mode
    for pos, lab in enumerate(last.labels):
        if lab != IGNORE_INDEX:
            assert dense.labels[pos] == lab
    assert sum(t != IGNORE_INDEX for t in dense.labels) > sum(t != IGNORE_INDEX for t in last.labels)
    labelled = [t for t in dense.labels if t != IGNORE_INDEX]
    img = set(tok.image_ids.img) | {tok.image_ids.eoi}
    assert not img & set(labelled)  # image tokens and EOI are never labels
    cap0 = tok.encode(caps[0])
    first_eoi = dense.input_ids.index(tok.image_ids.eoi)
    assert all(label == IGNORE_INDEX for label in dense.labels[: first_eoi + 1])  # BOS, caption 0, its image: no loss
    for cap in caps[1:]:
        ids = tok.encode("[INST]" + cap)
        start = next(i for i in range(len(dense.input_ids)) if dense.input_ids[i : i + len(ids)] == ids)
        assert dense.labels[start : start + len(ids)] == ids
    assert sum(t == tok.image_ids.boi for t in labelled) == 3  # BOI after captions 1, 2 and 3
    assert cap0 and all(dense.labels[1 + i] == IGNORE_INDEX for i in range(len(cap0)))
    with pytest.raises(ValueError, match="text_loss"):
        StorySampleBuilder(tok, text_loss="some")
