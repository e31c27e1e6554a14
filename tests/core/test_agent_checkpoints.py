"""Agent checkpoints: official key compatibility (docs/reference.md §2.4, docs/reference.md §10 "Key naming"),
trainable-only files + base Llama folder, safe loading, the convert CLI, and peak-RAM of meta construction."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from seedstory_core.agent import SeedStoryAgent
from seedstory_core.checkpoints import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    WrongCheckpointKindError,
    read_state_dict,
)
from seedstory_core.config import LlamaSettings, official_config
from seedstory_core.convert import main as convert_main, parse_size
from seedstory_core.official_agent import AGENT_KEY_RULES, official_to_ours_key_map, ours_to_official_key
from tests.support.configs import small_config

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


# ---------------------------------------------------------------------------------------------------- helpers
def random_agent(cfg, seed=0) -> SeedStoryAgent:
    agent = SeedStoryAgent.build(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in agent.named_parameters():
            if name.endswith("pos_embed"):
                continue
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(1.0 + noise if (p.dim() == 1 and name.endswith("weight")) else noise * 3)
    return agent.eval()


def batch_for(cfg, seed=0):
    """[BOS] w w <img> IMG.. </img> [INST] w w <img> IMG.. </img> [EOS]: one input image, one target."""
    gen = torch.Generator().manual_seed(seed)
    base = cfg.llm.vocab_size - 2 - cfg.image_tokens.num_img_tokens
    n = cfg.image_tokens.num_img_tokens
    img = list(range(base + 2, base + 2 + n))
    ids = [1, 20, 21, base] + img + [base + 1, 10, 11, 22, base] + img + [base + 1, 2]
    cmp = [False] * 4 + [True] * n + [False] * 5 + [False] * n + [False] * 2
    gm = [False] * 4 + [False] * n + [False] * 5 + [True] * n + [False] * 2
    labels = [-100] * (n + 5) + [10, 11, 22, base] + [-100] * (n + 1) + [2]
    return {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        "labels": torch.tensor([labels]),
        "image_embeds": torch.randn(2, cfg.output_resampler.num_queries, cfg.llm.hidden_size, generator=gen),
        "embeds_cmp_mask": torch.tensor([True, False]),
        "embeds_gen_mask": torch.tensor([False, True]),
        "ids_cmp_mask": torch.tensor([cmp]),
        "ids_gen_mask": torch.tensor([gm]),
    }


def outputs(agent, batch):
    with torch.no_grad():
        out = agent(**batch)
    return {k: out[k] for k in ("lm_loss", "rec_loss", "logits", "recon_image_embeds")}


def assert_same(a, b):
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), f"{k}: {(a[k] - b[k]).abs().max()}"


def save_base_llama(agent: SeedStoryAgent, folder: Path, base_vocab: int, max_shard_size="10GB") -> Path:
    """A Llama-2-7b-hf-style folder (transformers save_pretrained, safetensors) holding the agent's frozen base:
    linear weights, the ``original_module`` norm copies (the base norms, as after official wrapping) and the
    first ``base_vocab`` rows of embed_tokens / lm_head."""
    cfg = agent.config.llm
    lc = LlamaSettings(**{**cfg.to_dict(), "vocab_size": base_vocab}).to_transformers()
    llama = LlamaForCausalLM(lc)
    sd = {}
    for key, value in agent.state_dict().items():
        if not key.startswith("llm.base_model.model.") or ".lora_" in key or ".modules_to_save." in key:
            continue
        k = key[len("llm.base_model.model.") :].replace(".base_layer.", ".").replace(".original_module.", ".")
        if k in ("model.embed_tokens.weight", "lm_head.weight"):
            value = value[:base_vocab]
        sd[k] = value.clone()
    missing, unexpected = llama.load_state_dict(sd, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    llama.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    return folder


# ---------------------------------------------------------------------------------------------------- manifests
def test_full_size_meta_keys_equal_official_manifest(reference):
    manifest = json.loads((reference / "manifests" / "manifest_agent.json").read_text())
    trainable_manifest = json.loads((reference / "manifests" / "manifest_agent_trainable.json").read_text())
    agent = SeedStoryAgent.build(official_config().agent, meta=True)
    assert all(p.is_meta for p in agent.parameters())
    sd = agent.official_state_dict()
    assert len(sd) == len(manifest) == 856
    assert {k: list(v.shape) for k, v in sd.items()} == manifest
    trainable_sd = agent.official_state_dict(trainable_only=True)
    expected = dict(trainable_manifest["trainable_params"], **trainable_manifest["persistent_buffers"])
    assert {k: list(v.shape) for k, v in trainable_sd.items()} == expected
    assert sorted(agent.official_trainable_keys()) == sorted(trainable_manifest["trainable_params"])
    # our own requires_grad set = official minus the never-used original_module copies (peft >= 0.14 freezes them)
    ours = {ours_to_official_key(n) for n, p in agent.named_parameters() if p.requires_grad}
    assert ours == {k for k in trainable_manifest["trainable_params"] if ".original_module." not in k}
    assert (
        sum(
            p.numel()
            for n, p in agent.named_parameters()
            if ours_to_official_key(n) in trainable_manifest["trainable_params"]
        )
        == 438_788_096
    )


def test_key_rules_map_official_names(golden_dir):
    keys = json.loads((golden_dir / "agent_public.json").read_text())["state_dict"].keys()
    mapping = official_to_ours_key_map(keys)
    assert (
        mapping["llm.base_model.model.model.layers.0.self_attn.q_proj.weight"]
        == "llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    )
    assert (
        mapping["llm.base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight"]
        == "llm.base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight"
    )
    assert (
        mapping["llm.base_model.model.model.layers.1.self_attn.rotary_emb.inv_freq"]
        == "llm.base_model.model.model.rotary_emb.inv_freq"
    )
    assert len(AGENT_KEY_RULES) == 2


# ------------------------------------------------------------------------------------------------ trainable-only + base
@pytest.mark.parametrize("shard", ["10GB", "40KB"])
def test_trainable_only_file_plus_base_llama_reproduces_model(tmp_path, shard):
    cfg = small_config()
    full = random_agent(cfg, seed=1)
    batch = batch_for(cfg)
    ref = outputs(full, batch)
    trainable = {k: v.clone() for k, v in full.official_state_dict(trainable_only=True).items()}
    assert not any(k.endswith("pos_embed") or k.endswith("q_proj.weight") for k in trainable)
    save_file(trainable, str(tmp_path / "agent_trainable.safetensors"))
    base_vocab = cfg.llm.vocab_size - 6
    base = save_base_llama(full, tmp_path / "llama", base_vocab, max_shard_size=shard)
    if shard == "40KB":
        assert (base / "model.safetensors.index.json").exists()
    agent, report = SeedStoryAgent.from_pretrained(tmp_path / "agent_trainable.safetensors", cfg, base_llama=base)
    assert_same(outputs(agent, batch), ref)
    assert report.missing == ["input_resampler.pos_embed", "output_resampler.pos_embed"]
    assert len(report.consumed) == cfg.llm.num_hidden_layers
    assert any("superseded" in n for n in report.notes)  # base embed/lm_head rows ignored: the agent file has full rows
    assert not any(p.is_meta for p in agent.parameters())


def test_missing_base_or_agent_tensors_name_the_providing_file(tmp_path):
    cfg = small_config()
    full = random_agent(cfg)
    trainable = dict(full.official_state_dict(trainable_only=True))
    with pytest.raises(CheckpointMismatchError, match="Llama-2-7b-hf"):
        SeedStoryAgent.build(cfg, meta=True).load_official_state_dict(trainable, source="agent.bin")
    no_lora = {k: v for k, v in trainable.items() if "layers.1.mlp.up_proj.lora_B" not in k}
    with pytest.raises(CheckpointMismatchError, match=r"agent.bin.*up_proj\.lora_B.*SEED-Story agent checkpoint"):
        SeedStoryAgent.build(cfg, meta=True).load_official_state_dict(no_lora, source="agent.bin")
    # embeddings absent from the agent file: the base has only base_vocab rows -> image-token rows are missing
    base = save_base_llama(full, tmp_path / "llama", cfg.llm.vocab_size - 6)
    no_embed = {k: v for k, v in trainable.items() if not k.endswith("embed_tokens.weight")}
    with pytest.raises(CheckpointMismatchError, match="image-token rows"):
        SeedStoryAgent.build(cfg, meta=True).load_official_state_dict(no_embed, source="agent.bin", base_llama=base)


def test_full_official_dict_loads_strictly_into_meta_and_materialised_agents():
    cfg = small_config()
    full = random_agent(cfg, seed=2)
    batch = batch_for(cfg)
    ref = outputs(full, batch)
    sd = {k: v.clone() for k, v in full.official_state_dict().items()}
    for agent in (SeedStoryAgent.build(cfg, meta=True), SeedStoryAgent.build(cfg)):
        report = agent.load_official_state_dict(sd, source="full.bin")
        assert report.missing == [] and report.unexpected == []
        assert_same(outputs(agent.eval(), batch), ref)


def test_wrong_shape_names_file_key_and_shapes():
    cfg = small_config()
    sd = dict(random_agent(cfg).official_state_dict())
    key = "llm.base_model.model.model.layers.0.self_attn.k_proj.lora_A.default.weight"
    sd[key] = torch.zeros(8, cfg.llm.hidden_size)
    with pytest.raises(CheckpointMismatchError) as err:
        SeedStoryAgent.build(cfg, meta=True).load_official_state_dict(sd, source="my_agent.bin")
    msg = str(err.value)
    assert "my_agent.bin" in msg and key in msg and "(4, 64)" in msg and "(8, 64)" in msg


def test_inv_freq_mismatch_raises():
    cfg = small_config()
    sd = dict(random_agent(cfg).official_state_dict())
    key = "llm.base_model.model.model.layers.1.self_attn.rotary_emb.inv_freq"
    sd[key] = sd[key] * 1.001
    with pytest.raises(CheckpointMismatchError, match="RoPE"):
        SeedStoryAgent.build(cfg, meta=True).load_official_state_dict(sd, source="a.bin")


def test_vit_file_is_refused(tmp_path):
    vit_like = {
        "conv1.weight": torch.zeros(4, 3, 14, 14),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(12, 4),
        "attn_pool.query": torch.zeros(4, 4),
        "ln_post.weight": torch.zeros(4),
    }
    save_file(vit_like, str(tmp_path / "qwen_vit_G.safetensors"))
    with pytest.raises(WrongCheckpointKindError, match="visual_tokenizer"):
        SeedStoryAgent.from_pretrained(tmp_path / "qwen_vit_G.safetensors", small_config())
    with pytest.raises(WrongCheckpointKindError):
        SeedStoryAgent.build(small_config(), meta=True).load_official_state_dict(vit_like, source="vit.pt")


def _write_malicious_pickle(path: Path, marker: Path) -> None:
    code = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))
        torch.save({{"llm.base_model.model.lm_head.weight": torch.zeros(2), "payload": Evil()}}, "{path}")
    """)
    subprocess.run([PY, "-c", code], check=True)


