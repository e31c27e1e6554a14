"""The fixed judge of the StoryStream-mini evaluation: one frame classifier that ships with the evaluation.

Every model is scored by the same judge: ``evaluation/judge/judge.safetensors`` with its metadata
``evaluation/judge/judge.json`` (the sha256 of the weights, the seeds and the measured accuracy). A model's own
``probe/`` folder is never read. Rebuild it with::

    python -m evaluation.judge --out evaluation/judge

(deterministic on one thread; trained on real StoryStream-mini frames of :data:`JUDGE_TRAIN_SEED`, a seed that no
model training (seed 0), no earlier probe (seed 7) and no evaluation seed (1000 and up) uses; its accuracy is
measured on frames of :data:`JUDGE_CHECK_SEED` that are not pixel-identical to any frame it trained on).

The judge reads, from one (3, 64, 64) frame:

* ``background``: the place (one of ``mini.SCENES``);
* ``slots``: who stands at each canonical position (``left``/``center``/``right``; a character name or None) —
  the characters present are the named slots, and a character's slot reading is what the ``consistency`` metric
  compares across frames (does the figure at George's position look like the same character every time?);
* ``action``: the pose of the acting characters (one of ``mini.ACTIONS``; ``stand`` when nobody acts);
* ``object``: the object in the frame (one of ``mini.OBJECT_NAMES`` or None).

The scoring rules built on these readings are in :mod:`evaluation.metrics`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from seedstory_core.data import mini

HERE = Path(__file__).resolve().parent
WEIGHTS = "judge.safetensors"
META = "judge.json"
#: StoryStream-mini seed of the judge's training frames (disjoint from model training 0, the old probe's 7 and the
#: evaluation seeds >= 1000).
JUDGE_TRAIN_SEED = 500
#: seed of the frames its accuracy is measured on (after removing frames pixel-identical to training frames).
JUDGE_CHECK_SEED = 501
SLOT_NAMES = ("left", "center", "right")
NOBODY = "nobody"

__all__ = [
    "FrameJudge",
    "load_judge",
    "train_judge",
    "judge_accuracy",
    "frame_labels",
    "pixel_hash",
    "JUDGE_TRAIN_SEED",
    "JUDGE_CHECK_SEED",
    "SLOT_NAMES",
]


def to_batch(images, size: int = 64) -> torch.Tensor:
    """PIL images (any size, converted to RGB) or a float tensor (B, H, W, 3) in 0..1 -> (B, 3, size, size)
    float32 in 0..1 (bilinear resize when the size differs)."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        x = x.permute(0, 3, 1, 2)
    else:
        arrays = [np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0 for im in images]
        if not arrays:
            return torch.zeros(0, 3, size, size)
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def pixel_hash(image) -> str:
    """sha1 of a PIL frame's RGB bytes (size included): equal hashes = pixel-identical frames."""
    im = image.convert("RGB")
    return hashlib.sha1(repr(im.size).encode() + im.tobytes()).hexdigest()


class FrameJudge(nn.Module):
    """(B, 3, 64, 64) frames in 0..1 -> logits ``{"background": (B, 5), "slots": (B, 3, 6), "action": (B, 8),
    "object": (B, 7)}`` (slot classes: nobody + the 5 characters; object classes: none + the 6 objects).

    The last feature map is pooled to 2 rows x 3 columns, one column per canonical slot (x = 0.2 / 0.5 / 0.8 of the
    width), so each slot head sees its own column.
    """

    def __init__(self):
        super().__init__()
        self.scenes = list(mini.SCENES)
        self.characters = list(mini.CHARACTER_NAMES)
        self.actions = list(mini.ACTIONS)
        self.objects = list(mini.OBJECT_NAMES)
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 96, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((2, 3)),
        )
        feat = 96 * 2 * 3
        self.background = nn.Linear(feat, len(self.scenes))
        self.slot = nn.Linear(96 * 2 + feat, 1 + len(self.characters))  # own column + the whole frame
        self.action = nn.Linear(feat, len(self.actions))
        self.object = nn.Linear(feat, 1 + len(self.objects))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = self.body(x)  # (B, 96, 2, 3)
        flat = h.flatten(1)
        cols = [torch.cat([h[:, :, :, j].flatten(1), flat], dim=1) for j in range(3)]
        return {
            "background": self.background(flat),
            "slots": torch.stack([self.slot(c) for c in cols], dim=1),
            "action": self.action(flat),
            "object": self.object(flat),
        }

    @torch.no_grad()
    def predict(self, images) -> List[Dict]:
        """Per frame: ``{"background": str, "slots": {slot: name|None}, "present": [names, canonical order],
        "action": str, "object": str|None}``. ``images``: PIL frames or a (B, H, W, 3) float tensor in 0..1."""
        self.eval()
        x = to_batch(images)
        if len(x) == 0:
            return []
        out = self(x)
        bg, sl = out["background"].argmax(1), out["slots"].argmax(2)
        act, obj = out["action"].argmax(1), out["object"].argmax(1)
        res = []
        for i in range(x.shape[0]):
            slots = {
                s: (self.characters[int(sl[i, j]) - 1] if int(sl[i, j]) > 0 else None) for j, s in enumerate(SLOT_NAMES)
            }
            named = [n for n in slots.values() if n is not None]
            present = [c for c in self.characters if c in named]
            res.append(
                {
                    "background": self.scenes[int(bg[i])],
                    "slots": slots,
                    "present": present,
                    "action": self.actions[int(act[i])],
                    "object": self.objects[int(obj[i]) - 1] if int(obj[i]) > 0 else None,
                }
            )
        return res


def frame_labels(attrs: Dict) -> Dict[str, object]:
    """Class indices of one frame's ground-truth attributes (``mini`` frame dict) for the judge's heads."""
    positions = attrs.get("positions") or mini.slot_layout(attrs.get("present", []))
    by_slot = {s: n for n, s in positions.items()}
    objects = attrs.get("objects") or []
    return {
        "background": mini.SCENES.index(attrs["background"]),
        "slots": [0 if by_slot.get(s) is None else 1 + mini.CHARACTER_NAMES.index(by_slot[s]) for s in SLOT_NAMES],
        "action": mini.ACTIONS.index(attrs.get("action") or "stand")
        if attrs.get("actors")
        else mini.ACTIONS.index("stand"),
        "object": 0 if not objects else 1 + mini.OBJECT_NAMES.index(objects[0]["name"]),
    }


def _dataset(seed: int, stories: int, exclude: Optional[set] = None):
    """Frames of ``stories`` stories of ``seed`` (30 frames each): (x, labels dict of tensors, hashes); frames whose
    pixel hash is in ``exclude`` are left out."""
    images, labels, hashes = [], [], []
    for k in range(stories):
        story = mini.generate_story(seed, k)
        for img, attrs in zip(mini.render_story(story, size=64), story["attributes"]):
            h = pixel_hash(img)
            if exclude is not None and h in exclude:
                continue
            images.append(img)
            labels.append(frame_labels(attrs))
            hashes.append(h)
    y = {key: torch.tensor([lab[key] for lab in labels]) for key in ("background", "slots", "action", "object")}
    return to_batch(images), y, hashes


