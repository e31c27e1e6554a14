"""The golden parity CLI (`python -m seedstory_core.golden`) and the ViT file loader."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from seedstory_core.bundle import load_visual_tokenizer
from seedstory_core.checkpoints import CheckpointMismatchError, UnsafeCheckpointError, WrongCheckpointKindError
from seedstory_core.config import VisualTokenizerConfig
from seedstory_core.golden import find_fixtures
from seedstory_core.visual_tokenizer import QwenVisualTokenizer

REPO = Path(__file__).resolve().parents[2]


def cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "seedstory_core.golden", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def test_check_passes_on_public_set(golden_dir):
    res = cli("check", golden_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith(("ok", "FAIL"))]
    assert lines and all(line.startswith("ok") for line in lines)
    for needle in (
        "vit_public output.features",
        "agent_public output.forward.lm_loss",
        "agent_public output.generate.generate_ids",
        "agent_public output.generate.img_gen_feat",
        "detok_resampler_public output.pooled_prompt_embeds",
        "resampler_in_public output.y",
        "resampler_out_public output.y",
    ):
        assert any(needle in line for line in lines), needle


def strip_outputs(src: Path, dst: Path) -> None:
    """Copy fixtures without any output.* tensor (proves `run` never needs them)."""
    dst.mkdir(parents=True, exist_ok=True)
    for sidecar in src.glob("*.json"):
        shutil.copy(sidecar, dst / sidecar.name)
    for tensors in src.glob("*.safetensors"):
        kept = {k: v for k, v in load_file(str(tensors)).items() if not k.startswith("output.")}
        save_file(kept, str(dst / tensors.name))


def test_run_writes_every_output_without_reading_expected(golden_dir, tmp_path):
    stripped = tmp_path / "fixtures"
    strip_outputs(golden_dir, stripped)
    out = tmp_path / "out"
    res = cli("run", stripped, out)
    assert res.returncode == 0, res.stderr
    for name, _, tensors in find_fixtures(golden_dir):
        expected_keys = {k for k in load_file(str(tensors)) if k.startswith("output.")}
        produced = load_file(str(out / f"{name}.safetensors"))
        assert set(produced) == expected_keys, name


def test_check_fails_on_a_wrong_expected_value(golden_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(golden_dir / f"resampler_in_public{suffix}", bad / f"resampler_in_public{suffix}")
    tensors = load_file(str(bad / "resampler_in_public.safetensors"))
    tensors["output.y"] = tensors["output.y"] + 1e-3
    save_file(tensors, str(bad / "resampler_in_public.safetensors"))
    res = cli("check", bad)
    assert res.returncode == 1 and "FAIL resampler_in_public output.y" in res.stdout


def test_other_sizes_and_seeds(golden_dir, tmp_path):
    """A fixture of another size/seed in the same format runs (here a ViT whose outputs come from a re-seeded
    module): the CLI builds everything from the sidecar, nothing from the public sizes."""
    meta = json.loads((golden_dir / "vit_public.json").read_text())
    meta["constructor_kwargs"].update(image_size=84, width=48, layers=3, heads=3, n_queries=9, output_dim=256)
    meta["file"] = "vit_other.safetensors"
    cfg = VisualTokenizerConfig(image_size=84, patch_size=14, width=48, layers=3, heads=3, n_queries=9, output_dim=256)
    torch.manual_seed(123)
    model = QwenVisualTokenizer(cfg).eval()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, 0, 0.05)
    pixels = torch.randn(3, 3, 84, 84)
    with torch.no_grad():
        outs = model.forward_with_intermediates(pixels)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["input.pixel_values"] = pixels
    tensors.update({f"output.{k}": v.contiguous() for k, v in outs.items()})
    other = tmp_path / "other"
    other.mkdir()
    (other / "vit_other.json").write_text(json.dumps(meta))
    save_file(tensors, str(other / "vit_other.safetensors"))
    res = cli("check", other)
    assert res.returncode == 0, res.stdout + res.stderr


def test_bad_fixture_dir_exit_code(tmp_path):
    assert cli("check", tmp_path / "missing").returncode == 2
    assert cli("run", tmp_path, tmp_path / "o").returncode == 2  # no fixtures


# ------------------------------------------------------------------ ViT loading
def tiny_vit_cfg():
    return VisualTokenizerConfig(image_size=56, patch_size=14, width=32, layers=1, heads=2, n_queries=4, output_dim=128)


def test_vit_loader_roundtrip_and_errors(tmp_path):
    cfg = tiny_vit_cfg()
    model = QwenVisualTokenizer(cfg).eval()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    good = tmp_path / "qwen_vit.safetensors"
    save_file(sd, str(good))
    loaded, report = load_visual_tokenizer(good, cfg)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not report.missing and not report.unexpected
    # trainable-only style file without the frozen table: recomputed
    no_pos = {k: v for k, v in sd.items() if k != "attn_pool.pos_embed"}
    save_file(no_pos, str(tmp_path / "nopos.safetensors"))
    loaded2, report2 = load_visual_tokenizer(tmp_path / "nopos.safetensors", cfg)
    assert report2.missing == ["attn_pool.pos_embed"] and torch.allclose(
        loaded2.attn_pool.pos_embed, model.attn_pool.pos_embed
    )
    # wrong shape
    wrong = dict(sd)
    wrong["proj"] = torch.zeros(64, 64)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"proj: expected shape \(128, 128\), found \(64, 64\)"):
        load_visual_tokenizer(tmp_path / "wrong.safetensors", cfg)
    # wrong model (an agent-like file)
    save_file(
        {"llm.base_model.model.lm_head.weight": torch.zeros(2, 2), "input_resampler.query": torch.zeros(2, 2)},
        str(tmp_path / "agent.safetensors"),
    )
    with pytest.raises(WrongCheckpointKindError, match="looks like a agent checkpoint|looks like an? agent"):
        load_visual_tokenizer(tmp_path / "agent.safetensors", cfg)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    path = tmp_path / "qwen_vit_G.pt"
    torch.save({"conv1.weight": torch.zeros(1), "evil": _Payload()}, str(path))
    with pytest.raises(UnsafeCheckpointError, match="Refused to load"):
        load_visual_tokenizer(path, tiny_vit_cfg())
    assert not (tmp_path / "pwned").exists()
