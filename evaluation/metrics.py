"""The per-frame judgement and the story metrics of the evaluation (documented in docs/evaluation.md).

A generated frame ``i`` (sentence ``s_i``, image ``x_i``) of a story that opened with ``s_0``/``x_0`` scores 1 only if
all four checks pass (:func:`judge_frame`):

1. **parses** — ``s_i`` is a StoryStream-mini caption (``mini.sentence_attributes`` with the story so far as
   context: grammar, agreement, resolvable pronouns, at most 3 characters on stage);
2. **new** — ``s_i`` is not a repeat of any earlier sentence of the story, the opening sentence included
   (compared after collapsing whitespace);
3. **continuous** — it follows StoryStream-mini's story rules from the state the story so far left
   (:func:`continuity_violations`);
4. **shown** — the judge's reading of ``x_i`` shows the place and the cast the sentence states (the scene, and
   the exact set of characters on stage after the sentence).

The story's ``score`` is the mean over its generated frames; the evaluation's ``score`` is the mean over stories
and ``score_ci95`` a bootstrap interval over stories (:func:`bootstrap_ci`).
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


def judge_frame(sentence: str, history: Sequence[str], reading: Optional[Dict]) -> Dict:
    """The per-frame judgement (module docstring).

    Args:
        sentence: the frame's generated sentence.
        history: the story's earlier sentences, the opening one first.
        reading: the judge's reading of the frame's image (``FrameJudge.predict`` item: at least ``background`` and
            ``present``), or None when there is no image (the ``shown`` check fails).

    Returns:
        ``{"parsed", "new", "continuous", "shown", "ok": bool, "stated": frame attributes or None,
        "violations": [str]}``.
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
    shown = bool(
        parsed
        and reading is not None
        and reading["background"] == attrs["background"]
        and set(reading["present"]) == set(attrs["present"])
    )
    return {
        "parsed": parsed,
        "new": new,
        "continuous": continuous,
        "shown": shown,
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


def story_metrics(sentences: Sequence[str], readings: Sequence[Dict]) -> Dict[str, float]:
    """Generation-mode metrics of one story.

    Args:
        sentences: the opening sentence then one per generated frame (n + 1 in all).
        readings: the judge's readings of all n + 1 frames, the opening frame first.

    Returns ``{"score", "score_strict", "parse_rate", "distinct_sentence_rate", "continuity_rate", "shown_rate",
    "coherence", "consistency"}``, each in 0..1, and ``"frames"`` (n). ``score_strict`` also requires the judge to
    read the stated object (or none) in the picture (a diagnostic; the judge's action reading is too unreliable to
    use, see its accuracy in ``judge.json``).
    """
    if len(sentences) != len(readings) or len(sentences) < 2:
        raise ValueError(
            f"expected the opening + >= 1 generated frame with one reading each, got {len(sentences)} "
            f"sentences and {len(readings)} readings"
        )
    judged = [judge_frame(s, sentences[:i], readings[i]) for i, s in enumerate(sentences) if i > 0]
    strict = []
    for j, rd in zip(judged, readings[1:]):
        st = j["stated"]
        extra = st is not None and rd.get("object") == (st["objects"][0]["name"] if st["objects"] else None)
        strict.append(j["ok"] and extra)
    stated0 = mini.sentence_attributes(sentences[0], [])
    states = [stated0 if stated0.get("parsed") else None] + [j["stated"] for j in judged]
    coherence = [attribute_agreement(rd, j["stated"]) if j["stated"] else 0.0 for j, rd in zip(judged, readings[1:])]
    return {
        "frames": len(judged),
        "score": float(np.mean([j["ok"] for j in judged])),
        "score_strict": float(np.mean(strict)),
        "parse_rate": float(np.mean([j["parsed"] for j in judged])),
        "distinct_sentence_rate": float(np.mean([j["new"] for j in judged])),
        "continuity_rate": float(np.mean([j["continuous"] for j in judged])),
        "shown_rate": float(np.mean([j["shown"] for j in judged])),
        "coherence": float(np.mean(coherence)),
        "consistency": picture_consistency(states, readings),
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
