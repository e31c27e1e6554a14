"""Evaluate a SEED-Story model on held-out StoryStream-mini stories; prints one JSON object.

    python -m training.evaluate [--model DIR] --seed S --stories N [--random-init] [--no-ablation]

``--model`` defaults to the bundled tiny model (``models/seedstory-tiny``); ``--random-init`` evaluates a randomly
initialised model of the same size and tokenizer (the baseline). Held-out stories come from
``seedstory_core.data.mini`` with a seed the training data never used (seeds select disjoint stories).

Keys of the JSON object:

* ``parse_rate`` — fraction of generated sentences that parse as StoryStream-mini sentences (its grammar).
* ``coherence`` — image–text coherence: the attribute probe's reading of each generated frame vs the attributes the
  generated sentence states (characters mentioned are present, the scene matches).
* ``consistency`` — character consistency across the frames of a story (the probe's measure).
* ``gt_distance`` — visualization mode (ground-truth captions, the StoryGPT-V task): mean absolute pixel distance
  (0..1) between generated and ground-truth frames, and the probe's attribute agreement with the ground truth.
* ``ablation`` — the long-story ablation (paper §5.4, Table 8): the four cache policies, window = the training
  length, visualizing 3x the training length; metrics per segment (1x = frames 1-10, 2x = 11-20, 3x = 21-29).
* ``ablation_teacher_forced`` — the same with the ground-truth frames' features in the context instead of the
  agent's regressed ones: what each policy keeps, without the agent's compounding errors.
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "seedstory-tiny"
TRAIN_LENGTH = 10  # frames per training story (10-frame chunks, spec §5)
POLICIES = ("dense", "window", "sink", "multimodal_sink")


def load_model(model_dir: Optional[Path] = None, *, random_init: bool = False, seed: int = 0):
    """The bundle at ``model_dir`` (default: the bundled tiny model), or a random model of the same size/tokenizer."""
    from seedstory_core.bundle import SeedStoryBundle

    path = Path(model_dir) if model_dir else DEFAULT_MODEL
    bundle = SeedStoryBundle.load(path)
    if random_init:
        random = SeedStoryBundle.random_tiny(seed, tokenizer=bundle.tokenizer)
        # a random de-tokenizer cannot draw at all; keep the trained renderer so the baseline isolates the MLLM
        random.detokenizer = bundle.detokenizer
        random.uncond_features = random.compute_uncond_features()
        return random
    return bundle


def load_probe(model_dir: Optional[Path] = None, probe_dir: Optional[Path] = None):
    """The attribute probe that scores the frames: the same judge for every model compared.

    Order: ``probe_dir`` (must hold ``probe.safetensors``), else ``<model_dir>/probe``, else the bundled tiny model's
    probe, else one trained now (seed 7, 80 stories: the recipe's own, but float differences between thread counts
    make a re-trained probe differ slightly, so scores of two models are comparable only under one saved probe).

    Raises:
        FileNotFoundError: ``probe_dir`` is given but holds no ``probe.safetensors``.
    """
    from seedstory_core.data import attribute_probe as probe_mod

    path = probe_path(model_dir, probe_dir)
    return probe_mod.AttributeProbe.load(path) if path is not None else probe_mod.train_probe()


def probe_path(model_dir: Optional[Path] = None, probe_dir: Optional[Path] = None) -> Optional[Path]:
    """The saved probe folder :func:`load_probe` uses, or None when it has to train one (same errors)."""
    if probe_dir is not None:
        if not (Path(probe_dir) / "probe.safetensors").is_file():
            raise FileNotFoundError(f"--probe {probe_dir}: expected a folder with probe.safetensors (as exported by "
                                    "training.tiny_recipe into <bundle>/probe); none found there")
        return Path(probe_dir)
    for path in ((Path(model_dir) / "probe") if model_dir else None, DEFAULT_MODEL / "probe"):
        if path is not None and (path / "probe.safetensors").is_file():
            return path
    return None


#: classifier-free guidance of every rendered frame. The official default is 7.5 (spec §4.2); for the tiny model 3.0
#: renders the agent's regressed features better (measured on the earlier, stage-2-only tiny agent: held-out
#: coherence 0.468 at 3.0 vs 0.392 at 7.5), although 7.5 is better on ground-truth ViT features: guidance amplifies
#: the regression's errors too.
GUIDANCE_SCALE = 3.0


def _render(bundle, features: torch.Tensor, frame_index: int, steps: int, seed: int, guidance_scale: float = GUIDANCE_SCALE):
    img = bundle.detokenizer.generate(features, bundle.uncond_features, num_inference_steps=steps, guidance_scale=guidance_scale,
                                      seed=seed, frame_index=frame_index, output="pil")
    return img[0]


def _pixel_distance(a, b) -> float:
    x = np.asarray(a.convert("RGB").resize(b.size), dtype=np.float32) / 255.0
    y = np.asarray(b.convert("RGB"), dtype=np.float32) / 255.0
    return float(np.abs(x - y).mean())


@torch.no_grad()
def generate_story(bundle, story: dict, frames: int, *, policy=None, captions: Optional[Sequence[str]] = None,
                   diffusion_steps: int = 10, seed: int = 0, max_sentence_tokens: int = 40,
                   guidance_scale: float = GUIDANCE_SCALE, context_features: Optional[Sequence[torch.Tensor]] = None):
    """Continue a held-out story from its first frame and sentence; returns (sentences, PIL frames).

    ``captions`` (visualization mode): the sentences to draw for frames 1..frames-1.
    ``context_features`` (teacher forcing): per frame, (1, T, D) visual-tokenizer features (:func:`frame_features`)
    that replace the agent's regressed features of frame i-1 in the context before frame i is drawn
    (``StoryEngine.step(context_features=...)``), so every step sees a correct story so far; None = the agent's own
    regressed features stay in the context.
    """
    from seedstory_core.cache import CachePolicy
    from seedstory_core.data import mini
    from seedstory_core.story import DecodingSettings, StorySettings

    engine = bundle.engine()
    start_img = mini.render_story({**story, "captions": story["captions"][:1], "attributes": story["attributes"][:1]}, size=64)[0]
    settings = StorySettings(policy=policy or CachePolicy(kind="multimodal_sink", window_images=TRAIN_LENGTH))
    state = engine.start(story["captions"][0], image=start_img, settings=settings)
    decoding = DecodingSettings(max_sentence_tokens=max_sentence_tokens)
    sentences, images = [story["captions"][0]], [start_img]
    for i in range(1, frames):
        forced = context_features[i - 1] if context_features is not None and i > 1 else None
        if captions is not None:
            res = engine.step(state, text=captions[i - 1], mode="visualization", decoding=decoding, context_features=forced)
        else:
            res = engine.step(state, decoding=decoding, context_features=forced)
        state = res.state
        sentences.append(res.sentence)
        images.append(_render(bundle, res.features, i, diffusion_steps, seed, guidance_scale))
    return sentences, images


@torch.no_grad()
def frame_features(bundle, frames) -> List[torch.Tensor]:
    """(1, T, D) visual-tokenizer features of each PIL frame, for ``generate_story(context_features=...)``."""
    return [bundle.visual_tokenizer.encode_images(frame)[:1] for frame in frames]


def _story_metrics(probe, sentences: List[str], images, gt_attrs=None) -> Dict[str, float]:
    from seedstory_core.data import attribute_probe as probe_mod

    preds = probe.predict(images[1:])
    out = {
        "parse_rate": probe_mod.parse_rate(sentences[1:], context=sentences[:1]),
        "coherence": probe_mod.story_coherence(preds, sentences),
        "consistency": probe_mod.consistency(images[1:], preds, sentences),
    }
    if gt_attrs is not None:
        out["gt_attribute_agreement"] = float(np.mean([probe_mod.attribute_agreement(p, g) for p, g in zip(preds, gt_attrs)]))
    return out


def evaluate(model_dir=None, *, seed: int = 1000, stories: int = 10, random_init: bool = False,
             ablation: bool = True, ablation_stories: int = 2, diffusion_steps: int = 10,
             guidance_scale: float = GUIDANCE_SCALE, probe_dir: Optional[Path] = None) -> Dict:
    """Run the whole evaluation; returns the JSON-ready dict (see module docstring). ``probe_dir``: see
    :func:`load_probe`."""
    from seedstory_core.data import mini

    t0 = time.time()
    bundle = load_model(model_dir, random_init=random_init)
    probe = load_probe(model_dir, probe_dir)
    gen, vis = [], []
    for k in range(stories):
        story = mini.generate_story(seed, k, frames=30)
        sentences, images = generate_story(bundle, story, TRAIN_LENGTH, diffusion_steps=diffusion_steps, seed=seed,
                                           guidance_scale=guidance_scale)
        gen.append(_story_metrics(probe, sentences, images))
        gt = mini.render_story(story, size=64)
        v_sent, v_img = generate_story(bundle, story, TRAIN_LENGTH, captions=story["captions"][1:TRAIN_LENGTH],
                                       diffusion_steps=diffusion_steps, seed=seed, guidance_scale=guidance_scale)
        metrics = _story_metrics(probe, v_sent, v_img, gt_attrs=story["attributes"][1:TRAIN_LENGTH])
        metrics["pixel_distance"] = float(np.mean([_pixel_distance(a, b) for a, b in zip(v_img[1:], gt[1:TRAIN_LENGTH])]))
        vis.append(metrics)
    result = {
        "model": str(model_dir or DEFAULT_MODEL) + (" (random init)" if random_init else ""),
        "seed": seed,
        "stories": stories,
        "frames_per_story": TRAIN_LENGTH,
        "diffusion_steps": diffusion_steps,
        "guidance_scale": guidance_scale,
        "probe": str(probe_path(model_dir, probe_dir) or "trained at evaluation time (seed 7, 80 stories)"),
        "parse_rate": float(np.mean([m["parse_rate"] for m in gen])),
        "coherence": float(np.mean([m["coherence"] for m in gen])),
        "consistency": float(np.mean([m["consistency"] for m in gen])),
        "gt_distance": {
            "pixel_l1": float(np.mean([m["pixel_distance"] for m in vis])),
            "attribute_agreement": float(np.mean([m["gt_attribute_agreement"] for m in vis])),
            "visualization_coherence": float(np.mean([m["coherence"] for m in vis])),
        },
    }
    if ablation:
        for key, forced in (("ablation", False), ("ablation_teacher_forced", True)):
            result[key] = long_story_ablation(bundle=bundle, probe=probe, seed=seed, stories=ablation_stories,
                                              diffusion_steps=diffusion_steps, guidance_scale=guidance_scale,
                                              teacher_forced=forced)
    result["seconds"] = round(time.time() - t0, 1)
    return result


def long_story_ablation(model_dir=None, *, bundle=None, probe=None, policies: Sequence[str] = POLICIES,
                        length_multiples: Sequence[int] = (1, 2, 3), window_images: int = TRAIN_LENGTH,
                        seed: int = 1000, stories: int = 2, diffusion_steps: int = 10, device=None, dtype=None,
                        guidance_scale: float = GUIDANCE_SCALE, teacher_forced: bool = False) -> Dict:
    """Visualize ground-truth captions for ``max(length_multiples) x`` the training length under each cache policy.

    Returns ``{policy: {"1x": {pixel_l1, attribute_agreement}, "2x": ..., "3x": ...}}``, metrics over the frames
    of each segment ((m-1)*L, m*L] (L = 10: frames 1-10, 11-20, 21-29). Also called by ``python -m bench --model DIR``.
    ``teacher_forced``: the context holds the ground-truth frames' visual-tokenizer features instead of the agent's
    regressed ones (see :func:`generate_story`), which separates what the cache policy keeps from the agent's own
    compounding errors (a missed scene change is otherwise carried forward by every policy).
    """
    from seedstory_core.cache import CachePolicy
    from seedstory_core.data import mini
    from seedstory_core.data import attribute_probe as probe_mod

    bundle = bundle or load_model(model_dir)
    if isinstance(dtype, str):
        names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
                 "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"dtype must be one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if device is not None or dtype is not None:
        bundle.to(device, dtype)
    probe = probe or load_probe(model_dir)
    total = TRAIN_LENGTH * max(length_multiples)
    held_out = []  # (story, ground-truth frames, their features when teacher-forced), shared by every policy
    for k in range(stories):
        story = mini.generate_story(seed + 1, k, frames=total)
        gt = mini.render_story(story, size=64)
        held_out.append((story, gt, frame_features(bundle, gt) if teacher_forced else None))
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for policy in policies:
        seg: Dict[int, Dict[str, List[float]]] = {m: {"pixel_l1": [], "attribute_agreement": []} for m in length_multiples}
        for story, gt, gt_features in held_out:
            _, images = generate_story(bundle, story, total, policy=CachePolicy(kind=policy, window_images=window_images),
                                       captions=story["captions"][1:total], diffusion_steps=diffusion_steps, seed=seed,
                                       guidance_scale=guidance_scale, context_features=gt_features)
            preds = probe.predict(images[1:])
            for i in range(1, total):
                m = (i - 1) // TRAIN_LENGTH + 1
                if m in seg:
                    seg[m]["pixel_l1"].append(_pixel_distance(images[i], gt[i]))
                    seg[m]["attribute_agreement"].append(probe_mod.attribute_agreement(preds[i - 1], story["attributes"][i]))
        out[policy] = {f"{m}x": {k: float(np.mean(v)) for k, v in vals.items()} for m, vals in seg.items()}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model bundle folder (default: models/seedstory-tiny)")
    parser.add_argument("--seed", type=int, default=1000, help="held-out StoryStream-mini seed (training used 0)")
    parser.add_argument("--stories", type=int, default=10)
    parser.add_argument("--random-init", action="store_true", help="evaluate a random model of the same size (baseline)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the long-story cache-policy ablation")
    parser.add_argument("--ablation-stories", type=int, default=2)
    parser.add_argument("--diffusion-steps", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=GUIDANCE_SCALE,
                        help="classifier-free guidance of the rendered frames (default 3.0; official 7.5)")
    parser.add_argument("--probe", type=Path, default=None,
                        help="attribute-probe folder (default: the model's probe/, else the bundled model's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = evaluate(args.model, seed=args.seed, stories=args.stories, random_init=args.random_init,
                      ablation=not args.no_ablation, ablation_stories=args.ablation_stories,
                      diffusion_steps=args.diffusion_steps, guidance_scale=args.guidance_scale,
                      probe_dir=args.probe)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
