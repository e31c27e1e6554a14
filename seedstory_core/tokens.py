"""The vocabulary of a story stream: the kind of each token and the ids of the image tokens
(docs/reference.md §2.1, §5).

A SEED-Story stream is ``[BOS] caption_0 <img> IMG_0 .. IMG_{n-1} </img> [INST] caption_1 <img> ...``: every
image is one *image segment* of ``n + 2`` tokens, BOI, the ``n`` IMG tokens (64 officially) and EOI.

* :class:`TokenKind` — the kind of every stored token (BOS, TEXT, BOI, IMG, EOI); the cache policies decide what
  to keep from these kinds alone.
* :class:`ImageTokens` — the validated id triple (BOI, EOI, IMG ids) that a tokenizer assigns to the image tokens.
* :func:`image_segment_kinds` — the kinds of one image segment, ``[BOI] + [IMG] * n (+ [EOI])``.

Pure Python: no torch, no transformers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import List, Tuple

__all__ = ["TokenKind", "ImageTokens", "image_segment_kinds"]


class TokenKind(enum.IntEnum):
    """The kind of every token of a story stream (docs/reference.md §5 layout)."""

    BOS = 0
    TEXT = 1
    BOI = 2
    IMG = 3
    EOI = 4

    @classmethod
    def from_label(cls, label: str) -> "TokenKind":
        """Parse a label of golden/sink_ranges_*.json: ``BOS``, ``T<i>.<j>``, ``BOI<i>``, ``IMG<i>.<j>``, ``EOI<i>``.

        ``EOS`` and ``INST`` labels count as text. Raises ``ValueError`` for anything else.
        """
        text = str(label).strip()
        upper = text.upper()
        if upper == "BOS":
            return cls.BOS
        for prefix, kind in (("BOI", cls.BOI), ("EOI", cls.EOI), ("IMG", cls.IMG)):
            if upper.startswith(prefix):
                return kind
        if upper.startswith("T") or upper in ("EOS", "INST", "PAD"):
            return cls.TEXT
        raise ValueError(
            f"Unknown token label {label!r}: expected BOS, T*, BOI*, IMG*, EOI* (golden sink_ranges format)"
        )


def image_segment_kinds(num_img_tokens: int, *, eoi: bool = True) -> List[TokenKind]:
    """Kinds of one image segment: ``[BOI] + [IMG] * num_img_tokens`` followed by ``[EOI]`` when ``eoi``.

    ``eoi=False`` gives the image queries (BOI and the IMG tokens whose hidden states become the image, spec
    §2.6), before EOI is stored.

    Args:
        num_img_tokens (int): IMG tokens per image (64 in SEED-Story), >= 1.
        eoi (bool): append the EOI kind.

    Returns: list of ``num_img_tokens + 1`` (or ``+ 2`` with EOI) :class:`TokenKind` values.
    Raises: ValueError if ``num_img_tokens`` < 1.
    """
    if isinstance(num_img_tokens, bool) or not isinstance(num_img_tokens, int) or num_img_tokens < 1:
        raise ValueError(f"image_segment_kinds: expected num_img_tokens >= 1, found {num_img_tokens!r}.")
    return [TokenKind.BOI] + [TokenKind.IMG] * num_img_tokens + ([TokenKind.EOI] if eoi else [])


@dataclass(frozen=True)
class ImageTokens:
    """Token ids of the image tokens (docs/reference.md §2.1): BOI, EOI and the ``num_img_tokens`` IMG tokens in order.

    Get it from a tokenizer (:attr:`seedstory_core.tokenizer.SeedStoryTokenizer.image_ids`); with the LLaMA-2
    vocabulary the ids are BOI 32000, EOI 32001, IMG 32002..32065.

    Attributes:
        boi (int): id of ``<img>``.
        eoi (int): id of ``</img>``.
        img (tuple[int, ...]): ids of ``<img_00000>`` .. ``<img_{n-1:05d}>``, in order (any iterable is turned
            into a tuple).

    Raises:
        ValueError: if an id is negative or not an int, ``img`` is empty, or ids repeat.
    """

    boi: int
    eoi: int
    img: Tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "img", tuple(self.img))
        ids = [self.boi, self.eoi, *self.img]
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"ImageTokens: expected non-negative int ids, found {i!r}.")
        if not self.img:
            raise ValueError("ImageTokens: expected at least one IMG token id, found none.")
        if len(set(ids)) != len(ids):
            raise ValueError(f"ImageTokens: expected {len(ids)} distinct ids, found repeats in {ids}.")

    @property
    def num_img_tokens(self) -> int:
        """Number of IMG tokens per image (64 in SEED-Story)."""
        return len(self.img)

    @property
    def all_ids(self) -> Tuple[int, ...]:
        """``(boi, eoi, img_0, ..., img_{n-1})``: the order in which the tokens are added to the vocabulary."""
        return (self.boi, self.eoi, *self.img)

    @property
    def forced_sequence(self) -> List[int]:
        """``[boi, img_0, ..., img_{n-1}, eoi]``: one image segment as it appears in a prompt (n + 2 ids, spec
        §2.1); after BOI the official generation forces the rest of it (docs/reference.md §2.6)."""
        return [self.boi, *self.img, self.eoi]
