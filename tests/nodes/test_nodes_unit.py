"""Pure-python tests of the SeedStory node classes (no ComfyUI): stand-ins for ``comfy``, ``folder_paths`` and
``server`` (tests/support/comfy_stubs.py) are put into ``sys.modules`` by the ``comfy`` fixture (tests/conftest.py);
node functions run under ``torch.inference_mode`` like ComfyUI runs them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.support.comfy_stubs import (
    NODES,
    STEP,
    InputError,
    Interrupted,
    detokenize_inputs,
    generate_inputs,
    glue,
    models,
    pack,
    run,
    start_image,
    tiny,
    write_component_folders,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ contract
def test_pack_imports_without_comfyui():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('p', {str(REPO_ROOT / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(REPO_ROOT)!r}])\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['p'] = m; spec.loader.exec_module(m)\n"
        "bad = [k for k in sys.modules if k.split('.')[0] in ('comfy', 'folder_paths', 'server', 'comfy_execution')]\n"
        "assert not bad, bad\n"
        "for c in m.NODE_CLASS_MAPPINGS.values(): c.INPUT_TYPES()\n"
        "print(len(m.NODE_CLASS_MAPPINGS))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == str(len(NODES))


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


@pytest.mark.parametrize("node_id", sorted(NODES))
def test_node_contract(node_id):
    cls = NODES[node_id]
    assert node_id.startswith("SeedStory") and node_id in pack.NODE_DISPLAY_NAME_MAPPINGS
    assert cls.CATEGORY.startswith("SEED-Story/") and cls.CATEGORY.split("/")[1] in (
        "loaders",
        "story",
        "render",
        "output",
        "training",
    )
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40
    assert callable(getattr(cls, cls.FUNCTION))
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            assert isinstance(entry, tuple) and 1 <= len(entry) <= 2, (name, entry)
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, str) and kind not in WIDGET_TYPES | {"IMAGE", "CONDITIONING"}:
                assert kind.startswith("SEEDSTORY_"), f"{node_id}.{name}: custom type {kind} not namespaced"
            if isinstance(kind, list) and "default" in opts:
                assert opts["default"] in kind
            if kind in ("INT", "FLOAT") and "default" in opts:
                assert opts.get("min", -math.inf) <= opts["default"] <= opts.get("max", math.inf)
    n = len(cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == n and len(cls.OUTPUT_TOOLTIPS) == n and all(cls.OUTPUT_TOOLTIPS)
    for t in cls.RETURN_TYPES:
        assert t in ("IMAGE", "STRING", "CONDITIONING") or t.startswith("SEEDSTORY_")
    assert not getattr(cls, "NOT_IDEMPOTENT", False)
    hidden = spec.get("hidden", {})
    if node_id == "SeedStoryGenerateStory":
        assert hidden == {"unique_id": "UNIQUE_ID"}
    elif node_id == "SeedStorySaveStory":  # prompt.json for the storybook page's redo buttons
        assert hidden == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}
    else:
        assert "UNIQUE_ID" not in hidden.values()
    for hook in ("IS_CHANGED", "VALIDATE_INPUTS"):
        if hasattr(cls, hook):
            assert isinstance(cls.__dict__[hook], classmethod), f"{node_id}.{hook} must be a classmethod"
    if node_id.endswith("Loader"):
        assert cls.CATEGORY == "SEED-Story/loaders"


def test_seed_widgets_have_control_after_generate():
    for node_id, cls in NODES.items():
        for section in ("required", "optional"):
            for name, entry in cls.INPUT_TYPES().get(section, {}).items():
                if name == "seed":
                    assert entry[1].get("control_after_generate") is True, node_id


def test_folder_registration_merges_and_lists(comfy):
    fp = comfy.folder_paths
    (comfy.tmp / "models" / "seed_story" / "tokenizer" / "cvlm_llama2_tokenizer").mkdir(parents=True)
    (comfy.tmp / "models" / "seed_story" / "visual_tokenizer").mkdir(parents=True)
    (comfy.tmp / "models" / "seed_story" / "visual_tokenizer" / "qwen_vit_G.pt").write_bytes(b"x")
    (comfy.tmp / "models" / "seed_story" / "visual_tokenizer" / "notes.txt").write_text("x")
    spec = NODES["SeedStoryVisualTokenizerLoader"].INPUT_TYPES()
    assert spec["required"]["vit_name"][0] == ["qwen_vit_G.pt"]
    paths, exts = fp.folder_names_and_paths["seed_story_agent"]
    assert paths[0].endswith(os.path.join("elsewhere", "agents"))  # the user's entry is kept, first
    assert paths[1] == os.path.join(fp.models_dir, "seed_story", "agent")
    assert ".safetensors" in exts and ".bin" in exts and ".pkl" not in exts
    for name in glue.FOLDERS:
        assert fp.folder_names_and_paths[name][1], f"{name}: empty extension set means no filtering"
    assert NODES["SeedStoryAgentLoader"].INPUT_TYPES()["required"]["tokenizer_name"][0] == ["cvlm_llama2_tokenizer"]
    before = {k: (list(v[0]), set(v[1])) for k, v in fp.folder_names_and_paths.items()}
    glue._REGISTERED = False
    glue.register_folders()  # idempotent: no duplicate folders
    assert {k: (list(v[0]), set(v[1])) for k, v in fp.folder_names_and_paths.items()} == before


# ------------------------------------------------------------------------------------------------ the story
def test_tiny_story_through_node_functions(comfy):
    agent, vit, detok, info = tiny()
    assert "random weights" in info
    assert ("ModelPatcher", ["agent"]) in comfy.calls and ("ModelPatcher", ["detokenizer", "vae"]) in comfy.calls
    (feats,) = run(
        "SeedStoryViTTokenize", {"visual_tokenizer": vit, "image": torch.rand(2, 50, 70, 3), "resize_mode": "squash"}
    )
    assert feats.shape == (2, 64, 256) and feats.device.type == "cpu"
    assert any(c[0] == "load_models_gpu" for c in comfy.calls)
    (settings,) = run("SeedStoryStorySettings", {"cache_policy": "multimodal_sink", "window_images": 2})
    state0, f0 = run(
        "SeedStoryStoryStart",
        {
            "agent": agent,
            "opening_text": "A cat sails a boat.",
            "batch_index": 1,
            "features": feats,
            "settings": settings,
        },
    )
    assert torch.equal(f0, feats[1:2])
    assert state0.step == 0 and state0.sentences == ("A cat sails a boat.",)
    s1, sent1, f1, _ = run("SeedStoryStoryStep", {"agent": agent, "state": state0, **STEP})
    s2, sent2, f2, _ = run(
        "SeedStoryStoryStep", {"agent": agent, "state": s1, **STEP, "text": "Then", "decoding": "sample"}
    )
    assert s2.step == 2 and f2.shape == (1, 64, 256) and "\n" not in sent1
    s3, sent3, _, _ = run(
        "SeedStoryStoryStep", {"agent": agent, "state": s2, **STEP, "mode": "visualization", "text": "The cat waves."}
    )
    assert sent3 == "The cat waves."
    (img,) = run(
        "SeedStoryDetokenize",
        detokenize_inputs(detok, torch.cat([f1, f2]), steps=2, guidance_scale=3.0, seed=1, frame_index=1),
    )
    assert img.shape == (2, 64, 64, 3) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert [c for c in comfy.calls if c[0] == "progress"][-1][1:] == (2, 2)
    pos, neg = run("SeedStoryFeaturesToConditioning", {"detokenizer": detok, "features": f1, "width": 64, "height": 64})
    assert pos[0][0].shape == (1, 16, 96) and pos[0][1]["pooled_output"].shape == (1, 64)
    assert neg[0][0].shape == (1, 16, 96) and pos[0][1]["width"] == 64

    comfy.calls.clear()
    images, sentences, final, _story = run(
        "SeedStoryGenerateStory",
        generate_inputs(
            agent,
            vit,
            detok,
            start_image=start_image(c=4),
            opening_text="A cat sails a boat.",
            diffusion_steps=2,
            unique_id="17",
        ),
    )
    assert images.shape == (3, 64, 64, 3) and final.step == 2
    assert len(sentences.split("\n")) == 3 and sentences.split("\n")[0] == "A cat sails a boat."
    assert ("ProgressBar", 4) in comfy.calls
    assert [c[1] for c in comfy.calls if c[0] == "progress"][-1] == 4
    texts = [c for c in comfy.calls if c[0] == "text"]
    assert texts and all(c[1] == "17" and c[3] == "client-1" for c in texts)
    assert texts[-1][2].startswith("0. A cat sails a boat.") and texts[-1][2].count("\n") == 2

    out = run(
        "SeedStorySaveStory",
        {
            "images": images,
            "filename_prefix": "stories/cat",
            "title": "Cat <b>",
            "sentences": sentences,
            "state": final,
        },
    )
    index = Path(out["result"][0])
    assert index.name == "index.html" and index.parent.name == "cat_00001"
    story = json.loads((index.parent / "story.json").read_text())
    assert [f["image"] for f in story["frames"]] == ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert story["frames"][0]["sentence"] == "A cat sails a boat." and story["state"]["step"] == 2
    assert "Cat &lt;b&gt;" in index.read_text()
    assert out["ui"]["images"][0] == {"filename": "frame_000.png", "subfolder": "stories/cat_00001", "type": "output"}
    assert isinstance(out["ui"]["text"], list)
    out2 = run(
        "SeedStorySaveStory", {"images": images[:2], "filename_prefix": "stories/cat", "title": "t", "state": s1}
    )
    assert Path(out2["result"][0]).parent.name == "cat_00002"
    assert json.loads((Path(out2["result"][0]).parent / "story.json").read_text())["frames"][1]["sentence"] == sent1


def test_inputs_are_not_mutated_and_branches_are_independent(comfy):
    agent, vit, detok, _ = tiny()
    image = start_image()
    image_copy = image.clone()
    state0, _ = run(
        "SeedStoryStoryStart", {"agent": agent, "opening_text": "One day.", "image": image, "visual_tokenizer": vit}
    )
    assert torch.equal(image, image_copy)
    snap = (state0.token_ids, state0.kinds, state0.sentences, state0.kv_length, state0.last_features.clone())
    a1 = run("SeedStoryStoryStep", {"agent": agent, "state": state0, **STEP})
    b1 = run("SeedStoryStoryStep", {"agent": agent, "state": state0, **STEP, "text": "Suddenly"})
    a2 = run("SeedStoryStoryStep", {"agent": agent, "state": a1[0], **STEP})
    again = run("SeedStoryStoryStep", {"agent": agent, "state": state0, **STEP})
    assert (state0.token_ids, state0.kinds, state0.sentences, state0.kv_length) == snap[:4]
    assert torch.equal(state0.last_features, snap[4])
    assert again[1] == a1[1] and torch.equal(again[2], a1[2])  # the branch did not disturb the root
    b_alone = run("SeedStoryStoryStep", {"agent": agent, "state": state0, **STEP, "text": "Suddenly"})
    assert b_alone[1] == b1[1] and torch.equal(b_alone[2], b1[2])
    assert a2[0].step == 2 and b1[0].step == 1
    feats = a1[2].clone()
    run(
        "SeedStoryDetokenize",
        detokenize_inputs(detok, a1[2]),
    )
    assert torch.equal(a1[2], feats)


@pytest.mark.parametrize("shape", [(1, 33, 47, 1), (1, 20, 300, 2), (1, 64, 64, 4), (3, 9, 9, 3)])
def test_images_of_any_mode_and_size(comfy, shape):
    agent, vit, _detok, _ = tiny()
    (feats,) = run(
        "SeedStoryViTTokenize", {"visual_tokenizer": vit, "image": torch.rand(*shape), "resize_mode": "keep_ratio"}
    )
    assert feats.shape == (shape[0], 64, 256)


# ------------------------------------------------------------------------------------------------ errors
def test_clear_errors_for_bad_inputs(comfy):
    agent, vit, detok, _ = tiny()
    start = NODES["SeedStoryStoryStart"]
    msg = start.VALIDATE_INPUTS(opening_text="   ")
    assert isinstance(msg, str) and "opening_text" in msg and "empty" in msg
    assert start.VALIDATE_INPUTS(opening_text=None) is True and start.VALIDATE_INPUTS(opening_text="Hi.") is True
    assert isinstance(NODES["SeedStoryGenerateStory"].VALIDATE_INPUTS(opening_text=""), str)
    with pytest.raises(InputError, match="opening_text.*empty"):
        run("SeedStoryStoryStart", {"agent": agent, "opening_text": " ", "features": torch.zeros(1, 64, 256)})
    with pytest.raises(InputError, match="'agent' expects a SEEDSTORY_AGENT.*found the text 'not-an-agent'"):
        run(
            "SeedStoryStoryStart", {"agent": "not-an-agent", "opening_text": "Hi.", "features": torch.zeros(1, 64, 256)}
        )
    with pytest.raises(InputError, match="'state' expects a SEEDSTORY_STATE"):
        run("SeedStoryStoryStep", {"agent": agent, "state": 3, **STEP})
    with pytest.raises(InputError, match="no start image"):
        run("SeedStoryStoryStart", {"agent": agent, "opening_text": "Hi."})
    with pytest.raises(InputError, match="no 'visual_tokenizer'"):
        run("SeedStoryStoryStart", {"agent": agent, "opening_text": "Hi.", "image": start_image()})
    with pytest.raises(InputError, match=r"IMAGE batch \[B, H, W, C\].*\(1, 64, 64\)"):
        run(
            "SeedStoryViTTokenize",
            {"visual_tokenizer": vit, "image": torch.rand(1, 1, 64, 64)[0], "resize_mode": "squash"},
        )
    with pytest.raises(InputError, match="width 4096, but this model expects 256"):
        run("SeedStoryStoryStart", {"agent": agent, "opening_text": "Hi.", "features": torch.zeros(1, 256, 4096)})
    with pytest.raises(InputError, match="expects SEEDSTORY_IMAGE_FEATURES"):
        run(
            "SeedStoryDetokenize",
            detokenize_inputs(detok, [1, 2], guidance_scale=1.0),
        )
    with pytest.raises(InputError, match="multiples of 8"):
        run(
            "SeedStoryDetokenize",
            detokenize_inputs(detok, torch.zeros(1, 64, 256), guidance_scale=1.0, width=60, height=64),
        )
    state, _ = run("SeedStoryStoryStart", {"agent": agent, "opening_text": "Hi.", "features": torch.zeros(1, 64, 256)})
    with pytest.raises(InputError, match="visualization mode.*'text' is empty"):
        run("SeedStoryStoryStep", {"agent": agent, "state": state, **STEP, "mode": "visualization"})
    with pytest.raises(InputError, match="one caption per step.*story_steps=3.*1 non-empty"):
        run(
            "SeedStoryGenerateStory",
            generate_inputs(
                agent, vit, detok, story_steps=3, mode="visualization", guidance_scale=1.0, captions="only one\n\n"
            ),
        )
    with pytest.raises(InputError, match="filename_prefix"):
        run("SeedStorySaveStory", {"images": torch.rand(1, 8, 8, 3), "filename_prefix": "../x", "title": "t"})


def test_component_loaders_from_model_folders(comfy):
    bundle = write_component_folders(comfy.tmp)
    req = NODES["SeedStoryAgentLoader"].INPUT_TYPES()["required"]
    assert "tiny/model.safetensors" in req["agent_name"][0] and "oops_vit.safetensors" in req["agent_name"][0]
    assert req["base_llm"][0] == ["none"]
    assert "seed_story/sdxl/tiny-sdxl" in NODES["SeedStoryDetokenizerLoader"].INPUT_TYPES()["required"]["sdxl_base"][0]
    (vit,) = run(
        "SeedStoryVisualTokenizerLoader",
        {"vit_name": "tiny/vit.safetensors", "config": "auto", "precision": "fp32", "device": "cpu"},
    )
    (agent,) = run(
        "SeedStoryAgentLoader",
        {
            "agent_name": "tiny/model.safetensors",
            "tokenizer_name": "tiny",
            "base_llm": "none",
            "config": "auto",
            "precision": "auto",
            "device": "auto",
        },
    )
    (detok,) = run(
        "SeedStoryDetokenizerLoader",
        {
            "visual_tokenizer": vit,
            "adapter_name": "tiny/adapter.safetensors",
            "sdxl_base": "seed_story/sdxl/tiny-sdxl",
            "config": "auto",
            "precision": "auto",
            "device": "auto",
        },
    )
    assert torch.allclose(detok.uncond_features, bundle.uncond_features.float(), atol=1e-5)
    state, _ = run(
        "SeedStoryStoryStart",
        {"agent": agent, "opening_text": "Hello there.", "image": start_image(), "visual_tokenizer": vit},
    )
    _, _, feats, _ = run("SeedStoryStoryStep", {"agent": agent, "state": state, **STEP})
    (img,) = run(
        "SeedStoryDetokenize",
        detokenize_inputs(detok, feats, scheduler="ddim", same_noise=True, width=32, height=48),
    )
    assert img.shape == (1, 48, 32, 3)
    # identical loader call: our cache answers, nothing is read again
    counts = dict(models.LOAD_COUNTS)
    (agent2,) = run(
        "SeedStoryAgentLoader",
        {
            "agent_name": "tiny/model.safetensors",
            "tokenizer_name": "tiny",
            "base_llm": "none",
            "config": "auto",
            "precision": "auto",
            "device": "auto",
        },
    )
    assert agent2 is agent and dict(models.LOAD_COUNTS) == counts
    with pytest.raises(
        InputError, match=r"SeedStory Agent Loader: could not load the agent:.*looks like a visual_tokenizer checkpoint"
    ):
        run(
            "SeedStoryAgentLoader",
            {
                "agent_name": "oops_vit.safetensors",
                "tokenizer_name": "tiny",
                "base_llm": "none",
                "config": "tiny",
                "precision": "auto",
                "device": "auto",
            },
        )
    with pytest.raises(InputError, match="not found in the 'seed_story_agent' model folders"):
        run(
            "SeedStoryAgentLoader",
            {
                "agent_name": "missing.bin",
                "tokenizer_name": "tiny",
                "base_llm": "none",
                "config": "tiny",
                "precision": "auto",
                "device": "auto",
            },
        )
    with pytest.raises(InputError, match="has 1066 tokens but the agent config \\(official\\) expects"):
        run(
            "SeedStoryAgentLoader",
            {
                "agent_name": "tiny/model.safetensors",
                "tokenizer_name": "tiny",
                "base_llm": "none",
                "config": "official",
                "precision": "auto",
                "device": "auto",
            },
        )


# ------------------------------------------------------------------------------------------------ caching / memory
def test_loader_cache_free_memory_and_is_changed(comfy):
    first = tiny()
    assert tiny()[0] is first[0]
    tl = NODES["SeedStoryTinyModelLoader"]
    assert tl.IS_CHANGED(random_seed=0) == tl.IS_CHANGED(random_seed=0) == "random"
    fm = NODES["SeedStoryFreeMemory"]
    v = fm.IS_CHANGED(clear_node_cache=True)
    assert v != v  # NaN: always re-run
    out = run("SeedStoryFreeMemory", {"clear_node_cache": True})
    assert "1 entry dropped" in out["result"][0]
    assert ("unload_all_models",) in comfy.calls and ("set_flag", "free_memory", True) in comfy.calls
    assert tiny()[0] is not first[0]


def test_interrupt_stops_generate_story(comfy):
    agent, vit, detok, _ = tiny()
    comfy.interrupt_after = 3
    with pytest.raises(Interrupted):
        run(
            "SeedStoryGenerateStory",
            generate_inputs(agent, vit, detok, story_steps=5, diffusion_steps=2, guidance_scale=1.0),
        )


def test_no_repeat_sentences_is_an_optional_toggle_on_by_default(comfy):
    settings = sys.modules[f"{pack.__name__}.nodes.settings"]
    for node_id in ("SeedStoryStoryStep", "SeedStoryGenerateStory"):
        optional = NODES[node_id].INPUT_TYPES()["optional"]
        kind, opts = optional["no_repeat_sentences"]  # optional: jobs saved before the toggle existed still run
        assert kind == "BOOLEAN" and opts["default"] is True and "copy" in opts["tooltip"]
    assert settings.make_decoding("greedy", 0.7, 0.9, 0, None, 40, 0, "n").no_repeat_sentences is True
    assert settings.make_decoding("greedy", 0.7, 0.9, 0, None, 40, 0, "n", False).no_repeat_sentences is False
    with pytest.raises(InputError, match="no_repeat_sentences must be true or false, found 'yes'"):
        settings.make_decoding("greedy", 0.7, 0.9, 0, None, 40, 0, "n", "yes")
    agent, _, _, _ = tiny()
    state, _ = run("SeedStoryStoryStart", {"agent": agent, "opening_text": "Hi.", "features": torch.zeros(1, 64, 256)})
    with pytest.raises(InputError, match="no_repeat_sentences must be true or false"):
        run("SeedStoryStoryStep", {"agent": agent, "state": state, **STEP, "no_repeat_sentences": 1})
    # on or off, a step of the random tiny agent still gives a story one step longer
    for flag in (True, False, None):
        s1, _, _, _ = run("SeedStoryStoryStep", {"agent": agent, "state": state, **STEP, "no_repeat_sentences": flag})
        assert s1.step == state.step + 1
