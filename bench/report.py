"""The story-engine benchmark's report: per-length summaries, the headline ratios, the CSV files, the description
of the run and the plots (``docs/benchmarks.md`` is rendered from the CSVs by :mod:`bench.docs`).

CSV files of one run (prefix ``engine_<mode>_<preset>``): ``_steps.csv`` (every timed step,
:data:`STEP_COLUMNS`), ``_summary.csv`` (medians per policy and measured length, :data:`SUMMARY_COLUMNS`),
``_ratios.csv`` and ``_run.csv`` (name, value rows), and ``paper_table8.csv`` (:data:`PAPER_TABLE8`).
"""

from __future__ import annotations

import csv
import os
import platform
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from bench.config import DEFAULT_CHOICE, BenchConfig
from seedstory_core.reencode import REENCODE_WINDOW
from seedstory_core.story import StorySettings

RATIO_KEYS = (
    "decode_ms_per_token_over_plain_transformers",
    "step50_over_step5_default",
    "kv_bytes_default_over_dense_at_50",
    "reencode_over_multimodal_sink",
    "forced_over_onepass_image_queries",
)
#: targets of issue 14 (printed next to the ratios in the docs): (comparison, value)
RATIO_TARGETS = {
    "decode_ms_per_token_over_plain_transformers": ("<=", 1.25),
    "step50_over_step5_default": ("<=", 1.15),
    "kv_bytes_default_over_dense_at_50": ("<=", 0.3),
    "reencode_over_multimodal_sink": (">=", 2.5),
    "forced_over_onepass_image_queries": (">=", 10),
}
# Paper Table 8 (seed_story_paper.txt): time and memory for generating 50 sequences, averaged over several runs.
PAPER_TABLE8 = {
    "dense": dict(name="Dense Attn", fid=119.72, clip=0.705, time_s=569.67, memory_gb=37.99),
    "window": dict(name="Window Attn", fid=334.90, clip=0.598, time_s=450.64, memory_gb=30.81),
    "sink": dict(name="Attn Sink", fid=221.53, clip=0.676, time_s=451.94, memory_gb=30.81),
    "multimodal_sink": dict(name="Ours (multimodal sink)", fid=79.67, clip=0.728, time_s=473.98, memory_gb=31.82),
}
PAPER_TABLE8_COLUMNS = ("policy", "name", "fid", "clip", "time_s", "memory_gb", "time_over_dense")
STEP_COLUMNS = (
    "mode",
    "preset",
    "device",
    "dtype",
    "policy",
    "rep",
    "frame",
    "total_s",
    "prefill_s",
    "decode_s",
    "image_s",
    "other_s",
    "text_tokens",
    "kv_tokens",
    "kv_bytes",
    "kv_bytes_work",
    "evictions",
)
SUMMARY_COLUMNS = (
    "mode",
    "preset",
    "policy",
    "frames",
    "reps",
    "total_s",
    "prefill_s",
    "decode_s",
    "image_s",
    "other_s",
    "total_s_min",
    "total_s_max",
    "kv_tokens",
    "kv_bytes",
    "kv_bytes_work",
    "cumulative_s",
)
PHASES = ("total_s", "prefill_s", "decode_s", "image_s", "other_s")


def kv_key(policy: str) -> str:
    """The KV column that measures ``policy``'s cache: the kept cache, or the re-encode loop's transient window."""
    return "kv_bytes_work" if policy == REENCODE_WINDOW else "kv_bytes"


# ------------------------------------------------------------------------------------------------ summary
def summarize(rows: List[dict], cfg: BenchConfig) -> List[dict]:
    """One row per policy and measured length (:data:`SUMMARY_COLUMNS`): medians over the repeats x the frames
    ``(N - cfg.pool_frames, N]`` of every phase, the KV size at frame N and the cumulative median time up to N."""
    out = []
    for policy in cfg.policies:
        cum = 0.0
        for frame in range(1, cfg.max_frames + 1):
            sel = [r for r in rows if r["policy"] == policy and r["frame"] == frame and r["rep"] >= 0]
            if not sel:
                continue
            med = {k: statistics.median(r[k] for r in sel) for k in PHASES}
            cum += med["total_s"]
            if frame not in cfg.lengths:
                continue
            # robust statistic: median over repeats x the frames [N - pool + 1, N] (same eviction regime for the
            # headline frames 5 and 50; per-frame medians are in the plots and every raw row in the steps CSV)
            sel = [
                r
                for r in rows
                if r["policy"] == policy and frame - cfg.pool_frames < r["frame"] <= frame and r["rep"] >= 0
            ]
            med = {k: statistics.median(r[k] for r in sel) for k in PHASES}
            totals = [r["total_s"] for r in sel]
            sel = [r for r in sel if r["frame"] == frame]
            out.append(
                dict(
                    mode=cfg.mode,
                    preset=cfg.preset,
                    policy=policy,
                    frames=frame,
                    reps=len(totals),
                    **{k: round(v, 6) for k, v in med.items()},
                    total_s_min=round(min(totals), 6),
                    total_s_max=round(max(totals), 6),
                    kv_tokens=sel[0]["kv_tokens"],
                    kv_bytes=sel[0]["kv_bytes"],
                    kv_bytes_work=sel[0]["kv_bytes_work"],
                    cumulative_s=round(cum, 4),
                )
            )
    return out


