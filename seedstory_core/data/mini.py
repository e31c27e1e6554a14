"""StoryStream-mini: a deterministic, procedurally generated cartoon story dataset in StoryStream format.

A tiny world that small models can learn and that can be checked exactly:

* **5 recurring characters** with fixed looks (:data:`CHARACTERS`): George (red circle, black top hat, he),
  Lily (magenta triangle, pink bow, she), Max (orange square, glasses, he), Zoe (purple diamond, gold crown, she),
  Ben (teal tall rectangle, blue cap, he). Characters are large flat-colour shapes with eyes and stick legs.
* **5 scenes** (:data:`SCENES`) with distinct flat backgrounds: park, beach, kitchen, forest, night.
* **6 objects** (:data:`OBJECTS`): ball, kite, cake, book, balloon, umbrella, always drawn at the same place
  relative to the character who has them.
* **8 actions** (:data:`ACTIONS`) drawn as poses: stand, walk, jump, wave, dance, sleep, eat, play.
* **Positions are canonical**: the characters present are sorted by their index in :data:`CHARACTERS` and put in
  slots (1 -> center; 2 -> left, right; 3 -> left, center, right), at most 3 at a time.

Stories have 30 frames by default. Every caption is one or two sentences from a small grammar (see
:func:`parse_sentence`), e.g. ``"George and Lily walk to the park. He brings his green kite."``. Pronouns refer
back as in StoryGPT-V's referential captions: ``He``/``She`` = the most recently mentioned male/female character,
``They`` = all characters mentioned by the previous sentence (2 or more). The generator only uses a pronoun when
its referent was mentioned by the previous sentence and is the only character of that gender there. Every frame
whose index is a multiple of ``anchor_every`` (10, the chunk length) restates the scene, who is present and who
has which object, so each 10-frame chunk can be read (and parsed) on its own.

Per-frame ground truth is stored in the record under ``"attributes"`` (one dict per frame)::

    {"background": "park", "present": ["George", "Lily"], "positions": {"George": "left", "Lily": "right"},
     "objects": [{"name": "kite", "holder": "George"}], "action": "walk", "actors": ["George", "Lily"]}

and the caption (with the preceding captions of the same story/chunk as context) determines it exactly:
:func:`sentence_attributes` / :func:`parse_story` recover it.

**Seeds select disjoint stories.** Story ``k`` of seed ``s`` is generated from its own RNG,
``numpy.random.Generator(PCG64(SeedSequence([s, k])))``, and its id is ``"mini-s{s}-{k:05d}"``; ids of different
seeds never coincide and stories of different seeds are independent draws from a space of ~10^40 plots, so a
held-out set is simply another seed (``--seed 1``) - the tests check that the caption sequences of two seeds are
disjoint. (Single frames and captions do recur across seeds: the world is small by design.)

CLI::

    python -m seedstory_core.data.mini --seed S --stories N --out DIR [--size 64] [--frames 30]

writes ``DIR/images/<story id>/<frame:02d>.png``, ``DIR/stories.jsonl`` (StoryStream format + attributes; image
paths relative to ``DIR/images``) and ``DIR/chunks10.jsonl`` (official chunking, attributes kept).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .storystream import chunk_stories, write_jsonl

__all__ = [
    "Character",
    "CHARACTERS",
    "LOOK_COLOURS",
    "ACCESSORIES",
    "LOOK_MODES",
    "FIXED_LOOKS",
    "story_looks",
    "render_cast_picture",
    "cast_pictures",
    "CHARACTER_NAMES",
    "SCENES",
    "SCENE_PHRASES",
    "OBJECTS",
    "ACTIONS",
    "VERBS",
    "SLOTS",
    "StoryContext",
    "story_id",
    "story_rng",
    "generate_story",
    "render_frame",
    "render_story",
    "make_records",
    "generate_dataset",
    "parse_sentence",
    "sentence_attributes",
    "parse_story",
    "slot_layout",
    "main",
]


# ----------------------------------------------------------------------------------------------------------------
# The world
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Character:
    """A recurring character: name, pronoun gender ('m'/'f'), body shape, flat RGB colour and accessory."""

    name: str
    gender: str
    shape: str
    colour: Tuple[int, int, int]
    accessory: str


CHARACTERS: Tuple[Character, ...] = (
    Character("George", "m", "circle", (220, 30, 30), "hat"),
    Character("Lily", "f", "triangle", (230, 60, 180), "bow"),
    Character("Max", "m", "square", (255, 130, 0), "glasses"),
    Character("Zoe", "f", "diamond", (130, 50, 200), "crown"),
    Character("Ben", "m", "tall", (0, 150, 150), "cap"),
)
CHARACTER_NAMES: Tuple[str, ...] = tuple(c.name for c in CHARACTERS)
_CHAR = {c.name: c for c in CHARACTERS}
_CHAR_INDEX = {c.name: i for i, c in enumerate(CHARACTERS)}

SCENES: Tuple[str, ...] = ("park", "beach", "kitchen", "forest", "night")
#: How each scene is named in captions.
SCENE_PHRASES: Dict[str, str] = {
    "park": "the park",
    "beach": "the beach",
    "kitchen": "the kitchen",
    "forest": "the forest",
    "night": "the hill under the stars",
}
_PHRASE_SCENE = {v: k for k, v in SCENE_PHRASES.items()}

#: object -> (adjective used in captions, main RGB colour)
OBJECTS: Dict[str, Tuple[str, Tuple[int, int, int]]] = {
    "ball": ("yellow", (250, 220, 0)),
    "kite": ("green", (0, 190, 90)),
    "cake": ("birthday", (250, 120, 150)),
    "book": ("blue", (50, 80, 220)),
    "balloon": ("light blue", (60, 220, 240)),
    "umbrella": ("brown", (140, 90, 40)),
}
OBJECT_NAMES: Tuple[str, ...] = tuple(OBJECTS)
ACTIONS: Tuple[str, ...] = ("stand", "walk", "jump", "wave", "dance", "sleep", "eat", "play")
SLOTS: Tuple[str, ...] = ("left", "center", "right")
_SLOT_X = {"left": 0.2, "center": 0.5, "right": 0.8}
MAX_PRESENT = 3

#: Body colours a story may give its characters (``looks="story"``): name -> flat RGB. Distinct from each other,
#: from the objects' colours and from the backgrounds, so a frame shows exactly which colour each body has.
LOOK_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "pink": (230, 60, 180),
    "orange": (255, 130, 0),
    "purple": (130, 50, 200),
    "teal": (0, 150, 150),
    "lime": (170, 230, 40),
}
#: Accessories a story may give its characters (``looks="story"``); drawn on top of the body.
ACCESSORIES: Tuple[str, ...] = ("hat", "bow", "glasses", "crown", "cap")
#: The worlds :func:`generate_story` draws: ``story`` (default: every story draws its characters' colours and
#: accessories, so a look can only be drawn right by carrying it from earlier pictures) or ``fixed`` (every character
#: always has its one look of :data:`CHARACTERS`, the world of earlier releases).
LOOK_MODES = ("story", "fixed")
#: The fixed look of each character (``looks="fixed"``): ``{"colour": name, "accessory": name}``.
FIXED_LOOKS: Dict[str, Dict[str, str]] = {
    c.name: {"colour": next(k for k, v in LOOK_COLOURS.items() if v == c.colour), "accessory": c.accessory}
    for c in CHARACTERS
}


def slot_layout(present: Sequence[str]) -> Dict[str, str]:
    """Canonical positions: characters sorted by index; 1 -> center, 2 -> left/right, 3 -> left/center/right."""
    names = sorted(present, key=_CHAR_INDEX.__getitem__)
    slots = {1: ["center"], 2: ["left", "right"], 3: ["left", "center", "right"]}.get(len(names))
    if slots is None:
        if not names:
            return {}
        raise ValueError(f"at most {MAX_PRESENT} characters can be present, found {names}")
    return dict(zip(names, slots))


# ----------------------------------------------------------------------------------------------------------------
# Grammar: realisation and parsing
# ----------------------------------------------------------------------------------------------------------------

# kind -> (singular verb phrase, plural verb phrase); "{X}" slots are filled per kind.
_VERBS = {
    "at": ("is at {scene}", "are at {scene}"),
    "travel": ("walks to {scene}", "walk to {scene}"),
    "arrive": ("arrives", "arrive"),
    "hello": ("comes to say hello", "come to say hello"),
    "leave": ("goes home", "go home"),
    "bring": ("brings {poss} {adj} {obj}", "bring {poss} {adj} {obj}"),
    "has": ("has {poss} {adj} {obj}", "have {poss} {adj} {obj}"),
    "play": ("plays with the {obj}", "play with the {obj}"),
    "eat": ("eats the cake", "eat the cake"),
    "putaway": ("puts the {obj} away", "put the {obj} away"),
    "jump": ("jumps", "jump"),
    "wave": ("waves", "wave"),
    "dance": ("dances", "dance"),
    "sleep": ("falls asleep", "fall asleep"),
    "walk": ("walks around", "walk around"),
}
# kind -> action shown in the frame (None: the sentence sets no action)
_KIND_ACTION = {
    "at": None,
    "travel": "walk",
    "arrive": "walk",
    "hello": "wave",
    "leave": None,
    "bring": None,
    "has": None,
    "play": "play",
    "eat": "eat",
    "putaway": None,
    "jump": "jump",
    "wave": "wave",
    "dance": "dance",
    "sleep": "sleep",
    "walk": "walk",
}

#: The grammar's verb phrases: sentence kind -> (singular, plural) template (``{scene}``, ``{obj}``, ``{adj}``,
#: ``{poss}`` slots), read-only; used by generators of valid sentences (e.g. the evaluation's baselines).
VERBS: Dict[str, Tuple[str, str]] = dict(_VERBS)

_NAME_RE = "|".join(CHARACTER_NAMES)
_SUBJ_RE = rf"(?P<subj>He|She|They|(?:{_NAME_RE})(?:(?:, (?:{_NAME_RE}))* and (?:{_NAME_RE}))?)"
_SCENE_RE = "(?P<scene>" + "|".join(re.escape(p) for p in SCENE_PHRASES.values()) + ")"
_OBJ_RE = "(?P<obj>" + "|".join(OBJECT_NAMES) + ")"
_ADJ_RE = "(?P<adj>" + "|".join(sorted({re.escape(a) for a, _ in OBJECTS.values()}, key=len, reverse=True)) + ")"


def _compile_patterns():
    pats = []
    for kind, (sing, plur) in _VERBS.items():
        for number, vp in (("sg", sing), ("pl", plur)):
            rx = re.escape(vp)
            rx = rx.replace(re.escape("{scene}"), _SCENE_RE).replace(re.escape("{obj}"), _OBJ_RE)
            rx = rx.replace(re.escape("{adj}"), _ADJ_RE).replace(re.escape("{poss}"), "(?P<poss>his|her|their)")
            pats.append((kind, number, re.compile(rf"^{_SUBJ_RE} {rx}\.$")))
    return pats


_PATTERNS = _compile_patterns()
_SENT_SPLIT = re.compile(r"(?<=\.)\s+")


def split_sentences(caption: str) -> List[str]:
    """The sentences of a caption (split after each full stop), without empty pieces."""
    return [s for s in _SENT_SPLIT.split(str(caption).strip()) if s]


def _join_names(names: Sequence[str]) -> str:
    names = list(names)
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _poss(subject: Sequence[str]) -> str:
    if len(subject) > 1:
        return "their"
    return "his" if _CHAR[subject[0]].gender == "m" else "her"


@dataclass
class StoryContext:
    """What a reader knows after some captions: the frame state and the pronoun referents.

    Attributes:
        scene: current background (None before the first ``at``/``travel`` sentence).
        present: characters in the frame (canonical order).
        objects: ``[{"name", "holder"}]`` (at most one).
        last_mentions: characters mentioned by the previous sentence (referent of ``They`` if >= 2).
        last_m / last_f: most recently mentioned male / female character (referents of ``He`` / ``She``).
    """

    scene: Optional[str] = None
    present: List[str] = field(default_factory=list)
    objects: List[Dict[str, str]] = field(default_factory=list)
    last_mentions: List[str] = field(default_factory=list)
    last_m: Optional[str] = None
    last_f: Optional[str] = None

    def copy(self) -> "StoryContext":
        return StoryContext(
            self.scene,
            list(self.present),
            [dict(o) for o in self.objects],
            list(self.last_mentions),
            self.last_m,
            self.last_f,
        )

    def resolve(self, pronoun: str) -> Optional[List[str]]:
        """Referent(s) of ``He``/``She``/``They`` in this context, or None when unresolvable."""
        p = pronoun.lower()
        if p == "he":
            return [self.last_m] if self.last_m else None
        if p == "she":
            return [self.last_f] if self.last_f else None
        if p == "they":
            return list(self.last_mentions) if len(self.last_mentions) >= 2 else None
        return None

    def note_mentions(self, names: Sequence[str]) -> None:
        if not names:
            return
        self.last_mentions = list(names)
        for n in names:
            if _CHAR[n].gender == "m":
                self.last_m = n
            else:
                self.last_f = n


def story_context(context) -> StoryContext:
    """The story's state of the grammar (who is on stage, where, holding what) as a new :class:`StoryContext`.

    Args:
        context: ``None`` (a story that has not begun), a :class:`StoryContext` (copied), or the list of previous
            captions (applied in order; captions that do not parse leave it unchanged).

    Raises:
        TypeError: anything else.
    """
    if context is None:
        return StoryContext()
    if isinstance(context, StoryContext):
        return context.copy()
    if isinstance(context, (list, tuple)):  # previous captions
        ctx = StoryContext()
        for cap in context:
            res = _apply_caption(cap, ctx)
            if res is not None:
                ctx = res[0]
        return ctx
    raise TypeError(f"context must be None, a StoryContext or a list of previous captions, found {type(context)}")


def parse_sentence(text: str, context=None) -> Optional[Dict[str, Any]]:
    """Parse ONE sentence of the StoryStream-mini grammar.

    Args:
        text: the sentence, e.g. ``"He brings his green kite."``.
        context: ``None``, a :class:`StoryContext`, or the list of previous captions of the story (used to
            resolve ``He``/``She``/``They``).

    Returns:
        dict | None: ``{"kind", "subject": [names, pronouns resolved], "pronoun": "He"|...|None,
        "mentioned": [names], "scene": str|None, "object": str|None, "action": str|None}``; ``None`` when the
        sentence is not in the grammar, the verb does not agree with the subject, a pronoun cannot be resolved,
        the possessive does not match the subject, or a name repeats.
    """
    ctx = story_context(context)
    text = text.strip()
    for kind, number, rx in _PATTERNS:
        m = rx.match(text)
        if not m:
            continue
        subj = m.group("subj")
        if subj in ("He", "She", "They"):
            names = ctx.resolve(subj)
            pronoun = subj
            if names is None:
                return None
        else:
            names = re.split(r", | and ", subj)
            pronoun = None
        if len(set(names)) != len(names):
            return None
        if (number == "sg") != (len(names) == 1):
            return None
        gd = m.groupdict()
        if gd.get("poss") and gd["poss"] != _poss(names):
            return None
        obj = gd.get("obj")
        if kind == "eat":
            obj = "cake"
        if gd.get("adj") and OBJECTS[obj][0] != gd["adj"]:
            return None
        if kind in ("bring", "has") and len(names) != 1:
            return None
        return {
            "kind": kind,
            "subject": list(names),
            "pronoun": pronoun,
            "mentioned": list(names),
            "scene": _PHRASE_SCENE[gd["scene"]] if gd.get("scene") else None,
            "object": obj,
            "action": _KIND_ACTION[kind],
        }
    return None


def _canon(names) -> List[str]:
    return sorted(set(names), key=_CHAR_INDEX.__getitem__)


def apply_sentence(p: Dict[str, Any], ctx: StoryContext) -> Optional[Tuple[Optional[str], List[str]]]:
    """Update ``ctx`` in place with a sentence parsed by :func:`parse_sentence`; returns (action, actors), or None
    when the sentence is inconsistent with the story (e.g. more than 3 characters on stage)."""
    kind, subj = p["kind"], p["subject"]
    action, actors = p["action"], (list(subj) if p["action"] else [])
    if kind in ("at", "travel"):
        ctx.scene = p["scene"]
        ctx.present = _canon(subj)
        ctx.objects = [o for o in ctx.objects if o["holder"] in ctx.present]
    elif kind in ("arrive", "hello"):
        ctx.present = _canon(ctx.present + list(subj))
    elif kind == "leave":
        ctx.present = _canon([n for n in ctx.present if n not in subj])
        ctx.objects = [o for o in ctx.objects if o["holder"] in ctx.present]
    elif kind in ("bring", "has"):
        ctx.present = _canon(ctx.present + list(subj))
        ctx.objects = [{"name": p["object"], "holder": subj[0]}]
    elif kind == "putaway":
        ctx.objects = [o for o in ctx.objects if o["name"] != p["object"]]
    else:  # play / eat / plain actions: the actors are in the frame
        ctx.present = _canon(ctx.present + list(subj))
    if len(ctx.present) > MAX_PRESENT:
        return None
    ctx.note_mentions(subj)
    return action, actors


def _frame_attrs(ctx: StoryContext, action: Optional[str], actors: List[str]) -> Dict[str, Any]:
    present = list(ctx.present)
    return {
        "background": ctx.scene,
        "present": present,
        "positions": slot_layout(present),
        "objects": [dict(o) for o in ctx.objects],
        "action": action or "stand",
        "actors": _canon(actors) if action else [],
    }


def _apply_caption(caption: str, ctx: StoryContext):
    """Apply a whole caption to a copy of ``ctx``; returns (new ctx, frame attrs, parses) or None if unparsable."""
    ctx = ctx.copy()
    sentences = split_sentences(caption)
    if not sentences:
        return None
    action, actors, parses = None, [], []
    for s in sentences:
        p = parse_sentence(s, ctx)
        if p is None:
            return None
        res = apply_sentence(p, ctx)
        if res is None:
            return None
        if res[0] is not None:
            action, actors = res
        parses.append(p)
    return ctx, _frame_attrs(ctx, action, actors), parses


def sentence_attributes(text: str, context=None) -> Dict[str, Any]:
    """The frame attributes a caption states, given the previous captions.

    Args:
        text: a caption (one or two grammar sentences).
        context: ``None``, a :class:`StoryContext` or the list of previous captions (same story or chunk).

    Returns:
        dict: ``{"parsed": bool, "background", "present", "positions", "objects", "action", "actors",
        "mentioned": [names, pronouns resolved]}``. When the caption does not parse, ``parsed`` is False and the
        state is the context's (unchanged), with ``action`` "stand" and no mentions.
    """
    ctx = story_context(context)
    res = _apply_caption(text, ctx)
    if res is None:
        out = _frame_attrs(ctx, None, [])
        out.update(parsed=False, mentioned=[])
        return out
    _, attrs, parses = res
    mentioned = _canon([n for p in parses for n in p["mentioned"]])
    attrs.update(parsed=True, mentioned=mentioned)
    return attrs


def parse_story(captions: Sequence[str]) -> List[Dict[str, Any]]:
    """:func:`sentence_attributes` for every caption of a story (or chunk), chaining the context."""
    ctx = StoryContext()
    out = []
    for cap in captions:
        res = _apply_caption(cap, ctx)
        if res is None:
            a = _frame_attrs(ctx, None, [])
            a.update(parsed=False, mentioned=[])
            out.append(a)
            continue
        ctx, attrs, parses = res
        attrs.update(parsed=True, mentioned=_canon([n for p in parses for n in p["mentioned"]]))
        out.append(attrs)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Story generation
# ----------------------------------------------------------------------------------------------------------------


def story_id(seed: int, index: int) -> str:
    """The id of story ``index`` of ``seed``: ``"mini-s{seed}-{index:05d}"``."""
    return f"mini-s{seed}-{index:05d}"


def story_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG of story ``index`` of ``seed``: PCG64 seeded with ``SeedSequence([seed, index])``."""
    if not (isinstance(seed, (int, np.integer)) and seed >= 0 and isinstance(index, (int, np.integer)) and index >= 0):
        raise ValueError(f"seed and index must be non-negative ints, found {seed!r}, {index!r}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


class _Writer:
    """Realises sentences for the generator, choosing names or pronouns, and tracks the reader's context."""

    def __init__(self, rng: np.random.Generator, pronoun_p: float = 0.6):
        self.rng = rng
        self.pronoun_p = pronoun_p
        self.ctx = StoryContext()

    def subject(self, names: Sequence[str], allow_pronoun: bool) -> str:
        names = _canon(names)
        if allow_pronoun and self.rng.random() < self.pronoun_p:
            last = self.ctx.last_mentions
            if len(names) == 1:
                n = names[0]
                g = _CHAR[n].gender
                same_gender = [x for x in last if _CHAR[x].gender == g]
                ref = self.ctx.last_m if g == "m" else self.ctx.last_f
                if same_gender == [n] and ref == n:
                    return "He" if g == "m" else "She"
            elif len(names) >= 2 and set(names) == set(last) and len(last) >= 2:
                return "They"
        order = list(names)
        if len(order) > 1 and self.rng.random() < 0.5:  # vary name order in text
            order = [order[i] for i in self.rng.permutation(len(order))]
        return _join_names(order)

    def sentence(self, kind: str, names: Sequence[str], allow_pronoun: bool, scene=None, obj=None) -> str:
        subj = self.subject(names, allow_pronoun)
        sing, plur = _VERBS[kind]
        vp = sing if len(names) == 1 else plur
        adj = OBJECTS[obj][0] if obj else ""
        vp = vp.format(scene=SCENE_PHRASES.get(scene, ""), obj=obj or "", adj=adj, poss=_poss(_canon(names)))
        return f"{subj} {vp}."


def _choice(rng, seq):
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))]


