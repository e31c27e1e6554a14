"""The fixed judge of the StoryStream-mini evaluation: one frame classifier that ships with the evaluation.

Every model is scored by the same judge: ``evaluation/judge/judge.safetensors`` with its metadata
``evaluation/judge/judge.json`` (the sha256 of the weights, the seeds, the measured per-attribute accuracy and the
training seconds). A model's own ``probe/`` folder is never read. Rebuild it with::

    python -m evaluation.judge --out evaluation/judge

(deterministic on one thread; trained on real StoryStream-mini frames of :data:`JUDGE_TRAIN_SEED` — stories of the
per-story-looks world, ``looks="story"``, plus a few of the fixed-looks world — a seed that no model training
(seed 0), no earlier probe (seed 7) and no evaluation seed (1000 and up) uses, with light blur and noise as
augmentation; its accuracy is measured per attribute on frames of :data:`JUDGE_CHECK_SEED`
(``looks="story"``) that are not pixel-identical to any frame it trained on). ``judge.json`` records the command,
the seeds, that accuracy, and the wall-clock and CPU seconds of the build (``seconds`` / ``cpu_seconds``: the wall
clock depends on what else the machine runs, the CPU time much less).

The judge reads, from one (3, 64, 64) frame:

* ``background``: the place (one of ``mini.SCENES``);
* ``slots``: who stands at each canonical position (``left``/``center``/``right``; a character name or None) —
  the characters present are the named slots. Characters are told apart by their body SHAPE (circle, triangle,
  square, diamond, tall rectangle): in the per-story-looks world colour and accessory say nothing about who it is;
* per occupied slot, what the picture shows of that character: ``looks`` (its body colour, one of
  ``mini.LOOK_COLOURS``, and its accessory, one of ``mini.ACCESSORIES``) and ``poses`` (its pose, one of
  ``mini.ACTIONS``: the story's action for the acting characters, ``stand`` for the others; a sleeping character's
  glasses are not drawn, so a sleeper with no visible accessory reads as ``glasses``);
* ``action``: one pose for the whole frame (the acting characters' pose, ``stand`` when nobody acts; the global
  head of earlier releases, kept for compatibility — the per-slot ``poses`` are the reliable reading);
* ``object``: the object in the frame (one of ``mini.OBJECT_NAMES`` or None).

Each slot's readings come from its own column of the feature map (a crop centred on the slot's x = 0.2 / 0.5 /
0.8 of the width, read by one shared slot network), so a pose or a colour is read where the character stands.

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
#: the training set of the shipped judge: stories 0..N-1 of JUDGE_TRAIN_SEED in each world (``looks``).
TRAIN_STORIES = 160
TRAIN_FIXED_STORIES = 30
EPOCHS = 30
CHECK_STORIES = 40
SLOT_NAMES = ("left", "center", "right")
NOBODY = "nobody"
#: label of a per-slot attribute (look, pose) at an empty slot: ignored by the loss and the accuracy
IGNORE = -1

__all__ = [
    "FrameJudge",
    "load_judge",
    "train_judge",
    "judge_accuracy",
    "frame_labels",
    "pixel_hash",
    "training_hashes",
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
    return x.contiguous()


def pixel_hash(image) -> str:
    """sha1 of a PIL frame's RGB bytes (size included): equal hashes = pixel-identical frames."""
    im = image.convert("RGB")
    return hashlib.sha1(repr(im.size).encode() + im.tobytes()).hexdigest()


#: columns of the 16 x 16 feature map each slot reads (centred on x = 0.2 / 0.5 / 0.8 of the width)
_SLOT_COLUMNS = ((0, 6), (5, 11), (10, 16))


