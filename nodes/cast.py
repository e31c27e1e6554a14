"""Story Cast: the cast sheet of a story (up to five named reference pictures), for Story Start and Generate Story.

The node pairs each picture with its name, tokenizes the picture with the visual tokenizer exactly as ViT Tokenize
does, and hands a :class:`seedstory_core.cast.CastSheet` on (socket :data:`CAST`). What the sheet does in the story
(the pinned block ``<name>:<img>...</img>`` at the start of the context) is :mod:`seedstory_core.cast`'s;
:func:`check_cast` is the check the story nodes run on their ``cast`` input.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from seedstory_core.cast import MAX_CAST, MAX_NAME_CHARS, CastSheet, check_cast_names
from seedstory_core.preprocess import RESIZE_MODES

from . import comfy_glue as glue
from .inputs import choice_input, line_input, socket_input
from .models import VISUAL_TOKENIZER, SeedStoryInputError, check_image, require, require_model

#: The socket type of a cast sheet (:class:`seedstory_core.cast.CastSheet`).
CAST = "SEEDSTORY_CAST"

#: Tokens one character adds to the context: its name and ':' (2-5 tokens), then BOI, 64 image tokens and EOI.
CAST_TOKENS_TIP = "about 70 tokens per character (its name and ':', then the picture's 66 image tokens)"

CAST_INPUT_TOOLTIP = (
    "Optional cast sheet (from SeedStory Story Cast): the characters' names and reference pictures, pinned at the "
    "start of the story's context (every cache policy keeps them; " + CAST_TOKENS_TIP + ")."
)


def _image_tip(k: int) -> str:
    return f"Reference picture of character {k} (any size; a batch gives its first picture). Needs name_{k}."


def _name_tip(k: int) -> str:
    return (
        f"Name of character {k}, as the sentences write it (e.g. Max): one line, at most {MAX_NAME_CHARS} characters, "
        f"no ':', '<' or '>'. Needs image_{k}; leave it empty when image_{k} is not connected."
    )


def cast_slot_inputs() -> dict:
    """Story Cast's optional ``image_k`` / ``name_k`` pairs, k = 1..:data:`MAX_CAST`."""
    out = {}
    for k in range(1, MAX_CAST + 1):
        out[f"image_{k}"] = socket_input("IMAGE", _image_tip(k))
        out[f"name_{k}"] = line_input("", _name_tip(k))
    return out


def cast_slots(node: str, images: List, names: List) -> List[Tuple[int, str, torch.Tensor]]:
    """The filled slots of Story Cast: ``[(k, name, IMAGE [1, H, W, C])]`` in slot order (k 1-based); a slot with
    neither a picture nor a name is skipped.

    Raises:
        SeedStoryInputError: a picture without a name or a name without a picture (the slot named), a name that
            breaks :func:`seedstory_core.cast.check_cast_names`, an input that is not an IMAGE, no slot filled.
    """
    slots = []
    for k, (image, name) in enumerate(zip(images, names), start=1):
        if name is not None and not isinstance(name, str):
            raise SeedStoryInputError(f"{node}: 'name_{k}' expects text (STRING), found {type(name).__name__}.")
        name = (name or "").strip()
        if image is None and not name:
            continue
        if image is None:
            raise SeedStoryInputError(
                f"{node}: slot {k} has the name {name[:60]!r} (name_{k}) but no picture: connect the character's "
                f"picture to 'image_{k}', or clear 'name_{k}'. Nothing was tokenized."
            )
        if not name:
            raise SeedStoryInputError(
                f"{node}: slot {k} has a picture (image_{k}) but no name: type the character's name in 'name_{k}' "
                f"(as the sentences write it, e.g. Max), or disconnect 'image_{k}'. Nothing was tokenized."
            )
        try:
            check_cast_names([name])
        except ValueError as err:
            raise SeedStoryInputError(f"{node}: name_{k}: {err}.") from None
        slots.append((k, name, check_image(image, node=node, name=f"image_{k}")[:1]))
    if not slots:
        raise SeedStoryInputError(
            f"{node}: the cast sheet is empty: connect a character's picture to 'image_1' and type its name in "
            f"'name_1' (up to {MAX_CAST} characters)."
        )
    try:
        check_cast_names([name for _k, name, _i in slots])
    except ValueError as err:
        raise SeedStoryInputError(f"{node}: {err}") from None
    return slots


