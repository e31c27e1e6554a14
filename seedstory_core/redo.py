"""Redo one frame of a finished story: the story record, and a redo from frame k.

A :class:`StoryRecord` is what a finished story run keeps for a redo: the story state before every frame (states are
immutable values, :mod:`seedstory_core.story`), the sentences, the rendered frames, and the run's plan (mode,
per-step texts, decoding settings, render options). :func:`redo_frame` rebuilds frame ``k`` from the state before it
with a new seed (and, optionally, a new sentence), then the frames after it, either

* ``keep_sentences``: re-drawn with their sentences kept (each step in visualization mode, the StoryGPT-V task), or
* ``continue``: continued as the run itself would have gone on from the new frame (the run's mode and texts).

The frames and states before ``k`` are the record's own objects, reused untouched, so they are bit-identical; the
cost is one frame plus the frames after it, not the whole story (``python -m bench.redo_bench``).

Memory (what a record holds beyond the final state): the states share their KV buffers copy-on-write
(:mod:`seedstory_core.cache`): a step forks the previous state's cache and appends in place while it owns the
buffer's tail, so states are views of one buffer until the cache policy first evicts (once ``window_images`` images
are stored); from then on every step's eviction writes a new buffer of about the window's size (plus headroom), which
the record keeps alive. :meth:`StoryRecord.nbytes` counts it, each buffer once. Measured on the bundled tiny model
(default policy, W=8; the final state itself holds 5.2-5.8 MB of KV): 9 frames 10.3 MB (the final state's own
buffers: nothing extra), 12 frames 34.7 MB, 25 frames 142 MB, i.e. about 8 MB (1.4 window-sized caches) per frame
after the 9th; dense policy: nothing extra at any length (``tests/core/test_redo.py``). Full-size SEED-Story
(Llama-2-7B, bf16: 0.5 MB of KV per token, a ~700-token window) would keep ~0.5 GB per frame after the 9th on the
agent's device: ~1.5 GB for a 12-frame story, ~8 GB for 25 frames (estimated, not measured).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .cache import StoryKVCache
from .consistency import RetryReport, RetrySettings
from .rules import check_mode
from .story import DecodingSettings, StepResult, StoryEngine, StoryState
from .retry_render import StoryRetry

#: How the frames after the redone one are made (:func:`redo_frame`'s ``after``).
REDO_AFTER = ("keep_sentences", "continue")


@dataclass(frozen=True, eq=False)
class StoryRecord:
    """A finished story, as a redo needs it (immutable).

    Attributes:
        states: ``N + 1`` :class:`~seedstory_core.story.StoryState`: ``states[j]`` is the story after ``j`` steps, so
            ``states[k - 1]`` is the state before frame ``k`` and ``states[N]`` the final state.
        frames: ``N + 1`` rendered frames (frame 0 is the start picture), any objects (the nodes keep ComfyUI IMAGE
            tensors [1, H, W, 3] float32); this module never looks inside them.
        mode: the run's mode (:data:`seedstory_core.rules.STORY_MODES`).
        texts: ``N`` per-step user texts of the run (``texts[k - 1]`` for frame ``k``; '' = free), as
            :meth:`StoryEngine.run` takes them.
        decoding: the run's :class:`~seedstory_core.story.DecodingSettings`.
        render: the render options of the frames (opaque here; a ``seed`` key is replaced by a redo's seed).
        retry: the consistency retry the story was drawn with (:class:`~seedstory_core.consistency.RetrySettings`;
            None: off). A redo applies it again to the frames it draws when given an ``encode``
            (:func:`redo_frame`).
        retry_frames: empty, or ``N`` per-frame costs of the retry
            (:meth:`~seedstory_core.consistency.RetryReport.frame_entry` dicts; None = that frame was drawn without
            it); :meth:`retry_report` sums them.

    Raises:
        ValueError: the lengths do not fit (``N + 1`` states and frames, ``N`` texts, ``N >= 1``, ``retry_frames``
            empty or ``N``), or an unknown mode.
    """

    states: Tuple[StoryState, ...]
    frames: Tuple[Any, ...]
    mode: str
    texts: Tuple[str, ...]
    decoding: DecodingSettings = DecodingSettings()
    render: Mapping[str, Any] = field(default_factory=dict)
    retry: Optional[RetrySettings] = None
    retry_frames: Tuple[Optional[Mapping[str, Any]], ...] = ()

    def __post_init__(self):
        check_mode(self.mode)
        n = len(self.states) - 1
        if n < 1 or len(self.frames) != n + 1 or len(self.texts) > n:
            raise ValueError(
                f"a story record needs N + 1 states and frames and at most N texts for N >= 1 steps; got "
                f"{len(self.states)} states, {len(self.frames)} frames, {len(self.texts)} texts"
            )
        if len(self.retry_frames) not in (0, n):
            raise ValueError(
                f"a story record of {n} steps needs no retry costs or one per step; got {len(self.retry_frames)}"
            )
        texts = tuple(str(t or "").strip() for t in self.texts) + ("",) * (n - len(self.texts))
        object.__setattr__(self, "retry_frames", tuple(self.retry_frames))
        object.__setattr__(self, "states", tuple(self.states))
        object.__setattr__(self, "frames", tuple(self.frames))
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "render", dict(self.render))

    @classmethod
    def from_run(
        cls,
        start: StoryState,
        results: Sequence[StepResult],
        frames: Sequence[Any],
        *,
        mode: str,
        texts: Sequence[Optional[str]] = (),
        decoding: DecodingSettings = DecodingSettings(),
        render: Optional[Mapping[str, Any]] = None,
        retry: Optional[RetrySettings] = None,
        retry_frames: Sequence[Optional[Mapping[str, Any]]] = (),
    ) -> "StoryRecord":
        """The record of :meth:`StoryEngine.run`'s story: its start state, its step results and the frames (and
        the consistency retry it was drawn with, with its per-frame costs)."""
        return cls(
            states=(start,) + tuple(r.state for r in results),
            frames=tuple(frames),
            mode=mode,
            texts=tuple(texts),
            decoding=decoding,
            render=dict(render or {}),
            retry=retry,
            retry_frames=tuple(retry_frames),
        )

    # ------------------------------------------------------------------ reading
    @property
    def steps(self) -> int:
        """N, the generated frames (the story has N + 1 frames with the start picture)."""
        return len(self.states) - 1

    @property
    def final_state(self) -> StoryState:
        return self.states[-1]

    @property
    def sentences(self) -> Tuple[str, ...]:
        """The N + 1 sentences (the opening one first), from the final state."""
        return self.final_state.sentences

    def retry_report(self) -> Optional[RetryReport]:
        """What the consistency retry cost over the story's frames as they are now (after any redo), or None when
        no frame was drawn with it."""
        if not any(e is not None for e in self.retry_frames):
            return None
        return RetryReport.from_entries(self.retry_frames)

    def check_frame(self, frame: int) -> int:
        """``frame`` as an int when a redo can rebuild it (1..N).

        Raises:
            ValueError: frame 0 (the start picture is given, not generated) or a frame the story does not have.
        """
        if isinstance(frame, bool) or not isinstance(frame, int):
            raise ValueError(f"frame must be an integer from 1 to {self.steps}, got {frame!r}")
        if not 1 <= frame <= self.steps:
            why = "frame 0 is the start picture, which is given, not generated; " if frame == 0 else ""
            raise ValueError(
                f"frame {frame} cannot be redone: {why}this story has frames 0 to {self.steps}; "
                f"pick a frame from 1 to {self.steps}"
            )
        return int(frame)

    def nbytes(self) -> int:
        """Bytes the record's states hold, each shared buffer or tensor counted once (allocated KV buffers, image
        features, logits); the frames are not counted."""
        seen: Dict[int, int] = {}
        for state in self.states:
            for key, size in _state_storage(state):
                seen[key] = size
        return sum(seen.values())

    def get_ram_usage(self) -> int:
        """:meth:`nbytes` plus the frames' tensors (ComfyUI's RAM-pressure cache asks outputs for it)."""
        frames = sum(f.numel() * f.element_size() for f in self.frames if isinstance(f, torch.Tensor))
        return self.nbytes() + frames

    def __repr__(self) -> str:
        return f"StoryRecord(frames={self.steps + 1}, mode={self.mode}, policy={self.final_state.settings.policy.kind})"


def _state_storage(state: StoryState):
    """(storage key, bytes) of every tensor storage ``state`` keeps alive (a KV buffer is one storage)."""
    context = state.context
    if isinstance(context, StoryKVCache):
        for layer in context.layers:
            if layer.is_initialized:
                yield id(layer.buffer.keys), layer.buffer.nbytes()
    else:
        for t in context.features:
            yield t.data_ptr(), t.numel() * t.element_size()
    for t in (state.next_logits, state.pending_image, state.last_features):
        if t is not None:
            yield t.data_ptr(), t.numel() * t.element_size()


def _plan(record: StoryRecord, k: int, frame: int, sentence: Optional[str], after: str, decoding: DecodingSettings):
    """(text, mode, decoding) of the step that makes ``frame`` in a redo of frame ``k``."""
    if frame == k:
        if sentence:
            return sentence, "visualization", decoding
        return record.texts[k - 1] or None, record.mode, decoding
    if after == "continue":
        return record.texts[frame - 1] or None, record.mode, decoding
    kept = record.sentences[frame]
    if kept.strip():
        return kept, "visualization", decoding
    # an empty sentence is kept by forcing the image right away (visualization mode needs a text)
    return None, "generation", dataclasses.replace(decoding, max_sentence_tokens=0)


def _costs_after_redo(record: StoryRecord, k: int, costs: List[Optional[Mapping[str, Any]]]):
    """The retry costs of a redo's record: the record's own for frames 1..k-1 (None where it kept none), ``costs``
    for frames k..N."""
    before = record.retry_frames[: k - 1] if record.retry_frames else (None,) * (k - 1)
    return tuple(before) + tuple(costs)


def redo_frame(
    engine: StoryEngine,
    record: StoryRecord,
    frame: int,
    *,
    seed: int,
    render: Callable[[int, StepResult], Any],
    sentence: Optional[str] = None,
    after: str = "keep_sentences",
    cancel: Optional[Callable[[], bool]] = None,
    on_frame: Optional[Callable[[int, StepResult], None]] = None,
    encode: Optional[Callable[[Any], torch.Tensor]] = None,
) -> StoryRecord:
    """Rebuild frame ``frame`` (k) of ``record`` and the frames after it; a new record (``record`` is untouched).

    Frame k is made from the state before it (``record.states[k - 1]``) with ``seed`` as the decoding seed: from
    ``sentence`` in visualization mode when one is given, else with the run's own mode and text for that frame. The
    frames after it: ``after="keep_sentences"`` draws each with its recorded sentence (visualization mode);
    ``"continue"`` runs them as the story itself would (the run's mode and texts). Frames and states before k are
    the record's own objects. With greedy decoding and no new sentence, frame k's sentence and features come out as
    before and only the rendering changes (the render seed).

    Args:
        engine: the engine of the record's policy and model (:func:`seedstory_core.story.engine_for`).
        record: the story (:class:`StoryRecord`).
        frame: k, 1..N.
        seed: the new seed, for the decoding (sampling) and, through ``render``, the render noise.
        render: ``render(frame_index, result) -> frame`` renders a new frame (``result``: its
            :class:`~seedstory_core.story.StepResult`); it is given the new seed through the caller.
        sentence: the new sentence for frame k ('' or None = keep the run's text for it).
        after: one of :data:`REDO_AFTER`.
        cancel: polled inside every step (:class:`~seedstory_core.story.StoryCancelled`).
        on_frame: ``on_frame(frame_index, result)`` after each new frame is rendered (progress, streaming).
        encode: ``encode(picture) -> (1, T, D)`` visual-tokenizer features of a frame. When given and the story was
            drawn with the consistency retry (``record.retry``), every new frame goes through the same retry
            (:class:`~seedstory_core.retry_render.StoryRetry`, references rebuilt from the frames before k with
            :meth:`~seedstory_core.retry_render.StoryRetry.resume`), and ``render`` is called as
            ``render(frame_index, result, seed=s)`` for each drawing (``s``: ``seed`` for the first one, other seeds
            for the redraws). Without it the new frames are drawn once each and their retry costs are None.

    Returns:
        :class:`StoryRecord` with frames 0..k-1 and states 0..k-1 shared with ``record``, the rest new; its ``texts``
        carry the new sentence of frame k (when given), its decoding and render seed are ``seed``; it keeps
        ``record.retry`` and the retry costs of frames 1..k-1, with the new frames' costs after them.

    Raises:
        ValueError: a frame the story does not have (:meth:`StoryRecord.check_frame`), an unknown ``after``, a seed
            that is not an int >= 0, or what :meth:`StoryEngine.step` refuses (another model's story, bad text).
        StoryCancelled: ``cancel()`` returned True.
    """
    k = record.check_frame(frame)
    if after not in REDO_AFTER:
        raise ValueError(f"after must be one of {REDO_AFTER}, got {after!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    sentence = str(sentence or "").strip()
    decoding = dataclasses.replace(record.decoding, seed=seed)
    state = record.states[k - 1]
    if state.last_features.device != engine.device:
        state = state.to(engine.device)
    states: List[StoryState] = []
    frames: List[Any] = []
    costs: List[Optional[Mapping[str, Any]]] = []
    retry = None
    if encode is not None and record.retry is not None:
        retry = StoryRetry.resume(
            record.retry,
            encode,
            cast=record.states[0].cast,
            opening=record.sentences[0],
            start_features=record.states[0].last_features,
            kept=list(zip(record.sentences[1:k], record.frames[1:k])),
        )
    for i in range(k, record.steps + 1):
        text, mode, dec = _plan(record, k, i, sentence, after, decoding)
        result = engine.step(state, text=text, mode=mode, decoding=dec, cancel=cancel)
        if retry is None:
            frames.append(render(i, result))
            costs.append(None)
        else:
            outcome = retry.draw(
                result.sentence, lambda s, _redraw, i=i, result=result: render(i, result, seed=s), seed
            )
            frames.append(outcome.picture)
            costs.append(RetryReport.frame_entry(outcome))
        if on_frame is not None:
            on_frame(i, result)
        state = result.state
        states.append(state)
    texts = list(record.texts)
    if sentence:
        texts[k - 1] = sentence
    return StoryRecord(
        states=record.states[:k] + tuple(states),
        frames=record.frames[:k] + tuple(frames),
        mode=record.mode,
        texts=tuple(texts),
        decoding=decoding,
        render={**record.render, "seed": seed} if "seed" in record.render else record.render,
        retry=record.retry,
        retry_frames=_costs_after_redo(record, k, costs) if (record.retry_frames or retry is not None) else (),
    )
