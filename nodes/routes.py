"""The pack's HTTP route: open a storybook that Save Story wrote, in the browser, from ComfyUI itself.

``GET /seedstory/storybook/<folder>/<file>`` (ComfyUI also mounts it under ``/api``) serves a file of a storybook
folder inside ComfyUI's output folder: ``index.html`` inline as a web page (ComfyUI 0.30.0's ``/view`` sends HTML
as a download, so the page cannot be opened through it), ``story.json``, ``story.pdf``, ``prompt.json`` and the PNG
frames ``frame_NNN.png``: the files a storybook writes (:data:`seedstory_core.storybook.STORYBOOK_FILE`), nothing
else:

* the path is checked by :func:`nodes.paths.resolve_inside` against ``folder_paths.get_output_directory()``
  (no absolute paths, no ``..``, no control characters, symlinks resolved and required to stay inside);
* only those file names, in a folder that holds a ``story.json`` (a storybook), and no path component that starts
  with '.' (a storybook being written lives in ``.seedstory-tmp-*`` until it is renamed into place);
* a refused path answers 400 with the reason (a name longer than the file system allows included), a missing file
  404; a file-system error never becomes a 500.

``GET /seedstory/redo.js`` serves the storybook page's redo script, the pack file ``nodes/assets/redo.js``.

The route is registered when ComfyUI imports the pack (:func:`register`, through ComfyUI's one door,
:mod:`nodes.comfy_glue`, which does nothing outside ComfyUI). :func:`resolve_storybook_file` is the pure part, tested
without ComfyUI.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Tuple

from seedstory_core.storybook import STORYBOOK_FILE

from . import comfy_glue as glue
from .models import SeedStoryInputError
from .paths import OutsideFolderError, resolve_inside

ROUTE = "/seedstory/storybook/{path:.+}"
URL_PREFIX = "/seedstory/storybook/"
REDO_ROUTE = "/seedstory/redo.js"
#: The storybook page's redo script (written by the redo feature; served as is).
REDO_SCRIPT = Path(__file__).resolve().parent / "assets" / "redo.js"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".pdf": "application/pdf",
}
ROUTE_NAME = "SeedStory storybook route"
EXAMPLE = "seedstory/story_00001/index.html"
_registered = False


class StorybookNotFound(LookupError):
    """The path is well-formed but names no storybook file."""


def resolve_storybook_file(output_dir: str | os.PathLike, relative: str) -> Tuple[Path, str]:
    """The file ``relative`` of a storybook under ``output_dir`` and its content type.

    Args:
        output_dir: ComfyUI's output folder.
        relative: the URL path after :data:`URL_PREFIX`, e.g. ``"seedstory/story_00001/index.html"``.

    Returns:
        (absolute resolved path, content type).

    Raises:
        SeedStoryInputError: the path is not a plain relative path inside ``output_dir`` (see nodes/paths.py), has
            a component starting with '.', names a file a storybook does not write, or has a name longer than the
            file system allows.
        StorybookNotFound: no such file, its folder is not a storybook (no story.json), or another file-system
            error while looking.
    """
    name = relative.replace("\\", "/").rsplit("/", 1)[-1]
    parts = [p for p in relative.replace("\\", "/").split("/") if p]
    if any(p.startswith(".") and p not in (".", "..") for p in parts):
        raise SeedStoryInputError(
            f"{ROUTE_NAME}: {relative[:120]!r} names a hidden file or folder (a name starting with '.'); only the "
            f"files of a finished storybook are served, such as {EXAMPLE!r}."
        )
    try:
        path = resolve_inside(
            output_dir,
            relative,
            node=ROUTE_NAME,
            what="storybook path",
            example=EXAMPLE,
            folder="ComfyUI's output folder",
        )
        if not STORYBOOK_FILE.match(path.name) or not STORYBOOK_FILE.match(name):
            raise SeedStoryInputError(
                f"{ROUTE_NAME}: {relative[:120]!r} is not a storybook file; expected index.html, story.json, "
                f"story.pdf, prompt.json or a frame_NNN.png of a storybook folder, such as {EXAMPLE!r}."
            )
        found = path.is_file() and (path.parent / "story.json").is_file()
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise SeedStoryInputError(
                f"{ROUTE_NAME}: a name in {relative[:80]!r}... is longer than the file system allows "
                f"({max(len(p) for p in parts)} characters); storybook names are short, such as {EXAMPLE!r}."
            ) from err
        raise StorybookNotFound(f"no storybook file {relative[:120]!r} in ComfyUI's output folder") from err
    if not found:
        raise StorybookNotFound(f"no storybook file {relative[:120]!r} in ComfyUI's output folder")
    return path, CONTENT_TYPES[path.suffix.lower()]


def client_message(err: Exception) -> str:
    """The refusal text for an HTTP client: the reason, without absolute server paths.

    A refusal of :func:`nodes.paths.resolve_inside` for a path that leads out of the folder
    (:class:`nodes.paths.OutsideFolderError`) names where the link leads and the output folder's absolute path; those
    stay in the server log. Text-only refusals name just the client's own path and are returned unchanged.
    """
    if isinstance(err, OutsideFolderError):
        return (
            "SeedStory storybook route: the path leads outside ComfyUI's output folder (through a symbolic "
            "link); only storybook files inside that folder are served."
        )
    return str(err)


async def _serve(request):
    """The route's handler: a storybook file, 400 with the reason for a refused path, 404 for a missing one."""
    try:
        path, kind = resolve_storybook_file(glue.output_directory(), request.match_info["path"])
    except SeedStoryInputError as e:
        # a client's bad request, not a server fault: the full reason (it may name absolute server paths) is
        # logged at INFO level only
        logging.info("%s", e)
        return glue.http_text(400, client_message(e))
    except StorybookNotFound as e:
        return glue.http_text(404, str(e))
    return glue.http_file(path, {"Content-Type": kind, "Content-Disposition": "inline", "Cache-Control": "no-cache"})


async def _serve_redo_script(request):
    """``GET /seedstory/redo.js``: the storybook page's redo script, or 404 when the pack has none."""
    if not REDO_SCRIPT.is_file():
        return glue.http_text(404, "SeedStory: this pack has no redo script (nodes/assets/redo.js)")
    return glue.http_file(REDO_SCRIPT, {"Content-Type": "application/javascript", "Cache-Control": "no-cache"})


def register() -> bool:
    """Add the routes to ComfyUI's server (once, through :func:`nodes.comfy_glue.register_get_route`). Returns False
    when ComfyUI's server is not there."""
    global _registered
    if not _registered:
        _registered = glue.register_get_route(ROUTE, _serve)
        if _registered:
            glue.register_get_route(REDO_ROUTE, _serve_redo_script)
    return _registered