def summary_value(summary: List[dict], policy: str, frames: int, key: str):
    """``key`` of ``policy``'s summary row at ``frames`` (None when not measured)."""
    for r in summary:
        if r["policy"] == policy and r["frames"] == frames:
            return r[key]
    return None


def compute_ratios(
    summary: List[dict],
    iq: Optional[dict],
    cfg: BenchConfig,
    decode: Optional[dict] = None,
    pairs: Optional[Dict[str, dict]] = None,
) -> Tuple[Dict[str, float], List[Tuple[str, float]]]:
    """(the five headline ratios of :data:`RATIO_KEYS`, every per-policy ratio line in print order).

    ``step50_over_step5_default`` is the paired measurement (:func:`bench.measure.measure_step_pair`) when available,
    else the ratio of the summary medians (also printed per policy as ``step<hi>_over_step<lo>_<policy>``)."""
    pairs = pairs or {}
    lo, hi = min(cfg.lengths), cfg.headline_frame
    lines: List[Tuple[str, float]] = []

    def div(a, b):
        return float("nan") if a is None or b in (None, 0) else a / b

    def at(policy, frames, key):
        return summary_value(summary, policy, frames, key)

    for p in cfg.policies:
        lines.append((f"step{hi}_over_step{lo}_{p}", div(at(p, hi, "total_s"), at(p, lo, "total_s"))))
    for p in cfg.policies:
        if p != REENCODE_WINDOW and REENCODE_WINDOW in cfg.policies:
            lines.append((f"reencode_over_{p}_at_{hi}", div(at(REENCODE_WINDOW, hi, "total_s"), at(p, hi, "total_s"))))
            lines.append(
                (
                    f"reencode_over_{p}_prefill_at_{hi}",
                    div(at(REENCODE_WINDOW, hi, "prefill_s"), at(p, hi, "prefill_s")),
                )
            )
    if iq:
        lines.append(("forced_over_onepass_with_logits", div(iq["forced_logits_s"], iq["onepass_s"])))
    if "dense" in cfg.policies:
        for p in cfg.policies:
            lines.append((f"kv_bytes_{p}_over_dense_at_{hi}", div(at(p, hi, kv_key(p)), at("dense", hi, "kv_bytes"))))
    for p, pr in pairs.items():
        if pr and p != "reencode_over_multimodal_sink":
            lines.append((f"step{hi}_over_step{lo}_{p}_paired", pr["ratio"]))
    if pairs.get("reencode_over_multimodal_sink"):
        lines.append((f"reencode_over_multimodal_sink_at_{hi}_paired", pairs["reencode_over_multimodal_sink"]["ratio"]))
    if decode:
        lines.append(("decode_ours_ms_per_token", decode["ours_ms_per_token"]))
        lines.append(("decode_plain_transformers_ms_per_token", decode["plain_ms_per_token"]))
    head = {
        "decode_ms_per_token_over_plain_transformers": decode["ratio"] if decode else float("nan"),
        "step50_over_step5_default": (
            pairs[DEFAULT_CHOICE]["ratio"]
            if pairs.get(DEFAULT_CHOICE)
            else div(at(DEFAULT_CHOICE, hi, "total_s"), at(DEFAULT_CHOICE, lo, "total_s"))
        ),
        "kv_bytes_default_over_dense_at_50": div(at(DEFAULT_CHOICE, hi, "kv_bytes"), at("dense", hi, "kv_bytes")),
        "reencode_over_multimodal_sink": (
            pairs["reencode_over_multimodal_sink"]["ratio"]
            if pairs.get("reencode_over_multimodal_sink")
            else div(at(REENCODE_WINDOW, hi, "total_s"), at("multimodal_sink", hi, "total_s"))
        ),
        "forced_over_onepass_image_queries": div(iq["forced_s"], iq["onepass_s"]) if iq else float("nan"),
    }
    return head, lines


