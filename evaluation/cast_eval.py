"""Characters who stay themselves: the protocol of the cast sheet and the consistency retry (docs/evaluation.md).

    python -m evaluation.cast_eval --seed S --stories 30 --frames 30 --out evaluation/results/cast
        [--systems model,model_cast,model_retry,model_cast_retry,copy_first,retrieval,static_start,rule_based,
                   ground_truth,ground_truth_detok]
        [--model DIR] [--random-init] [--diffusion-steps 10] [--guidance-scale 3.0]
        [--retry 2] [--retry-threshold 0.60] [--jobs 2] [--device cpu] [--no-visualization]
        [--penalty-window N] [--context regressed|drawn]

For every system (:data:`SYSTEMS`) and every held-out story ``0..N-1`` of ``--seed``: free-running generation of
``--frames`` frames (30 = 3x the training length of 10) from the story's true first frame and sentence, each frame
read by the fixed judge and scored with the FULL story so far (:func:`evaluation.metrics.judge_frame`, the story's
true looks; :func:`judge_story`). Reported per segment of generated frames (:data:`SEGMENTS`): ``1x`` = frames 1..9,
``3x`` = frames 21..29 (the chunk-start frames 10 and 20 are left out), ``all`` = every generated frame; per metric
(:data:`METRICS`) the per-story values, their mean and a 95% bootstrap interval over stories
(:func:`evaluation.metrics.bootstrap_ci`, 2000 resamples, seeded by ``--seed``).

Systems: ``model`` (the bundle; the pack's decoding: greedy, repetition penalty 1.2, no repeated sentences, 40
tokens; multimodal sink; 10 diffusion steps; guidance as :mod:`evaluation.evaluate`), ``model_cast`` (+ the story's
cast sheet pinned in the context), ``model_retry`` / ``model_cast_retry`` (+ the consistency retry on every frame:
``--retry`` redraws at most, ``--retry-threshold``), and the baselines of :mod:`evaluation.baselines`.
``--context drawn`` makes the model systems store the visual tokenizer's features of each kept drawing in the context
instead of the regressed features (docs/evaluation.md, "Feeding the drawn frames back"; not the pack's default).

Visualization mode (unless ``--no-visualization``): each model system also draws the story's TRUE sentences of its
first :data:`VISUALIZATION_FRAMES` frames (the 1x segment)
(with its cast sheet and retry; the baselines ignore given sentences, so their own frames count), and the judge's
reading is compared with the true frame: ``visualization_background`` and ``visualization_cast`` (the place and cast
halves of the visualization agreement of :mod:`evaluation.evaluate`; the "cast half" of docs/evaluation.md) and
``visualization_look_accuracy`` (each true character's look read at its true slot).

Looks: ``look_accuracy`` compares the look read at each character's stated slot with the story's true look (all five
characters' looks, ``mini.story_looks``); ``look_consistency`` with the cast sheet's look for the cast-sheet systems,
else with the look read at the character's first appearance (the opening frame counts); see
:func:`evaluation.metrics.look_scores`, which :func:`judge_story` splits per frame. ``look_self_consistency`` is the
first-appearance version for every system, cast sheet or not: with a sheet, ``look_consistency`` is checked against
the true looks, without one against the model's own first drawing of a character who enters later (a wrong look
drawn the same way twice passes), so only ``look_self_consistency`` (and ``look_accuracy``) compare the two on the
same reference.

Writes one JSON per (system, seed), ``OUT/<system>_<seed>.json``; a file that exists is skipped (the run resumes).
The model is loaded once (per worker with ``--jobs``). Pool seeds and compare systems with
``python -m evaluation.pooled``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from evaluation import metrics as jm
from evaluation.baselines import BASELINES, MODEL_BASELINES, baseline_story
from evaluation.judge import load_judge
from evaluation.stories import DEFAULT_MODEL, GUIDANCE_SCALE, PACK_DECODING, load_model, run_story, true_looks
from seedstory_core.consistency import DEFAULT_MAX_REDRAWS, DEFAULT_RETRY_THRESHOLD, RetrySettings
from seedstory_core.data import mini

#: system -> (cast sheet, consistency retry) for the model's systems
MODEL_SYSTEMS: Dict[str, Tuple[bool, bool]] = {
    "model": (False, False),
    "model_cast": (True, False),
    "model_retry": (False, True),
    "model_cast_retry": (True, True),
}
SYSTEMS = tuple(MODEL_SYSTEMS) + BASELINES
#: segment -> (first, last) generated frame, inclusive; ``all`` = every generated frame
SEGMENTS: Dict[str, Tuple[int, Optional[int]]] = {"1x": (1, 9), "3x": (21, 29), "all": (1, None)}
#: per-frame judgement key -> the segment metric (its rate over the segment's frames)
FRAME_METRICS = {
    "ok": "score",
    "parsed": "parse_rate",
    "new": "distinct_sentence_rate",
    "continuous": "continuity_rate",
    "shown": "shown_rate",
    "shown_place": "shown_place_rate",
    "shown_cast": "shown_cast_rate",
    "shown_look": "shown_look_rate",
    "shown_action_object": "shown_action_object_rate",
}
#: ``look_self_consistency``: every system against the look read at the character's first appearance, cast sheet or
#: not (``look_consistency`` uses the sheet when there is one, so cast and no-cast systems differ in reference there)
LOOK_METRICS = ("look_consistency", "look_accuracy", "look_self_consistency")
#: visualization mode (the true sentences given, :func:`visualization_frames`): per-frame halves of the agreement
#: with the true frame, and the look accuracy at the true frame's slots
VISUALIZATION_FRAME_METRICS = ("visualization_background", "visualization_cast")
#: a model system draws the true sentences of the first this many frames (the 1x segment: frames 1..9)
VISUALIZATION_FRAMES = 10
VISUALIZATION_PAIR_METRICS = ("visualization_look_accuracy",)
METRICS = tuple(FRAME_METRICS.values()) + LOOK_METRICS + VISUALIZATION_FRAME_METRICS + VISUALIZATION_PAIR_METRICS
BOOTSTRAP_RESAMPLES = 2000


# ------------------------------------------------------------------------------------------------ scoring
def judge_story(
    sentences: Sequence[str],
    readings: Sequence[Optional[Dict]],
    looks: Optional[Dict[str, Dict[str, str]]] = None,
    reference_looks: Optional[Dict[str, Dict[str, str]]] = None,
) -> List[Dict]:
    """Per generated frame i = 1..n (n + 1 sentences and readings, the opening first): its judgement with the full
    story so far (:func:`evaluation.metrics.judge_frame`, ``looks``) and its look pairs.

    Returns one dict per generated frame: ``{"frame": i, <every key of FRAME_METRICS>: bool,
    "look_accuracy": [bool per pair], "look_consistency": [bool per pair], "look_self_consistency": [bool per
    pair]}``: the pairs of :func:`evaluation.metrics.look_pairs` (the same function
    :func:`evaluation.metrics.look_scores` pools, so the per-frame lists pooled over the story give its values
    exactly).
    """
    if len(sentences) != len(readings) or len(sentences) < 2:
        raise ValueError(f"expected n + 1 >= 2 sentences and readings, got {len(sentences)} and {len(readings)}")
    judged = [jm.judge_frame(s, sentences[:i], readings[i], looks) for i, s in enumerate(sentences) if i > 0]
    stated0 = mini.sentence_attributes(sentences[0], [])
    states = [stated0 if stated0.get("parsed") else None] + [j["stated"] for j in judged]
    out = [{"frame": i, **{k: bool(j[k]) for k in FRAME_METRICS}} for i, j in enumerate(judged, start=1)]
    pairs = jm.look_pairs(states, readings, looks, reference_looks)
    for frame in out:
        frame.update(pairs[frame["frame"]])
    return out


def visualization_frames(
    readings: Sequence[Dict], attributes: Sequence[Dict], looks: Dict[str, Dict[str, str]]
) -> List[Dict]:
    """Per frame i = 1..n of a visualization-mode run (the true sentences given; ``readings`` and ``attributes`` of
    frames 1..n): ``{"frame": i, "visualization_background": 0/1 (the true place read),
    "visualization_cast": Jaccard of the cast read and the true cast (:func:`evaluation.metrics.agreement_parts`),
    "visualization_look_accuracy": [per character of the true frame: the look read at its true slot is its true
    look]}``."""
    out = []
    for i, (rd, attrs) in enumerate(zip(readings, attributes), start=1):
        background, cast = jm.agreement_parts(rd, attrs)
        out.append(
            {
                "frame": i,
                "visualization_background": background,
                "visualization_cast": cast,
                "visualization_look_accuracy": [
                    jm._same_look(jm._read_look(rd, slot), looks.get(name))
                    for name, slot in (attrs.get("positions") or mini.slot_layout(attrs["present"])).items()
                ],
            }
        )
    return out


def segment_values(judged: Sequence[Dict], first: int, last: Optional[int]) -> Optional[Dict[str, Optional[float]]]:
    """A story's metrics over its generated frames ``first..last`` (inclusive; None = to the end): every rate of
    :data:`FRAME_METRICS` (mean over the frames) and the look metrics (mean over the segment's pairs; None when it
    has none); the visualization metrics when the frames carry them (:func:`visualization_frames` merged in), else
    None. None when the story has no frame in the segment."""
    frames = [j for j in judged if j["frame"] >= first and (last is None or j["frame"] <= last)]
    if not frames:
        return None
    out: Dict[str, Optional[float]] = {m: float(np.mean([j[k] for j in frames])) for k, m in FRAME_METRICS.items()}
    for m in VISUALIZATION_FRAME_METRICS:
        out[m] = float(np.mean([j[m] for j in frames])) if all(m in j for j in frames) else None
    for m in LOOK_METRICS + VISUALIZATION_PAIR_METRICS:
        pairs = [p for j in frames for p in j.get(m, ())]
        out[m] = float(np.mean(pairs)) if pairs and all(m in j for j in frames) else None
    return out


def summarise(values: Sequence[Optional[float]], seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> Dict:
    """Mean, 95% bootstrap interval and count of the per-story values that are not None (all None when none is)."""
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "ci95": None, "n": 0}
    lo, hi = jm.bootstrap_ci(v, resamples, seed=seed)
    return {"mean": round(float(np.mean(v)), 4), "ci95": [round(lo, 4), round(hi, 4)], "n": len(v)}


# ------------------------------------------------------------------------------------------------ one system
def system_story(
    system: str,
    story: dict,
    frames: int,
    seed: int,
    index: int,
    *,
    bundle=None,
    diffusion_steps: int = 10,
    guidance_scale: float = GUIDANCE_SCALE,
    decoding=PACK_DECODING,
    retry: Optional[RetrySettings] = None,
    visualization: bool = False,
    feed_drawn: bool = False,
):
    """``system``'s continuation of ``story``: (sentences, PIL frames, retry report dict or None, visualization
    frames or None, seconds of the free-running generation). ``visualization``: also draw the true sentences (a model
    system in visualization mode, with its cast sheet and retry; a baseline ignores given sentences: its own
    frames). ``feed_drawn``: a model system's context stores its drawn frames' features
    (:func:`evaluation.stories.run_story`)."""
    t0 = time.perf_counter()
    if system in MODEL_SYSTEMS:
        cast, with_retry = MODEL_SYSTEMS[system]
        kw = dict(
            diffusion_steps=diffusion_steps,
            seed=seed,
            guidance_scale=guidance_scale,
            decoding=decoding,
            cast=cast,
            retry=(retry or RetrySettings()) if with_retry else None,
            feed_drawn=feed_drawn,
        )
        run = run_story(bundle, story, frames, **kw)
        seconds = time.perf_counter() - t0
        # visualization mode is scored at 1x only (the cast half of the criteria): the first training length of frames
        vis_n = min(frames, VISUALIZATION_FRAMES)
        shown = run_story(bundle, story, vis_n, captions=story["captions"][1:vis_n], **kw) if visualization else None
        return (
            run.sentences,
            run.frames,
            (run.retry.to_dict() if run.retry is not None else None),
            shown.frames if shown is not None else None,
            seconds,
        )
    sentences, images = baseline_story(
        system,
        story,
        frames,
        seed,
        index,
        bundle=bundle,
        diffusion_steps=diffusion_steps,
        guidance_scale=guidance_scale,
    )
    return sentences, images, None, (images if visualization else None), time.perf_counter() - t0


def evaluate_system(
    system: str,
    *,
    seed: int,
    stories: int,
    frames: int,
    bundle_loader: Optional[Callable[[], object]] = None,
    judge=None,
    diffusion_steps: int = 10,
    guidance_scale: float = GUIDANCE_SCALE,
    retry: Optional[RetrySettings] = None,
    visualization: bool = True,
    model_name: Optional[str] = None,
    log=None,
    decoding=PACK_DECODING,
    feed_drawn: bool = False,
) -> Dict:
    """Run and score one system on stories ``0..stories-1`` of ``seed``; returns the JSON-ready dict (module
    docstring). ``bundle_loader()`` gives the model bundle (called only for systems that need it; default: the
    bundled tiny model). ``seconds_per_story``: wall seconds of each story (generation, visualization, judging);
    ``generation_seconds_per_story``: the free-running generation alone (the retry's redraws included).
    ``visualization``: also score the system drawing the true sentences (:func:`visualization_frames`; a model
    system runs twice). ``decoding``: the model systems' ``DecodingSettings`` (default :data:`PACK_DECODING`, the
    pack's; ``--penalty-window`` changes its ``penalty_window``). ``feed_drawn``: the model systems' context stores
    the visual tokenizer's features of their drawn frames instead of the regressed ones (``--context drawn``).

    Raises:
        ValueError: an unknown system, fewer than 2 frames or no story.
    """
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, got {system!r}")
    if frames < 2 or stories < 1:
        raise ValueError(f"need frames >= 2 and stories >= 1, got frames={frames}, stories={stories}")
    t0 = time.time()
    judge = judge or load_judge()
    needs_model = system in MODEL_SYSTEMS or system in MODEL_BASELINES
    bundle = (bundle_loader or load_model)() if needs_model else None
    retry = retry or RetrySettings(DEFAULT_RETRY_THRESHOLD, DEFAULT_MAX_REDRAWS)
    cast_sheet = MODEL_SYSTEMS.get(system, (False, False))[0]
    per_story: Dict[str, Dict[str, List[Optional[float]]]] = {s: {m: [] for m in METRICS} for s in SEGMENTS}
    ids, seconds, generation, retry_reports, samples = [], [], [], [], []
    for k in range(stories):
        ts = time.time()
        story = mini.generate_story(seed, k, frames=max(30, frames))
        sentences, images, report, shown, generation_seconds = system_story(
            system,
            story,
            frames,
            seed,
            k,
            bundle=bundle,
            diffusion_steps=diffusion_steps,
            guidance_scale=guidance_scale,
            retry=retry,
            visualization=visualization,
            decoding=decoding,
            feed_drawn=feed_drawn,
        )
        looks = true_looks(story)
        readings = judge.predict(images)
        judged = judge_story(sentences, readings, looks, story["looks"] if cast_sheet else None)
        if shown is not None:
            v_read = readings[1:] if shown is images else judge.predict(shown[1:])
            for j, v in zip(judged, visualization_frames(v_read, story["attributes"][1:frames], looks)):
                j.update({key: val for key, val in v.items() if key != "frame"})
        for seg, (a, b) in SEGMENTS.items():
            vals = segment_values(judged, a, b)
            for m in METRICS:
                per_story[seg][m].append(None if vals is None else vals[m])
        ids.append(story["id"])
        seconds.append(round(time.time() - ts, 3))
        generation.append(round(generation_seconds, 3))
        if report is not None:
            retry_reports.append(report)
        if k < 2:
            samples.append(sentences)
        if log:
            log(f"{system} seed {seed} story {k + 1}/{stories}: {seconds[-1]:.1f} s")
    segments = {}
    for seg, (a, b) in SEGMENTS.items():
        segments[seg] = {
            "frames": [a, frames - 1 if b is None else min(b, frames - 1)] if a <= frames - 1 else None,
            "per_story": {m: [None if x is None else round(x, 4) for x in v] for m, v in per_story[seg].items()},
            **{m: summarise(per_story[seg][m], seed) for m in METRICS},
        }
    result = {
        "system": system,
        "seed": seed,
        "stories": stories,
        "frames_per_story": frames,
        "story_ids": ids,
        "segments": segments,
        "judge": {"sha256": judge.sha256, "accuracy_unseen_frames": judge.meta.get("accuracy_unseen_frames")},
        "model": model_name if needs_model else None,
        "cast_sheet": cast_sheet,
        "visualization": visualization,
        "seconds_per_story": seconds,
        "generation_seconds_per_story": generation,
    }
    if system in MODEL_SYSTEMS or system in MODEL_BASELINES:
        result.update(diffusion_steps=diffusion_steps, guidance_scale=guidance_scale)
    if system in MODEL_SYSTEMS:
        result["decoding"] = asdict(decoding)
        result["context"] = "drawn" if feed_drawn else "regressed"
    if retry_reports:
        result["retry"] = {
            "settings": asdict(retry),
            "per_story": retry_reports,
            **{
                key: round(sum(r[key] for r in retry_reports), 3)
                for key in ("frames", "frames_checked", "frames_redrawn", "redraws", "seconds")
            },
        }
    result["sample_sentences"] = samples
    result["seconds"] = round(time.time() - t0, 1)
    return result


# ------------------------------------------------------------------------------------------------ the runner
_BUNDLE = {}


def _bundle(options: Dict):
    """The model bundle of ``options`` (loaded once per process)."""
    key = (options.get("model"), options.get("random_init"), options.get("device"))
    if key not in _BUNDLE:
        _BUNDLE.clear()
        bundle = load_model(Path(options["model"]) if options.get("model") else None, random_init=bool(key[1]))
        if options.get("device"):
            bundle.to(options["device"])
        _BUNDLE[key] = bundle
    return _BUNDLE[key]


def output_path(out_dir, system: str, seed: int) -> Path:
    """Where ``system``'s result for ``seed`` is written: ``OUT/<system>_<seed>.json``."""
    return Path(out_dir) / f"{system}_{seed}.json"


def run_one(system: str, options: Dict) -> Tuple[str, str]:
    """Evaluate ``system`` with the protocol ``options`` and write its JSON (atomically); skip when it exists.
    Returns (system, "skipped" | "written")."""
    torch.set_num_threads(int(options.get("threads", 1)))
    path = output_path(options["out"], system, options["seed"])
    if path.exists():
        return system, "skipped"
    model_name = str(options.get("model") or DEFAULT_MODEL) + (" (random init)" if options.get("random_init") else "")
    result = evaluate_system(
        system,
        seed=options["seed"],
        stories=options["stories"],
        frames=options["frames"],
        bundle_loader=lambda: _bundle(options),
        diffusion_steps=options["diffusion_steps"],
        guidance_scale=options["guidance_scale"],
        retry=RetrySettings(options["retry_threshold"], options["retry"]),
        visualization=options.get("visualization", True),
        model_name=model_name,
        decoding=replace(PACK_DECODING, penalty_window=int(options.get("penalty_window", 0))),
        feed_drawn=options.get("context", "regressed") == "drawn",
        log=(lambda msg: print(msg, file=sys.stderr, flush=True)) if options.get("verbose") else None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(json.dumps(result))
    tmp.replace(path)
    return system, "written"


def run_protocol(systems: Sequence[str], options: Dict, jobs: int = 1) -> Dict[str, str]:
    """Run every system (skipping written ones); ``jobs`` > 1 spreads the systems over that many worker processes
    (each loads the model once). Returns {system: "skipped" | "written"}."""
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose among {SYSTEMS}")
    todo = [s for s in systems if not output_path(options["out"], s, options["seed"]).exists()]
    done = {s: "skipped" for s in systems if s not in todo}
    if jobs <= 1 or len(todo) <= 1:
        for s in todo:
            done[s] = run_one(s, options)[1]
        return done
    # the model's systems first, spread over the workers (they are the slow ones)
    todo.sort(key=lambda s: s not in MODEL_SYSTEMS and s not in MODEL_BASELINES)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for system, status in pool.map(run_one, todo, [options] * len(todo)):
            done[system] = status
    return done


def main(argv=None) -> int:
    """``python -m evaluation.cast_eval``: run the protocol (module docstring); prints one line per system."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.cast_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, required=True, help="held-out StoryStream-mini seed (training used 0)")
    parser.add_argument("--stories", type=int, default=30)
    parser.add_argument("--frames", type=int, default=30, help="frames per story, the opening one included")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, among {', '.join(SYSTEMS)}")
    parser.add_argument("--out", type=Path, default=Path("evaluation/results/cast"))
    parser.add_argument("--model", type=Path, default=None, help="model bundle folder (default: models/seedstory-tiny)")
    parser.add_argument("--random-init", action="store_true", help="a random model of the same size (a check)")
    parser.add_argument("--diffusion-steps", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=GUIDANCE_SCALE)
    parser.add_argument("--retry", type=int, default=DEFAULT_MAX_REDRAWS, help="redraws per frame at most (retry)")
    parser.add_argument("--retry-threshold", type=float, default=DEFAULT_RETRY_THRESHOLD)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes over the systems")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--device", default=None, help="torch device of the model (default: where it loads)")
    parser.add_argument(
        "--no-visualization",
        action="store_true",
        help="skip the visualization-mode run (the model drawing the true sentences: the visualization_* metrics)",
    )
    parser.add_argument(
        "--penalty-window",
        type=int,
        default=PACK_DECODING.penalty_window,
        help="model systems' decoding: the repetition penalty reads the story's last N sentences only (default 0 = the "
        "whole story, the pack's; docs/evaluation.md, 'A penalty that forgets')",
    )
    parser.add_argument(
        "--context",
        choices=("regressed", "drawn"),
        default="regressed",
        help="what the model systems' context stores for each generated frame: the agent's regressed features (the "
        "pack's and the official loop's) or the visual tokenizer's features of the drawn (kept) frame",
    )
    parser.add_argument("--verbose", action="store_true", help="one line per story on stderr")
    args = parser.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose among {', '.join(SYSTEMS)}")
    RetrySettings(args.retry_threshold, args.retry)  # validate before any work
    if args.penalty_window < 0:
        parser.error(f"--penalty-window must be >= 0 (sentences; 0 = the whole story), found {args.penalty_window}")
    options = {
        "seed": args.seed,
        "stories": args.stories,
        "frames": args.frames,
        "out": str(args.out),
        "model": str(args.model) if args.model else None,
        "random_init": args.random_init,
        "diffusion_steps": args.diffusion_steps,
        "guidance_scale": args.guidance_scale,
        "retry": args.retry,
        "retry_threshold": args.retry_threshold,
        "threads": args.threads,
        "device": args.device,
        "verbose": args.verbose,
        "visualization": not args.no_visualization,
        "penalty_window": args.penalty_window,
        "context": args.context,
    }
    torch.set_num_threads(args.threads)
    t0 = time.time()
    status = run_protocol(systems, options, jobs=args.jobs)
    for s in systems:
        print(f"{s}: {status[s]} {output_path(args.out, s, args.seed)}")
    print(f"done in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
