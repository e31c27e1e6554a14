"""The official story loop's context: keep no KV cache, re-encode the last W images every step.

The official ``gen_george.py`` keeps the story as a prompt, not as a cache: before each step it drops the oldest
images until at most ``window_images`` remain (the first remaining caption loses its ``[INST]``, as in training),
prepends BOS and runs the whole prompt through the LLM again (docs/reference.md §3.1, steps 4-6). This module holds
that policy (:class:`ReencodePolicy`) and the story context it keeps (:class:`ReencodeWindow`); the engine that
runs it is :class:`seedstory_core.story.ReencodeStoryEngine`. It is the baseline of the benchmarks and the
long-story ablation, not a recommended setting: every step costs a forward over the whole window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

#: The policy name used in settings, saved states and the Story Settings node.
REENCODE_WINDOW = "reencode_window"


@dataclass(frozen=True)
class ReencodePolicy:
    """The official loop: re-encode the prompt of the last ``window_images`` images at every step.

    Attributes:
        window_images: W, how many complete images (with their captions) the prompt keeps (8 in gen_george.py).
        kind: always ``reencode_window`` (read-only; the name settings and the UI use).

    Raises:
        ValueError: ``window_images`` < 1.
    """

    window_images: int = 8
    kind: str = field(default=REENCODE_WINDOW, init=False)

    def __post_init__(self):
        if isinstance(self.window_images, bool) or not isinstance(self.window_images, int) or self.window_images < 1:
            raise ValueError(f"ReencodePolicy.window_images must be an int >= 1, got {self.window_images!r}")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "window_images": self.window_images}

    @classmethod
    def from_dict(cls, data: dict) -> "ReencodePolicy":
        return cls(window_images=int(data.get("window_images", 8)))


@dataclass(frozen=True, eq=False)
class ReencodeWindow:
    """The prompt the official loop re-encodes (without BOS), and the features of its images. Immutable.

    Attributes:
        ids: token ids of the window prompt.
        kinds: their :class:`~seedstory_core.tokens.TokenKind` values.
        features: one (1, T, D) visual-tokenizer feature tensor per image in the window, in order.
        pinned: the first ``pinned`` ids are the story's cast block (:mod:`seedstory_core.cast`), re-encoded at every
            step and never dropped with the oldest images; 0 without a cast sheet.
        pinned_images: how many of ``features`` (the first ones) are the cast block's pictures.
    """

    ids: Tuple[int, ...] = ()
    kinds: Tuple[int, ...] = ()
    features: Tuple[torch.Tensor, ...] = ()
    pinned: int = 0
    pinned_images: int = 0

    #: Tokens kept in a KV cache between steps: none (the prompt is re-encoded).
    length = 0

    def nbytes(self) -> int:
        """Bytes of the stored image features."""
        return sum(t.numel() * t.element_size() for t in self.features)

    def to(self, device=None, dtype=None) -> "ReencodeWindow":
        """A copy with the features on ``device`` (cast to ``dtype`` when given)."""
        return ReencodeWindow(
            self.ids,
            self.kinds,
            tuple(t.to(device=device, dtype=dtype) for t in self.features),
            self.pinned,
            self.pinned_images,
        )

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The tensors to save: ``features.<i>``."""
        return {f"features.{i}": t.clone() for i, t in enumerate(self.features)}

    def meta_dict(self) -> dict:
        """Everything else to save (JSON)."""
        return {
            "ids": list(self.ids),
            "kinds": list(self.kinds),
            "num_features": len(self.features),
            "pinned": self.pinned,
            "pinned_images": self.pinned_images,
        }

    @classmethod
    def from_saved(
        cls, meta: dict, tensors: Dict[str, torch.Tensor], inv_freq: Optional[torch.Tensor] = None
    ) -> "ReencodeWindow":
        """Rebuild from :meth:`meta_dict` and :meth:`tensors` (``inv_freq`` is unused: nothing is rotated)."""
        return cls(
            tuple(meta["ids"]),
            tuple(meta["kinds"]),
            tuple(tensors[f"features.{i}"] for i in range(int(meta["num_features"]))),
            int(meta.get("pinned", 0)),
            int(meta.get("pinned_images", 0)),
        )
