"""Where the drawing pipeline loses what a frame shows: the fixed judge's reading at each stage (docs/evaluation.md,
"Where the renderer loses the picture").

    python -m evaluation.renderer_budget --seed 1000 --stories 20 [--model DIR] [--probe-seed 2000]
        [--probe-stories 100] [--diffusion-steps 10] [--guidance-scale 3.0] [--out FILE] [--versus OTHER.json]

A model frame reaches the judge through three lossy steps: the visual tokenizer (frame -> (64, D) features), the
agent's regression of those features, and the de-tokenizer (features -> resampler -> UNet -> VAE decoder -> pixels).
``ground_truth_detok`` (:mod:`evaluation.baselines`) measures the first and the last together; this measures each
apart, on held-out StoryStream-mini frames (per-story looks) of ``--seed``, per judge attribute:

* ``frame`` -- the true frame (the judge's own accuracy: the ceiling of every row);
* ``vae`` -- the true frame through the de-tokenizer's VAE only (encode, posterior mode, decode): what the latent
  space keeps, whatever the UNet does;
* ``vit_probe`` -- what the visual-tokenizer features carry, read by a small probe (per-token layer norm and
  projection, then an MLP over the flattened tokens, the judge's heads) trained on the features of ``--probe-seed``
  frames (a seed disjoint from ``--seed``; 40 epochs, AdamW). Not a picture: an estimate of the information a
  perfect de-tokenizer could draw from the features (a stronger reader could find more);
* ``detok`` -- the true frame's visual-tokenizer features through the whole de-tokenizer, as the evaluation draws
  (``--diffusion-steps``, ``--guidance-scale``, noise of (0, frame)): the ``ground_truth_detok`` picture.

Per stage and attribute: the rate over frames (``background``; ``slots_exact``: all three positions right;
``present_exact``: the set of characters right; ``object``) or over occupied slots (``look_colour``,
``look_accessory``, ``pose``: read at the true character's slot), each with a 95% bootstrap interval over stories
(:func:`evaluation.metrics.bootstrap_ci`). Writes JSON (``--out``; it keeps each story's value too) and prints a
table. ``--versus OTHER.json`` (a result of the same seed and stories, e.g. another de-tokenizer's) also prints the
paired difference, this run minus OTHER, per stage and attribute, with a 95% bootstrap interval over the stories
(:func:`paired_differences`): the same frames drawn twice, so far tighter than comparing two intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evaluation.judge import FrameJudge, frame_labels, load_judge, to_batch
from evaluation.metrics import bootstrap_ci
from evaluation.stories import GUIDANCE_SCALE, load_model
from seedstory_core.data import mini
from seedstory_core.data.samples import sd_target

STAGES = ("frame", "vae", "vit_probe", "detok")
#: per-frame attributes, then per-occupied-slot attributes
FRAME_KEYS = ("background", "slots_exact", "present_exact", "object")
SLOT_KEYS = ("look_colour", "look_accessory", "pose")
_HEADS = {
    "background": (len(mini.SCENES),),
    "object": (1 + len(mini.OBJECT_NAMES),),
    "slots": (3, 1 + len(mini.CHARACTER_NAMES)),
    "look_colour": (3, len(mini.LOOK_COLOURS)),
    "look_accessory": (3, len(mini.ACCESSORIES)),
    "pose": (3, len(mini.ACTIONS)),
}

__all__ = [
    "STAGES",
    "stage_frames",
    "correctness",
    "FeatureProbe",
    "train_probe",
    "renderer_budget",
    "check_same_frames",
    "paired_differences",
    "main",
]


def stage_frames(seed: int, stories: int):
    """(PIL frames, attribute dicts, story index per frame) of stories 0..stories-1 of ``seed`` (30 frames each,
    per-story looks, 64 x 64)."""
    frames, attrs, story_of = [], [], []
    for k in range(stories):
        story = mini.generate_story(seed, k)
        images = mini.render_story(story)
        frames += images
        attrs += story["attributes"]
        story_of += [k] * len(images)
    return frames, attrs, story_of


def _labels(attrs: Sequence[Dict]) -> Dict[str, torch.Tensor]:
    labels = [frame_labels(a) for a in attrs]
    return {key: torch.tensor([lab[key] for lab in labels], dtype=torch.long) for key in _HEADS}


def correctness(logits: Dict[str, torch.Tensor], y: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Per frame, whether each attribute was read right (judge-shaped ``logits`` against labels ``y``).

    Returns {key: (B,) float array} for :data:`FRAME_KEYS` (1/0) and, for :data:`SLOT_KEYS`, (B,) counts of right
    occupied slots plus ``occupied`` (B,) (the slots a character stands in)."""
    slots = logits["slots"].argmax(2)
    names = torch.arange(1, 1 + len(mini.CHARACTER_NAMES)).view(1, 1, -1)
    pred_set = (slots.unsqueeze(2) == names).any(1)
    true_set = (y["slots"].unsqueeze(2) == names).any(1)
    occupied = y["slots"] > 0
    out = {
        "background": logits["background"].argmax(1) == y["background"],
        "slots_exact": (slots == y["slots"]).all(1),
        "present_exact": (pred_set == true_set).all(1),
        "object": logits["object"].argmax(1) == y["object"],
    }
    res = {k: v.float().numpy() for k, v in out.items()}
    for key in SLOT_KEYS:
        res[key] = ((logits[key].argmax(2) == y[key]) & occupied).sum(1).float().numpy()
    res["occupied"] = occupied.sum(1).float().numpy()
    return res


