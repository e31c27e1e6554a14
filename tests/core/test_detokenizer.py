"""SeedStoryDetokenizer (docs/reference.md §4.2): official layout on meta, tiny end-to-end generation, loading and
its errors."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from seedstory_core.checkpoints import CheckpointMismatchError, WrongCheckpointKindError
from seedstory_core.config import DetokenizerConfig
from seedstory_core.detokenizer import (
    SCHEDULER_NAMES,
    SeedStoryDetokenizer,
    frame_seed,
    load_sdxl_configs,
)
from seedstory_core.tiny import tiny_config

STEPS = 3


# ---------------------------------------------------------------------------------------------- official layout
@pytest.fixture(scope="module")
def official_meta():
    return SeedStoryDetokenizer.build(DetokenizerConfig(), meta=True)


def test_official_unet_kv_equals_derived_manifest(official_meta, reference):
    manifest = json.loads((reference / "manifests" / "manifest_detok_unet_kv_DERIVED.json").read_text())
    ours = {
        f"unet.{k}": list(v.shape)
        for k, v in official_meta.unet.state_dict().items()
        if k.endswith(("to_k.weight", "to_v.weight"))
    }
    assert len(ours) == 280
    assert ours == {k: list(v) for k, v in manifest.items()}


def test_official_trainable_set_is_manifest_resampler_plus_kv(official_meta, reference):
    kv = json.loads((reference / "manifests" / "manifest_detok_unet_kv_DERIVED.json").read_text())
    res = json.loads((reference / "manifests" / "manifest_detok_resampler.json").read_text())
    trainable = official_meta.trainable_parameters()
    assert set(trainable) == set(kv) | set(res)
    assert {k: list(v.shape) for k, v in trainable.items()} == {
        **{k: list(v) for k, v in kv.items()},
        **{k: list(v) for k, v in res.items()},
    }
    assert sum(p.numel() for p in trainable.values()) == 606_832_896  # docs/reference.md §4.2: 61,245,696 + 545,587,200


def test_official_unet_and_vae_configs(official_meta):
    unet = official_meta.unet
    assert unet.add_embedding.linear_1.in_features == 2816
    assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # SD-XL base UNet
    assert official_meta.vae.config.scaling_factor == pytest.approx(0.13025)
    assert official_meta.vae_scale_factor == 8
    s = official_meta.scheduler.config
    assert type(official_meta.scheduler).__name__ == "EulerDiscreteScheduler"
    assert (
        s.beta_schedule,
        s.beta_start,
        s.beta_end,
        s.num_train_timesteps,
        s.prediction_type,
        s.timestep_spacing,
        s.steps_offset,
    ) == ("scaled_linear", 0.00085, 0.012, 1000, "epsilon", "leading", 1)


def test_state_dict_holds_only_resampler_and_unet(official_meta):
    prefixes = {k.split(".", 1)[0] for k in official_meta.state_dict()}
    assert prefixes == {"resampler", "unet"}


def test_tiny_configs_chain_with_tiny_resampler():
    cfgs = load_sdxl_configs("sdxl_tiny")
    r = tiny_config().detokenizer.resampler
    assert cfgs["unet"]["cross_attention_dim"] == r.output1_dim + r.output2_dim == 96
    assert (
        cfgs["unet"]["projection_class_embeddings_input_dim"]
        == 6 * cfgs["unet"]["addition_time_embed_dim"] + r.output2_dim
    )


def test_mismatched_preset_is_rejected():
    cfg = DetokenizerConfig(resampler=tiny_config().detokenizer.resampler, sdxl_preset="sdxl_base")
    with pytest.raises(ValueError, match="cross_attention_dim=2048"):
        SeedStoryDetokenizer.build(cfg, meta=True)


# ---------------------------------------------------------------------------------------------- tiny generation
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1234)
    det = SeedStoryDetokenizer.build(tiny_config().detokenizer).eval()
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(2, 64, 256, generator=g)
    uncond = torch.randn(1, 64, 256, generator=g)
    return det, feats, uncond


def test_vae_is_plain_attribute_but_follows_to(tiny):
    det, _, _ = tiny
    assert not any(k.startswith("vae.") for k in det.state_dict())
    assert all(not n.startswith("vae") for n, _ in det.named_modules())
    torch.manual_seed(0)
    other = SeedStoryDetokenizer.build(tiny_config().detokenizer).to(torch.float64)
    assert other.vae.dtype == torch.float64 and other.unet.dtype == torch.float64


def test_encode_shapes(tiny):
    det, feats, _ = tiny
    prompt, pooled = det.encode(feats)
    assert prompt.shape == (2, 16, 96) and pooled.shape == (2, 64)
    with pytest.raises(ValueError, match=r"\(B, T, 256\)"):
        det.encode(torch.randn(2, 64, 128))


def test_generate_pil_and_tensor(tiny):
    det, feats, uncond = tiny
    steps = []
    images = det.generate(feats, uncond, num_inference_steps=STEPS, callback=lambda s, n: steps.append((s, n)))
    assert len(images) == 2 and all(im.size == (64, 64) and im.mode == "RGB" for im in images)
    assert steps == [(i, STEPS) for i in range(1, STEPS + 1)]
    t = det.generate(feats, uncond, num_inference_steps=STEPS, output="tensor")
    assert t.shape == (2, 64, 64, 3) and t.dtype == torch.float32 and t.device.type == "cpu"
    assert 0.0 <= t.min().item() and t.max().item() <= 1.0 and t.std().item() > 0
    # The PIL path is the same image, quantised to 8 bits.
    np.testing.assert_allclose(np.asarray(images[0]) / 255.0, t[0].numpy(), atol=1.5 / 255)


def test_non_square_and_size_errors(tiny):
    det, feats, uncond = tiny
    t = det.generate(feats[:1], uncond, num_inference_steps=1, width=48, height=32, output="tensor")
    assert t.shape == (1, 32, 48, 3)
    with pytest.raises(ValueError, match="multiples of 8"):
        det.generate(feats[:1], uncond, num_inference_steps=1, width=60)
    with pytest.raises(ValueError, match="uncond_features is required"):
        det.generate(feats[:1], None, num_inference_steps=1)
    with pytest.raises(ValueError, match="output must be"):
        det.generate(feats[:1], uncond, num_inference_steps=1, output="numpy")


def test_seeds_and_frames_change_the_image(tiny):
    det, feats, uncond = tiny
    one = feats[:1]
    base = det.generate(one, uncond, num_inference_steps=STEPS, seed=0, output="tensor")
    again = det.generate(one, uncond, num_inference_steps=STEPS, seed=0, output="tensor")
    other_seed = det.generate(one, uncond, num_inference_steps=STEPS, seed=1, output="tensor")
    other_frame = det.generate(one, uncond, num_inference_steps=STEPS, seed=0, frame_index=3, output="tensor")
    assert torch.equal(base, again)
    assert (base - other_seed).abs().max() > 1e-3
    assert (base - other_frame).abs().max() > 1e-3
    # Batched frames [0, 3] draw the same noise as the single-frame calls.
    both = det.generate(
        one.expand(2, -1, -1), uncond, num_inference_steps=STEPS, seed=0, frame_index=[0, 3], output="tensor"
    )
    assert torch.allclose(both[0], base[0], atol=1e-4) and torch.allclose(both[1], other_frame[0], atol=1e-4)


def test_same_noise_every_frame_reproduces_official_quirk(tiny):
    det, feats, uncond = tiny
    lat, _ = det.initial_latents(3, 64, 64, seed=42, frame_index=[0, 1, 7], same_noise_every_frame=True)
    assert lat.shape == (3, 4, 8, 8)
    assert torch.equal(lat[0], lat[1]) and torch.equal(lat[0], lat[2])
    official = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42))
    assert torch.equal(lat[0:1], official)
    per_frame, _ = det.initial_latents(3, 64, 64, seed=42, frame_index=[0, 1, 7])
    assert torch.equal(per_frame[0], lat[0]) and not torch.equal(per_frame[1], per_frame[0])
    assert not torch.equal(per_frame[2], per_frame[1])
    same_feats = feats[:1].expand(2, -1, -1)
    quirk = det.generate(
        same_feats,
        uncond,
        num_inference_steps=STEPS,
        seed=42,
        frame_index=[0, 5],
        same_noise_every_frame=True,
        output="tensor",
    )
    assert torch.allclose(quirk[0], quirk[1], atol=1e-6)
    default = det.generate(same_feats, uncond, num_inference_steps=STEPS, seed=42, frame_index=[0, 5], output="tensor")
    assert (default[0] - default[1]).abs().max() > 1e-3


def test_frame_seed_rules():
    assert frame_seed(42, 0) == 42
    assert frame_seed(42, 1) == frame_seed(42, 1) != frame_seed(42, 2)
    assert frame_seed(42, 1) != frame_seed(43, 1)
    with pytest.raises(ValueError, match="non-negative"):
        frame_seed(-1, 0)


def test_guidance_and_steps_matter(tiny):
    det, feats, uncond = tiny
    one = feats[:1]
    a = det.generate(one, uncond, num_inference_steps=STEPS, guidance_scale=7.5, output="tensor")
    b = det.generate(one, uncond, num_inference_steps=STEPS, guidance_scale=2.0, output="tensor")
    c = det.generate(one, None, num_inference_steps=STEPS, guidance_scale=1.0, output="tensor")
    d = det.generate(one, uncond, num_inference_steps=STEPS + 2, guidance_scale=7.5, output="tensor")
    for other in (b, c, d):
        assert (a - other).abs().max() > 1e-3


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_scheduler_choices(tiny, name):
    det, feats, uncond = tiny
    if name == "lms":
        from diffusers.utils import is_scipy_available

        if not is_scipy_available():
            with pytest.raises(ImportError, match="scipy"):
                det.generate(feats[:1], uncond, num_inference_steps=2, scheduler=name)
            return
    t = det.generate(feats[:1], uncond, num_inference_steps=2, scheduler=name, output="tensor")
    assert t.shape == (1, 64, 64, 3) and torch.isfinite(t).all()


def test_unknown_scheduler(tiny):
    det, feats, uncond = tiny
    with pytest.raises(ValueError, match="Unknown scheduler 'foo'"):
        det.generate(feats[:1], uncond, num_inference_steps=1, scheduler="foo")


# ---------------------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A diffusers-format SD-XL 'base' folder (tiny) and an adapter whose to_k/to_v differ from that base."""
    root = tmp_path_factory.mktemp("detok")
    torch.manual_seed(99)
    det = SeedStoryDetokenizer.build(tiny_config().detokenizer).eval()
    base = root / "sdxl_tiny_base"
    det.unet.save_pretrained(str(base / "unet"), safe_serialization=True)
    det.vae.save_pretrained(str(base / "vae"), safe_serialization=True)
    with torch.no_grad():  # the adapter must win over the base's to_k/to_v
        for p in det.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    adapter = det.save_adapter(root / "adapter.safetensors")
    return det, base, adapter, root


