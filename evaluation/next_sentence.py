"""Does the agent write a valid next sentence when the story so far is the true one? A diagnosis of the parse rate
at 3x the training length (docs/evaluation.md, "A penalty that forgets").

    python -m evaluation.next_sentence --seed 1000 --stories 30 --frames 30 [--pictures true|own] [--out FILE]

For each frame ``i = 1 .. --frames - 1`` of stories ``0..N-1`` of ``--seed``, the context holds the *true* story up
to frame ``i - 1``: its true sentences (visualization mode) and, with ``--pictures true``, the visual tokenizer's
features of its true frames (``own``: the agent's regressed features of them, as when it draws the true sentences).
From that state the agent writes sentence ``i`` with the pack's decoding (:data:`evaluation.stories.PACK_DECODING`;
a branch that is thrown away: the story goes on with the true sentence), and the story grammar checks it against the
true sentences before it (:func:`evaluation.metrics.judge_frame`: ``parsed``, ``continuous``). Multimodal sink with
the evaluation's 10-image window. Reported per segment as :mod:`evaluation.cast_eval` (``1x`` = frames 1-9, ``3x`` =
21-29): mean over stories of the per-story rate, 95% bootstrap interval (:func:`evaluation.pooled.interval`) and the
per-story values. Nothing is drawn. Prints the JSON (and writes it to ``--out``); ``--versus FILE`` adds this run
minus another result of the same seed and stories, paired by story.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from evaluation import metrics as jm
from evaluation.cast_eval import SEGMENTS, segment_values
from evaluation.pooled import interval, paired_segments
from evaluation.stories import PACK_DECODING, TRAIN_LENGTH, frame_features, load_model
from seedstory_core.cache import CachePolicy
from seedstory_core.data import mini
from seedstory_core.story import StorySettings

PICTURES = ("true", "own")
KEYS = ("parse_rate", "continuity_rate")


@torch.no_grad()
def next_sentences(bundle, story: dict, frames: int, pictures: str = "true", decoding=PACK_DECODING) -> List[Dict]:
    """The agent's sentence for each frame ``1..frames-1`` of ``story`` with the true story before it in the context.

    Args:
        bundle: a :class:`~seedstory_core.bundle.SeedStoryBundle`.
        story: a StoryStream-mini story (:func:`seedstory_core.data.mini.generate_story`) of at least ``frames``
            frames.
        frames: frames of the story used (the opening one included), >= 2.
        pictures: ``true`` = the true frames' visual-tokenizer features in the context, ``own`` = the agent's
            regressed features of the true sentences.
        decoding: the ``DecodingSettings`` of the written sentences (default: the pack's).

    Returns:
        One dict per frame ``i`` (in order): ``{"frame": i, "sentence"}`` and the keys of
        :func:`evaluation.metrics.judge_frame` (``parsed``, ``continuous``, ...; no picture, so the ``shown`` keys
        are False).

    Raises:
        ValueError: ``pictures`` not in :data:`PICTURES`, or ``frames`` outside ``[2, len(story)]``.
    """
    if pictures not in PICTURES:
        raise ValueError(f"pictures must be one of {PICTURES}, got {pictures!r}")
    captions = story["captions"]
    if not 2 <= frames <= len(captions):
        raise ValueError(f"frames must be in [2, {len(captions)}] for this story, got {frames}")
    true_frames = mini.render_story(
        {**story, "captions": captions[:frames], "attributes": story["attributes"][:frames]}
    )
    features = frame_features(bundle, true_frames) if pictures == "true" else None
    settings = StorySettings(policy=CachePolicy(kind="multimodal_sink", window_images=TRAIN_LENGTH))
    engine = bundle.engine(settings.policy)
    state = engine.start(captions[0], image=true_frames[0], settings=settings)
    out = []
    for i in range(1, frames):
        # the previous frame's picture: the start image is already the true one; later, true features or the agent's
        previous = features[i - 1] if features is not None and i > 1 else None
        written = engine.step(state, decoding=decoding, context_features=previous).sentence
        out.append({"frame": i, "sentence": written, **jm.judge_frame(written, captions[:i], None)})
        state = engine.step(state, text=captions[i], mode="visualization", context_features=previous).state
    return out


def segment_rates(rows: Sequence[Dict]) -> Dict[str, Dict[str, Optional[float]]]:
    """{segment: {"parse_rate", "continuity_rate"}} of one story's :func:`next_sentences` rows
    (:func:`evaluation.cast_eval.segment_values`), None where the story does not cover the whole segment."""
    out = {}
    for seg, (a, b) in SEGMENTS.items():
        complete = any(r["frame"] == (b or a) for r in rows) and any(r["frame"] == a for r in rows)
        values = segment_values(rows, a, b) if complete else None
        out[seg] = {key: values[key] if values else None for key in KEYS}
    return out


def measure(bundle, seed: int, stories: int, frames: int, pictures: str) -> Dict:
    """:func:`next_sentences` on stories ``0..stories-1`` of ``seed``; the JSON-ready result (module docstring)."""
    per_story: Dict[str, Dict[str, List[Optional[float]]]] = {s: {k: [] for k in KEYS} for s in SEGMENTS}
    samples = None
    for k in range(stories):
        rows = next_sentences(bundle, mini.generate_story(seed, k, frames=max(30, frames)), frames, pictures)
        samples = samples or [r["sentence"] for r in rows]
        for seg, values in segment_rates(rows).items():
            for key in KEYS:
                per_story[seg][key].append(values[key])
    segments = {
        seg: {key: {**interval([v for v in vals if v is not None]), "per_story": vals} for key, vals in per_key.items()}
        for seg, per_key in per_story.items()
    }
    return {
        "seed": seed,
        "stories": stories,
        "frames": frames,
        "pictures": pictures,
        "segments": segments,
        "samples": samples,
    }


def versus(result: Dict, other: Dict) -> Dict[str, Dict[str, Dict]]:
    """``result`` minus ``other`` (two :func:`measure` results of the same seed and stories, e.g. ``own`` and
    ``true`` pictures), per segment and key, paired by story (stories without a value in either are left out).

    Raises:
        ValueError: another seed or another story count.
    """
    if (result["seed"], result["stories"]) != (other.get("seed"), other.get("stories")):
        raise ValueError(
            f"--versus needs a result of seed {result['seed']} with {result['stories']} stories, found seed "
            f"{other.get('seed')} with {other.get('stories')}"
        )
    return paired_segments(result["segments"], other["segments"])


def main(argv=None) -> int:
    """``python -m evaluation.next_sentence``; returns 0 (bad options exit 2)."""
    ap = argparse.ArgumentParser(prog="python -m evaluation.next_sentence", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--stories", type=int, default=30)
    ap.add_argument("--frames", type=int, default=30, help="frames per story, the opening one included (2-30)")
    ap.add_argument("--pictures", choices=PICTURES, default="true")
    ap.add_argument("--model", type=Path, default=None, help="model bundle (default: models/seedstory-tiny)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--versus", type=Path, default=None, help="another result (same seed and stories): paired this - that"
    )
    a = ap.parse_args(argv)
    if a.stories < 1 or not 2 <= a.frames <= 30:
        ap.error(f"--stories must be >= 1 and --frames in [2, 30], found {a.stories} and {a.frames}")
    other = None
    if a.versus is not None:
        try:
            other = json.loads(a.versus.read_text())
        except (OSError, json.JSONDecodeError) as e:
            ap.error(f"--versus {a.versus}: cannot read a JSON result ({e})")
        if (other.get("seed"), other.get("stories")) != (a.seed, a.stories):
            ap.error(
                f"--versus {a.versus}: expected seed {a.seed} with {a.stories} stories, found seed {other.get('seed')} "
                f"with {other.get('stories')}"
            )
    torch.set_num_threads(1)
    t0 = time.time()
    result = measure(load_model(a.model), a.seed, a.stories, a.frames, a.pictures)
    result["seconds"] = round(time.time() - t0, 1)
    if other is not None:
        result["versus"] = {"file": str(a.versus), "paired": versus(result, other)}
    text = json.dumps(result)
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
