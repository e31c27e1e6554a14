"""Render ``docs/benchmarks.md`` from the CSV files of one results folder — nothing else.

Every number in the generated page is read from a CSV of that folder (``tests/project/test_bench_docs.py`` checks it),
so the page can never drift from the measurements. The CSVs and the commands that write them:

* ``engine_<mode>_<preset>_{run,summary,steps,ratios}.csv``, ``paper_table8.csv``, ``full_size.csv`` —
  ``python -m bench --quick`` (``--update-docs`` writes them to ``bench/results/`` and regenerates this page);
* ``story_step.csv`` — ``python -m bench.story_step`` (the whole story step: MLLM + de-tokenizer);
* ``cap_ablation.csv`` — ``python -m bench.cap_ablation`` (the choice of the default sink-image cap);
* ``quality.csv`` — ``python -m bench --model models/seedstory-tiny`` (cache-policy ablation, trained tiny model).

``python -m bench.docs [FOLDER] [OUTPUT]`` re-renders the page from a folder (default: the tracked results).
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"


GPU = RESULTS / "gpu_h200"
#: the progress lines ``bench.measure.measure_steps`` prints: "  rep 0 dense            50 frames in 108.6 s"
_STORY_LINE = re.compile(r"^\s*rep (\d+) (\S+)\s+(\d+) frames in ([\d.]+) s\s*$")


def story_seconds_from_log(text: str, command: str) -> List[Dict[str, str]]:
    """Rows (policy, rep, frames, seconds, command) from the progress lines of a ``python -m bench`` log: for a run
    stopped before it wrote its CSVs, the whole-story times it had printed are all that is left of it."""
    rows = []
    for line in text.splitlines():
        m = _STORY_LINE.match(line)
        if m:
            rows.append(dict(policy=m.group(2), rep=m.group(1), frames=m.group(3), seconds=m.group(4), command=command))
    return rows


def write_story_seconds(log: Path, command: str, out: Path) -> Path:
    """``story_seconds_from_log`` of ``log`` written as CSV to ``out``."""
    rows = story_seconds_from_log(Path(log).read_text(), command)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["policy", "rep", "frames", "seconds", "command"])
        w.writeheader()
        w.writerows(rows)
    return Path(out)


def _get_kv(summary: List[Dict[str, str]], policy: str, frames: int) -> str:
    """kv_tokens of ``policy`` at ``frames`` in a summary CSV ("—" when absent)."""
    return next((r["kv_tokens"] for r in summary if r["policy"] == policy and int(r["frames"]) == frames), "—")


def _ablation_intro(rows: List[Dict[str, str]], extra: str) -> List[str]:
    judge = rows[0].get("judge_sha256") or ""
    return [
        f"Written by `{rows[0].get('command') or 'python -m bench.cap_ablation'}` (held-out seed "
        f"{rows[0].get('seed', '')}): the tiny model with agent weights sha256 "
        f"`{(rows[0].get('model_agent_sha256') or '')[:16]}…` visualizes held-out stories (ground-truth captions) "
        "for 3x the training length, teacher-forced (the true frames' features in the context) and free-running "
        "(its own regressed features); the evaluation's fixed judge (`evaluation/judge`, sha256 "
        f"`{judge[:16]}…`) scores every frame against the true attributes (`agreement`, with a "
        f"{_f(rows[0]['ci_level'], 0, 100)}% percentile bootstrap interval over stories). Window "
        f"{rows[0].get('window_images') or '—'} images (the training length). `Δ vs uncapped` is paired per story "
        "against the paper's uncapped multimodal sink, with its interval. " + extra + "\n"
    ]


def _ablation_table(rows: List[Dict[str, str]]) -> List[str]:
    L = [
        "| mode | policy | segment | stories | agreement | interval | Δ vs uncapped | interval | pixel L1 |",
        "|---|---|---|---:|---:|---|---:|---|---:|",
    ]
    for r in rows:
        interval = (
            f"[{_f(r['agreement_ci_low'], 4)}, {_f(r['agreement_ci_high'], 4)}]" if r.get("agreement_ci_low") else "—"
        )
        L.append(
            f"| {r['mode']} | {r['policy']} | {r['segment']} | {r['stories']} | {_f(r['agreement'], 4)} | {interval} | "
            f"{_f(r['diff_vs_uncapped'], 4)} | [{_f(r['ci_low'], 4)}, {_f(r['ci_high'], 4)}] | {_f(r['pixel_l1'], 4)} |"
        )
    L.append("")
    return L


def _gpu_section(folder: Path) -> List[str]:
    """The measured full-size section, from ``folder`` (bench/results/gpu_h200); [] when it is absent."""
    run, ratios = _kv(folder / "engine_quick_full_run.csv"), _kv(folder / "engine_quick_full_ratios.csv")
    stories = read_csv(folder / "story_seconds.csv") if (folder / "story_seconds.csv").is_file() else []
    if not run or not ratios:
        return []
    L = ["## Full size on a GPU (random weights, measured once)\n"]
    L.append(
        f"Machine: {run['machine']}. The full SEED-Story agent ({run['preset']} preset, {run['dtype']}, "
        "random weights, LoRA merged for inference), two runs within one session's GPU time.\n"
    )
    if stories:
        L.append(
            f"**Run 1**, `{stories[0]['command']}`: one {stories[0]['frames']}-frame story per policy, "
            "whole-story seconds as printed; the run reached its time limit during the re-encode baseline's story, "
            "before it wrote its CSVs, so its per-step rows and its `torch.cuda.max_memory_allocated` per policy "
            "were lost. One story each, on a machine whose step times jumped between two levels within a run "
            "(run 2's step rows show it): not a ranking.\n"
        )
        L.append("| policy | frames | seconds |")
        L.append("|---|---:|---:|")
        for r in stories:
            L.append(f"| {r['policy']} | {r['frames']} | {r['seconds']} |")
        L.append("")
    L.append(
        f"**Run 2**, `{run['command']}` ({run['wall_s']} s): the paired measurements, each timed back to back "
        "against its reference so that a drifting machine cancels out.\n"
    )
    L.append("| ratio | value | range over the pairs | what |")
    L.append("|---|---:|---|---|")
    L.append(
        f"| `decode_ms_per_token_over_plain_transformers` | {_f(ratios.get('decode_ratio'), 3)} | "
        f"{_f(ratios.get('decode_ratio_min'), 3)} – {_f(ratios.get('decode_ratio_max'), 3)} | ours "
        f"{_f(ratios.get('decode_ours_ms_per_token'), 1)} ms/token vs plain transformers "
        f"{_f(ratios.get('decode_plain_ms_per_token'), 1)} at {ratios.get('decode_cache_tokens')} cached tokens |"
    )
    L.append(
        "| `reencode_over_multimodal_sink` (frame 10) | "
        f"{_f(ratios.get('paired_reencode_over_multimodal_sink_ratio'), 3)} | "
        f"{_f(ratios.get('paired_reencode_over_multimodal_sink_ratio_min'), 3)} – "
        f"{_f(ratios.get('paired_reencode_over_multimodal_sink_ratio_max'), 3)} | the official loop's step over ours "
        f"({_f(ratios.get('paired_reencode_over_multimodal_sink_hi_s'), 3)} s vs "
        f"{_f(ratios.get('paired_reencode_over_multimodal_sink_lo_s'), 3)} s) |"
    )
    L.append(
        f"| `forced_over_onepass_image_queries` | {_f(ratios.get('forced_over_onepass_image_queries'), 1)} | — | "
        f"the image queries one token per forward ({_f(ratios.get('image_queries_forced_s'), 1, 1e3)} ms) vs one pass "
        f"({_f(ratios.get('image_queries_onepass_s'), 1, 1e3)} ms) |"
    )
    L.append("")
    L.append(
        "Not measured on the GPU: the 50-frame ratios (`step50_over_step5_default`, KV at frame 50; run 2 stopped at "
        "frame 10 to fit) and the GPU memory per policy, so the paper's Table 8 memory column is compared "
        "analytically only (above).\n"
    )
    return L


def _decode_section(folder: Path) -> List[str]:
    """``decode.csv`` (bench/decode_bench.py): the compiled static-shape decode step against plain transformers."""
    d = _kv(folder / "decode.csv")
    if not d:
        return []
    return [
        "## Compiled decode (static shapes over the eviction cache)\n",
        f"Written by `python -m bench --quick` (`bench/decode_bench.py`, `seedstory_core/static_decode.py`): "
        f"{d['preset']} preset on {d['device']} ({d['dtype']}, {d['threads']} thread), a story at frame {d['frames']} "
        f"({d['cache_tokens']} cached tokens, static capacity {d['capacity']}), {d['tokens']} greedy tokens x "
        f"{d['reps']} interleaved repeats, medians; compile time is excluded from the per-token figures.\n",
        "| compiled ms/token | eager (our cache) ms/token | plain transformers ms/token | "
        "**decode_compiled_over_plain_transformers** (min..max over repeats) | compiled / eager | compile s |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {_f(d['compiled_ms_per_token'], 2)} | {_f(d['eager_ms_per_token'], 2)} | {_f(d['plain_ms_per_token'], 2)} "
        f"| **{_f(d['decode_compiled_over_plain_transformers'])}** ({_f(d['decode_compiled_over_plain_min'])}.."
        f"{_f(d['decode_compiled_over_plain_max'])}) | {_f(d['decode_compiled_over_eager'])} "
        f"| {_f(d['compile_s'], 1)} |",
        "",
        "Compiled and eager decoding give the same tokens (tests/core/test_static_decode.py). The GPU figure against "
        "the bandwidth floor (`python -m bench.decode_bench --device cuda --preset full`) has not been measured: no "
        "GPU was lent when this was written.\n",
    ]


def _redo_section(folder: Path) -> List[str]:
    """``redo.csv`` (bench/redo_bench.py): redo one frame of a finished story against re-running it."""
    d = _kv(folder / "redo.csv")
    if not d:
        return []

    def shown(v: str) -> str:
        try:
            x = float(v)
        except ValueError:
            return f"`{v}`"
        return str(int(x)) if x.is_integer() else f"{x:.3f}"

    rows = [f"| {k} | {shown(v)} |" for k, v in d.items()]
    return [
        "## Redo one frame against re-running the story\n",
        "Written by `python -m bench --quick` (`bench/redo_bench.py`, `seedstory_core/redo.py`): the bundled tiny "
        "model, a 12-frame story, frame 5 redone; CPU time of one torch thread (wall time on a shared machine is "
        "too noisy). `redo_over_rerun` <= 0.6 is the target.\n",
        "| measure | value |",
        "|---|---:|",
        *rows,
        "",
    ]


def read_csv(path: Path) -> List[Dict[str, str]]:
    """The rows of a CSV file as dicts (header = keys, values as strings)."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _kv(path: Path) -> Dict[str, str]:
    return {r["name"]: r["value"] for r in read_csv(path)} if path.is_file() else {}


