"""Attribute probe for StoryStream-mini frames, and the story metrics built on it.

A small CNN trained on real StoryStream-mini frames predicts each frame's background (scene) and which named
characters are present (multi-label). The evaluation (``python -m training.evaluate``) uses it to score generated
frames:

* :func:`parse_rate` — fraction of sentences that parse as StoryStream-mini sentences (pronouns resolved from the
  story so far).
* :func:`story_coherence` — image–text coherence: per generated frame, the probe's reading vs what the generated
  sentence (with the story so far) states: the scene matches, and the characters the story says are present are
  detected (Jaccard). An unparsable sentence scores 0.
* :func:`consistency` — character consistency: for every character the story keeps on stage, the fraction of its
  frames in which the probe still recognises it (it keeps the look that identifies it: shape, colour, accessory).
* :func:`attribute_agreement` — probe reading vs ground-truth attributes (scene match and Jaccard of characters).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import mini


def _to_batch(images, size: int = 64) -> torch.Tensor:
    """PIL images or a float tensor [B,H,W,3] 0..1 -> (B, 3, size, size) float32 in 0..1."""
    if isinstance(images, torch.Tensor):
        x = images.float()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        x = x.permute(0, 3, 1, 2)
    else:
        arrays = [np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0 for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


class AttributeProbe(nn.Module):
    """(B, 3, 64, 64) frames in 0..1 -> background logits (B, n_scenes) and character logits (B, n_chars)."""

    def __init__(self, scenes: Sequence[str] = tuple(mini.SCENES), characters: Sequence[str] = tuple(mini.CHARACTER_NAMES)):
        super().__init__()
        self.scenes = list(scenes)
        self.characters = list(characters)
        self.body = nn.Sequential(
            nn.Conv2d(3, 24, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(24, 48, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(48, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.background = nn.Linear(256, len(self.scenes))
        self.present = nn.Linear(256, len(self.characters))

    def forward(self, x: torch.Tensor):
        h = self.body(x)
        return self.background(h), self.present(h)

    @torch.no_grad()
    def predict(self, images, threshold: float = 0.5) -> List[Dict]:
        """Per frame: ``{"background": str, "present": [names], "scores": {name: p}}``."""
        self.eval()
        bg, pr = self(_to_batch(images))
        probs = torch.sigmoid(pr)
        out = []
        for i in range(bg.shape[0]):
            scores = {c: float(probs[i, j]) for j, c in enumerate(self.characters)}
            out.append({"background": self.scenes[int(bg[i].argmax())],
                        "present": [c for c, p in scores.items() if p >= threshold], "scores": scores})
        return out

    def save(self, folder) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "probe.safetensors"))
        (folder / "probe.json").write_text(json.dumps({"scenes": self.scenes, "characters": self.characters}))
        return folder

    @classmethod
    def load(cls, folder) -> "AttributeProbe":
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "probe.json").read_text())
        probe = cls(meta["scenes"], meta["characters"])
        probe.load_state_dict(load_file(str(folder / "probe.safetensors")))
        return probe.eval()


def frames_and_labels(seed: int, stories: int, size: int = 64):
    """Rendered StoryStream-mini frames and their (background index, character multi-hot) labels."""
    images, bgs, present = [], [], []
    scenes, chars = list(mini.SCENES), list(mini.CHARACTER_NAMES)
    for k in range(stories):
        story = mini.generate_story(seed, k)
        for img, attrs in zip(mini.render_story(story, size=size), story["attributes"]):
            images.append(img)
            bgs.append(scenes.index(attrs["background"]))
            present.append([1.0 if c in attrs["present"] else 0.0 for c in chars])
    return _to_batch(images, size), torch.tensor(bgs), torch.tensor(present)


def train_probe(seed: int = 7, stories: int = 80, epochs: int = 8, lr: float = 3e-3, batch: int = 64) -> AttributeProbe:
    """Train the probe on real frames of ``stories`` StoryStream-mini stories of ``seed`` (deterministic)."""
    torch.manual_seed(seed)
    x, bg, pr = frames_and_labels(seed, stories)
    probe = AttributeProbe()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    probe.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            b_logits, p_logits = probe(x[idx])
            loss = F.cross_entropy(b_logits, bg[idx]) + F.binary_cross_entropy_with_logits(p_logits, pr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: AttributeProbe, seed: int, stories: int) -> Dict[str, float]:
    """Held-out accuracy on real frames: background accuracy and character-presence F1."""
    x, bg, pr = frames_and_labels(seed, stories)
    b_logits, p_logits = probe(x)
    pred = (torch.sigmoid(p_logits) >= 0.5).float()
    tp = (pred * pr).sum()
    f1 = float(2 * tp / (pred.sum() + pr.sum()).clamp(min=1))
    return {"background_accuracy": float((b_logits.argmax(1) == bg).float().mean()), "character_f1": f1, "frames": len(x)}


# ------------------------------------------------------------------------------------------------ metrics
def _states(sentences: Sequence[str]) -> List[Optional[Dict]]:
    """Story state after each sentence (None where the sentence does not parse)."""
    out = []
    for i, s in enumerate(sentences):
        attrs = mini.sentence_attributes(s, list(sentences[:i])) if s else None
        out.append(attrs if attrs and attrs.get("parsed") else None)
    return out


def parse_rate(sentences: Sequence[str], context: Sequence[str] = ()) -> float:
    """Fraction of ``sentences`` that parse, each read after ``context`` + the sentences before it."""
    if not sentences:
        return 0.0
    full = list(context) + list(sentences)
    states = _states(full)[len(context):]
    return float(np.mean([s is not None for s in states]))


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def attribute_agreement(pred: Dict, attrs: Dict) -> float:
    """Mean of scene match and Jaccard(present characters) between a probe reading and attributes."""
    return 0.5 * float(pred["background"] == attrs["background"]) + 0.5 * _jaccard(pred["present"], attrs["present"])


def story_coherence(preds: Sequence[Dict], sentences: Sequence[str]) -> float:
    """Coherence of frames 1.. with sentences 1.. (``sentences[0]`` is the opening line; see module docstring)."""
    states = _states(sentences)[1:]
    scores = [attribute_agreement(p, s) if s is not None else 0.0 for p, s in zip(preds, states)]
    return float(np.mean(scores)) if scores else 0.0


def consistency(images, preds: Sequence[Dict], sentences: Sequence[str]) -> float:
    """Character consistency across frames (see module docstring); 0 when no sentence parses."""
    states = _states(sentences)[1:]
    hits: Dict[str, List[float]] = {}
    for p, s in zip(preds, states):
        if s is None:
            continue
        for name in s["present"]:
            hits.setdefault(name, []).append(float(name in p["present"]))
    if not hits:
        return 0.0
    return float(np.mean([np.mean(v) for v in hits.values()]))
