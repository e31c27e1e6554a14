"""Bad input gets a clear error (what was expected, what was found, what to do) and nothing is lost (issue 16).

* damaged weight files: junk / truncated / empty ``.safetensors``, truncated ``.bin``/``.pt`` (zip and old pickle
  format), a text or HTML file or a Git LFS pointer under a weights name, a file of the other format -- through
  :func:`seedstory_core.checkpoints.read_state_dict`, the base-Llama shard reader and the loader nodes;
* image batches where a node tells one story (Generate Story refuses; Story Start has ``batch_index``);
* the sentence-length limit in tokens (seedstory_core.rules.max_text_tokens) on the opening text, captions and Story
  Step text;
* ``python -m training.tiny_recipe --export`` refuses to replace a folder that is not a previous export.

Node functions run with the stand-ins for ``comfy``/``folder_paths`` of tests/support/comfy_stubs.py
(fixture ``comfy``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.checkpoints import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    read_keys_and_shapes,
    read_state_dict,
)
from seedstory_core.config import official_config
from seedstory_core.official_agent import base_llama_shards, iter_shard_tensors
from seedstory_core.rules import max_text_tokens
from seedstory_core.tiny import random_tiny_bundle, tiny_config
from tests.support.comfy_stubs import NODES, STEP, InputError, run, start_image, tiny, write_component_folders
from training import tiny_recipe

story_nodes = sys.modules[NODES["SeedStoryGenerateStory"].__module__]


# ------------------------------------------------------------------------------------------------ damaged files
def _good(tmp: Path):
    tensors = {"w": torch.arange(4096, dtype=torch.float32).reshape(64, 64), "b": torch.ones(64)}
    save_file(tensors, str(tmp / "good.safetensors"))
    torch.save(tensors, str(tmp / "good.bin"))
    torch.save(tensors, str(tmp / "legacy.pt"), _use_new_zipfile_serialization=False)
    return tensors


def _cut(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


# (file name, how to make it from the good files, regex the message must match)
BAD_FILES = [
    (
        "trunc.safetensors",
        lambda t: _cut(t / "good.safetensors", t / "trunc.safetensors"),
        r"trunc\.safetensors is not a valid safetensors file \(truncated or corrupt: its header describes \d+ bytes "
        r"of data, the file has only \d+;.*Re-download the file",
    ),
    (
        "junk.safetensors",
        lambda t: (t / "junk.safetensors").write_bytes(b"junk " * 50),
        r"junk\.safetensors is not a valid safetensors file \(it is plain text starting 'junk junk.*Expected a "
        r"safetensors file.*Re-download",
    ),
    (
        "binary.safetensors",
        lambda t: (t / "binary.safetensors").write_bytes(bytes(range(256)) * 4),
        r"binary\.safetensors is not a valid safetensors file \(truncated or corrupt: .*Re-download",
    ),
    (
        "empty.safetensors",
        lambda t: (t / "empty.safetensors").write_bytes(b""),
        r"empty\.safetensors is not a valid safetensors file \(truncated or corrupt: .*; 0 bytes\)",
    ),
    (
        "lfs.safetensors",
        lambda t: (t / "lfs.safetensors").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1234\n"
        ),
        r"it is a Git LFS pointer.*git lfs pull",
    ),
    (
        "torch.safetensors",
        lambda t: shutil.copy(t / "good.bin", t / "torch.safetensors"),
        r"it is a PyTorch checkpoint \(torch.save zip/pickle\) with a \.safetensors name.*Rename it to \.bin or \.pt",
    ),
    (
        "trunc.bin",
        lambda t: _cut(t / "good.bin", t / "trunc.bin"),
        r"trunc\.bin is not a valid PyTorch checkpoint: it starts like a torch\.save zip archive but cannot be read "
        r"\(truncated or corrupt: the zip archive's central directory is missing.*Re-download",
    ),
    (
        "trunc_legacy.pt",
        lambda t: _cut(t / "legacy.pt", t / "trunc_legacy.pt", 0.9),
        r"trunc_legacy\.pt is not a valid PyTorch checkpoint: it starts like an old-format torch\.save pickle but "
        r"cannot be read \(truncated or corrupt",
    ),
    (
        "notes.pt",
        lambda t: (t / "notes.pt").write_text("these are my training notes\n" * 10),
        r"notes\.pt is not a PyTorch checkpoint: it is neither a zip archive nor a pickle \(it is plain text starting "
        r"'these are my.*Expected a PyTorch checkpoint written by torch\.save",
    ),
    (
        "page.bin",
        lambda t: (t / "page.bin").write_text("<!DOCTYPE html><html><body>Access denied</body></html>"),
        r"it is an HTML page.*Download the file again",
    ),
    (
        "st.pt",
        lambda t: shutil.copy(t / "good.safetensors", t / "st.pt"),
        r"it is a safetensors file with a PyTorch-pickle extension.*Rename it to \.safetensors",
    ),
    (
        "empty.ckpt",
        lambda t: (t / "empty.ckpt").write_bytes(b""),
        r"empty\.ckpt is empty \(0 bytes\), not a PyTorch checkpoint",
    ),
]


def _header_length_starting_0x80(tmp: Path) -> Path:
    """A real safetensors file whose 8-byte little-endian header length has 0x80 as its first byte (the pickle
    PROTO opcode), cut short in its tensor data."""
    tensors = {"w": torch.arange(4096, dtype=torch.float32).reshape(64, 64)}
    path = tmp / "x80.safetensors"
    for pad in range(512):
        save_file(tensors, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            return _cut(path, tmp / "x80_cut.safetensors", 0.6)
    raise AssertionError("no padding gave a header length starting with 0x80")


BAD_FILES.append(
    (
        "x80_cut.safetensors",
        _header_length_starting_0x80,
        r"x80_cut\.safetensors is not a valid safetensors file \(truncated or corrupt: its header describes \d+ "
        r"bytes of data, the file has only \d+;.*Re-download the file",
    )
)


@pytest.mark.parametrize("name,make,pattern", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_damaged_checkpoint_files_give_clear_errors(tmp_path, name, make, pattern):
    _good(tmp_path)
    make(tmp_path)
    for reader in (read_state_dict, read_keys_and_shapes):
        with pytest.raises(CorruptCheckpointError, match=pattern) as err:
            reader(tmp_path / name)
        message = str(err.value)
        assert "pickle that needs more" not in message  # a damaged file is not called an unsafe pickle
        assert err.value.__cause__ is None  # no raw reader traceback chained under it
        assert err.value.__context__ is None or err.value.__suppress_context__


def test_good_files_still_load_and_unsafe_pickles_are_still_refused(tmp_path):
    tensors = _good(tmp_path)
    for name in ("good.safetensors", "good.bin", "legacy.pt"):
        got = read_state_dict(tmp_path / name)
        assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)

    class Evil:  # a pickle that would call a function on load
        def __reduce__(self):
            return (print, ("this must never run",))

    for legacy in (False, True):
        path = tmp_path / f"evil_{legacy}.pt"
        torch.save({"w": torch.zeros(2), "x": Evil()}, str(path), _use_new_zipfile_serialization=not legacy)
        with pytest.raises(UnsafeCheckpointError, match="weights_only=True"):
            read_state_dict(path)


def test_corrupt_shard_index_and_base_llama_files(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001.safet')
    with pytest.raises(CorruptCheckpointError, match="not a valid shard index.*weight_map"):
        read_state_dict(tmp_path / "model.safetensors.index.json")
    _good(tmp_path)
    _cut(tmp_path / "good.safetensors", tmp_path / "llama.safetensors")
    with pytest.raises(CorruptCheckpointError, match="llama.safetensors is not a valid safetensors file"):
        base_llama_shards(tmp_path / "llama.safetensors")
    with pytest.raises(CorruptCheckpointError, match="llama.safetensors is not a valid safetensors file"):
        list(iter_shard_tensors(tmp_path / "llama.safetensors"))
    _cut(tmp_path / "good.bin", tmp_path / "pytorch_model.bin")
    with pytest.raises(CorruptCheckpointError, match="pytorch_model.bin is not a valid PyTorch checkpoint"):
        base_llama_shards(tmp_path / "pytorch_model.bin")


def test_loader_nodes_report_damaged_files(comfy, tmp_path):
    write_component_folders(comfy.tmp)
    agents = comfy.tmp / "models" / "seed_story" / "agent"
    vits = comfy.tmp / "models" / "seed_story" / "visual_tokenizer"
    _cut(agents / "tiny" / "model.safetensors", agents / "cut.safetensors")
    (vits / "readme.pt").write_text("Put qwen_vit_G.pt here.\n")
    with pytest.raises(
        InputError,
        match=r"SeedStory Agent Loader: could not load the agent: .*cut\.safetensors is not "
        r"a valid safetensors file \(truncated or corrupt: its header describes",
    ):
        run(
            "SeedStoryAgentLoader",
            {
                "agent_name": "cut.safetensors",
                "tokenizer_name": "tiny",
                "base_llm": "none",
                "config": "tiny",
                "precision": "auto",
                "device": "auto",
            },
        )
    with pytest.raises(
        InputError,
        match=r"SeedStory Visual Tokenizer Loader: could not load the visual tokenizer: "
        r".*readme\.pt is not a PyTorch checkpoint: it is neither a zip archive nor a "
        r"pickle \(it is plain text starting 'Put qwen_vit_G",
    ):
        run(
            "SeedStoryVisualTokenizerLoader",
            {"vit_name": "readme.pt", "config": "tiny", "precision": "fp32", "device": "cpu"},
        )


# ------------------------------------------------------------------------------------------------ image batches
GEN = dict(STEP, diffusion_steps=1, guidance_scale=1.0, scheduler="euler", width=0, height=0, same_noise=False)


def test_generate_story_refuses_an_image_batch(comfy):
    """One story per start picture: a batch is refused before any work, naming ImageFromBatch (the state output
    carries one story, so N stories would need N states); a single picture in a batch of 1 runs."""
    agent, vit, detok, _ = tiny()
    batch = torch.rand(3, 40, 40, 3)
    comfy.calls.clear()
    with pytest.raises(
        InputError,
        match=r"'start_image' is a batch of 3 images, but Generate Story tells one story "
        r"from one start picture.*ImageFromBatch.*Nothing was generated",
    ):
        run(
            "SeedStoryGenerateStory",
            {
                "agent": agent,
                "visual_tokenizer": vit,
                "detokenizer": detok,
                "start_image": batch,
                "opening_text": "Hi.",
                "story_steps": 1,
                **GEN,
            },
        )
    assert not [c for c in comfy.calls if c[0] in ("load_models_gpu", "ProgressBar", "text")]  # nothing ran
    images, sentences, state, _story = run(
        "SeedStoryGenerateStory",
        {
            "agent": agent,
            "visual_tokenizer": vit,
            "detokenizer": detok,
            "start_image": batch[1:2],
            "opening_text": "Hi.",
            "story_steps": 1,
            **GEN,
        },
    )
    assert images.shape[0] == 2 and state.step == 1


def test_story_start_picks_batch_index_and_step_refuses_batched_context(comfy):
    agent, vit, _detok, _ = tiny()
    batch = torch.rand(3, 40, 40, 3)
    (feats,) = run("SeedStoryViTTokenize", {"visual_tokenizer": vit, "image": batch, "resize_mode": "squash"})
    _, picked = run(
        "SeedStoryStoryStart",
        {"agent": agent, "opening_text": "Hi.", "batch_index": 2, "image": batch, "visual_tokenizer": vit},
    )
    assert torch.allclose(picked, feats[2:3], atol=1e-5)  # the chosen image, not the first
    with pytest.raises(InputError, match=r"batch_index 3 but the image batch has 3 image\(s\)"):
        run(
            "SeedStoryStoryStart",
            {"agent": agent, "opening_text": "Hi.", "batch_index": 3, "image": batch, "visual_tokenizer": vit},
        )
    state, _ = run("SeedStoryStoryStart", {"agent": agent, "opening_text": "Hi.", "features": feats[:1]})
    first, _, _, _ = run("SeedStoryStoryStep", {"agent": agent, "state": state, **STEP})
    with pytest.raises(InputError, match=r"'context_features' holds features of 3 images.*one previous image"):
        run("SeedStoryStoryStep", {"agent": agent, "state": first, **STEP, "context_features": feats})


# ------------------------------------------------------------------------------------------------ text length
def test_text_limit_is_derived_from_the_model_config():
    official, small = official_config().agent, tiny_config().agent
    for cfg in (official, small):
        assert max_text_tokens(cfg) == cfg.llm.max_position_embeddings // 8 - (cfg.image_tokens.num_img_tokens + 2)
    assert max_text_tokens(official) == 446  # 4096 / 8 - 66
    short = dataclasses.replace(small, llm=dataclasses.replace(small.llm, max_position_embeddings=1024))
    assert max_text_tokens(short) == 62
    assert "446 tokens" in story_nodes.LIMIT_TIP
    tips = NODES["SeedStoryGenerateStory"].INPUT_TYPES()
    assert "446 tokens" in tips["required"]["opening_text"][1]["tooltip"]
    assert "446 tokens" in tips["optional"]["captions"][1]["tooltip"]


def test_long_opening_text_and_captions_are_refused_with_the_limit(comfy):
    agent, vit, detok, _ = tiny()
    limit = max_text_tokens(agent.config)
    huge = ("Max and Zoe are at the beach. " * 700)[:6000]  # over 446 tokens, under the 7,136-character bound
    n = len(agent.tokenizer.encode(huge.strip()))
    assert n > limit
    pattern = (
        rf"'opening_text' is {n} tokens long \(\d+ characters\), but this model takes at most {limit} tokens "
        r"per sentence \(max_position_embeddings 4096 / 8 - 66 image tokens\)\. Shorten it to about \d+ "
        r"characters.*following steps"
    )
    comfy.calls.clear()
    with pytest.raises(InputError, match="SeedStory Generate Story: " + pattern):
        run(
            "SeedStoryGenerateStory",
            {
                "agent": agent,
                "visual_tokenizer": vit,
                "detokenizer": detok,
                "start_image": start_image(),
                "opening_text": huge,
                "story_steps": 1,
                **GEN,
            },
        )
    assert not [c for c in comfy.calls if c[0] in ("ProgressBar", "text")]  # refused before the story started
    with pytest.raises(InputError, match="SeedStory Story Start: " + pattern):
        run("SeedStoryStoryStart", {"agent": agent, "opening_text": huge, "features": torch.zeros(1, 64, 256)})
    with pytest.raises(InputError, match=r"'captions \(line 2\)' is \d+ tokens long"):
        run(
            "SeedStoryGenerateStory",
            {
                "agent": agent,
                "visual_tokenizer": vit,
                "detokenizer": detok,
                "start_image": start_image(),
                "opening_text": "Hi.",
                "story_steps": 2,
                **GEN,
                "mode": "visualization",
                "captions": "A short one.\n" + huge,
            },
        )
    state, _ = run("SeedStoryStoryStart", {"agent": agent, "opening_text": "Hi.", "features": torch.zeros(1, 64, 256)})
    with pytest.raises(InputError, match=r"SeedStory Story Step: 'text' is \d+ tokens long"):
        run("SeedStoryStoryStep", {"agent": agent, "state": state, **STEP, "mode": "visualization", "text": huge})
    # exactly at the limit is accepted
    words = "Max and Zoe are at the beach."
    at_limit = words
    while len(agent.tokenizer.encode((at_limit + " " + words).strip())) <= limit:
        at_limit += " " + words
    assert len(agent.tokenizer.encode(at_limit)) <= limit
    state, _ = run(
        "SeedStoryStoryStart", {"agent": agent, "opening_text": at_limit, "features": torch.zeros(1, 64, 256)}
    )
    assert state.sentences == (at_limit,)


# ------------------------------------------------------------------------------------------------ tiny_recipe --export
def _fake_run(tmp: Path) -> Path:
    """A run folder with only what the export stage reads (stage3/model: the trained bundle)."""
    run_dir = tmp / "run"
    random_tiny_bundle(0).save(run_dir / "stage3" / "model")
    return run_dir


def _export(run_dir: Path, target: Path, *extra: str) -> int:
    return tiny_recipe.main(["--out", str(run_dir), "--stages", "export", "--export", str(target), *extra])


def test_export_refuses_a_folder_that_is_not_a_previous_export(tmp_path, capsys):
    run_dir = _fake_run(tmp_path)
    precious = tmp_path / "my_models"
    (precious / "sub").mkdir(parents=True)
    (precious / "thesis.tex").write_text("years of work")
    (precious / "sub" / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(SystemExit) as exc:
        _export(run_dir, precious)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "is not a previous tiny_recipe export" in err and "sub, thesis.tex" in err and "--force" in err
    assert "Nothing was deleted" in err
    assert (precious / "thesis.tex").read_text() == "years of work" and (
        precious / "sub" / "weights.safetensors"
    ).is_file()
    # the run folder itself, a folder inside it, or one that holds it: refused even with --force
    for bad in (run_dir, run_dir / "stage3", tmp_path):
        with pytest.raises(tiny_recipe.ExportRefused, match="would delete the trained model"):
            tiny_recipe.check_export_target(bad, run_dir, force=True)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(tiny_recipe.ExportRefused, match="expected a folder"):
        tiny_recipe.check_export_target(tmp_path / "a_file", run_dir, force=True)
    assert (run_dir / "stage3" / "model" / "seedstory_config.json").is_file()
    # --force replaces it
    assert _export(run_dir, precious, "--force") == 0
    assert not (precious / "thesis.tex").exists() and (precious / "agent").is_dir()
    assert tiny_recipe.is_previous_export(precious)


def test_export_replaces_a_previous_export_and_keeps_the_users_files(tmp_path, capsys):
    run_dir = _fake_run(tmp_path)
    target = tmp_path / "models" / "seedstory-tiny"
    assert _export(run_dir, target) == 0  # a new folder
    assert tiny_recipe.is_previous_export(target)
    (target / "MODEL_CARD.md").write_text("# my card")
    (target / "agent" / "stale.bin").write_bytes(b"old")  # inside an entry the export owns: replaced
    assert _export(run_dir, target) == 0
    assert (target / "MODEL_CARD.md").read_text() == "# my card"
    assert not (target / "agent" / "stale.bin").exists()
    assert "kept in" in capsys.readouterr().out
    assert json.loads((target / "recipe.json").read_text())["stages"]["export"]["kept"] == ["MODEL_CARD.md"]
    SeedStoryBundle.load(target)
    assert not [p.name for p in target.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
