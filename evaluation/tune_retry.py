"""Choose the consistency retry's threshold on a tuning seed (never a reported seed); prints one JSON object.

    python -m evaluation.tune_retry [--model DIR] [--seed 1000] [--stories 8] [--frames 30]

For each held-out story of the tuning seed the model writes ``--frames`` frames free-running, with the story's cast
sheet and without it. Every drawn frame gets the retry's score (:class:`seedstory_core.consistency.LookReferences`:
the lowest look similarity over the characters its sentence names, against the cast sheet or the first appearance)
and the judge's verdict on the looks of the characters on stage (all right or not). The chosen threshold is the
score that best separates the frames with a wrong look from the rest (the highest balanced accuracy over the observed
scores); the JSON also gives the score quantiles of both groups, so the choice can be checked. The threshold shipped
as :data:`seedstory_core.consistency.DEFAULT_RETRY_THRESHOLD` is this command's ``threshold`` on seed 1000
(docs/characters.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional

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


def choose_threshold(rows: List[Dict]) -> Dict:
    """The threshold with the best balanced accuracy at telling wrong looks (score < t) from right ones."""
    pairs = [(r["score"], r["right"]) for r in rows if r["score"] is not None and r["right"] is not None]
    if not pairs:
        raise ValueError("no frame had both a retry score and a look verdict; raise --stories")
    scores = np.array([s for s, _ in pairs])
    right = np.array([bool(r) for _, r in pairs])
    best = (0.0, float(np.median(scores)))
    for t in np.unique(scores):
        flag = scores < t
        tpr = flag[~right].mean() if (~right).any() else 0.0
        tnr = (~flag[right]).mean() if right.any() else 0.0
        bal = 0.5 * (tpr + tnr)
        if bal > best[0]:
            best = (float(bal), float(t))

    def q(v):
        return [round(float(x), 4) for x in np.quantile(v, [0.1, 0.25, 0.5, 0.75, 0.9])] if len(v) else None

    return {
        "threshold": round(best[1], 4),
        "balanced_accuracy": round(best[0], 4),
        "frames": int(len(pairs)),
        "frames_look_wrong": int((~right).sum()),
        "score_quantiles_right": q(scores[right]),
        "score_quantiles_wrong": q(scores[~right]),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.tune_retry", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model bundle (default: models/seedstory-tiny)")
    ap.add_argument("--seed", type=int, default=TUNING_SEED)
    ap.add_argument("--stories", type=int, default=8)
    ap.add_argument("--frames", type=int, default=30)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    bundle = load_model(a.model)
    judge = load_judge()
    rows: List[Dict] = []
    for k in range(a.stories):
        story = mini.generate_story(a.seed, k, frames=a.frames)
        for cast in (True, False):
            rows += frame_scores(bundle, judge, story, a.frames, cast, a.seed)
    result = {"model": str(a.model or DEFAULT_MODEL), "seed": a.seed, "stories": a.stories, **choose_threshold(rows)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
