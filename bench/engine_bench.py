"""Story-engine benchmark: the efficiency side of the SEED-Story paper's Table 8.

For every cache policy (``dense``, ``window``, ``sink``, ``multimodal_sink``) and the official baseline
(``reencode_window``: the windowed prompt re-encoded from scratch every step, as ``gen_george.py`` does), a story is
run to ``max(lengths)`` frames and every story step is timed, split into phases:

* ``prefill``  — from the start of :meth:`StoryEngine.step` to the end of the context pass (the forward that stores
  the previous step's image; for ``reencode_window`` the re-encoding of the whole window prompt). Includes the cache
  fork and the eviction that runs right after the image completes (re-rotation of the kept keys).
* ``decode``   — text decoding, token by token (exactly ``sentence_tokens`` tokens; see ``build_engine``).
* ``image``    — the image-query pass (:func:`~seedstory_core.generation.image_query_pass`, one forward).
* ``other``    — after the image queries to the return of ``step`` (building the new immutable state).

The phases are found by wrapping ``seedstory_core.story.forward_chunk`` / ``image_query_pass`` with timestamps
(the engine is not modified). Repeats are interleaved (rep 0 of every policy, then rep 1, ... with a rotated policy
order) and summarised by the median, so a noisy shared CPU affects all policies alike.

Frame N = the N-th :meth:`StoryEngine.step` after :meth:`StoryEngine.start` (the start image is frame 0). With
``window_images=8`` nothing is evicted up to frame 8.

Memory: ``kv_bytes`` = ``state.cache.nbytes()`` after the step (the kept cache); ``kv_bytes_work`` = the cache in use
right before the image queries (kept context + this step's sentence; for ``reencode_window`` the transient
re-encoded window, since its state keeps no cache). Peak process memory = ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
of a fresh child process per policy (tracemalloc does not see torch's tensor allocations); on CUDA
``torch.cuda.max_memory_allocated`` per policy.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
POLICIES = ("dense", "window", "sink", "multimodal_sink", "reencode_window")
RATIO_KEYS = (
    "step50_over_step5_multimodal_sink",
    "reencode_over_multimodal_sink",
    "forced_over_onepass_image_queries",
    "kv_bytes_multimodal_sink_over_dense_at_50",
)
# Paper Table 8 (seed_story_paper.txt): time and memory for generating 50 sequences, averaged over several runs.
PAPER_TABLE8 = {
    "dense": dict(name="Dense Attn", fid=119.72, clip=0.705, time_s=569.67, memory_gb=37.99),
    "window": dict(name="Window Attn", fid=334.90, clip=0.598, time_s=450.64, memory_gb=30.81),
    "sink": dict(name="Attn Sink", fid=221.53, clip=0.676, time_s=451.94, memory_gb=30.81),
    "multimodal_sink": dict(name="Ours (multimodal sink)", fid=79.67, clip=0.728, time_s=473.98, memory_gb=31.82),
}
STEP_COLUMNS = (
    "mode", "preset", "device", "dtype", "policy", "rep", "frame", "total_s", "prefill_s", "decode_s", "image_s",
    "other_s", "text_tokens", "kv_tokens", "kv_bytes", "kv_bytes_work", "evictions",
)
SUMMARY_COLUMNS = (
    "mode", "preset", "policy", "frames", "reps", "total_s", "prefill_s", "decode_s", "image_s", "other_s",
    "total_s_min", "total_s_max", "kv_tokens", "kv_bytes", "kv_bytes_work", "cumulative_s",
)


@dataclass
class BenchConfig:
    mode: str = "quick"  # quick | full | smoke
    preset: str = "tiny"
    device: str = "cpu"
    dtype: str = "fp32"
    policies: Tuple[str, ...] = POLICIES
    lengths: Tuple[int, ...] = (5, 10, 25, 50)
    reps: int = 3
    sentence_tokens: int = 24
    window_images: int = 8
    image_query_reps: int = 5
    warmup_steps: int = 3
    threads: int = 1
    pool_frames: int = 3  # summary medians pool frames N-2..N (see summarize)
    memory: bool = True
    memory_policies: Optional[Tuple[str, ...]] = None  # None = every policy
    seed: int = 0
    out_dir: Path = REPO / "bench" / "results"
    docs_path: Optional[Path] = REPO / "docs" / "benchmarks.md"
    img_dir: Optional[Path] = REPO / "docs" / "img"

    @property
    def max_frames(self) -> int:
        return max(self.lengths)


MODES = {
    "smoke": dict(policies=("dense", "window"), lengths=(3, 6), reps=1, sentence_tokens=4, window_images=2,
                  image_query_reps=1, warmup_steps=1, memory=False, pool_frames=1),
    # quick: peak RSS only for dense and multimodal_sink (each child re-runs a 50-frame story, ~15 s)
    "quick": dict(reps=3, image_query_reps=5, memory_policies=("dense", "multimodal_sink")),
    "full": dict(reps=7, image_query_reps=11),
}


# ------------------------------------------------------------------------------------------------ model
class SyntheticTokenizer:
    """Placeholder (documentation only): the official preset uses ``default_tiny_tokenizer(32000)``, a real
    LLaMA-layout tokenizer with 32000 pieces and the 66 image tokens at 32000..32065 — only ids matter here."""


def build_engine(cfg: BenchConfig):
    """A random-weight :class:`StoryEngine` for ``cfg.preset`` plus a (1, T, D) start-feature tensor.

    Random weights almost never pick BOI or EOS, but "almost" is not enough for equal work per step: the lm_head
    rows of BOI and EOS are zeroed (logit exactly 0, below the max of ~1000 random logits), so every sentence hits
    ``max_sentence_tokens`` and all policies decode exactly the same number of tokens per step (checked per row in
    the CSV: ``text_tokens``). LoRA B matrices are randomised (peft initialises them to zero) so the adapters are
    real work in every forward.
    """
    from seedstory_core.agent import SeedStoryAgent
    from seedstory_core.config import get_preset
    from seedstory_core.story import StoryEngine
    from seedstory_core.tokenizer import default_tiny_tokenizer

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
    config = get_preset(cfg.preset)
    n_img = config.agent.image_tokens.num_img_tokens
    base_vocab = config.agent.llm.vocab_size - 2 - n_img
    torch.manual_seed(cfg.seed)
    agent = SeedStoryAgent.build(config.agent, device=cfg.device, dtype=dtype).eval()
    # The tiny tokenizer builder makes a LLaMA-layout tokenizer of any base size (filler pieces up to it), so it is
    # also the stand-in for the 32000-piece LLaMA tokenizer of the official preset (no real one is needed: only
    # ids and their count matter for timing).
    tokenizer = default_tiny_tokenizer(base_vocab)
    with torch.no_grad():
        for name, p in agent.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
        head = agent.lm_head.weight
        head[tokenizer.image_ids.boi].zero_()
        head[tokenizer.eos_id].zero_()
    engine = StoryEngine(agent, tokenizer)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    feats = torch.randn(1, config.visual_tokenizer.n_queries, config.agent.input_resampler.kv_dim, generator=g)
    return engine, feats.to(device=cfg.device, dtype=dtype)


def settings_for(policy: str, cfg: BenchConfig):
    from seedstory_core.cache import CachePolicy
    from seedstory_core.story import StorySettings

    if policy == "reencode_window":
        return StorySettings(policy=CachePolicy(kind="window", window_images=cfg.window_images), reencode_window=True)
    return StorySettings(policy=CachePolicy(kind=policy, window_images=cfg.window_images))


def start_story(engine, feats, policy: str, cfg: BenchConfig):
    return engine.start("Tom the cat sat in the garden.", features=feats, settings=settings_for(policy, cfg))


def decoding_for(cfg: BenchConfig):
    from seedstory_core.story import DecodingSettings

    return DecodingSettings(max_sentence_tokens=cfg.sentence_tokens)


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ phase probe
class PhaseProbe:
    """Wraps ``story.forward_chunk`` and ``story.image_query_pass`` to timestamp the phases of one step."""

    def __init__(self, device: str):
        self.device = device
        self.events: List[tuple] = []
        self.kv_work = 0

    @contextlib.contextmanager
    def installed(self):
        from seedstory_core import story

        orig_fc, orig_iq = story.forward_chunk, story.image_query_pass
        probe = self

        def fc(agent, cache, embeds, kinds, **kw):
            out = orig_fc(agent, cache, embeds, kinds, **kw)
            _sync(probe.device)
            probe.events.append(("fc", len(kinds), time.perf_counter()))
            return out

        def iq(agent, cache, image, **kw):
            probe.kv_work = cache.nbytes()
            _sync(probe.device)
            t0 = time.perf_counter()
            out = orig_iq(agent, cache, image, **kw)
            _sync(probe.device)
            probe.events.append(("iq", t0, time.perf_counter()))
            return out

        story.forward_chunk, story.image_query_pass = fc, iq
        try:
            yield self
        finally:
            story.forward_chunk, story.image_query_pass = orig_fc, orig_iq

    def timed_step(self, engine, state, decoding) -> Tuple[object, Dict[str, float]]:
        self.events = []
        _sync(self.device)
        t_start = time.perf_counter()
        result = engine.step(state, decoding=decoding)
        _sync(self.device)
        t_end = time.perf_counter()
        prefill_end = t_start
        fcs = [e for e in self.events if e[0] == "fc"]
        if fcs and fcs[0][1] > 1:  # the context pass (66 tokens, or the whole re-encoded window)
            prefill_end = fcs[0][2]
        iq = [e for e in self.events if e[0] == "iq"][-1]
        phases = dict(total_s=t_end - t_start, prefill_s=prefill_end - t_start, decode_s=iq[1] - prefill_end,
                      image_s=iq[2] - iq[1], other_s=t_end - iq[2])
        return result, phases


# ------------------------------------------------------------------------------------------------ measurements
def run_policy(engine, feats, policy: str, cfg: BenchConfig, probe: PhaseProbe, rep: int, n_frames: int,
               keep_states: Optional[Dict] = None) -> List[dict]:
    decoding = decoding_for(cfg)
    state = start_story(engine, feats, policy, cfg)
    rows = []
    for frame in range(1, n_frames + 1):
        prev_len = len(state.token_ids)
        result, phases = probe.timed_step(engine, state, decoding)
        state = result.state
        cache = state.cache
        rows.append(dict(
            mode=cfg.mode, preset=cfg.preset, device=cfg.device, dtype=cfg.dtype, policy=policy, rep=rep, frame=frame,
            **{k: round(v, 7) for k, v in phases.items()},
            text_tokens=len(state.token_ids) - prev_len - len(engine.image.forced_sequence),
            kv_tokens=state.kv_length, kv_bytes=cache.nbytes() if cache is not None else 0,
            kv_bytes_work=probe.kv_work, evictions=cache.meta.evictions if cache is not None else 0,
        ))
        if keep_states is not None and frame in cfg.lengths:
            keep_states[(policy, frame)] = state
    return rows


def measure_steps(engine, feats, cfg: BenchConfig, log=print) -> Tuple[List[dict], Dict]:
    """Interleaved repeats of full stories for every policy; returns per-step rows and the states of rep 0."""
    probe = PhaseProbe(cfg.device)
    states: Dict = {}
    rows: List[dict] = []
    cuda_peak: Dict[str, int] = {}
    with probe.installed():
        for policy in cfg.policies:  # warm-up (allocator, lazy imports, first-call overheads)
            run_policy(engine, feats, policy, cfg, probe, -1, min(cfg.warmup_steps, cfg.max_frames))
        order = list(cfg.policies)
        for rep in range(cfg.reps):
            rot = order[rep % len(order):] + order[: rep % len(order)]
            for policy in rot:
                t0 = time.perf_counter()
                if str(cfg.device).startswith("cuda") and rep == 0:
                    torch.cuda.reset_peak_memory_stats()
                rows += run_policy(engine, feats, policy, cfg, probe, rep, cfg.max_frames, states if rep == 0 else None)
                if str(cfg.device).startswith("cuda") and rep == 0:
                    cuda_peak[policy] = torch.cuda.max_memory_allocated()
                log(f"  rep {rep} {policy:16s} {cfg.max_frames} frames in {time.perf_counter() - t0:.1f} s")
    states["cuda_peak"] = cuda_peak
    return rows, states


@torch.no_grad()
def measure_image_queries(engine, state, cfg: BenchConfig) -> Dict[str, float]:
    """One-pass image queries vs forced token-by-token decoding (BOI, IMG_0.. one token per forward, with the
    cache), on the context of ``state`` after its pending image is stored. Both include the output resampler.
    ``forced`` runs only the decoder forwards (no lm_head / logits processor per token: the cheapest possible
    token-by-token loop, so the ratio is a lower bound); ``forced_logits`` adds the lm_head per token as a real
    ``generate`` loop would."""
    from seedstory_core.cache import TokenKind
    from seedstory_core.generation import forward_chunk, image_query_pass, logits_at

    agent, image = engine.agent, engine.image
    cache = state.cache.fork()
    forward_chunk(agent, cache, engine._image_embeds(state.pending_image), engine._image_kinds())
    base_len = cache.length
    ids = [image.boi, *image.img]
    kinds = [TokenKind.BOI] + [TokenKind.IMG] * len(image.img)
    embeds = [agent.embed_tokens(torch.tensor([[t]], device=engine.device)) for t in ids]

    def one_pass():
        return image_query_pass(agent, cache, image, commit=False)["features"]

    def forced(with_logits: bool):
        step_cache = cache.fork()
        hs = []
        for e, k in zip(embeds, kinds):
            h = forward_chunk(agent, step_cache, e, [k])
            if with_logits:
                int(logits_at(agent, h[0, -1]).argmax())
            hs.append(h[:, -1])
        feats = agent.output_resampler(torch.stack(hs[1:], dim=1))
        for layer in step_cache.layers:  # give the buffer tail back so the next pass appends in place too
            layer.crop(base_len)
        return feats

    fns = {"onepass": one_pass, "forced": lambda: forced(False), "forced_logits": lambda: forced(True)}
    times = {k: [] for k in fns}
    for k, f in fns.items():  # warm-up
        f()
    for r in range(cfg.image_query_reps):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            _sync(cfg.device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(cfg.device)
            times[k].append(time.perf_counter() - t0)
    a, b = one_pass(), forced(False)
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out["max_abs_diff"] = float((a - b).abs().max())
    out["context_tokens"] = base_len
    return out


def memory_child(payload: dict) -> dict:
    """Runs in a fresh process: one policy's story to ``frames``; reports ru_maxrss before and after."""
    cfg = BenchConfig(**{k: v for k, v in payload.items() if k in ("preset", "device", "dtype", "sentence_tokens", "window_images", "seed", "threads")})
    torch.set_num_threads(cfg.threads)
    engine, feats = build_engine(cfg)
    decoding = decoding_for(cfg)
    with torch.no_grad():
        state = start_story(engine, feats, payload["policy"], cfg)
        state = engine.step(state, decoding=decoding).state
    def rss_kib():  # current resident set (sampled after each step); ru_maxrss is dominated by the model build
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, ValueError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    base = rss_kib()
    peaks, high = {}, base
    for frame in range(2, payload["frames"] + 1):
        state = engine.step(state, decoding=decoding).state
        high = max(high, rss_kib())
        if frame in payload["lengths"]:
            peaks[frame] = high
    return {"policy": payload["policy"], "baseline_kib": base, "peak_kib": peaks,
            "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}


def measure_memory(cfg: BenchConfig, log=print) -> Dict[str, dict]:
    out = {}
    for policy in cfg.policies:
        if cfg.memory_policies is not None and policy not in cfg.memory_policies:
            continue
        payload = dict(policy=policy, frames=cfg.max_frames, lengths=list(cfg.lengths), preset=cfg.preset, device=cfg.device,
                       dtype=cfg.dtype, sentence_tokens=cfg.sentence_tokens, window_images=cfg.window_images,
                       seed=cfg.seed, threads=cfg.threads)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bench", "--memory-child", json.dumps(payload)], cwd=str(REPO),
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            log(f"  memory child for {policy} failed:\n{proc.stderr[-2000:]}")
            continue
        out[policy] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  memory {policy:16s} in {time.perf_counter() - t0:.1f} s")
    return out


# ------------------------------------------------------------------------------------------------ summary
def summarize(rows: List[dict], cfg: BenchConfig) -> List[dict]:
    out = []
    for policy in cfg.policies:
        cum = 0.0
        for frame in range(1, cfg.max_frames + 1):
            sel = [r for r in rows if r["policy"] == policy and r["frame"] == frame and r["rep"] >= 0]
            if not sel:
                continue
            med = {k: statistics.median(r[k] for r in sel) for k in ("total_s", "prefill_s", "decode_s", "image_s", "other_s")}
            cum += med["total_s"]
            if frame not in cfg.lengths:
                continue
            # robust statistic: median over repeats x the frames [N - pool + 1, N] (same eviction regime for the
            # headline frames 5 and 50; per-frame medians are in the plots and every raw row in the steps CSV)
            sel = [r for r in rows if r["policy"] == policy and frame - cfg.pool_frames < r["frame"] <= frame and r["rep"] >= 0]
            med = {k: statistics.median(r[k] for r in sel) for k in ("total_s", "prefill_s", "decode_s", "image_s", "other_s")}
            totals = [r["total_s"] for r in sel]
            sel = [r for r in sel if r["frame"] == frame]
            out.append(dict(mode=cfg.mode, preset=cfg.preset, policy=policy, frames=frame, reps=len(totals),
                            **{k: round(v, 6) for k, v in med.items()},
                            total_s_min=round(min(totals), 6), total_s_max=round(max(totals), 6),
                            kv_tokens=sel[0]["kv_tokens"], kv_bytes=sel[0]["kv_bytes"], kv_bytes_work=sel[0]["kv_bytes_work"],
                            cumulative_s=round(cum, 4)))
    return out


def _get(summary, policy, frames, key):
    for r in summary:
        if r["policy"] == policy and r["frames"] == frames:
            return r[key]
    return None


def compute_ratios(summary: List[dict], iq: Optional[dict], cfg: BenchConfig) -> Tuple[Dict[str, float], List[Tuple[str, float]]]:
    """(the four headline ratios, every per-policy ratio line in print order)."""
    lo, hi = min(cfg.lengths), (50 if 50 in cfg.lengths else cfg.max_frames)
    lines: List[Tuple[str, float]] = []

    def div(a, b):
        return float("nan") if a is None or b in (None, 0) else a / b

    for p in cfg.policies:
        lines.append((f"step{hi}_over_step{lo}_{p}", div(_get(summary, p, hi, "total_s"), _get(summary, p, lo, "total_s"))))
    for p in cfg.policies:
        if p != "reencode_window" and "reencode_window" in cfg.policies:
            lines.append((f"reencode_over_{p}_at_{hi}", div(_get(summary, "reencode_window", hi, "total_s"), _get(summary, p, hi, "total_s"))))
            lines.append((f"reencode_over_{p}_prefill_at_{hi}", div(_get(summary, "reencode_window", hi, "prefill_s"), _get(summary, p, hi, "prefill_s"))))
    if iq:
        lines.append(("forced_over_onepass_with_logits", div(iq["forced_logits_s"], iq["onepass_s"])))
    if "dense" in cfg.policies:
        for p in cfg.policies:
            key = "kv_bytes_work" if p == "reencode_window" else "kv_bytes"
            lines.append((f"kv_bytes_{p}_over_dense_at_{hi}", div(_get(summary, p, hi, key), _get(summary, "dense", hi, "kv_bytes"))))
    mm = "multimodal_sink"
    head = {
        RATIO_KEYS[0]: div(_get(summary, mm, hi, "total_s"), _get(summary, mm, lo, "total_s")),
        RATIO_KEYS[1]: div(_get(summary, "reencode_window", hi, "total_s"), _get(summary, mm, hi, "total_s")),
        RATIO_KEYS[2]: div(iq["forced_s"], iq["onepass_s"]) if iq else float("nan"),
        RATIO_KEYS[3]: div(_get(summary, mm, hi, "kv_bytes"), _get(summary, "dense", hi, "kv_bytes")),
    }
    return head, lines


def format_ratio_lines(head: Dict[str, float], lines: List[Tuple[str, float]]) -> List[str]:
    out = [f"{k}: {v:.4f}" for k, v in lines]
    out += [f"{k}: {head[k]:.4f}" for k in RATIO_KEYS]
    return out


# ------------------------------------------------------------------------------------------------ output
def write_csv(path: Path, rows: List[dict], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def machine_description(cfg: BenchConfig) -> str:
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
    return (f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs visible, "
            f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), python {platform.python_version()}, "
            f"device {dev}, dtype {cfg.dtype}")


def make_plots(rows: List[dict], cfg: BenchConfig) -> List[Path]:
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
                key = "kv_bytes_work" if p == "reencode_window" else "kv_bytes"
                kv.append(sel[0][key] / 2**20)
        per[p] = (xs, ts, kv)
    for name, idx, ylabel, title in (
        ("bench_time_per_step.png", 1, "MLLM time per story step (ms, median)", "Time per step vs story length"),
        ("bench_kv_memory.png", 2, "KV cache (MiB)", "KV-cache memory vs story length"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for p, data in per.items():
            label = p + (" (transient window cache)" if p == "reencode_window" and idx == 2 else "")
            ax.plot(data[0], data[idx], label=label, lw=1.6, ls="--" if p == "reencode_window" else "-")
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
    hi = 50 if 50 in cfg.lengths else cfg.max_frames
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


def _fmt_bytes(n) -> str:
    return "—" if n is None else f"{n / 2**20:.2f} MiB"


def write_docs(cfg: BenchConfig, summary, head, lines, iq, memory, cuda_peak, elapsed, command) -> None:
    hi = 50 if 50 in cfg.lengths else cfg.max_frames
    L = []
    L.append("# Benchmarks: long-story efficiency (paper Table 8)\n")
    L.append(f"_Generated by `{command}` — do not edit by hand; rerun the command to regenerate "
             "(CSV in `bench/results/`, plots in `docs/img/bench_*.png`)._\n")
    L.append("## What is measured\n")
    L.append(
        "Per story step (frame N = the N-th `StoryEngine.step` after `start`; the start image is frame 0) the MLLM "
        "time split into **prefill** (step start → end of the context pass that stores the previous image; for "
        "`reencode_window` the re-encoding of the whole window prompt; includes the cache fork and the eviction / key "
        "re-rotation right after the image completes), **decode** (the sentence, token by token), **image** (the "
        "64 image queries in one forward) and **other** (building the new immutable state). Phases come from "
        "timestamps around `story.forward_chunk` / `story.image_query_pass` (wrapped by the benchmark; the engine is "
        "unchanged). No de-tokenizer / diffusion time: this is the MLLM part only, while the paper's times include "
        "the whole pipeline.\n")
    L.append(
        f"Policies: `dense`, `window`, `sink` (StreamingLLM, 4 start tokens), `multimodal_sink` (4 start tokens + "
        f"[BOI-4, BOI+8) and [EOI-8, EOI+4) of every evicted image), all with `window_images={cfg.window_images}` "
        f"like the paper (eviction starts after frame {cfg.window_images}), positions re-rotated; and "
        f"`reencode_window`, the official `gen_george.py` loop (the {cfg.window_images}-image window prompt rebuilt "
        "and re-encoded from scratch every step, no KV reuse; its image queries also use the one-pass forward, so the "
        "comparison isolates the context cost).\n")
    L.append(
        f"**Fixed sentence length.** Weights are random. Every step decodes exactly {cfg.sentence_tokens} text tokens "
        f"(`DecodingSettings(max_sentence_tokens={cfg.sentence_tokens})`, greedy): the lm_head rows of BOI and EOS are "
        "zeroed so a random model never ends a sentence early, and every CSV row records `text_tokens`. Per-step work "
        "is therefore identical across policies except for the context each policy keeps.\n")
    L.append(
        f"**Robustness.** {cfg.reps} interleaved repeats (every policy's full story in rep r before rep r+1, policy "
        f"order rotated per rep), after a {cfg.warmup_steps}-step warm-up per policy; table numbers are medians over "
        f"the repeats × frames N-{cfg.pool_frames - 1}..N ({cfg.reps * cfg.pool_frames} samples; frames 3-5 and 48-50 "
        "are in the same eviction regime as 5 and 50), plots show per-frame medians. `torch.set_num_threads({cfg.threads})`. The CPU was shared with other jobs while these numbers were "
        "taken, so absolute times are noisy; compare ratios, and look at min/max in the summary CSV.\n")
    L.append(
        "**Memory.** `kv_bytes` = `state.cache.nbytes()` after the step (keys+values kept). For `reencode_window` the "
        "state keeps no cache; its column shows the transient re-encoded window cache (`kv_bytes_work`: window + the "
        "step's sentence, measured right before the image queries). Peak process memory = `resource.getrusage"
        "(RUSAGE_SELF).ru_maxrss` of a fresh child process per policy (tracemalloc does not see torch tensor "
        "allocations); since ru_maxrss is set by the model build, the growth column uses the current RSS "
        "(/proc/self/statm) sampled after every step: max RSS up to frame N minus RSS after frame 1.\n")
    L.append("## Machine and settings\n")
    L.append(f"- {machine_description(cfg)}")
    L.append(f"- preset `{cfg.preset}` (random weights), mode `{cfg.mode}`, lengths {list(cfg.lengths)}, "
             f"{cfg.sentence_tokens} text tokens/step, window {cfg.window_images} images, seed {cfg.seed}; "
             f"wall time of the run {elapsed:.0f} s\n")
    L.append(f"## Per-step MLLM time (median of {cfg.reps} reps × {cfg.pool_frames} frames, ms) and KV cache\n")
    L.append("| policy | frame | total | prefill | decode | image | other | min–max total | KV tokens | KV bytes | cumulative to frame (s) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary:
        kvb = r["kv_bytes_work"] if r["policy"] == "reencode_window" else r["kv_bytes"]
        kvt = "(window)" if r["policy"] == "reencode_window" else r["kv_tokens"]
        L.append(f"| {r['policy']} | {r['frames']} | {1000*r['total_s']:.1f} | {1000*r['prefill_s']:.1f} | "
                 f"{1000*r['decode_s']:.1f} | {1000*r['image_s']:.1f} | {1000*r['other_s']:.1f} | "
                 f"{1000*r['total_s_min']:.0f}–{1000*r['total_s_max']:.0f} | {kvt} | {_fmt_bytes(kvb)} | {r['cumulative_s']:.2f} |")
    L.append("")
    L.append(f"## Next to the paper's Table 8 (frame {hi})\n")
    L.append("The paper: SEED-Story 7B on GPU, 50 sequences, whole pipeline (MLLM + SD-XL de-tokenizer), averaged over "
             "several runs; memory = GPU memory. Ours: MLLM only, this preset and device. Compare the *relative* "
             "columns (vs dense).\n")
    L.append("| policy | paper FID ↓ | paper CLIP ↑ | paper time (s) | paper memory (GB) | paper time / dense | "
             f"ours: cumulative MLLM time to frame {hi} (s) | ours / dense | ours: KV at {hi} | KV / dense | peak RSS growth |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    dense_cum = _get(summary, "dense", hi, "cumulative_s")
    dense_kv = _get(summary, "dense", hi, "kv_bytes")
    for p in cfg.policies:
        pt = PAPER_TABLE8.get(p)
        cum = _get(summary, p, hi, "cumulative_s")
        kvb = _get(summary, p, hi, "kv_bytes_work" if p == "reencode_window" else "kv_bytes")
        mem = memory.get(p) if memory else None
        if mem and str(hi) in {str(k) for k in mem["peak_kib"]}:
            peak = {int(k): v for k, v in mem["peak_kib"].items()}[hi]
            mem_s = f"{(peak - mem['baseline_kib']) / 1024:.1f} MiB (RSS {peak / 1024:.0f} MiB, ru_maxrss {mem.get('ru_maxrss_kib', 0) / 1024:.0f} MiB)"
        elif cuda_peak and p in cuda_peak:
            mem_s = f"CUDA peak {cuda_peak[p] / 2**30:.2f} GiB"
        else:
            mem_s = "—"
        paper = (f"{pt['fid']} | {pt['clip']} | {pt['time_s']} | {pt['memory_gb']} | "
                 f"{pt['time_s'] / PAPER_TABLE8['dense']['time_s']:.3f}") if pt else "— | — | — | — | —"
        ratio = f"{cum / dense_cum:.3f}" if cum and dense_cum else "—"
        kvr = f"{kvb / dense_kv:.3f}" if kvb is not None and dense_kv else "—"
        L.append(f"| {p} | {paper} | {cum if cum is not None else '—'} | {ratio} | {_fmt_bytes(kvb)} | {kvr} | {mem_s} |")
    L.append("")
    L.append("FID / CLIP need a trained model: `python -m bench --model DIR` calls "
             "`training.evaluate.long_story_ablation` (1x/2x/3x the training length) when it exists.\n")
    if iq:
        L.append(f"## Image queries: one pass vs forced token-by-token (multimodal_sink, frame {hi}, median of {cfg.image_query_reps})\n")
        L.append(f"- context: {iq['context_tokens']} cached tokens; one pass over [BOI, IMG_0..IMG_63]: "
                 f"{1000*iq['onepass_s']:.2f} ms")
        L.append(f"- forced decoding, decoder forwards only (65 forwards of 1 token): {1000*iq['forced_s']:.2f} ms "
                 f"(ratio {iq['forced_s']/iq['onepass_s']:.1f}x)")
        L.append(f"- forced decoding + lm_head/argmax per token (what a generate loop does): {1000*iq['forced_logits_s']:.2f} ms "
                 f"(ratio {iq['forced_logits_s']/iq['onepass_s']:.1f}x)")
        L.append(f"- max |features(one pass) − features(forced)| = {iq['max_abs_diff']:.2e}\n")
    L.append("## Ratios (the last lines printed by `python -m bench`)\n")
    L.append("Targets from the issue: step50/step5 ≤ 1.15 · reencode/multimodal sink ≥ 5 · forced/one-pass ≥ 10 · "
             "KV multimodal sink/dense at 50 ≤ 0.3.\n")
    L.append("```")
    L += format_ratio_lines(head, lines)
    L.append("```\n")
    L.append("![time per step](img/bench_time_per_step.png)\n")
    L.append("![KV memory](img/bench_kv_memory.png)\n")
    L.append("![phases](img/bench_phases.png)\n")
    notes = REPO / "bench" / "NOTES.md"
    if notes.exists():
        L.append(notes.read_text())
    cfg.docs_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.docs_path.write_text("\n".join(L) + "\n")


# ------------------------------------------------------------------------------------------------ quality hook
def quality_mode(model_dir: str, cfg: BenchConfig, log=print) -> int:
    """Quality side of Table 8 at 1x / 2x / 3x the training length with a trained bundle: ground-truth captions
    visualized under each cache policy, scored against the ground-truth frames (attribute agreement read by the
    StoryStream-mini attribute probe, pixel L1) — the tiny-world stand-ins for the paper's CLIP score and FID."""
    try:
        from training.evaluate import long_story_ablation  # type: ignore
    except ImportError as exc:
        log("quality mode skipped: `training.evaluate.long_story_ablation` is not available yet "
            f"({exc}). It needs the trained tiny model and its evaluation code; once "
            "`training/evaluate.py` defines long_story_ablation(model_dir, policies, length_multiples, window_images, "
            "device, dtype) -> list of row dicts, `python -m bench --model DIR` writes bench/results/quality.csv.")
        return 0
    from seedstory_core.cache import POLICIES

    # the official reencode_window loop is a context strategy, not a cache policy: it has no ablation row
    table = long_story_ablation(model_dir, policies=tuple(p for p in cfg.policies if p in POLICIES), length_multiples=(1, 2, 3),
                                window_images=cfg.window_images, device=cfg.device, dtype=cfg.dtype)
    rows = [{"policy": policy, "length": seg, **metrics} for policy, segs in table.items() for seg, metrics in segs.items()]
    for r in rows:
        log(f"  {r['policy']:16s} {r['length']}: attribute agreement {r['attribute_agreement']:.3f}, pixel L1 {r['pixel_l1']:.3f}")
    cols = ["policy", "length", "attribute_agreement", "pixel_l1"]
    write_csv(cfg.out_dir / "quality.csv", rows, cols)
    log(f"quality: {len(rows)} rows -> {cfg.out_dir / 'quality.csv'}")
    return 0


# ------------------------------------------------------------------------------------------------ driver
def run(cfg: BenchConfig, *, command: str = "python -m bench", log=print) -> Dict[str, float]:
    t_run = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    log(f"seedstory bench: mode={cfg.mode} preset={cfg.preset} device={cfg.device} dtype={cfg.dtype} "
        f"policies={list(cfg.policies)} lengths={list(cfg.lengths)} reps={cfg.reps} text_tokens={cfg.sentence_tokens}")
    engine, feats = build_engine(cfg)
    log(f"  model built ({sum(p.numel() for p in engine.agent.parameters()) / 1e6:.1f} M parameters)")
    with torch.no_grad():
        rows, states = measure_steps(engine, feats, cfg, log)
        bad = [r for r in rows if r["text_tokens"] != cfg.sentence_tokens]
        if bad:
            log(f"  WARNING: {len(bad)} steps decoded != {cfg.sentence_tokens} text tokens (unequal work per step)")
        iq = None
        hi = 50 if 50 in cfg.lengths else cfg.max_frames
        iq_policy = "multimodal_sink" if ("multimodal_sink", hi) in states else cfg.policies[0]
        if (iq_policy, hi) in states and states[(iq_policy, hi)].cache is not None:
            iq = measure_image_queries(engine, states[(iq_policy, hi)], cfg)
            log(f"  image queries ({iq_policy}, frame {hi}): one-pass {1000*iq['onepass_s']:.2f} ms, forced {1000*iq['forced_s']:.2f} ms")
    del states[(iq_policy, hi)]
    memory = measure_memory(cfg, log) if cfg.memory and not str(cfg.device).startswith("cuda") else {}
    summary = summarize(rows, cfg)
    head, lines = compute_ratios(summary, iq, cfg)
    prefix = f"engine_{cfg.mode}_{cfg.preset}"
    write_csv(cfg.out_dir / f"{prefix}_steps.csv", rows, STEP_COLUMNS)
    write_csv(cfg.out_dir / f"{prefix}_summary.csv", summary, SUMMARY_COLUMNS)
    extra = [dict(name=k, value=v) for k, v in lines] + [dict(name=k, value=head[k]) for k in RATIO_KEYS]
    if iq:
        extra += [dict(name=f"image_queries_{k}", value=v) for k, v in iq.items()]
    for p, m in memory.items():
        extra.append(dict(name=f"rss_baseline_kib_{p}", value=m["baseline_kib"]))
        extra += [dict(name=f"rss_peak_kib_{p}_at_{f}", value=v) for f, v in m["peak_kib"].items()]
    write_csv(cfg.out_dir / f"{prefix}_ratios.csv", extra, ("name", "value"))
    elapsed = time.perf_counter() - t_run
    if cfg.img_dir is not None:
        make_plots(rows, cfg)
    if cfg.docs_path is not None:
        write_docs(cfg, summary, head, lines, iq, memory, states.get("cuda_peak"), elapsed, command)
    log(f"  wrote {cfg.out_dir}/{prefix}_*.csv" + (f", {cfg.docs_path}" if cfg.docs_path else "") + f" ({elapsed:.0f} s)")
    for line in format_ratio_lines(head, lines):
        print(line, flush=True)
    return head


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description="SEED-Story story-engine benchmarks (paper Table 8)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (under 5 minutes on 2 CPU cores)")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="tiny", choices=("tiny", "official"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--policies", default=None, help="comma list (default: all five)")
    ap.add_argument("--lengths", default=None, help="comma list of frames, e.g. 5,10,25,50")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--sentence-tokens", type=int, default=None)
    ap.add_argument("--window-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 1 on CPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-policy child processes (peak RSS)")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--docs", default=None, help="markdown file to write ('' = none)")
    ap.add_argument("--img-dir", default=None, help="plot folder ('' = none)")
    ap.add_argument("--model", default=None, help="trained bundle folder: quality side of Table 8 (FID/CLIP)")
    return ap.parse_args(argv)


def config_from_args(args) -> BenchConfig:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = BenchConfig(mode=mode, **MODES[mode])
    cfg.preset = args.preset
    cfg.device = args.device
    cfg.dtype = args.dtype or ("bf16" if str(args.device).startswith("cuda") else "fp32")
    if args.policies:
        cfg.policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
        unknown = set(cfg.policies) - set(POLICIES)
        if unknown:
            raise SystemExit(f"unknown policies {sorted(unknown)}; choose from {POLICIES}")
    if args.lengths:
        cfg.lengths = tuple(sorted(int(x) for x in args.lengths.split(",")))
    for name in ("reps", "sentence_tokens", "window_images", "threads"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.threads is None and str(cfg.device).startswith("cuda"):
        cfg.threads = torch.get_num_threads()
    if args.no_memory:
        cfg.memory = False
    if args.out_dir is not None:
        cfg.out_dir = Path(args.out_dir)
    if args.docs is not None:
        cfg.docs_path = Path(args.docs) if args.docs else None
    if args.img_dir is not None:
        cfg.img_dir = Path(args.img_dir) if args.img_dir else None
    if mode == "smoke" and args.docs is None:
        cfg.docs_path = None
    if mode == "smoke" and args.img_dir is None:
        cfg.img_dir = None
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    cfg = config_from_args(args)
    if args.model:
        return quality_mode(args.model, cfg)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))
    argv_s = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    run(cfg, command=f"python -m bench {argv_s}".strip(), log=log)
    return 0
