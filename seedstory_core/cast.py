"""The cast sheet: reference pictures of a story's characters, pinned at the start of the story's context.

A cast sheet is up to :data:`MAX_CAST` (name, picture) pairs. Each picture is tokenized by the visual tokenizer
like any story image, and the block ::

    [BOS] Max:<img>IMG*64</img>Zoe:<img>IMG*64</img>  cap0 <img>IMG*64</img> [INST]cap1 ...

sits between BOS and the opening caption (docs/characters.md, "The cast block"). The block is **pinned**: every
cache policy keeps all of its tokens however long the story runs (:class:`~seedstory_core.cache.CachePolicy` counts
it in its bound, :func:`~seedstory_core.cache.plan_kept_positions` and :class:`~seedstory_core.cache.StoryKVCache`
never evict it, its images never count in the window), and the re-encode loop re-encodes it at every step. Its
images are not story frames: ``StoryState.num_images`` and the sink rule count only the story's own images.

The same ids are built for training (:class:`~seedstory_core.data.samples.StorySampleBuilder`, ``cast=``) and for
inference (:meth:`~seedstory_core.story.StoryEngine.start`, ``cast=``) by :func:`cast_block_ids`, so the model sees at
inference exactly the layout it was trained on. The official SEED-Story was never trained with such a block: with
the official weights it is a plain prefix of context images the model may or may not use (docs/characters.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from .tokens import TokenKind

__all__ = ["MAX_CAST", "MAX_NAME_CHARS", "CastSheet", "cast_text", "check_cast_names", "cast_block_ids"]

#: At most this many characters on one cast sheet.
MAX_CAST = 5
#: A character's name has at most this many characters.
MAX_NAME_CHARS = 40


def cast_text(name: str) -> str:
    """The text before a character's picture in the cast block: ``"<name>:"``."""
    return f"{name}:"


def check_cast_names(names: Sequence[str]) -> Tuple[str, ...]:
    """Validate cast names: 1..:data:`MAX_CAST` distinct non-empty one-line names of at most :data:`MAX_NAME_CHARS`
    characters, without ``:`` or ``<``/``>``. Returns them stripped.

    Raises:
        ValueError: what was expected, what was found, and what to do.
    """
    names = [str(n).strip() if isinstance(n, str) else n for n in names]
    if not names:
        raise ValueError("a cast sheet needs at least one character (a name and a picture); found none")
    if len(names) > MAX_CAST:
        raise ValueError(f"a cast sheet holds at most {MAX_CAST} characters; found {len(names)}. Leave some out.")
    for n in names:
        if not isinstance(n, str) or not n:
            raise ValueError(f"every cast picture needs a name (a non-empty string); found {n!r}. Type the name.")
        if len(n) > MAX_NAME_CHARS or any(c in n for c in ":<>\n\r\t"):
            raise ValueError(
                f"cast name {n[:60]!r}: expected at most {MAX_NAME_CHARS} characters on one line without ':', '<' or "
                "'>'; shorten or rename it"
            )
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"cast names must be distinct; {dup} appear twice. Give each character one picture.")
    return tuple(names)


def cast_block_ids(tokenizer, names: Sequence[str]) -> Tuple[List[int], List[int], List[int]]:
    """The token ids of the cast block (without BOS) and their kinds.

    Args:
        tokenizer: a :class:`~seedstory_core.tokenizer.SeedStoryTokenizer` (``encode_prompt``, ``image_ids``).
        names: the cast names in order (:func:`check_cast_names`).

    Returns:
        ``(ids, kinds, image_starts)``: ``ids`` = for each name ``encode_prompt("<name>:")`` then
        ``[BOI, IMG_0..IMG_63, EOI]``; ``kinds`` their :class:`TokenKind` values; ``image_starts`` the index of each
        picture's BOI in ``ids``.
    """
    ids: List[int] = []
    kinds: List[int] = []
    starts: List[int] = []
    seg = list(tokenizer.image_ids.forced_sequence)
    seg_kinds = [TokenKind.BOI] + [TokenKind.IMG] * (len(seg) - 2) + [TokenKind.EOI]
    for name in names:
        text = [int(i) for i in tokenizer.encode_prompt(cast_text(name))]
        ids += text
        kinds += [TokenKind.TEXT] * len(text)
        starts.append(len(ids))
        ids += seg
        kinds += seg_kinds
    return ids, [int(k) for k in kinds], starts


@dataclass(frozen=True, eq=False)
class CastSheet:
    """A story's cast: names and the visual-tokenizer features of their reference pictures (immutable).

    Attributes:
        names: 1..:data:`MAX_CAST` distinct names (:func:`check_cast_names`).
        features: one (1, T, D) float tensor per name (the visual tokenizer's output for the picture; T = 256 and
            D = 4096 for Qwen-VL ViT-G, the tiny model's own sizes otherwise).

    Raises:
        ValueError: names and features differ in number, or a feature tensor is not (1, T, D) with one T and D.
    """

    names: Tuple[str, ...]
    features: Tuple[torch.Tensor, ...]

    def __post_init__(self):
        object.__setattr__(self, "names", check_cast_names(self.names))
        feats = tuple(f.unsqueeze(0) if isinstance(f, torch.Tensor) and f.dim() == 2 else f for f in self.features)
        if len(feats) != len(self.names):
            raise ValueError(f"a cast sheet needs one picture per name; found {len(self.names)} names, {len(feats)}")
        shapes = {tuple(f.shape[1:]) for f in feats if isinstance(f, torch.Tensor) and f.dim() == 3}
        if len(shapes) != 1 or any(not isinstance(f, torch.Tensor) or f.dim() != 3 or f.shape[0] != 1 for f in feats):
            raise ValueError(
                f"cast features must be (1, T, D) tensors of one shape; found {[getattr(f, 'shape', f) for f in feats]}"
            )
        object.__setattr__(self, "features", feats)

    def __len__(self) -> int:
        return len(self.names)

    def feature(self, name: str) -> torch.Tensor:
        """The (1, T, D) features of ``name``'s picture. Raises KeyError for a name not on the sheet."""
        return self.features[self.names.index(name)]

    def to(self, device=None, dtype=None) -> "CastSheet":
        """A copy with the features on ``device`` / in ``dtype``."""
        return CastSheet(self.names, tuple(f.to(device=device, dtype=dtype) for f in self.features))

    def nbytes(self) -> int:
        """Bytes of the feature tensors."""
        return sum(f.numel() * f.element_size() for f in self.features)

    def __repr__(self) -> str:
        return f"CastSheet({', '.join(self.names)})"
