"""QwenVisualTokenizer (docs/reference.md §1): golden parity, official state-dict layout, per-head QKV, input checks."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from seedstory_core.config import VisualTokenizerConfig, official_config
from seedstory_core.golden import GOLDEN_VIT_OUTPUT_NAMES, golden_vit, vit_config_from_constructor_kwargs
from seedstory_core.preprocess import CLIP_MEAN, CLIP_STD, preprocess_images
from seedstory_core.resampler import sincos_pos_embed_2d
from seedstory_core.tiny import tiny_config
from seedstory_core.visual_tokenizer import QwenVisualTokenizer, VisualAttention
from tests.support.golden import load_fixture

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def vit_fixture(golden_dir):
    return load_fixture(golden_dir, "vit_public")


def _small_config(**kw):
    base = dict(
        image_size=56, patch_size=14, width=32, layers=2, heads=4, mlp_ratio=4.9231, n_queries=4, output_dim=128
    )
    base.update(kw)
    return VisualTokenizerConfig(**base)


# ---------------------------------------------------------------------- golden parity
def test_golden_parity_all_outputs(vit_fixture):
    meta, sd, inputs, expected = vit_fixture
    out = golden_vit(meta, sd, inputs)
    assert set(out) == set(GOLDEN_VIT_OUTPUT_NAMES)
    # every fixture output is covered
    assert set(expected) == set(GOLDEN_VIT_OUTPUT_NAMES)
    for name in GOLDEN_VIT_OUTPUT_NAMES:
        assert out[name].shape == expected[name].shape, name
        assert out[name].dtype == torch.float32
        assert torch.allclose(out[name], expected[name], rtol=RTOL, atol=ATOL), (
            name,
            (out[name] - expected[name]).abs().max().item(),
        )


def test_golden_vit_ignores_stray_constructor_keys(vit_fixture):
    meta, sd, inputs, expected = vit_fixture
    meta = copy.deepcopy(meta)
    meta["constructor_kwargs"]['image_start_id"'] = 151857  # the official YAML's stray key (docs/reference.md §1)
    meta.pop("derived", None)  # eps falls back to the config default 1e-6
    out = golden_vit(meta, sd, inputs)
    assert torch.allclose(out["features"], expected["features"], rtol=RTOL, atol=ATOL)


def test_golden_vit_strict_load_rejects_missing_keys(vit_fixture):
    meta, sd, inputs, _ = vit_fixture
    broken = dict(sd)
    broken.pop("proj")
    with pytest.raises(RuntimeError, match="proj"):
        golden_vit(meta, broken, inputs)


def test_golden_pixel_values_match_preprocess_normalisation(vit_fixture):
    # pixel_values_01 normalised with the CLIP constants reproduces pixel_values (docs/reference.md §1 "Preprocessing").
    _, _, inputs, _ = vit_fixture
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    assert torch.allclose((inputs["pixel_values_01"] - mean) / std, inputs["pixel_values"], atol=1e-6)


# ---------------------------------------------------------------------- official layout
def test_meta_official_state_dict_matches_manifest(reference):
    manifest = json.loads((reference / "manifests" / "manifest_vit.json").read_text())
    assert len(manifest) == 594
    with torch.device("meta"):
        model = QwenVisualTokenizer(official_config().visual_tokenizer)
    sd = model.state_dict()
    assert sorted(sd) == sorted(manifest)
    wrong = {k: (list(sd[k].shape), manifest[k]) for k in manifest if list(sd[k].shape) != manifest[k]}
    assert not wrong
    assert all(t.device.type == "meta" for t in sd.values())
    assert sum(t.numel() for t in sd.values()) == 1_935_610_624  # docs/reference.md §1
    # a full-size forward pass on meta gives (B, 256, 4096) (docs/reference.md §1 step 7)
    out = model(torch.empty(2, 3, 448, 448, device="meta"))
    assert out.shape == (2, 256, 4096)


def test_meta_construction_then_materialize_constants():
    cfg = tiny_config().visual_tokenizer
    with torch.device("meta"):
        model = QwenVisualTokenizer(cfg)
    model.to_empty(device="cpu")
    model.reset_non_persistent()
    grid = math.isqrt(cfg.n_queries)
    assert torch.equal(model.attn_pool.pos_embed, sincos_pos_embed_2d(cfg.output_dim, grid))
    assert model.attn_pool.pos_embed.requires_grad is False
    model.attn_pool.pos_embed.data.zero_()
    model.materialize_constants()
    assert torch.equal(model.attn_pool.pos_embed, sincos_pos_embed_2d(cfg.output_dim, grid))


def test_positional_embedding_always_256_rows_and_resized():
    cfg = _small_config()
    model = QwenVisualTokenizer(cfg).eval()
    assert model.positional_embedding.shape == (256, cfg.width)
    assert model.attn_pool.attn.num_heads == cfg.output_dim // 128
    assert model.attn_pool.kv_proj.weight.shape == (cfg.output_dim, cfg.width)
    assert model.transformer.resblocks[0].mlp.c_fc.weight.shape == (int(cfg.width * cfg.mlp_ratio), cfg.width)
    assert model.conv1.bias is None
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert m.eps == cfg.layernorm_eps
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    inter = model.forward_with_intermediates(x)
    assert inter["intermediate.ln_pre_out"].shape == (1, cfg.grid**2, cfg.width)
    assert inter["intermediate.transformer_out"].shape == (1, cfg.grid**2, cfg.width)
    assert inter["intermediate.attn_pool_out"].shape == (1, cfg.n_queries, cfg.output_dim)
    assert inter["features"].shape == (1, cfg.n_queries, cfg.output_dim)
    # changing the 16x16 table changes the output: it is actually used (resized 16x16 -> 4x4)
    with torch.no_grad():
        model.positional_embedding.add_(1.0)
    assert not torch.allclose(model(x), inter["features"])


# ---------------------------------------------------------------------- per-head QKV layout
def _per_head_to_qkv_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder fused rows from per-head [q_h, k_h, v_h] x H to [Q; K; V] (nn.MultiheadAttention layout)."""
    d3 = weight.shape[0]
    hd = d3 // (3 * heads)
    w = weight.reshape(heads, 3, hd, *weight.shape[1:])
    return w.transpose(0, 1).reshape(d3, *weight.shape[1:])


def _mha_reference(attn: VisualAttention, x: torch.Tensor, weight, bias) -> torch.Tensor:
    mha = torch.nn.MultiheadAttention(attn.width, attn.heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(weight)
        mha.in_proj_bias.copy_(bias)
        mha.out_proj.weight.copy_(attn.out_proj.weight)
        mha.out_proj.bias.copy_(attn.out_proj.bias)
    return mha(x, x, x, need_weights=False)[0]


def test_per_head_qkv_layout_against_independent_mha(vit_fixture):
    _, sd, _, _ = vit_fixture
    width, heads = 64, 4  # public fixture sizes (meta constructor_kwargs)
    attn = VisualAttention(width, heads)
    attn.load_state_dict(
        {
            "in_proj.weight": sd["transformer.resblocks.0.attn.in_proj.weight"],
            "in_proj.bias": sd["transformer.resblocks.0.attn.in_proj.bias"],
            "out_proj.weight": sd["transformer.resblocks.0.attn.out_proj.weight"],
            "out_proj.bias": sd["transformer.resblocks.0.attn.out_proj.bias"],
        }
    )
    x = torch.randn(2, 10, width)
    with torch.no_grad():
        ours = attn(x)
        # per-head rows rearranged into [Q;K;V] for the independent torch implementation: identical result
        same = _mha_reference(
            attn, x, _per_head_to_qkv_rows(attn.in_proj.weight, heads), _per_head_to_qkv_rows(attn.in_proj.bias, heads)
        )
        # reading the same weights as [Q;K;V] (the nn.MultiheadAttention bug) gives a different result
        wrong = _mha_reference(attn, x, attn.in_proj.weight, attn.in_proj.bias)
    assert torch.allclose(ours, same, rtol=1e-5, atol=1e-6)
    assert (ours - wrong).abs().max() > 1e-2


def test_qkv_layout_bug_breaks_golden(vit_fixture):
    # Loading the fixture with in_proj rows regrouped as [Q;K;V] (what a [Q;K;V] reader implicitly assumes)
    # must break parity: the golden test is sensitive to the layout.
    meta, sd, inputs, expected = vit_fixture
    heads = meta["constructor_kwargs"]["heads"]
    permuted = dict(sd)
    for k in sd:
        if k.endswith("attn.in_proj.weight") or k.endswith("attn.in_proj.bias"):
            permuted[k] = _per_head_to_qkv_rows(sd[k], heads)
    out = golden_vit(meta, permuted, inputs)
    assert not torch.allclose(out["features"], expected["features"], rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------- input validation
@pytest.mark.parametrize(
    "shape, dtype, match",
    [
        ((3, 56, 56), torch.float32, "4-D"),
        ((1, 1, 3, 56, 56), torch.float32, "4-D"),
        ((1, 4, 56, 56), torch.float32, "3 channels"),
        ((1, 56, 56, 3), torch.float32, "channels-last"),
        ((1, 3, 112, 112), torch.float32, "56x56"),
        ((1, 3, 56, 42), torch.float32, "56x56"),
        ((0, 3, 56, 56), torch.float32, "empty batch"),
        ((1, 3, 56, 56), torch.uint8, "floating-point"),
    ],
)
def test_wrong_inputs_raise_value_error(shape, dtype, match):
    model = QwenVisualTokenizer(_small_config())
    with pytest.raises(ValueError, match=match) as err:
        model(torch.zeros(shape, dtype=dtype))
    assert "expected" in str(err.value) and "found" in str(err.value)


def test_non_tensor_input_raises():
    model = QwenVisualTokenizer(_small_config())
    with pytest.raises(ValueError, match="encode_images"):
        model(np.zeros((1, 3, 56, 56), dtype=np.float32))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_queries=5), "not a square"),
        (dict(heads=5), "divisible by heads"),
        (dict(image_size=50), "multiple of patch_size"),
        (dict(output_dim=64), ">= 128"),
    ],
)
def test_invalid_config_raises(kw, match):
    with pytest.raises(ValueError, match=match):
        QwenVisualTokenizer(_small_config(**kw))


def test_vit_config_from_constructor_kwargs():
    cfg = vit_config_from_constructor_kwargs(
        {
            "image_size": 448,
            "patch_size": 14,
            "width": 1664,
            "layers": 48,
            "heads": 16,
            "mlp_ratio": 4.9231,
            "output_dim": 4096,
            'image_start_id"': 151857,
        }
    )
    assert cfg == official_config().visual_tokenizer
    assert vit_config_from_constructor_kwargs({"width": 64}, layernorm_eps=1e-5).layernorm_eps == 1e-5


# ---------------------------------------------------------------------- conveniences
def test_encode_images_matches_manual_pipeline():
    cfg = _small_config()
    model = QwenVisualTokenizer(cfg).eval()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    comfy = torch.from_numpy(np.array(img)).float().div(255)[None]
    for mode in ("squash", "keep_ratio"):
        feats = model.encode_images([img, img.convert("L")], mode=mode)
        assert feats.shape == (2, cfg.n_queries, cfg.output_dim)
        assert not feats.requires_grad
        with torch.no_grad():
            manual = model(preprocess_images([img, img.convert("L")], image_size=cfg.image_size, mode=mode))
        assert torch.allclose(feats, manual, rtol=1e-5, atol=1e-6)
        # a ComfyUI float frame of the same picture gives the same features
        assert torch.allclose(model.encode_images(comfy, mode=mode), feats[:1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        model.encode_images(img, mode="crop")


def test_encode_images_follows_model_dtype():
    model = QwenVisualTokenizer(_small_config()).eval()
    img = Image.new("RGB", (60, 60), (120, 30, 200))
    ref = model.encode_images(img)
    model = model.to(torch.bfloat16)
    out = model.encode_images(img)
    assert out.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref, rtol=0.1, atol=0.1)
