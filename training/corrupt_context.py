"""Cast-corrupted context: true frames re-drawn with a character missing, as scheduled-sampling context.

    python -m training.corrupt_context --model runs/tiny/stage0/model --data runs/tiny/data --out runs/tiny/corrupt

Why. Free-running, the tiny agent loses characters as a story goes on: on held-out StoryStream-mini stories (seed
1000, 30 stories, the final agent of the recipe) the judge found 53% of the characters who had *entered after the
first frame* missing from the drawn frames when the agent's own features were in its context, against 23% when the
true frames' were (docs/training.md, "Characters who enter later"). Each frame copies the cast of the frame before it,
so a character lost once stays lost. The rollouts (:mod:`training.rollout`) show the agent its own features, but
their errors are whatever the agent happens to make; this module shows it the one error that matters most, on
purpose, so that it learns to take the cast back from the sentences and the first frame.

What. For every training record (a StoryStream-mini story with per-frame ``attributes``) one character's presence
is flipped in the context frames from a frame ``s`` on (``s`` >= 1; frame 0, the true opening frame, is never
touched):

* if a character enters after frame 0, one of them (uniform) is removed from frame ``s`` on, ``s`` drawn uniformly
  between the first frame he is in and the last frame;
* otherwise ``s`` is uniform over frames 1..n-1 and a character present at ``s`` is removed from ``s`` on (always
  when 2 or more are present, with probability 0.5 when 1 is), or else an absent one is added (at most 3 are on
  stage).

With ``--other-window-prob P`` (the recipe: 0.667), a record's context frames are first taken, with probability P,
from another 10-frame window of the same story (a record with the same ``id``), and the flip is applied to those;
the record's own first frame stays. A context that disagrees with the sentences in place as well as cast teaches the
agent to follow the sentences (docs/training.md tells how the share was found).

A removed character's object and action go with him; the frames are re-drawn by the StoryStream-mini renderer from
the changed attributes (the same code that drew the data) and encoded by the bundle's visual tokenizer with the
stage-2 transform (``squash``). Frames the change does not touch are the true frames' features.

Output: ``OUT/own_context.safetensors`` in the format of :mod:`training.rollout` (one (n - 1, T, D) float16 tensor per
record, keyed by the record's first frame, frame ``f`` at row ``f - 1``), so stage 2 takes it with ``--own-context
OUT --own-context-prob P`` (targets stay true), and ``OUT/meta.json`` (counts, seed, seconds). Every record's draw
comes from ``numpy.random.default_rng([seed, record index])``: the file does not depend on anything but the data, the
visual tokenizer and the seed. Only data with per-frame attributes can be corrupted (StoryStream-mini; real
StoryStream has none): other data raises ValueError.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.data import mini
from seedstory_core.data.storystream import load_records

from .common import ImageSource
from .rollout import write_own_context


def corrupt_cast(
    attributes: Sequence[Dict], rng: np.random.Generator, looks: Optional[Dict[str, Dict]] = None
) -> Tuple[List[Dict], Dict]:
    """One record's context attributes with one character's presence flipped (the rule in the module docstring).

    Args:
        attributes: the record's n >= 2 per-frame StoryStream-mini attribute dicts (``present``, ``positions``,
            ``objects``, ``actors``, ...), frame 0 first.
        rng: the record's generator.
        looks: the story's looks (``{name: {"colour", "accessory"}}``, StoryStream-mini's record ``looks``): an added
            character is drawn with its look in this story (else with the look any frame gives it, else its fixed one).
    Returns: (attributes of frames 1..n-1 with the change applied, ``{"kind": "entered"|"drop"|"add", "character",
    "from_frame"}``). Frames the change does not touch are the input dicts themselves.
    Raises: ValueError for fewer than 2 frames.
    """
    n = len(attributes)
    if n < 2:
        raise ValueError(f"corrupt_cast: a record needs at least 2 frames, found {n}.")
    first = set(attributes[0]["present"])
    order = [c.name for c in mini.CHARACTERS]  # the renderer's character order
    entered = [c for c in order if c not in first and any(c in a["present"] for a in attributes[1:])]
    if entered:
        who = entered[int(rng.integers(len(entered)))]
        first_in = min(f for f in range(1, n) if who in attributes[f]["present"])
        s, kind = int(rng.integers(first_in, n)), "entered"
    else:
        s = int(rng.integers(1, n))
        present = list(attributes[s]["present"])
        if len(present) >= 2 or (len(present) == 1 and rng.random() < 0.5):
            who, kind = present[int(rng.integers(len(present)))], "drop"
        else:
            absent = [c for c in order if c not in present]
            who, kind = absent[int(rng.integers(len(absent)))], "add"
    known = {}
    for a in attributes:
        known.update(a.get("looks") or {})
    known.update(looks or {})
    out = []
    for f in range(1, n):
        a = attributes[f]
        present = list(a["present"])
        if f >= s and kind in ("entered", "drop") and who in present:
            present.remove(who)
        elif f >= s and kind == "add" and who not in present and len(present) < mini.MAX_PRESENT:
            present.append(who)
        if present != list(a["present"]):
            a = {
                **a,
                "present": present,
                "positions": mini.slot_layout(present),
                "objects": [o for o in a.get("objects", []) if o.get("holder") in present],
                "actors": [c for c in a.get("actors", []) if c in present],
                "looks": {c: known[c] for c in present if c in known},
            }
        out.append(a)
    return out, {"kind": kind, "character": who, "from_frame": s}


def _records_with_attributes(data, records: Optional[List[dict]]):
    """(records as :func:`seedstory_core.data.storystream.load_records` gives them, their per-frame attributes,
    image root)."""
    kept, root = load_records(data, records, None, keep=("attributes", "looks"))
    for r in kept:
        a, n = r.get("attributes"), len(r["images"])
        if not isinstance(a, list) or len(a) != n:
            found = f"{len(a)} for {n} frames" if isinstance(a, list) else type(a).__name__
            raise ValueError(
                f"corrupt_context: record {r['id']!r} has no per-frame 'attributes' (found {found}). Only "
                "StoryStream-mini data (python -m seedstory_core.data.mini) carries them; for other data use the "
                "rollouts (python -m training.rollout) alone."
            )
    return kept, [r["attributes"] for r in kept], root


@torch.no_grad()
def corrupt_context(
    model, data, out, *, seed: int = 0, other_window_prob: float = 0.0, records: Optional[List[dict]] = None
) -> Dict[str, object]:
    """Write ``out/own_context.safetensors`` (cast-corrupted context features of every record) and ``out/meta.json``.

    Args:
        model: a bundle folder whose visual tokenizer encodes the frames (the frozen ViT the agent is trained with).
        data: a training-data folder or .jsonl with per-frame ``attributes`` (or ``records`` in memory).
        out: the output folder (created).
        seed: the corruption seed (record ``r`` draws from ``default_rng([seed, r])``).
        other_window_prob: probability that a record's context frames are taken from ANOTHER window of the same
            story (another record with the same ``id`` and as many frames, uniform) before the cast is flipped; the
            first frame stays the record's own. 0 = always the record's own frames.
    Returns: the meta dict (records, counts per kind, windows swapped, seed, seconds).
    Raises: FileNotFoundError for a missing bundle, ValueError for data without attributes or a probability
    outside [0, 1].
    """
    t0 = time.time()
    if not 0.0 <= float(other_window_prob) <= 1.0:
        raise ValueError(f"corrupt_context: other_window_prob must be in [0, 1], found {other_window_prob}.")
    if not Path(model).is_dir():
        raise FileNotFoundError(f"corrupt_context: model bundle folder not found: {model}")
    bundle = SeedStoryBundle.load(Path(model))
    kept, attrs, root = _records_with_attributes(data, records)
    images = ImageSource(kept, root)
    windows: Dict[object, List[int]] = {}
    for r, record in enumerate(kept):
        windows.setdefault((record["id"], len(record["images"])), []).append(r)
    tensors, kinds, swapped = {}, {"entered": 0, "drop": 0, "add": 0}, 0
    for r, record in enumerate(kept):
        rng = np.random.default_rng([int(seed), r])
        src = r
        others = [o for o in windows[(record["id"], len(record["images"]))] if o != r]
        if others and other_window_prob > 0 and rng.random() < other_window_prob:  # no draw at 0
            src = others[int(rng.integers(len(others)))]
            swapped += 1
        changed, info = corrupt_cast(attrs[src], rng, kept[src].get("looks"))
        kinds[info["kind"]] += 1
        frames: List[Image.Image] = []
        for f in range(1, len(record["images"])):
            true = images.open(src, f)
            a = changed[f - 1]
            frames.append(true if a is attrs[src][f] else mini.render_frame(a, size=true.size[0]))
        tensors[images.key(r, 0)] = (
            bundle.visual_tokenizer.encode_images(frames, mode="squash").float().cpu().to(torch.float16).contiguous()
        )
    return write_own_context(
        out,
        tensors,
        model=model,
        data=data,
        seconds=time.time() - t0,
        kinds=kinds,
        other_window=swapped,
        other_window_prob=float(other_window_prob),
        seed=int(seed),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.corrupt_context", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, type=Path, help="a bundle folder with the frozen visual tokenizer")
    p.add_argument("--data", required=True, help="StoryStream-mini training data folder or .jsonl (with attributes)")
    p.add_argument("--out", required=True, type=Path, help="folder for own_context.safetensors and meta.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--other-window-prob",
        type=float,
        default=0.0,
        help="probability that a record's context frames come from another window of the same story (0-1)",
    )
    args = p.parse_args(argv)
    print(
        json.dumps(
            corrupt_context(args.model, args.data, args.out, seed=args.seed, other_window_prob=args.other_window_prob)
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