def summarise(right: Dict[str, np.ndarray], story_of: Sequence[int], seed: int) -> Dict[str, Dict]:
    """Per attribute: ``rate`` (over frames, or over occupied slots), ``ci95`` (bootstrap over stories) and
    ``per_story`` (one value per story, in story order; None for a story with no occupied slot)."""
    story_of = np.asarray(story_of)
    stories = sorted(set(story_of.tolist()))
    out = {}
    for key in FRAME_KEYS + SLOT_KEYS:
        if key in SLOT_KEYS:
            num = np.array([right[key][story_of == s].sum() for s in stories])
            den = np.array([right["occupied"][story_of == s].sum() for s in stories])
            keep = den > 0
            per_story, rate = num[keep] / den[keep], float(num.sum() / max(den.sum(), 1))
            listed = [round(float(n / d), 6) if d > 0 else None for n, d in zip(num, den)]
        else:
            per_story = np.array([right[key][story_of == s].mean() for s in stories])
            rate = float(right[key].mean())
            listed = [round(float(v), 6) for v in per_story]
        lo, hi = bootstrap_ci(per_story, seed=seed)
        out[key] = {"rate": round(rate, 4), "ci95": [round(lo, 4), round(hi, 4)], "per_story": listed}
    return out


def check_same_frames(result: Dict, other: Dict) -> None:
    """Raise ValueError unless ``result`` and ``other`` (results, or any dicts with ``seed`` and ``stories``) read the
    same frames: the same seed and story count, so their per-story values pair up."""
    for key in ("seed", "stories"):
        if result.get(key) != other.get(key):
            raise ValueError(
                f"paired differences need the same {key}: {result.get(key)!r} vs {other.get(key)!r}; "
                f"re-run one of them with --{key} {other.get(key)}"
            )


def paired_differences(result: Dict, other: Dict, seed: int = 0) -> Dict[str, Dict[str, Dict]]:
    """``result`` minus ``other`` (two :func:`renderer_budget` results of the same seed and stories) per stage both
    have and attribute: ``{"mean": mean over stories of the per-story difference, "ci95": bootstrap interval, "n":
    stories with a value in both}``.

    Raises ValueError when the seeds or story counts differ, when either lacks per-story values (results written
    before they were kept), or when the two share no stage."""
    check_same_frames(result, other)
    shared = [s for s in result["stages"] if s in other["stages"]]
    if not shared:
        raise ValueError(f"no stage in common: {list(result['stages'])} vs {list(other['stages'])}")
    out: Dict[str, Dict[str, Dict]] = {}
    for stage in shared:
        out[stage] = {}
        for key in FRAME_KEYS + SLOT_KEYS:
            a, b = result["stages"][stage][key].get("per_story"), other["stages"][stage][key].get("per_story")
            if a is None or b is None:
                raise ValueError(
                    f"{stage}/{key}: a result without per-story values (written before they were kept); re-run it"
                )
            diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
            lo, hi = bootstrap_ci(diffs, seed=seed)
            out[stage][key] = {
                "mean": round(float(np.mean(diffs)), 4),
                "ci95": [round(lo, 4), round(hi, 4)],
                "n": len(diffs),
            }
    return out


