"""Story-engine benchmark: the efficiency side of the SEED-Story paper's Table 8 (``python -m bench``).

For every cache policy (``dense``, ``window``, ``sink``, ``multimodal_sink``), the pack's default settings
(``default``) and the official baseline (``reencode_window``: the windowed prompt re-encoded from scratch every step,
as ``gen_george.py`` does), a story is run to ``max(lengths)`` frames and every story step is timed, split into
phases (prefill, decode, image, other; :mod:`bench.measure`). Repeats are interleaved and summarised by the median
(:mod:`bench.report`), so a noisy shared CPU affects all policies alike.

Frame N = the N-th :meth:`StoryEngine.step` after :meth:`StoryEngine.start` (the start image is frame 0). With
``window_images=8`` nothing is evicted up to frame 8.

The benchmark in modules of one job each: :mod:`bench.config` (the run configuration and the command line),
:mod:`bench.measure` (the model, the phase probe and every measurement), :mod:`bench.report` (summaries, ratios,
CSVs, plots); this module runs them in order (:func:`run`) and holds the quality hook (:func:`quality_mode`, the
long-story ablation of :mod:`evaluation.evaluate` on a trained bundle).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Dict

import torch

from bench import docs as bench_docs
from bench import full_size
from bench.config import DEFAULT_CHOICE, TRACKED_RESULTS, BenchConfig, config_from_args, parse_args
from bench.measure import (
    build_engine,
    measure_decode_floor,
    measure_image_queries,
    measure_memory,
    measure_state_pair,
    measure_step_pair,
    measure_steps,
    memory_child,
)
from bench.report import (
    PAPER_TABLE8_COLUMNS,
    RATIO_KEYS,
    RATIO_TARGETS,
    STEP_COLUMNS,
    SUMMARY_COLUMNS,
    compute_ratios,
    format_ratio_lines,
    make_plots,
    paper_table8_rows,
    run_info,
    summarize,
    write_csv,
)
from evaluation import evaluate as evaluation
from seedstory_core.cache import POLICIES as CACHE_POLICIES
from seedstory_core.reencode import REENCODE_WINDOW


# ------------------------------------------------------------------------------------------------ quality hook
def quality_mode(model_dir: str, cfg: BenchConfig, log=print) -> int:
    """Quality side of Table 8 at 1x / 2x / 3x the training length with a trained bundle: ground-truth captions
    visualized under each cache policy, scored against the ground-truth frames (attribute agreement read by the
    evaluation's fixed judge, ``evaluation/judge``; pixel L1) — the tiny-world stand-ins for the paper's CLIP score
    and FID. Writes ``quality.csv`` into ``cfg.out_dir``; returns the exit status (0)."""
    # the official reencode_window loop is a context strategy, not a cache policy: it has no ablation row
    table = evaluation.long_story_ablation(
        model_dir,
        policies=tuple(p for p in cfg.policies if p in CACHE_POLICIES),
        length_multiples=(1, 2, 3),
        window_images=cfg.window_images,
        device=cfg.device,
        dtype=cfg.dtype,
    )
    rows = [
        {"policy": policy, "length": seg, **metrics} for policy, segs in table.items() for seg, metrics in segs.items()
    ]
    for r in rows:
        log(
            f"  {r['policy']:16s} {r['length']}: attribute agreement {r['attribute_agreement']:.3f}, "
            f"pixel L1 {r['pixel_l1']:.3f}"
        )
    cols = ["policy", "length", "attribute_agreement", "pixel_l1"]
    write_csv(cfg.out_dir / "quality.csv", rows, cols)
    log(f"quality: {len(rows)} rows -> {cfg.out_dir / 'quality.csv'}")
    return 0


# ------------------------------------------------------------------------------------------------ driver
def run(cfg: BenchConfig, *, command: str = "python -m bench", log=print) -> Dict[str, float]:
    """The whole benchmark of ``cfg``: every measurement, then the CSVs, plots and page; prints the ratio lines last
    (:func:`bench.report.format_ratio_lines`) and returns the five headline ratios."""
    t_run = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    log(
        f"seedstory bench: mode={cfg.mode} preset={cfg.preset} device={cfg.device} dtype={cfg.dtype} "
        f"policies={list(cfg.policies)} lengths={list(cfg.lengths)} reps={cfg.reps} text_tokens={cfg.sentence_tokens}"
    )
    engines, feats = build_engine(cfg)
    log(
        f"  model built ({sum(p.numel() for p in engines.agent.parameters()) / 1e6:.1f} M parameters, "
        f"merge_lora={engines.merge_lora})"
    )
    with torch.no_grad():
        rows, states = measure_steps(engines, feats, cfg, log)
        bad = [r for r in rows if r["text_tokens"] != cfg.sentence_tokens]
        if bad:
            log(f"  WARNING: {len(bad)} steps decoded != {cfg.sentence_tokens} text tokens (unequal work per step)")
        iq = None
        hi = cfg.headline_frame
        iq_policy = "multimodal_sink" if ("multimodal_sink", hi) in states else cfg.policies[0]
        if cfg.extras and (iq_policy, hi) in states and states[(iq_policy, hi)].kv_length > 0:
            iq = measure_image_queries(engines, states[(iq_policy, hi)], cfg)
            log(
                f"  image queries ({iq_policy}, frame {hi}): one-pass {1000 * iq['onepass_s']:.2f} ms, "
                f"forced {1000 * iq['forced_s']:.2f} ms"
            )
        decode = None
        dec_policy = next(
            (p for p in (DEFAULT_CHOICE, "multimodal_sink", "dense", "window", "sink") if (p, hi) in states), None
        )
        if cfg.extras and dec_policy is not None:
            decode = measure_decode_floor(engines, states[(dec_policy, hi)], cfg)
            decode["policy"] = dec_policy
            log(
                f"  decode ({dec_policy}, frame {hi}, {decode['cache_tokens']} cached tokens): ours "
                f"{decode['ours_ms_per_token']:.3f} ms/token, "
                f"plain transformers {decode['plain_ms_per_token']:.3f} ms/token"
            )
        pairs = {}
        lo = min(cfg.lengths)
        for p in (DEFAULT_CHOICE, "window", "multimodal_sink"):  # window: the floor of any cache that keeps the window
            if cfg.extras and p in cfg.policies:
                pairs[p] = measure_step_pair(engines, states, p, lo, hi, cfg)
                if pairs[p]:
                    log(f"  paired steps {p}: frame {hi} / frame {lo} = {pairs[p]['ratio']:.3f}")
        mm_prev, re_prev = states.get(("multimodal_sink", hi - 1)), states.get((REENCODE_WINDOW, hi - 1))
        if cfg.extras and mm_prev is not None and re_prev is not None:
            pairs["reencode_over_multimodal_sink"] = measure_state_pair(engines, mm_prev, re_prev, cfg)
            log(
                f"  paired steps frame {hi}: reencode_window / multimodal_sink = "
                f"{pairs['reencode_over_multimodal_sink']['ratio']:.3f}"
            )
    states.pop((iq_policy, hi), None)
    memory = measure_memory(cfg, log) if cfg.memory and not str(cfg.device).startswith("cuda") else {}
    summary = summarize(rows, cfg)
    head, lines = compute_ratios(summary, iq, cfg, decode, pairs)
    prefix = f"engine_{cfg.mode}_{cfg.preset}"
    write_csv(cfg.out_dir / f"{prefix}_steps.csv", rows, STEP_COLUMNS)
    (cfg.out_dir / f"{prefix}_steps.partial.csv").unlink(missing_ok=True)  # complete: the final CSV replaces it
    write_csv(cfg.out_dir / f"{prefix}_summary.csv", summary, SUMMARY_COLUMNS)
    extra = [dict(name=k, value=v) for k, v in lines] + [dict(name=k, value=head[k]) for k in RATIO_KEYS]
    if iq:
        extra += [dict(name=f"image_queries_{k}", value=v) for k, v in iq.items()]
    if decode:
        extra += [dict(name=f"decode_{k}", value=v) for k, v in decode.items() if k != "policy"]
    for p, pr in pairs.items():
        extra += [dict(name=f"paired_{p}_{k}", value=v) for k, v in pr.items()]
    for p, m in memory.items():
        extra.append(dict(name=f"rss_baseline_kib_{p}", value=m["baseline_kib"]))
        extra += [dict(name=f"rss_peak_kib_{p}_at_{f}", value=v) for f, v in m["peak_kib"].items()]
    for p, v in (states.get("cuda_peak") or {}).items():
        extra.append(dict(name=f"cuda_peak_bytes_{p}", value=v))
    elapsed = time.perf_counter() - t_run
    for key, (op, target) in RATIO_TARGETS.items():
        extra += [dict(name=f"target_op_{key}", value=op), dict(name=f"target_{key}", value=target)]
    write_csv(cfg.out_dir / f"{prefix}_ratios.csv", extra, ("name", "value"))
    write_csv(cfg.out_dir / f"{prefix}_run.csv", run_info(cfg, elapsed, command, decode), ("name", "value"))
    write_csv(cfg.out_dir / "paper_table8.csv", paper_table8_rows(), PAPER_TABLE8_COLUMNS)
    full_size.write(
        full_size.full_size_rows(frame=hi, sentence_tokens=cfg.sentence_tokens, window_images=cfg.window_images),
        cfg.out_dir / "full_size.csv",
    )
    if cfg.img_dir is not None:
        make_plots(rows, cfg)
    if cfg.docs_path is not None:
        bench_docs.write_docs(
            cfg.out_dir,
            path=cfg.docs_path,
            img_rel=os.path.relpath(cfg.img_dir, cfg.docs_path.parent) if cfg.img_dir is not None else None,
        )
    log(
        f"  wrote {cfg.out_dir}/{prefix}_*.csv"
        + (f", {cfg.docs_path}" if cfg.docs_path else "")
        + f" ({elapsed:.0f} s)"
    )
    for line in format_ratio_lines(head, lines):
        print(line, flush=True)
    return head


def main(argv=None) -> int:
    """``python -m bench``: the benchmark (or, with ``--model``, the quality hook; ``--memory-child``: one child of
    :func:`bench.measure.measure_memory`). Returns the exit status."""
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    cfg = config_from_args(args)
    if args.model:
        if args.update_docs:
            cfg.out_dir = TRACKED_RESULTS
        return quality_mode(args.model, cfg)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    argv_s = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    run(cfg, command=f"python -m bench {argv_s}".strip(), log=log)
    return 0
