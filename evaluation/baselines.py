"""The trivial story-tellers the models are measured against (docs/evaluation.md, "The baselines").

Each continues a held-out StoryStream-mini story from its real first frame and sentence and returns
``(sentences, PIL frames)``, ``frames`` of each, the opening sentence and the true start frame first:

* ``copy_first`` — every frame is the start frame and every sentence the opening sentence;
* ``retrieval`` — random (frame, caption) pairs of the training data (seed 0, the recipe's 400 stories), drawn with
  ``numpy.random.default_rng([seed, story, 1])``;
* ``ground_truth`` — the held-out story's own continuation, drawn by the renderer (the metric's ceiling);
* ``static_start`` — the true start frame every step, with valid, continuous, never repeated action sentences about
  the characters on stage (``"George jumps."``, ``"They dance."``; two-sentence captions once the single ones are
  used up): what good sentences alone score when the pictures never move;
* ``rule_based`` — a random walk of the world's grammar from the true first frame's state (actions, arrivals,
  departures, travels, objects), every caption valid, continuous and new, each frame drawn by
  ``mini.render_frame`` with the story's true looks: an oracle renderer, a second ceiling (a story that is not the
  held-out one, drawn perfectly); seeded by ``numpy.random.default_rng([seed, story, 2])``;
* ``ground_truth_detok`` (needs the model bundle) — the true continuation's frames through the visual tokenizer and
  the bundle's de-tokenizer (:func:`evaluation.stories.frame_features`, ``bundle.render``), the true sentences: the
  ceiling of the model's own drawing pipeline.

Validity is the evaluation's own (:mod:`evaluation.metrics`): a caption parses with the story so far
(``mini.sentence_attributes``), breaks none of :func:`evaluation.metrics.continuity_violations`'s rules and repeats no
earlier caption (:func:`evaluation.metrics.normalise`).
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from evaluation import metrics as jm
from evaluation.stories import GUIDANCE_SCALE, frame_features
from seedstory_core.data import mini

#: every baseline name; :data:`MODEL_BASELINES` need the model bundle
BASELINES = ("copy_first", "retrieval", "ground_truth", "static_start", "rule_based", "ground_truth_detok")
MODEL_BASELINES = ("ground_truth_detok",)
#: the tiny recipe's training data: StoryStream-mini seed 0, 400 stories (the retrieval baseline's pool)
TRAIN_SEED, TRAIN_STORIES = 0, 400
#: the plain actions: who acts stays on stage, nothing else changes
ACTION_KINDS = ("jump", "wave", "dance", "sleep", "walk")
_GENDER = {c.name: c.gender for c in mini.CHARACTERS}
_INDEX = {n: i for i, n in enumerate(mini.CHARACTER_NAMES)}
#: the rule-based walk's event weights (the story generator's, without its chunk-start restatements)
_WALK_WEIGHTS = {
    "act": 3.0,
    "travel": 1.0,
    "arrive": 1.5,
    "leave": 0.8,
    "bring": 1.5,
    "play": 2.0,
    "putaway": 0.6,
    "eat": 2.0,
}
_ATTEMPTS = 200

__all__ = [
    "BASELINES",
    "MODEL_BASELINES",
    "baseline_story",
    "true_frames",
    "copy_first",
    "retrieval",
    "ground_truth",
    "static_start",
    "rule_based",
    "ground_truth_detok",
    "caption_fits",
    "realise",
]


# ------------------------------------------------------------------------------------------------ grammar helpers
def _canon(names: Sequence[str]) -> List[str]:
    return sorted(set(names), key=_INDEX.__getitem__)


def _join(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def subjects(names: Sequence[str]) -> List[str]:
    """Every way to say ``names`` as a sentence subject: each order of the names, then the pronoun (``He``/``She``
    for one character, ``They`` for several). The parser decides whether the pronoun resolves to them."""
    names = _canon(names)
    out = [_join(p) for p in itertools.permutations(names)]
    out.append(("He" if _GENDER[names[0]] == "m" else "She") if len(names) == 1 else "They")
    return out


def realise(kind: str, names: Sequence[str], subject: Optional[str] = None, scene=None, obj=None) -> str:
    """One sentence of the grammar: ``kind`` (a ``mini`` sentence kind) about ``names``, said with ``subject``
    (default: the names in canonical order), e.g. ``realise("bring", ["Lily"], obj="kite")`` ->
    ``"Lily brings her green kite."``."""
    names = _canon(names)
    sing, plur = mini.VERBS[kind]
    poss = "their" if len(names) > 1 else ("his" if _GENDER[names[0]] == "m" else "her")
    vp = (sing if len(names) == 1 else plur).format(
        scene=mini.SCENE_PHRASES.get(scene, ""), obj=obj or "", adj=mini.OBJECTS[obj][0] if obj else "", poss=poss
    )
    return f"{subject or _join(names)} {vp}."


class _Story:
    """The story so far as the evaluation reads it: the captions, their state, the cast named so far."""

    def __init__(self, opening: str):
        self.history = [opening]
        self.seen = {jm.normalise(opening)}
        self.ctx = mini.story_context(self.history)
        self.cast = set(self.ctx.present)

    def fits(self, caption: str, mentioned: Optional[Sequence[str]] = None) -> Optional[Dict]:
        """The caption's stated attributes when it parses, is continuous and new (and, with ``mentioned``, its
        sentences name exactly those characters, pronouns resolved), else None."""
        if jm.normalise(caption) in self.seen:
            return None
        attrs = mini.sentence_attributes(caption, self.ctx)
        if not attrs.get("parsed"):
            return None
        if mentioned is not None and attrs["mentioned"] != _canon(mentioned):
            return None
        if jm.continuity_violations(caption, self.ctx, self.cast) != []:
            return None
        return attrs

    def add(self, caption: str, attrs: Dict) -> None:
        self.history.append(caption)
        self.seen.add(jm.normalise(caption))
        self.ctx = mini.story_context(self.history)
        self.cast |= set(attrs["present"])


def caption_fits(caption: str, history: Sequence[str]) -> bool:
    """Does ``caption`` parse after ``history``, follow the story rules (:func:`evaluation.metrics.
    continuity_violations`) and repeat no caption of ``history``? The check every generated baseline caption passes
    (the same as the score's first three checks, :func:`evaluation.metrics.judge_frame`)."""
    story = _Story(history[0])
    for h in history[1:]:
        story.add(h, mini.sentence_attributes(h, story.ctx))
    return story.fits(caption) is not None


def _action_sentences(present: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """(sentence, its characters) for every plain action of every non-empty group of ``present``, in every
    subject form."""
    present = _canon(present)
    out = []
    for k in range(1, len(present) + 1):
        for group in itertools.combinations(present, k):
            for subj in subjects(group):
                for kind in ACTION_KINDS:
                    out.append((realise(kind, group, subj), list(group)))
    return out


# ------------------------------------------------------------------------------------------------ the baselines
def true_frames(story: dict, frames: int) -> List:
    """The story's first ``frames`` frames, drawn by the renderer (64 px, its true looks)."""
    return mini.render_story({**story, "attributes": story["attributes"][:frames]}, size=64)


def ground_truth(story: dict, frames: int) -> Tuple[List[str], List]:
    """The true continuation: its captions and frames."""
    return list(story["captions"][:frames]), true_frames(story, frames)


def copy_first(story: dict, frames: int) -> Tuple[List[str], List]:
    """The opening sentence and the start frame, ``frames`` times."""
    start = true_frames(story, 1)[0]
    return [story["captions"][0]] * frames, [start] * frames


def retrieval(story: dict, frames: int, seed: int, index: int) -> Tuple[List[str], List]:
    """Random (caption, frame) pairs of the training data after the real opening."""
    rng = np.random.default_rng([int(seed), int(index), 1])
    sentences, images = [story["captions"][0]], [true_frames(story, 1)[0]]
    for _ in range(1, frames):
        pick = mini.generate_story(TRAIN_SEED, int(rng.integers(TRAIN_STORIES)), frames=30)
        f = int(rng.integers(30))
        sentences.append(pick["captions"][f])
        images.append(mini.render_frame(pick["attributes"][f], size=64))
    return sentences, images


def static_start(story: dict, frames: int, seed: int, index: int) -> Tuple[List[str], List]:
    """The start frame every step; valid, continuous, new action sentences about the characters on stage.

    Each step takes, in an order shuffled by ``numpy.random.default_rng([seed, index, 3])``, the first single action
    sentence that fits (:meth:`_Story.fits`), else the first two-sentence caption of two of them that fits.

    Raises:
        RuntimeError: no caption fits (cannot happen in StoryStream-mini for 30 frames: 1 character on stage gives
            100 two-sentence captions).
    """
    rng = np.random.default_rng([int(seed), int(index), 3])
    start = true_frames(story, 1)[0]
    st = _Story(story["captions"][0])
    singles = _action_sentences(st.ctx.present)
    for step in range(1, frames):
        order = [singles[int(i)] for i in rng.permutation(len(singles))]
        chosen = None
        for sentence, names in order:
            attrs = st.fits(sentence, names)
            if attrs is not None:
                chosen = (sentence, attrs)
                break
        if chosen is None:
            for (a, na), (b, nb) in itertools.product(order, order):
                caption = f"{a} {b}"
                attrs = st.fits(caption, _canon(na + nb))
                if attrs is not None:
                    chosen = (caption, attrs)
                    break
        if chosen is None:
            raise RuntimeError(f"static_start: no new action caption fits at frame {step} of {story['id']}")
        st.add(*chosen)
    return st.history, [start] * frames


def _walk_candidate(rng: np.random.Generator, ctx, story: dict) -> Tuple[str, List[str]]:
    """One random caption of the grammar from the state ``ctx`` (may not fit: the caller checks it)."""
    present, cast = list(ctx.present), list(story["cast"])
    held = ctx.objects[0] if ctx.objects else None
    absent = [c for c in cast if c not in present]
    options = ["act"]
    if len(mini.SCENES) > 1 and present:
        options.append("travel")
    if absent and len(present) < mini.MAX_PRESENT:
        options.append("arrive")
    if len(present) >= 2:
        options.append("leave")
    if held is None and present:
        options.append("bring")
    elif held is not None:
        options += ["play", "putaway"] + (["eat"] if held["name"] == "cake" else [])
    weights = np.asarray([_WALK_WEIGHTS[o] for o in options])
    event = options[int(rng.choice(len(options), p=weights / weights.sum()))]

    def group(pool, lo=1, hi=None):
        pool = list(pool)
        hi = len(pool) if hi is None else min(hi, len(pool))
        k = int(rng.integers(lo, hi + 1))
        return _canon([pool[int(i)] for i in rng.permutation(len(pool))[:k]])

    def say(kind, names, **kw):
        forms = subjects(names)
        return realise(kind, names, forms[int(rng.integers(len(forms)))], **kw), names

    if event == "act":
        return say(ACTION_KINDS[int(rng.integers(len(ACTION_KINDS)))], group(present, 1, 2))
    if event == "travel":
        scene = [s for s in mini.SCENES if s != ctx.scene][int(rng.integers(len(mini.SCENES) - 1))]
        who = group(present) if rng.random() < 0.3 else _canon(present)
        return say("travel", who, scene=scene)
    if event == "arrive":
        who = group(absent, 1, min(2, mini.MAX_PRESENT - len(present)))
        return realise(("arrive", "hello")[int(rng.integers(2))], who), who  # by name, as the stories do
    if event == "leave":
        return say("leave", group(present, 1, len(present) - 1))
    if event == "bring":
        who = [present[int(rng.integers(len(present)))]]
        return say("bring", who, obj=mini.OBJECT_NAMES[int(rng.integers(len(mini.OBJECT_NAMES)))])
    if event == "play":
        return say("play", group(present, 1, 2), obj=held["name"])
    if event == "eat":
        return say("eat", group(present, 1, 2))
    return say("putaway", [held["holder"]], obj=held["name"])


def rule_based(story: dict, frames: int, seed: int, index: int) -> Tuple[List[str], List]:
    """A random walk of the grammar from the true first frame's state, drawn by the renderer with the story's true
    looks (module docstring). Each step draws candidate captions (:func:`_walk_candidate`) until one fits; after
    :data:`_ATTEMPTS` misses it falls back to two plain actions (as :func:`static_start`).

    Raises:
        RuntimeError: nothing fits (not seen in StoryStream-mini).
    """
    rng = np.random.default_rng([int(seed), int(index), 2])
    looks = story["looks"]
    st = _Story(story["captions"][0])
    images = [true_frames(story, 1)[0]]
    for step in range(1, frames):
        chosen = None
        for _ in range(_ATTEMPTS):
            caption, names = _walk_candidate(rng, st.ctx, story)
            attrs = st.fits(caption, names)
            if attrs is not None:
                chosen = (caption, attrs)
                break
        if chosen is None:
            singles = _action_sentences(st.ctx.present)
            for (a, na), (b, nb) in itertools.product(singles, singles):
                attrs = st.fits(f"{a} {b}", _canon(na + nb))
                if attrs is not None:
                    chosen = (f"{a} {b}", attrs)
                    break
        if chosen is None:
            raise RuntimeError(f"rule_based: no caption fits at frame {step} of {story['id']}")
        st.add(*chosen)
        images.append(walk_frame(chosen[1], looks))
    return st.history, images


def walk_frame(attrs: Dict, looks: Dict[str, Dict[str, str]]):
    """The renderer's frame of stated attributes, every character on stage with its ``looks`` entry."""
    return mini.render_frame({**attrs, "looks": {n: dict(looks[n]) for n in attrs["present"]}}, size=64)


@torch.no_grad()
def ground_truth_detok(
    bundle,
    story: dict,
    frames: int,
    seed: int,
    *,
    diffusion_steps: int = 10,
    guidance_scale: float = GUIDANCE_SCALE,
) -> Tuple[List[str], List]:
    """The true sentences; frame 0 the true start frame, frame i >= 1 the true frame i through the visual tokenizer
    and the bundle's de-tokenizer (noise seeded as the model's frames: ``(seed, i)``)."""
    gt = true_frames(story, frames)
    feats = frame_features(bundle, gt)
    images = [gt[0]] + [
        bundle.render(feats[i], frame_index=i, steps=diffusion_steps, guidance_scale=guidance_scale, seed=seed)
        for i in range(1, frames)
    ]
    return list(story["captions"][:frames]), images


def baseline_story(
    kind: str,
    story: dict,
    frames: int,
    seed: int,
    index: int,
    *,
    bundle=None,
    diffusion_steps: int = 10,
    guidance_scale: float = GUIDANCE_SCALE,
):
    """Baseline ``kind``'s continuation of ``story`` (story ``index`` of ``seed``): (sentences, PIL frames).

    Raises:
        ValueError: an unknown ``kind``, or ``ground_truth_detok`` without ``bundle``.
    """
    if kind == "ground_truth":
        return ground_truth(story, frames)
    if kind == "copy_first":
        return copy_first(story, frames)
    if kind == "retrieval":
        return retrieval(story, frames, seed, index)
    if kind == "static_start":
        return static_start(story, frames, seed, index)
    if kind == "rule_based":
        return rule_based(story, frames, seed, index)
    if kind == "ground_truth_detok":
        if bundle is None:
            raise ValueError("the ground_truth_detok baseline draws with the model's de-tokenizer: pass bundle=")
        return ground_truth_detok(
            bundle, story, frames, seed, diffusion_steps=diffusion_steps, guidance_scale=guidance_scale
        )
    raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
