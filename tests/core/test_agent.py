"""SeedStoryAgent: golden forward parity with the official ContinuousLVLM, and the forward's contracts.

Golden facts: docs/reference.md §10 ("agent forward", "Key naming", "Tolerances"); docs/reference.md §2.2, §2.5, §8.9.
"""

import json

import pytest
import torch

from seedstory_core.agent import SeedStoryAgent, cosine_loss
from seedstory_core.config import AgentConfig
from seedstory_core.golden import (
    GOLDEN_FORWARD_INPUTS,
    agent_config_from_golden_meta,
    golden_agent_forward,
    load_golden_agent,
)
from tests.support.configs import small_config
from tests.support.golden import load_fixture

RTOL, ATOL = 1e-4, 1e-5
GOLDEN_OUTPUTS = (
    "forward.lm_loss",
    "forward.rec_loss",
    "forward.total_loss",
    "forward.recon_image_embeds",
    "forward.intermediate.image_embeds_lm",
    "forward.intermediate.logits",
    "forward.intermediate.last_hidden_state",
)


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def golden(golden_dir):
    return load_fixture(golden_dir, "agent_public")


def forward_kwargs(inputs):
    return {n: inputs[f"forward.{n}"] for n in GOLDEN_FORWARD_INPUTS}


def randomize(agent: SeedStoryAgent, seed: int = 0) -> SeedStoryAgent:
    """Non-trivial weights everywhere (LoRA B non-zero, the two norm copies different), pos_embed untouched."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in agent.named_parameters():
            if name.endswith("pos_embed"):
                continue
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(
                (1.0 + noise)
                if p.dim() == 1 and ("norm" in name or ".ln_" in name) and name.endswith("weight")
                else noise * (3.0 if p.dim() > 1 else 1.0)
            )
    return agent


def make_batch(cfg: AgentConfig, seed: int = 0):
    """Two right-padded samples laid out as the official collate:
    [BOS] cap <img> IMG.. </img> [INST] cap <img> IMG.. </img> [EOS] pad.

    Sample 0: one input image + one target; sample 1: two input images + one target.
    """
    gen = torch.Generator().manual_seed(seed)
    base = cfg.llm.vocab_size - 2 - cfg.image_tokens.num_img_tokens
    boi, eoi = base, base + 1
    imgs = list(range(base + 2, base + 2 + cfg.image_tokens.num_img_tokens))
    n_vit = cfg.output_resampler.num_queries
    hidden = cfg.llm.hidden_size
    rows, cmp_rows, gen_rows, label_rows, cmp_flags, gen_flags = [], [], [], [], [], []
    for n_inputs in (1, 2):
        ids, cmp, genm, labels = [1], [False], [False], [-100]
        for i in range(n_inputs + 1):
            target = i == n_inputs
            words = (torch.randint(13, base, (3,), generator=gen)).tolist()
            seg = ([10, 11] if i else []) + words + [boi] + imgs + [eoi]
            ids += seg
            cmp += [False] * (len(seg) - len(imgs) - 1) + [not target] * len(imgs) + [False]
            genm += [False] * (len(seg) - len(imgs) - 1) + [target] * len(imgs) + [False]
            if target:
                labels += [t for t in seg[: -len(imgs) - 1]] + [-100] * (len(imgs) + 1)
            else:
                labels += [-100] * len(seg)
            gen_flags.append(target)
            cmp_flags.append(not target)
        ids.append(2)
        cmp.append(False)
        genm.append(False)
        labels.append(2)
        rows.append(ids)
        cmp_rows.append(cmp)
        gen_rows.append(genm)
        label_rows.append(labels)
    length = max(len(r) for r in rows) + 2

    def pad(r, v):
        return r + [v] * (length - len(r))

    attention = [pad([1] * len(r), 0) for r in rows]
    batch = {
        "input_ids": torch.tensor([pad(r, 0) for r in rows]),
        "attention_mask": torch.tensor(attention),
        "labels": torch.tensor([pad(r, -100) for r in label_rows]),
        "image_embeds": torch.randn(len(cmp_flags), n_vit, hidden, generator=gen),
        "embeds_gen_mask": torch.tensor(gen_flags),
        "embeds_cmp_mask": torch.tensor(cmp_flags),
        "ids_gen_mask": torch.tensor([pad(r, False) for r in gen_rows]),
        "ids_cmp_mask": torch.tensor([pad(r, False) for r in cmp_rows]),
    }
    return batch


# ---------------------------------------------------------------------------------------------------- golden parity
def test_golden_forward_parity(golden):
    meta, sd, inputs, expected = golden
    out = golden_agent_forward(meta, sd, inputs)
    assert set(out) == set(GOLDEN_OUTPUTS)
    for name in GOLDEN_OUTPUTS:
        got, exp = out[name], expected[name]
        assert got.shape == exp.shape, name
        # the official attention ignores padding, and so do we: pads are compared too
        assert torch.allclose(got, exp, rtol=RTOL, atol=ATOL), (
            f"{name}: max |diff| {(got - exp).abs().max().item():.3g}"
        )
    # the recorded numbers, as a sanity anchor
    assert abs(out["forward.lm_loss"].item() - meta["numerics"]["lm_loss"]) < 1e-5


def test_golden_runner_accepts_constructor_kwargs_layout(golden):
    meta, sd, inputs, expected = golden
    wrapped = {
        "constructor_kwargs": {
            k: meta[k] for k in ("llama_config", "lora_config", "input_resampler", "output_resampler")
        }
    }
    fixture_style = dict(sd)
    fixture_style.update({"input." + k: v for k, v in inputs.items()})  # fixture keys are ignored by the loader
    prefixed = {"input." + k: v for k, v in inputs.items()}
    out = golden_agent_forward(wrapped, fixture_style, prefixed)
    assert torch.allclose(out["forward.total_loss"], expected["forward.total_loss"], rtol=RTOL, atol=ATOL)


def test_golden_config_from_sidecar(golden):
    meta = golden[0]
    cfg = agent_config_from_golden_meta(meta)
    assert cfg.llm.vocab_size == meta["llama_config"]["vocab_size"]
    assert cfg.lora.lora_dropout == meta["lora_config"]["lora_dropout"]
    assert cfg.image_tokens.num_img_tokens == meta["input_resampler"]["grid_size"] ** 2
    bad = json.loads(json.dumps(meta))
    bad["llama_config"]["tie_word_embeddings"] = True
    with pytest.raises(ValueError, match="untied"):
        agent_config_from_golden_meta(bad)


def test_wrong_norm_copy_changes_lm_loss(golden):
    """Using original_module instead of modules_to_save.default must be detected by the golden losses."""
    meta, sd, inputs, expected = golden
    swapped = dict(sd)
    for key in sd:
        if key.endswith(".modules_to_save.default.weight"):
            swapped[key] = sd[key.replace(".modules_to_save.default.", ".original_module.")]
    out = golden_agent_forward(meta, swapped, inputs)
    assert not torch.allclose(out["forward.lm_loss"], expected["forward.lm_loss"], rtol=RTOL, atol=ATOL)


def test_disabled_adapters_change_lm_loss_as_recorded(golden):
    """Turning LoRA off must change lm_loss, and reproduce the fixture's recorded ``adapter_effect``.

    Finding: the recorded 6.422 is peft 0.4.0's ``disable_adapter()``, which only switches the LoRA layers off;
    its ``ModulesToSaveWrapper`` keeps using the ``modules_to_save`` norm copies (despite the README label
    "LoRA + modules_to_save disabled"). peft 0.21's ``disable_adapter()`` also falls back to ``original_module``,
    which gives a third value. Both must differ from the adapted loss.
    """
    meta, sd, inputs, expected = golden
    effect = next(v for k, v in meta["numerics"].items() if k.startswith("adapter_effect"))
    lora_off = {k: (torch.zeros_like(v) if ".lora_B." in k else v) for k, v in sd.items()}
    out = golden_agent_forward(meta, lora_off, inputs)
    assert not torch.allclose(out["forward.lm_loss"], expected["forward.lm_loss"], rtol=RTOL, atol=ATOL)
    assert abs(out["forward.lm_loss"].item() - effect["lm_loss_with_adapters_disabled"]) < 1e-4
    assert abs(out["forward.rec_loss"].item() - effect["rec_loss_with_adapters_disabled"]) < 1e-4

    agent = load_golden_agent(meta, sd)
    with torch.no_grad(), agent.llm.disable_adapter():
        disabled = agent(**forward_kwargs(inputs))
    assert not torch.allclose(disabled["lm_loss"], expected["forward.lm_loss"], rtol=RTOL, atol=ATOL)
    assert not torch.allclose(disabled["lm_loss"], out["forward.lm_loss"], rtol=RTOL, atol=ATOL)
    with torch.no_grad():  # the context manager restores the adapters
        again = agent(**forward_kwargs(inputs))
    assert torch.allclose(again["lm_loss"], expected["forward.lm_loss"], rtol=RTOL, atol=ATOL)


def test_golden_train_mode_equals_eval(golden):
    """Dropout is 0 in the fixture, so train mode must give the same loss (official: recorded 0.0 difference)."""
    meta, sd, inputs, expected = golden
    agent = load_golden_agent(meta, sd).train()
    out = agent(**forward_kwargs(inputs))
    assert torch.allclose(out["total_loss"], expected["forward.total_loss"], rtol=RTOL, atol=ATOL)
    out["total_loss"].backward()
    assert agent.lm_head.weight.grad is not None and agent.decoder.embed_tokens.weight.grad is not None


# ---------------------------------------------------------------------------------------------------- contracts
def test_left_padding_raises(golden):
    meta, sd, inputs, _ = golden
    agent = load_golden_agent(meta, sd)
    kw = forward_kwargs(inputs)
    kw["attention_mask"] = kw["attention_mask"].flip(1)  # pads first
    with pytest.raises(ValueError, match="right"):
        agent(**kw)


def test_attention_mask_is_ignored_like_official(golden):
    """Changing the (right) padding mask does not change any output: the official attention is causal-only."""
    meta, sd, inputs, _ = golden
    agent = load_golden_agent(meta, sd)
    kw = forward_kwargs(inputs)
    with torch.no_grad():
        a = agent(**kw)
        kw["attention_mask"] = torch.ones_like(kw["attention_mask"])
        b = agent(**kw)
    assert torch.equal(a["logits"], b["logits"])


def test_embed_inputs_places_features_and_checks_counts():
    cfg = small_config()
    agent = randomize(SeedStoryAgent.build(cfg)).eval()
    batch = make_batch(cfg)
    feats = batch["image_embeds"][batch["embeds_cmp_mask"]]
    mask = batch["ids_cmp_mask"]
    with torch.no_grad():
        emb = agent.embed_inputs(batch["input_ids"], feats, mask)
        word = agent.embed_tokens(batch["input_ids"])
        lm = agent.input_resampler(feats)
    assert emb.shape == (2, batch["input_ids"].shape[1], cfg.llm.hidden_size)
    assert torch.equal(emb[~mask], word[~mask])
    assert torch.allclose(emb[mask], lm.reshape(-1, cfg.llm.hidden_size))
    with pytest.raises(ValueError, match="IMG positions"):
        agent.embed_inputs(batch["input_ids"], feats[:-1], mask)
    with pytest.raises(ValueError, match="ids_cmp_mask"):
        agent.embed_inputs(batch["input_ids"], feats, None)
    with pytest.raises(ValueError, match="no image_features"):
        agent.embed_inputs(batch["input_ids"], None, mask)


def test_forward_matches_manual_computation():
    """Independent recomputation of docs/reference.md §2.5 on a random small agent (CE over labels, cos loss at gen
    positions)."""
    cfg = small_config()
    agent = randomize(SeedStoryAgent.build(cfg), seed=3).eval()
    b = make_batch(cfg, seed=1)
    with torch.no_grad():
        out = agent(**b)
        emb = agent.embed_inputs(b["input_ids"], b["image_embeds"][b["embeds_cmp_mask"]], b["ids_cmp_mask"])
        logits = agent.llm(inputs_embeds=emb).logits
        hidden = agent.decoder(inputs_embeds=emb).last_hidden_state
        ce = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1)
        )
        tgt = b["image_embeds"][b["embeds_gen_mask"]]
        rec = agent.output_resampler(hidden[b["ids_gen_mask"]].view(tgt.shape[0], -1, cfg.llm.hidden_size))
        cos = 1 - torch.nn.functional.cosine_similarity(rec, tgt, dim=-1)
    assert torch.allclose(out["logits"], logits, atol=1e-5)
    assert torch.allclose(out["lm_loss"], ce, atol=1e-5)
    assert torch.allclose(out["rec_loss"], cos.mean(), atol=1e-5)
    assert torch.allclose(out["total_loss"], ce + cos.mean(), atol=1e-5)
    assert out["recon_image_embeds"].shape == tgt.shape


def test_gen_mask_count_mismatch_raises():
    cfg = small_config()
    agent = SeedStoryAgent.build(cfg).eval()
    b = make_batch(cfg)
    b["ids_gen_mask"] = b["ids_gen_mask"].clone()
    b["ids_gen_mask"][0, 0] = True
    with pytest.raises(ValueError, match="ids_gen_mask marks"):
        agent(**b)


def test_text_only_batch_keeps_graph_connected():
    cfg = small_config()
    agent = randomize(SeedStoryAgent.build(cfg)).train()
    ids = torch.randint(13, 40, (2, 12))
    out = agent(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    assert out["rec_loss"].item() == 0.0 and out["recon_image_embeds"] is None
    out["total_loss"].backward()
    # the official dummy x0 passes give both resamplers a (zero) gradient
    assert agent.input_resampler.query.grad is not None and agent.output_resampler.query.grad is not None
    assert float(agent.output_resampler.query.grad.abs().sum()) == 0.0


def test_trainable_parameters_follow_official_recipe():
    cfg = small_config()
    agent = SeedStoryAgent.build(cfg)
    trainable = {n for n, p in agent.named_parameters() if p.requires_grad}
    frozen = {n for n, p in agent.named_parameters() if not p.requires_grad}
    assert "llm.base_model.model.model.embed_tokens.weight" in trainable
    assert "llm.base_model.model.lm_head.weight" in trainable
    assert all(".base_layer." in n or ".original_module." in n or n.endswith("pos_embed") for n in frozen)
    n_layers = cfg.llm.num_hidden_layers
    assert sum(".modules_to_save.default." in n for n in trainable) == 2 * n_layers + 1  # every RMSNorm incl. final
    assert sum(".lora_A." in n for n in trainable) == 7 * n_layers
    assert agent.decoder.embed_tokens.padding_idx is None
    assert agent.decoder.config._attn_implementation == "sdpa"


def test_dtype_cast_keeps_rope_float32():
    cfg = small_config()
    agent = SeedStoryAgent.build(cfg, dtype=torch.bfloat16)
    assert agent.lm_head.weight.dtype == torch.bfloat16
    assert agent.rotary_emb.inv_freq.dtype == torch.float32
    agent.to(torch.float16)
    assert agent.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.equal(agent.rotary_emb.inv_freq, SeedStoryAgent.build(cfg).rotary_emb.inv_freq)


def test_cosine_loss_shape_check():
    with pytest.raises(ValueError, match="grid_size"):
        cosine_loss(torch.ones(1, 4, 8), torch.ones(1, 16, 8))
    assert cosine_loss(torch.ones(1, 4, 8), torch.ones(1, 4, 8)).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------- merged inference decoder
def _decode_hidden(decoder, embeds):
    return decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state


def test_inference_decoder_merges_lora_to_float_tolerance():
    agent = randomize(SeedStoryAgent.build(small_config()), seed=3).eval()
    for name, p in agent.named_parameters():  # non-zero LoRA B and norm copies so every source matters
        if "lora_B" in name or "modules_to_save" in name:
            with torch.no_grad():
                p.add_(torch.randn_like(p) * 0.05)
    embeds = torch.randn(1, 7, agent.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _decode_hidden(agent.decoder, embeds)
        merged = agent.inference_decoder()
        out = _decode_hidden(merged, embeds)
    assert merged is not agent.decoder
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # with the adapters turned off the two paths still agree (the merged copy follows peft's adapter state)
    with agent.llm.disable_adapter(), torch.no_grad():
        off_ref = _decode_hidden(agent.decoder, embeds)
        off = _decode_hidden(agent.inference_decoder(), embeds)
    torch.testing.assert_close(off, off_ref, rtol=1e-4, atol=1e-5)
    assert (off_ref - ref).abs().max() > 1e-3  # LoRA really contributes
    assert agent.inference_decoder(merge_lora=False) is agent.decoder
    # shared, not copied: embeddings, final norm (the active modules_to_save copy), RoPE
    assert merged.embed_tokens is agent.decoder.embed_tokens and merged.rotary_emb is agent.rotary_emb
    assert merged.norm.weight is agent.decoder.norm.modules_to_save["default"].weight
    extra = sum(p.numel() * p.element_size() for n, p in merged.named_parameters() if "proj" in n)
    assert extra == agent.lora_merge_bytes() > 0


def test_inference_decoder_leaves_training_intact_and_rebuilds_after_updates():
    agent = randomize(SeedStoryAgent.build(small_config()), seed=4)
    agent.train()
    flags = {n: p.requires_grad for n, p in agent.named_parameters()}
    state = {k: v.clone() for k, v in agent.state_dict().items()}
    first = agent.inference_decoder()
    assert agent.inference_decoder() is first  # cached while nothing changed
    assert {n: p.requires_grad for n, p in agent.named_parameters()} == flags
    assert all(torch.equal(v, agent.state_dict()[k]) for k, v in state.items())
    assert agent.training and agent.decoder.norm.training and "_merged_decoder" not in agent.state_dict()
    # LoRA training still works on the agent (gradients reach lora_A/B), and the merged copy follows the update
    cfg = agent.config
    batch = make_batch(cfg, seed=1)
    opt = torch.optim.SGD([p for p in agent.parameters() if p.requires_grad], lr=0.5)
    loss = agent(**batch)["total_loss"]
    loss.backward()
    lora_grads = [p.grad for n, p in agent.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    opt.step()
    second = agent.inference_decoder()
    assert second is not first
    agent.eval()
    embeds = torch.randn(1, 5, agent.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            _decode_hidden(second, embeds), _decode_hidden(agent.decoder, embeds), rtol=1e-4, atol=1e-5
        )


def test_inference_decoder_works_on_an_agent_built_under_inference_mode():
    """ComfyUI loads models and runs nodes under torch.inference_mode: inference tensors have no version counter."""
    with torch.inference_mode():
        agent = randomize(SeedStoryAgent.build(small_config()), seed=5).eval()
        embeds = torch.randn(1, 4, agent.hidden_size, generator=torch.Generator().manual_seed(2))
        merged = agent.inference_decoder()
        assert agent.inference_decoder() is merged  # cached: the fingerprint is stable for inference tensors
        torch.testing.assert_close(
            _decode_hidden(merged, embeds), _decode_hidden(agent.decoder, embeds), rtol=1e-4, atol=1e-5
        )
