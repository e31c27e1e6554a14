"""SEED-Story training samples: random-length story prefixes (docs/reference.md §5 "Building one sample") + stage-3
extras.

One sample of a story with n frames (captions ``c_0..c_{n-1}``), for a drawn ``k = rng.randint(0, n - 2)``::

    instruction = c_0 + IMG + ''.join('[INST]' + c_i + IMG for i in 1..k)
    response    = '[INST]' + c_{k+1} + IMG                                  (IMG = '<img><img_00000>...</img>')
    input_ids   = [BOS] + encode_prompt(instruction) + encode_prompt(response) + [EOS]
    labels      = -100 on BOS + instruction; the response ids with the target IMG tokens AND the target EOI set
                  to -100 (the loss falls on '[INST]', c_{k+1}, the target BOI and EOS); EOS is a label
    ids_cmp_mask = IMG positions of images 0..k;  ids_gen_mask = IMG positions of image k+1
    embeds_cmp_mask = [True]*(k+1) + [False];      embeds_gen_mask = [False]*(k+1) + [True]

The two parts are tokenized separately (as the official ``decode_long_story_data``); with the legacy LLaMA
chunking the result equals tokenizing the whole string. Samples with ``len(input_ids) >= max_length`` are
DROPPED (``build`` returns None), never truncated. :func:`collate` right-pads (pad id, attention 0, label -100)
and stacks the token tensors; per-image tensors (ViT pixels / features) and the per-image embed masks are
concatenated across samples in sample order, exactly like the official ``single_turn_edit_collate``.

Stage 3 (docs/reference.md §5 "Stage 3 extras"): :func:`sd_target` gives the de-tokenizer target ``sd_images`` (bicubic
short-side resize to S, centre crop S x S, mapped to [-1, 1]) and the SD-XL ``time_ids``
``[H, W, crop_top, crop_left, S, S]`` with the ORIGINAL frame size H x W.

**The official crop-offset bug and our fix.** The official stage-3 data code computes the resized size with
``calculate_new_dimensions`` -- which returns ``(new_h, new_w)`` -- but unpacks it as ``(new_w, new_h)``. The crop
offsets written into ``time_ids`` are therefore swapped: for a landscape frame (W > H) the official gives
``crop_top = (new_w - S) / 2`` and ``crop_left = 0`` although the image itself was cropped horizontally
(``crop_top = 0``, ``crop_left = (new_w - S) / 2``). SD-XL's crop conditioning then tells the UNet the wrong crop.
By default (``official_crop_swap=False``) we write the offsets of the crop that was really applied; pass
``official_crop_swap=True`` to reproduce the official (swapped) values for ablations. Square frames are unaffected.
At inference the pipeline uses (S, S, 0, 0, S, S), i.e. "no crop", in both cases.

Everything here is deterministic given a :class:`random.Random`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ..cast import cast_block_ids, check_cast_names

__all__ = [
    "IGNORE_INDEX",
    "StorySample",
    "StorySampleBuilder",
    "collate",
    "draw_k",
    "sd_target",
    "crop_geometry",
    "sd_time_ids",
]

IGNORE_INDEX = -100
INST = "[INST]"


def draw_k(n_images: int, rng: random.Random) -> int:
    """Number of GIVEN images minus one: ``rng.randint(0, n - 2)`` (official ``num_image_given``, docs/reference.md §5).

    The sample keeps images ``0..k+1`` (2..n images); image ``k+1`` is the target. Raises ValueError for n < 2.
    """
    if n_images < 2:
        raise ValueError(f"draw_k: a story needs at least 2 images for a training sample, found {n_images}.")
    return rng.randint(0, n_images - 2)


@dataclass
class StorySample:
    """One unpadded sample (lists of python ints / bools); ``image_indices`` = the story frames it uses."""

    input_ids: List[int]
    labels: List[int]
    ids_cmp_mask: List[bool]
    ids_gen_mask: List[bool]
    embeds_cmp_mask: List[bool]
    embeds_gen_mask: List[bool]
    k: int
    image_indices: List[int]
    extras: Dict[str, Any] = field(default_factory=dict)
    #: names of the cast-sheet pictures pinned before the story (seedstory_core.cast), in order; their features come
    #: first in the sample's image stack, before the frames of ``image_indices``
    cast: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


class StorySampleBuilder:
    """Build SEED-Story instruction-tuning samples (docs/reference.md §5) with any tokenizer that offers the
    :class:`~seedstory_core.tokenizer.SeedStoryTokenizer` surface used here: ``encode_prompt(str) -> list[int]``
    (no BOS), ``image_token_string()``, ``image_ids`` (``.boi``, ``.eoi``, ``.img``), ``bos_id``, ``eos_id``,
    ``pad_id``.

    Args:
        tokenizer: the tokenizer (see above).
        max_length: samples with ``len(input_ids) >= max_length`` are dropped (official 1280).
        text_loss: ``last`` (official, docs/reference.md §5: the loss falls on the response only — ``[INST]``, the last
            caption, its BOI and EOS) or ``all`` (this project's option for models trained from scratch: every
            ``[INST]`` + caption after the first image and each following BOI are labelled too, as multi-turn chat
            training does; image and EOI tokens stay -100). ``all`` gives ~k+1 times the text signal per sample.
    """

    def __init__(self, tokenizer, max_length: int = 1280, text_loss: str = "last"):
        if max_length < 4:
            raise ValueError(f"StorySampleBuilder: max_length must be >= 4, found {max_length}.")
        if text_loss not in ("last", "all"):
            raise ValueError(f"StorySampleBuilder: text_loss must be 'last' or 'all', found {text_loss!r}.")
        self.text_loss = text_loss
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        ids = tokenizer.image_ids
        self._img_ids = frozenset(int(i) for i in ids.img)
        self._eoi = int(ids.eoi)
        self._image_string = tokenizer.image_token_string()

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_id)

    def texts(self, captions: Sequence[str], k: int) -> Tuple[str, str]:
        """The official (instruction, response) strings for a given k (no spaces or newlines, docs/reference.md §5)."""
        img = self._image_string
        instruction = captions[0] + img + "".join(INST + captions[i] + img for i in range(1, k + 1))
        response = INST + captions[k + 1] + img
        return instruction, response

    def build(self, captions: Sequence[str], k: int, cast: Sequence[str] = ()) -> Optional[StorySample]:
        """The sample for story ``captions`` with ``k + 1`` given images; None when it is too long (dropped).

        ``cast``: names of a cast sheet (:mod:`seedstory_core.cast`) whose block ``<name>:<img>..</img>`` (built by
        :func:`~seedstory_core.cast.cast_block_ids`, as at inference) sits between BOS and the first caption; never
        labelled, its images are context images (``embeds_cmp_mask``) ahead of the story's.

        Raises ValueError when ``k`` is out of ``[0, len(captions) - 2]`` or a cast name is invalid.
        """
        n = len(captions)
        if not 0 <= k <= n - 2:
            raise ValueError(f"StorySampleBuilder.build: k must be in [0, {n - 2}] for {n} captions, found {k}.")
        tok = self.tokenizer
        cast = list(check_cast_names(cast)) if cast else []
        cast_ids = cast_block_ids(tok, cast)[0] if cast else []
        instruction, response = self.texts(captions, k)
        instr_ids = cast_ids + [int(i) for i in tok.encode_prompt(instruction)]
        resp_ids = [int(i) for i in tok.encode_prompt(response)]
        input_ids = [int(tok.bos_id)] + instr_ids + resp_ids + [int(tok.eos_id)]
        if len(input_ids) >= self.max_length:
            return None
        n_instr = 1 + len(instr_ids)
        resp_labels = [IGNORE_INDEX if (i in self._img_ids or i == self._eoi) else i for i in resp_ids]
        instr_labels = [IGNORE_INDEX] * n_instr
        if self.text_loss == "all" and self._eoi in instr_ids[len(cast_ids) :]:
            # position in input_ids (after BOS) of the first story image's EOI (the cast block is never labelled)
            first_eoi = 1 + len(cast_ids) + instr_ids[len(cast_ids) :].index(self._eoi)
            instr_labels = [
                IGNORE_INDEX if (pos <= first_eoi or t in self._img_ids or t == self._eoi) else t
                for pos, t in enumerate([int(tok.bos_id)] + instr_ids)
            ]
        labels = instr_labels + resp_labels + [int(tok.eos_id)]
        is_img = [i in self._img_ids for i in input_ids]
        ids_cmp = [flag and pos < n_instr for pos, flag in enumerate(is_img)]
        ids_gen = [flag and n_instr <= pos for pos, flag in enumerate(is_img)]
        n_img_tok = len(self._img_ids)
        n_given = len(cast) + k + 1
        if sum(ids_cmp) != n_given * n_img_tok or sum(ids_gen) != n_img_tok:
            raise ValueError(
                f"StorySampleBuilder: expected {n_given * n_img_tok} input and {n_img_tok} target IMG positions, "
                f"found {sum(ids_cmp)} and {sum(ids_gen)}; a caption probably contains image tags."
            )
        return StorySample(
            input_ids=input_ids,
            labels=labels,
            ids_cmp_mask=ids_cmp,
            ids_gen_mask=ids_gen,
            embeds_cmp_mask=[True] * n_given + [False],
            embeds_gen_mask=[False] * n_given + [True],
            k=k,
            image_indices=list(range(k + 2)),
            cast=cast,
        )

    def sample(
        self, captions: Sequence[str], rng: random.Random, max_tries: int = 1, cast: Sequence[str] = ()
    ) -> Optional[StorySample]:
        """Draw k with :func:`draw_k` and :meth:`build` (with the cast block of ``cast``, if any); retries up to
        ``max_tries`` draws when too long."""
        for _ in range(max(1, max_tries)):
            out = self.build(captions, draw_k(len(captions), rng), cast=cast)
            if out is not None:
                return out
        return None


def collate(
    samples: Sequence[StorySample],
    pad_id: int,
    *,
    pad_to: Optional[int] = None,
    images: Optional[Sequence[torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """Right-pad and stack a list of samples (official ``single_turn_edit_collate``).

    Args:
        samples: unpadded :class:`StorySample` s.
        pad_id: padding id (attention 0, label -100 at pads).
        pad_to: pad every row to this length (the official pads to ``max_length``); None = the longest sample.
        images: optional per-sample tensors (k_i + 2, ...) (ViT pixels or features); concatenated along dim 0
            as ``image_embeds`` in sample order.

    Returns:
        dict with ``input_ids``, ``attention_mask``, ``labels`` (B, L) int64, ``ids_cmp_mask``, ``ids_gen_mask``
        (B, L) bool, ``embeds_cmp_mask``, ``embeds_gen_mask`` (N_img,) bool and, if given, ``image_embeds``;
        stacked stage-3 extras (``sd_images``, ``time_ids``) when every sample carries them.
    """
    if not samples:
        raise ValueError("collate: expected at least one sample, found none.")
    longest = max(len(s) for s in samples)
    length = longest if pad_to is None else int(pad_to)
    if length < longest:
        raise ValueError(f"collate: pad_to={pad_to} is shorter than the longest sample ({longest}).")
    b = len(samples)
    input_ids = torch.full((b, length), int(pad_id), dtype=torch.long)
    attention = torch.zeros((b, length), dtype=torch.long)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    cmp = torch.zeros((b, length), dtype=torch.bool)
    gen = torch.zeros((b, length), dtype=torch.bool)
    for row, s in enumerate(samples):
        n = len(s)
        input_ids[row, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attention[row, :n] = 1
        labels[row, :n] = torch.tensor(s.labels, dtype=torch.long)
        cmp[row, :n] = torch.tensor(s.ids_cmp_mask, dtype=torch.bool)
        gen[row, :n] = torch.tensor(s.ids_gen_mask, dtype=torch.bool)
    out = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "labels": labels,
        "ids_cmp_mask": cmp,
        "ids_gen_mask": gen,
        "embeds_cmp_mask": torch.tensor([f for s in samples for f in s.embeds_cmp_mask], dtype=torch.bool),
        "embeds_gen_mask": torch.tensor([f for s in samples for f in s.embeds_gen_mask], dtype=torch.bool),
    }
    if images is not None:
        if len(images) != b:
            raise ValueError(f"collate: expected {b} image tensors (one per sample), found {len(images)}.")
        for s, t in zip(samples, images):
            if t.shape[0] != len(s.embeds_cmp_mask):
                raise ValueError(
                    f"collate: a sample uses {len(s.embeds_cmp_mask)} images but its tensor has {t.shape[0]}."
                )
        out["image_embeds"] = torch.cat(list(images), dim=0)
    for key in ("sd_images", "time_ids"):
        if all(key in s.extras for s in samples):
            out[key] = torch.stack([s.extras[key] for s in samples], 0)
    return out


# ---------------------------------------------------------------------------------------------- stage-3 extras
def crop_geometry(height: int, width: int, size: int) -> Tuple[int, int, int, int]:
    """Short side -> ``size`` (long side ``int(size * long / short)``), centre crop ``size`` x ``size``.

    Returns ``(new_h, new_w, crop_top, crop_left)`` with torchvision's ``CenterCrop`` rounding
    (``int(round((new - size) / 2))``).
    """
    if height <= 0 or width <= 0 or size <= 0:
        raise ValueError(f"crop_geometry: expected positive sizes, found H={height}, W={width}, S={size}.")
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return new_h, new_w, top, left


def sd_time_ids(height: int, width: int, size: int, *, official_crop_swap: bool = False) -> torch.Tensor:
    """SD-XL ``time_ids`` ``[H, W, crop_top, crop_left, S, S]`` (float32, shape (6,)) for an H x W frame.

    ``official_crop_swap=True`` reproduces the official bug (module docstring): the offsets are computed from
    the swapped ``(new_w, new_h)`` unpacking, i.e. ``crop_top = (new_w - S) / 2`` and ``crop_left = (new_h - S) / 2``.
    """
    new_h, new_w, top, left = crop_geometry(height, width, size)
    if official_crop_swap:
        top = int(round((new_w - size) / 2.0))
        left = int(round((new_h - size) / 2.0))
    return torch.tensor([height, width, top, left, size, size], dtype=torch.float32)


def sd_target(image, size: int, *, official_crop_swap: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """The stage-3 de-tokenizer target of one frame (docs/reference.md §5 "Stage 3 extras").

    Args:
        image: a PIL image (converted to RGB).
        size: the de-tokenizer resolution S (1024 officially, ``config.detokenizer.default_size``).
        official_crop_swap: reproduce the official swapped crop offsets in ``time_ids`` (default: fixed).

    Returns:
        ``(sd_image (3, S, S) float32 in [-1, 1], time_ids (6,) float32)``.
    """
    img = image.convert("RGB")
    w, h = img.size
    new_h, new_w, top, left = crop_geometry(h, w, size)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.uint8)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32).div(255.0)
    return x.mul(2.0).sub(1.0), sd_time_ids(h, w, size, official_crop_swap=official_crop_swap)
