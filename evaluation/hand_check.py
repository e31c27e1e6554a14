"""The judge against hand-checked labels of de-tokenized frames; prints one JSON object.

    python -m evaluation.hand_check make  [--model DIR] [--seed 1000] [--frames 100] [--out evaluation/hand_check]
    python -m evaluation.hand_check score [--out evaluation/hand_check]

``make`` draws ``--frames`` frames with the model's de-tokenizer (visualization mode: the held-out stories' true
sentences given, so the frames cover every place, cast, look, pose and object; frames taken round-robin over
stories, frames 1-9 of each) and writes them, 4x enlarged, as ``OUT/frames/NNN.png`` with contact sheets of ten
(``OUT/sheets/sheet_NN.png``, the frame numbers printed on them) and ``OUT/frames.json`` (story, frame, the judge's
reading). It never writes labels.

The labels, ``OUT/labels.json``, are written by a person looking at the pictures, WITHOUT the judge's readings:
``{"NNN": {"background": place, "slots": {"left"|"center"|"right": null or {"name", "colour", "accessory", "pose"}},
"object": name or null, "unsure": [attribute names]}}`` (a character is named by its shape: circle George, triangle
Lily, square Max, diamond Zoe, tall rectangle Ben). ``score`` compares the judge's readings with them per attribute
(attributes a labeller marked unsure are left out; a look or pose is compared at its position whoever the figure
there is named, since the shape is the hardest thing to tell on a blurry frame; ``cast`` compares the sets of names)
and prints the accuracies with Wilson 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from PIL import Image, ImageDraw

from evaluation.judge import SLOT_NAMES, load_judge
from evaluation.stories import DEFAULT_MODEL, generate_story, load_model
from seedstory_core.data import mini

HERE = Path(__file__).resolve().parent / "hand_check"
SCALE = 4
PER_SHEET = 10


def wilson(k: int, n: int, z: float = 1.96) -> List[float]:
    """Wilson score 95% interval of a proportion k/n ([0, 1] for n = 0)."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


@torch.no_grad()
def make(model: Optional[str], seed: int, frames: int, out: Path) -> Dict:
    """Draw the frames and write them with their contact sheets and the judge's readings (no labels)."""
    bundle = load_model(model)
    judge = load_judge()
    (out / "frames").mkdir(parents=True, exist_ok=True)
    (out / "sheets").mkdir(parents=True, exist_ok=True)
    stories = (frames + 8) // 9
    drawn: List[List] = []
    for k in range(stories):
        story = mini.generate_story(seed, k, frames=10)
        _, images = generate_story(bundle, story, 10, captions=story["captions"][1:10], seed=seed)
        drawn.append([(story["id"], i, images[i]) for i in range(1, 10)])
    picked = []
    for i in range(9):  # round-robin: frame 1 of every story, then frame 2, ...
        for row in drawn:
            if len(picked) < frames:
                picked.append(row[i])
    readings = judge.predict([im for _, _, im in picked])
    meta = {}
    for n, ((sid, f, im), rd) in enumerate(zip(picked, readings)):
        name = f"{n:03d}"
        im.resize((im.width * SCALE, im.height * SCALE), Image.NEAREST).save(out / "frames" / f"{name}.png")
        meta[name] = {"story": sid, "frame": f, "reading": rd}
    for s in range(0, len(picked), PER_SHEET):
        tiles = [Image.open(out / "frames" / f"{n:03d}.png") for n in range(s, min(s + PER_SHEET, len(picked)))]
        w, h = tiles[0].size
        sheet = Image.new("RGB", (5 * (w + 8), 2 * (h + 24)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for j, t in enumerate(tiles):
            x, y = (j % 5) * (w + 8), (j // 5) * (h + 24)
            sheet.paste(t, (x, y + 20))
            draw.text((x + 4, y + 4), f"{s + j:03d}", fill=(0, 0, 0))
        sheet.save(out / "sheets" / f"sheet_{s // PER_SHEET:02d}.png")
    (out / "frames.json").write_text(json.dumps({"model": str(model or DEFAULT_MODEL), "seed": seed, "frames": meta}))
    return {"frames": len(picked), "stories": stories, "out": str(out)}


def _slot(reading: Dict, slot: str) -> Optional[Dict]:
    name = reading["slots"].get(slot)
    if name is None:
        return None
    look = (reading.get("looks") or {}).get(slot) or {}
    return {
        "name": name,
        "colour": look.get("colour"),
        "accessory": look.get("accessory"),
        "pose": (reading.get("poses") or {}).get(slot),
    }


def score(out: Path, labels_path: Optional[Path] = None) -> Dict:
    """Per-attribute agreement of the judge's readings with the hand labels (Wilson 95% intervals)."""
    meta = json.loads((out / "frames.json").read_text())["frames"]
    labels = json.loads((labels_path or out / "labels.json").read_text())
    counts: Dict[str, List[int]] = {}

    def tally(key: str, ok: bool) -> None:
        c = counts.setdefault(key, [0, 0])
        c[0] += int(ok)
        c[1] += 1

    for name, lab in labels.items():
        rd = meta[name]["reading"]
        unsure = set(lab.get("unsure") or [])
        if "background" not in unsure:
            tally("background", rd["background"] == lab["background"])
        if "object" not in unsure:
            tally("object", rd.get("object") == lab.get("object"))
        slots = lab.get("slots") or {}
        if "cast" not in unsure:
            truth = sorted(s["name"] for s in slots.values() if s)
            tally("cast", sorted(rd["present"]) == truth)
        every = True
        for slot in SLOT_NAMES:
            want, got = slots.get(slot), _slot(rd, slot)
            if want is None:
                continue
            for key in ("colour", "accessory", "pose"):
                if key in unsure:
                    continue
                ok = got is not None and got[key] == want[key]  # the figure at this position, whoever it is
                tally(key, ok)
                every &= ok
        tally("frame_all", every and rd["background"] == lab["background"] and rd.get("object") == lab.get("object"))
    return {
        "labelled_frames": len(labels),
        "accuracy": {k: round(a / n, 4) for k, (a, n) in counts.items()},
        "ci95": {k: wilson(a, n) for k, (a, n) in counts.items()},
        "counts": {k: n for k, (_, n) in counts.items()},
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m evaluation.hand_check", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--model", default=None)
    m.add_argument("--seed", type=int, default=1000)
    m.add_argument("--frames", type=int, default=100)
    m.add_argument("--out", type=Path, default=HERE)
    s = sub.add_parser("score")
    s.add_argument("--out", type=Path, default=HERE)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = make(a.model, a.seed, a.frames, a.out) if a.cmd == "make" else score(a.out)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
