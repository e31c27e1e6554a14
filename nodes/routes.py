"""The pack's HTTP route: open a storybook that Save Story wrote, in the browser, from ComfyUI itself.

``GET /seedstory/storybook/<folder>/<file>`` (ComfyUI also mounts it under ``/api``) serves a file of a storybook
folder inside ComfyUI's output folder: ``index.html`` inline as a web page (ComfyUI 0.30.0's ``/view`` sends HTML
as a download, so the page cannot be opened through it), ``story.json`` and the PNG frames it links. Nothing else:

* the path is checked by :func:`nodes.paths.resolve_inside` against ``folder_paths.get_output_directory()``
  (no absolute paths, no ``..``, no control characters, symlinks resolved and required to stay inside);
* only ``.html``, ``.json`` and ``.png`` files, and only in a folder that holds a ``story.json`` (a storybook);
* a refused path answers 400 with the reason, a missing file 404.

The route is registered when ComfyUI imports the pack (:func:`register`, through ComfyUI's one door,
:mod:`nodes.comfy_glue`, which does nothing outside ComfyUI). :func:`resolve_storybook_file` is the pure part, tested
without ComfyUI.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Tuple

from . import comfy_glue as glue
from .models import SeedStoryInputError
from .paths import OutsideFolderError, resolve_inside

ROUTE = "/seedstory/storybook/{path:.+}"
URL_PREFIX = "/seedstory/storybook/"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json", ".png": "image/png"}
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
        SeedStoryInputError: the path is not a plain relative path inside ``output_dir`` (see nodes/paths.py),
            or its suffix is not .html/.json/.png.
        StorybookNotFound: no such file, or its folder is not a storybook (no story.json).
    """
    path = resolve_inside(
        output_dir,
        relative,
        node="SeedStory storybook route",
        what="storybook path",
        example="seedstory/story_00001/index.html",
        folder="ComfyUI's output folder",
    )
    kind = CONTENT_TYPES.get(path.suffix.lower())
    if kind is None:
        raise SeedStoryInputError(
            f"SeedStory storybook route: {relative!r} is not a storybook file; expected index.html, story.json or a "
            f"PNG frame of a storybook folder, such as 'seedstory/story_00001/index.html'."
        )
    if not path.is_file() or not (path.parent / "story.json").is_file():
        raise StorybookNotFound(f"no storybook file {relative!r} in ComfyUI's output folder")
    return path, kind


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


def register() -> bool:
    """Add the route to ComfyUI's server (once, through :func:`nodes.comfy_glue.register_get_route`). Returns False
    when ComfyUI's server is not there."""
    global _registered
    if not _registered:
        _registered = glue.register_get_route(ROUTE, _serve)
    return _registered