def check_cast(node: str, cast, feature_dim: int) -> Optional[CastSheet]:
    """A story node's ``cast`` input: None, or a :class:`~seedstory_core.cast.CastSheet` whose features have the
    agent's width ``feature_dim``.

    Raises:
        SeedStoryInputError: not a cast sheet (e.g. a constant typed into the socket), or pictures tokenized by
            another model's visual tokenizer (the widths found and expected).
    """
    if cast is None:
        return None
    cast = require(cast, CastSheet, node=node, name="cast", socket=CAST, hint="cast output of SeedStory Story Cast")
    width = int(cast.features[0].shape[-1])
    if width != int(feature_dim):
        raise SeedStoryInputError(
            f"{node}: the cast sheet's pictures have features of width {width}, but this agent expects {feature_dim}: "
            "they were tokenized by another model's visual tokenizer. Connect Story Cast's visual_tokenizer to the "
            "loader of this agent. Nothing was generated."
        )
    return cast


class SeedStoryStoryCast:
    NODE_ID = "SeedStoryStoryCast"
    DISPLAY_NAME = "SeedStory Story Cast"
    SEARCH_ALIASES = [
        "cast sheet",
        "characters",
        "character reference",
        "reference pictures",
        "consistent characters",
    ]
    DESCRIPTION = (
        f"The story's cast sheet: up to {MAX_CAST} characters, each a name and a reference picture (tokenized by "
        "the visual tokenizer as ViT Tokenize does). Connect it to the cast input of Story Start or Generate Story: "
        "the block 'Max:<img>...</img> Zoe:<img>...</img>' goes into the context between [BOS] and the opening "
        "sentence and is pinned there: every cache policy keeps it however long the story runs, it never counts in "
        "the image window, and Story Step and branches carry it in the state. It costs " + CAST_TOKENS_TIP + " for "
        "the whole story. The consistency retry of Generate Story and Story Step compares the characters' looks "
        "with these pictures. A model trained with cast sheets reads the block as it was taught; the official "
        "SEED-Story was never trained with one: there the block is a plain prefix of context images, which the "
        "model may use or ignore (its effect there has not been measured)."
    )
    CATEGORY = "SEED-Story/story"
    FUNCTION = "build"
    RETURN_TYPES = (CAST,)
    RETURN_NAMES = ("cast",)
    OUTPUT_TOOLTIPS = (
        "The cast sheet: the names and the (1, T, D) visual-tokenizer features of their pictures, for the cast "
        "input of Story Start or Generate Story.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "visual_tokenizer": socket_input(
                    VISUAL_TOKENIZER, "Tokenizes the pictures: the visual tokenizer of the story's model."
                ),
                "resize_mode": choice_input(
                    RESIZE_MODES,
                    "squash",
                    "How each picture is made square, as in ViT Tokenize: squash (official inference) or keep_ratio "
                    "(centre crop).",
                ),
            },
            "optional": cast_slot_inputs(),
        }

    @classmethod
    def VALIDATE_INPUTS(cls, name_1=None, name_2=None, name_3=None, name_4=None, name_5=None):
        """Refuse a bad or repeated name before anything is queued (the picture/name pairing is checked when the
        node runs: a linked picture is not known here)."""
        typed = [
            (k, n.strip()) for k, n in enumerate((name_1, name_2, name_3, name_4, name_5), 1) if isinstance(n, str)
        ]
        typed = [(k, n) for k, n in typed if n]
        try:
            for k, name in typed:
                try:
                    check_cast_names([name])
                except ValueError as err:
                    raise ValueError(f"name_{k}: {err}") from None
            if typed:
                check_cast_names([n for _k, n in typed])
        except ValueError as err:
            return f"{cls.DISPLAY_NAME}: {err}"
        return True

    def build(
        self,
        visual_tokenizer,
        resize_mode="squash",
        image_1=None,
        name_1="",
        image_2=None,
        name_2="",
        image_3=None,
        name_3="",
        image_4=None,
        name_4="",
        image_5=None,
        name_5="",
    ):
        node = self.DISPLAY_NAME
        vit = require_model(visual_tokenizer, "visual_tokenizer", node=node)
        images = [image_1, image_2, image_3, image_4, image_5]
        slots = cast_slots(node, images, [name_1, name_2, name_3, name_4, name_5])
        module = vit.loaded()
        features = []
        for k, _name, image in slots:
            try:
                feats = module.encode_images(image, mode=resize_mode)
            except ValueError as err:
                raise SeedStoryInputError(f"{node}: image_{k}: {err}") from err
            features.append(feats.detach().to(glue.intermediate_device(), torch.float32))
        return (CastSheet(tuple(name for _k, name, _i in slots), tuple(features)),)
