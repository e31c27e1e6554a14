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
word); parts join with ``+`` (``rep1.2+nosent``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from evaluation import metrics as jm
from evaluation.judge import load_judge
from evaluation.stories import generate_story, load_model
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
        m = re.fullmatch(r"rep([0-9.]+)", part)
        if m:
            kw["repetition_penalty"] = float(m.group(1))
            continue
        m = re.fullmatch(r"ngram([0-9]+)", part)
        if m:
            kw["no_repeat_ngram_size"] = int(m.group(1))
            continue
        if part == "nosent":
            kw["no_repeat_sentences"] = True
            continue
        m = re.fullmatch(r"sample([0-9.]+)", part)
        if m:
            kw.update(do_sample=True, temperature=float(m.group(1)), top_p=0.9)
            continue
        raise ValueError(
            f"unknown decoding setting {part!r} in {name!r} (greedy, repK, ngramN, sampleT, nosent, joined by +)"
        )
    return DecodingSettings(**kw)


def measure(
    settings: Sequence[str],
    seed: int,
    stories: int,
    frames: int,
    diffusion_steps: int = 10,
    model_dir=None,
    log=None,
    render: bool = True,
) -> Dict[str, Dict]:
    """Score each decoding setting on the same held-out stories; returns {setting: {key: mean, key_ci95: [lo, hi],
    "samples": first story's sentences}}. ``render=False``: the text checks only (``parse_rate``,
    ``distinct_sentence_rate``, ``continuity_rate`` and ``text_score`` = all three pass); the sentences do not depend
    on rendering, which is most of the time."""
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
        samples = None
        for k in range(stories):
            story = mini.generate_story(seed, k, frames=max(30, frames))
            sentences, images = generate_story(
                bundle, story, frames, diffusion_steps=diffusion_steps, seed=seed, decoding=decoding, render=render
            )
            if render:
                m = jm.story_metrics(sentences, judge.predict(images))
            else:
                judged = [jm.judge_frame(s, sentences[:i], None) for i, s in enumerate(sentences) if i > 0]
                m = {
                    "parse_rate": np.mean([j["parsed"] for j in judged]),
                    "distinct_sentence_rate": np.mean([j["new"] for j in judged]),
                    "continuity_rate": np.mean([j["continuous"] for j in judged]),
                    "text_score": np.mean([j["parsed"] and j["new"] and j["continuous"] for j in judged]),
                }
            for key in keys:
                vals[key].append(m[key])
            samples = samples or sentences
        res = {}
        for key, v in vals.items():
            res[key] = float(np.mean(v))
            res[key + "_ci95"] = [round(x, 4) for x in jm.bootstrap_ci(v, seed=seed)]
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
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = [s.strip() for s in a.settings.split(",") if s.strip()]
    for n in names:
        try:
            decoding_for(n)  # fail early on a bad name
        except ValueError as e:
            ap.error(str(e))
    res = measure(
        names,
        a.seed,
        a.stories,
        a.frames,
        a.diffusion_steps,
        a.model,
        log=lambda m: print(m, file=sys.stderr, flush=True),
        render=not a.no_render,
    )
    print(
        json.dumps(
            {"seed": a.seed, "stories": a.stories, "frames": a.frames, "rendered": not a.no_render, "results": res}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
