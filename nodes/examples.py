"""SeedStory Example Picture: the start pictures the pack ships, so the example workflows run on a fresh install.

ComfyUI's Load Image lists only the files of ComfyUI's input folder, which is empty after a plain install (the
Manager or ``comfy node install``); a template that loads ``seedstory_start.png`` with it fails until the picture is
copied there by hand. This node reads the pictures from the pack's own folder instead (nothing is copied, nothing is
written). The API templates (workflows/api/) keep Load Image, so API users and seedstory-batch give their own
picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import comfy_glue as glue
from .inputs import choice_input
from .models import SeedStoryInputError

#: The pack's root folder (nodes/ lies in it).
PACK_ROOT = Path(__file__).resolve().parents[1]
#: The bundled pictures, by the name the node lists: (the picture, the sentence that goes with it or None), paths
#: relative to the pack.
EXAMPLE_PICTURES: Dict[str, Tuple[str, Optional[str]]] = {
    "seedstory_start.png": ("workflows/assets/seedstory_start.png", None),
    "demo_start.png": ("models/seedstory-tiny/demo_start.png", "models/seedstory-tiny/demo_start.txt"),
    # the cast sheet of the start picture's story (Max and Zoe at the beach): seedstory_core.data.mini.cast_pictures
    # (mini.generate_story(1000, 0, looks="fixed")), the looks seedstory_start.png shows
    "seedstory_cast_max.png": ("workflows/assets/seedstory_cast_max.png", None),
    "seedstory_cast_zoe.png": ("workflows/assets/seedstory_cast_zoe.png", None),
}
DEFAULT_PICTURE = "seedstory_start.png"


def load_example_picture(name: str, *, node: str, root: Path = PACK_ROOT) -> Tuple[torch.Tensor, str]:
    """One bundled picture as a ComfyUI IMAGE, with its sentence.

    Args:
        name: a key of :data:`EXAMPLE_PICTURES`.
        node: the calling node's name, for messages.
        root: the pack folder.

    Returns:
        (IMAGE [1, H, W, 3] float32 in [0, 1] on the CPU, the picture's sentence or '' when it has none).

    Raises:
        SeedStoryInputError: an unknown name, or the pack's file is missing or unreadable (an incomplete install).
    """
    if name not in EXAMPLE_PICTURES:
        raise SeedStoryInputError(
            f"{node}: 'picture' must be one of the pack's example pictures {sorted(EXAMPLE_PICTURES)}, found "
            f"{name!r}. Pick one in the list, or load your own picture with ComfyUI's Load Image."
        )
    picture, sentence_file = EXAMPLE_PICTURES[name]
    path = root / picture
    try:
        with Image.open(path) as img:
            rgb = ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise SeedStoryInputError(
            f"{node}: the pack's example picture {picture} could not be read ({type(err).__name__}: {err}). The "
            "pack is incomplete: reinstall it (ComfyUI-Manager: Try fix / reinstall), or use Load Image."
        ) from err
    image = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).unsqueeze(0)
    sentence = ""
    if sentence_file is not None and (root / sentence_file).is_file():
        sentence = " ".join((root / sentence_file).read_text(encoding="utf-8").split())
    return image, sentence


class SeedStoryExamplePicture:
    NODE_ID = "SeedStoryExamplePicture"
    DISPLAY_NAME = "SeedStory Example Picture"
    SEARCH_ALIASES = ["example image", "start image", "demo picture", "sample image", "start picture"]
    DESCRIPTION = (
        "A start picture that ships with the pack (workflows/assets/seedstory_start.png, the tiny model's "
        "demo_start.png), or a cast-sheet picture of its characters (seedstory_cast_max.png, "
        "seedstory_cast_zoe.png, for Story Cast), read from the pack's folder: nothing needs to be in ComfyUI's "
        "input folder, so the example workflows run right after installing. For your own picture use ComfyUI's "
        "Load Image."
    )
    CATEGORY = "SEED-Story/loaders"
    FUNCTION = "load"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "sentence")
    OUTPUT_TOOLTIPS = (
        "The picture, one IMAGE [1, H, W, 3].",
        "The sentence that goes with it, when the pack has one (demo_start.png), else empty.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        tip = "A picture bundled with the pack: " + "; ".join(
            f"{name} ({path})" for name, (path, _s) in EXAMPLE_PICTURES.items()
        )
        return {"required": {"picture": choice_input(list(EXAMPLE_PICTURES), DEFAULT_PICTURE, tip)}}

    def load(self, picture=DEFAULT_PICTURE):
        image, sentence = load_example_picture(picture, node=self.DISPLAY_NAME)
        return (image.to(glue.intermediate_device()), sentence)
