"""The story-engine benchmark's run configuration: which policies, lengths and repeats a run measures, where it
writes, and its command line (``python -m bench``; the flags are listed by ``python -m bench --help``).

Policy choices (:data:`POLICIES`): the KV-cache policies (:data:`seedstory_core.cache.POLICIES`), the bench's extra
choice :data:`DEFAULT_CHOICE` (``default`` = the pack's default settings, ``StorySettings()``: the multimodal sink
capped at :data:`~seedstory_core.story.DEFAULT_MAX_SINK_IMAGES` sink images, bounded) and the official re-encode
loop (:data:`~seedstory_core.reencode.REENCODE_WINDOW`). ``multimodal_sink`` is the paper's uncapped rule (the
Table 8 reproduction). :func:`settings_for` turns a choice into the story's settings.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch

from seedstory_core.cache import POLICIES as CACHE_POLICIES
from seedstory_core.reencode import REENCODE_WINDOW
from seedstory_core.story import StorySettings, default_policy

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out"  # untracked (bench/.gitignore); --update-docs writes the tracked copies below
TRACKED_RESULTS = REPO / "bench" / "results"
TRACKED_DOCS = REPO / "docs" / "benchmarks.md"
TRACKED_IMG = REPO / "docs" / "img"
#: the bench's name for the pack's default story settings (``StorySettings()``, bounded)
DEFAULT_CHOICE = "default"
#: every policy a run can measure, in the order of the CSV rows and plots
POLICIES = (*CACHE_POLICIES, DEFAULT_CHOICE, REENCODE_WINDOW)


def settings_for(choice: str, window_images: int) -> StorySettings:
    """The story settings of one of :data:`POLICIES` with a window of ``window_images`` images.

    ``default``: the pack's default policy (:func:`seedstory_core.story.default_policy`: the multimodal sink keeping
    the sink tokens of :data:`~seedstory_core.story.DEFAULT_MAX_SINK_IMAGES` evicted images) with that window; every
    other choice: :meth:`StorySettings.for_choice` (``multimodal_sink`` = the paper's uncapped rule).

    Raises:
        ValueError: an unknown choice.
    """
    if choice == DEFAULT_CHOICE:
        default = default_policy()
        return StorySettings.for_choice(
            default.kind, window_images=window_images, max_sink_images=default.max_sink_images
        )
    return StorySettings.for_choice(choice, window_images=window_images)


@dataclass
class BenchConfig:
    """One benchmark run: what it measures (policies, story lengths in frames, repeats, text tokens per step, window
    in images), on what (preset, device, dtype, torch threads) and where its CSVs, page and plots go."""

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
    pool_frames: int = 3  # summary medians pool frames N-2..N (see bench.report.summarize)
    step_pairs: int = 25  # back-to-back step pairs per paired ratio (median of the pair ratios)
    memory: bool = True
    memory_policies: Optional[Tuple[str, ...]] = None  # None = every policy
    seed: int = 0
    decode_tokens: int = 48  # tokens per decode-floor sample (ours vs plain transformers)
    decode_reps: int = 7
    merge_lora: Optional[bool] = None  # StoryEngine(merge_lora=...): None = auto
    random_weights: bool = True
    extras: bool = True  # image queries, decode floor, paired steps (off: --skip-extras, a quick path check)
    layers: Optional[int] = None  # override the preset's decoder layer count (e.g. a 2-layer full-size run on CPU)
    out_dir: Path = DEFAULT_OUT
    docs_path: Optional[Path] = DEFAULT_OUT / "benchmarks.md"
    img_dir: Optional[Path] = DEFAULT_OUT / "img"

    @property
    def max_frames(self) -> int:
        return max(self.lengths)

    @property
    def headline_frame(self) -> int:
        """The frame the headline ratios compare: 50 when measured, else the longest story."""
        return 50 if 50 in self.lengths else self.max_frames


#: BenchConfig overrides of each run mode (--smoke / --quick / default full): how many policies, lengths and
#: repetitions a run measures.
BENCH_CONFIG_BY_MODE = {
    "smoke": dict(
        policies=("dense", "window"),
        lengths=(3, 6),
        reps=1,
        sentence_tokens=4,
        window_images=2,
        image_query_reps=1,
        warmup_steps=1,
        memory=False,
        pool_frames=1,
        decode_tokens=4,
        decode_reps=1,
        step_pairs=3,
    ),
    # quick: peak RSS only for dense and multimodal_sink (each child re-runs a 50-frame story, ~15 s)
    "quick": dict(reps=3, image_query_reps=5, memory_policies=("dense", "multimodal_sink")),
    "full": dict(reps=7, image_query_reps=11, decode_reps=11),
}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line of ``python -m bench`` (``argv`` None = ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(
        prog="python -m bench", description="SEED-Story story-engine benchmarks (paper Table 8)"
    )
    ap.add_argument("--quick", action="store_true", help="fewer repeats (about 5 minutes on 2 CPU cores)")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--preset",
        default="tiny",
        choices=("tiny", "official", "full"),
        help="model size (full = official = the full-size SEED-Story config; random weights)",
    )
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights (the only mode: timing does not depend on the weights; accepted for clarity)",
    )
    ap.add_argument(
        "--layers",
        type=int,
        default=None,
        help="override the decoder layer count (e.g. --preset full --layers 2 on CPU)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    ap.add_argument(
        "--merge-lora",
        default="auto",
        choices=("auto", "on", "off"),
        help="StoryEngine(merge_lora=...): merged LoRA inference decoder (auto = when the copy is <= 1 GiB)",
    )
    ap.add_argument("--policies", default=None, help="comma list (default: all)")
    ap.add_argument("--lengths", default=None, help="comma list of frames, e.g. 5,10,25,50")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--sentence-tokens", type=int, default=None)
    ap.add_argument("--window-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 1 on CPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-policy child processes (peak RSS)")
    ap.add_argument(
        "--skip-extras",
        action="store_true",
        help="only the per-step story runs (no image-query, decode-floor or paired-step measurement)",
    )
    ap.add_argument(
        "--out-dir", default=None, help=f"results folder (default {DEFAULT_OUT.relative_to(REPO)}, untracked)"
    )
    ap.add_argument("--docs", default=None, help="markdown file to write (default <out-dir>/benchmarks.md; '' = none)")
    ap.add_argument("--img-dir", default=None, help="plot folder (default <out-dir>/img; '' = none)")
    ap.add_argument(
        "--update-docs",
        action="store_true",
        help="write the tracked copies: bench/results/*.csv, docs/benchmarks.md, docs/img/bench_*.png",
    )
    ap.add_argument("--model", default=None, help="trained bundle folder: quality side of Table 8 (FID/CLIP)")
    return ap.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` of parsed arguments: the mode's defaults (:data:`BENCH_CONFIG_BY_MODE`), then the
    flags. Raises SystemExit for a policy not in :data:`POLICIES`."""
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = BenchConfig(mode=mode, **BENCH_CONFIG_BY_MODE[mode])
    cfg.preset = "full" if args.preset == "official" else args.preset
    cfg.layers = args.layers
    cfg.device = args.device
    cfg.dtype = args.dtype or ("bf16" if str(args.device).startswith("cuda") else "fp32")
    cfg.merge_lora = {"auto": None, "on": True, "off": False}[args.merge_lora]
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
    if args.skip_extras:
        cfg.extras = False
    if args.update_docs:
        cfg.out_dir, cfg.docs_path, cfg.img_dir = TRACKED_RESULTS, TRACKED_DOCS, TRACKED_IMG
    if args.out_dir is not None:
        cfg.out_dir = Path(args.out_dir)
        if not args.update_docs:
            cfg.docs_path, cfg.img_dir = cfg.out_dir / "benchmarks.md", cfg.out_dir / "img"
    if args.docs is not None:
        cfg.docs_path = Path(args.docs) if args.docs else None
    if args.img_dir is not None:
        cfg.img_dir = Path(args.img_dir) if args.img_dir else None
    if mode == "smoke" and args.docs is None and not args.update_docs:
        cfg.docs_path = None
    if mode == "smoke" and args.img_dir is None and not args.update_docs:
        cfg.img_dir = None
    return cfg