def _save(root, name, tensors):
    """``tensors`` written to ``root / name`` as a .safetensors file; returns that path."""
    path = root / name
    save_file(tensors, str(path))
    return path


def test_adapter_round_trip_diffusers_folder(saved):
    det, base, adapter, _ = saved
    loaded = SeedStoryDetokenizer.from_pretrained(adapter, base, tiny_config().detokenizer)
    for k, v in det.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    for k, v in det.vae.state_dict().items():
        assert torch.equal(loaded.vae.state_dict()[k], v), k
    rep = loaded.load_report
    n_kv = sum(1 for k in det.trainable_parameters() if k.startswith("unet."))
    assert len(rep.loaded) == len(det.trainable_parameters()) and not rep.unexpected
    assert len(rep.missing) == len(det.unet.state_dict()) - n_kv
    assert all(not k.endswith(("to_k.weight", "to_v.weight")) for k in rep.missing)
    assert len(rep.consumed) == n_kv  # the base's own to_k/to_v were checked and replaced by the adapter's
    feats = torch.randn(1, 64, 256)
    uncond = torch.zeros(1, 64, 256)
    a = det.generate(feats, uncond, num_inference_steps=2, output="tensor")
    b = loaded.generate(feats, uncond, num_inference_steps=2, output="tensor")
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()  # same weights; BLAS layout may differ in ulps