class FrameJudge(nn.Module):
    """(B, 3, 64, 64) frames in 0..1 -> logits ``{"background": (B, 5), "slots": (B, 3, 6), "action": (B, 8),
    "object": (B, 7), "look_colour": (B, 3, 6), "look_accessory": (B, 3, 5), "pose": (B, 3, 8)}`` (slot classes:
    nobody + the 5 characters; object classes: none + the 6 objects; colours: ``mini.LOOK_COLOURS``; accessories:
    ``mini.ACCESSORIES``; poses: ``mini.ACTIONS``).

    A stem (4x4 stride-2 conv, 3x3 stride-2 conv, 3x3 conv, each with batch norm) maps the frame to a 16 x 16 feature
    map. The global branch (one more stride-2 conv, pooled to 2 rows x 3 columns, a hidden layer) reads the place.
    The slot branch crops 6 columns of the map around each slot and reads every crop with ONE shared network
    (stride-2 conv, hidden layer, plus a learned per-slot offset): who stands there, its colour, its accessory and
    its pose. The object and the global action are read from the global features and the three slots' features.
    """

    def __init__(self):
        super().__init__()
        self.scenes = list(mini.SCENES)
        self.characters = list(mini.CHARACTER_NAMES)
        self.actions = list(mini.ACTIONS)
        self.objects = list(mini.OBJECT_NAMES)
        self.colours = list(mini.LOOK_COLOURS)
        self.accessories = list(mini.ACCESSORIES)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 4, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        self.glob = nn.Sequential(
            nn.Conv2d(64, 96, 3, stride=2, padding=1),
            nn.BatchNorm2d(96),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d((2, 3)),
            nn.Flatten(),
            nn.Linear(96 * 2 * 3, 256),
            nn.ReLU(),
        )
        self.background = nn.Linear(256, len(self.scenes))
        # the global action and the object also see the three slots' features (an object is drawn by its holder)
        self.action = nn.Linear(256 * (1 + len(SLOT_NAMES)), len(self.actions))
        self.object = nn.Linear(256 * (1 + len(SLOT_NAMES)), 1 + len(self.objects))
        self.slot_body = nn.Sequential(
            nn.Conv2d(64, 96, 3, stride=2, padding=1),
            nn.BatchNorm2d(96),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(96 * 8 * 3, 256),
        )
        self.slot_offset = nn.Parameter(torch.zeros(len(SLOT_NAMES), 256))
        self.slot = nn.Linear(256, 1 + len(self.characters))
        self.look_colour = nn.Linear(256, len(self.colours))
        self.look_accessory = nn.Linear(256, len(self.accessories))
        self.pose = nn.Linear(256, len(self.actions))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = self.stem(x)  # (B, 64, 16, 16)
        g = self.glob(h)
        B = h.shape[0]
        crops = torch.cat([h[:, :, :, a:b] for a, b in _SLOT_COLUMNS], dim=0)  # (3B, 64, 16, 6)
        s = self.slot_body(crops).view(len(SLOT_NAMES), B, -1).transpose(0, 1)  # (B, 3, 256)
        s = F.relu(s + self.slot_offset)
        gs = torch.cat([g, s.flatten(1)], dim=1)
        return {
            "background": self.background(g),
            "slots": self.slot(s),
            "action": self.action(gs),
            "object": self.object(gs),
            "look_colour": self.look_colour(s),
            "look_accessory": self.look_accessory(s),
            "pose": self.pose(s),
        }

    @torch.no_grad()
    def predict(self, images, batch: int = 256) -> List[Dict]:
        """Per frame: ``{"background": str, "slots": {slot: name|None}, "present": [names, canonical order],
        "action": str, "object": str|None, "looks": {slot: {"colour": str, "accessory": str} | None},
        "poses": {slot: action | None}}`` (``looks``/``poses`` are None at a slot read as empty). ``images``: PIL
        frames or a (B, H, W, 3) float tensor in 0..1."""
        self.eval()
        x = to_batch(images)
        if len(x) == 0:
            return []
        outs = [self(x[i : i + batch]) for i in range(0, len(x), batch)]
        out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        bg, sl = out["background"].argmax(1), out["slots"].argmax(2)
        act, obj = out["action"].argmax(1), out["object"].argmax(1)
        col, acc, pose = out["look_colour"].argmax(2), out["look_accessory"].argmax(2), out["pose"].argmax(2)
        res = []
        for i in range(x.shape[0]):
            slots, looks, poses = {}, {}, {}
            for j, s in enumerate(SLOT_NAMES):
                who = int(sl[i, j])
                slots[s] = self.characters[who - 1] if who > 0 else None
                looks[s] = (
                    {"colour": self.colours[int(col[i, j])], "accessory": self.accessories[int(acc[i, j])]}
                    if who > 0
                    else None
                )
                poses[s] = self.actions[int(pose[i, j])] if who > 0 else None
            named = [n for n in slots.values() if n is not None]
            res.append(
                {
                    "background": self.scenes[int(bg[i])],
                    "slots": slots,
                    "present": [c for c in self.characters if c in named],
                    "action": self.actions[int(act[i])],
                    "object": self.objects[int(obj[i]) - 1] if int(obj[i]) > 0 else None,
                    "looks": looks,
                    "poses": poses,
                }
            )
        return res


