"""The consistency retry around a renderer: what Generate Story and Story Step run for each frame.

:mod:`seedstory_core.consistency` holds the pieces (look references, the similarity, the redraw loop, the report);
this module ties them to a story's frames, with the renderer and the visual tokenizer given as plain callables, so
it knows nothing of ComfyUI:

* ``draw(seed, redraw) -> picture``: one drawing of the frame with that de-tokenizer seed (``redraw`` 0 is the
  first drawing, 1.. the redraws; a caller may show progress for the first one only);
* ``encode(picture) -> (1, T, D)`` visual-tokenizer features of a picture (what the look similarity compares).

:class:`StoryRetry` keeps one story's references (the cast sheet's pictures, else each character's first appearance
among the kept frames) and the cost of the retry (:class:`~seedstory_core.consistency.RetryReport`). The story itself
(sentences, regressed features, cache) is never changed: only the picture of a frame is redrawn.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

import torch

from .cast import CastSheet
from .consistency import (
    DEFAULT_RETRY_THRESHOLD,
    LookReferences,
    RetryOutcome,
    RetryReport,
    RetrySettings,
    redraw_until_consistent,
)

__all__ = ["retry_settings", "StoryRetry"]


def retry_settings(max_redraws, threshold=DEFAULT_RETRY_THRESHOLD) -> Optional[RetrySettings]:
    """The retry settings of a node's ``consistency_retry`` (N redraws per frame) and ``retry_threshold`` inputs.

    Args:
        max_redraws: int, 0..:data:`~seedstory_core.consistency.MAX_REDRAWS`; 0 turns the retry off.
        threshold: float in [-1, 1]: a frame whose look similarity is below it is redrawn.

    Returns:
        :class:`~seedstory_core.consistency.RetrySettings`, or None when ``max_redraws`` is 0 (retry off; the
        threshold is still checked).

    Raises:
        ValueError: a value of the wrong type or out of range (what was expected and what was found).
    """
    if isinstance(threshold, bool):
        raise ValueError(f"retry threshold must be a number in [-1, 1], found {threshold!r}")
    settings = RetrySettings(threshold=threshold, max_redraws=max_redraws)  # NaN fails its range check
    return settings if settings.max_redraws > 0 else None


class StoryRetry:
    """One story's consistency retry: its look references and what the retry cost.

    Args:
        settings: :class:`~seedstory_core.consistency.RetrySettings` (threshold, N redraws per frame).
        encode: ``encode(picture) -> (1, T, D)`` visual-tokenizer features of a picture.
        cast: the story's :class:`~seedstory_core.cast.CastSheet` (its pictures are the references, and only its
            names are tracked); None: each character's first appearance among the kept frames is its reference.
        names: without a cast sheet, the characters to track (None: the capitalised words of the sentences,
            :func:`~seedstory_core.consistency.named_characters`).

    Attributes:
        references: the :class:`~seedstory_core.consistency.LookReferences`.
        report: the :class:`~seedstory_core.consistency.RetryReport` over the frames drawn so far.
    """

    def __init__(
        self,
        settings: RetrySettings,
        encode: Callable[[Any], torch.Tensor],
        cast: Optional[CastSheet] = None,
        names: Optional[Sequence[str]] = None,
    ):
        self.settings = settings
        self.encode = encode
        self.references = LookReferences(cast=cast, names=names)
        self.report = RetryReport()

    @classmethod
    def resume(
        cls,
        settings: RetrySettings,
        encode: Callable[[Any], torch.Tensor],
        *,
        cast: Optional[CastSheet],
        opening: str,
        start_features: torch.Tensor,
        kept: Sequence[Tuple[str, Any]] = (),
    ) -> "StoryRetry":
        """The retry of a story whose first frames are already drawn (a redo from frame k): the references are
        rebuilt as they were when frame k was first drawn.

        Args:
            settings, encode, cast: as the constructor.
            opening: the story's opening sentence; ``start_features``: (1, T, D) features of the start picture (the
                story's first state's ``last_features``), observed first, as Generate Story does.
            kept: ``(sentence, picture)`` of frames 1..k-1 in order; each picture is encoded with ``encode`` and
                observed (a character's first appearance is the picture that was kept for it).

        Returns:
            a :class:`StoryRetry` with an empty :attr:`report` (the cost of the frames drawn from now on).
        """
        retry = cls(settings, encode, cast=cast)
        retry.observe(opening, start_features)
        for sentence, picture in kept:
            retry.observe(sentence, encode(picture))
        return retry

    def observe(self, sentence: str, features: torch.Tensor) -> None:
        """Record a frame that is not drawn here (e.g. the start picture with its sentence and (1, T, D) features):
        the characters it names that have no reference yet take it as their first appearance."""
        self.references.observe(sentence, features)

    def draw(self, sentence: str, draw: Callable[[int, int], Any], seed: int) -> RetryOutcome:
        """Draw the frame of ``sentence``, redrawn with other seeds while its characters do not look like their
        references (at most N times); the best drawing is kept, recorded as a reference for the characters seen for
        the first time, and counted in :attr:`report`.

        Args:
            sentence: the frame's sentence (names the characters to check).
            draw: ``draw(seed, redraw) -> picture`` (module docstring); called 1..N+1 times.
            seed: the first drawing's seed (redraw r uses :func:`~seedstory_core.consistency.redraw_seed`).

        Returns:
            :class:`~seedstory_core.consistency.RetryOutcome`: the kept picture, its features and score (None when
            the sentence names no character with a reference: drawn once, nothing checked), the redraws made, their
            seconds and the kept seed.
        """
        drawings = [0]

        def render(s: int):
            picture = draw(s, drawings[0])
            drawings[0] += 1
            return picture, self.encode(picture)

        outcome = redraw_until_consistent(
            render, lambda feats: self.references.score(sentence, feats), self.settings, int(seed)
        )
        self.references.observe(sentence, outcome.features)
        self.report.add(outcome)
        return outcome
