"""The model under test and its held-out stories: what the evaluation and the decoding measurement share.

:func:`load_model` loads the bundle evaluated (or a random model of the same size); :func:`generate_story` continues
a held-out StoryStream-mini story from its real first frame and sentence, in generation mode or in visualization mode
(the ground-truth sentences given), optionally teacher-forced (:func:`frame_features`), optionally with the story's
cast sheet pinned in the context (``cast=True``, :func:`cast_sheet`) and the consistency retry on every drawn frame
(``retry=``; :func:`run_story` also returns the retry's cost); :func:`pixel_distance` compares a drawn frame with the
true one. :data:`PACK_DECODING` is the pack's decoding (repetition penalty 1.2, no repeated sentences, 40 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from seedstory_core import quant
from seedstory_core.bundle import SeedStoryBundle
from seedstory_core.cache import CachePolicy
from seedstory_core.cast import CastSheet
from seedstory_core.consistency import LookReferences, RetryReport, RetrySettings, redraw_until_consistent
from seedstory_core.data import mini
from seedstory_core.rules import check_story_run
from seedstory_core.story import (
    DEFAULT_NO_REPEAT_SENTENCES,
    DEFAULT_REPETITION_PENALTY,
    DecodingSettings,
    StorySettings,
)
from seedstory_core.tiny import random_tiny_bundle

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "seedstory-tiny"
TRAIN_LENGTH = 10  # frames per training story (10-frame chunks, docs/reference.md §5)
#: classifier-free guidance of every rendered frame. The official default is 7.5 (docs/reference.md §4.2); for the
#: tiny model 3.0 renders the agent's regressed features better (measured on the earlier, stage-2-only tiny agent:
#: held-out coherence 0.468 at 3.0 vs 0.392 at 7.5), although 7.5 is better on ground-truth ViT features: guidance
#: amplifies the regression's errors too.
GUIDANCE_SCALE = 3.0
#: the pack's decoding (the nodes' and ``tell``'s defaults): greedy, repetition penalty 1.2, a sentence never repeats an
#: earlier one of its story, at most 40 tokens. ``DecodingSettings(max_sentence_tokens=40)`` is the official decoding.
PACK_DECODING = DecodingSettings(
    repetition_penalty=DEFAULT_REPETITION_PENALTY,
    no_repeat_sentences=DEFAULT_NO_REPEAT_SENTENCES,
    max_sentence_tokens=40,
)


def load_model(
    model_dir: Optional[Path] = None, *, random_init: bool = False, seed: int = 0, weight_dtype: str = quant.DEFAULT
):
    """The bundle at ``model_dir`` (default: the bundled tiny model), or a random model of the same size/tokenizer.

    ``weight_dtype``: how the weights are stored (:func:`seedstory_core.quant.store_bundle_weights`, as the Tiny
    Model Loader's input: ``default``, ``fp8_e4m3fn`` (agent, ViT and UNet blocks) or ``int8`` (agent and ViT;
    the UNet stays default)); compute stays in the bundle's dtype. Raises ValueError for another value."""
    quant.check_storage(weight_dtype)
    path = Path(model_dir) if model_dir else DEFAULT_MODEL
    bundle = SeedStoryBundle.load(path)
    if weight_dtype != quant.DEFAULT:
        quant.store_bundle_weights(bundle, weight_dtype)
    if random_init:
        random = random_tiny_bundle(seed, tokenizer=bundle.tokenizer)
        # a random de-tokenizer cannot draw at all; keep the trained renderer so the baseline isolates the MLLM
        random.detokenizer = bundle.detokenizer
        random.uncond_features = random.compute_uncond_features()
        return random
    return bundle


def true_looks(story: dict):
    """Every character's true look in a held-out ``story`` (``mini.story_looks`` of its seed and index, in its
    world), not only the cast's: the ``looks`` the metrics compare with, so a character the model brings in is
    checked too."""
    _, seed, index = story["id"].rsplit("-", 2)
    return mini.story_looks(int(seed[1:]), int(index), story.get("world", "story"))


def pixel_distance(a, b) -> float:
    """Mean absolute RGB difference of two PIL images in 0..1 (``a`` is resized to ``b``'s size first)."""
    x = np.asarray(a.convert("RGB").resize(b.size), dtype=np.float32) / 255.0
    y = np.asarray(b.convert("RGB"), dtype=np.float32) / 255.0
    return float(np.abs(x - y).mean())


@dataclass
class StoryRun:
    """One continued story: the sentences (the opening one first), the PIL frames (the real start frame first; None
    when nothing was drawn), and the consistency retry's cost (None without the retry)."""

    sentences: List[str]
    frames: List
    retry: Optional[RetryReport] = None


@torch.no_grad()
def cast_sheet(bundle, story: dict) -> CastSheet:
    """The story's cast sheet as the model sees it: every cast member's reference picture
    (:func:`seedstory_core.data.mini.cast_pictures`, the story's looks) through the bundle's visual tokenizer."""
    pictures = mini.cast_pictures(story)
    return CastSheet(
        tuple(n for n, _ in pictures), tuple(bundle.visual_tokenizer.encode_images(p)[:1] for _, p in pictures)
    )


@torch.no_grad()
def generate_story(bundle, story: dict, frames: int, **kwargs):
    """Continue a held-out story from its first frame and sentence; returns (sentences, PIL frames).

    The keyword arguments are :func:`run_story`'s (``policy``, ``captions``, ``diffusion_steps``, ``seed``,
    ``max_sentence_tokens``, ``guidance_scale``, ``context_features``, ``decoding``, ``render``, ``cast``,
    ``retry``); :func:`run_story` also returns the retry's cost.
    """
    run = run_story(bundle, story, frames, **kwargs)
    return run.sentences, run.frames


