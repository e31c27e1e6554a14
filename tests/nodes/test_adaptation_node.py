"""SeedStory Adapt De-tokenizer (stage 3 in ComfyUI): node functions with stand-ins for ComfyUI (fixture ``adapt_env``,
tests/conftest.py) on the random tiny model and a 2-story StoryStream-mini folder, and the example workflow
workflows/api/seedstory_adapt_detokenizer.json queued on a real ComfyUI server (marker ``comfyui``)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.support.comfy_stubs import NODES, Interrupted, detokenize_inputs, models, run, tiny
from tests.support.pack_loader import PACK
from tests.support.workflows import API_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = "seedstory_adapt_detokenizer"
NODE = "SeedStoryAdaptDetokenizer"


def _kwargs(agent, vit, detok, **over):
    kw = dict(
        agent=agent,
        visual_tokenizer=vit,
        detokenizer=detok,
        data_folder="mini",
        steps=2,
        learning_rate=1e-3,
        batch_size=2,
        seed=0,
        output_name="adapted_test",
    )
    kw.update(over)
    return kw


def _snapshot(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_adapt_writes_adapter_changes_trainable_weights_and_keeps_input(adapt_env):
    agent, vit, detok, _ = tiny()
    before = _snapshot(detok.module)
    out = run(NODE, _kwargs(agent, vit, detok))
    adapted, path = out["result"]
    assert "final loss" in out["ui"]["text"][0]

    # the adapter file, where the De-tokenizer Loader lists it
    target = adapt_env.tmp / "models" / "seed_story" / "detokenizer" / "adapted_test.safetensors"
    assert Path(path) == target and target.is_file()
    assert (
        "adapted_test.safetensors" in NODES["SeedStoryDetokenizerLoader"].INPUT_TYPES()["required"]["adapter_name"][0]
    )
    saved = load_file(str(target))
    trainable = detok.module.trainable_parameters()
    assert set(saved) == set(trainable) and any(k.startswith("resampler.") for k in saved)
    assert any(k.startswith("unet.") and k.endswith(("to_k.weight", "to_v.weight")) for k in saved)

    # the input de-tokenizer is unchanged; the output is a different module with changed trainable weights only
    after = _snapshot(detok.module)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(adapted, models.DetokenizerModel) and adapted.module is not detok.module
    new = adapted.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], new[k])}
    assert changed and changed <= set(trainable), sorted(changed - set(trainable))[:5]
    assert any(k.startswith("resampler.") for k in changed) and any(k.startswith("unet.") for k in changed)
    for k in saved:
        assert torch.equal(saved[k], new[k].cpu())
    assert torch.equal(adapted.uncond_features, detok.uncond_features)

    # progress over the steps, and the adapted de-tokenizer renders
    progress = [c for c in adapt_env.calls if c[0] == "progress"]
    assert progress[-1][1:] == (2, 2)
    features = torch.randn(1, *detok.uncond_features.shape[-2:], generator=torch.Generator().manual_seed(0))
    images = run(
        "SeedStoryDetokenize",
        detokenize_inputs(adapted, features, steps=2, guidance_scale=1.0),
    )[0]
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(images).all()


def test_adapt_cancel_stops_cleanly_and_raises_the_interruption(adapt_env):
    agent, vit, detok, _ = tiny()
    before = _snapshot(detok.module)
    adapt_env.interrupt_requested = True  # Cancel pressed: the run stops after its first step
    with pytest.raises(Interrupted):
        run(NODE, _kwargs(agent, vit, detok, steps=5, output_name="cancelled"))
    assert not (adapt_env.tmp / "models" / "seed_story" / "detokenizer" / "cancelled.safetensors").exists()
    ckpts = list((adapt_env.tmp / "temp" / "seedstory_adapt" / "cancelled" / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-1"]
    assert [c for c in adapt_env.calls if c[0] == "progress"][-1][1:] == (1, 5)
    after = _snapshot(detok.module)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapt_clear_errors(adapt_env):
    agent, vit, detok, _ = tiny()
    with pytest.raises(models.SeedStoryInputError, match="seedstory_core.data.mini"):
        run(NODE, _kwargs(agent, vit, detok, data_folder="no_such_folder"))
    (adapt_env.tmp / "input" / "empty").mkdir()
    with pytest.raises(models.SeedStoryInputError, match="no .*jsonl"):
        run(NODE, _kwargs(agent, vit, detok, data_folder="empty"))
    with pytest.raises(models.SeedStoryInputError, match="output_name"):
        run(NODE, _kwargs(agent, vit, detok, output_name="../evil"))
    with pytest.raises(models.SeedStoryInputError, match="expects a SEEDSTORY_AGENT"):
        run(NODE, _kwargs("text", vit, detok))


# ------------------------------------------------------------------------------------------------ real server
@pytest.mark.comfyui
def test_adapt_workflow_on_a_real_server(comfy_server):
    prompt = json.loads((API_DIR / f"{WORKFLOW}.json").read_text())
    up = comfy_server.upload_image(
        (REPO_ROOT / "workflows" / "assets" / "seedstory_start.png").read_bytes(), name="seedstory_start.png"
    )
    assert up["name"] == "seedstory_start.png"
    adapt = next(k for k, v in prompt.items() if v["class_type"] == NODE)
    # the template trains on the pack's example data (generated into the temp folder), so it runs on a fresh install
    assert prompt[adapt]["inputs"]["data_folder"] == sys.modules[f"{PACK}.nodes.training"].EXAMPLE_DATA
    prompt = copy.deepcopy(prompt)
    prompt[adapt]["inputs"]["steps"] = 2
    res = comfy_server.run(prompt, timeout=300)
    assert res.status == "success", f"error={json.dumps(res.error)[:3000]}\nlog:\n{comfy_server.log_tail(40)}"
    outputs = res.outputs()
    assert "final loss" in outputs[adapt]["text"][0]
    ours = [p for p in res.progress if p["node"] == adapt]
    assert ours and ours[-1]["value"] == ours[-1]["max"] == 2
    save = next(k for k, v in prompt.items() if v["class_type"] == "SeedStorySaveStory")
    assert len(outputs[save]["images"]) == 1
    info = comfy_server.object_info()
    name = prompt[adapt]["inputs"]["output_name"] + ".safetensors"
    listed = info["SeedStoryDetokenizerLoader"]["input"]["required"]["adapter_name"][0]
    assert name in listed, listed
    assert info[NODE]["output_node"] is True


def test_trainable_copy_and_cast_back_leave_the_input_de_tokenizer_as_it_was():
    training = sys.modules[f"{PACK}.nodes.training"]
    with torch.inference_mode():  # ComfyUI loads models under inference mode
        original = torch.nn.Linear(3, 3).to(torch.float16)
    with torch.inference_mode(False):
        copy = training._trainable_copy(original)
        assert copy.weight.dtype == torch.float32 and not copy.weight.is_inference()
        copy.weight.requires_grad_(True)  # an inference tensor would refuse this
        with torch.no_grad():
            copy.weight.add_(1.0)
    back = training._like_input(copy, original)
    assert back.weight.dtype == torch.float16 and not back.weight.requires_grad
    assert not torch.equal(back.weight, original.weight) and original.weight.dtype == torch.float16
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        training._trainable_copy(original)


def test_example_data_is_generated_once_into_the_temp_folder_and_trains(adapt_env):
    """data_folder "(example) storystream_mini": the pack's StoryStream-mini in ComfyUI's temp folder, made on first
    use (validation does not make it), read with the image confinement rooted there; the input folder is untouched."""
    training = sys.modules[f"{PACK}.nodes.training"]
    node = NODES[NODE]
    assert node.VALIDATE_INPUTS(data_folder=training.EXAMPLE_DATA) is True
    temp = Path(training.glue.temp_directory()) / "seedstory_example_data"
    assert not temp.exists() or not any(temp.glob("storystream_mini_*/meta.json"))
    agent, vit, detok, _ = tiny()
    out = run(NODE, _kwargs(agent, vit, detok, data_folder=training.EXAMPLE_DATA, steps=1))
    _adapted, path = out["result"]
    assert "final loss" in out["ui"]["text"][0]
    made = list(temp.glob("storystream_mini_*/meta.json"))
    assert len(made) == 1 and json.loads(made[0].read_text())["stories"] == training.EXAMPLE_STORIES
    assert Path(path).is_file()
    before = made[0].stat().st_mtime_ns
    training.resolve_data_folder(training.EXAMPLE_DATA, node="t")  # second use: not regenerated
    assert made[0].stat().st_mtime_ns == before
    inp = Path(training.glue.input_directory("t"))
    assert not list(inp.rglob("storystream_mini_*")), "the example data must not be written into the input folder"