def _subset(rng, names, lo=1, hi=None):
    names = list(names)
    hi = len(names) if hi is None else min(hi, len(names))
    k = int(rng.integers(lo, hi + 1))
    idx = rng.permutation(len(names))[:k]
    return _canon([names[i] for i in idx])


def story_looks(seed: int, index: int, looks: str = "story") -> Dict[str, Dict[str, str]]:
    """The look of every character in story ``index`` of ``seed``: ``{name: {"colour", "accessory"}}``.

    ``looks="story"``: drawn from the story's own look RNG (PCG64 seeded with ``SeedSequence([seed, index, 1])``,
    independent of the plot's RNG, so a story's plot is the same in both worlds): the five characters get five
    different colours of :data:`LOOK_COLOURS` and five different accessories of :data:`ACCESSORIES`.
    ``looks="fixed"``: :data:`FIXED_LOOKS`.

    Raises:
        ValueError: ``looks`` not in :data:`LOOK_MODES`, or a negative seed/index.
    """
    if looks not in LOOK_MODES:
        raise ValueError(f"looks must be one of {LOOK_MODES}, found {looks!r}")
    if looks == "fixed":
        return {n: dict(v) for n, v in FIXED_LOOKS.items()}
    story_rng(seed, index)  # validates seed and index
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index), 1])))
    colours = list(LOOK_COLOURS)
    col = rng.permutation(len(colours))[: len(CHARACTERS)]
    acc = rng.permutation(len(ACCESSORIES))
    return {
        c.name: {"colour": colours[int(col[i])], "accessory": ACCESSORIES[int(acc[i])]}
        for i, c in enumerate(CHARACTERS)
    }


