"""ComfyUI's partial loading over our ModelPatchers, with the real ComfyUI model management (no stand-ins).

On a CPU ComfyUI never asks for a partial load itself (a model whose load device is the CPU gets
``VRAMState.DISABLED``, comfy/model_management.py ``load_models_gpu``; and ``--lowvram`` / ``--novram`` cannot
even be combined with ``--cpu``, tests/server/test_lowvram_server.py); this test therefore drives ComfyUI's own
partial-load path -- ``LoadedModel.model_load`` with a
memory budget, what ``load_models_gpu`` does under ``--lowvram`` on a GPU -- and checks the observable ComfyUI
keeps: ``model_lowvram`` set and a loaded size below the model's size, the story unchanged, and Free Memory
(``unload_all_models``) clearing it. It runs in a subprocess so the real ``comfy`` modules never meet the stand-ins
of the other node tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    comfy_dir, repo = sys.argv[1], sys.argv[2]
    sys.argv = ["main.py", "--cpu"]
    sys.path[:0] = [comfy_dir]
    sys.path.append(repo)
    import comfy.options
    comfy.options.enable_args_parsing()
    import comfy.model_management as mm
    import importlib.util
    spec = importlib.util.spec_from_file_location("pack_loader", repo + "/tests/support/pack_loader.py")
    pack_loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_loader)
    PACK = pack_loader.PACK
    load_pack = pack_loader.load_pack
    from seedstory_core.story import default_policy, engine_for
    load_pack()
    loaders = sys.modules[PACK + ".nodes.loaders"]
    glue = sys.modules[PACK + ".nodes.comfy_glue"]

    def story(agent, vit):
        engine = engine_for(default_policy(), agent.module, agent.tokenizer, vit.module)
        state = engine.start("Max and Zoe play in the park.", features=vit.module(torch.zeros(1, 3, 112, 112)))
        _, results = engine.run(state, 2)
        return [r.sentence for r in results], torch.cat([r.features.flatten() for r in results])

    out = {}
    with torch.inference_mode():
        for storage in ("default", "fp8_e4m3fn"):
            agent, vit, _detok, _info = loaders.SeedStoryTinyModelLoader().load(weight_dtype=storage)
            agent.ensure_loaded(vit)  # the nodes' full load (no force_full_load)
            full_text, full_feats = story(agent, vit)
            full = glue.loaded_state(agent.patcher)
            mm.unload_all_models()
            budget = agent.patcher.model_size() // 3
            loaded = mm.LoadedModel(agent.patcher)
            loaded.model_load(lowvram_model_memory=budget)  # ComfyUI's partial load, as under --lowvram
            mm.current_loaded_models.insert(0, loaded)
            partial = glue.loaded_state(agent.patcher)
            offloaded = sum(1 for m in agent.patcher.model.modules() if getattr(m, "comfy_cast_weights", False))
            text, feats = story(agent, vit)
            mm.unload_all_models()  # SeedStory Free Memory
            freed = glue.loaded_state(agent.patcher)
            out[storage] = dict(full=full, partial=partial, freed=freed, offloaded=offloaded, budget=budget,
                                same_text=text == full_text, max_diff=float((feats - full_feats).abs().max()))
    print("RESULT " + json.dumps(out))
    """
)


def test_comfyui_partial_load_of_our_agent_keeps_the_story(comfy_dir, tmp_path):
    script = tmp_path / "partial.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(comfy_dir), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    for storage, r in result.items():
        assert r["full"]["loaded"] and not r["full"]["lowvram"], (storage, r)
        assert r["partial"]["loaded"] and r["partial"]["lowvram"], (storage, r)
        assert 0 < r["partial"]["loaded_bytes"] < r["partial"]["total_bytes"], (storage, r)
        assert r["offloaded"] > 0, (storage, r)  # cast layers left on the offload device
        assert r["same_text"] and r["max_diff"] < 1e-4, (storage, r)
        assert not r["freed"]["loaded"] and not r["freed"]["lowvram"] and r["freed"]["loaded_bytes"] == 0