def _f(value, digits: int = 3, scale: float = 1.0) -> str:
    try:
        return f"{float(value) * scale:.{digits}f}"
    except (TypeError, ValueError):
        return "—"


def _mib(value) -> str:
    return _f(value, 2, 1 / 2**20) + " MiB" if value not in (None, "", "0") else "—"


def _engine_prefix(folder: Path) -> Optional[str]:
    runs = sorted(folder.glob("engine_*_run.csv"))
    return runs[0].name[: -len("_run.csv")] if runs else None


def render(folder: Path = RESULTS, img_rel: Optional[str] = "img") -> str:
    """The markdown page for the CSVs in ``folder`` (see module docstring); ``img_rel`` = plot folder relative to
    the page (None = no plots)."""
    folder = Path(folder)
    prefix = _engine_prefix(folder)
    if prefix is None:
        raise FileNotFoundError(f"{folder}: no engine_*_run.csv; run `python -m bench --quick` first")
    run = _kv(folder / f"{prefix}_run.csv")
    ratios = _kv(folder / f"{prefix}_ratios.csv")
    summary = read_csv(folder / f"{prefix}_summary.csv")
    hi = max(int(r["frames"]) for r in summary)
    lo = min(int(r["frames"]) for r in summary)
    L: List[str] = []
    L.append("# Benchmarks: long stories, the decode floor and the whole story step\n")
    L.append(
        f"_Generated from the CSV files in `bench/results/` by `{run['command']}` (and the commands named in each "
        "section). Do not edit by hand: every number here is read from those CSVs "
        "(checked by `tests/project/test_bench_docs.py`). A plain `python -m bench` writes to `bench/out/` (untracked) "
        "and changes no tracked file._\n"
    )

    # ---------------------------------------------------------------- headline ratios
    L.append("## The five ratios (one run)\n")
    L.append(f"Printed last by `{run['command']}`; all five come from the same process.\n")
    L.append("| ratio | value | target |")
    L.append("|---|---:|---:|")
    for key in (
        "decode_ms_per_token_over_plain_transformers",
        "step50_over_step5_default",
        "kv_bytes_default_over_dense_at_50",
        "reencode_over_multimodal_sink",
        "forced_over_onepass_image_queries",
    ):
        L.append(
            f"| `{key}` | {_f(ratios.get(key), 4)} | "
            f"{ratios.get('target_op_' + key, '')} {ratios.get('target_' + key, '')} |"
        )
    L.append("")
    L.append(
        "- `decode_ms_per_token_over_plain_transformers`: the engine's decode time per text token divided by a plain "
        "transformers `LlamaForCausalLM` with the same config and a `DynamicCache` of the same length (same "
        "process, threads, dtype; paired, interleaved repeats, median of per-repeat ratios). "
        f"Ours {_f(ratios.get('decode_ours_ms_per_token'), 3)} ms/token vs plain "
        f"{_f(ratios.get('decode_plain_transformers_ms_per_token'), 3)} ms/token at "
        f"{ratios.get('decode_cache_tokens')} "
        f"cached tokens (`{run.get('decode_policy')}` story at frame {hi}; {run['decode_reps']} repeats of "
        f"{run['decode_tokens']} tokens; per-repeat ratio range {_f(ratios.get('decode_ratio_min'), 3)}–"
        f"{_f(ratios.get('decode_ratio_max'), 3)})."
    )
    L.append(
        f"- `step50_over_step5_default` / `kv_bytes_default_over_dense_at_50`: the pack's default story settings "
        f"(`StorySettings()`: multimodal sink with the sink tokens of at most {run['default_max_sink_images']} evicted "
        f"images, window {run['window_images']} images here) — per-step MLLM time at frame {hi} over frame {lo}, and "
        f"KV bytes over dense at frame {hi}. The time ratio is paired: the two steps, from the kept states one frame "
        f"earlier (states are immutable, so stepping from them again is that frame's step; each timed step gets an "
        f"untimed private copy of the cache, as a story stepped in order holds it), run back to back, "
        f"{ratios.get('paired_default_pairs', '—')} pairs, median of the pair ratios (range "
        f"{_f(ratios.get('paired_default_ratio_min'), 3)}–{_f(ratios.get('paired_default_ratio_max'), 3)}); the "
        f"unpaired ratio of the table medians is `step{hi}_over_step{lo}_default` below. The floor for any cache that "
        f"keeps the last {run['window_images']} images is the plain window policy, measured the same way: "
        f"`step{hi}_over_step{lo}_window_paired` = {_f(ratios.get(f'step{hi}_over_step{lo}_window_paired'), 3)}. "
        "On this "
        f"preset attention over the context is a large share of a step, so the window's own growth (frame {lo} holds "
        f"{_get_kv(summary, 'window', lo)} tokens, frame {hi} {_get_kv(summary, 'window', hi)}) sets that floor."
    )
    L.append(
        "- `reencode_over_multimodal_sink`: the official loop (the window prompt re-encoded from scratch every step "
        "and the image tokens forced one decode step at a time, as `gen_george.py` does) over our paper-rule "
        f"multimodal sink (uncapped), per step at frame {hi}; paired like the step ratio ("
        f"{ratios.get('paired_reencode_over_multimodal_sink_pairs', '—')} pairs, range "
        f"{_f(ratios.get('paired_reencode_over_multimodal_sink_ratio_min'), 3)}–"
        f"{_f(ratios.get('paired_reencode_over_multimodal_sink_ratio_max'), 3)}); the unpaired ratio of the table "
        f"medians is `reencode_over_multimodal_sink_at_{hi}` below."
    )
    L.append(
        f"- `forced_over_onepass_image_queries`: the image queries decoded token by token (decoder forwards only, the "
        f"cheapest forced loop) over our single forward, at frame {hi} ({ratios.get('image_queries_context_tokens')} "
        f"cached tokens; max |Δfeatures| = {float(ratios.get('image_queries_max_abs_diff', 'nan')):.2e}).\n"
    )

    # ---------------------------------------------------------------- settings
    L.append("## Machine and settings\n")
    L.append(f"- {run['machine']}")
    L.append(
        f"- preset `{run['preset']}` (random weights), mode `{run['mode']}`, "
        f"frames {run['lengths'].replace(' ', ', ')}, "
        f"{run['sentence_tokens']} text tokens per step (BOI/EOS rows of the random lm_head zeroed, so every step "
        f"decodes exactly that many), window {run['window_images']} images, {run['reps']} interleaved repeats "
        f"after a {run['warmup_steps']}-step warm-up; table values are medians over repeats × the last "
        f"{run['pool_frames']} frames up to N ({run['samples']} samples); `torch.set_num_threads({run['threads']})`; "
        f"wall time {run['wall_s']} s."
    )
    L.append("- The CPU is shared with other jobs: absolute times are noisy; ratios are measured within one run.\n")

    # ---------------------------------------------------------------- per-step table
    L.append("## Per-step MLLM time (ms) and KV cache\n")
    L.append(
        "Phases: **prefill** = step start → end of the context pass storing the previous image (cache fork and the "
        "eviction/re-rotation included; for `reencode_window` the re-encoding of the whole window prompt), "
        "**decode** = the sentence token by token, **image** = the image queries (one forward; for "
        "`reencode_window` forced token by token like the official loop), **other** = building the new state.\n"
    )
    L.append(
        "| policy | frame | total | prefill | decode | image | other | min–max total | KV tokens | KV bytes "
        "| cumulative (s) |"
    )
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        re_ = r["policy"] == "reencode_window"
        L.append(
            f"| {r['policy']} | {r['frames']} | {_f(r['total_s'], 1, 1e3)} | {_f(r['prefill_s'], 1, 1e3)} | "
            f"{_f(r['decode_s'], 1, 1e3)} | {_f(r['image_s'], 1, 1e3)} | {_f(r['other_s'], 1, 1e3)} | "
            f"{_f(r['total_s_min'], 0, 1e3)}–{_f(r['total_s_max'], 0, 1e3)} | "
            f"{'(window)' if re_ else r['kv_tokens']} | "
            f"{_mib(r['kv_bytes_work'] if re_ else r['kv_bytes'])} | {_f(r['cumulative_s'], 2)} |"
        )
    L.append("")
    L.append("```")
    for name, value in ratios.items():
        if name.startswith(("step", "reencode_over", "kv_bytes_", "forced_over_onepass_with")):
            L.append(f"{name}: {_f(value, 4)}")
    L.append("```\n")
    if img_rel is not None:
        for name, title in (
            ("bench_time_per_step.png", "time per step"),
            ("bench_kv_memory.png", "KV memory"),
            ("bench_phases.png", "phases"),
        ):
            L.append(f"![{title}]({img_rel}/{name})\n")

    # ---------------------------------------------------------------- Table 8
    paper = (
        {r["policy"]: r for r in read_csv(folder / "paper_table8.csv")}
        if (folder / "paper_table8.csv").is_file()
        else {}
    )
    if paper:
        L.append(f"## Next to the paper's Table 8 (frame {hi})\n")
        L.append(
            "Paper: SEED-Story 7B on a GPU, 50 sequences, whole pipeline (MLLM + SD-XL), memory = GPU memory. Ours: "
            "MLLM only, this preset and device; compare the columns relative to dense. `multimodal_sink` is the "
            "paper's uncapped rule, `default` the pack's capped default.\n"
        )
        L.append(
            "| policy | paper FID | paper CLIP | paper time (s) | paper memory (GB) | paper time / dense | "
            "ours: cumulative MLLM time (s) | ours: KV | KV / dense |"
        )
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        at = {r["policy"]: r for r in summary if int(r["frames"]) == hi}
        for policy, r in at.items():
            p = paper.get(policy)
            kv = r["kv_bytes_work"] if policy == "reencode_window" else r["kv_bytes"]
            cols = (
                f"{p['fid']} | {p['clip']} | {p['time_s']} | {p['memory_gb']} | {_f(p['time_over_dense'], 3)}"
                if p
                else "— | — | — | — | —"
            )
            rel_kv = _f(ratios.get(f"kv_bytes_{policy}_over_dense_at_{hi}"), 4)
            L.append(f"| {policy} | {cols} | {_f(r['cumulative_s'], 2)} | {_mib(kv)} | {rel_kv} |")
        L.append("")

    # ---------------------------------------------------------------- full size
    fs = folder / "full_size.csv"
    if fs.is_file():
        rows = read_csv(fs)
        L.append("## Full size on paper (analytic, no weights)\n")
        L.append(
            f"Written by the same run (`bench.full_size`): the official SEED-Story config "
            f"({rows[0]['layers']} layers, {rows[0]['kv_heads']} KV heads × {rows[0]['head_dim']} dims, "
            f"{rows[0]['dtype_bytes']}-byte KV), {rows[0]['sentence_tokens']} text tokens per sentence, window "
            f"{rows[0]['window_images']} images, at frame {rows[0]['frame']}. Token counts come from the engine's "
            "own eviction rule (`plan_kept_positions`); KV bytes = (keys + values) × layers × KV heads × head dim × "
            "bytes × tokens; attention FLOPs per step = the two attention matmuls (QKᵀ and AV, a multiply-add "
            "counted as two FLOPs) × layers × heads × head dim × Σ over the step's queries of the keys they attend to "
            "(projections/MLP excluded — equal for every policy except the re-encode, whose prompt length is "
            "listed). Paper memory is the whole process "
            "(weights, SD-XL, activations), so compare differences, not totals.\n"
        )
        L.append(
            "| policy | kept tokens | KV (GiB) | KV − dense (GiB) | attention GFLOPs / step | "
            "re-encoded prompt tokens / step | paper memory (GB) | paper − dense (GB) |"
        )
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            L.append(
                f"| {r['policy']} | {r['kv_tokens']} | {_f(r['kv_bytes'], 3, 1 / 2**30)} | "
                f"{_f(r['kv_bytes_minus_dense'], 3, 1 / 2**30)} | {_f(r['attn_flops'], 2, 1e-9)} | "
                f"{r['reencode_tokens']} | "
                f"{r['paper_memory_gb'] or '—'} | {r['paper_minus_dense_gb'] or '—'} |"
            )
        L.append("")
        L.append(
            "**GPU command:** `python -m bench --device cuda --preset full --random-weights --quick` measures "
            "per-step time and `torch.cuda.max_memory_allocated` per policy with the full-size random-weight agent "
            "in bf16, which is what Table 8 reports for the MLLM (CPU tests run it with `--preset full --layers N`, "
            "tests/project/test_bench.py). What of it has run on a GPU is in the next section.\n"
        )
    L += _gpu_section(folder / GPU.name)

    # ---------------------------------------------------------------- whole step
    ss = folder / "story_step.csv"
    if ss.is_file():
        rows = read_csv(ss)
        L.append("## The whole story step (MLLM + de-tokenizer), per frame\n")
        L.append(
            "Written by `python -m bench.story_step`: median seconds per frame over the frames of one story "
            "(after warm-up), ours (cached multimodal-sink engine, one-pass image queries) vs the official loop "
            "(re-encode the window every step, image tokens forced one by one, Euler at the official step count). "
            "`detok` = rendering the frame from the regressed features. `total / ours` is relative to the first "
            "`ours` row with DPM-Solver++ of the same model. The shared CPU was heavily loaded (other jobs) and "
            "each cell is the median of the frames after the window filled, so single cells are noisy (the "
            "official and our Euler rows render the same amount of work). The DPM-Solver++ rows with more steps come "
            "from a second run of the same loop (`bench.story_step.run_loop`), added after the solver-quality "
            "check below.\n"
        )
        L.append(
            "| model | loop | solver | steps | frames | MLLM (s) | de-tokenizer (s) | total (s) | MLLM share "
            "| total / ours |"
        )
        L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            L.append(
                f"| {r['model']} | {r['loop']} | {r['scheduler']} | {r['steps']} | {r['frames']} | "
                f"{_f(r['mllm_s'], 4)} | {_f(r['detok_s'], 4)} | {_f(r['total_s'], 4)} | {_f(r['mllm_share'], 3)} | "
                f"{_f(r['total_over_ours'], 3)} |"
            )
        L.append("")
    sq = folder / "solver_quality.csv"
    if sq.is_file():
        rows = read_csv(sq)
        L.append("### De-tokenizer solver: quality on ground-truth features\n")
        L.append(
            "Written by `python -m bench.story_step`: held-out StoryStream-mini frames, their true ViT features "
            "rendered by the bundled de-tokenizer (the model before the stage-0 retrain) with each solver; the "
            "fixed judge's (`evaluation/judge`) agreement with the frames' true attributes.\n"
        )
        L.append("| solver | steps | frames | judge agreement | − official | pixel L1 vs official render | s / frame |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            L.append(
                f"| {r['scheduler']} | {r['steps']} | {r['frames']} | {_f(r['agreement'], 4)} | "
                f"{_f(r['agreement_minus_official'], 4)} | {_f(r['pixel_l1_vs_official'], 4)} | "
                f"{_f(r['s_per_frame'], 4)} |"
            )
        L.append("")

    # ---------------------------------------------------------------- cap ablation, long-story ablation
    ca = folder / "cap_ablation.csv"
    if ca.is_file():
        rows = read_csv(ca)
        L.append("## Choosing the default sink-image cap (long-story ablation)\n")
        L += _ablation_intro(
            rows,
            "`multimodal_sink:K` keeps the sink tokens of the K most recent evicted images. "
            f"The pack's default is K = {run['default_max_sink_images']}. This ran on the bundled "
            "model as it was before the stage-0 retrain (its agent hash above); the "
            "long-story ablations below ran on later ones.",
        )
        L += _ablation_table(rows)
    la = folder / "long_story_ablation.csv"
    if la.is_file():
        rows = read_csv(la)
        L.append("## The paper's long-story claim: every cache policy at 1x, 2x and 3x the training length\n")
        L += _ablation_intro(
            rows,
            "`dense` keeps everything; `window` only the last images; `sink` adds the first "
            "tokens; `multimodal_sink` adds the tokens around every evicted image's BOI and EOI. This is an earlier "
            "bundled agent, scored by the judge of that time in the world with one fixed look per character; the "
            "current bundle's run follows.",
        )
        L += _ablation_table(rows)
    per_mode = [folder / f"long_story_ablation_{m}.csv" for m in ("teacher_forced", "free_running")]
    if all(f.is_file() for f in per_mode):
        rows = [r for f in per_mode for r in read_csv(f)]
        L.append("## The paper's long-story claim on the current bundle\n")
        L += _ablation_intro(
            rows,
            "One process per mode: the free-running rows come from the same command with `--modes free_running "
            "--csv-name long_story_ablation_free_running.csv`. The per-story-looks world; the model card reads "
            'these rows (`models/seedstory-tiny/MODEL_CARD.md`, "The paper\'s long-story claim").',
        )
        L += _ablation_table(rows)

    L += _decode_section(folder) + _redo_section(folder)

    qa = folder / "quality.csv"
    if qa.is_file():
        rows = read_csv(qa)
        L.append("## Quality side of Table 8 (trained tiny model)\n")
        L.append(
            "Written by `python -m bench --model models/seedstory-tiny --update-docs` "
            "(`evaluation.evaluate.long_story_ablation`, free-running, the bundled model at the time of the run).\n"
        )
        L.append("| policy | length | attribute agreement | pixel L1 |")
        L.append("|---|---|---:|---:|")
        for r in rows:
            L.append(f"| {r['policy']} | {r['length']} | {_f(r['attribute_agreement'], 4)} | {_f(r['pixel_l1'], 4)} |")
        L.append("")

    L.append("## Known weaknesses\n")
    L.append(
        "- Random weights, tiny model, shared CPU: absolute times say little about a GPU deployment; "
        "the ratios are what is compared."
    )
    L.append(
        "- The full-size KV and FLOPs columns are analytic (token counting on the engine's own rule); on a GPU "
        "only the decode floor, the re-encode comparison and the image queries were measured, once each, and not "
        "the GPU memory per policy."
    )
    L.append(
        "- The quality judge is the evaluation's fixed frame classifier for the tiny world (`evaluation/judge`, "
        "docs/evaluation.md), a stand-in for the paper's FID / CLIP score."
    )
    return "\n".join(L) + "\n"


def write_docs(folder: Path, prefix: str = "", path: Path = DOCS, img_rel: Optional[str] = "img") -> Path:
    """Render :func:`render` for ``folder`` into ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(folder, img_rel))
    return path


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DOCS
    print(write_docs(folder, path=out))
