"""ResamplerXLV2 (docs/reference.md §4.1): golden parity with the official class, the token-axis normalisation
quirk, key names."""

import json

import pytest
import torch
import torch.nn.functional as F

from seedstory_core.config import DetokenizerResamplerConfig
from seedstory_core.detok_resampler import ResamplerXLV2
from seedstory_core.golden import golden_detok_resampler
from tests.support.golden import load_fixture

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def fixture(golden_dir):
    return load_fixture(golden_dir, "detok_resampler_public")


def test_golden_parity_all_outputs(fixture):
    meta, sd, inputs, expected = fixture
    out = golden_detok_resampler(meta, sd, inputs)
    assert set(out) == set(expected) == {"prompt_embeds", "pooled_prompt_embeds", "intermediate.hidden_embeds"}
    for name, value in out.items():
        assert value.shape == expected[name].shape, name
        assert torch.allclose(value, expected[name], rtol=RTOL, atol=ATOL), (
            name,
            (value - expected[name]).abs().max().item(),
        )


def test_shapes_follow_constructor_kwargs(fixture):
    meta, sd, inputs, _ = fixture
    kw = meta["constructor_kwargs"]
    out = golden_detok_resampler(meta, sd, inputs)
    b = inputs["x"].shape[0]
    assert out["prompt_embeds"].shape == (b, kw["num_queries"], kw["output1_dim"] + kw["output2_dim"])
    assert out["pooled_prompt_embeds"].shape == (b, kw["output2_dim"])
    assert out["intermediate.hidden_embeds"].shape == (b, kw["num_queries"], kw["dim"])


def test_token_axis_normalisation_quirk_matters(fixture, monkeypatch):
    """Normalising over the channel axis (the 'obvious' choice) must NOT reproduce the official outputs."""
    meta, sd, inputs, expected = fixture
    original = F.normalize

    def channel_normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
        return original(x, p=p, dim=-1, eps=eps)

    monkeypatch.setattr(F, "normalize", channel_normalize)
    wrong = golden_detok_resampler(meta, sd, inputs)
    monkeypatch.undo()
    assert not torch.allclose(wrong["prompt_embeds"], expected["prompt_embeds"], rtol=RTOL, atol=ATOL)
    assert not torch.allclose(wrong["pooled_prompt_embeds"], expected["pooled_prompt_embeds"], rtol=RTOL, atol=ATOL)
    right = golden_detok_resampler(meta, sd, inputs)
    assert torch.allclose(right["prompt_embeds"], expected["prompt_embeds"], rtol=RTOL, atol=ATOL)


def test_batch_items_do_not_interact(fixture):
    meta, sd, inputs, expected = fixture
    single = golden_detok_resampler(meta, sd, {"x": inputs["x"][1:2]})
    assert torch.allclose(single["prompt_embeds"][0], expected["prompt_embeds"][1], rtol=RTOL, atol=ATOL)
    assert torch.allclose(single["pooled_prompt_embeds"][0], expected["pooled_prompt_embeds"][1], rtol=RTOL, atol=ATOL)


def test_official_keys_and_shapes_equal_manifest(reference):
    manifest = json.loads((reference / "manifests" / "manifest_detok_resampler.json").read_text())
    with torch.device("meta"):
        model = ResamplerXLV2(DetokenizerResamplerConfig())
    ours = {f"resampler.{k}": list(v.shape) for k, v in model.state_dict().items()}
    assert len(ours) == 62
    assert ours == {k: list(v) for k, v in manifest.items()}
    assert sum(v.numel() for v in model.state_dict().values()) == 61_245_696


def test_wrong_input_width_is_a_clear_error():
    model = ResamplerXLV2(
        DetokenizerResamplerConfig(
            dim=32, depth=1, dim_head=8, heads=4, num_queries=4, embedding_dim=16, output1_dim=8, output2_dim=8
        )
    )
    with pytest.raises(ValueError, match=r"expected features of shape \(B, T, 16\), found \(1, 5, 12\)"):
        model(torch.randn(1, 5, 12))
    prompt, pooled = model(torch.randn(3, 5, 16))
    assert prompt.shape == (3, 4, 16) and pooled.shape == (3, 8)
