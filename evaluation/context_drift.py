"""Why the third ten frames fail: how far the agent's regressed features drift from the true frames as its own
features fill the context, and whether it reads the cast sheet (docs/evaluation.md, "Why long stories drift").

    python -m evaluation.context_drift --seed 1000 --stories 12 [--frames 30] [--model DIR] [--policy KIND]
        [--conditions own,true,...] [--out FILE]
    python -m evaluation.context_drift --versus MINE.json THEIRS.json   # paired by story, e.g. two bundles

Every condition runs the story in visualization mode (the story's own sentences given, its true first frame) with the
protocol's context policy (multimodal attention sink, window = the training length, 10 images; :mod:`evaluation.
cast_eval`) or another cache policy of the same window (``--policy``: ``window``, ``dense``, ...). Nothing is drawn:
only the regressed features (1, T, D) are compared, so the de-tokenizer plays no part.

Conditions (:data:`CONDITIONS`):

* ``own`` -- the agent's regressed features stay in the context (the pack's loop and the official one, docs/
  reference.md §3.1);
* ``true`` -- teacher forcing: the visual tokenizer's features of the true frame replace them after every step;
* ``start`` -- a true but stale picture: the true first frame's features replace them after every step;
* ``sheet`` -- ``own`` with the story's cast sheet pinned (:func:`evaluation.stories.cast_sheet`);
* ``wrong_sheet`` -- ``own`` with a cast sheet of the same names drawn with other looks (the looks of story
  ``index +`` :data:`WRONG_LOOKS_OFFSET` of the same seed).

Baselines (:data:`BASELINES`, no agent; their "regressed features" are a copy): ``copy_previous`` -- the true frame
``i - 1``'s features (what teacher forcing puts last in the context); ``copy_start`` -- the true first frame's.

Per generated frame ``i``:

* ``cos_true`` -- cosine similarity of the flattened regressed features and the visual tokenizer's features of the
  true frame ``i``;
* ``look_pull`` -- ``cos_true`` minus the cosine with the same frame drawn with the wrong sheet's looks (positions,
  pose, place and object unchanged), on the frames where the two drawings differ (a character on stage). Positive:
  the features lean towards the story's own looks. With ``wrong_sheet`` a sheet that is read pulls it towards 0 or
  below; a sheet that is ignored leaves it as ``own``'s.
* ``cos_context`` -- cosine with the last picture in the agent's context when it regressed frame ``i`` (frame
  ``i - 1``'s features as stored: its own, the true, or the start frame's): how much of the regression is a copy of
  that picture (None for the baselines).

Per story the mean over each segment (:data:`SEGMENTS`: ``1x`` frames 1-9, ``2x`` 10-20, ``3x`` 21-29, as the cast
protocol's ``1x``/``3x``), then the mean over stories with a 95% bootstrap interval (:func:`evaluation.metrics.
bootstrap_ci`) and the paired differences of :data:`PAIRS` (per story, then bootstrapped). Writes JSON (``--out``,
keeping each story's values) and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.cast_eval import summarise
from evaluation.stories import TRAIN_LENGTH, cast_sheet, load_model
from seedstory_core.cache import POLICIES, CachePolicy
from seedstory_core.data import mini
from seedstory_core.story import DecodingSettings, StorySettings

CONDITIONS = ("own", "true", "start", "sheet", "wrong_sheet")
#: trivial predictions, no agent: the previous true frame's features, the true first frame's features
BASELINES = ("copy_previous", "copy_start")
KEYS = ("cos_true", "look_pull", "cos_context")
#: segment -> (first, last) generated frame, inclusive (frames past the story's end are left out)
SEGMENTS = {"1x": (1, 9), "2x": (10, 20), "3x": (21, 29)}
#: the paired differences reported: (a, b) means a minus b, per story
PAIRS = (
    ("true", "own"),
    ("true", "copy_previous"),
    ("own", "copy_start"),
    ("start", "own"),
    ("sheet", "own"),
    ("sheet", "wrong_sheet"),
)
#: the wrong sheet's looks are those of story ``index + WRONG_LOOKS_OFFSET`` of the same seed
WRONG_LOOKS_OFFSET = 5000


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().float(), b.flatten().float(), dim=0))


@torch.no_grad()
def story_drift(
    bundle, story: dict, conditions: Sequence[str] = CONDITIONS + BASELINES, policy: str = "multimodal_sink"
) -> Dict[str, Dict[str, List]]:
    """Per condition and key, one value per generated frame (index 0 = frame 1; ``look_pull`` is None on frames
    where the wrong looks draw the same picture).

    Args:
        bundle: a :class:`~seedstory_core.bundle.SeedStoryBundle`.
        story: a StoryStream-mini story (:func:`seedstory_core.data.mini.generate_story`) of >= 2 frames.
        conditions: a subset of :data:`CONDITIONS` + :data:`BASELINES`.
        policy: the cache policy's ``kind`` (:data:`seedstory_core.cache.POLICIES`), window = the training length.

    Raises:
        ValueError: an unknown condition or policy, or a story of fewer than 2 frames.
    """
    bad = [c for c in conditions if c not in CONDITIONS + BASELINES]
    if bad:
        raise ValueError(f"unknown condition(s) {bad}; choose from {CONDITIONS + BASELINES}")
    cache_policy = CachePolicy(kind=policy, window_images=TRAIN_LENGTH)  # ValueError for an unknown kind
    n = len(story["captions"])
    if n < 2:
        raise ValueError(f"a story of at least 2 frames is needed, found {n}")
    vt = bundle.visual_tokenizer
    frames = mini.render_story(story, size=64)
    true_f = [vt.encode_images(im)[:1] for im in frames]
    seed, index = (int(x) for x in story["id"].removeprefix("mini-s").split("-"))
    wrong_looks = mini.story_looks(seed, index + WRONG_LOOKS_OFFSET)
    wrong_attrs = copy.deepcopy(story["attributes"])
    for a in wrong_attrs:
        a["looks"] = {name: dict(wrong_looks[name]) for name in a.get("looks", {})}
    wrong_f = [vt.encode_images(mini.render_frame(a, size=64))[:1] for a in wrong_attrs]
    differs = [_cos(t, w) < 0.9999 for t, w in zip(true_f, wrong_f)]
    out: Dict[str, Dict[str, List]] = {}

    def keys_of(feats: List[torch.Tensor], context: List[Optional[torch.Tensor]]) -> Dict[str, List]:
        cos_true = [_cos(f, true_f[i]) for i, f in enumerate(feats, start=1)]
        pull = [
            (c - _cos(f, wrong_f[i])) if differs[i] else None for i, (f, c) in enumerate(zip(feats, cos_true), start=1)
        ]
        cos_context = [None if c is None else _cos(f, c) for f, c in zip(feats, context)]
        return {"cos_true": cos_true, "look_pull": pull, "cos_context": cos_context}

    for cond in conditions:
        if cond in BASELINES:
            feats = [true_f[i - 1] if cond == "copy_previous" else true_f[0] for i in range(1, n)]
            out[cond] = keys_of(feats, [None] * len(feats))
            continue
        sheet = None
        if cond == "sheet":
            sheet = cast_sheet(bundle, story)
        elif cond == "wrong_sheet":
            sheet = cast_sheet(bundle, {**story, "looks": wrong_looks})
        settings = StorySettings(policy=cache_policy)
        engine = bundle.engine(settings.policy)
        state = engine.start(story["captions"][0], image=frames[0], settings=settings, cast=sheet)
        feats: List[torch.Tensor] = []
        context: List[torch.Tensor] = [true_f[0]]  # the last picture in the context when frame i is regressed

        def on_frame(i, _total, result, cond=cond):
            feats.append(result.features)
            stored = {"true": true_f[i], "start": true_f[0]}.get(cond)
            context.append(result.features if stored is None else stored)
            return stored

        engine.run(
            state,
            n - 1,
            texts=story["captions"][1:],
            mode="visualization",
            decoding=DecodingSettings(max_sentence_tokens=40),
            on_frame=on_frame,
        )
        out[cond] = keys_of(feats, context[: len(feats)])
    return out


def _segment_mean(values: Sequence[Optional[float]], first: int, last: int) -> Optional[float]:
    picked = [v for i, v in enumerate(values, start=1) if first <= i <= last and v is not None]
    return float(np.mean(picked)) if picked else None


def _summary(per_story: List[Optional[float]]) -> Dict:
    """:func:`evaluation.cast_eval.summarise` (bootstrap seed 0) with the per-story values kept."""
    return {**summarise(per_story, seed=0), "per_story": per_story}


def _paired(mine: Sequence[Optional[float]], theirs: Sequence[Optional[float]]) -> Dict:
    """:func:`_summary` of the per-story differences ``mine - theirs`` (None where either value is None)."""
    return _summary([(x - y) if x is not None and y is not None else None for x, y in zip(mine, theirs)])


def context_drift(
    bundle,
    *,
    seed: int = 1000,
    stories: int = 12,
    frames: int = 30,
    conditions: Sequence[str] = CONDITIONS + BASELINES,
    policy: str = "multimodal_sink",
) -> Dict:
    """Run :func:`story_drift` on stories ``0..stories-1`` of ``seed`` (``frames`` frames each) and summarise.

    Returns ``{"seed", "stories", "frames", "policy", "conditions": {cond: {segment: {key: summary}}}, "pairs":
    {"a - b": {segment: {key: summary of the per-story differences}}}, "seconds"}``; a summary is ``{"mean", "ci95",
    "n", "per_story"}`` (None where a segment has no frame, e.g. ``3x`` of a 10-frame story).

    Raises:
        ValueError: ``stories`` < 1, ``frames`` < 2, an unknown condition or policy.
    """
    if stories < 1 or frames < 2:
        raise ValueError(f"stories must be >= 1 and frames >= 2, found {stories} and {frames}")
    t0 = time.time()
    runs = [
        story_drift(bundle, mini.generate_story(seed, k, frames=frames), conditions, policy) for k in range(stories)
    ]
    segs = {
        cond: {
            seg: {key: [_segment_mean(r[cond][key], *span) for r in runs] for key in KEYS}
            for seg, span in SEGMENTS.items()
        }
        for cond in conditions
    }
    result = {
        "seed": seed,
        "stories": stories,
        "frames": frames,
        "policy": policy,
        "conditions": {
            cond: {seg: {key: _summary(v) for key, v in by_key.items()} for seg, by_key in by_seg.items()}
            for cond, by_seg in segs.items()
        },
        "pairs": {},
    }
    for a, b in PAIRS:
        if a in segs and b in segs:
            result["pairs"][f"{a} - {b}"] = {
                seg: {key: _paired(segs[a][seg][key], segs[b][seg][key]) for key in KEYS} for seg in SEGMENTS
            }
    result["seconds"] = round(time.time() - t0, 1)
    return result


def versus(mine: Dict, theirs: Dict) -> Dict:
    """Paired differences ``mine - theirs`` of two :func:`context_drift` results of the same stories (e.g. two
    bundles): ``{condition: {segment: {key: summary}}}`` for every condition both have, per story, as the result's own
    ``pairs`` are computed.

    Raises:
        ValueError: the two results are not the same seed, stories and frames, or share no condition.
    """
    same = ("seed", "stories", "frames")
    if any(mine.get(k) != theirs.get(k) for k in same):
        found = [(mine.get(k), theirs.get(k)) for k in same]
        raise ValueError(f"versus needs the same seed, stories and frames (seed, stories, frames): found {found}")
    both = [c for c in mine["conditions"] if c in theirs["conditions"]]
    if not both:
        raise ValueError("versus: the two results share no condition")
    a, b = mine["conditions"], theirs["conditions"]
    return {
        cond: {
            seg: {key: _paired(a[cond][seg][key]["per_story"], b[cond][seg][key]["per_story"]) for key in KEYS}
            for seg in SEGMENTS
        }
        for cond in both
    }


def _fmt(s: Dict) -> str:
    return "—" if s["mean"] is None else f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def format_table(result: Dict) -> str:
    """Markdown table: one row per condition or pair and key, one column per segment."""
    lines = ["| condition | key | " + " | ".join(SEGMENTS) + " |", "|---|---|" + "---|" * len(SEGMENTS)]
    rows = list(result["conditions"].items()) + list(result["pairs"].items())
    for name, by_seg in rows:
        for key in KEYS:
            lines.append(f"| {name} | {key} | " + " | ".join(_fmt(by_seg[seg][key]) for seg in SEGMENTS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.context_drift", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=1000, help="StoryStream-mini seed of the stories (default 1000)")
    p.add_argument("--stories", type=int, default=12)
    p.add_argument("--frames", type=int, default=30, help="frames per story, the first one given (default 30)")
    p.add_argument("--model", type=Path, default=None, help="bundle folder (default: the bundled tiny model)")
    p.add_argument(
        "--policy",
        default="multimodal_sink",
        help=f"cache policy kind, one of {POLICIES}, window = the training length (default multimodal_sink)",
    )
    p.add_argument(
        "--conditions",
        default=",".join(CONDITIONS + BASELINES),
        help=f"comma-separated subset of {CONDITIONS + BASELINES}",
    )
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    p.add_argument(
        "--versus",
        nargs=2,
        type=Path,
        metavar=("MINE", "THEIRS"),
        help="run nothing: print the paired differences MINE - THEIRS of two results (JSON) of the same stories",
    )
    args = p.parse_args(argv)
    if args.versus:
        try:
            mine, theirs = (json.loads(f.read_text()) for f in args.versus)
            pairs = versus(mine, theirs)
        except (OSError, ValueError, KeyError) as e:
            print(f"context_drift --versus: {e}", file=sys.stderr)
            return 2
        label = f"{args.versus[0]} - {args.versus[1]}"
        print(format_table({"conditions": {f"{c} ({label})": v for c, v in pairs.items()}, "pairs": {}}))
        return 0
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    try:
        result = context_drift(
            load_model(args.model),
            seed=args.seed,
            stories=args.stories,
            frames=args.frames,
            conditions=conditions,
            policy=args.policy,
        )
    except ValueError as e:
        print(f"context_drift: {e}", file=sys.stderr)
        return 2
    result["model"] = str(args.model) if args.model else "bundled"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result))
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
