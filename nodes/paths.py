"""Path containment for the SeedStory nodes and routes: a path a user types stays inside the folder ComfyUI gives.

One rule for every place the pack touches the file system on a user's behalf (Save Story writes into ComfyUI's
output folder, Adapt De-tokenizer reads from ComfyUI's input folder, an HTTP route that serves storybooks from
the output folder):

1. :func:`check_relative` refuses, by looking at the text only, anything that is not a plain relative path:
   empty text, NUL and other control characters, absolute paths (``/x``, ``\\x``, ``C:\\x``, ``C:x``,
   ``\\\\server\\share``), a leading ``~``, and any ``..`` component. Components are compared after stripping
   surrounding white space and after Unicode NFKC normalisation, so ``a/ ../ ../x``, ``a/ .. / .. /x``,
   ``a/ ..\\ ..\\x`` and lookalikes such as ``\u2025`` (two-dot leader) or ``\uff0e\uff0e`` (fullwidth dots)
   are all refused. ``\\`` counts as a separator (as on Windows).
2. :func:`resolve_inside` then joins the text to the root and resolves the result with :func:`os.path.realpath`
   (symlinks followed, also for parts that do not exist yet) and checks with :func:`os.path.commonpath` that it
   lies inside the resolved root. This is the check ComfyUI's own ``folder_paths.get_save_image_path`` makes
   (it uses ``abspath``; ``realpath`` here also catches a symlink inside the folder that points outside).

:func:`clean_name` is stricter and is for names the pack *creates* (Save Story's ``filename_prefix``): on top of
rule 1 it refuses characters that are not portable in file names (``<>:"|?*``, ``%``), Windows device names
(``CON``, ``NUL``, ``COM1`` ...) and over-long names (see :data:`MAX_COMPONENT_CHARS`,
:data:`MAX_COMPONENT_BYTES`, :data:`MAX_TOTAL_CHARS`), and returns the NFKC-normalised components with the white
space around each one removed. Letters of any script are kept (``童话/故事``, ``café``).

Every refusal raises :class:`SeedStoryInputError` (a ``ValueError``) whose message says what was expected, what
was found and what to do. Nothing here imports ComfyUI; callers pass the root folder
(``folder_paths.get_output_directory()`` / ``get_input_directory()``).

Example: a route that serves storybook files from the output folder::

    from .paths import SeedStoryInputError, resolve_inside

    try:
        path = resolve_inside(folder_paths.get_output_directory(), request.match_info["path"],
                              node="SeedStory storybook route", what="path", folder="ComfyUI's output folder")
    except SeedStoryInputError as err:
        logging.info("%s", err)                    # the message names absolute server paths:
        return web.Response(status=403)            # log it, do not send it to the client
    if not path.is_file():
        return web.Response(status=404)

A check-then-use gap remains by nature: a symlink created inside the root between :func:`resolve_inside` and the
write could still redirect it. Save Story therefore checks again after creating its folder (see nodes/output.py).
"""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path
from typing import List, Union

from .models import SeedStoryInputError


class OutsideFolderError(SeedStoryInputError):
    """A well-formed relative path that resolves outside its folder (a symbolic link inside it leads out).

    Its message names absolute server paths (where the link leads, the folder itself): fine for a node error shown
    to the person who runs the server, not for an HTTP client (see nodes/routes.py)."""


__all__ = [
    "SeedStoryInputError",
    "OutsideFolderError",
    "MAX_COMPONENT_CHARS",
    "MAX_COMPONENT_BYTES",
    "MAX_TOTAL_CHARS",
    "check_relative",
    "clean_name",
    "is_inside",
    "resolve_inside",
]

#: Longest folder or file name component accepted by :func:`clean_name`, in characters.
MAX_COMPONENT_CHARS = 100
#: ... and in UTF-8 bytes (file systems limit a name to 255 bytes; room is left for suffixes like ``_00001``).
MAX_COMPONENT_BYTES = 200
#: Longest whole relative path accepted by :func:`clean_name`, in characters (after normalisation).
MAX_TOTAL_CHARS = 200

_DRIVE = re.compile(r"^[A-Za-z]:")
#: Characters Windows forbids in names, plus '%' (ComfyUI's %date% variables / percent-encoding are not decoded).
_NOT_PORTABLE = set('<>:"|?*%')
#: Separator lookalikes that survive NFKC normalisation (division slash, fraction slash, big solidus, ...).
_SLASH_LOOKALIKES = set("\u2215\u2044\u29f8\u29f9\u2216\u29f5\u2571\u2572\u27cb\u27cd")
#: Bidirectional-text controls: they make a name display differently from what it is.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_WINDOWS_DEVICES = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}

