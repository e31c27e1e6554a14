"""bench/gpu_george.py without a GPU: its plan (weights from the official manifests, one run per storage and VRAM
cap, the George workflow as it is queued) and its probe. The GPU run itself is not tested here (docs/models.md
"Memory per card" says it was not run)."""

from __future__ import annotations

import json

from bench import gpu_george as gg
from seedstory_core import quant


def test_weight_plan_matches_the_official_sizes(reference):
    plan = gg.weight_plan()
    # docs/models.md "Sizes and memory" (from the manifests); LLaMA-2-7B with its 32000-row vocabulary
    assert plan["vit"]["params"] == 1_935_610_624 and plan["vit"]["tensors"] == 594
    assert plan["agent"]["params"] == 438_788_096 and plan["agent"]["tensors"] == 598
    assert plan["detokenizer"]["params"] == 61_245_696 + 545_587_200
    assert plan["llm"]["params"] == 6_738_417_664  # 6.74 B: LLaMA-2-7B without the 66 added rows
    names = gg.llama_shapes()
    assert names["model.embed_tokens.weight"] == [32000, 4096] and names["lm_head.weight"] == [32000, 4096]
    assert not any("lora_" in k or "modules_to_save" in k for k in names)


def test_runs_cap_vram_and_queue_the_george_workflow_with_each_storage(reference):
    runs = gg.run_plan(
        ["default", "fp8_e4m3fn"], [24.0, 16.0, 12.0], 80.0, story_steps=2, diffusion_steps=20, size=1024
    )
    assert [(r["storage"], r["cap_gb"]) for r in runs] == [
        (s, c) for s in ("default", "fp8_e4m3fn") for c in (24.0, 16.0, 12.0)
    ]
    assert [r["args"] for r in runs[:3]] == [
        ["--reserve-vram", "56.0"],
        ["--reserve-vram", "64.0"],
        ["--reserve-vram", "68.0"],
    ]
    assert runs[2]["env"]["SEEDSTORY_VRAM_CAP_GB"] == "12.0"
    offered = {  # the loaders' weight_dtype choices
        "SeedStoryVisualTokenizerLoader": quant.WEIGHT_STORAGES,
        "SeedStoryAgentLoader": quant.WEIGHT_STORAGES,
        "SeedStoryDetokenizerLoader": quant.UNET_WEIGHT_STORAGES,
    }
    for run in runs:
        prompt = run["prompt"]
        loaders = [n for n in prompt.values() if n["class_type"] in offered]
        assert len(loaders) == 3
        for node in loaders:
            assert node["inputs"]["weight_dtype"] == run["storage"] in offered[node["class_type"]]
        gen = next(n for n in prompt.values() if n["class_type"] == "SeedStoryGenerateStory")["inputs"]
        assert (gen["story_steps"], gen["diffusion_steps"], gen["width"], gen["height"]) == (2, 20, 1024, 1024)
    agent = next(n for n in runs[0]["prompt"].values() if n["class_type"] == "SeedStoryAgentLoader")["inputs"]
    assert agent["agent_name"] == "george_sft_st/model.safetensors"  # what the converter writes (one shard)


def test_dry_run_prints_the_plan_and_the_probe_compiles(reference, capsys):
    assert gg.main(["--dry-run", "--caps", "24,12"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert len(plan["runs"]) == 4 and len(plan["prompts"]) == 4 and set(plan["weights"]) >= {"vit", "agent", "llm"}
    compile(gg.PROBE_INIT, "probe", "exec")
    compile(gg.PROBE_PRESTARTUP, "prestartup", "exec")