@torch.no_grad()
def run_story(
    bundle,
    story: dict,
    frames: int,
    *,
    policy=None,
    captions: Optional[Sequence[str]] = None,
    diffusion_steps: int = 10,
    seed: int = 0,
    max_sentence_tokens: int = 40,
    guidance_scale: float = GUIDANCE_SCALE,
    context_features: Optional[Sequence[torch.Tensor]] = None,
    decoding=None,
    render: bool = True,
    cast: bool = False,
    retry: Optional[RetrySettings] = None,
    feed_drawn: bool = False,
) -> StoryRun:
    """Continue a held-out story from its first frame and sentence; returns a :class:`StoryRun`.

    ``captions`` (visualization mode): the sentences to draw for frames 1..frames-1.
    ``context_features`` (teacher forcing): per frame, (1, T, D) visual-tokenizer features (:func:`frame_features`)
    that replace the agent's regressed features of frame i-1 in the context before frame i is drawn
    (``StoryEngine.step(context_features=...)``), so every step sees a correct story so far; None = the agent's own
    regressed features stay in the context.
    ``decoding``: a ``DecodingSettings`` (default: greedy with ``max_sentence_tokens``; :data:`PACK_DECODING` is the
    pack's).
    ``render=False``: draw nothing (frames 1.. are None); the sentences are the same, since the context holds the
    agent's regressed features, not the drawn frames.
    ``cast``: pin the story's cast sheet (:func:`cast_sheet`) in the context (``StoryEngine.start(cast=...)``).
    ``retry``: the consistency retry (:mod:`seedstory_core.consistency`): every drawn frame is tokenized and compared
    with the looks of the characters its sentence names (the cast sheet's pictures with ``cast``, else each
    character's first appearance, the opening frame included) and redrawn with other de-tokenizer seeds while below
    the threshold; the best drawing is kept. Only pictures change: the context keeps the regressed features (or the
    teacher-forced ones), so the sentences are those of the run without the retry, unless ``feed_drawn``.
    ``feed_drawn``: the context stores the visual tokenizer's features of each kept drawing instead of the agent's
    regressed features (``StoryEngine.step(context_features=...)``, as a Story Step wired with ViT Tokenize of the
    rendered frame does), so the retry's choice reaches the next steps. Needs ``render=True`` and no
    ``context_features``.

    Raises:
        StoryRuleError: the story breaks a model rule (:func:`seedstory_core.rules.check_story_run`: a sentence over
            the token limit, fewer captions than frames in visualization mode), before any model work.
        ValueError: ``retry`` with ``render=False`` (nothing to check).
    """
    if retry is not None and not render:
        raise ValueError("the consistency retry checks drawn frames: it needs render=True")
    if feed_drawn and (not render or context_features is not None):
        raise ValueError("feed_drawn stores the drawn frames' features: it needs render=True and no context_features")
    mode = "visualization" if captions is not None else "generation"
    run = check_story_run(
        bundle.tokenizer,
        bundle.config.agent,
        opening_text=story["captions"][0],
        steps=frames - 1,
        mode=mode,
        captions=captions,
        detokenizer_width=int(bundle.config.detokenizer.resampler.embedding_dim) if render else None,
    )
    settings = StorySettings(policy=policy or CachePolicy(kind="multimodal_sink", window_images=TRAIN_LENGTH))
    engine = bundle.engine(settings.policy)
    start_img = mini.render_story(
        {**story, "captions": story["captions"][:1], "attributes": story["attributes"][:1]}, size=64
    )[0]
    sheet = cast_sheet(bundle, story) if cast else None
    state = engine.start(story["captions"][0], image=start_img, settings=settings, cast=sheet)
    decoding = decoding or DecodingSettings(max_sentence_tokens=max_sentence_tokens)
    images = [start_img]
    report, refs = None, None
    if retry is not None:
        report = RetryReport()
        refs = LookReferences(cast=sheet) if sheet is not None else LookReferences(names=mini.CHARACTER_NAMES)
        refs.observe(story["captions"][0], bundle.visual_tokenizer.encode_images(start_img)[:1])

    def on_frame(i, _total, result):
        if not render:
            images.append(None)
        elif retry is None:
            images.append(
                bundle.render(
                    result.features, frame_index=i, steps=diffusion_steps, guidance_scale=guidance_scale, seed=seed
                )
            )
            if feed_drawn:
                return bundle.visual_tokenizer.encode_images(images[-1])[:1] if i < frames - 1 else None
        else:

            def draw(s):
                picture = bundle.render(
                    result.features, frame_index=i, steps=diffusion_steps, guidance_scale=guidance_scale, seed=s
                )
                return picture, bundle.visual_tokenizer.encode_images(picture)[:1]

            sentence = result.sentence
            outcome = redraw_until_consistent(draw, lambda f: refs.score(sentence, f), retry, seed)
            report.add(outcome)
            refs.observe(sentence, outcome.features)
            images.append(outcome.picture)
            if feed_drawn:
                return outcome.features if i < frames - 1 else None
        return context_features[i] if context_features is not None and i < frames - 1 else None

    _, results = engine.run(
        state,
        frames - 1,
        texts=run.texts,
        mode=mode,
        decoding=decoding,
        on_frame=on_frame,
    )
    return StoryRun([story["captions"][0]] + [r.sentence for r in results], images, report)


@torch.no_grad()
def frame_features(bundle, frames) -> List[torch.Tensor]:
    """(1, T, D) visual-tokenizer features of each PIL frame, for ``generate_story(context_features=...)``."""
    return [bundle.visual_tokenizer.encode_images(frame)[:1] for frame in frames]
