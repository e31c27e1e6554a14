"""StoryStream jsonl reader and the official chunker (docs/reference.md §5)."""

import json

import pytest
from PIL import Image

from seedstory_core.data.storystream import (
    StoryStreamError,
    chunk_stories,
    iter_jsonl,
    load_image,
    main,
    read_jsonl,
    write_jsonl,
)


def _story(i, n=30):
    return {
        "id": f"s{i}",
        "images": [f"s{i}/{f}.jpg" for f in range(n)],
        "captions": [f"caption {i}-{f}" for f in range(n)],
        "orders": list(range(n)),
    }


def test_read_resolves_paths_and_drops_empty(tmp_path):
    p = tmp_path / "a.jsonl"
    lines = [
        json.dumps(_story(0)),
        "",
        json.dumps({"id": "e", "images": [], "captions": []}),
        repr(_story(1, 3)),
    ]  # build_story.py writes Python repr lines
    p.write_text("\n".join(lines) + "\n")
    recs = list(read_jsonl(p, image_dir=tmp_path / "img"))
    assert [r["id"] for r in recs] == ["s0", "s1"]
    assert recs[0]["images"][0] == str((tmp_path / "img" / "s0/0.jpg").resolve())
    assert recs[0]["orders"] == list(range(30))
    assert [r["images"][0] for r in iter_jsonl(p)] == ["s0/0.jpg", "s1/0.jpg"]  # raw paths untouched


@pytest.mark.parametrize(
    "bad, msg",
    [
        ('{"id": 1, "images": ["a"], "captions": [', "malformed JSON"),
        ('{"id": 1, "images": ["a", "b"], "captions": ["x"]}', "2 images but 1 captions"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": 1, "images": ["a"], "captions": [3]}', "caption 0"),
    ],
)
def test_malformed_lines_name_the_line(tmp_path, bad, msg):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps(_story(0)) + "\n\n" + bad + "\n")
    with pytest.raises(StoryStreamError) as e:
        list(read_jsonl(p))
    assert f"{p}:3" in str(e.value) and msg in str(e.value)


def test_chunker_official_quirks():
    stories = [_story(0, 30), _story(1, 25), _story(2, 9)]
    chunks = chunk_stories(stories, 10)
    assert [c["id"] for c in chunks] == [0, 0, 0, 1, 1]  # id = source index; incomplete chunks dropped
    assert all(set(c) == {"id", "images", "captions"} for c in chunks)  # orders dropped
    assert chunks[1]["captions"][0] == "caption 0-10" and chunks[4]["images"][-1] == "s1/19.jpg"
    assert all(len(c["images"]) == len(c["captions"]) == 10 for c in chunks)
    extra = chunk_stories([dict(_story(0), attributes=list(range(30)))], 10, keep=("attributes", "source_id"))
    assert extra[2]["attributes"] == list(range(20, 30)) and extra[2]["source_id"] == "s0"


def test_chunk_cli_and_load_image(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_jsonl([_story(0), _story(1)], src)
    assert main(["chunk", str(src), str(dst), "--len", "10"]) == 0
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(out) == 6 and out[3]["id"] == 1 and "orders" not in out[0]
    im = Image.new("L", (8, 6), 100)
    im.save(tmp_path / "x.png")
    got = load_image(tmp_path / "x.png")
    assert got.mode == "RGB" and got.size == (8, 6)
