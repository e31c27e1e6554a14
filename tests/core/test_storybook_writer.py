"""The storybook writer (seedstory_core.storybook) and the story command (python -m seedstory_core.tell)."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seedstory_core import storybook
from seedstory_core.data import mini
from seedstory_core.pages import PageOptions
from seedstory_core.rules import StoryRuleError
from seedstory_core.storybook import pair_frames, write_storybook
from seedstory_core.tell import main as tell_main

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "seedstory-tiny"


def test_pair_frames_intro_extra_and_missing():
    assert pair_frames(2, ["a", "b", "c"]) == ("a", ["b", "c"], [])
    assert pair_frames(2, ["a"]) == (None, ["a", ""], [])
    assert pair_frames(1, ["a", "b", "c"]) == (None, ["a"], ["b", "c"])


def test_write_storybook_files_and_escaping(tmp_path):
    frames = [Image.new("RGB", (8, 8), (255, 0, 0)), np.zeros((8, 8, 3), np.uint8)]
    book = write_storybook(
        tmp_path / "b", frames, ["<b>Intro</b>", "one", "two & three"], title="T <x>", state={"step": 1}
    )
    assert book.files == ["frame_000.png", "frame_001.png"] and book.intro == "<b>Intro</b>"
    page = book.index.read_text()
    assert "&lt;b&gt;Intro&lt;/b&gt;" in page and "two &amp; three" in page and "T &lt;x&gt;" in page
    story = json.loads((tmp_path / "b" / "story.json").read_text())
    assert story["format"] == "seedstory-storybook/1" and story["state"] == {"step": 1}
    assert [f["sentence"] for f in story["frames"]] == ["one", "two & three"]
    with Image.open(tmp_path / "b" / "frame_001.png") as im:
        assert im.text["seedstory_sentence"] == "two & three"
    assert book.text == "<b>Intro</b>\none\ntwo & three"


def test_write_storybook_refuses_bad_frames_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        write_storybook(tmp_path / "bad", [np.zeros((8, 8, 3), np.float32)], ["x"])
    assert not (tmp_path / "bad").exists()


def _start_picture(tmp_path):
    story = mini.generate_story(5, 0, frames=3)
    picture = mini.render_story(
        {**story, "captions": story["captions"][:1], "attributes": story["attributes"][:1]}, size=64
    )[0]
    picture.save(tmp_path / "start.png")
    return story


@pytest.mark.slow
def test_tell_command_writes_a_storybook(tmp_path, capsys):
    story = _start_picture(tmp_path)
    (tmp_path / "caps.txt").write_text(story["captions"][1] + "\n")
    rc = tell_main(
        [
            "--model",
            str(TINY),
            "--image",
            str(tmp_path / "start.png"),
            "--text",
            story["captions"][0],
            "--frames",
            "1",
            "--diffusion-steps",
            "2",
            "--mode",
            "visualization",
            "--captions",
            str(tmp_path / "caps.txt"),
            "--out",
            str(tmp_path / "book"),
        ]
    )
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[-1] == str(tmp_path / "book" / "index.html")
    saved = json.loads((tmp_path / "book" / "story.json").read_text())
    assert saved["sentences"] == story["captions"][:2]  # visualization draws the given caption
    assert saved["state"]["policy"] == "multimodal_sink" and len(saved["frames"]) == 2


def test_tell_command_refuses_missing_captions_before_loading(tmp_path, capsys):
    _start_picture(tmp_path)
    rc = tell_main(
        [
            "--model",
            str(tmp_path / "no-model"),
            "--image",
            str(tmp_path / "start.png"),
            "--text",
            "Hi.",
            "--frames",
            "2",
            "--mode",
            "visualization",
            "--out",
            str(tmp_path / "book"),
        ]
    )
    assert rc == 2 and "needs 2 non-empty lines" in capsys.readouterr().err
    rc = tell_main(
        [
            "--model",
            str(tmp_path / "no-model"),
            "--image",
            str(tmp_path / "start.png"),
            "--text",
            "Hi.",
            "--out",
            str(tmp_path / "book"),
        ]
    )
    assert rc == 2 and "not a complete seedstory model folder" in capsys.readouterr().err
    assert not (tmp_path / "book").exists()


# ------------------------------------------------------------------------------------------------ atomic writes
def _entries(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("title", "sentences", "words"),
    [
        ("Max \ud800 and Zoe", ["one", "two"], ["'title'", "U+D800", "lone surrogate"]),
        ("Max", ["one", "tw\x07o"], ["'sentence 2'", "U+0007", "control character"]),
    ],
)
def test_unclean_text_is_refused_before_anything_is_written(tmp_path, title, sentences, words):
    """Old code: a lone surrogate in the title raised UnicodeEncodeError after frame_000.png and a 0-byte story.json
    were written (and the route served them)."""
    frames = [np.zeros((8, 8, 3), np.uint8)] * 2
    with pytest.raises(StoryRuleError) as err:
        write_storybook(tmp_path / "out" / "b", frames, sentences, title=title)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "out").exists() or _entries(tmp_path / "out") == []


def test_a_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    """The files go to a temporary folder that is renamed into place: a failure half-way (here the page) leaves
    neither the storybook folder nor the temporary one."""

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storybook, "render_html", broken)
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="No space"):
        write_storybook(tmp_path / "out" / "b", [np.zeros((8, 8, 3), np.uint8)] * 3, ["a", "b", "c"])
    assert _entries(tmp_path / "out") == []


def test_the_folder_appears_whole_and_an_empty_reserved_folder_is_replaced(tmp_path):
    (tmp_path / "b").mkdir()  # Save Story reserves the numbered folder first
    book = write_storybook(tmp_path / "b", [np.zeros((8, 8, 3), np.uint8)], ["x"])
    assert sorted(p.name for p in book.folder.iterdir()) == ["frame_000.png", "index.html", "story.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary folder left
    umask = os.umask(0)
    os.umask(umask)
    assert book.folder.stat().st_mode & 0o777 == 0o777 & ~umask  # made like any folder, not private like mkdtemp's


def test_rewriting_an_earlier_storybook_replaces_its_files(tmp_path):
    write_storybook(tmp_path / "b", [np.zeros((8, 8, 3), np.uint8)] * 3, ["a", "b", "c"], pdf=True)
    (tmp_path / "b" / "notes.txt").write_text("mine")
    book = write_storybook(tmp_path / "b", [np.zeros((8, 8, 3), np.uint8)], ["x"])
    names = sorted(p.name for p in book.folder.iterdir())
    assert names == ["frame_000.png", "index.html", "notes.txt", "story.json"]  # the user's file is kept
    assert json.loads((tmp_path / "b" / "story.json").read_text())["sentences"] == ["x"]


def test_prompt_json_and_redo_buttons_only_with_a_prompt(tmp_path):
    frames = [np.zeros((8, 8, 3), np.uint8)] * 3
    prompt = {"prompt": {"4": {"class_type": "SeedStorySaveStory", "inputs": {}}}, "save_node": "4"}
    book = write_storybook(tmp_path / "a", frames, ["a", "b", "c"], prompt=prompt)
    assert json.loads((tmp_path / "a" / "prompt.json").read_text()) == prompt
    page = book.index.read_text()
    assert re.findall(r'<button class="seedstory-redo" data-frame="(\d+)">redo</button>', page) == ["1", "2"]
    assert page.rstrip().endswith('<script src="/seedstory/redo.js"></script>\n</body>\n</html>'.rstrip())
    plain = write_storybook(tmp_path / "b", frames, ["a", "b", "c"]).index.read_text()
    assert "seedstory-redo" not in plain and "<script" not in plain and not (tmp_path / "b" / "prompt.json").exists()


def test_pdf_is_linked_from_the_page_and_recorded_in_story_json(tmp_path):
    book = write_storybook(
        tmp_path / "b", [np.zeros((8, 8, 3), np.uint8)] * 2, ["a", "b"], pages=PageOptions(layout="strip"), pdf=True
    )
    assert book.pdf.read_bytes().startswith(b"%PDF-") and '<a href="story.pdf">' in book.index.read_text()
    story = json.loads((tmp_path / "b" / "story.json").read_text())
    assert story["pages"]["layout"] == "strip" and story["pages"]["pdf"] == "story.pdf" and story["pages"]["count"] == 2
