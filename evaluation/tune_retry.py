"""Choose the consistency retry's threshold on a tuning seed (never a reported seed); prints one JSON object.

    python -m evaluation.tune_retry [--model DIR] [--seed 1000] [--stories 12] [--first-story 0] [--frames 30]

For each story ``--first-story .. --first-story + --stories - 1`` of the tuning seed the model writes ``--frames``
frames free-running, with the story's cast sheet and without it. Every drawn frame gets the retry's score
(:class:`seedstory_core.consistency.LookReferences`: the lowest look similarity over the characters its sentence names,
against the cast sheet or the first appearance) and the judge's verdict on the looks of the characters on stage (all
right or not). The chosen threshold is the score that best separates the frames with a wrong look from the rest (the
highest balanced accuracy over the observed scores); the JSON also gives a 95% bootstrap interval of that choice over
stories (``threshold_interval``), the frames it would redraw and the score quantiles of both groups, so the choice can
be checked. The threshold shipped as :data:`seedstory_core.consistency.DEFAULT_RETRY_THRESHOLD` is this command's
``threshold`` on seed 1000 (docs/characters.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from evaluation.judge import load_judge
from evaluation.stories import DEFAULT_MODEL, GUIDANCE_SCALE, load_model
from seedstory_core.cast import CastSheet
from seedstory_core.consistency import LookReferences
from seedstory_core.data import mini
from seedstory_core.story import DEFAULT_REPETITION_PENALTY, DecodingSettings, StorySettings
from seedstory_core.cache import CachePolicy

TUNING_SEED = 1000
#: Resamples of the stories for the threshold's interval.
BOOTSTRAP_RESAMPLES = 2000


def look_right(reading: Dict, attrs: Dict, looks: Dict) -> Optional[bool]:
    """Whether every character the parsed sentence puts on stage has its true look at its slot in the judge's
    reading (None when nobody is on stage or the sentence did not parse)."""
    if not attrs.get("parsed") or not attrs.get("positions"):
        return None
    for name, slot in attrs["positions"].items():
        read = (reading.get("looks") or {}).get(slot)
        if read is None or read != looks.get(name):
            return False
    return True


@torch.no_grad()
def frame_scores(bundle, judge, story: dict, frames: int, cast: bool, seed: int) -> List[Dict]:
    """Per generated frame: ``{"score": retry score or None, "right": judge's look verdict or None}``."""
    settings = StorySettings(policy=CachePolicy(kind="multimodal_sink", window_images=10))
    engine = bundle.engine(settings.policy)
    vit = bundle.visual_tokenizer
    start = mini.render_frame(story["attributes"][0])
    sheet = None
    if cast:
        pics = mini.cast_pictures(story)
        sheet = CastSheet(tuple(n for n, _ in pics), tuple(vit.encode_images(p)[:1] for _, p in pics))
    refs = LookReferences(cast=sheet, names=mini.CHARACTER_NAMES)
    refs.observe(story["captions"][0], vit.encode_images(start)[:1])
    state = engine.start(story["captions"][0], image=start, settings=settings, cast=sheet)
    decoding = DecodingSettings(
        repetition_penalty=DEFAULT_REPETITION_PENALTY, no_repeat_sentences=True, max_sentence_tokens=40
    )
    history = [story["captions"][0]]
    out = []
    for i in range(1, frames):
        res = engine.step(state, decoding=decoding)
        state = res.state
        picture = bundle.render(res.features, frame_index=i, steps=10, guidance_scale=GUIDANCE_SCALE, seed=seed)
        feats = vit.encode_images(picture)[:1]
        score = refs.score(res.sentence, feats)
        attrs = mini.sentence_attributes(res.sentence, history)
        reading = judge.predict([picture])[0]
        out.append({"score": score, "right": look_right(reading, attrs, story["looks"])})
        refs.observe(res.sentence, feats)
        history.append(res.sentence)
    return out


def best_threshold(scores: np.ndarray, right: np.ndarray) -> Tuple[float, float]:
    """``(balanced accuracy, threshold)``: the observed score ``t`` with the best balanced accuracy at flagging the
    frames with a wrong look (``score < t``), the first on ties; ``(0.0, median score)`` when no threshold flags
    anything right.

    Args:
        scores: (N,) float retry scores.
        right: (N,) bool judge verdicts (True: every look right).
    """
    cand = np.unique(scores)
    wrong_sorted, right_sorted = np.sort(scores[~right]), np.sort(scores[right])
    zeros = np.zeros(len(cand))
    tpr = np.searchsorted(wrong_sorted, cand, "left") / len(wrong_sorted) if len(wrong_sorted) else zeros
    tnr = 1.0 - np.searchsorted(right_sorted, cand, "left") / len(right_sorted) if len(right_sorted) else zeros
    bal = 0.5 * (tpr + tnr)
    i = int(np.argmax(bal))
    if bal[i] <= 0.0:
        return 0.0, float(np.median(scores))
    return float(bal[i]), float(cand[i])


def choose_threshold(rows: List[Dict], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = TUNING_SEED) -> Dict:
    """The threshold with the best balanced accuracy at telling wrong looks (score < t) from right ones, with a 95%
    percentile bootstrap interval of that choice over stories (rows carry ``story``; rows without one count as one
    story). Raises ValueError when no row has both a score and a verdict."""
    kept = [r for r in rows if r["score"] is not None and r["right"] is not None]
    if not kept:
        raise ValueError("no frame had both a retry score and a look verdict; raise --stories")
    scores = np.array([r["score"] for r in kept], dtype=np.float64)
    right = np.array([bool(r["right"]) for r in kept])
    story = np.array([r.get("story", 0) for r in kept])
    bal, threshold = best_threshold(scores, right)

    ids = np.unique(story)
    members = [np.flatnonzero(story == k) for k in ids]
    rng = np.random.default_rng(seed)
    chosen = []
    for _ in range(resamples):
        idx = np.concatenate([members[j] for j in rng.integers(0, len(ids), size=len(ids))])
        chosen.append(best_threshold(scores[idx], right[idx])[1])
    lo, hi = np.quantile(chosen, [0.025, 0.975])

    def q(v):
        return [round(float(x), 4) for x in np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])] if len(v) else None

    return {
        "threshold": round(threshold, 4),
        "threshold_interval": [round(float(lo), 4), round(float(hi), 4)],
        "balanced_accuracy": round(bal, 4),
        "frames": int(len(kept)),
        "frames_look_wrong": int((~right).sum()),
        "frames_redrawn_at_threshold": int((scores < threshold).sum()),
        "score_quantiles_right": q(scores[right]),
        "score_quantiles_wrong": q(scores[~right]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.tune_retry", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model bundle (default: models/seedstory-tiny)")
    ap.add_argument("--seed", type=int, default=TUNING_SEED)
    ap.add_argument("--stories", type=int, default=12)
    ap.add_argument("--first-story", type=int, default=0, help="index of the first story (a second, disjoint sample)")
    ap.add_argument("--frames", type=int, default=30)
    a = ap.parse_args(argv)
    if a.stories < 1 or a.first_story < 0:
        ap.error(f"--stories must be >= 1 and --first-story >= 0, found {a.stories} and {a.first_story}")
    torch.set_num_threads(1)
    bundle = load_model(a.model)
    judge = load_judge()
    rows: List[Dict] = []
    for k in range(a.first_story, a.first_story + a.stories):
        story = mini.generate_story(a.seed, k, frames=a.frames)
        for cast in (True, False):
            rows += [dict(r, story=k) for r in frame_scores(bundle, judge, story, a.frames, cast, a.seed)]
    result = {
        "model": str(a.model or DEFAULT_MODEL),
        "seed": a.seed,
        "stories": a.stories,
        "first_story": a.first_story,
        **choose_threshold(rows),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
