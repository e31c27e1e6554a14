"""What a redo of one frame costs next to re-running the story: ``redo_over_rerun``.

    python -m bench.redo_bench [--reps 3] [--device cpu] [--out-dir bench/out]

(``python -m bench --quick`` and ``python -m bench`` run it first and print its ratio line before theirs.)

The story: the bundled trained tiny model (``models/seedstory-tiny``; seeded random tiny weights when it is missing),
its demo start picture and sentence, 11 generated frames (a 12-frame story), the pack's decoding (greedy, repetition
penalty 1.2, no repeated sentences, at most 40 text tokens) and the tiny template's rendering (3 Euler steps,
guidance 3.0), every frame rendered, as Generate Story does. Timed (CPU: the process's CPU time with one torch
thread, so other work on a shared machine does not count; GPU: wall time), interleaved ``--reps`` times:

* ``rerun``: the whole story again (start picture encoded, 11 steps, 11 renders);
* ``redo``: :func:`seedstory_core.redo.redo_frame` of frame 5 with another seed, the later frames re-drawn with their
  sentences kept (the Redo Frame node's default), every new frame rendered: frames 5 to 11;
* ``redo_continue``: the same with ``after="continue"`` (the later frames written again by the model).

Printed: ``redo_over_rerun`` (median redo / median rerun; issue 27 asks for <= 0.6) and ``redo_continue_over_rerun``.
Writes ``redo.csv`` into the output folder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from PIL import Image

from bench.config import DEFAULT_OUT, TRACKED_RESULTS, parse_args
from bench.report import write_csv
from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.redo import StoryRecord, redo_frame
from seedstory_core.story import DEFAULT_REPETITION_PENALTY, DecodingSettings, StorySettings
from seedstory_core.tiny import random_tiny_bundle

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "seedstory-tiny"
STEPS, REDO_FRAME, NEW_SEED = 11, 5, 1234
DECODING = DecodingSettings(
    repetition_penalty=DEFAULT_REPETITION_PENALTY, max_sentence_tokens=40, no_repeat_sentences=True, seed=42
)
RENDER = dict(steps=3, guidance_scale=3.0)
TARGET = 0.6


def load_model(device: str):
    """(bundle, start picture, opening sentence, which model)."""
    if (TINY / "seedstory_config.json").is_file():
        bundle = SeedStoryBundle.load(TINY, device=device)
        picture = Image.open(TINY / "demo_start.png").convert("RGB")
        text = " ".join((TINY / "demo_start.txt").read_text(encoding="utf-8").split())
        return bundle, picture, text, "models/seedstory-tiny"
    bundle = random_tiny_bundle(0).to(device)
    return bundle, Image.new("RGB", (64, 64), (200, 120, 40)), "Max and Zoe are at the beach.", "random tiny"


def tell(bundle, picture, text, steps: int = STEPS) -> StoryRecord:
    """The whole story, rendered: what re-running it costs."""
    engine = bundle.engine()
    start = engine.start(text, image=picture, settings=StorySettings())
    frames = [picture]
    _, results = engine.run(
        start,
        steps,
        decoding=DECODING,
        on_frame=lambda i, _n, r: frames.append(bundle.render(r.features, frame_index=i, seed=42, **RENDER)),
    )
    return StoryRecord.from_run(start, results, frames, mode="generation", decoding=DECODING, render={"seed": 42})


def redo(bundle, record: StoryRecord, after: str) -> StoryRecord:
    """Frame :data:`REDO_FRAME` redone with a new seed, every new frame rendered."""
    return redo_frame(
        bundle.engine(),
        record,
        REDO_FRAME,
        seed=NEW_SEED,
        after=after,
        render=lambda i, r: bundle.render(r.features, frame_index=i, seed=NEW_SEED, **RENDER),
    )


def clock(device: str):
    """The timer: this process's CPU time on the CPU (one torch thread; other processes on a shared machine do not
    count), wall time after a synchronize on an accelerator."""
    if str(device).startswith("cpu"):
        return time.process_time

    def wall():
        torch.cuda.synchronize()
        return time.perf_counter()

    return wall


def measure(reps: int, device: str, log=print) -> Dict[str, float]:
    """Median seconds of each variant over ``reps`` interleaved runs, and the ratios."""
    torch.manual_seed(0)
    if str(device).startswith("cpu"):
        torch.set_num_threads(1)
    now = clock(device)
    bundle, picture, text, which = load_model(device)
    times: Dict[str, List[float]] = {"rerun": [], "redo": [], "redo_continue": []}
    with torch.no_grad():
        tell(bundle, picture, text, steps=2)  # warm-up
        for _ in range(reps):
            t0 = now()
            record = tell(bundle, picture, text)  # re-run; the story the redos of this rep start from
            times["rerun"].append(now() - t0)
            for name, after in (("redo", "keep_sentences"), ("redo_continue", "continue")):
                t0 = now()
                redo(bundle, record, after)
                times[name].append(now() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    log(
        f"  redo bench ({which}, {device}, {STEPS + 1}-frame story, redo of frame {REDO_FRAME}, {reps} reps): "
        f"rerun {med['rerun']:.2f} s, redo {med['redo']:.2f} s, redo+continue {med['redo_continue']:.2f} s"
    )
    return {
        "model": which,
        "frames": STEPS + 1,
        "redo_frame": REDO_FRAME,
        "reps": reps,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        "redo_over_rerun": med["redo"] / med["rerun"],
        "redo_continue_over_rerun": med["redo_continue"] / med["rerun"],
    }


def ratio_lines(result: Dict[str, float]) -> List[str]:
    return [f"{k}: {result[k]:.4f}" for k in ("redo_over_rerun", "redo_continue_over_rerun")]


def run(reps: int, device: str, out_dir: Path, log=print) -> Dict[str, float]:
    """Measure, write ``redo.csv`` into ``out_dir``, print the ratio lines."""
    result = measure(reps, device, log)
    write_csv(Path(out_dir) / "redo.csv", [dict(name=k, value=v) for k, v in result.items()], ("name", "value"))
    for line in ratio_lines(result):
        print(line, flush=True)
    return result


def before_engine_bench(argv: Optional[List[str]] = None) -> int:
    """``python -m bench``'s hook: run this benchmark first for a plain timing run (``--quick`` or the full mode;
    not ``--smoke``, the quality hook ``--model`` or a memory child). Returns 0."""
    args = parse_args(argv)
    if args.smoke or args.model or args.memory_child:
        return 0
    out = Path(args.out_dir) if args.out_dir else (TRACKED_RESULTS if args.update_docs else DEFAULT_OUT)
    reps = 2 if args.quick else 5

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    run(reps, args.device, out, log)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.redo_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out-dir", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    result = run(args.reps, args.device, Path(args.out_dir), log=lambda msg: print(msg, file=sys.stderr, flush=True))
    return 0 if result["redo_over_rerun"] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
