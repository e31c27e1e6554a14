"""Golden parity CLI: run this project's modules on official test vectors and compare.

``python -m seedstory_core.golden run FIXTURE_DIR OUT_DIR`` — for every fixture in FIXTURE_DIR (a
``<name>.json`` sidecar + ``<name>.safetensors`` in the format of golden/README.md), build this project's module
from the sidecar, load the fixture's state dict (official key names, mapped through the documented key maps),
run its ``input.*`` tensors and write ``OUT_DIR/<name>.safetensors`` holding ``output.*`` tensors under the
fixture's own names. ``output.*`` tensors of the fixture are never read by ``run``.

``python -m seedstory_core.golden check FIXTURE_DIR [--out OUT_DIR]`` — run, then compare each produced output with
the fixture's: floats with ``torch.allclose(rtol, atol)`` (the sidecar's ``tolerance.recommended_rtol/atol``,
default 1e-4 / 1e-5), integers and booleans exactly. Prints the max abs error per output and exits 1 when any
output is outside tolerance or missing (2 on unusable input).

Fixture kinds (``fixture`` field of the sidecar): ``vit``, ``resampler_in``, ``resampler_out``,
``detok_resampler``, ``agent`` (forward losses and the official greedy ``generate`` through the story engine's
decoding primitives). Sidecars without tensors (``sink_ranges``) are skipped by ``run``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

Tensors = Dict[str, torch.Tensor]


def _split(tensors: Tensors) -> Tuple[Tensors, Tensors]:
    state = {k: v for k, v in tensors.items() if not k.startswith(("input.", "output."))}
    inputs = {k[len("input."):]: v for k, v in tensors.items() if k.startswith("input.")}
    return state, inputs


def run_resampler(meta: dict, state: Tensors, inputs: Tensors) -> Tensors:
    """resampler_in / resampler_out: ``y = QwenResampler(x)`` (spec §2.3)."""
    from .config import ResamplerConfig
    from .resampler import QwenResampler

    kwargs = {k: v for k, v in meta["constructor_kwargs"].items() if k in ("grid_size", "embed_dim", "num_heads", "kv_dim")}
    module = QwenResampler(ResamplerConfig(**kwargs)).float().eval()
    module.load_state_dict(state, strict=True)
    with torch.no_grad():
        return {"y": module(inputs["x"].float())}


def run_vit(meta: dict, state: Tensors, inputs: Tensors) -> Tensors:
    from .visual_tokenizer import golden_vit

    return golden_vit(meta, state, inputs)


def run_detok_resampler(meta: dict, state: Tensors, inputs: Tensors) -> Tensors:
    from .detok_resampler import golden_detok_resampler

    return golden_detok_resampler(meta, state, inputs)


def run_agent(meta: dict, state: Tensors, inputs: Tensors) -> Tensors:
    """Agent forward (losses, intermediates) and the official greedy generate (spec §2.5, §2.6)."""
    from .agent import golden_agent_forward, load_golden_agent
    from .generation import ImageTokens, official_generate

    out = dict(golden_agent_forward(meta, state, inputs)) if any(k.startswith("forward.") for k in inputs) else {}
    if any(k.startswith("generate.") for k in inputs):
        agent = load_golden_agent(meta, state)
        tokens = meta["tokens"]
        n_img = int(meta["generate"]["num_img_gen_tokens"])
        boi = int(tokens.get("BOI <img>", meta["base_vocab"]))
        eoi = int(tokens.get("EOI </img>", boi + 1))
        first_img = int(tokens.get("IMG <img_00000>..", [boi + 2])[0])
        image = ImageTokens(boi=boi, eoi=eoi, img=tuple(range(first_img, first_img + n_img)))
        cmp = inputs.get("generate.embeds_cmp_mask")
        feats = inputs.get("generate.image_embeds")
        if feats is not None and cmp is not None:
            feats = feats[cmp.bool()]
        gen = official_generate(
            agent,
            inputs["generate.input_ids"],
            feats,
            inputs.get("generate.ids_cmp_mask"),
            image=image,
            bos_id=int(tokens.get("bos", 1)),
            eos_id=int(tokens.get("eos", 2)),
            max_new_tokens=int(meta["generate"]["max_new_tokens"]),
        )
        out["generate.generate_ids"] = gen["generate_ids"]
        out["generate.has_img_output"] = gen["has_img_output"]
        out["generate.num_gen_imgs"] = gen["num_gen_imgs"]
        out["generate.intermediate.step_scores"] = gen["step_scores"]
        if "img_gen_feat" in gen:
            out["generate.img_gen_feat"] = gen["img_gen_feat"]
            out["generate.intermediate.img_hidden_states"] = gen["img_hidden_states"]
    return out


RUNNERS: Dict[str, Callable[[dict, Tensors, Tensors], Tensors]] = {
    "vit": run_vit,
    "resampler_in": run_resampler,
    "resampler_out": run_resampler,
    "detok_resampler": run_detok_resampler,
    "agent": run_agent,
}


def find_fixtures(fixture_dir: Path) -> List[Tuple[str, Path, Path]]:
    """(name, json, safetensors) of every tensor fixture in ``fixture_dir`` (sorted by name)."""
    found = []
    for sidecar in sorted(Path(fixture_dir).glob("*.json")):
        if sidecar.name == "index.json":
            continue
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            continue
        if not isinstance(meta, dict) or "fixture" not in meta:
            continue
        tensors = sidecar.parent / (meta.get("file") or sidecar.with_suffix(".safetensors").name)
        if tensors.exists():
            found.append((sidecar.stem, sidecar, tensors))
    return found


def run_fixture(sidecar: Path, tensors_path: Path) -> Tensors:
    """Run one fixture; returns ``output.*`` tensors. Only ``input.*`` and state-dict tensors are read."""
    from safetensors import safe_open

    meta = json.loads(sidecar.read_text())
    kind = meta["fixture"]
    if kind not in RUNNERS:
        raise ValueError(f"{sidecar.name}: unknown fixture kind {kind!r}; known: {sorted(RUNNERS)}")
    tensors = {}
    with safe_open(str(tensors_path), framework="pt") as handle:
        for key in handle.keys():
            if not key.startswith("output."):  # never read expected outputs
                tensors[key] = handle.get_tensor(key)
    state, inputs = _split(tensors)
    torch.manual_seed(0)
    outputs = RUNNERS[kind](meta, state, inputs)
    return {f"output.{k}": v.detach().cpu().contiguous() for k, v in outputs.items()}


def run(fixture_dir: Path, out_dir: Path, *, verbose: bool = True) -> List[str]:
    """Run every fixture of ``fixture_dir``, writing ``out_dir/<name>.safetensors``; returns the names."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    fixtures = find_fixtures(fixture_dir)
    if not fixtures:
        raise ValueError(f"no fixtures (JSON sidecar + safetensors) found in {fixture_dir}")
    for name, sidecar, tensors_path in fixtures:
        outputs = run_fixture(sidecar, tensors_path)
        save_file(outputs, str(out_dir / f"{name}.safetensors"))
        names.append(name)
        if verbose:
            print(f"ran {name}: {len(outputs)} outputs -> {out_dir / (name + '.safetensors')}")
    return names


def compare(fixture_dir: Path, out_dir: Path) -> bool:
    """Compare produced outputs with the fixtures' ``output.*``; prints one line per output; True if all pass."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    ok = True
    for name, sidecar, tensors_path in find_fixtures(fixture_dir):
        meta = json.loads(sidecar.read_text())
        tol = meta.get("tolerance", {})
        rtol = float(tol.get("recommended_rtol", 1e-4))
        atol = float(tol.get("recommended_atol", 1e-5))
        produced_path = out_dir / f"{name}.safetensors"
        produced = load_file(str(produced_path)) if produced_path.exists() else {}
        with safe_open(str(tensors_path), framework="pt") as handle:
            expected_keys = sorted(k for k in handle.keys() if k.startswith("output."))
            for key in expected_keys:
                exp = handle.get_tensor(key)
                got = produced.get(key)
                if got is None:
                    print(f"FAIL {name} {key}: not produced")
                    ok = False
                    continue
                if tuple(got.shape) != tuple(exp.shape):
                    print(f"FAIL {name} {key}: shape {tuple(got.shape)} != expected {tuple(exp.shape)}")
                    ok = False
                    continue
                if exp.is_floating_point():
                    err = (got.double() - exp.double()).abs().max().item() if exp.numel() else 0.0
                    passed = bool(torch.allclose(got.to(exp.dtype), exp, rtol=rtol, atol=atol))
                    print(f"{'ok  ' if passed else 'FAIL'} {name} {key}: max abs err {err:.3e} (rtol {rtol:g}, atol {atol:g})")
                else:
                    passed = torch.equal(got.to(exp.dtype), exp)
                    err = 0.0 if passed else float((got.long() - exp.long()).abs().max()) if got.numel() else 0.0
                    print(f"{'ok  ' if passed else 'FAIL'} {name} {key}: exact {'match' if passed else f'mismatch (max abs diff {err:g})'}")
                ok &= passed
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seedstory_core.golden", description="SEED-Story golden parity")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run every fixture and write OUT_DIR/<fixture>.safetensors")
    p_run.add_argument("fixture_dir", type=Path)
    p_run.add_argument("out_dir", type=Path)
    p_check = sub.add_parser("check", help="run and compare against the fixtures' expected outputs")
    p_check.add_argument("fixture_dir", type=Path)
    p_check.add_argument("--out", type=Path, default=None, help="where to write outputs (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        if not args.fixture_dir.is_dir():
            raise ValueError(f"{args.fixture_dir} is not a folder of golden fixtures")
        if args.command == "run":
            run(args.fixture_dir, args.out_dir)
            return 0
        out = args.out or Path(tempfile.mkdtemp(prefix="seedstory_golden_"))
        run(args.fixture_dir, out, verbose=False)
        ok = compare(args.fixture_dir, out)
        print("golden check: " + ("all outputs within tolerance" if ok else "FAILED"))
        return 0 if ok else 1
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"golden: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
