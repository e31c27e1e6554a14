"""Save Story's pages, PDF, prompt.json and atomic folder (nodes/output.py), with ComfyUI stand-ins (no server).

The layouts and the PDF itself are checked in tests/core/test_pages_pdf.py; here: the node's inputs and outputs
(the ``pages`` IMAGE batch, the ``pdf`` ui entry the web extension's "open PDF" button reads), ``prompt.json`` for the
redo buttons, and that a refused title / caption leaves the output folder exactly as it was.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from seedstory_core import fonts as fonts_mod
from tests.support.comfy_stubs import InputError, run
from tests.support.pack_loader import load_pack

pack = load_pack()
SaveStory = pack.NODE_CLASS_MAPPINGS["SeedStorySaveStory"]
IMAGES = torch.rand(5, 16, 16, 3, generator=torch.Generator().manual_seed(0))
SENTENCES = "Max finds a map.\none\ntwo\nthree\nfour"


def entries(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_inputs_keep_old_workflows_loading_and_name_the_layouts():
    spec = SaveStory.INPUT_TYPES()
    assert list(spec["required"]) == ["images", "filename_prefix", "title"]  # unchanged: old prompts still run
    opt = spec["optional"]
    assert opt["layout"][0] == ["storybook", "comic", "strip"] and opt["layout"][1]["default"] == "storybook"
    assert opt["pdf"][0] == "BOOLEAN" and opt["pdf"][1]["default"] is False
    assert opt["grid"][0] == ["2x2", "3x2"] and opt["page_size"][0] == ["A4", "Letter"]
    assert spec["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}
    assert SaveStory.RETURN_TYPES == ("STRING", "IMAGE") and SaveStory.RETURN_NAMES == ("storybook", "pages")


def test_comic_pdf_pages_output_and_prompt_json(comfy):
    prompt = {"4": {"class_type": "SeedStorySaveStory", "inputs": {}}, "9": {"inputs": {"images": ["4", 1]}}}
    out = run(
        "SeedStorySaveStory",
        {
            "images": IMAGES,
            "filename_prefix": "books/cat",
            "title": "Zoë's map",
            "sentences": SENTENCES,
            "layout": "comic",
            "grid": "2x2",
            "pdf": True,
            "dpi": 72,
            "prompt": prompt,
            "unique_id": "4",
        },
    )
    index, pages = out["result"]
    folder = Path(index).parent
    assert out["ui"]["pdf"] == ["books/cat_00001/story.pdf"] and (folder / "story.pdf").read_bytes()[:5] == b"%PDF-"
    assert pages.dtype == torch.float32 and pages.shape == (3, 842, 595, 3)  # title + 2 comic pages, A4 at 72 dpi
    assert 0.0 <= float(pages.min()) and float(pages.max()) <= 1.0
    assert json.loads((folder / "prompt.json").read_text()) == {"prompt": prompt, "save_node": "4"}
    assert 'data-frame="4"' in Path(index).read_text() and "/seedstory/redo.js" in Path(index).read_text()
    assert [p for p in folder.parent.iterdir() if p.name.startswith(".")] == []


def test_pages_are_drawn_only_when_used(comfy):
    prompt = {"4": {"class_type": "SeedStorySaveStory", "inputs": {}}, "9": {"inputs": {"images": ["4", 0]}}}
    out = run(
        "SeedStorySaveStory",
        {"images": IMAGES, "filename_prefix": "b/x", "title": "t", "prompt": prompt, "unique_id": "4"},
    )
    assert out["result"][1].shape == (1, 64, 64, 3) and "pdf" not in out["ui"]
    story = json.loads((Path(out["result"][0]).parent / "story.json").read_text())
    assert "pages" not in story


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"title": "Max \ud800 Zoe"}, ["'title'", "U+D800", "Nothing was saved"]),
        ({"sentences": "one\ntw\x1bo"}, ["sentences (line 2)", "U+001B"]),
        ({"sentences": "小猫在船上\nok", "pdf": True}, ["story.pdf cannot be written", "U+5C0F", "Noto Sans"]),
    ],
)
def test_refused_texts_leave_the_output_folder_as_it_was(comfy, monkeypatch, kwargs, words):
    """Old code: a lone surrogate in the title gave a UnicodeEncodeError and left frame_000.png and a 0-byte
    story.json in a new storybook folder."""
    monkeypatch.setattr(fonts_mod, "system_font_dirs", lambda: [])
    monkeypatch.delenv("SEEDSTORY_FONT_DIRS", raising=False)
    out = Path(comfy.tmp / "output")
    before = entries(out)
    args = {"images": IMAGES[:2], "filename_prefix": "books/cat", "title": "t", "sentences": "a\nb", **kwargs}
    with pytest.raises(InputError) as err:
        run("SeedStorySaveStory", args)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert str(err.value).startswith("SeedStory Save Story:")
    after = [e for e in entries(out) if e != "books"]  # the prefix's parent folder may be made
    assert after == [e for e in before if e != "books"], after


def test_a_failed_write_removes_the_reserved_folder(comfy, monkeypatch):
    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pack.nodes.output, "write_storybook", broken)
    with pytest.raises(OSError):
        run("SeedStorySaveStory", {"images": IMAGES[:1], "filename_prefix": "books/cat", "title": "t"})
    assert os.listdir(comfy.tmp / "output" / "books") == []
