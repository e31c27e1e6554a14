"""Peak VRAM per phase of full-size SEED-Story-George, per weight storage, computed on the meta device (no weights,
no GPU): the table of docs/models.md "Memory per card".

For each weight storage (``default`` = fp16, ``fp8_e4m3fn``, ``int8``; the UNet has no int8 and keeps fp16 there):

* **weights** of each phase's models, built at the official sizes on the meta device (the parameter counts are
  checked against the official manifests, ``/work/shared/reference/manifests``) and counted as the storage keeps
  them (:func:`seedstory_core.quant.weight_blocks`: 1 byte per stored weight plus a float32 scale per output row;
  everything else fp16);
* **KV cache** of the agent after a 50-frame story under the default cache policy
  (:func:`bench.full_size.step_costs`, the engine's own eviction rule), fp16;
* **activations**: the largest set of live tensors during one forward on the meta device, tracked by a
  ``TorchDispatchMode`` (ViT: one 448 px picture; agent: one 66-token image pass over that cache, counted from
  the shapes because transformers' mask code cannot run on the meta device;
  de-tokenizer: one SD-XL UNet step at 1024x1024 with classifier-free guidance, batch 2). Attention on the meta
  device takes PyTorch's math path, which materialises every attention matrix, so these are upper bounds: the
  flash / memory-efficient kernels a GPU uses need less.

Peak of a phase = weights + KV (agent) + activations; ComfyUI keeps its own reserve on top. NOT measured on a GPU
(none was lent when this was written): ``bench/gpu_george.py`` is the script that measures it on a GPU.

``python -m bench.vram_table [--out bench/results/vram_per_card.csv]``
"""

from __future__ import annotations

import argparse
import json
import sys
import weakref
from pathlib import Path
from typing import Dict, List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from bench.full_size import step_costs
from bench.report import write_csv
from seedstory_core import quant
from seedstory_core.agent import SeedStoryAgent
from seedstory_core.config import official_config
from seedstory_core.detokenizer import SeedStoryDetokenizer
from seedstory_core.story import default_policy
from seedstory_core.visual_tokenizer import QwenVisualTokenizer

#: the official weight manifests (tensor shapes); the parameter counts are checked against them when present
MANIFESTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "manifests"
GB = 1e9
COLUMNS = (
    "storage",
    "phase",
    "weights_gb",
    "kv_gb",
    "activations_gb",
    "peak_gb",
    "fits_24gb",
    "fits_16gb",
    "fits_12gb",
)


class LivePeak(TorchDispatchMode):
    """Largest total of live meta-device tensor storages seen while active (bytes in ``peak``)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.seen = set()

    def _track(self, t):
        # a tensor object owns its storage unless it is a view (``_base``); freed when the object dies
        if isinstance(t, torch.Tensor) and t.device.type == "meta" and t._base is None and id(t) not in self.seen:
            n = t.untyped_storage().nbytes()
            self.seen.add(id(t))
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, id(t), n)
        return t

    def _free(self, key, n):
        self.live -= n
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map(self._track, out)
        return out


def stored_bytes(model: torch.nn.Module, storage: str, dtype_bytes: int = 2) -> int:
    """Bytes of ``model``'s tensors when its weight blocks are stored as ``storage`` (meta-safe)."""
    stored = set()
    extra = 0
    if storage != quant.DEFAULT:
        convs = storage == quant.FP8 and hasattr(model, "unet")
        for block in quant.weight_blocks(model):
            for name, m in block.named_modules():
                if "lora_" in name or "modules_to_save" in name:
                    continue
                if type(m) in (torch.nn.Linear, quant.CastLinear) or (
                    convs and type(m) in (torch.nn.Conv2d, quant.CastConv2d)
                ):
                    stored.add(id(m.weight))
                    extra += m.weight.shape[0] * 4  # one float32 scale per output row
    total, seen = extra, set()
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * (1 if id(t) in stored else dtype_bytes)
    return total


def _manifest_params(name: str) -> int:
    data = json.loads((MANIFESTS / f"{name}.json").read_text())
    total = 0
    for v in data.values():
        shape = v["shape"] if isinstance(v, dict) else v
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


@torch.no_grad()
def _activations(fn) -> int:
    peak = LivePeak()
    with peak:
        fn()
    return peak.peak