def format_ratio_lines(head: Dict[str, float], lines: List[Tuple[str, float]]) -> List[str]:
    """The ratio lines a run prints last: every per-policy line, then the five headline ratios in order."""
    out = [f"{k}: {v:.4f}" for k, v in lines]
    out += [f"{k}: {head[k]:.4f}" for k in RATIO_KEYS]
    return out


# ------------------------------------------------------------------------------------------------ output
def write_csv(path: Path, rows: List[dict], columns: Sequence[str]) -> Path:
    """Write ``rows`` (dicts; keys beyond ``columns`` ignored) as a CSV with the header ``columns``; returns
    ``path`` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def paper_table8_rows() -> List[dict]:
    """:data:`PAPER_TABLE8` as CSV rows, with each policy's time over dense."""
    dense_s = PAPER_TABLE8["dense"]["time_s"]
    return [dict(policy=k, **v, time_over_dense=round(v["time_s"] / dense_s, 4)) for k, v in PAPER_TABLE8.items()]


def machine_description(cfg: BenchConfig) -> str:
    """One line: OS, CPU model, visible CPUs, torch and its threads, python, device and dtype of the run."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = cfg.device
    if str(dev).startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name()})"
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs visible, "
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), python {platform.python_version()}, "
        f"device {dev}, dtype {cfg.dtype}"
    )


def run_info(cfg: BenchConfig, elapsed: float, command: str, decode: Optional[dict]) -> List[dict]:
    """(name, value) rows describing the run: settings, machine, wall time (the docs read them from the CSV)."""
    default = StorySettings().policy
    info = dict(
        command=command,
        mode=cfg.mode,
        preset=cfg.preset,
        device=cfg.device,
        dtype=cfg.dtype,
        lengths=" ".join(str(x) for x in cfg.lengths),
        reps=cfg.reps,
        pool_frames=cfg.pool_frames,
        samples=cfg.reps * cfg.pool_frames,
        step_pairs=cfg.step_pairs,
        sentence_tokens=cfg.sentence_tokens,
        window_images=cfg.window_images,
        warmup_steps=cfg.warmup_steps,
        threads=cfg.threads,
        seed=cfg.seed,
        image_query_reps=cfg.image_query_reps,
        decode_tokens=cfg.decode_tokens,
        decode_reps=cfg.decode_reps,
        wall_s=round(elapsed),
        default_max_sink_images=default.max_sink_images,
        default_window_images=default.window_images,
        machine=machine_description(cfg),
        policies=" ".join(cfg.policies),
        decode_policy=(decode or {}).get("policy", ""),
    )
    return [dict(name=k, value=v) for k, v in info.items()]


def make_plots(rows: List[dict], cfg: BenchConfig) -> List[Path]:
    """Three PNGs in ``cfg.img_dir``: time per step and KV memory against the story length (per-frame medians), and
    the phases of a step at the headline frame. Returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg.img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    per = {}
    for p in cfg.policies:
        xs, ts, kv = [], [], []
        for frame in range(1, cfg.max_frames + 1):
            sel = [r for r in rows if r["policy"] == p and r["frame"] == frame and r["rep"] >= 0]
            if sel:
                xs.append(frame)
                ts.append(1000 * statistics.median(r["total_s"] for r in sel))
                kv.append(sel[0][kv_key(p)] / 2**20)
        per[p] = (xs, ts, kv)
    for name, idx, ylabel, title in (
        ("bench_time_per_step.png", 1, "MLLM time per story step (ms, median)", "Time per step vs story length"),
        ("bench_kv_memory.png", 2, "KV cache (MiB)", "KV-cache memory vs story length"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for p, data in per.items():
            label = p + (" (transient window cache)" if p == REENCODE_WINDOW and idx == 2 else "")
            ax.plot(data[0], data[idx], label=label, lw=1.6, ls="--" if p == REENCODE_WINDOW else "-")
        ax.axvline(cfg.window_images, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"story length (frames); eviction starts after frame {cfg.window_images}")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} — {cfg.preset} preset, {cfg.device}/{cfg.dtype}, {cfg.sentence_tokens} text tokens/step")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = cfg.img_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    # phase breakdown at the longest measured length
    fig, ax = plt.subplots(figsize=(7, 3.6))
    hi = cfg.headline_frame
    bottom = [0.0] * len(cfg.policies)
    for phase in ("prefill_s", "decode_s", "image_s", "other_s"):
        vals = []
        for p in cfg.policies:
            sel = [r[phase] for r in rows if r["policy"] == p and r["frame"] == hi and r["rep"] >= 0]
            vals.append(1000 * statistics.median(sel) if sel else 0)
        ax.barh(list(cfg.policies), vals, left=bottom, label=phase[:-2])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel(f"ms per step at frame {hi} (median)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = cfg.img_dir / "bench_phases.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths
