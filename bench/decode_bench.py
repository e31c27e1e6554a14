"""Decode speed of the compiled static-shape step (:mod:`seedstory_core.static_decode`) next to plain transformers.

    python -m bench.decode_bench [--reps 7] [--frames 50] [--device cpu] [--preset tiny] [--out-dir bench/out]

(``python -m bench --quick`` and ``python -m bench`` run it first and print its ratio lines before theirs.)

The story: the engine benchmark's random-weight model (:func:`bench.measure.build_engine`: every sentence runs to
``--tokens`` text tokens, so every variant decodes the same number of tokens), the pack's default policy (the
multimodal sink with its sink-image cap), told eagerly to frame ``--frames`` (50: evictions have run). On that state,
per decoded token, interleaved ``--reps`` times with a rotating order (medians; the warm-up and the compile are not
timed, the compile is reported on its own):

* ``compiled``: the decode phase of :meth:`StoryEngine.step` with :func:`~seedstory_core.static_decode.
  enable_static_decode` (``torch.compile``, ``dynamic=False``, ``fullgraph=True``; capacity = the cache at decode
  start + the tokens, rounded up to 512 slots), the engine's own loop around it (image-token rule, argmax, the story
  cache's bookkeeping and the mirror's one re-sync per sentence included);
* ``eager``: the same decode phase without it (the engine as shipped);
* ``plain``: transformers' ``LlamaForCausalLM`` with the same LLaMA config, dtype, device and threads, its default
  ``DynamicCache`` prefilled (untimed) to the same length, eager, greedy token by token (forward + argmax).

Printed: ``decode_compiled_over_plain_transformers`` (median of the per-repeat ratios; issue 28 asks for <= 0.8 on the
tiny preset) and ``decode_compiled_over_eager``. On CUDA also the bandwidth floor: the bytes of the weights one token
reads (decoder layers, final norm, lm_head; not the embedding table, of which a token reads one row) over the measured
device-to-device copy bandwidth, and ``decode_compiled_over_bandwidth_floor``. Writes ``decode.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from transformers import DynamicCache

from bench.config import DEFAULT_CHOICE, DEFAULT_OUT, TRACKED_RESULTS, BenchConfig, parse_args
from bench.measure import PhaseProbe, build_engine, decoding_for, plain_transformers_model, start_story, sync
from bench.report import write_csv
from seedstory_core.generation import decoder_of
from seedstory_core.static_decode import disable_static_decode, enable_static_decode

TARGET = 0.8
BUCKET = 512


def bandwidth_floor(decoder, lm_head, device: str) -> Dict[str, float]:
    """The per-token floor of a memory-bound decode on ``device`` (CUDA): weight bytes / copy bandwidth.

    Returns ``weight_bytes`` (decoder parameters except the embedding table, plus the lm_head), ``bandwidth_gbs``
    (median of 5 copies of a 1 GiB buffer: bytes read + written per second / 1e9) and ``floor_ms``.
    """
    embed = decoder.embed_tokens.weight
    params = [p for p in decoder.parameters() if p is not embed] + [lm_head.weight]
    weight_bytes = sum(p.numel() * p.element_size() for p in {id(p): p for p in params}.values())
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(6):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    bandwidth = 2 * src.numel() / statistics.median(times[1:])
    del src, dst
    return dict(weight_bytes=weight_bytes, bandwidth_gbs=bandwidth / 1e9, floor_ms=1000 * weight_bytes / bandwidth)


def measure(
    reps: int,
    device: str,
    *,
    preset: str = "tiny",
    frames: int = 50,
    tokens: int = 48,
    dtype: Optional[str] = None,
    log=print,
) -> Dict[str, float]:
    """Per-token decode time of the three variants (module docstring) and their ratios."""
    cuda = str(device).startswith("cuda")
    cfg = BenchConfig(
        mode="quick",
        preset=preset,
        device=device,
        dtype=dtype or ("bf16" if cuda else "fp32"),
        policies=(DEFAULT_CHOICE,),
        lengths=(frames,),
        decode_tokens=tokens,
        threads=torch.get_num_threads() if cuda else 1,
    )
    torch.set_num_threads(cfg.threads)
    engines, feats = build_engine(cfg)
    with torch.no_grad():
        state = start_story(engines, feats, DEFAULT_CHOICE, cfg)
        for _ in range(frames):
            state = engines.step(state, decoding=decoding_for(cfg)).state
    engine = engines.engine(state.settings.policy)
    decoder = decoder_of(engine.inference_model())
    ctx = state.kv_length + (len(engine.image.forced_sequence) if state.pending_image is not None else 0)
    capacity = -(-(ctx + tokens + 1) // BUCKET) * BUCKET
    plain = plain_transformers_model(engine)
    vocab = engine.agent.config.llm.vocab_size
    gen = torch.Generator().manual_seed(cfg.seed)
    decoding = decoding_of(tokens)
    probe = PhaseProbe(device)
    static = enable_static_decode(engine, capacity=capacity)
    disable_static_decode(engine)

    def ours(compiled: bool) -> float:
        if compiled:
            enable_static_decode(engine, static=static)
        try:
            result, phases = probe.timed_step(engines, state, decoding)
        finally:
            disable_static_decode(engine)
        got = len(result.state.token_ids) - len(state.token_ids)
        if got < tokens:
            raise RuntimeError(f"decode bench: a step decoded fewer than {tokens} text tokens ({got} tokens in all)")
        return phases["decode_s"] / tokens

    def theirs() -> float:
        cache = DynamicCache()
        ids = torch.randint(0, vocab, (1, ctx), generator=gen).to(engine.device)
        out = plain(input_ids=ids, cache=cache, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(tokens):
            out = plain(input_ids=tok, cache=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        return (time.perf_counter() - t0) / tokens

    variants = {"compiled": lambda: ours(True), "eager": lambda: ours(False), "plain": theirs}
    times: Dict[str, List[float]] = {k: [] for k in variants}
    with torch.no_grad(), probe.installed():
        t0 = time.perf_counter()
        ours(True)  # compiles (warm-up, not timed)
        first_step_s = time.perf_counter() - t0
        for name in ("compiled", "eager", "plain"):
            variants[name]()  # warm-up
        order = list(variants)
        for r in range(reps):
            for name in order[r % 3 :] + order[: r % 3]:
                times[name].append(variants[name]())
    compiled_over_plain = statistics.median(c / p for c, p in zip(times["compiled"], times["plain"]))
    compiled_over_eager = statistics.median(c / e for c, e in zip(times["compiled"], times["eager"]))
    result = dict(
        preset=preset,
        device=str(device),
        dtype=cfg.dtype,
        frames=frames,
        cache_tokens=ctx,
        capacity=capacity,
        tokens=tokens,
        reps=reps,
        threads=cfg.threads,
        compile_s=round(sum(static.compile_seconds.values()), 2),
        first_step_s=round(first_step_s, 2),
        **{f"{k}_ms_per_token": 1000 * statistics.median(v) for k, v in times.items()},
        decode_compiled_over_plain_transformers=compiled_over_plain,
        decode_compiled_over_plain_min=min(c / p for c, p in zip(times["compiled"], times["plain"])),
        decode_compiled_over_plain_max=max(c / p for c, p in zip(times["compiled"], times["plain"])),
        decode_compiled_over_eager=compiled_over_eager,
    )
    if cuda:
        floor = bandwidth_floor(decoder, engine.agent.lm_head, device)
        result.update(floor)
        result["decode_compiled_over_bandwidth_floor"] = result["compiled_ms_per_token"] / floor["floor_ms"]
        result["decode_eager_over_bandwidth_floor"] = result["eager_ms_per_token"] / floor["floor_ms"]
    log(
        f"  decode bench ({preset}, {device}, {cfg.dtype}, frame {frames}, {ctx} cached tokens, capacity {capacity}, "
        f"{tokens} tokens x {reps} reps): compiled {result['compiled_ms_per_token']:.3f} ms/token, eager "
        f"{result['eager_ms_per_token']:.3f}, plain transformers {result['plain_ms_per_token']:.3f}; "
        f"compile {result['compile_s']:.1f} s (not timed)"
    )
    if not cuda:
        log("  decode bench: bandwidth floor not measured (it needs a CUDA device; this run is on the CPU)")
    return result


def decoding_of(tokens: int):
    """Greedy decoding of exactly ``tokens`` text tokens (:func:`bench.measure.decoding_for`)."""
    return decoding_for(BenchConfig(sentence_tokens=tokens))


def ratio_lines(result: Dict[str, float]) -> List[str]:
    keys = ["decode_compiled_over_plain_transformers", "decode_compiled_over_eager"]
    keys += [k for k in ("decode_compiled_over_bandwidth_floor",) if k in result]
    return [f"{k}: {result[k]:.4f}" for k in keys]


def run(reps: int, device: str, out_dir: Path, log=print, **options) -> Dict[str, float]:
    """Measure, write ``decode.csv`` into ``out_dir``, print the ratio lines."""
    result = measure(reps, device, log=log, **options)
    write_csv(Path(out_dir) / "decode.csv", [dict(name=k, value=v) for k, v in result.items()], ("name", "value"))
    for line in ratio_lines(result):
        print(line, flush=True)
    return result


def before_engine_bench(argv: Optional[List[str]] = None) -> int:
    """``python -m bench``'s hook: run this benchmark first for a plain timing run (``--quick`` or the full mode;
    not ``--smoke``, the quality hook ``--model`` or a memory child), on the run's device and preset. Returns 0."""
    args = parse_args(argv)
    if args.smoke or args.model or args.memory_child:
        return 0
    out = Path(args.out_dir) if args.out_dir else (TRACKED_RESULTS if args.update_docs else DEFAULT_OUT)
    preset = "full" if args.preset in ("official", "full") else "tiny"

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    run(7 if args.quick else 11, args.device, out, log, preset=preset, dtype=args.dtype)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.decode_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default="tiny", choices=("tiny", "full"))
    ap.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    result = run(
        args.reps,
        args.device,
        Path(args.out_dir),
        preset=args.preset,
        frames=args.frames,
        tokens=args.tokens,
        dtype=args.dtype,
    )
    return 0 if result["decode_compiled_over_plain_transformers"] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
