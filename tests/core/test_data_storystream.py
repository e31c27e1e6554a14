"""StoryStream jsonl reader and the official chunker (docs/reference.md §5)."""

import json

import pytest
from PIL import Image

from seedstory_core.data.storystream import (
    MAX_LINE_BYTES,
    StoryStreamError,
    chunk_stories,
    iter_jsonl,
    iter_lines,
    load_records,
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


def test_iter_lines_caps_lines_and_names_bad_bytes(tmp_path):
    """Lines are read with a cap (an over-long one is refused after MAX_LINE_BYTES + 1 bytes, never whole), decoded
    as UTF-8 with the file, line and column named; iter_jsonl and load_records (the training CLI) read through it."""
    path = tmp_path / "s.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n\n{"b": "caf\xc3\xa9"}')
    assert list(iter_lines(path)) == [(1, '{"a": 1}'), (2, ""), (3, '{"b": "caf\u00e9"}')]
    calls = []
    list(iter_lines(path, on_line=lambda: calls.append(1)))
    assert len(calls) == 4  # before every line, and before the end

    path.write_bytes(b"short\n" + b"x" * (MAX_LINE_BYTES + 10) + b"\nlater\n")
    with pytest.raises(StoryStreamError, match=r"^s\.jsonl line 2: longer than 1,048,576 bytes .*chunk IN OUT"):
        list(iter_lines(path, where="s.jsonl"))
    assert [n for n, _ in iter_lines(path, max_line_bytes=MAX_LINE_BYTES + 10)] == [1, 2, 3]

    story = json.dumps(_story(0, 3))
    path.write_bytes(story.encode() + b"\n" + story.replace("caption", "caf\u00e9").encode("latin-1") + b"\n")
    for read in (lambda: list(iter_lines(path)), lambda: list(iter_jsonl(path)), lambda: load_records(path)):
        with pytest.raises(StoryStreamError, match=rf"{path}:? line 2: not UTF-8 text \(byte 0xe9 at column \d+"):
            read()