PathText = Union[str, "os.PathLike[str]"]


FOLDER = "the folder ComfyUI gives this input"


def _fail(node: str, what: str, text, problem: str, example: str, folder: str = FOLDER) -> SeedStoryInputError:
    return SeedStoryInputError(
        f"{node}: {what} {text!r} is not allowed: {problem}. Expected a relative path inside {folder} (folders "
        f"separated by '/'), such as {example!r}; change the {what} to such a path."
    )


def _components(text: str) -> List[str]:
    """NFKC-normalise ``text``, split on '/' and '\\', strip the white space around each part."""
    return [p.strip() for p in re.split(r"[/\\]", unicodedata.normalize("NFKC", text))]


def check_relative(
    relative, *, node: str = "SeedStory", what: str = "path", example: str = "folder/name", folder: str = FOLDER
) -> List[str]:
    """Refuse, from the text alone, anything that is not a plain relative path; return its components.

    Args:
        relative (str | os.PathLike): the path as the user typed it (or as a data file stores it).
        node (str): node name that starts the error message, e.g. ``"SeedStory Save Story"``.
        what (str): what the text is, e.g. ``"filename_prefix"`` or ``"image path"`` (used in the message).
        example (str): an example of a good value, shown in the message.
        folder (str): how the message names the root, e.g. ``"ComfyUI's output folder"``.

    Returns:
        list[str]: the components split on '/' and '\\' exactly as given (not normalised, so they match the
        names on disk), without empty and ``.`` components.

    Raises:
        SeedStoryInputError: not text, empty, NUL or other control characters (tab, line break) other than white
            space around the whole text, absolute path,
            drive letter (``C:``), UNC path, leading ``~``, or a ``..`` component (also with white space around
            it or written with Unicode lookalikes of '.', '/' or '\\').
    """
    if isinstance(relative, os.PathLike):
        relative = os.fspath(relative)
    if not isinstance(relative, str):
        raise SeedStoryInputError(
            f"{node}: {what} expects text (a relative path such as {example!r}), but found {type(relative).__name__}."
        )
    text = relative.strip()
    norm = unicodedata.normalize("NFKC", text).strip()
    if not text:
        raise _fail(node, what, relative, "it is empty", example, folder)
    if "\x00" in relative:
        raise _fail(node, what, relative, "it contains a NUL character", example, folder)
    if any(unicodedata.category(c) == "Cc" for c in text):
        raise _fail(node, what, relative, "it contains a tab, line break or other control character", example, folder)
    if norm.startswith(("/", "\\")):
        raise _fail(node, what, relative, "it is an absolute path", example, folder)
    if _DRIVE.match(norm):
        raise _fail(
            node,
            what,
            relative,
            "it starts with a drive letter (Windows absolute or drive-relative path)",
            example,
            folder,
        )
    if norm.startswith("~"):
        raise _fail(node, what, relative, "'~' (a home folder) is not allowed", example, folder)
    raw = [p.strip() for p in re.split(r"[/\\]", text)]
    for part in raw + _components(text):
        dots = re.sub(r"\s", "", part)
        if len(dots) >= 2 and set(dots) == {"."}:
            raise _fail(
                node,
                what,
                relative,
                f"the name {part!r} is made of dots only ('..' means the parent folder)",
                example,
                folder,
            )
    return [p for p in re.split(r"[/\\]", text) if p.strip() not in ("", ".")]


