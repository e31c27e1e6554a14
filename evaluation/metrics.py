"""The per-frame judgement and the story metrics of the evaluation (documented in docs/evaluation.md).

A generated frame ``i`` (sentence ``s_i``, image ``x_i``) of a story that opened with ``s_0``/``x_0`` scores 1 only if
all four checks pass (:func:`judge_frame`):

1. **parses** — ``s_i`` is a StoryStream-mini caption (``mini.sentence_attributes`` with the story so far as
   context: grammar, agreement, resolvable pronouns, at most 3 characters on stage);
2. **new** — ``s_i`` is not a repeat of any earlier sentence of the story, the opening sentence included
   (compared after collapsing whitespace);
3. **continuous** — it follows StoryStream-mini's story rules from the state the story so far left
   (:func:`continuity_violations`);
4. **shown** — the judge's reading of ``x_i`` (``FrameJudge.predict``) shows what the sentence, with the story so
   far, states. Four parts, all required (each is also returned and reported as a rate):

   a. ``shown_place`` — the place: the reading's ``background`` is the stated scene;
   b. ``shown_cast`` — the cast: the reading's ``present`` is exactly the set of characters on stage after the
      sentence;
   c. ``shown_look`` — each character on stage looks as it does in this story: the reading's look
      (``looks[slot]``: body colour AND accessory) at the character's stated (canonical) slot equals the story's
      true look ``looks[name]`` (the ``looks`` argument: ``{name: {"colour", "accessory"}}``, e.g.
      ``mini.story_looks(seed, index)``). Skipped (true) when ``looks`` is None; a character with no entry in
      ``looks`` is not look-checked, so callers should pass every character's look, not only the cast's;
   d. ``shown_action_object`` — the action and the object: when the stated frame has actors (a sentence with an
      action: ``jumps``, ``waves``, ``walks to``, ``plays with``, ...), the reading's pose (``poses[slot]``) at
      each actor's stated slot is the stated action; and the reading's ``object`` is the stated object (None when
      no object is on stage). Characters who do not act are not pose-checked.

The story's ``score`` is the mean over its generated frames; the evaluation's ``score`` is the mean over stories
and ``score_ci95`` a bootstrap interval over stories (:func:`bootstrap_ci`). ``score_strict`` is kept for callers
of earlier releases, where it added the object check to the score; the object is now part of ``shown``, so
``score_strict`` equals ``score``.

``story_metrics`` also reports each part's rate (``shown_place_rate``, ``shown_cast_rate``, ``shown_look_rate``,
``shown_action_object_rate``; an unparsable sentence's frame counts as not shown in each).

Looks across a story (:func:`story_metrics`; pairs = (generated frame, character on stage per its parsed
sentence), the look read at the character's stated slot; a slot read as empty has no look and never agrees):

* ``look_accuracy`` — the fraction of pairs whose read look (colour and accessory) is the story's true look
  ``looks[name]``; None when ``looks`` is None (or no pair has a true look);
* ``look_consistency`` — does a character keep its look: the fraction of pairs whose read look equals the
  character's reference look, which is ``reference_looks[name]`` when given (the cast sheet's looks, passed by the
  evaluation when the model was given a cast sheet; a character missing from it falls back to the next rule) and
  otherwise the look the judge read at the character's FIRST appearance in the story (the opening frame counts;
  that first appearance is the reference, not a scored pair; if the judge reads nobody at the character's slot
  there, the next appearance where it reads a figure is the reference). Pairs without a reference are skipped;
  None when no pair is left.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from seedstory_core.data import mini

#: the story generator never puts more than this many distinct characters in one story (its cast is 2-4).
MAX_CAST = 4
#: sentence kinds that may move the story to another place ("openers").
OPENERS = ("at", "travel")
_SPACE = re.compile(r"\s+")


def normalise(sentence: str) -> str:
    """A sentence as compared for repeats: stripped, runs of whitespace collapsed (case and punctuation kept)."""
    return _SPACE.sub(" ", str(sentence or "")).strip()


def context_of(history: Sequence[str]):
    """The ``mini.StoryContext`` after the captions in ``history`` (unparsable ones leave it unchanged)."""
    return mini.story_context(list(history))


def continuity_violations(caption: str, ctx, cast_so_far: Sequence[str] = ()) -> Optional[List[str]]:
    """The StoryStream-mini story rules a caption breaks, read from the state ``ctx`` the story so far left.

    The rules are the ones the story generator (``seedstory_core.data.mini.generate_story``) follows, applied
    sentence by sentence (a two-sentence caption is read in order):

    * ``at`` (``"X is at <place>."``, the chunk-start restatement): names exactly the characters on stage;
    * ``travel`` (``"X walks to <place>."``): the travellers are on stage and the place is a new one (the others
      stay behind and leave the frame);
    * ``arrive`` / ``hello``: only characters who are not on stage arrive;
    * ``leave`` (``"X goes home."``): only characters on stage leave, and somebody stays;
    * ``bring``: the bringer is on stage and nobody holds an object yet; ``has`` (restatement) repeats who holds
      which object;
    * ``play`` / ``eat`` / ``putaway``: the object is the one on stage (``eat``: the cake), the players are on stage,
      and only its holder puts it away;
    * plain actions (``jumps``, ``waves``, ``dances``, ``falls asleep``, ``walks around``): the actors are on stage;
    * at most 3 characters on stage (the parser's rule) and at most :data:`MAX_CAST` distinct characters in a story;
    * before the story has a place (an empty context) anything that parses is allowed (it opens the story).

    Args:
        caption: one caption (one or two sentences).
        ctx: the ``mini.StoryContext`` before it (:func:`context_of`).
        cast_so_far: every character named on stage so far in the story.

    Returns:
        the list of broken rules (empty: consistent), or None when the caption does not parse.
    """
    ctx = ctx.copy()
    sentences = mini.split_sentences(caption)
    if not sentences:
        return None
    broken: List[str] = []
    cast = set(cast_so_far)
    for s in sentences:
        p = mini.parse_sentence(s, ctx)
        if p is None:
            return None
        kind, subj = p["kind"], list(p["subject"])
        here = set(ctx.present)
        held = ctx.objects[0] if ctx.objects else None
        opened = ctx.scene is not None
        if opened:
            if kind == "at" and set(subj) != here:
                broken.append(f"'{s}' restates the place with {subj}, but on stage are {sorted(here)}")
            elif kind == "travel":
                if not set(subj) <= here:
                    broken.append(f"'{s}': {sorted(set(subj) - here)} travel but are not on stage")
                if p["scene"] == ctx.scene:
                    broken.append(f"'{s}': travels to the place the story is already at ({ctx.scene})")
            elif kind in ("arrive", "hello") and set(subj) & here:
                broken.append(f"'{s}': {sorted(set(subj) & here)} arrive but are already on stage")
            elif kind == "leave":
                if not set(subj) <= here:
                    broken.append(f"'{s}': {sorted(set(subj) - here)} leave but are not on stage")
                elif set(subj) == here:
                    broken.append(f"'{s}': everybody leaves")
            elif kind == "bring":
                if not set(subj) <= here:
                    broken.append(f"'{s}': {subj} brings an object but is not on stage")
                if held is not None:
                    broken.append(f"'{s}': an object ({held['name']}) is already on stage")
            elif kind == "has" and (held is None or held["name"] != p["object"] or [held["holder"]] != subj):
                broken.append(f"'{s}': restates an object nobody has ({held})")
            elif kind in ("play", "eat", "putaway"):
                want = "cake" if kind == "eat" else p["object"]
                if held is None or held["name"] != want:
                    broken.append(f"'{s}': the {want} is not on stage (held: {held['name'] if held else None})")
                if not set(subj) <= here:
                    broken.append(f"'{s}': {sorted(set(subj) - here)} are not on stage")
                if kind == "putaway" and held is not None and [held["holder"]] != subj:
                    broken.append(f"'{s}': only {held['holder']} can put the {held['name']} away")
            elif kind in ("jump", "wave", "dance", "sleep", "walk") and not set(subj) <= here:
                broken.append(f"'{s}': {sorted(set(subj) - here)} act but are not on stage")
        if mini.apply_sentence(p, ctx) is None:
            return None  # more than 3 on stage: the parser refuses it too
        cast |= set(ctx.present)
    if len(cast) > MAX_CAST:
        broken.append(f"{len(cast)} distinct characters in one story (the cast is at most {MAX_CAST})")
    return broken


def _read_look(reading: Optional[Dict], slot: Optional[str]) -> Optional[Dict[str, str]]:
    """The look (``{"colour", "accessory"}``) a reading shows at ``slot``, or None (no reading, no look readings,
    or nobody read there)."""
    if reading is None or slot is None:
        return None
    look = (reading.get("looks") or {}).get(slot)
    if not look:
        return None
    return {"colour": look.get("colour"), "accessory": look.get("accessory")}


def _same_look(read: Optional[Dict[str, str]], true: Optional[Dict[str, str]]) -> bool:
    """Colour and accessory both equal (a missing look never agrees)."""
    return (
        read is not None
        and true is not None
        and read.get("colour") == true.get("colour")
        and read.get("accessory") == true.get("accessory")
    )


def shown_parts(attrs: Dict, reading: Optional[Dict], looks: Optional[Dict[str, Dict[str, str]]] = None) -> Dict:
    """The four parts of the ``shown`` check (module docstring, check 4) for stated frame attributes ``attrs``
    (``mini.sentence_attributes``, parsed) and a judge reading (None: nothing is shown).

    Returns ``{"shown_place", "shown_cast", "shown_look", "shown_action_object": bool}``."""
    if reading is None or not attrs.get("parsed", True):
        return {"shown_place": False, "shown_cast": False, "shown_look": False, "shown_action_object": False}
    positions = attrs.get("positions") or mini.slot_layout(attrs.get("present", []))
    place = reading.get("background") == attrs["background"]
    cast = set(reading.get("present") or []) == set(attrs["present"])
    look = looks is None or all(
        _same_look(_read_look(reading, positions.get(name)), looks[name]) for name in attrs["present"] if name in looks
    )
    poses = reading.get("poses") or {}
    action = attrs.get("action") or "stand"
    acted = all(poses.get(positions.get(name)) == action for name in attrs.get("actors") or [])
    stated_object = attrs["objects"][0]["name"] if attrs.get("objects") else None
    obj = reading.get("object") == stated_object
    return {"shown_place": place, "shown_cast": cast, "shown_look": bool(look), "shown_action_object": acted and obj}


def judge_frame(
    sentence: str,
    history: Sequence[str],
    reading: Optional[Dict],
    looks: Optional[Dict[str, Dict[str, str]]] = None,
) -> Dict:
    """The per-frame judgement (module docstring).

    Args:
        sentence: the frame's generated sentence.
        history: the story's earlier sentences, the opening one first.
        reading: the judge's reading of the frame's image (a ``FrameJudge.predict`` item: ``background``,
            ``present``, ``looks`` and ``poses`` by slot, ``object``), or None when there is no image (the ``shown``
            check fails).
        looks: the story's true looks, ``{name: {"colour", "accessory"}}`` (``mini.story_looks``); None skips the
            look check.

    Returns:
        ``{"parsed", "new", "continuous", "shown", "shown_place", "shown_cast", "shown_look",
        "shown_action_object", "ok": bool, "stated": frame attributes or None, "violations": [str]}``; ``shown`` is
        the AND of its four parts, ``ok`` of parsed, new, continuous and shown.
    """
    ctx = context_of(history)
    attrs = mini.sentence_attributes(sentence, ctx) if sentence else {"parsed": False}
    parsed = bool(attrs.get("parsed"))
    new = normalise(sentence) not in {normalise(h) for h in history}
    cast = set()
    for a in mini.parse_story(list(history)):
        if a.get("parsed"):
            cast |= set(a["present"])
    violations = continuity_violations(sentence, ctx, cast) if parsed else None
    continuous = parsed and not violations
    parts = shown_parts(attrs, reading, looks) if parsed else shown_parts({}, None)
    shown = all(parts.values())
    return {
        "parsed": parsed,
        "new": new,
        "continuous": continuous,
        "shown": shown,
        **parts,
        "ok": parsed and new and continuous and shown,
        "stated": attrs if parsed else None,
        "violations": list(violations or []),
    }


def _jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def agreement_parts(reading: Dict, attrs: Dict) -> Tuple[float, float]:
    """The two halves of :func:`attribute_agreement`: (scene matches 0/1, Jaccard of the characters present).

    Reported apart by the evaluation (``visualization_background`` / ``visualization_cast``) because a system can win
    one and lose the other: redrawing the start frame keeps the cast of a story whose cast rarely changes, a model
    that follows the sentences keeps its place (docs/evaluation.md, "Where the frames disagree").
    """
    return float(reading["background"] == attrs["background"]), _jaccard(reading["present"], attrs["present"])


def attribute_agreement(reading: Dict, attrs: Dict) -> float:
    """0.5 x (scene matches) + 0.5 x Jaccard(characters present), between a reading and frame attributes."""
    background, cast = agreement_parts(reading, attrs)
    return 0.5 * background + 0.5 * cast


def picture_consistency(states: Sequence[Optional[Dict]], readings: Sequence[Dict]) -> float:
    """Does each named character look the same in every frame it is on stage? From the pictures.

    For every character the (parsed) sentences put on stage in 2 or more frames, the judge's reading of the
    figure at that character's canonical position (``reading["slots"][slot]``, the slot given by the stated
    cast) is compared over all pairs of those frames: a pair agrees when both readings name the same character
    (an empty slot never agrees). The story's value is the mean over characters of the fraction of agreeing pairs;
    0.0 when no character is on stage in 2 parsed frames.

    Args:
        states: per frame, the stated attributes (``mini.sentence_attributes``) or None (unparsable: skipped).
        readings: per frame, the judge's reading (with ``slots``).
    """
    seen: Dict[str, List[Optional[str]]] = {}
    for st, rd in zip(states, readings):
        if st is None:
            continue
        for name, slot in (st.get("positions") or {}).items():
            seen.setdefault(name, []).append(rd["slots"].get(slot))
    per_char = []
    for ids in seen.values():
        if len(ids) < 2:
            continue
        pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
        per_char.append(float(np.mean([a is not None and a == b for a, b in pairs])))
    return float(np.mean(per_char)) if per_char else 0.0


LOOK_PAIR_KEYS = ("look_accuracy", "look_consistency", "look_self_consistency")


def look_pairs(
    states: Sequence[Optional[Dict]],
    readings: Sequence[Optional[Dict]],
    looks: Optional[Dict[str, Dict[str, str]]] = None,
    reference_looks: Optional[Dict[str, Dict[str, str]]] = None,
) -> List[Dict[str, List[bool]]]:
    """The scored look pairs of one story, per frame (module docstring; the one place they are defined).

    Args:
        states: per frame, the opening frame first, the stated attributes (``mini.sentence_attributes``) or None
            (unparsable: no pair, and no first appearance).
        readings: per frame, the judge's reading (``looks`` by slot) or None.
        looks: the story's true looks (None: no ``look_accuracy`` pair).
        reference_looks: the cast sheet's looks (None: every ``look_consistency`` reference is the first appearance's
            reading).

    Returns one dict per frame (``len(states)``; frame 0, the opening, never has a pair) of :data:`LOOK_PAIR_KEYS`
    -> list of bools, one per character on stage per the parsed sentence: ``look_accuracy`` (the look read at its
    slot is ``looks[name]``), ``look_consistency`` (vs ``reference_looks[name]`` when the sheet has the character,
    else vs the look read at its first appearance) and ``look_self_consistency`` (always vs the first appearance,
    sheet or not, so systems with and without a sheet share one reference). A first appearance where a figure is read
    is the reference, not a pair; the opening frame counts as an appearance.
    """
    if len(states) != len(readings):
        raise ValueError(f"expected one reading per frame state, got {len(states)} states and {len(readings)} readings")
    out: List[Dict[str, List[bool]]] = [{k: [] for k in LOOK_PAIR_KEYS} for _ in states]
    first: Dict[str, Dict[str, str]] = {}  # the look read at each character's first appearance
    for i, (st, rd) in enumerate(zip(states, readings)):
        if st is None:
            continue
        positions = st.get("positions") or mini.slot_layout(st.get("present", []))
        for name in st.get("present", []):
            read = _read_look(rd, positions.get(name))
            same_as_first = _same_look(read, first[name]) if name in first else None  # None: the reference itself
            if name not in first and read is not None:
                first[name] = read
            if i == 0:
                continue
            if looks is not None and looks.get(name) is not None:
                out[i]["look_accuracy"].append(_same_look(read, looks[name]))
            if same_as_first is not None:
                out[i]["look_self_consistency"].append(same_as_first)
            if reference_looks is not None and reference_looks.get(name) is not None:
                out[i]["look_consistency"].append(_same_look(read, reference_looks[name]))
            elif same_as_first is not None:
                out[i]["look_consistency"].append(same_as_first)
    return out


def look_scores(
    states: Sequence[Optional[Dict]],
    readings: Sequence[Optional[Dict]],
    looks: Optional[Dict[str, Dict[str, str]]] = None,
    reference_looks: Optional[Dict[str, Dict[str, str]]] = None,
) -> Dict[str, Optional[float]]:
    """``look_accuracy`` and ``look_consistency`` of one story: the means of :func:`look_pairs` over all its frames
    (same arguments).

    Returns ``{"look_accuracy": float | None, "look_consistency": float | None}`` (None when the story has no such
    pair; ``look_accuracy`` is None without ``looks``); frame 0 (the opening) is never scored.
    """
    pairs = look_pairs(states, readings, looks, reference_looks)

    def mean(key: str) -> Optional[float]:
        flat = [p for f in pairs for p in f[key]]
        return float(np.mean(flat)) if flat else None

    return {"look_accuracy": mean("look_accuracy"), "look_consistency": mean("look_consistency")}


def story_metrics(
    sentences: Sequence[str],
    readings: Sequence[Dict],
    looks: Optional[Dict[str, Dict[str, str]]] = None,
    reference_looks: Optional[Dict[str, Dict[str, str]]] = None,
) -> Dict[str, Optional[float]]:
    """Generation-mode metrics of one story.

    Args:
        sentences: the opening sentence then one per generated frame (n + 1 in all).
        readings: the judge's readings of all n + 1 frames, the opening frame first.
        looks: the story's true looks ``{name: {"colour", "accessory"}}`` (``mini.story_looks``; pass every
            character's, not only the cast's); None skips the look check of ``shown`` and gives
            ``look_accuracy`` None.
        reference_looks: the looks of the cast sheet the model was given, if any (``look_consistency``'s
            reference; None: the first appearance's reading).

    Returns ``{"score", "score_strict", "parse_rate", "distinct_sentence_rate", "continuity_rate", "shown_rate",
    "shown_place_rate", "shown_cast_rate", "shown_look_rate", "shown_action_object_rate", "coherence",
    "consistency"}``, each in 0..1, ``"look_accuracy"`` and ``"look_consistency"`` (in 0..1, or None: see
    :func:`look_scores`) and ``"frames"`` (n). ``score_strict`` equals ``score`` (kept for earlier callers: the
    object check it added is now part of ``shown``). A ``shown_*_rate`` counts an unparsable sentence's frame as
    not shown.
    """
    if len(sentences) != len(readings) or len(sentences) < 2:
        raise ValueError(
            f"expected the opening + >= 1 generated frame with one reading each, got {len(sentences)} "
            f"sentences and {len(readings)} readings"
        )
    judged = [judge_frame(s, sentences[:i], readings[i], looks) for i, s in enumerate(sentences) if i > 0]
    stated0 = mini.sentence_attributes(sentences[0], [])
    states = [stated0 if stated0.get("parsed") else None] + [j["stated"] for j in judged]
    coherence = [attribute_agreement(rd, j["stated"]) if j["stated"] else 0.0 for j, rd in zip(judged, readings[1:])]
    score = float(np.mean([j["ok"] for j in judged]))
    rate = lambda key: float(np.mean([j[key] for j in judged]))  # noqa: E731
    return {
        "frames": len(judged),
        "score": score,
        "score_strict": score,
        "parse_rate": rate("parsed"),
        "distinct_sentence_rate": rate("new"),
        "continuity_rate": rate("continuous"),
        "shown_rate": rate("shown"),
        "shown_place_rate": rate("shown_place"),
        "shown_cast_rate": rate("shown_cast"),
        "shown_look_rate": rate("shown_look"),
        "shown_action_object_rate": rate("shown_action_object"),
        "coherence": float(np.mean(coherence)),
        "consistency": picture_consistency(states, readings),
        **look_scores(states, readings, looks, reference_looks),
    }


def bootstrap_ci(
    values: Sequence[float], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per story), resampling stories with
    replacement ``resamples`` times with ``numpy.random.default_rng(seed)``. One value gives (v, v).

    Raises ValueError for an empty list."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