def generate_story(
    seed: int, index: int, frames: int = 30, anchor_every: int = 10, looks: str = "story"
) -> Dict[str, Any]:
    """Generate story ``index`` of ``seed`` (text and ground truth only; see :func:`render_story` for images).

    Args:
        seed, index: select the story (see the module doc: disjoint across seeds).
        frames: number of frames (>= 1).
        anchor_every: frames ``f % anchor_every == 0`` restate scene, characters and objects without pronouns,
            so every chunk of that length parses on its own (0 disables anchors after frame 0).
        looks: ``story`` (default: per-story colours and accessories, :func:`story_looks`) or ``fixed`` (every
            character's one look, the world of earlier releases). Captions never state a look.

    Returns:
        dict: ``{"id", "captions": [str], "attributes": [frame dicts], "cast": [names, canonical order],
        "looks": {name: {"colour", "accessory"}} of the cast, "world": looks}``. Every frame dict carries
        ``"looks"``: the look of each character present (its per-frame ground truth).

    Raises:
        ValueError: ``frames`` < 1, or a bad ``looks`` / seed / index.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, found {frames}")
    all_looks = story_looks(seed, index, looks)
    rng = story_rng(seed, index)
    cast = _subset(rng, CHARACTER_NAMES, lo=2, hi=4)
    w = _Writer(rng)
    scene = _choice(rng, SCENES)
    present = _subset(rng, cast, 1, 2)
    obj: Optional[Dict[str, str]] = None
    since_travel = 0
    captions, attributes = [], []
    for f in range(frames):
        anchor = f == 0 or (anchor_every and f % anchor_every == 0)
        frame_ctx = w.ctx.copy()
        sents: List[str] = []

        def say(kind, names, allow_pronoun, scene=None, obj=None):
            sent = w.sentence(kind, names, allow_pronoun, scene=scene, obj=obj)
            parsed = parse_sentence(sent, w.ctx)
            if parsed is None or apply_sentence(parsed, w.ctx) is None:
                raise AssertionError(f"generated sentence does not parse: {sent!r} ({story_id(seed, index)})")
            sents.append(sent)

        if anchor:
            if f > 0 and rng.random() < 0.3:  # a scene change at a chunk start, told self-contained
                scene = _choice(rng, [s for s in SCENES if s != scene])
                since_travel = 0
            say("at", present, False, scene=scene)
            if obj is not None:
                say("has", [obj["holder"]], True, obj=obj["name"])
        else:
            absent = [c for c in cast if c not in present]
            options = [("act", 3.0)]
            if since_travel >= 4:
                options.append(("travel", 1.5))
            if absent and len(present) < MAX_PRESENT:
                options.append(("arrive", 1.5))
            if len(present) >= 2:
                options.append(("leave", 0.8))
            if obj is None:
                options.append(("bring", 1.5))
            else:
                options.append(("play", 2.0))
                options.append(("putaway", 0.6))
                if obj["name"] == "cake":
                    options.append(("eat", 2.0))
            kinds, weights = zip(*options)
            p = np.asarray(weights) / sum(weights)
            event = kinds[int(rng.choice(len(kinds), p=p))]
            if event == "act":
                who = _subset(rng, present, 1, 2)
                say(_choice(rng, ["jump", "wave", "dance", "sleep", "walk"]), who, True)
            elif event == "travel":
                scene = _choice(rng, [s for s in SCENES if s != scene])
                present = _subset(rng, present, 1) if rng.random() < 0.3 else present
                say("travel", present, True, scene=scene)
                since_travel = -1
            elif event == "arrive":
                who = _subset(rng, absent, 1, min(2, MAX_PRESENT - len(present)))
                say(_choice(rng, ["arrive", "hello"]), who, False)
                if rng.random() < 0.4:
                    say(_choice(rng, ["jump", "wave", "dance"]), who, True)
            elif event == "leave":
                who = _subset(rng, present, 1, len(present) - 1)
                say("leave", who, True)
            elif event == "bring":
                who = _choice(rng, present)
                name = _choice(rng, OBJECT_NAMES)
                say("bring", [who], True, obj=name)
                if rng.random() < 0.4:
                    if name == "cake":
                        say("eat", [who], True)
                    else:
                        say("play", [who], True, obj=name)
            elif event == "play":
                say("play", _subset(rng, present, 1, 2), True, obj=obj["name"])
            elif event == "eat":
                say("eat", _subset(rng, present, 1, 2), True)
            elif event == "putaway":
                say("putaway", [obj["holder"]], True, obj=obj["name"])
        caption = " ".join(sents)
        res = _apply_caption(caption, frame_ctx)
        if res is None:  # the generator and the grammar disagree: a bug
            raise AssertionError(f"generated caption does not parse: {caption!r} ({story_id(seed, index)})")
        new_ctx, attrs, _ = res
        w.ctx = new_ctx
        # bookkeeping from the parsed state (single source of truth)
        present = list(new_ctx.present)
        obj = dict(new_ctx.objects[0]) if new_ctx.objects else None
        scene = new_ctx.scene
        since_travel += 1
        captions.append(caption)
        attrs["looks"] = {n: dict(all_looks[n]) for n in attrs["present"]}
        attributes.append(attrs)
    return {
        "id": story_id(seed, index),
        "captions": captions,
        "attributes": attributes,
        "cast": list(cast),
        "looks": {n: dict(all_looks[n]) for n in cast},
        "world": looks,
    }


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------

_BLACK = (20, 20, 20)
_WHITE = (255, 255, 255)


def _draw_background(d: ImageDraw.ImageDraw, scene: str, S: int) -> None:
    def box(x0, y0, x1, y1, col):
        d.rectangle([int(x0 * S), int(y0 * S), int(round(x1 * S)) - 1, int(round(y1 * S)) - 1], fill=col)

    if scene == "park":
        box(0, 0, 1, 0.62, (135, 200, 250))
        box(0, 0.62, 1, 1, (80, 170, 70))
        d.ellipse([int(0.84 * S), int(0.04 * S), int(0.96 * S), int(0.16 * S)], fill=(250, 210, 40))
    elif scene == "beach":
        box(0, 0, 1, 0.48, (160, 220, 255))
        box(0, 0.48, 1, 0.64, (30, 100, 190))
        box(0, 0.64, 1, 1, (235, 210, 140))
    elif scene == "kitchen":
        box(0, 0, 1, 0.64, (240, 228, 200))
        box(0.06, 0.08, 0.3, 0.3, (170, 220, 250))
        tile = max(2, S // 8)
        y0 = int(0.64 * S)
        for y in range(y0, S, tile):
            for x in range(0, S, tile):
                col = (250, 250, 250) if ((x // tile + (y - y0) // tile) % 2 == 0) else (190, 190, 190)
                d.rectangle([x, y, x + tile - 1, y + tile - 1], fill=col)
    elif scene == "forest":
        box(0, 0, 1, 0.64, (70, 130, 70))
        for cx in (0.1, 0.35, 0.65, 0.9):
            d.polygon(
                [
                    (int((cx - 0.1) * S), int(0.4 * S)),
                    (int(cx * S), int(0.02 * S)),
                    (int((cx + 0.1) * S), int(0.4 * S)),
                ],
                fill=(25, 80, 35),
            )
        box(0, 0.64, 1, 1, (120, 85, 50))
    elif scene == "night":
        box(0, 0, 1, 0.64, (20, 25, 70))
        box(0, 0.64, 1, 1, (45, 50, 65))
        d.ellipse([int(0.8 * S), int(0.05 * S), int(0.94 * S), int(0.19 * S)], fill=(240, 240, 200))
        for sx, sy in ((0.1, 0.1), (0.3, 0.22), (0.45, 0.06), (0.62, 0.3), (0.2, 0.4), (0.72, 0.12), (0.9, 0.4)):
            r = max(1, S // 64)
            d.rectangle([int(sx * S), int(sy * S), int(sx * S) + r - 1, int(sy * S) + r - 1], fill=(255, 255, 230))
    else:
        raise ValueError(f"unknown scene {scene!r}")


def _draw_object(d: ImageDraw.ImageDraw, name: str, cx: float, top: float, S: int) -> None:
    """Draw object ``name`` belonging to a character centred at x=cx whose body top is at y=top (fractions)."""
    col = OBJECTS[name][1]
    P = lambda x, y: (int(round(x * S)), int(round(y * S)))  # noqa: E731
    side = 0.13 if cx <= 0.5 else -0.13
    if name == "ball":
        x = cx + side * 0.6
        d.ellipse([*P(x - 0.05, 0.885), *P(x + 0.05, 0.985)], fill=col)
    elif name == "cake":
        d.rectangle([*P(cx - 0.09, 0.9), *P(cx + 0.09, 0.985)], fill=(255, 240, 215))
        d.rectangle([*P(cx - 0.09, 0.875), *P(cx + 0.09, 0.91)], fill=col)
    elif name == "book":
        d.rectangle([*P(cx - 0.06, top + 0.13), *P(cx + 0.06, top + 0.22)], fill=col)
    elif name == "kite":
        kx, ky = cx + side, 0.14
        d.line([P(kx, ky + 0.08), P(cx + side * 0.6, top + 0.1)], fill=_BLACK, width=1)
        d.polygon([P(kx, ky - 0.08), P(kx + 0.06, ky), P(kx, ky + 0.08), P(kx - 0.06, ky)], fill=col)
    elif name == "balloon":
        bx = cx + side * 0.8
        d.line([P(bx, 0.24), P(cx + side * 0.6, top + 0.1)], fill=_BLACK, width=1)
        d.ellipse([*P(bx - 0.05, 0.08), *P(bx + 0.05, 0.24)], fill=col)
    elif name == "umbrella":
        d.line([P(cx, top - 0.16), P(cx, top - 0.02)], fill=_BLACK, width=1)
        d.pieslice([*P(cx - 0.14, top - 0.3), *P(cx + 0.14, top - 0.04)], 180, 360, fill=col)


def _draw_character(
    d: ImageDraw.ImageDraw, c: Character, cx: float, action: str, S: int, look: Optional[Dict[str, str]] = None
) -> float:
    """Draw a character centred at x=cx with ``look`` (default its fixed one); returns the y of its body top
    (fraction of S)."""
    look = look or FIXED_LOOKS[c.name]
    colour, accessory = LOOK_COLOURS[look["colour"]], look["accessory"]
    P = lambda x, y: (int(round(x * S)), int(round(y * S)))  # noqa: E731
    lw = max(1, S // 40)
    hw, h = 0.11, 0.26
    ground = 0.86
    leg = 0.07
    lift = 0.1 if action == "jump" else 0.0
    if action == "sleep":
        bottom = ground - 0.01
    else:
        bottom = ground - leg - lift
    top = bottom - h
    # legs
    if action != "sleep":
        for dx in (-0.045, 0.045):
            fx = cx + dx
            if action == "walk":
                fx = cx + dx * 2.2
            elif action == "jump":
                fx = cx + dx * 1.6
            d.line([P(cx + dx, bottom), P(fx, bottom + leg)], fill=_BLACK, width=lw)
    # arms
    if action in ("wave", "dance", "play", "eat"):
        ys = {"wave": (-0.1,), "dance": (-0.1, -0.1), "play": (0.05, 0.05), "eat": (0.05,)}[action]
        for k, dy in enumerate(ys):
            sgn = 1 if k == 0 else -1
            x0 = cx + sgn * hw * 0.8
            d.line([P(x0, top + 0.12), P(x0 + sgn * 0.08, top + 0.12 + dy)], fill=_BLACK, width=lw)
    # body
    col = colour
    if c.shape == "circle":
        d.ellipse([*P(cx - hw - 0.01, top), *P(cx + hw + 0.01, bottom)], fill=col)
    elif c.shape == "square":
        d.rectangle([*P(cx - hw, top), *P(cx + hw, bottom)], fill=col)
    elif c.shape == "triangle":
        d.polygon([P(cx, top - 0.02), P(cx + hw + 0.02, bottom), P(cx - hw - 0.02, bottom)], fill=col)
    elif c.shape == "diamond":
        mid = (top + bottom) / 2
        d.polygon([P(cx, top - 0.02), P(cx + hw + 0.02, mid), P(cx, bottom), P(cx - hw - 0.02, mid)], fill=col)
    elif c.shape == "tall":
        d.rectangle([*P(cx - hw * 0.75, top - 0.04), *P(cx + hw * 0.75, bottom)], fill=col)
        top = top - 0.04
    # eyes
    ey = top + 0.09 if c.shape in ("triangle", "diamond") else top + 0.07
    er = 0.03
    for dx in (-0.04, 0.04):
        ex = cx + dx
        if action == "sleep":
            d.line([P(ex - er, ey), P(ex + er, ey)], fill=_BLACK, width=lw)
        else:
            d.ellipse([*P(ex - er, ey - er), *P(ex + er, ey + er)], fill=_WHITE)
            d.rectangle([*P(ex - 0.008, ey - 0.008), *P(ex + 0.008, ey + 0.008)], fill=_BLACK)
    if accessory == "glasses" and action != "sleep":
        for dx in (-0.04, 0.04):
            d.ellipse(
                [*P(cx + dx - er - 0.01, ey - er - 0.01), *P(cx + dx + er + 0.01, ey + er + 0.01)],
                outline=_BLACK,
                width=lw,
            )
    if action == "eat":
        d.ellipse([*P(cx - 0.025, ey + 0.06), *P(cx + 0.025, ey + 0.1)], fill=_BLACK)
    # accessory on top
    if accessory == "hat":
        d.rectangle([*P(cx - 0.1, top + 0.005), *P(cx + 0.1, top + 0.025)], fill=_BLACK)
        d.rectangle([*P(cx - 0.06, top - 0.1), *P(cx + 0.06, top + 0.01)], fill=_BLACK)
    elif accessory == "bow":
        tx, ty = cx, top - 0.02
        d.polygon([P(tx, ty), P(tx - 0.07, ty - 0.05), P(tx - 0.07, ty + 0.04)], fill=(255, 170, 210))
        d.polygon([P(tx, ty), P(tx + 0.07, ty - 0.05), P(tx + 0.07, ty + 0.04)], fill=(255, 170, 210))
    elif accessory == "crown":
        ty = top - 0.02
        d.polygon(
            [
                P(cx - 0.07, ty),
                P(cx - 0.07, ty - 0.08),
                P(cx - 0.035, ty - 0.04),
                P(cx, ty - 0.09),
                P(cx + 0.035, ty - 0.04),
                P(cx + 0.07, ty - 0.08),
                P(cx + 0.07, ty),
            ],
            fill=(230, 190, 0),
        )
    elif accessory == "cap":
        d.pieslice([*P(cx - 0.08, top - 0.07), *P(cx + 0.08, top + 0.05)], 180, 360, fill=(40, 60, 200))
        d.rectangle([*P(cx, top - 0.015), *P(cx + 0.13, top - 0.005)], fill=(40, 60, 200))
    return top


def render_frame(attrs: Dict[str, Any], size: int = 64) -> Image.Image:
    """Draw one frame from its attributes (``background``, ``positions``/``present``, ``objects``, ``action``,
    ``actors``, and ``looks``: ``{name: {"colour", "accessory"}}``, a character without one has its fixed look).
    Pure PIL, no anti-aliasing: every character/object colour appears exactly in the image."""
    if not (32 <= int(size) <= 512):
        raise ValueError(f"size must be in [32, 512], found {size}")
    S = int(size)
    img = Image.new("RGB", (S, S))
    d = ImageDraw.Draw(img)
    _draw_background(d, attrs["background"], S)
    positions = attrs.get("positions") or slot_layout(attrs.get("present", []))
    actors = set(attrs.get("actors") or [])
    action = attrs.get("action") or "stand"
    tops = {}
    held = {o["holder"]: o["name"] for o in attrs.get("objects", [])}
    for name in sorted(positions, key=_CHAR_INDEX.__getitem__):
        cx = _SLOT_X[positions[name]]
        a = action if name in actors else "stand"
        # ground objects are drawn first so the character stands behind them
        if held.get(name) in ("ball", "cake"):
            _draw_object(d, held[name], cx, 0.5, S)
        tops[name] = _draw_character(d, _CHAR[name], cx, a, S, (attrs.get("looks") or {}).get(name))
        if held.get(name) not in (None, "ball", "cake"):
            _draw_object(d, held[name], cx, tops[name], S)
    return img


def render_story(story: Dict[str, Any], size: int = 64) -> List[Image.Image]:
    """Render every frame of a story from its ``attributes``."""
    return [render_frame(a, size) for a in story["attributes"]]


#: Background of a cast-sheet picture (:func:`render_cast_picture`): plain light grey, no place.
CAST_BACKGROUND = (225, 225, 225)


def render_cast_picture(name: str, look: Optional[Dict[str, str]] = None, size: int = 64) -> Image.Image:
    """A cast-sheet reference picture: character ``name`` standing alone in the centre, with ``look`` (default its
    fixed look), on a plain :data:`CAST_BACKGROUND` (no place). What the Story Cast node is given for a character.

    Raises:
        ValueError: an unknown name, look or size.
    """
    if name not in _CHAR:
        raise ValueError(f"unknown character {name!r}; StoryStream-mini has {CHARACTER_NAMES}")
    if look is not None and (look.get("colour") not in LOOK_COLOURS or look.get("accessory") not in ACCESSORIES):
        raise ValueError(f"look must be {{'colour': one of {tuple(LOOK_COLOURS)}, 'accessory': one of {ACCESSORIES}}}")
    if not (32 <= int(size) <= 512):
        raise ValueError(f"size must be in [32, 512], found {size}")
    S = int(size)
    img = Image.new("RGB", (S, S), CAST_BACKGROUND)
    _draw_character(ImageDraw.Draw(img), _CHAR[name], 0.5, "stand", S, look)
    return img


def cast_pictures(story: Dict[str, Any], size: int = 64) -> List[Tuple[str, Image.Image]]:
    """The cast sheet of a story: ``[(name, picture)]`` for every character of ``story["cast"]`` (canonical order),
    drawn with the story's looks (:func:`render_cast_picture`)."""
    looks = story.get("looks") or {}
    return [(n, render_cast_picture(n, looks.get(n), size)) for n in story.get("cast", [])]


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