def clean_name(
    text, *, node: str = "SeedStory", what: str = "name", example: str = "seedstory/story", folder: str = FOLDER
) -> List[str]:
    """A safe, portable relative name for something the pack creates: its normalised components.

    Applies :func:`check_relative`, then NFKC-normalises each component, strips the white space around it and
    the dots at its end (Windows drops trailing dots), and refuses what is not portable.

    Args:
        text (str): the relative name as typed, e.g. ``"seedstory/story"`` or ``"童话/故事"``.
        node, what, example, folder: used in error messages (see :func:`check_relative`).

    Returns:
        list[str]: at least one component; each non-empty, at most :data:`MAX_COMPONENT_CHARS` characters and
        :data:`MAX_COMPONENT_BYTES` UTF-8 bytes; joined with '/' at most :data:`MAX_TOTAL_CHARS` characters.

    Raises:
        SeedStoryInputError: everything :func:`check_relative` refuses, plus ``< > : " | ? * %``, separator
            lookalikes (``\u2215`` ...), bidirectional-text controls, Windows device names (``CON``, ``NUL`` ...)
            and names over the length limits.
    """
    check_relative(text, node=node, what=what, example=example, folder=folder)
    parts = []
    for norm in _components(text):
        norm = norm.rstrip(". \t")
        if not norm:
            continue
        bad = sorted(
            {
                c
                for c in norm
                if c in _NOT_PORTABLE
                or c in _SLASH_LOOKALIKES
                or c in _BIDI
                or unicodedata.category(c) in ("Cc", "Cs", "Co")
            }
        )
        if bad:
            why = " ('%' variables and percent-encoding are not expanded)" if "%" in bad else ""
            raise _fail(
                node,
                what,
                text,
                "it contains " + ", ".join(repr(c) for c in bad) + f", not allowed in file names here{why}",
                example,
                folder,
            )
        if norm.split(".")[0].strip().upper() in _WINDOWS_DEVICES:
            raise _fail(node, what, text, f"{norm!r} is a reserved device name on Windows", example, folder)
        if len(norm) > MAX_COMPONENT_CHARS or len(norm.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _fail(
                node,
                what,
                text if len(text) <= 60 else text[:57] + "...",
                f"a folder or file name is {len(norm)} characters ({len(norm.encode('utf-8'))} bytes) long; "
                f"the limit is {MAX_COMPONENT_CHARS} characters and {MAX_COMPONENT_BYTES} bytes",
                example,
                folder,
            )
        parts.append(norm)
    if not parts:
        raise _fail(node, what, text, "it names nothing (only separators, dots or spaces)", example, folder)
    joined = "/".join(parts)
    if len(joined) > MAX_TOTAL_CHARS:
        raise _fail(
            node,
            what,
            text if len(text) <= 60 else text[:57] + "...",
            f"it is {len(joined)} characters long; the limit is {MAX_TOTAL_CHARS}",
            example,
            folder,
        )
    return parts


def is_inside(root: PathText, path: PathText) -> bool:
    """True when ``path`` resolves (``realpath``) to ``root`` itself or something below it (``root`` resolved too)."""
    root_real = os.path.realpath(os.fspath(root))
    real = os.path.realpath(os.fspath(path))
    try:
        return os.path.commonpath([root_real, real]) == root_real
    except ValueError:  # different drives (Windows)
        return False


def resolve_inside(
    root: PathText,
    relative,
    *,
    node: str = "SeedStory",
    what: str = "path",
    example: str = "folder/name",
    folder: str = FOLDER,
) -> Path:
    """``root/relative`` resolved (symlinks followed), guaranteed to lie inside the resolved ``root``.

    Use it for every path a user (or a data file) gives: Save Story's prefix under the output folder, the
    Adapt De-tokenizer's data folder and image paths under the input folder, a route serving files from the
    output folder. The path need not exist; existing parts are resolved through their symlinks.

    Args:
        root (str | os.PathLike): the folder ComfyUI gives (e.g. ``folder_paths.get_output_directory()``).
        relative (str | os.PathLike): the user's relative path; ``""``/``"."`` are refused (see
            :func:`check_relative`), so the result is always strictly below ``root``.
        node, what, example, folder: used in error messages (see :func:`check_relative`).

    Returns:
        pathlib.Path: the absolute, resolved path.

    Raises:
        SeedStoryInputError: the text is not a plain relative path (:func:`check_relative`).
        OutsideFolderError: (a SeedStoryInputError) it resolves outside ``root`` (e.g. through a symlink inside
            ``root`` that points elsewhere).
    """
    parts = check_relative(relative, node=node, what=what, example=example, folder=folder)
    if not parts:
        raise _fail(node, what, relative, "it names nothing (only separators, dots or spaces)", example, folder)
    root_real = os.path.realpath(os.fspath(root))
    target = os.path.realpath(os.path.join(root_real, *parts))
    if target == root_real or not is_inside(root_real, target):
        raise OutsideFolderError(
            f"{node}: {what} {relative!r} resolves to {target}, which is outside {folder} ({root_real}): a symbolic "
            f"link inside that folder points elsewhere. Expected a path inside that folder; use a folder that "
            f"really lies there (copy the files in rather than linking them)."
        )
    return Path(target)
