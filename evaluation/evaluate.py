"""Evaluate a SEED-Story model (or a trivial baseline) on held-out StoryStream-mini stories; prints one JSON object.

    python -m evaluation.evaluate [--model DIR] --seed S --stories N
                                  [--baseline copy_first|retrieval|ground_truth|static_start|rule_based|
                                              ground_truth_detok]
                                  [--frames 10] [--repetition-penalty R] [--allow-repeat-sentences]
                                  [--sample --temperature T --top-p P] [--cast] [--retry N --retry-threshold T]
                                  [--random-init] [--no-ablation] [--weight-dtype default|fp8_e4m3fn|int8]

``--model`` defaults to the bundled tiny model (``models/seedstory-tiny``); ``--random-init`` evaluates a randomly
initialised model of the same size and tokenizer. ``--baseline`` scores a trivial story-teller instead of a model
(:mod:`evaluation.baselines`):

* ``copy_first`` — every frame is the start frame and every sentence the opening sentence;
* ``retrieval`` — random (frame, caption) pairs of the training data (seed 0, the recipe's 400 stories), drawn with
  ``numpy.random.default_rng([seed, story, 1])``;
* ``ground_truth`` — the held-out story's own continuation (the metric's ceiling);
* ``static_start`` — the start frame every step, with valid, continuous, new action sentences;
* ``rule_based`` — a random walk of the world's grammar drawn by the renderer with the true looks (a second ceiling);
* ``ground_truth_detok`` — the true frames through the model's visual tokenizer and de-tokenizer, the true sentences
  (the drawing pipeline's ceiling; loads the model).

Decoding defaults to the pack's (:data:`evaluation.stories.PACK_DECODING`: greedy, repetition penalty 1.2 over the whole
story (``--penalty-window N``: the last N sentences only), no sentence repeats an earlier one of its story, 40 tokens);
``--repetition-penalty 1.0 --allow-repeat-sentences`` is the official decoding. ``--cast`` pins each story's cast sheet
(its characters' pictures with the story's looks) in the context; ``--retry N`` redraws a frame whose characters do not
look like their reference up to N times (``--retry-threshold``, :mod:`seedstory_core.consistency`).

Held-out stories are stories ``0..N-1`` of ``--seed`` (``seedstory_core.data.mini``; seeds select disjoint
stories). Each continues from its real first frame and sentence for ``--frames - 1`` generated frames.

Every system is scored by ONE fixed judge, ``evaluation/judge/`` (:mod:`evaluation.judge`; its sha256 is in the
JSON); no model ships or brings its own judge. Keys of the JSON object (definitions: docs/evaluation.md,
:mod:`evaluation.metrics`):

* ``score`` — the headline: per story, the fraction of generated frames whose sentence parses, repeats no earlier
  sentence, follows the story rules from the story so far, and whose image the judge reads as what the sentence
  states (the place, the cast, each character's true look, the stated action and object; :mod:`evaluation.metrics`);
  mean over stories. ``score_ci95``: percentile bootstrap over stories (2000 resamples, seeded).
* ``parse_rate``, ``distinct_sentence_rate`` (generated sentences that repeat no earlier one), ``continuity_rate``,
  ``shown_rate`` (the image check alone) and its parts ``shown_place_rate``, ``shown_cast_rate``, ``shown_look_rate``,
  ``shown_action_object_rate``; ``score_strict`` (kept for earlier callers).
* ``look_accuracy`` / ``look_consistency`` — is each character drawn with its true look (all five characters' looks
  of the story, ``mini.story_looks``), and with the look of its reference (the cast sheet's with ``--cast``, else its
  first appearance); None for a story without a pair (left out of the mean and interval, ``look_stories`` counts).
* ``retry`` (with ``--retry``) — the retry's cost in generation mode: frames checked, frames redrawn, redraws,
  seconds.
* ``coherence`` — image–text agreement: judge reading vs the stated scene and cast (0.5 scene + 0.5 Jaccard of the
  characters; an unparsable sentence scores 0).
* ``consistency`` — from the pictures: does the figure at each named character's position read as the same
  character across the frames where the story puts it on stage.
* ``visualization_agreement`` — visualization mode (ground-truth captions given): judge reading of each drawn frame
  vs the ground-truth attributes. ``gt_distance`` keeps it (``attribute_agreement``) with the pixel L1 to the
  ground-truth frames and ``visualization_coherence`` (reading vs what the given captions state).
  ``visualization_background`` / ``visualization_cast``: its two halves apart (the place read right, 0/1; the
  Jaccard of the characters read and present), since a system can win one and lose the other.
* ``ci95`` — the bootstrap interval of every per-story key; ``per_story`` — the per-story values.
* ``ablation`` / ``ablation_teacher_forced`` (models only, unless ``--no-ablation``) — the long-story ablation
  (paper §5.4, Table 8): the four cache policies, window = the training length, visualizing 3x the training length;
  metrics per segment (1x = frames 1-10, 2x = 11-20, 3x = 21-29), judged by the same judge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from evaluation import baselines as bl
from evaluation import metrics as jm
from evaluation.baselines import BASELINES, MODEL_BASELINES, TRAIN_SEED, TRAIN_STORIES  # noqa: F401 (re-exported)
from evaluation.judge import HERE as JUDGE_DIR
from evaluation.judge import load_judge
from evaluation.stories import (
    DEFAULT_MODEL,
    GUIDANCE_SCALE,
    PACK_DECODING,
    TRAIN_LENGTH,
    frame_features,
    generate_story,
    load_model,
    pixel_distance,
    run_story,
    true_looks,
)
from seedstory_core.cache import POLICIES, CachePolicy
from seedstory_core.config import torch_dtype
from seedstory_core.consistency import DEFAULT_RETRY_THRESHOLD, RetrySettings
from seedstory_core.data import mini
from seedstory_core.story import (
    DEFAULT_NO_REPEAT_SENTENCES,
    DEFAULT_REPETITION_PENALTY,
    DecodingSettings,
)

BOOTSTRAP_RESAMPLES = 2000
#: per-story keys of :func:`evaluation.metrics.story_metrics` that the JSON reports with an interval
STORY_KEYS = (
    "score",
    "score_strict",
    "parse_rate",
    "distinct_sentence_rate",
    "continuity_rate",
    "shown_rate",
    "shown_place_rate",
    "shown_cast_rate",
    "shown_look_rate",
    "shown_action_object_rate",
    "coherence",
    "consistency",
)
#: per-story keys that may be None for a story (no look pair): mean and interval over the stories that have one
LOOK_KEYS = ("look_consistency", "look_accuracy")


def baseline_story(kind: str, story: dict, frames: int, seed: int, index: int, **kwargs):
    """A trivial story-teller's continuation of ``story`` (:func:`evaluation.baselines.baseline_story`; ``bundle=``
    for ``ground_truth_detok``): (sentences, PIL frames), the opening sentence and real first frame first, ``frames``
    of each. Raises ValueError for an unknown ``kind``."""
    return bl.baseline_story(kind, story, frames, seed, index, **kwargs)


def evaluate(
    model_dir=None,
    *,
    seed: int = 1000,
    stories: int = 10,
    baseline: Optional[str] = None,
    random_init: bool = False,
    ablation: bool = True,
    ablation_stories: int = 2,
    diffusion_steps: int = 10,
    guidance_scale: float = GUIDANCE_SCALE,
    frames: int = TRAIN_LENGTH,
    decoding=None,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
    weight_dtype: str = "default",
    cast: bool = False,
    retry: Optional[RetrySettings] = None,
) -> Dict:
    """Run the whole evaluation; returns the JSON-ready dict (see the module docstring).

    ``baseline``: one of :data:`BASELINES` to score a trivial story-teller instead of the model (no model is loaded,
    except for ``ground_truth_detok``; no ablation). ``decoding``: ``DecodingSettings`` of the generated sentences
    (default greedy, 40 tokens: the official decoding; the CLI defaults to :data:`PACK_DECODING`).
    ``weight_dtype``: the model's weight storage (``default``, ``fp8_e4m3fn``, ``int8``; :func:`load_model`).
    ``cast``: pin each story's cast sheet in the context (``look_consistency`` then compares with its looks).
    ``retry``: the consistency retry's settings (None: off).
    Raises ValueError for an unknown baseline, fewer than 2 frames / 1 story, or cast / retry with a baseline."""
    if baseline is not None and baseline not in BASELINES:
        raise ValueError(f"--baseline must be one of {BASELINES}, got {baseline!r}")
    if frames < 2 or stories < 1:
        raise ValueError(f"need frames >= 2 and stories >= 1, got frames={frames}, stories={stories}")
    if baseline is not None and (cast or retry is not None):
        raise ValueError("--cast and --retry change how the model tells the story; a baseline takes neither")
    t0 = time.time()
    judge = load_judge()
    needs_model = baseline is None or baseline in MODEL_BASELINES
    bundle = load_model(model_dir, random_init=random_init, weight_dtype=weight_dtype) if needs_model else None
    per_story: Dict[str, List[Optional[float]]] = {
        k: []
        for k in STORY_KEYS
        + LOOK_KEYS
        + (
            "visualization_agreement",
            "visualization_background",
            "visualization_cast",
            "visualization_coherence",
            "pixel_l1",
        )
    }
    samples, retry_reports = [], []
    for k in range(stories):
        story = mini.generate_story(seed, k, frames=max(30, frames))
        gt = mini.render_story({**story, "attributes": story["attributes"][:frames]}, size=64)
        if baseline:
            sentences, images = baseline_story(
                baseline,
                story,
                frames,
                seed,
                k,
                bundle=bundle,
                diffusion_steps=diffusion_steps,
                guidance_scale=guidance_scale,
            )
            v_img = images  # the baselines ignore given captions
        else:
            kw = dict(
                diffusion_steps=diffusion_steps,
                seed=seed,
                guidance_scale=guidance_scale,
                decoding=decoding,
                cast=cast,
                retry=retry,
            )
            run = run_story(bundle, story, frames, **kw)
            sentences, images = run.sentences, run.frames
            if run.retry is not None:
                retry_reports.append(run.retry.to_dict())
            _, v_img = generate_story(bundle, story, frames, captions=story["captions"][1:frames], **kw)
        m = jm.story_metrics(
            sentences, judge.predict(images), looks=true_looks(story), reference_looks=story["looks"] if cast else None
        )
        for key in STORY_KEYS + LOOK_KEYS:
            per_story[key].append(m.get(key))
        v_read = judge.predict(v_img[1:])
        parts = np.array([jm.agreement_parts(r, a) for r, a in zip(v_read, story["attributes"][1:frames])])
        per_story["visualization_agreement"].append(float(np.mean(0.5 * parts[:, 0] + 0.5 * parts[:, 1])))
        per_story["visualization_background"].append(float(np.mean(parts[:, 0])))
        per_story["visualization_cast"].append(float(np.mean(parts[:, 1])))
        per_story["pixel_l1"].append(float(np.mean([pixel_distance(a, b) for a, b in zip(v_img[1:], gt[1:])])))
        stated = mini.parse_story(story["captions"][:frames])[1:]  # what the given captions state
        per_story["visualization_coherence"].append(
            float(np.mean([jm.attribute_agreement(r, a) if a.get("parsed") else 0.0 for r, a in zip(v_read, stated)]))
        )
        if k < 2:
            samples.append(sentences)
    present = {key: [x for x in v if x is not None] for key, v in per_story.items()}
    mean = {key: (float(np.mean(v)) if v else None) for key, v in present.items()}
    ci = {
        key: ([round(x, 4) for x in jm.bootstrap_ci(v, bootstrap_resamples, seed=seed)] if v else None)
        for key, v in present.items()
    }
    result = {
        "system": baseline or ("random_init" if random_init else "model"),
        "model": None if baseline else str(model_dir or DEFAULT_MODEL) + (" (random init)" if random_init else ""),
        "seed": seed,
        "stories": stories,
        "frames_per_story": frames,
        "judge": {
            "path": str(JUDGE_DIR),
            "sha256": judge.sha256,
            "accuracy_unseen_frames": judge.meta.get("accuracy_unseen_frames"),
        },
        "score": mean["score"],
        "score_ci95": ci["score"],
        **{key: mean[key] for key in STORY_KEYS if key != "score"},
        **{key: mean[key] for key in LOOK_KEYS},
        "look_stories": {key: len(present[key]) for key in LOOK_KEYS},
        "visualization_agreement": mean["visualization_agreement"],
        "visualization_background": mean["visualization_background"],
        "visualization_cast": mean["visualization_cast"],
        "gt_distance": {
            "pixel_l1": mean["pixel_l1"],
            "attribute_agreement": mean["visualization_agreement"],
            "visualization_coherence": mean["visualization_coherence"],
        },
        "ci95": ci,
        "per_story": {key: [None if x is None else round(x, 4) for x in v] for key, v in per_story.items()},
        "sample_sentences": samples,
    }
    if baseline in MODEL_BASELINES:
        result.update(
            model=str(model_dir or DEFAULT_MODEL), diffusion_steps=diffusion_steps, guidance_scale=guidance_scale
        )
    if not baseline:
        result.update(
            diffusion_steps=diffusion_steps,
            guidance_scale=guidance_scale,
            decoding=asdict(decoding or DecodingSettings(max_sentence_tokens=40)),
            weight_dtype=weight_dtype,
            cast=cast,
        )
        if retry is not None:
            result["retry"] = {
                "settings": asdict(retry),
                **{
                    key: round(sum(r[key] for r in retry_reports), 3)
                    for key in ("frames", "frames_checked", "frames_redrawn", "redraws", "seconds")
                },
            }
        if ablation:
            for key, forced in (("ablation", False), ("ablation_teacher_forced", True)):
                result[key] = long_story_ablation(
                    bundle=bundle,
                    judge=judge,
                    seed=seed,
                    stories=ablation_stories,
                    diffusion_steps=diffusion_steps,
                    guidance_scale=guidance_scale,
                    teacher_forced=forced,
                )
    result["seconds"] = round(time.time() - t0, 1)
    return result


def long_story_ablation(
    model_dir=None,
    *,
    bundle=None,
    judge=None,
    policies: Sequence[str] = POLICIES,
    length_multiples: Sequence[int] = (1, 2, 3),
    window_images: int = TRAIN_LENGTH,
    seed: int = 1000,
    stories: int = 2,
    diffusion_steps: int = 10,
    device=None,
    dtype=None,
    guidance_scale: float = GUIDANCE_SCALE,
    teacher_forced: bool = False,
    per_story_agreement: bool = False,
) -> Dict:
    """Visualize ground-truth captions for ``max(length_multiples) x`` the training length under each cache policy.

    Returns ``{policy: {"1x": {pixel_l1, attribute_agreement}, "2x": ..., "3x": ...}}``, metrics over the frames
    of each segment ((m-1)*L, m*L] (L = 10: frames 1-10, 11-20, 21-29). Also called by ``python -m bench --model DIR``.
    ``teacher_forced``: the context holds the ground-truth frames' visual-tokenizer features instead of the agent's
    regressed ones (see :func:`generate_story`), which separates what the cache policy keeps from the agent's own
    compounding errors (a missed scene change is otherwise carried forward by every policy).
    ``policies`` may also name a capped multimodal sink, ``multimodal_sink:K`` (:func:`policy_from_name`);
    ``per_story_agreement`` adds each story's mean attribute agreement per segment
    (``attribute_agreement_per_story``, for bootstrap intervals).
    """
    bundle = bundle or load_model(model_dir)
    dtype = torch_dtype(dtype)
    if device is not None or dtype is not None:
        bundle.to(device, dtype)
    judge = judge or load_judge()
    total = TRAIN_LENGTH * max(length_multiples)
    held_out = []  # (story, ground-truth frames, their features when teacher-forced), shared by every policy
    for k in range(stories):
        story = mini.generate_story(seed + 1, k, frames=total)
        gt = mini.render_story(story, size=64)
        held_out.append((story, gt, frame_features(bundle, gt) if teacher_forced else None))
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for policy in policies:
        seg: Dict[int, Dict[str, List[float]]] = {
            m: {"pixel_l1": [], "attribute_agreement": []} for m in length_multiples
        }
        per_story: Dict[int, List[float]] = {m: [] for m in length_multiples}
        for story, gt, gt_features in held_out:
            n_before = {m: len(seg[m]["attribute_agreement"]) for m in length_multiples}
            _, images = generate_story(
                bundle,
                story,
                total,
                policy=policy_from_name(policy, window_images),
                captions=story["captions"][1:total],
                diffusion_steps=diffusion_steps,
                seed=seed,
                guidance_scale=guidance_scale,
                context_features=gt_features,
            )
            preds = judge.predict(images[1:])
            for i in range(1, total):
                m = (i - 1) // TRAIN_LENGTH + 1
                if m in seg:
                    seg[m]["pixel_l1"].append(pixel_distance(images[i], gt[i]))
                    seg[m]["attribute_agreement"].append(jm.attribute_agreement(preds[i - 1], story["attributes"][i]))
            for m in length_multiples:  # this story's mean agreement per segment (for bootstrap intervals)
                per_story[m].append(float(np.mean(seg[m]["attribute_agreement"][n_before[m] :])))
        out[policy] = {f"{m}x": {k: float(np.mean(v)) for k, v in vals.items()} for m, vals in seg.items()}
        if per_story_agreement:
            for m in length_multiples:
                out[policy][f"{m}x"]["attribute_agreement_per_story"] = per_story[m]
    return out


def policy_from_name(name: str, window_images: int):
    """A cache policy from an ablation name: a policy kind (``dense``, ``window``, ``sink``, ``multimodal_sink``) or
    ``multimodal_sink:K`` = the multimodal sink keeping the sink tokens of only the K most recent evicted images
    (``CachePolicy.max_sink_images``). Raises ``ValueError`` for anything else."""
    kind, _, cap = str(name).partition(":")
    if cap and kind != "multimodal_sink":
        raise ValueError(f"policy {name!r}: only multimodal_sink takes a sink-image cap (multimodal_sink:K)")
    try:
        max_sink = int(cap) if cap else None
    except ValueError:
        raise ValueError(f"policy {name!r}: expected multimodal_sink:K with an integer K") from None
    return CachePolicy(kind=kind, window_images=window_images, max_sink_images=max_sink)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's options (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m evaluation.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle folder (default: models/seedstory-tiny)")
    parser.add_argument("--seed", type=int, default=1000, help="held-out StoryStream-mini seed (training used 0)")
    parser.add_argument("--stories", type=int, default=10)
    parser.add_argument("--frames", type=int, default=TRAIN_LENGTH, help="frames per story, the opening one included")
    parser.add_argument(
        "--baseline", choices=BASELINES, default=None, help="score a trivial baseline instead of the model"
    )
    parser.add_argument(
        "--random-init", action="store_true", help="evaluate a random model of the same size (baseline)"
    )
    parser.add_argument("--no-ablation", action="store_true", help="skip the long-story cache-policy ablation")
    parser.add_argument("--ablation-stories", type=int, default=2)
    parser.add_argument("--diffusion-steps", type=int, default=10)
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=GUIDANCE_SCALE,
        help="classifier-free guidance of the rendered frames (default 3.0; official 7.5)",
    )
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=DEFAULT_REPETITION_PENALTY,
        help=f"decoding: repetition penalty (default {DEFAULT_REPETITION_PENALTY}, the pack's; 1 = off, the official)",
    )
    parser.add_argument(
        "--penalty-window",
        type=int,
        default=PACK_DECODING.penalty_window,
        help="decoding: the penalty reads the story's last N sentences only (default 0 = the whole story, the pack's)",
    )
    repeat = parser.add_mutually_exclusive_group()
    repeat.add_argument(
        "--no-repeat-sentences",
        dest="no_repeat_sentences",
        action="store_true",
        default=DEFAULT_NO_REPEAT_SENTENCES,
        help="decoding: a sentence that copies an earlier one of its story is decoded again (the pack's rule; default)",
    )
    repeat.add_argument(
        "--allow-repeat-sentences",
        dest="no_repeat_sentences",
        action="store_false",
        help="decoding: keep a sentence that copies an earlier one (the official decoding)",
    )
    parser.add_argument("--sample", action="store_true", help="decoding: sample instead of greedy")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--decode-seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--weight-dtype",
        choices=("default", "fp8_e4m3fn", "int8"),
        default="default",
        help="weight storage of the model (as the Tiny Model Loader's weight_dtype; docs/models.md)",
    )
    parser.add_argument("--cast", action="store_true", help="pin each story's cast sheet in the context")
    parser.add_argument(
        "--retry", type=int, default=0, metavar="N", help="consistency retry: redraw a frame up to N times (0 = off)"
    )
    parser.add_argument(
        "--retry-threshold",
        type=float,
        default=DEFAULT_RETRY_THRESHOLD,
        help=f"consistency retry: redraw below this look similarity (default {DEFAULT_RETRY_THRESHOLD})",
    )
    return parser


def cli_decoding(args) -> DecodingSettings:
    """The decoding the CLI's options ask for (no option: :data:`PACK_DECODING`, the pack's)."""
    return replace(
        PACK_DECODING,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        penalty_window=args.penalty_window,
        no_repeat_sentences=args.no_repeat_sentences,
        seed=args.decode_seed,
        max_sentence_tokens=40,
    )


def main(argv=None) -> int:
    """``python -m evaluation.evaluate``: run :func:`evaluate` with the options, print its JSON. Returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.baseline and (args.cast or args.retry):
        parser.error("--cast and --retry apply to the model, not to a --baseline")
    try:
        retry = RetrySettings(args.retry_threshold, args.retry) if args.retry else None
        decoding = cli_decoding(args)
    except ValueError as e:
        parser.error(str(e))
    torch.set_num_threads(1)
    result = evaluate(
        args.model,
        seed=args.seed,
        stories=args.stories,
        baseline=args.baseline,
        random_init=args.random_init,
        ablation=not args.no_ablation,
        ablation_stories=args.ablation_stories,
        diffusion_steps=args.diffusion_steps,
        guidance_scale=args.guidance_scale,
        frames=args.frames,
        decoding=decoding,
        weight_dtype=args.weight_dtype,
        cast=args.cast,
        retry=retry,
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
