"""The official George workflow on a real ComfyUI server on a GPU, with random full-size weights: peak VRAM per node
and seconds per frame at ``weight_dtype`` default (fp16) and fp8_e4m3fn, VRAM capped at 24 / 16 / 12 GB (issue 28,
item 4; docs/models.md "Memory per card"). Written for a machine with one NVIDIA GPU; **not run yet** (no GPU was
lent when it was written). ``--dry-run`` (what the tests run, on the CPU) builds and checks the whole plan without
writing weights or starting anything.

Steps, one command (``python -m bench.gpu_george --comfy-dir .comfyui/ComfyUI-0.30.0``), about 10 minutes on an
H100 with the defaults:

1. **Random full-size weights in the official file layout**, every tensor named and shaped as in the official
   manifests (``/work/shared/reference/manifests``): ``qwen_vit_G.pt`` (``manifest_vit``), the agent's released
   ``george_sft/pytorch_model.bin`` (``manifest_agent_trainable``), a ``Llama-2-7b-hf`` folder (the frozen LLaMA
   tensors of ``manifest_agent``, Hugging Face names, 32000 rows) with its ``config.json``, the de-tokenizer
   adapter ``pytorch_model.bin`` (``manifest_detok_resampler`` + ``manifest_detok_unet_kv_DERIVED``), an SD-XL
   diffusers folder (UNet + VAE from ``seedstory_core/configs/sdxl_base``, random) and a 32000-piece LLaMA-style
   tokenizer with the 66 image tokens (:func:`seedstory_core.tiny.build_tiny_tokenizer`). fp16, N(0, 0.02);
   norm weights 1, biases 0. The official files are pickles; these are written with ``torch.save`` of plain
   tensors and read back by the loaders with ``weights_only=True``.
2. **Converted by our converter**: ``python -m seedstory_core.convert {vit,agent,detokenizer}`` to safetensors,
   and the workflow points at the converted files.
3. **Runs**: for each weight storage and each cap, a fresh ComfyUI (``main.py`` without ``--cpu``) with
   ``--reserve-vram (total - cap)`` so its model management plans for the cap (partial loading included), and a
   hard cap through ``torch.cuda.set_per_process_memory_fraction(cap / total)`` set by a prestartup script. A probe
   wraps ComfyUI's ``execution.get_output_data`` and records, per node, its seconds and
   ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` (peak since the node started). The George
   workflow (``workflows/api/seedstory_official_george.json``) is queued with ``story_steps`` / ``diffusion_steps``
   / size from the options; seconds per frame = Generate Story's seconds / story_steps.
4. **Output**: ``bench/results/gpu_george.json`` (every node of every run, plus errors such as an out-of-memory
   at a cap) and ``bench/results/gpu_george.csv`` (one row per run), written after each run so a time-out keeps
   what finished.

Options: ``--caps 24,16,12``, ``--storages default,fp8_e4m3fn``, ``--story-steps 2``, ``--diffusion-steps 20``,
``--size 1024``, ``--work DIR`` (weights, ~32 GB on disk), ``--budget-s 560`` (no new run starts after that),
``--dry-run``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors.torch import save_file

from seedstory_core.tiny import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = Path(os.environ.get("SEEDSTORY_REFERENCE", REPO.parent / "shared" / "reference")) / "manifests"
WORKFLOW = REPO / "workflows" / "api" / "seedstory_official_george.json"
START_PNG = REPO / "workflows" / "assets" / "seedstory_start.png"
OUT_JSON = REPO / "bench" / "results" / "gpu_george.json"
OUT_CSV = REPO / "bench" / "results" / "gpu_george.csv"
GB = 1e9
LLAMA_PREFIX = "llm.base_model.model."
LLAMA2_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    torch_dtype="float16",
    architectures=["LlamaForCausalLM"],
    model_type="llama",
    bos_token_id=1,
    eos_token_id=2,
)
#: where each random file goes under ``models/`` (the George workflow's defaults) and what it holds
FILES = {
    "vit": ("seed_story/visual_tokenizer/qwen_vit_G.pt", ("manifest_vit.json",)),
    "agent": ("seed_story/agent/george_sft/pytorch_model.bin", ("manifest_agent_trainable.json",)),
    "detokenizer": (
        "seed_story/detokenizer/detokenizer_george_adapted/pytorch_model.bin",
        ("manifest_detok_resampler.json", "manifest_detok_unet_kv_DERIVED.json"),
    ),
}
#: converted (safetensors) files the workflow loads, under ``models/``, and the converter's kind for each
CONVERTED = {
    "vit": "seed_story/visual_tokenizer/qwen_vit_G_st",
    "agent": "seed_story/agent/george_sft_st",
    "detokenizer": "seed_story/detokenizer/george_adapted_st",
}
LLAMA_DIR = "seed_story/llm/Llama-2-7b-hf"
TOKENIZER_DIR = "seed_story/tokenizer/cvlm_llama2_tokenizer"
SDXL_DIR = "seed_story/sdxl/sdxl_random"

#: the probe ComfyUI loads from custom_nodes: a hard VRAM cap at start-up, per-node peak VRAM and seconds
PROBE_PRESTARTUP = """
import os, torch
cap = float(os.environ.get("SEEDSTORY_VRAM_CAP_GB", "0"))
if cap > 0 and torch.cuda.is_available():
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 1e9 / total))
"""
PROBE_INIT = """
import json, os, time, torch
import execution
NODE_CLASS_MAPPINGS = {}
_original = execution.get_output_data