def frame_labels(attrs: Dict) -> Dict[str, object]:
    """Class indices of one frame's ground-truth attributes (``mini`` frame dict) for the judge's heads.

    Returns ``{"background": int, "slots": [3 ints, 0 = nobody], "action": int, "object": int (0 = none),
    "look_colour": [3], "look_accessory": [3], "pose": [3]}``; the per-slot look and pose labels are
    :data:`IGNORE` (-1) at an empty slot. A character without an entry in ``attrs["looks"]`` has its fixed look
    (as ``mini.render_frame`` draws it); only ``actors`` take the action's pose, the others ``stand``."""
    positions = attrs.get("positions") or mini.slot_layout(attrs.get("present", []))
    by_slot = {s: n for n, s in positions.items()}
    objects = attrs.get("objects") or []
    actors = set(attrs.get("actors") or [])
    action = attrs.get("action") or "stand"
    looks = attrs.get("looks") or {}
    colours, accessories = list(mini.LOOK_COLOURS), list(mini.ACCESSORIES)
    col, acc, pose = [], [], []
    for s in SLOT_NAMES:
        name = by_slot.get(s)
        if name is None:
            col.append(IGNORE)
            acc.append(IGNORE)
            pose.append(IGNORE)
            continue
        look = looks.get(name) or mini.FIXED_LOOKS[name]
        col.append(colours.index(look["colour"]))
        acc.append(accessories.index(look["accessory"]))
        pose.append(mini.ACTIONS.index(action if name in actors else "stand"))
    return {
        "background": mini.SCENES.index(attrs["background"]),
        "slots": [0 if by_slot.get(s) is None else 1 + mini.CHARACTER_NAMES.index(by_slot[s]) for s in SLOT_NAMES],
        "action": mini.ACTIONS.index(action) if actors else mini.ACTIONS.index("stand"),
        "object": 0 if not objects else 1 + mini.OBJECT_NAMES.index(objects[0]["name"]),
        "look_colour": col,
        "look_accessory": acc,
        "pose": pose,
    }


_LABEL_KEYS = ("background", "slots", "action", "object", "look_colour", "look_accessory", "pose")


def _frames(seed: int, stories: int, looks: str = "story"):
    """(PIL frame, attributes) of stories 0..stories-1 of ``seed`` (30 frames each) in the ``looks`` world."""
    for k in range(stories):
        story = mini.generate_story(seed, k, looks=looks)
        yield from zip(mini.render_story(story, size=64), story["attributes"])


def training_hashes(
    seed: int = JUDGE_TRAIN_SEED, stories: int = TRAIN_STORIES, fixed_stories: int = TRAIN_FIXED_STORIES
):
    """Pixel hashes of every training frame of a judge trained with these arguments (see :func:`train_judge`)."""
    worlds = (("story", stories), ("fixed", fixed_stories))
    return {pixel_hash(img) for looks, n in worlds for img, _ in _frames(seed, n, looks)}


