"""The storybook route (nodes/routes.py): serves storybook files from the output folder only, refuses hostile paths.

The pure resolver is tested here without ComfyUI;
tests/server/test_comfyui_server.py::test_storybook_route_on_real_server asks a real server over HTTP (raw,
un-normalised URLs included).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.support.pack_loader import load_pack

pack = load_pack()
routes = pack.nodes.routes
SeedStoryInputError = pack.nodes.models.SeedStoryInputError


@pytest.fixture()
def output(tmp_path):
    out = tmp_path / "output"
    book = out / "seedstory" / "story_00001"
    book.mkdir(parents=True)
    (book / "story.json").write_text(json.dumps({"format": "seedstory-storybook/1"}))
    (book / "index.html").write_text("<html>book</html>")
    (book / "frame_000.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (book / "notes.py").write_text("print('x')")
    (book / "story.pdf").write_bytes(b"%PDF-1.4")
    (book / "prompt.json").write_text("{}")
    (book / "report.html").write_text("<html>not written by a storybook</html>")
    (book / "settings.json").write_text("{}")
    tmp = out / "seedstory" / ".seedstory-tmp-0123abcd"  # a storybook being written
    tmp.mkdir()
    (tmp / "story.json").write_text("{}")
    (tmp / "index.html").write_text("<html>half</html>")
    plain = out / "other"
    plain.mkdir()
    (plain / "index.html").write_text("<html>not a storybook</html>")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "story.json").write_text("{}")
    (secret / "index.html").write_text("<html>secret</html>")
    os.symlink(secret, out / "seedstory" / "escape")
    return out


def test_serves_storybook_files(output):
    path, kind = routes.resolve_storybook_file(output, "seedstory/story_00001/index.html")
    assert path == (output / "seedstory" / "story_00001" / "index.html").resolve() and kind.startswith("text/html")
    assert routes.resolve_storybook_file(output, "seedstory/story_00001/frame_000.png")[1] == "image/png"
    assert routes.resolve_storybook_file(output, "seedstory/story_00001/story.json")[1] == "application/json"
    assert routes.resolve_storybook_file(output, "seedstory/story_00001/story.pdf")[1] == "application/pdf"
    assert routes.resolve_storybook_file(output, "seedstory/story_00001/prompt.json")[1] == "application/json"


HOSTILE = [
    "../secret/index.html",
    "seedstory/../../secret/index.html",
    "/etc/passwd",
    "//etc/passwd",
    "seedstory/story_00001/../../../secret/index.html",
    "..\\secret\\index.html",
    "C:/Windows/win.ini",
    "~/index.html",
    "seedstory/story_00001/index.html\x00.png",
    "seedstory/ .. / .. /secret/index.html",
    "\uff0e\uff0e/secret/index.html",
    "seedstory/escape/index.html",
    "",
    " ",
    "seedstory/story_00001/\n",
]


@pytest.mark.parametrize("rel", HOSTILE)
def test_refuses_paths_outside_the_output_folder(output, rel):
    with pytest.raises(SeedStoryInputError) as err:
        routes.resolve_storybook_file(output, rel)
    assert "SeedStory storybook route" in str(err.value)


@pytest.mark.parametrize("rel", ["seedstory/story_00001/notes.py", "seedstory/story_00001"])
def test_refuses_files_that_are_not_storybook_files(output, rel):
    with pytest.raises((SeedStoryInputError, routes.StorybookNotFound)):
        routes.resolve_storybook_file(output, rel)


@pytest.mark.parametrize(
    "rel", ["other/index.html", "seedstory/story_00002/index.html", "seedstory/story_00001/frame_009.png"]
)
def test_missing_or_non_storybook_is_not_found(output, rel):
    with pytest.raises(routes.StorybookNotFound):
        routes.resolve_storybook_file(output, rel)


def test_register_is_a_no_op_without_comfyui(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "server", None)  # `import server` raises ImportError
    monkeypatch.setattr(routes, "_registered", False)
    assert routes.register() is False


def test_client_message_never_names_server_paths(output):
    """The HTTP answer to a refused path keeps absolute server paths (the link's target, the output folder) out."""
    for rel in HOSTILE:
        with pytest.raises(SeedStoryInputError) as err:
            routes.resolve_storybook_file(output, rel)
        shown = routes.client_message(err.value)
        assert str(output.parent) not in shown and os.path.realpath(output.parent) not in shown, (rel, shown)
        assert shown.startswith("SeedStory storybook route")
    with pytest.raises(SeedStoryInputError) as err:
        routes.resolve_storybook_file(output, "seedstory/escape/index.html")
    assert str(output.parent) in str(err.value)  # the full reason (for the log) does name them
    assert "outside ComfyUI's output folder" in routes.client_message(err.value)


@pytest.mark.parametrize(
    "rel",
    [
        "seedstory/story_00001/report.html",  # old code served any .html / .json of a storybook folder
        "seedstory/story_00001/settings.json",
        "seedstory/.seedstory-tmp-0123abcd/index.html",  # half-written: not yet renamed into place
        "seedstory/.seedstory-tmp-0123abcd/story.json",
        ".hidden/story.json",
    ],
)
def test_only_the_files_a_storybook_writes_are_served(output, rel):
    with pytest.raises(SeedStoryInputError) as err:
        routes.resolve_storybook_file(output, rel)
    assert "SeedStory storybook route" in str(err.value)


@pytest.mark.parametrize(
    "rel", ["seedstory/" + "a" * 256 + "/index.html", "a" * 300 + "/story.json", "seedstory/" + "é" * 200 + "/x.png"]
)
def test_a_name_over_the_file_system_limit_is_a_clean_refusal(output, rel):
    """Old code: OSError (File name too long) out of the resolver, an HTTP 500 with a traceback."""
    with pytest.raises((SeedStoryInputError, routes.StorybookNotFound)) as err:
        routes.resolve_storybook_file(output, rel)
    assert "SeedStory storybook route" in str(err.value) or "no storybook file" in str(err.value)


class _Request:
    def __init__(self, path):
        self.match_info = {"path": path}


@pytest.mark.parametrize(
    ("rel", "status"),
    [
        ("seedstory/" + "a" * 256 + "/index.html", 400),
        ("seedstory/story_00001/report.html", 400),
        ("seedstory/story_00002/index.html", 404),
    ],
)
def test_the_handler_answers_400_or_404_never_500(output, monkeypatch, rel, status):
    pytest.importorskip("aiohttp", reason="aiohttp (a ComfyUI requirement) answers the route's requests")
    monkeypatch.setattr(routes.glue, "output_directory", lambda: str(output))
    answer = asyncio.run(routes._serve(_Request(rel)))
    assert answer.status == status, answer.text
    assert str(output) not in answer.text


def test_redo_script_route(monkeypatch, tmp_path):
    pytest.importorskip("aiohttp", reason="aiohttp (a ComfyUI requirement) answers the route's requests")
    script = tmp_path / "redo.js"
    monkeypatch.setattr(routes, "REDO_SCRIPT", tmp_path / "missing.js")
    assert asyncio.run(routes._serve_redo_script(_Request(""))).status == 404
    script.write_text("// redo")
    monkeypatch.setattr(routes, "REDO_SCRIPT", script)
    answer = asyncio.run(routes._serve_redo_script(_Request("")))
    assert answer.headers["Content-Type"] == "application/javascript"
    assert routes.REDO_ROUTE == "/seedstory/redo.js"