async def get_output_data(prompt_id, unique_id, obj, *args, **kwargs):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0, error = time.perf_counter(), None
    try:
        return await _original(prompt_id, unique_id, obj, *args, **kwargs)
    except BaseException as e:
        error = repr(e)[:300]
        raise
    finally:
        torch.cuda.synchronize()
        rec = dict(node=unique_id, class_type=type(obj).__name__, seconds=time.perf_counter() - t0,
                   peak_allocated=torch.cuda.max_memory_allocated(), peak_reserved=torch.cuda.max_memory_reserved(),
                   error=error)
        with open(os.environ["SEEDSTORY_VRAM_LOG"], "a") as f:
            f.write(json.dumps(rec) + "\\n")

execution.get_output_data = get_output_data
"""


def load_manifest(name: str) -> Dict[str, List[int]]:
    """``{key: shape}`` of an official manifest in :data:`MANIFESTS`.

    Raises:
        FileNotFoundError: the manifest is missing (says where it was looked for).
    """
    path = MANIFESTS / name
    if not path.is_file():
        raise FileNotFoundError(f"official manifest {name} not found in {MANIFESTS}; set SEEDSTORY_REFERENCE")
    data = json.loads(path.read_text())
    data = data.get("trainable_params", data)  # the released agent file holds its trainable tensors only
    return {k: v for k, v in data.items() if isinstance(v, list) and all(isinstance(s, int) for s in v)}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def llama_shapes() -> Dict[str, List[int]]:
    """The frozen LLaMA-2-7B tensors in Hugging Face names (``model.layers.N...``, ``lm_head.weight``), from
    ``manifest_agent`` (LoRA tensors dropped; embeddings and lm_head at the base vocabulary of 32000 rows)."""
    out = {}
    for key, shape in load_manifest("manifest_agent.json").items():
        if not key.startswith(LLAMA_PREFIX) or "lora_" in key:
            continue
        name = key[len(LLAMA_PREFIX) :].replace("modules_to_save.default.", "").replace("original_module.", "")
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            shape = [LLAMA2_7B["vocab_size"], shape[1]]
        out[name] = list(shape)
    return out


def weight_plan() -> Dict[str, Dict]:
    """What step 1 writes: per file, its path under ``models/``, tensor count, parameters and fp16 bytes."""
    plan = {}
    for kind, (path, manifests) in FILES.items():
        shapes = {}
        for m in manifests:
            shapes.update(load_manifest(m))
        plan[kind] = {"path": path, "tensors": len(shapes), "params": sum(map(_numel, shapes.values()))}
    llama = llama_shapes()
    plan["llm"] = {"path": LLAMA_DIR, "tensors": len(llama), "params": sum(map(_numel, llama.values()))}
    for entry in plan.values():
        entry["fp16_gb"] = round(entry["params"] * 2 / GB, 2)
    return plan


def workflow(storage: str, *, story_steps: int, diffusion_steps: int, size: int) -> dict:
    """The George API workflow with the converted files, ``weight_dtype`` = ``storage`` on the three loaders, and
    the run's story length, diffusion steps and size.

    Raises:
        KeyError: the workflow lost a node this needs (names it).
    """
    prompt = json.loads(WORKFLOW.read_text())
    by_class = {v["class_type"]: k for k, v in prompt.items()}
    need = ("SeedStoryVisualTokenizerLoader", "SeedStoryAgentLoader", "SeedStoryDetokenizerLoader")
    for cls in need + ("SeedStoryGenerateStory",):
        if cls not in by_class:
            raise KeyError(f"{WORKFLOW.name} has no {cls} node (found {sorted(by_class)})")
    vit, agent, detok = (prompt[by_class[c]]["inputs"] for c in need)
    vit.update(vit_name=CONVERTED["vit"].split("/", 2)[2] + "/model.safetensors", weight_dtype=storage)
    agent.update(agent_name=CONVERTED["agent"].split("/", 2)[2] + "/model.safetensors", weight_dtype=storage)
    detok.update(adapter_name=CONVERTED["detokenizer"].split("/", 2)[2] + "/model.safetensors")
    detok.update(sdxl_base=SDXL_DIR, weight_dtype=storage)
    gen = prompt[by_class["SeedStoryGenerateStory"]]["inputs"]
    gen.update(story_steps=story_steps, diffusion_steps=diffusion_steps, width=size, height=size)
    return prompt


def run_plan(storages, caps, total_gb: Optional[float], **wf) -> List[Dict]:
    """One entry per (storage, cap): the extra ``main.py`` arguments, the environment and the workflow."""
    runs = []
    for storage in storages:
        for cap in caps:
            reserve = max(0.0, (total_gb or cap) - cap)
            runs.append(
                {
                    "storage": storage,
                    "cap_gb": cap,
                    "args": ["--reserve-vram", f"{reserve:.1f}"],
                    "env": {"SEEDSTORY_VRAM_CAP_GB": str(cap)},
                    "prompt": workflow(storage, **wf),
                }
            )
    return runs


# ------------------------------------------------------------------------------------------ step 1 and 2: weights
def _random_state(shapes: Dict[str, List[int]], device: str):
    gen = torch.Generator(device=device).manual_seed(0)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("bias"):
            t = torch.zeros(shape, dtype=torch.float16, device=device)
        elif len(shape) == 1 and ("norm" in key or "ln" in key):
            t = torch.ones(shape, dtype=torch.float16, device=device)
        else:
            t = torch.randn(shape, generator=gen, dtype=torch.float16, device=device).mul_(0.02)
        out[key] = t.cpu()
    return out


def build_weights(models: Path, device: str) -> None:
    """Step 1 (see the module docstring): random full-size files in the official layout under ``models``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel  # lazy: heavy (pyproject.toml)

    for kind, (path, manifests) in FILES.items():
        shapes = {}
        for m in manifests:
            shapes.update(load_manifest(m))
        (models / path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(_random_state(shapes, device), models / path)
    llm = models / LLAMA_DIR
    llm.mkdir(parents=True, exist_ok=True)
    (llm / "config.json").write_text(json.dumps(LLAMA2_7B, indent=1))
    shapes, shard, index, n = llama_shapes(), {}, {}, 0
    for key in list(shapes):
        shard[key] = _random_state({key: shapes[key]}, device)[key]
        if sum(t.numel() for t in shard.values()) * 2 > 4 * GB or key == list(shapes)[-1]:
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(llm / name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, n = {}, n + 1
    (llm / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    tok = build_tiny_tokenizer(["George and his family go to the beach on a sunny day."], vocab_size=32000)
    tok.save(models / TOKENIZER_DIR)
    sdxl, cfg = models / SDXL_DIR, REPO / "seedstory_core" / "configs" / "sdxl_base"
    UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet")).half().save_pretrained(
        sdxl / "unet"
    )
    AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae")).half().save_pretrained(sdxl / "vae")
    shutil.copytree(cfg / "scheduler", sdxl / "scheduler", dirs_exist_ok=True)
    shutil.copy(cfg / "model_index.json", sdxl / "model_index.json")


def convert_weights(models: Path) -> None:
    """Step 2: the official pickles to safetensors with ``python -m seedstory_core.convert``."""
    for kind, out in CONVERTED.items():
        src = models / FILES[kind][0]
        cmd = [sys.executable, "-m", "seedstory_core.convert", kind, str(src), str(models / out), "--overwrite"]
        cmd += ["--shard-size", "100GB"]  # one model.safetensors per component
        subprocess.run(cmd, check=True, cwd=REPO)


# ------------------------------------------------------------------------------------------ step 3: the runs
def start_server(comfy_dir: Path, scratch: Path, args: List[str], env: Dict[str, str], timeout: float = 300.0):
    """A ComfyUI on the GPU (no ``--cpu``) with this pack (linked) and the probe in ``scratch/custom_nodes`` and
    ``scratch/models`` as its models folder. Returns (process, base_url, log path).

    Raises:
        RuntimeError: the server did not answer within ``timeout`` s (the log's tail in the message).
    """
    nodes = scratch / "custom_nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    if not (nodes / "seedstory").exists():
        (nodes / "seedstory").symlink_to(REPO, target_is_directory=True)  # the pack, as a linked install
    probe = nodes / "seedstory_vram_probe"
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "prestartup_script.py").write_text(PROBE_PRESTARTUP)
    (probe / "__init__.py").write_text(PROBE_INIT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = scratch / "comfyui.log"
    cmd = [sys.executable, "-u", "main.py", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch"]
    cmd += ["--base-directory", str(scratch), *args]
    proc = subprocess.Popen(
        cmd, cwd=comfy_dir, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/object_info/SaveImage", timeout=5).read()
            return proc, url, log
        except OSError:
            time.sleep(1)
    proc.terminate()
    raise RuntimeError(f"ComfyUI did not start ({' '.join(args)}):\n{log.read_text()[-3000:]}")


def stop_server(proc) -> None:
    """Stop a server from :func:`start_server` (terminate, then kill after 20 s)."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def queue_and_wait(url: str, prompt: dict, timeout: float) -> tuple:
    """``POST /prompt``, then poll ``/history/<id>`` until it is done. Returns (status, error messages or None).

    Raises:
        TimeoutError: not done within ``timeout`` s. urllib.error.HTTPError: the prompt was refused (its answer
            says why).
    """
    req = urllib.request.Request(
        url + "/prompt", data=json.dumps({"prompt": prompt}).encode(), headers={"Content-Type": "application/json"}
    )
    prompt_id = json.loads(urllib.request.urlopen(req, timeout=60).read())["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        entry = json.loads(urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=60).read()).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            st = entry["status"]
            errors = [m for m in st.get("messages", []) if m[0] == "execution_error"]
            return st.get("status_str", "unknown"), (json.dumps(errors)[:3000] if errors else None)
        time.sleep(2)
    raise TimeoutError(f"prompt {prompt_id} not done after {timeout} s")


def run_one(comfy_dir: Path, work: Path, run: Dict, story_steps: int) -> Dict:
    """One (storage, cap) run on a fresh server; returns the per-node records and seconds per frame."""
    scratch = work / f"server_{run['storage']}_{run['cap_gb']}"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "input").mkdir(parents=True)
    (scratch / "models").symlink_to(work / "models", target_is_directory=True)
    shutil.copy(START_PNG, scratch / "input" / "seedstory_start.png")
    vram_log = scratch / "vram.jsonl"
    env = {**run["env"], "SEEDSTORY_VRAM_LOG": str(vram_log)}
    proc, url, log = start_server(comfy_dir, scratch, run["args"], env)
    t0 = time.time()
    try:
        status, error = queue_and_wait(url, run["prompt"], timeout=1800)
    except Exception as e:  # a refused prompt or a time-out: recorded, the next run goes on
        status, error = "error", repr(e)[:2000]
    finally:
        stop_server(proc)
    nodes = [json.loads(line) for line in vram_log.read_text().splitlines()] if vram_log.is_file() else []
    gen = [n for n in nodes if n["class_type"] == "SeedStoryGenerateStory" and not n["error"]]
    return {
        "storage": run["storage"],
        "cap_gb": run["cap_gb"],
        "args": run["args"],
        "status": status,
        "error": error,
        "wall_s": round(time.time() - t0, 1),
        "seconds_per_frame": round(gen[0]["seconds"] / story_steps, 2) if gen else None,
        "peak_gb": round(max((n["peak_reserved"] for n in nodes), default=0) / GB, 2),
        "nodes": nodes,
        "log_tail": log.read_text(errors="replace")[-1500:] if status != "success" else "",
    }


def write_results(results: List[Dict], meta: Dict, out_json: Path, out_csv: Path) -> None:
    """The JSON (everything) and the CSV (one row per run)."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps({**meta, "runs": results}, indent=1) + "\n")
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["storage", "cap_gb", "status", "seconds_per_frame", "peak_reserved_gb", "per_node_peak_gb"])
        for r in results:
            per_node = ";".join(f"{n['class_type']}={n['peak_reserved'] / GB:.2f}" for n in r["nodes"])
            w.writerow([r["storage"], r["cap_gb"], r["status"], r["seconds_per_frame"], r["peak_gb"], per_node])


def main(argv=None) -> int:
    """``python -m bench.gpu_george``: see the module docstring. Returns 0 (1 when a run failed)."""
    p = argparse.ArgumentParser(prog="python -m bench.gpu_george", description=__doc__.split("\n")[0])
    p.add_argument("--comfy-dir", type=Path, default=REPO / ".comfyui" / "ComfyUI-0.30.0")
    p.add_argument("--work", type=Path, default=Path("/tmp/seedstory_gpu_george"))
    p.add_argument("--caps", default="24,16,12", help="VRAM caps in GB, comma-separated")
    p.add_argument("--storages", default="default,fp8_e4m3fn")
    p.add_argument("--story-steps", type=int, default=2)
    p.add_argument("--diffusion-steps", type=int, default=20)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--budget-s", type=float, default=560.0, help="no new run starts after this many seconds")
    p.add_argument("--out", type=Path, default=OUT_JSON)
    p.add_argument("--dry-run", action="store_true", help="print the plan as JSON; write and start nothing")
    a = p.parse_args(argv)
    t0 = time.time()
    caps = [float(c) for c in a.caps.split(",")]
    storages = a.storages.split(",")
    wf = dict(story_steps=a.story_steps, diffusion_steps=a.diffusion_steps, size=a.size)
    total_gb = None
    if not a.dry_run:
        if not torch.cuda.is_available():
            raise SystemExit("bench.gpu_george needs a CUDA GPU (use --dry-run to see the plan on a CPU).")
        total_gb = torch.cuda.get_device_properties(0).total_memory / GB
    runs = run_plan(storages, caps, total_gb, **wf)
    plan = {"weights": weight_plan(), "runs": [{k: v for k, v in r.items() if k != "prompt"} for r in runs]}
    if a.dry_run:
        plan["prompts"] = [r["prompt"] for r in runs]
        print(json.dumps(plan, indent=1))
        return 0
    meta = {"device": torch.cuda.get_device_name(0), "total_gb": round(total_gb, 1), "options": vars(a) | wf}
    meta["options"] = {k: str(v) for k, v in meta["options"].items()}
    models = a.work / "models"
    if not (models / CONVERTED["detokenizer"] / "model.safetensors").is_file():
        build_weights(models, "cuda")
        convert_weights(models)
    meta["build_s"] = round(time.time() - t0, 1)
    results = []
    for run in runs:
        if time.time() - t0 > a.budget_s:
            results.append({"storage": run["storage"], "cap_gb": run["cap_gb"], "status": "not run (budget)"})
            continue
        results.append(run_one(a.comfy_dir, a.work, run, a.story_steps))
        write_results([r for r in results if "nodes" in r], meta, a.out, a.out.with_suffix(".csv"))
    print(json.dumps([{k: v for k, v in r.items() if k != "nodes"} for r in results], indent=1))
    return 0 if all(r.get("status") == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