def test_malicious_pickle_refused_and_not_executed(tmp_path):
    bad, marker = tmp_path / "pytorch_model.bin", tmp_path / "PWNED"
    _write_malicious_pickle(bad, marker)
    assert bad.exists() and not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        SeedStoryAgent.from_pretrained(bad, small_config())
    assert convert_main(["agent", str(bad), str(tmp_path / "out")]) == 2
    assert not marker.exists(), "the pickle's payload ran"
    assert not (tmp_path / "out" / "key_map.json").exists()


# ---------------------------------------------------------------------------------------------------- save / convert
def test_save_pretrained_round_trip(tmp_path):
    cfg = small_config()
    full = random_agent(cfg, seed=4)
    batch = batch_for(cfg)
    ref = outputs(full, batch)
    full.save_pretrained(tmp_path / "ours", max_shard_size="30KB")
    assert (tmp_path / "ours" / "model.safetensors.index.json").exists()
    loaded, report = SeedStoryAgent.from_pretrained(tmp_path / "ours")  # config from agent_config.json
    assert loaded.config == cfg and report.missing == [] and report.consumed == []
    assert_same(outputs(loaded, batch), ref)
    full.save_pretrained(tmp_path / "official", official_names=True)
    keys = load_file(str(tmp_path / "official" / "model.safetensors")).keys()
    assert "llm.base_model.model.model.layers.0.self_attn.q_proj.weight" in keys
    loaded2, report2 = SeedStoryAgent.from_pretrained(tmp_path / "official", cfg, dtype=torch.bfloat16)
    assert loaded2.lm_head.weight.dtype == torch.bfloat16 and loaded2.rotary_emb.inv_freq.dtype == torch.float32
    assert len(report2.consumed) == cfg.llm.num_hidden_layers


