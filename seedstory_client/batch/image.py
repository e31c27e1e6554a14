"""seedstory-batch start images: only pictures are uploaded, and only their pixels.

A job's ``image`` must be a picture that Pillow reads as one of :data:`FORMATS` (checked when the job file is read,
:func:`picture_problem`); before the upload it is decoded and re-encoded as PNG (:func:`encode_png`), so the bytes of
the file itself never leave the machine: a text file, a PDF, a key file or any other non-picture is refused, and of
a picture only its pixels go (no EXIF, GPS or text chunks; the EXIF orientation is applied first, as ComfyUI's Load
Image does). An animated picture sends its first frame.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow format ids a start image may have ("JPEG" also opens MPO, the JPEG variant of phone cameras)
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
FORMATS_TEXT = "PNG, JPEG, WebP, BMP, GIF or TIFF"
# modes PNG stores as they are; anything else becomes RGB (or RGBA when it has alpha)
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


class NotAPicture(ValueError):
    """The start image is not a picture that may be uploaded (message: what was expected, found, and what to do)."""


def refusal(path: Path, reason: str) -> str:
    """The message for a start image that is refused (names the file and the reason)."""
    return (
        f"image {path} is not a {FORMATS_TEXT} picture that Pillow can read ({reason}); only such pictures are "
        "uploaded, re-encoded as PNG, so the file never leaves this machine: give the path of a picture"
    )


def _reason(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, UnidentifiedImageError):
        return "not a picture"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def picture_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be a start image (the :func:`refusal` message), or None when Pillow identifies it as a
    picture of :data:`FORMATS` whose data passes ``Image.verify()``. A file that cannot be opened at all (gone,
    unreadable) is left to the run (None here: the job then fails naming the file)."""
    try:
        with Image.open(path, formats=FORMATS) as im:
            im.verify()
    except UnidentifiedImageError as e:
        return refusal(path, _reason(e))
    except OSError:
        return None  # not readable now: reported when the job runs ("cannot read the start image ...")
    except Exception as e:  # noqa: BLE001 - Pillow raises SyntaxError, struct.error, DecompressionBombError, ...
        return refusal(path, _reason(e))
    return None


def encode_png(data: bytes, path: Path) -> bytes:
    """Decode the start image's bytes (``data``, read from ``path``) and return a PNG of its first frame, with the
    EXIF orientation applied and no metadata. Modes PNG cannot store become RGB or RGBA.

    Raises NotAPicture (the :func:`refusal` message naming ``path``) when the bytes are not a complete picture of
    :data:`FORMATS` (not a picture, truncated, corrupt, over Pillow's decompression-bomb limit)."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            im.load()  # every pixel decoded: a truncated or corrupt picture fails here, before any upload
            pic = ImageOps.exif_transpose(im)
            if pic.mode not in _PNG_MODES:
                pic = pic.convert("RGBA" if "A" in pic.getbands() else "RGB")
            buf = io.BytesIO()
            pic.save(buf, format="PNG")
    except Exception as e:  # noqa: BLE001 - any decoding failure is a refusal
        raise NotAPicture(refusal(path, _reason(e))) from None
    return buf.getvalue()
