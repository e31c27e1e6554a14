"""The whole story step a user waits for — MLLM + de-tokenizer — ours vs the official loop, per frame.

    python -m bench.story_step [--frames 12] [--fast-steps 20] [--quality-frames 40] [--out-dir bench/out]

Models: the ``tiny`` preset with random weights (``seedstory_core.tiny.random_tiny_bundle``) and the bundled trained
model (``models/seedstory-tiny``). Loops, per frame (one :meth:`StoryEngine.step` + one rendering of its features):

* ``official`` — the official ``gen_george.py`` loop: the window prompt re-encoded from scratch every step, the image
  tokens forced one decode step at a time (``ReencodePolicy``), rendered with the official
  solver and step count (SD-XL Euler, 50 steps, guidance 7.5; docs/reference.md §3.1/§4.2);
* ``ours`` — the cached engine with the pack's default settings (``StorySettings()``: bounded multimodal sink, one-pass
  image queries), rendered with the official solver, and again with a faster one (DPM-Solver++ 2M multistep,
  ``--fast-steps``).

Every loop decodes the same fixed number of text tokens (``max_sentence_tokens``; the random model's BOI/EOS rows
are zeroed as in ``bench.measure.build_engine``; the trained model stops at its own BOI, so its sentences vary). The
table gives medians over the frames after the window is full (frames > ``window_images``, else all frames).

Solver quality (``solver_quality.csv``): held-out StoryStream-mini frames, their *true* visual-tokenizer features
rendered by the bundled de-tokenizer with each solver; the evaluation's fixed judge (``evaluation/judge``) reads every
rendered frame and its agreement with the frame's true attributes is averaged. The fast solver must stay within 0.01
of the official one.

Writes ``story_step.csv`` and ``solver_quality.csv`` into ``--out-dir`` (``--update-docs``: ``bench/results``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from bench import docs
from bench.config import DEFAULT_CHOICE, settings_for
from bench.report import write_csv
from evaluation.judge import load_judge
from evaluation.metrics import attribute_agreement
from evaluation.stories import DEFAULT_MODEL
from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.data import mini
from seedstory_core.reencode import REENCODE_WINDOW
from seedstory_core.story import DecodingSettings
from seedstory_core.tiny import random_tiny_bundle

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = dict(scheduler="euler", steps=50, guidance=7.5)
STEP_COLUMNS = (
    "model",
    "loop",
    "scheduler",
    "steps",
    "frames",
    "mllm_s",
    "detok_s",
    "total_s",
    "mllm_share",
    "total_over_ours",
)
QUALITY_COLUMNS = (
    "scheduler",
    "steps",
    "frames",
    "agreement",
    "agreement_minus_official",
    "pixel_l1_vs_official",
    "s_per_frame",
)


def _bundles(which: List[str]):
    out = {}
    trained = SeedStoryBundle.load(DEFAULT_MODEL)
    if "tiny-random" in which:
        torch.manual_seed(0)
        rnd = random_tiny_bundle(0, tokenizer=trained.tokenizer)
        with torch.no_grad():  # equal work per step: a random model never picks BOI / EOS
            rnd.agent.lm_head.weight[rnd.tokenizer.image_ids.boi].zero_()
            rnd.agent.lm_head.weight[rnd.tokenizer.eos_id].zero_()
        rnd.detokenizer = trained.detokenizer  # same renderer cost; a random one would draw noise just as slowly
        rnd.uncond_features = rnd.compute_uncond_features()
        out["tiny-random"] = rnd
    if "bundled" in which:
        out["bundled"] = trained
    return out


@torch.no_grad()
def run_loop(
    bundle,
    *,
    official: bool,
    scheduler: str,
    steps: int,
    frames: int,
    sentence_tokens: int,
    window_images: int,
    guidance: float,
) -> Dict[str, List[float]]:
    """Per-frame (mllm_s, detok_s) of one story of ``frames`` steps from a held-out StoryStream-mini start."""
    story = mini.generate_story(1001, 0, frames=2)
    start = mini.render_story(
        {**story, "captions": story["captions"][:1], "attributes": story["attributes"][:1]}, size=64
    )[0]
    settings = settings_for(REENCODE_WINDOW if official else DEFAULT_CHOICE, window_images)
    engine = bundle.engine(settings.policy)
    state = engine.start(story["captions"][0], image=start, settings=settings)
    decoding = DecodingSettings(max_sentence_tokens=sentence_tokens)
    mllm, detok = [], []
    for i in range(1, frames + 1):
        t0 = time.perf_counter()
        res = engine.step(state, decoding=decoding)
        t1 = time.perf_counter()
        bundle.detokenizer.generate(
            res.features,
            bundle.uncond_features,
            num_inference_steps=steps,
            scheduler=scheduler,
            guidance_scale=guidance,
            seed=0,
            frame_index=i,
            output="tensor",
        )
        t2 = time.perf_counter()
        state = res.state
        mllm.append(t1 - t0)
        detok.append(t2 - t1)
    return {"mllm": mllm, "detok": detok}


def whole_step_rows(
    models: List[str],
    *,
    frames: int,
    fast_steps: int,
    sentence_tokens: int,
    window_images: int,
    official_steps: int = OFFICIAL["steps"],
    log=print,
):
    """Rows of :data:`STEP_COLUMNS`: for each model, the official loop and ours (official solver, then DPM-Solver++
    with ``fast_steps``), median MLLM and de-tokenizer seconds per frame after the window is full."""
    loops = [
        ("official", True, OFFICIAL["scheduler"], official_steps),
        ("ours", False, OFFICIAL["scheduler"], official_steps),
        ("ours", False, "dpmpp_2m", fast_steps),
    ]
    rows = []
    for name, bundle in _bundles(models).items():
        # warm-up (lazy imports, allocator) with a short story
        run_loop(
            bundle,
            official=False,
            scheduler="euler",
            steps=2,
            frames=2,
            sentence_tokens=sentence_tokens,
            window_images=window_images,
            guidance=OFFICIAL["guidance"],
        )
        per = []
        for loop, official, sched, steps in loops:
            t = run_loop(
                bundle,
                official=official,
                scheduler=sched,
                steps=steps,
                frames=frames,
                sentence_tokens=sentence_tokens,
                window_images=window_images,
                guidance=OFFICIAL["guidance"],
            )
            sel = slice(window_images, None) if frames > window_images else slice(None)
            m, d = statistics.median(t["mllm"][sel]), statistics.median(t["detok"][sel])
            per.append(
                dict(
                    model=name,
                    loop=loop,
                    scheduler=sched,
                    steps=steps,
                    frames=len(t["mllm"][sel]),
                    mllm_s=round(m, 5),
                    detok_s=round(d, 5),
                    total_s=round(m + d, 5),
                    mllm_share=round(m / (m + d), 4),
                )
            )
            log(f"  {name:12s} {loop:8s} {sched:9s} {steps:3d} steps: MLLM {m:.3f} s + detok {d:.3f} s per frame")
        ours = next(r for r in per if r["loop"] == "ours" and r["scheduler"] == "dpmpp_2m")["total_s"]
        for r in per:
            r["total_over_ours"] = round(r["total_s"] / ours, 4)
        rows += per
    return rows


@torch.no_grad()
def solver_quality_rows(
    *,
    quality_frames: int,
    candidates,
    guidance: float = OFFICIAL["guidance"],
    official_steps: int = OFFICIAL["steps"],
    log=print,
):
    """Render true visual-tokenizer features of held-out frames with the official solver and each candidate
    ``(scheduler, steps)``; one row each (same noise per frame for every solver)."""
    bundle = SeedStoryBundle.load(DEFAULT_MODEL)
    judge = load_judge()
    frames, attrs = [], []
    k = 0
    while len(frames) < quality_frames:
        story = mini.generate_story(2000, k, frames=10)
        frames += mini.render_story(story, size=64)
        attrs += story["attributes"]
        k += 1
    frames, attrs = frames[:quality_frames], attrs[:quality_frames]
    feats = torch.cat([bundle.visual_tokenizer.encode_images(f)[:1] for f in frames])
    rows, renders = [], {}
    for sched, steps in ((OFFICIAL["scheduler"], official_steps), *candidates):
        imgs, t0 = [], time.perf_counter()
        for i in range(0, len(frames), 8):
            imgs += bundle.detokenizer.generate(
                feats[i : i + 8],
                bundle.uncond_features,
                num_inference_steps=steps,
                scheduler=sched,
                guidance_scale=guidance,
                seed=0,
                frame_index=list(range(i, min(i + 8, len(frames)))),
                output="pil",
            )
        dt = (time.perf_counter() - t0) / len(frames)
        preds = judge.predict(imgs)
        agree = float(np.mean([attribute_agreement(p, a) for p, a in zip(preds, attrs)]))
        renders[(sched, steps)] = imgs
        rows.append(
            dict(scheduler=sched, steps=steps, frames=len(frames), agreement=round(agree, 4), s_per_frame=round(dt, 5))
        )
        log(f"  solver {sched} {steps} steps: judge agreement {agree:.4f} ({dt:.3f} s/frame)")
    ref = renders[(OFFICIAL["scheduler"], official_steps)]
    for r in rows:
        r["agreement_minus_official"] = round(r["agreement"] - rows[0]["agreement"], 4)
        imgs = renders[(r["scheduler"], r["steps"])]
        r["pixel_l1_vs_official"] = round(
            float(
                np.mean(
                    [
                        np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean() / 255.0
                        for a, b in zip(imgs, ref)
                    ]
                )
            ),
            5,
        )
    return rows


def main(argv=None) -> int:
    """``python -m bench.story_step``: the whole-step and solver-quality tables (module docstring). Returns 0."""
    ap = argparse.ArgumentParser(prog="python -m bench.story_step", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny-random,bundled")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--fast-steps", type=int, default=20)
    ap.add_argument(
        "--official-steps", type=int, default=OFFICIAL["steps"], help="official solver steps (50; lower only for tests)"
    )
    ap.add_argument("--sentence-tokens", type=int, default=24)
    ap.add_argument("--window-images", type=int, default=8)
    ap.add_argument("--quality-frames", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-steps", action="store_true", help="only the solver-quality table")
    ap.add_argument(
        "--quality-candidates",
        default=None,
        help="comma list of scheduler:steps for the quality table (default: dpmpp_2m:<fast-steps>)",
    )
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "out"))
    ap.add_argument(
        "--update-docs", action="store_true", help="write into bench/results and regenerate docs/benchmarks.md"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = REPO / "bench" / "results" if args.update_docs else Path(args.out_dir)

    def log(m):
        print(m, file=sys.stderr, flush=True)

    rows = []
    if not args.skip_steps:
        rows = whole_step_rows(
            args.models.split(","),
            frames=args.frames,
            fast_steps=args.fast_steps,
            sentence_tokens=args.sentence_tokens,
            window_images=args.window_images,
            official_steps=args.official_steps,
            log=log,
        )
        write_csv(out / "story_step.csv", rows, STEP_COLUMNS)
    if not args.skip_quality:
        cands = (
            [(c.split(":")[0], int(c.split(":")[1])) for c in args.quality_candidates.split(",")]
            if args.quality_candidates
            else [("dpmpp_2m", args.fast_steps)]
        )
        q = solver_quality_rows(
            quality_frames=args.quality_frames, candidates=cands, official_steps=args.official_steps, log=log
        )
        write_csv(out / "solver_quality.csv", q, QUALITY_COLUMNS)
    if args.update_docs:
        docs.write_docs(out)
    for r in rows:
        print(",".join(str(r[c]) for c in STEP_COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