def test_convert_cli_round_trip(tmp_path):
    cfg = small_config()
    full = random_agent(cfg, seed=5)
    batch = batch_for(cfg)
    ref = outputs(full, batch)
    bin_path = tmp_path / "pytorch_model.bin"
    torch.save({k: v.clone() for k, v in full.official_state_dict().items()}, bin_path)
    out_dir = tmp_path / "converted"
    proc = subprocess.run(
        [PY, "-m", "seedstory_core.convert", "agent", str(bin_path), str(out_dir), "--shard-size", "50KB"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    index = json.loads((out_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    key_map = json.loads((out_dir / "key_map.json").read_text())
    assert (
        key_map["source"]["name"] == "pytorch_model.bin" and key_map["source"]["size_bytes"] == bin_path.stat().st_size
    )
    assert len(key_map["source"]["sha256"]) == 64
    assert key_map["mapping"]["llm.base_model.model.model.layers.0.mlp.up_proj.weight"].endswith(
        "up_proj.base_layer.weight"
    )
    assert set(key_map["mapping"]) == set(index["weight_map"])  # official names kept in the files
    agent, report = SeedStoryAgent.from_pretrained(out_dir, cfg)
    assert report.missing == []
    assert_same(outputs(agent, batch), ref)
    # the original .bin loads too (both namings accepted)
    agent_bin, _ = SeedStoryAgent.from_pretrained(bin_path, cfg)
    assert_same(outputs(agent_bin, batch), ref)
    # fp16 conversion keeps inv_freq in float32 and still loads
    assert convert_main(["agent", str(bin_path), str(tmp_path / "fp16"), "--dtype", "fp16"]) == 0
    sd16 = read_state_dict(tmp_path / "fp16")
    assert sd16["llm.base_model.model.lm_head.weight"].dtype == torch.float16
    assert sd16["llm.base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"].dtype == torch.float32
    SeedStoryAgent.from_pretrained(tmp_path / "fp16", cfg)


def test_convert_errors(tmp_path, capsys):
    vit_like = {"conv1.weight": torch.zeros(2), "transformer.resblocks.0.ln_1.weight": torch.zeros(2)}
    torch.save(vit_like, tmp_path / "vit.pt")
    assert convert_main(["agent", str(tmp_path / "vit.pt"), str(tmp_path / "o")]) == 2
    assert "visual_tokenizer" in capsys.readouterr().err
    assert convert_main(["vit", str(tmp_path / "vit.pt"), str(tmp_path / "o")]) == 0
    assert convert_main(["vit", str(tmp_path / "vit.pt"), str(tmp_path / "o")]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert convert_main(["vit", str(tmp_path / "missing.pt"), str(tmp_path / "o2")]) == 2
    assert parse_size("4GB") == 4 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size("500") == 500
    with pytest.raises(ValueError):
        parse_size("four gigs")


# ---------------------------------------------------------------------------------------------------- peak RAM
_RSS_HELPER = """
import resource, sys
def peak_mb():
    try:
        for line in open('/proc/self/status'):
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 / (1024 if sys.platform == 'darwin' else 1)
"""


def _peak_mb(body: str, tmp_path: Path) -> float:
    code = _RSS_HELPER + textwrap.dedent(body) + "\nprint('PEAK_MB', peak_mb())\n"
    proc = subprocess.run(
        [PY, "-c", code], cwd=REPO, capture_output=True, text=True, env=dict(os.environ, TMP_DIR=str(tmp_path))
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return float(proc.stdout.split("PEAK_MB")[-1].split()[0])


def test_peak_ram_of_meta_build_and_tiny_save_load(tmp_path):
    baseline = _peak_mb(
        """
        import torch, transformers, peft
        import seedstory_core.agent
        from transformers import LlamaForCausalLM
    """,
        tmp_path,
    )
    full_meta = _peak_mb(
        """
        import torch
        from seedstory_core.agent import SeedStoryAgent
        from seedstory_core.config import official_config
        agent = SeedStoryAgent.build(official_config().agent, meta=True, dtype=torch.bfloat16)
        sd = agent.official_state_dict()
        assert len(sd) == 856
        n = sum(p.numel() for p in agent.parameters())
        assert n > 6.9e9, n
    """,
        tmp_path,
    )
    tiny = _peak_mb(
        """
        import os, torch
        from seedstory_core.agent import SeedStoryAgent
        from seedstory_core.tiny import tiny_config
        cfg = tiny_config().agent
        agent = SeedStoryAgent.build(cfg)
        agent.save_pretrained(os.path.join(os.environ['TMP_DIR'], 'tiny'))
        del agent
        loaded, report = SeedStoryAgent.from_pretrained(os.path.join(os.environ['TMP_DIR'], 'tiny'))
        assert report.missing == []
    """,
        tmp_path,
    )
    print(
        f"\npeak RSS: python+torch+transformers+peft imports {baseline:.0f} MB; full-size official agent on meta "
        f"(6.9e9 params, would be 13.8 GB in bf16) {full_meta:.0f} MB; tiny preset build+save+load {tiny:.0f} MB"
    )
    assert full_meta < baseline + 600, "the meta build must not allocate the weights"
    assert tiny < baseline + 600
