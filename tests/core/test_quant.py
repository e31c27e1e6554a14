"""Weight storage (seedstory_core.quant): fp8 / int8 layers, the quantized agent's merged decoder, and the tiny
model's story under fp8 and int8 within the tolerance measured in docs/models.md ("Weight storage")."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seedstory_core import quant
from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.story import StoryEngine
from seedstory_core.tiny import random_tiny_bundle

TINY = Path(__file__).resolve().parents[2] / "models" / "seedstory-tiny"

#: The documented tolerance (docs/models.md "Weight storage"): the tiny model's 4-frame story drawn from the same
#: sentences (visualization mode) keeps each frame's regressed features within this cosine of the default storage's
#: (measured on the current tiny agent, stage 2g with context targets: fp8 >= 0.99944, int8 >= 0.99991) ...
STORY_FEATURE_COSINE = {"fp8_e4m3fn": 0.999, "int8": 0.9999}
#: ... and free-running, at least this many of its 4 sentences are the default storage's (measured: 4 with both on the
#: current agent; fp8 kept 1 on the agent before the context targets, whose greedy choice it flipped at the second
#: sentence, docs/models.md, so fp8's tolerance stays at the first sentence)
STORY_SAME_SENTENCES = {"fp8_e4m3fn": 1, "int8": 4}


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64)).eval()


@pytest.mark.parametrize("storage,max_err", [("fp8_e4m3fn", 0.05), ("int8", 0.01)])
def test_stored_layers_are_smaller_and_close(storage, max_err):
    ref = _mlp()
    q = copy.deepcopy(ref)
    assert quant.quantize_module(q, storage) == 2
    assert all(isinstance(m, quant.CastLinear) and quant.storage_of(m) == storage for m in (q[0], q[2]))
    assert quant.module_bytes(q) < 0.4 * quant.module_bytes(ref)
    x = torch.randn(7, 64)
    with torch.no_grad():
        y, r = q(x), ref(x)
    assert (y - r).abs().max() < max_err
    assert F.cosine_similarity(y.flatten(), r.flatten(), dim=0) > 0.999
    # bf16 compute over the same stored weights
    assert q(x.bfloat16()).dtype == torch.bfloat16


def test_fp8_per_channel_scale_keeps_small_weights():
    """A plain fp8 cast flushes LLaMA-sized weights (|w| ~ 1e-3) towards zero; the per-row scale keeps them."""
    lin = nn.Linear(256, 8, bias=False)
    with torch.no_grad():
        lin.weight.normal_(0, 1e-3)
    w = lin.weight.detach().clone()
    quant.quantize_module(lin, "fp8_e4m3fn")
    rel = (quant.dequantized_weight(lin, torch.float32) - w).norm() / w.norm()
    plain = (w.to(torch.float8_e4m3fn).float() - w).norm() / w.norm()
    assert rel < 0.05 < plain


def test_unknown_storage_and_int8_convs_are_refused():
    with pytest.raises(ValueError, match="weight storage must be one of"):
        quant.quantize_module(_mlp(), "nf4")
    with pytest.raises(ValueError, match="linear layers only"):
        quant.quantize_module(nn.Sequential(nn.Conv2d(3, 4, 3)), "int8", convs=True)


def test_cast_layers_run_from_another_device_dtype():
    """What ComfyUI's partial loading relies on: a cast layer computes in its input's dtype whatever its own."""
    lin = _mlp()[0]
    x = torch.randn(3, 64)
    ref = lin(x)
    quant.make_castable(lin)
    lin.to(torch.bfloat16)
    assert lin(x).dtype == torch.float32 and (lin(x) - ref).abs().max() < 0.05


@pytest.mark.parametrize("storage", ["fp8_e4m3fn", "int8"])
def test_quantized_agent_merged_decoder_matches_its_peft_path(storage):
    agent = random_tiny_bundle(0).agent
    with torch.no_grad():  # non-zero LoRA B, so the merge matters
        for name, p in agent.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    n = agent.quantize_weights(storage)
    assert n == 7 * agent.config.llm.num_hidden_layers and agent.weight_storage == storage
    embeds = torch.randn(1, 9, agent.hidden_size)
    with torch.no_grad():
        peft = agent.decoder(inputs_embeds=embeds).last_hidden_state
        merged_decoder = agent.inference_decoder()
        merged = merged_decoder(inputs_embeds=embeds).last_hidden_state
    stored = [m for m in merged_decoder.layers.modules() if quant.storage_of(m) == storage]
    assert len(stored) == n  # the merged copy is stored the same way (no full-precision copy of the weights)
    assert F.cosine_similarity(peft.flatten(), merged.flatten(), dim=0) > 0.999


def _tiny_bundle():
    if (TINY / "seedstory_config.json").is_file():
        return SeedStoryBundle.load(TINY), (TINY / "demo_start.txt").read_text().strip()
    return random_tiny_bundle(0), "Max and Zoe play in the park."


def _story(bundle, agent, vit, text, sentences=None):
    """4 frames from the start text: free-running (``sentences`` None) or drawing the given sentences."""
    engine = StoryEngine(agent, bundle.tokenizer, vit)
    start = engine.start(text, features=vit(torch.zeros(1, 3, 112, 112)))
    mode = "generation" if sentences is None else "visualization"
    _, results = engine.run(start, 4, texts=sentences, mode=mode)
    return [r.sentence for r in results], torch.cat([r.features.float().flatten(1) for r in results])


@pytest.fixture(scope="module")
def tiny_reference():
    bundle, text = _tiny_bundle()
    with torch.no_grad():
        return bundle, text, _story(bundle, bundle.agent, bundle.visual_tokenizer, text)


@pytest.mark.parametrize("storage", ["fp8_e4m3fn", "int8"])
def test_tiny_story_under_stored_weights_stays_within_the_documented_tolerance(storage, tiny_reference):
    bundle, text, (ref_text, ref_feats) = tiny_reference
    with torch.no_grad():
        agent, vit = copy.deepcopy(bundle.agent), copy.deepcopy(bundle.visual_tokenizer)
        agent.quantize_weights(storage)
        quant.store_weights(vit, storage)
        text_q, _ = _story(bundle, agent, vit, text)
        _, feats_q = _story(bundle, agent, vit, text, sentences=ref_text)
    assert sum(a == b for a, b in zip(text_q, ref_text)) >= STORY_SAME_SENTENCES[storage], (text_q, ref_text)
    assert text_q[0] == ref_text[0]
    cos = F.cosine_similarity(feats_q, ref_feats, dim=1)
    assert cos.min() >= STORY_FEATURE_COSINE[storage], cos.tolist()


def test_tiny_unet_in_fp8_renders_close_to_default(tiny_reference):
    bundle, _text, (_sentences, feats) = tiny_reference
    features = feats[:1].view(1, -1, bundle.detokenizer.config.resampler.embedding_dim)
    detok = copy.deepcopy(bundle.detokenizer)
    assert quant.store_weights(detok, "fp8_e4m3fn") > 0
    kw = dict(num_inference_steps=4, seed=0, output="tensor")
    with torch.no_grad():
        ref = bundle.detokenizer.generate(features, bundle.uncond_features, **kw)
        got = detok.generate(features, bundle.uncond_features, **kw)
    assert (got.float() - ref.float()).abs().mean() < 0.05
