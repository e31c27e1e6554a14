"""Which decoding setting stops the tiny model's stories from looping? A measurement, scored by the fixed judge.

    python -m evaluation.decoding --seed 1000 --stories 16 --frames 20 [--settings greedy,rep1.2,...] [--no-render]

For each setting, stories ``0..N-1`` of ``--seed`` are continued from their real first frame and sentence for
``--frames - 1`` frames (generation mode, multimodal sink, 10 diffusion steps, guidance 3, as the evaluation), and
scored with :func:`evaluation.metrics.story_metrics`; each key gets a bootstrap interval over stories. Prints one
JSON object (last on stdout) and a table on stderr.

Settings (names): ``greedy``; ``repK`` = repetition penalty K over the story's text tokens (``DecodingSettings.
repetition_penalty``); ``ngramN`` = no N-gram of text tokens repeated within the story
(``DecodingSettings.no_repeat_ngram_size``: transformers' ``NoRepeatNGramLogitsProcessor`` over the story's text
history); ``sampleT`` = sampling at temperature T with top-p 0.9 (seeded); ``nosent`` =
``DecodingSettings.no_repeat_sentences`` (a sentence that copies an earlier one is decoded again with another first
word); ``repK@N`` / ``nosent@N`` = the penalty (and n-gram rule) / the sentence rule over the story's last N
sentences only (``DecodingSettings.penalty_window`` / ``no_repeat_window``); parts join with ``+``
(``rep1.2+nosent``, ``rep1.2@8+nosent@8``).

``--no-render`` also reports the text keys per segment of the generated frames (``segments``: ``1x`` = frames 1-9,
``3x`` = frames 21-29, as ``evaluation.cast_eval``; a segment the stories do not reach is left out).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from evaluation import metrics as jm
from evaluation.cast_eval import SEGMENTS
from evaluation.judge import load_judge
from evaluation.pooled import paired_segments as paired_segments_of
from evaluation.stories import TRAIN_LENGTH, generate_story, load_model
from seedstory_core.cache import CachePolicy
from seedstory_core.data import mini
from seedstory_core.story import DecodingSettings

DEFAULT_SETTINGS = ("greedy", "rep1.2", "rep1.5", "ngram4", "ngram6", "sample0.7", "sample1.0", "sample0.7+rep1.2")


def decoding_for(name: str, seed: int = 0):
    """The DecodingSettings of a setting name (module docstring).

    Raises:
        ValueError: an unknown name.
    """
    kw = dict(max_sentence_tokens=40, seed=seed)
    for part in name.split("+"):
        if part == "greedy":
            continue
        m = re.fullmatch(r"rep([0-9.]+)(?:@([0-9]+))?", part)
        if m:
            kw["repetition_penalty"] = float(m.group(1))
            kw["penalty_window"] = int(m.group(2) or 0)
            continue
        m = re.fullmatch(r"ngram([0-9]+)", part)
        if m:
            kw["no_repeat_ngram_size"] = int(m.group(1))
            continue
        m = re.fullmatch(r"nosent(?:@([0-9]+))?", part)
        if m:
            kw["no_repeat_sentences"] = True
            kw["no_repeat_window"] = int(m.group(1) or 0)
            continue
        m = re.fullmatch(r"sample([0-9.]+)", part)
        if m:
            kw.update(do_sample=True, temperature=float(m.group(1)), top_p=0.9)
            continue
        raise ValueError(
            f"unknown decoding setting {part!r} in {name!r} "
            "(greedy, repK[@N], ngramN, sampleT, nosent[@N], joined by +)"
        )
    return DecodingSettings(**kw)


def text_keys(judged: Sequence[Dict]) -> Dict[str, float]:
    """The text checks of a story's judged frames (:func:`evaluation.metrics.judge_frame` items, no image): the
    rates of ``parse_rate``, ``distinct_sentence_rate``, ``continuity_rate`` and ``text_score`` (all three pass).

    Raises:
        ValueError: no frames.
    """
    if not judged:
        raise ValueError("text_keys needs at least one judged frame, got none")
    return {
        "parse_rate": float(np.mean([j["parsed"] for j in judged])),
        "distinct_sentence_rate": float(np.mean([j["new"] for j in judged])),
        "continuity_rate": float(np.mean([j["continuous"] for j in judged])),
        "text_score": float(np.mean([j["parsed"] and j["new"] and j["continuous"] for j in judged])),
    }


def measure(
    settings: Sequence[str],
    seed: int,
    stories: int,
    frames: int,
    diffusion_steps: int = 10,
    model_dir=None,
    log=None,
    render: bool = True,
    cast: bool = False,
    policy: Optional[CachePolicy] = None,
) -> Dict[str, Dict]:
    """Score each decoding setting on the same held-out stories.

    Returns {setting: {key: mean, key_ci95: [lo, hi], "samples": first story's sentences}} (``segments`` too with
    ``render=False``). ``render=False``: the text checks only (``parse_rate``, ``distinct_sentence_rate``,
    ``continuity_rate`` and ``text_score`` = all three pass); the sentences do not depend on rendering, which is most
    of the time. ``cast``: each story's cast sheet pinned in the context (``evaluation.stories.cast_sheet``), as the
    ``model_cast`` system of ``evaluation.cast_eval``. ``policy``: the story's cache policy (default: the
    evaluation's, a multimodal sink with a 10-image window).
    """
    bundle, judge = load_model(model_dir), load_judge()
    keys = (
        ("score", "parse_rate", "distinct_sentence_rate", "continuity_rate", "shown_rate", "coherence", "consistency")
        if render
        else ("text_score", "parse_rate", "distinct_sentence_rate", "continuity_rate")
    )
    out = {}
    for name in settings:
        t0 = time.time()
        decoding = decoding_for(name, seed)
        vals: Dict[str, List[float]] = {k: [] for k in keys}
        seg_vals: Dict[str, Dict[str, List[float]]] = {}
        samples = None
        for k in range(stories):
            story = mini.generate_story(seed, k, frames=max(30, frames))
            sentences, images = generate_story(
                bundle,
                story,
                frames,
                diffusion_steps=diffusion_steps,
                seed=seed,
                decoding=decoding,
                render=render,
                cast=cast,
                policy=policy,
            )
            if render:
                m = jm.story_metrics(sentences, judge.predict(images))
            else:
                judged = [jm.judge_frame(s, sentences[:i], None) for i, s in enumerate(sentences) if i > 0]
                m = text_keys(judged)
                for seg, (a, b) in SEGMENTS.items():
                    if seg != "all" and len(sentences) > (b or a):
                        for key, v in text_keys(judged[a - 1 : b]).items():
                            seg_vals.setdefault(seg, {}).setdefault(key, []).append(v)
            for key in keys:
                vals[key].append(m[key])
            samples = samples or sentences
        res = {}
        for key, v in vals.items():
            res[key] = float(np.mean(v))
            res[key + "_ci95"] = [round(x, 4) for x in jm.bootstrap_ci(v, seed=seed)]
        if seg_vals:
            res["segments"] = {
                seg: {
                    key: {
                        "mean": float(np.mean(v)),
                        "ci95": [round(x, 4) for x in jm.bootstrap_ci(v, seed=seed)],
                        "per_story": [round(float(x), 4) for x in v],
                    }
                    for key, v in per_key.items()
                }
                for seg, per_key in seg_vals.items()
            }
        res["samples"] = samples
        res["seconds"] = round(time.time() - t0, 1)
        out[name] = res
        if log:
            head = "score" if render else "text_score"
            log(
                f"{name:>18}: {head} {res[head]:.3f} {res[head + '_ci95']}  parse {res['parse_rate']:.3f} "
                f"{res['parse_rate_ci95']}  distinct {res['distinct_sentence_rate']:.3f} "
                f"{res['distinct_sentence_rate_ci95']}"
                f"  ({res['seconds']} s)"
            )
    return out


def paired_segments(results: Dict[str, Dict], against: str) -> Dict[str, Dict[str, Dict[str, Dict]]]:
    """Every other setting minus ``against``, per segment and text key, paired by story
    (:func:`evaluation.pooled.paired_segments`: mean, 95% bootstrap interval, n).

    Args:
        results: :func:`measure`'s output with ``segments`` (``render=False``).
        against: the reference setting's name.

    Raises:
        ValueError: ``against`` is not in ``results``, or a setting has no per-segment values.
    """
    if against not in results:
        raise ValueError(f"--paired-against {against!r} is not one of the measured settings {sorted(results)}")
    out = {}
    for name, res in results.items():
        if name == against:
            continue
        if "segments" not in res or "segments" not in results[against]:
            raise ValueError(f"no per-segment values for {name!r} or {against!r}: measure with render=False")
        out[name] = paired_segments_of(res["segments"], results[against]["segments"])
    return out


def versus_file(results: Dict[str, Dict], other: Dict, seed: int, stories: int) -> Dict[str, Dict]:
    """Each setting of this run minus the same setting in ``other`` (another run's JSON, e.g. with another cache
    window), per segment and text key, paired by story over this run's stories ``0..stories-1``.

    Raises:
        ValueError: ``other`` is of another seed, has fewer stories, or shares no setting with per-segment values.
    """
    if other.get("seed") != seed or int(other.get("stories", 0)) < stories:
        raise ValueError(
            f"--versus needs a run of seed {seed} with at least {stories} stories, found seed {other.get('seed')} "
            f"with {other.get('stories')}"
        )
    out = {}
    for name, res in results.items():
        theirs = other.get("results", {}).get(name, {}).get("segments")
        if "segments" not in res or not theirs:
            continue
        out[name] = paired_segments_of(res["segments"], theirs)
    if not out:
        raise ValueError("--versus: no setting of this run has per-segment values in the other run")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m evaluation.decoding``: measure the settings, print the JSON last. Returns 0 (a bad setting name
    exits through argparse, status 2)."""
    ap = argparse.ArgumentParser(prog="python -m evaluation.decoding", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--stories", type=int, default=16)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--settings", default=",".join(DEFAULT_SETTINGS))
    ap.add_argument("--diffusion-steps", type=int, default=10)
    ap.add_argument("--model", default=None)
    ap.add_argument("--no-render", action="store_true", help="text checks only (no frames drawn, no image score)")
    ap.add_argument("--cast", action="store_true", help="pin each story's cast sheet in the context")
    ap.add_argument(
        "--versus",
        default=None,
        metavar="JSON",
        help="with --no-render: another run's output (same seed, at least as many stories); each setting minus the "
        "same setting there, per segment, paired by story",
    )
    ap.add_argument(
        "--window-images",
        type=int,
        default=TRAIN_LENGTH,
        help=f"multimodal sink: images kept in the window (default {TRAIN_LENGTH}, the evaluation's; 0 = a dense "
        "cache that evicts nothing)",
    )
    ap.add_argument(
        "--paired-against",
        default=None,
        metavar="SETTING",
        help="with --no-render: also report every other setting minus this one per segment, paired by story",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = [s.strip() for s in a.settings.split(",") if s.strip()]
    if a.paired_against is not None and (a.paired_against not in names or not a.no_render):
        ap.error(f"--paired-against needs --no-render and one of the settings {names}, got {a.paired_against!r}")
    if (a.paired_against is not None or a.versus is not None) and a.frames < 10:
        ap.error(f"--paired-against and --versus pair the segments, which need --frames >= 10 (1x), found {a.frames}")
    for n in names:
        try:
            decoding_for(n)  # fail early on a bad name
        except ValueError as e:
            ap.error(str(e))
    other = None
    if a.versus is not None:
        if not a.no_render:
            ap.error("--versus needs --no-render (it pairs the per-segment text keys)")
        try:
            other = json.loads(Path(a.versus).read_text())
        except (OSError, json.JSONDecodeError) as e:
            ap.error(f"--versus {a.versus}: cannot read a JSON result ({e})")
        shared = [n for n in names if "segments" in other.get("results", {}).get(n, {})]
        if other.get("seed") != a.seed or int(other.get("stories", 0)) < a.stories or not shared:
            ap.error(
                f"--versus {a.versus}: expected a --no-render run of seed {a.seed} with at least {a.stories} stories "
                f"and one of the settings {names}; found seed {other.get('seed')}, {other.get('stories')} stories, "
                f"settings {sorted(other.get('results', {}))}"
            )
    if a.window_images < 0:
        ap.error(f"--window-images must be >= 0 (0 = a dense cache), found {a.window_images}")
    policy = (
        CachePolicy(kind="dense")
        if a.window_images == 0
        else CachePolicy(kind="multimodal_sink", window_images=a.window_images)
    )
    res = measure(
        names,
        a.seed,
        a.stories,
        a.frames,
        a.diffusion_steps,
        a.model,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        render=not a.no_render,
        cast=a.cast,
        policy=policy,
    )
    print(
        json.dumps(
            {
                "seed": a.seed,
                "stories": a.stories,
                "frames": a.frames,
                "rendered": not a.no_render,
                "cast": a.cast,
                "window_images": a.window_images,
                "results": res,
                **({"paired": paired_segments(res, a.paired_against)} if a.paired_against else {}),
                **(
                    {"versus": {"file": a.versus, "paired": versus_file(res, other, a.seed, a.stories)}}
                    if other
                    else {}
                ),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