def phase_rows(frame: int = 50, sentence_tokens: int = 24) -> List[Dict]:
    """One row per (storage, phase) with weights, KV, activations and peak in GB (10^9 bytes)."""
    cfg = official_config()
    h = torch.float16
    with torch.device("meta"):
        vit = QwenVisualTokenizer(cfg.visual_tokenizer).to(h)
    agent = SeedStoryAgent.build(cfg.agent, meta=True).to(h)
    detok = SeedStoryDetokenizer.build(cfg.detokenizer, meta=True).to(h)
    checks = {"manifest_vit": vit, "manifest_agent": agent}
    notes = {}
    for name, model in checks.items():
        if (MANIFESTS / f"{name}.json").is_file():
            notes[name] = (_manifest_params(name), sum(p.numel() for p in model.parameters()))
    size = cfg.visual_tokenizer.image_size
    vit_act = _activations(lambda: vit(torch.empty(1, 3, size, size, device="meta", dtype=h)))
    unet = detok.unet
    ucfg = unet.config
    lat = torch.empty(2, ucfg.in_channels, 128, 128, device="meta", dtype=h)
    enc = torch.empty(2, 77, ucfg.cross_attention_dim, device="meta", dtype=h)
    added = {
        "text_embeds": torch.empty(2, 1280, device="meta", dtype=h),
        "time_ids": torch.empty(2, 6, device="meta", dtype=h),
    }
    unet_act = _activations(
        lambda: unet(lat, torch.tensor([999, 999], device="meta"), encoder_hidden_states=enc, added_cond_kwargs=added)
    )
    pol = default_policy()
    kv_tokens = step_costs(
        pol.kind,
        frame,
        sentence_tokens=sentence_tokens,
        window_images=pol.window_images,
        max_sink_images=pol.max_sink_images,
    )["kv_tokens"]
    llm = cfg.agent.llm
    kv = 2 * llm.num_hidden_layers * llm.num_key_value_heads * (llm.hidden_size // llm.num_attention_heads) * 2
    kv_bytes = kv * kv_tokens
    # agent activations of one 66-token image pass on top of the cache, counted (transformers' mask code cannot
    # run on the meta device): fp16 attention scores of one layer (math path) + the MLP's three intermediates +
    # a few hidden-state copies + float32 logits of the pass
    q = 66
    agent_act = (
        llm.num_attention_heads * q * (kv_tokens + q) * 2
        + 3 * q * llm.intermediate_size * 2
        + 4 * q * llm.hidden_size * 2
        + q * llm.vocab_size * 4
    )
    vae_bytes = sum(p.numel() * 2 for p in detok.vae.parameters())
    rows = []
    for storage in quant.WEIGHT_STORAGES:
        unet_storage = storage if storage in quant.UNET_WEIGHT_STORAGES else quant.DEFAULT
        phases = {
            "vit": (stored_bytes(vit, storage), 0, vit_act),
            "agent (50 frames)": (stored_bytes(agent, storage), kv_bytes, agent_act),
            "de-tokenizer 1024x1024 CFG": (stored_bytes(detok, unet_storage) + vae_bytes, 0, unet_act),
        }
        for phase, (w, k, a) in phases.items():
            peak = (w + k + a) / GB
            rows.append(
                dict(
                    storage=storage if phase != "de-tokenizer 1024x1024 CFG" else unet_storage,
                    phase=phase,
                    weights_gb=round(w / GB, 2),
                    kv_gb=round(k / GB, 2),
                    activations_gb=round(a / GB, 2),
                    peak_gb=round(peak, 2),
                    fits_24gb=peak < 24 * 0.9,
                    fits_16gb=peak < 16 * 0.9,
                    fits_12gb=peak < 12 * 0.9,
                )
            )
    rows.append(dict(storage="(check)", phase=f"manifest vs meta params: {notes}; kv tokens {kv_tokens}"))
    return rows


def main(argv=None) -> int:
    """``python -m bench.vram_table``: writes the CSV (default bench/results/vram_per_card.csv) and prints it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/vram_per_card.csv")
    args = ap.parse_args(argv)
    rows = phase_rows()
    write_csv(Path(args.out), rows, COLUMNS)
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