class FeatureProbe(nn.Module):
    """(B, T, D) visual-tokenizer features -> judge-shaped logits (:data:`_HEADS`): per-token LayerNorm and a
    projection to 64, flattened over the T tokens (positions kept), a 512-unit hidden layer, one linear head per
    attribute."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 64), nn.GELU(), nn.Flatten(), nn.Linear(64 * tokens, 512), nn.GELU()
        )
        self.heads = nn.ModuleDict({k: nn.Linear(512, int(np.prod(s))) for k, s in _HEADS.items()})

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        h = self.body(x)
        return {k: head(h).view(x.shape[0], *_HEADS[k]) for k, head in self.heads.items()}


def train_probe(features: torch.Tensor, y: Dict[str, torch.Tensor], *, epochs: int = 40, seed: int = 0) -> FeatureProbe:
    """A :class:`FeatureProbe` trained on ``features`` (N, T, D) float32 and labels ``y`` (cross-entropy summed over
    the heads, empty slots' looks/poses ignored; AdamW lr 1e-3, weight decay 0.05, batch 64)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = FeatureProbe(features.shape[1], features.shape[2])
    opt = torch.optim.AdamW(probe.parameters(), lr=1e-3, weight_decay=0.05)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=gen)
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            out = probe(features[idx])
            loss = sum(
                F.cross_entropy(o.reshape(-1, o.shape[-1]), y[k][idx].reshape(-1), ignore_index=-1)
                for k, o in out.items()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval()


@torch.no_grad()
def _encode(bundle, frames, batch: int = 64) -> torch.Tensor:
    return torch.cat(
        [bundle.visual_tokenizer.encode_images(frames[i : i + batch]) for i in range(0, len(frames), batch)]
    )


@torch.no_grad()
def _vae_round_trip(detok, frames) -> torch.Tensor:
    size = detok.config.default_size
    x = torch.stack([sd_target(f, size)[0] for f in frames]).to(detok.vae.dtype)
    latents = detok.vae.encode(x).latent_dist.mode()
    return detok.vae.decode(latents).sample.float().clamp(-1, 1).add(1).div(2).permute(0, 2, 3, 1)


@torch.no_grad()
def _detokenize(bundle, features, steps: int, guidance: float, batch: int = 16) -> torch.Tensor:
    out = []
    for i in range(0, len(features), batch):
        out.append(
            bundle.detokenizer.generate(
                features[i : i + batch],
                bundle.uncond_features,
                num_inference_steps=steps,
                guidance_scale=guidance,
                seed=0,
                frame_index=list(range(i, i + len(features[i : i + batch]))),
                output="tensor",
            )
        )
    return torch.cat(out)


def renderer_budget(
    bundle,
    judge: FrameJudge,
    *,
    seed: int = 1000,
    stories: int = 20,
    probe_seed: int = 2000,
    probe_stories: int = 100,
    diffusion_steps: int = 10,
    guidance_scale: float = GUIDANCE_SCALE,
    stages: Sequence[str] = STAGES,
    log=None,
) -> Dict:
    """The judge's reading of ``stories`` held-out stories of ``seed`` at each of ``stages`` (module docstring).

    Returns {"seed", "stories", "frames", "stages": {stage: {attribute: {"rate", "ci95"}}}, "seconds": {stage: s},
    "settings": {...}}. Raises ValueError for an unknown stage or ``probe_seed == seed``."""
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if "vit_probe" in stages and probe_seed == seed:
        raise ValueError(f"probe_seed must differ from seed ({seed}): the probe is scored on frames it never saw")
    frames, attrs, story_of = stage_frames(seed, stories)
    y = _labels(attrs)
    result = {"seed": seed, "stories": stories, "frames": len(frames), "stages": {}, "seconds": {}}
    result["settings"] = {
        "diffusion_steps": diffusion_steps,
        "guidance_scale": guidance_scale,
        "probe_seed": probe_seed,
        "probe_stories": probe_stories,
    }
    features = None
    for stage in stages:
        t0 = time.time()
        if stage == "frame":
            logits = judge.eval()(to_batch(frames))
        elif stage == "vae":
            logits = judge.eval()(to_batch(_vae_round_trip(bundle.detokenizer, frames)))
        elif stage == "vit_probe":
            p_frames, p_attrs, _ = stage_frames(probe_seed, probe_stories)
            probe = train_probe(_encode(bundle, p_frames).float(), _labels(p_attrs), seed=seed)
            features = _encode(bundle, frames) if features is None else features
            with torch.no_grad():
                logits = probe(features.float())
        else:  # detok
            features = _encode(bundle, frames) if features is None else features
            logits = judge.eval()(to_batch(_detokenize(bundle, features, diffusion_steps, guidance_scale)))
        with torch.no_grad():
            result["stages"][stage] = summarise(correctness(logits, y), story_of, seed)
        result["seconds"][stage] = round(time.time() - t0, 1)
        if log:
            log(f"{stage}: {result['seconds'][stage]} s")
    return result


def table(result: Dict) -> str:
    """A markdown table of :func:`renderer_budget`'s result (rate and interval per stage and attribute)."""
    keys = FRAME_KEYS + SLOT_KEYS
    lines = ["| stage | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for stage, row in result["stages"].items():
        cells = [f"{row[k]['rate']:.2f} [{row[k]['ci95'][0]:.2f}, {row[k]['ci95'][1]:.2f}]" for k in keys]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_table(diffs: Dict[str, Dict[str, Dict]]) -> str:
    """A markdown table of :func:`paired_differences` (mean difference and interval per stage and attribute)."""
    keys = FRAME_KEYS + SLOT_KEYS
    lines = ["| stage (this - versus) | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for stage, row in diffs.items():
        cells = [f"{row[k]['mean']:+.3f} [{row[k]['ci95'][0]:+.3f}, {row[k]['ci95'][1]:+.3f}]" for k in keys]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model bundle folder (default: the bundled tiny model)")
    p.add_argument("--seed", type=int, default=1000, help="held-out StoryStream-mini seed to read (default 1000)")
    p.add_argument("--stories", type=int, default=20)
    p.add_argument("--probe-seed", type=int, default=2000, help="frames the feature probe is trained on")
    p.add_argument("--probe-stories", type=int, default=100)
    p.add_argument("--diffusion-steps", type=int, default=10)
    p.add_argument("--guidance-scale", type=float, default=GUIDANCE_SCALE)
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {','.join(STAGES)}")
    p.add_argument("--out", default=None, help="write the result JSON here")
    p.add_argument(
        "--versus",
        default=None,
        help="a result JSON of the same --seed and --stories: also print the paired difference (this - it)",
    )
    args = p.parse_args(argv)
    versus = None
    if args.versus:
        try:
            versus = json.loads(Path(args.versus).read_text())
        except (OSError, ValueError) as e:
            p.error(f"--versus {args.versus}: not a readable result JSON ({e})")
        try:  # refused before any drawing
            check_same_frames({"seed": args.seed, "stories": args.stories}, versus)
        except ValueError as e:
            p.error(f"--versus {args.versus}: {e}; pass the same")
    bundle = load_model(Path(args.model) if args.model else None)
    result = renderer_budget(
        bundle,
        load_judge(),
        seed=args.seed,
        stories=args.stories,
        probe_seed=args.probe_seed,
        probe_stories=args.probe_stories,
        diffusion_steps=args.diffusion_steps,
        guidance_scale=args.guidance_scale,
        stages=[s.strip() for s in args.stages.split(",") if s.strip()],
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    result["model"] = str(args.model or "models/seedstory-tiny")
    diffs = paired_differences(result, versus, seed=args.seed) if versus is not None else None
    if diffs is not None:
        result["versus"] = {"file": str(args.versus), "model": versus.get("model"), "paired": diffs}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    if diffs is not None:
        print(f"\npaired difference, this - {args.versus} (mean [95% bootstrap interval over stories]):")
        print(paired_table(diffs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