def test_pickled_official_format_loads(saved):
    det, base, _, root = saved
    path = root / "pytorch_model.bin"
    torch.save(dict(det.adapter_state_dict()), str(path))
    loaded = SeedStoryDetokenizer.from_pretrained(path, base, tiny_config().detokenizer, dtype=torch.float32)
    assert torch.equal(loaded.resampler.latents, det.resampler.latents)


def test_full_unet_adapter_is_accepted(saved):
    det, base, _, root = saved
    path = _save(root, "full.safetensors", {k: v.contiguous() for k, v in det.state_dict().items()})
    loaded = SeedStoryDetokenizer.from_pretrained(path, base, tiny_config().detokenizer)
    assert loaded.load_report.missing == []
    assert torch.equal(loaded.unet.conv_in.weight, det.unet.conv_in.weight)


def test_wrong_shape_names_key_and_shapes(saved):
    det, base, _, root = saved
    sd = {k: v.contiguous() for k, v in det.adapter_state_dict().items()}
    key = "resampler.proj_in.weight"
    sd[key] = torch.zeros(128, 100)
    path = _save(root, "bad_shape.safetensors", sd)
    with pytest.raises(CheckpointMismatchError) as err:
        SeedStoryDetokenizer.from_pretrained(path, base, tiny_config().detokenizer)
    msg = str(err.value)
    assert key in msg and "(128, 256)" in msg and "(128, 100)" in msg


