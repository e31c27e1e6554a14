"""StoryStream reader/chunker and the StoryStream-mini generator: official chunking, determinism, disjoint seeds,
parsable captions whose parsed attributes match the drawn ground truth."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from seedstory_core.data import mini
from seedstory_core.data.storystream import StoryStreamError, chunk_stories, iter_jsonl

REPO = Path(__file__).resolve().parents[2]


def test_official_chunking():
    recs = [
        {
            "id": "a",
            "images": [f"{i}.jpg" for i in range(30)],
            "captions": [f"c{i}" for i in range(30)],
            "orders": list(range(30)),
        },
        {"id": "b", "images": [f"{i}.jpg" for i in range(25)], "captions": [f"d{i}" for i in range(25)]},
    ]
    chunks = chunk_stories(recs, 10)
    assert len(chunks) == 5  # 3 + 2: the incomplete trailing chunk is dropped
    assert [c["id"] for c in chunks] == [0, 0, 0, 1, 1]  # id = index of the source story
    assert all(set(c) == {"id", "images", "captions"} for c in chunks)  # orders dropped
    assert chunks[1]["captions"][0] == "c10" and chunks[4]["images"][-1] == "19.jpg"


def test_malformed_line_reports_its_number(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": 1, "images": ["a.jpg"], "captions": ["x"]}\n{"id": 2, "images": [\n')
    with pytest.raises(StoryStreamError, match="2"):
        list(iter_jsonl(path))


def _digest(images):
    h = hashlib.sha256()
    for im in images:
        h.update(im.tobytes())
    return h.hexdigest()


def test_generator_is_deterministic_and_seeds_are_disjoint():
    a = mini.generate_story(3, 1)
    b = mini.generate_story(3, 1)
    assert a == b and _digest(mini.render_story(a)) == _digest(mini.render_story(b))
    other = [mini.generate_story(4, k) for k in range(5)]
    assert all(o["captions"] != a["captions"] for o in other)
    assert a["id"] != mini.generate_story(4, 1)["id"]
    assert len(a["captions"]) == 30 and mini.render_story(a, size=64)[0].size == (64, 64)


@pytest.mark.parametrize("seed", [0, 1000])
def test_every_caption_parses_to_the_drawn_attributes(seed):
    for k in range(3):
        story = mini.generate_story(seed, k)
        for i, (caption, attrs) in enumerate(zip(story["captions"], story["attributes"])):
            parsed = mini.sentence_attributes(caption, story["captions"][:i])
            assert parsed.get("parsed"), caption
            assert parsed["background"] == attrs["background"], (caption, i)
            assert sorted(parsed["present"]) == sorted(attrs["present"]), (caption, i)


def test_cli_writes_a_storystream_folder(tmp_path):
    out = tmp_path / "mini"
    subprocess.run(
        [sys.executable, "-m", "seedstory_core.data.mini", "--seed", "5", "--stories", "2", "--out", str(out)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    stories = [json.loads(line) for line in (out / "stories.jsonl").read_text().splitlines()]
    chunks = [json.loads(line) for line in (out / "chunks10.jsonl").read_text().splitlines()]
    assert len(stories) == 2 and len(chunks) == 6
    assert all((out / "images" / p).is_file() for p in stories[0]["images"])