def make_records(
    seed: int, stories: int, size: int = 64, frames: int = 30, start: int = 0, looks: str = "story"
) -> List[Dict[str, Any]]:
    """In-memory StoryStream-mini records ``{"id", "images": [PIL], "captions", "attributes", "looks",
    "cast": [{"name", "image": PIL}]}`` (no disk I/O)."""
    out = []
    for k in range(start, start + stories):
        st = generate_story(seed, k, frames, looks=looks)
        out.append(
            {
                "id": st["id"],
                "images": render_story(st, size),
                "captions": st["captions"],
                "attributes": st["attributes"],
                "looks": st["looks"],
                "cast": [{"name": n, "image": im} for n, im in cast_pictures(st, size)],
            }
        )
    return out


def generate_dataset(
    out_dir, seed: int, stories: int, size: int = 64, frames: int = 30, chunk_len: int = 10, looks: str = "story"
) -> Dict[str, Any]:
    """Write a StoryStream-mini dataset (see the module doc for the layout; ``looks``: :func:`generate_story`).
    Every record also lists its cast sheet, ``"cast": [{"name", "image"}]`` (``images/<id>/cast_<name>.png``,
    :func:`render_cast_picture`), and ``"looks"``. Returns a summary dict."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    records = []
    for k in range(stories):
        st = generate_story(seed, k, frames, anchor_every=chunk_len, looks=looks)
        sdir = out / "images" / st["id"]
        sdir.mkdir(parents=True, exist_ok=True)
        paths = []
        for f, a in enumerate(st["attributes"]):
            rel = f"{st['id']}/{f:02d}.png"
            render_frame(a, size).save(out / "images" / rel, optimize=False, compress_level=1)
            paths.append(rel)
        cast = []
        for name, im in cast_pictures(st, size):
            rel = f"{st['id']}/cast_{name}.png"
            im.save(out / "images" / rel, optimize=False, compress_level=1)
            cast.append({"name": name, "image": rel})
        records.append(
            {
                "id": st["id"],
                "images": paths,
                "captions": st["captions"],
                "orders": list(range(frames)),
                "attributes": st["attributes"],
                "looks": st["looks"],
                "cast": cast,
            }
        )
    write_jsonl(records, out / "stories.jsonl")
    chunks = chunk_stories(records, chunk_len, keep=("attributes", "source_id"), keep_whole=("cast", "looks"))
    write_jsonl(chunks, out / f"chunks{chunk_len}.jsonl")
    meta = {
        "generator": "seedstory_core.data.mini",
        "seed": seed,
        "stories": stories,
        "frames": frames,
        "size": size,
        "chunk_len": chunk_len,
        "looks": looks,
        "characters": [c.__dict__ for c in CHARACTERS],
        "scenes": list(SCENES),
        "objects": list(OBJECT_NAMES),
        "actions": list(ACTIONS),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return {"stories": len(records), "chunks": len(chunks), "seconds": time.perf_counter() - t0, "out": str(out)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m seedstory_core.data.mini", description="Generate a StoryStream-mini dataset."
    )
    ap.add_argument("--seed", type=int, required=True, help="dataset seed (different seeds = disjoint stories)")
    ap.add_argument("--stories", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--size", type=int, default=64, help="image size in px (64-96 recommended)")
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--chunk-len", type=int, default=10)
    ap.add_argument(
        "--looks",
        choices=LOOK_MODES,
        default="story",
        help="story (default): every story draws its characters' colours and accessories; fixed: one look each",
    )
    a = ap.parse_args(argv)
    info = generate_dataset(a.out, a.seed, a.stories, a.size, a.frames, a.chunk_len, looks=a.looks)
    print(f"{info['stories']} stories, {info['chunks']} chunks -> {info['out']} in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
