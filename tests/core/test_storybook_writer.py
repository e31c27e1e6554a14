"""The storybook writer (seedstory_core.storybook) and the story command (python -m seedstory_core.tell)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seedstory_core.data import mini
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