def test_missing_kv_weights_rejected(saved):
    det, base, _, root = saved
    sd = {k: v.contiguous() for k, v in det.adapter_state_dict().items() if "attn2.to_v" not in k}
    path = _save(root, "no_v.safetensors", sd)
    with pytest.raises(CheckpointMismatchError, match="to_k/to_v"):
        SeedStoryDetokenizer.from_pretrained(path, base, tiny_config().detokenizer)


def test_vit_file_is_wrong_kind(saved):
    _, base, _, root = saved
    vit = {
        "conv1.weight": torch.zeros(8, 3, 14, 14),
        "positional_embedding": torch.zeros(4, 8),
        "transformer.resblocks.0.ln_1.weight": torch.ones(8),
        "attn_pool.query": torch.zeros(4, 8),
        "ln_post.weight": torch.ones(8),
        "proj": torch.zeros(8, 8),
    }
    path = _save(root, "vit.safetensors", vit)
    with pytest.raises(WrongCheckpointKindError, match="visual_tokenizer"):
        SeedStoryDetokenizer.from_pretrained(path, base, tiny_config().detokenizer)


def test_sdxl_base_must_be_sdxl(saved):
    _, _, adapter, root = saved
    with pytest.raises(FileNotFoundError):
        SeedStoryDetokenizer.from_pretrained(adapter, root / "nowhere", tiny_config().detokenizer)
    # A single file that is not an SD-XL checkpoint (here: the adapter itself) is refused by kind.
    with pytest.raises(WrongCheckpointKindError, match="sdxl_single_file"):
        SeedStoryDetokenizer.from_pretrained(adapter, adapter, tiny_config().detokenizer)


def test_single_file_without_sdxl_layout_is_clear_error(saved):
    _, _, adapter, root = saved
    junk = {
        "model.diffusion_model.foo.weight": torch.zeros(2),
        "first_stage_model.bar.weight": torch.zeros(2),
        "conditioner.embedders.0.x": torch.zeros(2),
    }
    path = _save(root, "junk_single.safetensors", junk)
    with pytest.raises(CheckpointMismatchError):
        SeedStoryDetokenizer.from_pretrained(adapter, path, tiny_config().detokenizer)


# Not tested: loading a single-file (LDM-layout) SD-XL checkpoint end to end. diffusers 0.42 ships only the
# LDM->diffusers direction (single_file_utils.convert_ldm_*_checkpoint); the diffusers->LDM converter is an
# out-of-package script, so no tiny LDM-layout file can be built here without hand-writing a key map. The folder
# path is tested above; the single-file path only by the dispatch/error tests. (This used to be a permanently
# skipped placeholder test, which can never fail; the gap is stated here instead.)
