"""Quality cost of the weight storages (``fp8_e4m3fn``, ``int8``) against fp32 weights, measured on the CPU: the
numbers of docs/models.md "Weight storage" (JSON: ``bench/results/quant_quality.json``).

Two sets of models, every one in fp32 compute:

* **golden vectors** (``/work/shared/reference/golden``, the official layout at tiny sizes, random weights; built
  by :mod:`seedstory_core.golden` exactly as the parity check builds them): the agent fixture's ``forward`` case
  (logits over every position, and the regressed image features ``recon_image_embeds``) and the ViT fixture
  (``features``). Each storage is compared with our fp32 run and with the official fp32 outputs stored in the
  fixture;
* **the trained tiny model** (``models/seedstory-tiny``): teacher-forced agent forwards over held-out
  StoryStream-mini stories (seed :data:`TINY_SEED`, stories ``0..TINY_STORIES-1``, the official sample layout of
  :class:`seedstory_core.data.samples.StorySampleBuilder` with k = 3 given images; ViT features of the real
  frames), logits and regressed features, plus the ViT features of those frames.

Per output: worst absolute error, relative error (``||q - r|| / ||r||``), the cosine of the flattened tensors and
the worst cosine over rows (logits: per position; features: per token), and for logits the agreement of the argmax
(the greedy next token). Only the storage layers of :func:`seedstory_core.quant.weight_blocks` change (as in the
loaders); everything else stays fp32.

``python -m bench.quant_quality [--golden DIR] [--model DIR] [--out bench/results/quant_quality.json]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, Mapping, Optional

import torch
import torch.nn.functional as F

from safetensors.torch import load_file

from seedstory_core import quant
from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.data import mini
from seedstory_core.data.samples import StorySampleBuilder, collate
from seedstory_core.golden import GOLDEN_FORWARD_INPUTS, golden_vit, load_golden_agent
from seedstory_core.golden import vit_config_from_constructor_kwargs
from seedstory_core.visual_tokenizer import QwenVisualTokenizer

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("SEEDSTORY_REFERENCE", REPO.parent / "shared" / "reference")) / "golden"
TINY = REPO / "models" / "seedstory-tiny"
OUT = REPO / "bench" / "results" / "quant_quality.json"
STORAGES = (quant.FP8, quant.INT8)
#: held-out StoryStream-mini stories of the tiny-model measurement (the tiny model trained on seed 0)
TINY_SEED, TINY_STORIES, TINY_K = 12000, 4, 3


def error_stats(got: torch.Tensor, ref: torch.Tensor, *, logits: bool = False) -> Dict[str, float]:
    """Errors of ``got`` against ``ref`` (same shape, any float dtype; compared in float64).

    Returns ``max_abs``, ``rel_l2`` (``||got - ref|| / ||ref||``), ``cosine`` (flattened), ``cosine_min_row`` (the
    worst cosine over the rows of the last dimension) and, with ``logits``, ``argmax_agreement`` (the fraction of
    rows whose argmax is the same).

    Raises:
        ValueError: the shapes differ.
    """
    if got.shape != ref.shape:
        raise ValueError(f"error_stats: shapes differ, {tuple(got.shape)} vs {tuple(ref.shape)}")
    g, r = got.detach().double().cpu(), ref.detach().double().cpu()
    rows_g, rows_r = g.reshape(-1, g.shape[-1]), r.reshape(-1, r.shape[-1])
    out = {
        "max_abs": float((g - r).abs().max()),
        "rel_l2": float((g - r).norm() / r.norm().clamp_min(1e-30)),
        "cosine": float(F.cosine_similarity(g.flatten(), r.flatten(), dim=0)),
        "cosine_min_row": float(F.cosine_similarity(rows_g, rows_r, dim=1).min()),
    }
    if logits:
        out["argmax_agreement"] = float((rows_g.argmax(-1) == rows_r.argmax(-1)).double().mean())
    return out


def _load_fixture(golden_dir: Path, name: str):
    tensors = load_file(str(golden_dir / f"{name}.safetensors"))
    meta = json.loads((golden_dir / f"{name}.json").read_text())
    state = {k: v for k, v in tensors.items() if not k.startswith(("input.", "output."))}
    inputs = {k[len("input.") :]: v for k, v in tensors.items() if k.startswith("input.")}
    expected = {k[len("output.") :]: v for k, v in tensors.items() if k.startswith("output.")}
    return meta, state, inputs, expected


def _agent_outputs(agent, inputs: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    kwargs = {name: inputs[f"forward.{name}"] for name in GOLDEN_FORWARD_INPUTS}
    with torch.no_grad():
        out = agent(**kwargs, return_recon_image_embeds=True)
    return {"logits": out["logits"].float(), "regressed_features": out["recon_image_embeds"].float()}


def _vit_storage(meta, state, storage: str):
    eps = (meta.get("derived") or {}).get("vit_layernorm_eps")
    model = QwenVisualTokenizer(vit_config_from_constructor_kwargs(meta["constructor_kwargs"], layernorm_eps=eps))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model = model.float().eval()
    quant.store_weights(model, storage)
    return model


def golden_quality(golden_dir: Path = GOLDEN) -> Dict:
    """fp8 / int8 against fp32 on the golden agent (``forward``: logits, regressed features) and ViT (features).

    Returns ``{storage: {"agent": {output: {"vs_fp32": stats, "vs_official": stats}}, "vit": {...}}}`` with
    :func:`error_stats` dicts, plus ``layers`` (how many layers each storage converted) and ``fp32_vs_official``
    (our fp32 against the official outputs: the floor under every number).

    Raises:
        FileNotFoundError: ``golden_dir`` lacks ``agent_public`` / ``vit_public``.
    """
    golden_dir = Path(golden_dir)
    for name in ("agent_public", "vit_public"):
        if not (golden_dir / f"{name}.safetensors").is_file():
            raise FileNotFoundError(
                f"golden fixture {name}.safetensors not found in {golden_dir}; point --golden at the reference "
                "set's golden/ folder (or set SEEDSTORY_REFERENCE)."
            )
    a_meta, a_state, a_in, a_exp = _load_fixture(golden_dir, "agent_public")
    v_meta, v_state, v_in, v_exp = _load_fixture(golden_dir, "vit_public")
    official = {
        "agent": {
            "logits": a_exp["forward.intermediate.logits"],
            "regressed_features": a_exp["forward.recon_image_embeds"],
        },
        "vit": {"features": v_exp["features"]},
    }
    torch.manual_seed(0)
    ref_agent = load_golden_agent(a_meta, a_state)
    ref = {
        "agent": _agent_outputs(ref_agent, a_in),
        "vit": {"features": golden_vit(v_meta, v_state, v_in)["features"]},
    }
    result: Dict = {
        "fp32_vs_official": {
            part: {k: error_stats(ref[part][k], official[part][k], logits=k == "logits") for k in ref[part]}
            for part in ref
        }
    }
    for storage in STORAGES:
        agent = copy.deepcopy(ref_agent)
        n_agent = agent.quantize_weights(storage)
        vit = _vit_storage(v_meta, v_state, storage)
        n_vit = sum(1 for m in vit.modules() if quant.storage_of(m) == storage)
        with torch.no_grad():
            got = {"agent": _agent_outputs(agent, a_in), "vit": {"features": vit(v_in["pixel_values"].float())}}
        result[storage] = {
            part: {
                k: {
                    "vs_fp32": error_stats(got[part][k], ref[part][k], logits=k == "logits"),
                    "vs_official": error_stats(got[part][k], official[part][k], logits=k == "logits"),
                }
                for k in got[part]
            }
            for part in got
        }
        result[storage]["layers"] = {"agent": n_agent, "vit": n_vit}
    return result


def _tiny_batch(bundle):
    builder = StorySampleBuilder(bundle.tokenizer)
    samples, images, all_frames = [], [], []
    for k in range(TINY_STORIES):
        story = mini.generate_story(TINY_SEED, k, frames=TINY_K + 2)
        frames = mini.render_story(story, size=64)
        sample = builder.build(story["captions"], TINY_K)
        samples.append(sample)
        all_frames.extend(frames)
        with torch.no_grad():
            images.append(bundle.visual_tokenizer.encode_images(frames).float())
    return collate(samples, builder.pad_id, images=images), all_frames


def tiny_quality(model_dir: Path = TINY) -> Optional[Dict]:
    """fp8 / int8 against fp32 on the trained tiny model: teacher-forced agent forwards over held-out stories
    (logits, regressed features) and the ViT features of their frames. None when ``model_dir`` holds no bundle.

    Returns ``{storage: {"agent": {output: stats}, "vit": {"features": stats}, "layers": ...}}`` (vs fp32)."""
    if not (Path(model_dir) / "seedstory_config.json").is_file():
        return None
    bundle = SeedStoryBundle.load(Path(model_dir), dtype=torch.float32)
    batch, frames = _tiny_batch(bundle)
    with torch.no_grad():
        ref = {"agent": _agent_outputs(bundle.agent.eval(), _forward_inputs(batch))}
        ref["vit"] = {"features": bundle.visual_tokenizer.encode_images(frames).float()}
    result: Dict = {}
    for storage in STORAGES:
        agent, vit = copy.deepcopy(bundle.agent), copy.deepcopy(bundle.visual_tokenizer)
        n_agent = agent.quantize_weights(storage)
        n_vit = quant.store_weights(vit, storage)
        with torch.no_grad():
            got = {"agent": _agent_outputs(agent, _forward_inputs(batch))}
            got["vit"] = {"features": vit.encode_images(frames).float()}
        result[storage] = {
            part: {k: error_stats(got[part][k], ref[part][k], logits=k == "logits") for k in got[part]} for part in got
        }
        result[storage]["layers"] = {"agent": n_agent, "vit": n_vit}
    return result


def _forward_inputs(batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {f"forward.{k}": batch[k] for k in GOLDEN_FORWARD_INPUTS}


def main(argv=None) -> int:
    """``python -m bench.quant_quality``: measure, write the JSON, print it. Returns 0."""
    parser = argparse.ArgumentParser(prog="python -m bench.quant_quality", description=__doc__.split("\n")[0])
    parser.add_argument("--golden", type=Path, default=GOLDEN, help="the golden fixtures folder")
    parser.add_argument("--model", type=Path, default=TINY, help="the tiny model bundle")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    result = {
        "what": "weight storages against fp32 weights, fp32 compute, CPU (docs/models.md 'Weight storage')",
        "torch": torch.__version__,
        "golden": golden_quality(args.golden),
        "tiny": tiny_quality(args.model),
        "tiny_stories": {"seed": TINY_SEED, "stories": TINY_STORIES, "k_given_images": TINY_K},
    }
    result["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