def _loss(out, y) -> torch.Tensor:
    return (
        F.cross_entropy(out["background"], y["background"])
        + F.cross_entropy(out["slots"].reshape(-1, out["slots"].shape[-1]), y["slots"].reshape(-1))
        + F.cross_entropy(out["action"], y["action"])
        + F.cross_entropy(out["object"], y["object"])
    )


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild corruption so the judge reads slightly blurred / noisy renderings the same as clean frames: half the
    batch 3x3 box-blurred, Gaussian noise of std 0..0.04 on all."""
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(x.shape[0], 1, 1, 1, generator=gen) < 0.5).float()
    x = pick * blur + (1 - pick) * x
    std = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 0.04
    return (x + std * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def train_judge(
    seed: int = JUDGE_TRAIN_SEED, stories: int = 120, epochs: int = 30, lr: float = 3e-3, batch: int = 64, log=None
):
    """Train the judge on real frames of ``stories`` stories of ``seed`` (deterministic for a fixed thread count).

    Returns (judge in eval mode, set of pixel hashes of its training frames)."""
    torch.manual_seed(seed)
    x, y, hashes = _dataset(seed, stories)
    judge = FrameJudge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    judge.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            loss = _loss(judge(_augment(x[idx], gen)), {k: v[idx] for k, v in y.items()})
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    return judge.eval(), set(hashes)


@torch.no_grad()
def judge_accuracy(
    judge: FrameJudge, seed: int = JUDGE_CHECK_SEED, stories: int = 40, exclude: Optional[set] = None
) -> Dict[str, float]:
    """Accuracy on real frames of ``seed`` not pixel-identical to any hash in ``exclude`` (the training frames).

    Keys: ``frames`` (scored), ``frames_dropped_identical``, ``background``, ``present_exact`` (the set of characters
    exactly right), ``slots_exact`` (all three positions right), ``action``, ``object``, ``scene_and_cast`` (background
    and character set both right: the image check of the headline score)."""
    _, _, all_hashes = _dataset(seed, stories)
    x, y, _ = _dataset(seed, stories, exclude=exclude)
    out = judge.eval()(x)
    bg = out["background"].argmax(1) == y["background"]
    slots = (out["slots"].argmax(2) == y["slots"]).all(1)
    pred_sets = (out["slots"].argmax(2).unsqueeze(2) == torch.arange(1, 6).view(1, 1, 5)).any(1)
    true_sets = (y["slots"].unsqueeze(2) == torch.arange(1, 6).view(1, 1, 5)).any(1)
    present = (pred_sets == true_sets).all(1)
    return {
        "seed": seed,
        "stories": stories,
        "frames": int(len(x)),
        "frames_dropped_identical": len(all_hashes) - int(len(x)),
        "background": float(bg.float().mean()),
        "present_exact": float(present.float().mean()),
        "slots_exact": float(slots.float().mean()),
        "action": float((out["action"].argmax(1) == y["action"]).float().mean()),
        "object": float((out["object"].argmax(1) == y["object"]).float().mean()),
        "scene_and_cast": float((bg & present).float().mean()),
    }


def sha256_of(path) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_judge(judge: FrameJudge, folder, meta: Dict) -> Path:
    """Write ``judge.safetensors`` and ``judge.json`` (``meta`` + the weights' sha256) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(folder / WEIGHTS))
    meta = dict(
        meta,
        sha256=sha256_of(folder / WEIGHTS),
        scenes=judge.scenes,
        characters=judge.characters,
        actions=judge.actions,
        objects=judge.objects,
    )
    (folder / META).write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load_judge(folder=HERE, verify: bool = True) -> FrameJudge:
    """The saved judge (default: the one shipped in ``evaluation/judge/``), in eval mode.

    Raises:
        FileNotFoundError: ``folder`` lacks ``judge.safetensors`` or ``judge.json`` (rebuild with
            ``python -m evaluation.judge --out evaluation/judge``).
        ValueError: the weights' sha256 differs from the one ``judge.json`` records (the judge was changed without
            its metadata; scores would not be comparable), or the label lists differ from ``mini``'s.
    """
    folder = Path(folder)
    weights, meta_path = folder / WEIGHTS, folder / META
    if not weights.is_file() or not meta_path.is_file():
        raise FileNotFoundError(
            f"judge folder {folder}: expected {WEIGHTS} and {META}; rebuild them with "
            "`python -m evaluation.judge --out evaluation/judge`"
        )
    meta = json.loads(meta_path.read_text())
    if verify:
        digest = sha256_of(weights)
        if digest != meta.get("sha256"):
            raise ValueError(
                f"{weights}: sha256 {digest} differs from the {meta.get('sha256')} recorded in {meta_path}; "
                "the judge must not change silently — rebuild both with `python -m evaluation.judge`"
            )
    judge = FrameJudge()
    for key in ("scenes", "characters", "actions", "objects"):
        if meta.get(key) != getattr(judge, key):
            raise ValueError(f"{meta_path}: {key} {meta.get(key)} differ from StoryStream-mini's {getattr(judge, key)}")
    judge.load_state_dict(load_file(str(weights)))
    judge.sha256 = meta.get("sha256")
    judge.meta = meta
    return judge.eval()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m evaluation.judge``: train, measure and save the judge. Returns 0, or 2 for a refused seed."""
    ap = argparse.ArgumentParser(
        prog="python -m evaluation.judge", description="Train the evaluation's fixed frame judge."
    )
    ap.add_argument(
        "--out", type=Path, default=HERE, help="folder for judge.safetensors + judge.json (default: evaluation/judge)"
    )
    ap.add_argument("--seed", type=int, default=JUDGE_TRAIN_SEED)
    ap.add_argument("--stories", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--check-seed", type=int, default=JUDGE_CHECK_SEED)
    ap.add_argument("--check-stories", type=int, default=40)
    a = ap.parse_args(argv)
    if a.seed == 0 or a.seed >= 1000 or a.check_seed == a.seed:
        print(
            f"refusing seed {a.seed} / check seed {a.check_seed}: the judge must not train on the model's training "
            "seed (0) or an evaluation seed (>= 1000), and must be checked on another seed",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1)
    t0 = time.time()
    judge, hashes = train_judge(a.seed, a.stories, a.epochs, log=lambda m: print(m, file=sys.stderr, flush=True))
    acc = judge_accuracy(judge, a.check_seed, a.check_stories, exclude=hashes)
    meta = {
        "command": "python -m evaluation.judge --out evaluation/judge"
        + ("" if a.seed == JUDGE_TRAIN_SEED else f" --seed {a.seed}"),
        "train_seed": a.seed,
        "train_stories": a.stories,
        "train_frames_unique": len(hashes),
        "epochs": a.epochs,
        "accuracy_unseen_frames": acc,
        "seconds": round(time.time() - t0, 1),
    }
    save_judge(judge, a.out, meta)
    print(json.dumps(json.loads((Path(a.out) / META).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