def _dataset(seed: int, stories: int, exclude: Optional[set] = None, looks: str = "story", fixed_stories: int = 0):
    """Frames of ``stories`` stories of ``seed`` in the ``looks`` world, plus ``fixed_stories`` stories of the
    fixed-looks world (30 frames each): (x, labels dict of tensors, hashes); frames whose pixel hash is in
    ``exclude`` are left out."""
    images, labels, hashes = [], [], []
    for world, n in ((looks, stories), ("fixed", fixed_stories)):
        for img, attrs in _frames(seed, n, world):
            h = pixel_hash(img)
            if exclude is not None and h in exclude:
                continue
            images.append(img)
            labels.append(frame_labels(attrs))
            hashes.append(h)
    y = {key: torch.tensor([lab[key] for lab in labels], dtype=torch.long) for key in _LABEL_KEYS}
    return to_batch(images), y, hashes


def _ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)


def _loss(out, y) -> torch.Tensor:
    return sum(_ce(out[k], y[k]) for k in _LABEL_KEYS)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild corruption so the judge reads slightly blurred / noisy renderings the same as clean frames: half the
    batch 3x3 box-blurred, Gaussian noise of std 0..0.04 on all."""
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(x.shape[0], 1, 1, 1, generator=gen) < 0.5).float()
    x = pick * blur + (1 - pick) * x
    std = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 0.04
    return (x + std * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def train_judge(
    seed: int = JUDGE_TRAIN_SEED,
    stories: int = TRAIN_STORIES,
    epochs: int = EPOCHS,
    lr: float = 3e-3,
    batch: int = 64,
    log=None,
    fixed_stories: int = TRAIN_FIXED_STORIES,
):
    """Train the judge on real frames of ``stories`` stories of ``seed`` in the per-story-looks world plus
    ``fixed_stories`` stories of the fixed-looks world (deterministic for a fixed thread count).

    Returns (judge in eval mode, set of pixel hashes of its training frames)."""
    torch.manual_seed(seed)
    x, y, hashes = _dataset(seed, stories, looks="story", fixed_stories=fixed_stories)
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
    judge: FrameJudge, seed: int = JUDGE_CHECK_SEED, stories: int = CHECK_STORIES, exclude: Optional[set] = None
) -> Dict[str, float]:
    """Accuracy per attribute on real frames of ``seed`` (per-story-looks world) not pixel-identical to any hash in
    ``exclude`` (the training frames).

    Keys: ``seed``, ``stories``, ``frames`` (scored), ``frames_dropped_identical``, ``occupied_slots`` (the
    characters on stage, summed over the frames), and the accuracies: ``background``; ``present_exact`` (the set of
    characters exactly right); ``slots_exact`` (all three positions right); ``object``; ``action`` (the global
    head); per occupied slot (the slot's true character, whatever the slot head read): ``pose``, ``look_colour``,
    ``look_accessory``; ``scene_and_cast`` (background and character set both right); ``shown_exact`` (background,
    every position, every occupied slot's colour, accessory and pose, and the object all right: everything a frame
    has to show)."""
    x, y, hashes = _dataset(seed, stories, exclude=exclude)
    n_all = stories * 30
    outs = [judge.eval()(x[i : i + 256]) for i in range(0, len(x), 256)]
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    bg = out["background"].argmax(1) == y["background"]
    slots = (out["slots"].argmax(2) == y["slots"]).all(1)
    pred_sets = (out["slots"].argmax(2).unsqueeze(2) == torch.arange(1, 6).view(1, 1, 5)).any(1)
    true_sets = (y["slots"].unsqueeze(2) == torch.arange(1, 6).view(1, 1, 5)).any(1)
    present = (pred_sets == true_sets).all(1)
    obj = out["object"].argmax(1) == y["object"]
    occupied = y["slots"] > 0
    per_slot = {}
    frame_ok = bg & slots & obj
    for key in ("pose", "look_colour", "look_accessory"):
        right = out[key].argmax(2) == y[key]
        per_slot[key] = float(right[occupied].float().mean())
        frame_ok &= (right | ~occupied).all(1)
    return {
        "seed": seed,
        "stories": stories,
        "frames": int(len(x)),
        "frames_dropped_identical": n_all - int(len(x)),
        "occupied_slots": int(occupied.sum()),
        "background": float(bg.float().mean()),
        "present_exact": float(present.float().mean()),
        "slots_exact": float(slots.float().mean()),
        "object": float(obj.float().mean()),
        "action": float((out["action"].argmax(1) == y["action"]).float().mean()),
        "pose": per_slot["pose"],
        "look_colour": per_slot["look_colour"],
        "look_accessory": per_slot["look_accessory"],
        "scene_and_cast": float((bg & present).float().mean()),
        "shown_exact": float(frame_ok.float().mean()),
    }


def sha256_of(path) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_LABEL_LISTS = ("scenes", "characters", "actions", "objects", "colours", "accessories")


def save_judge(judge: FrameJudge, folder, meta: Dict) -> Path:
    """Write ``judge.safetensors`` and ``judge.json`` (``meta`` + the weights' sha256 + the label lists) into
    ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(folder / WEIGHTS))
    meta = dict(meta, sha256=sha256_of(folder / WEIGHTS), **{key: getattr(judge, key) for key in _LABEL_LISTS})
    (folder / META).write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def load_judge(folder=HERE, verify: bool = True) -> FrameJudge:
    """The saved judge (default: the one shipped in ``evaluation/judge/``), in eval mode.

    Raises:
        FileNotFoundError: ``folder`` lacks ``judge.safetensors`` or ``judge.json`` (rebuild with
            ``python -m evaluation.judge --out evaluation/judge``).
        ValueError: the weights' sha256 differs from the one ``judge.json`` records (the judge was changed without
            its metadata; scores would not be comparable), or the label lists (scenes, characters, actions,
            objects, colours, accessories) differ from ``mini``'s.
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
    for key in _LABEL_LISTS:
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
    ap.add_argument("--stories", type=int, default=TRAIN_STORIES, help="stories of the per-story-looks world")
    ap.add_argument("--fixed-stories", type=int, default=TRAIN_FIXED_STORIES, help="stories of the fixed-looks world")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("--check-seed", type=int, default=JUDGE_CHECK_SEED)
    ap.add_argument("--check-stories", type=int, default=CHECK_STORIES)
    a = ap.parse_args(argv)
    if a.seed == 0 or a.seed >= 1000 or a.check_seed == a.seed or a.check_seed == 0 or a.check_seed >= 1000:
        print(
            f"refusing seed {a.seed} / check seed {a.check_seed}: the judge must not train on the model's training "
            "seed (0) or an evaluation seed (>= 1000), and must be checked on another such seed",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1)
    t0, c0 = time.time(), time.process_time()
    log = lambda m: print(f"[{time.time() - t0:6.0f} s] {m}", file=sys.stderr, flush=True)  # noqa: E731
    judge, hashes = train_judge(a.seed, a.stories, a.epochs, log=log, fixed_stories=a.fixed_stories)
    train_seconds, train_cpu_seconds = round(time.time() - t0, 1), round(time.process_time() - c0, 1)
    acc = judge_accuracy(judge, a.check_seed, a.check_stories, exclude=hashes)
    log(f"accuracy {acc}")
    defaults = {
        "--seed": (a.seed, JUDGE_TRAIN_SEED),
        "--stories": (a.stories, TRAIN_STORIES),
        "--fixed-stories": (a.fixed_stories, TRAIN_FIXED_STORIES),
        "--epochs": (a.epochs, EPOCHS),
        "--check-seed": (a.check_seed, JUDGE_CHECK_SEED),
        "--check-stories": (a.check_stories, CHECK_STORIES),
    }
    meta = {
        "command": "python -m evaluation.judge --out evaluation/judge"
        + "".join(f" {flag} {v}" for flag, (v, d) in defaults.items() if v != d),
        "train_seed": a.seed,
        "train_looks": {"story": a.stories, "fixed": a.fixed_stories},
        "train_stories": a.stories + a.fixed_stories,
        "train_frames": 30 * (a.stories + a.fixed_stories),
        "train_frames_unique": len(hashes),
        "epochs": a.epochs,
        "threads": torch.get_num_threads(),
        "accuracy_unseen_frames": acc,
        "train_seconds": train_seconds,
        "train_cpu_seconds": train_cpu_seconds,
        "seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }
    save_judge(judge, a.out, meta)
    print(json.dumps(json.loads((Path(a.out) / META).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
