"""Save Story never writes outside ComfyUI's output folder: a fuzz test over >= 200 hostile filename prefixes.

Every prefix is offered to ``VALIDATE_INPUTS`` (what ComfyUI calls before running anything) and then to the node
function itself (the run-time check, defence in depth). Each one must be either refused with a clear message or
saved inside the output folder; a snapshot of the whole sandbox (the output folder sits three levels deep in it,
next to symlink targets) shows nothing appeared anywhere else. A stand-in ``folder_paths`` gives the output
folder, as in tests/support/comfy_stubs.py. Also: integer / NaN images are refused and write nothing, and the helper
in nodes/paths.py is checked directly.
"""

from __future__ import annotations

import json
import os
import random
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.support.pack_loader import PACK, load_pack

pack = load_pack()
SaveStory = pack.NODE_CLASS_MAPPINGS["SeedStorySaveStory"]
paths = sys.modules[f"{PACK}.nodes.paths"]
output_mod = sys.modules[f"{PACK}.nodes.output"]
InputError = sys.modules[f"{PACK}.nodes.models"].SeedStoryInputError

IMAGES = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------------------ sandbox
@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """tmp/box/{outside/, deep/a/b/output/}; symlinks inside output pointing outside and inside; folder_paths."""
    box = tmp_path / "box"
    out = box / "deep" / "a" / "b" / "output"
    (out / "sub").mkdir(parents=True)
    (box / "outside").mkdir()
    (out / "link").symlink_to(box / "outside")  # a folder inside output that leads outside
    (out / "linkup").symlink_to("..")  # relative link to output's parent
    (out / "dangling").symlink_to(box / "outside" / "not_yet")  # dangling, would be created outside
    (out / "inner").symlink_to(out / "sub")  # a link that stays inside: allowed
    (out / "sub" / "deeplink").symlink_to(box / "deep")  # nested escape
    fp = types.ModuleType("folder_paths")
    fp.get_output_directory = lambda: str(out)
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    return box, out


def snapshot(root: Path) -> dict:
    """Every entry below root (symlinks not followed): relative path -> kind/size/link target."""
    snap = {}
    for cur, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            p = Path(cur) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                snap[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                snap[rel] = ("dir",)
            else:
                snap[rel] = ("file", p.stat().st_size)
    return snap


def save(prefix, images=IMAGES):
    with torch.inference_mode():
        return SaveStory().save(images=images, filename_prefix=prefix, title="t", sentences="one")


# ------------------------------------------------------------------------------------------------ prefixes
DOTS = [
    "..",
    " ..",
    ".. ",
    " .. ",
    "\t..",
    "..\t",
    "...",
    ". .",
    "\u2024\u2024",
    "\u2025",
    "\uff0e\uff0e",
    ".\u2024",
    "\uff0e.",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    "\u2026",
]
SEPS = ["/", "\\", " / ", "\uff0f", "\uff3c", "%2f", "%5c", "\u2215", "\u2044"]
TAILS = ["x", "x/", "\u7ae5\u8bdd"]
ROOTS = [
    "/",
    "\\",
    "C:\\",
    "C:",
    "c:/",
    "\\\\server\\share\\",
    "//",
    "~/",
    "~",
    "\uff0f",
    "\uff3c",
    "file:///",
    " /",
    "\t/",
    "\\\\?\\C:\\",
    "\uff23:\\",
]
ROOT_TAILS = ["x", "tmp/x", "..\\x"]
SPECIAL = [
    "a/ ../ ../ ../x",
    "a/ .. / .. /x",
    "a/ ..\\ ..\\x",
    "..",
    "../x",
    "a/../../x",
    "%2e%2e%2fx",
    "%2e%2e%2f%2e%2e%2f%2e%2e%2fx",
    "..%2fx",
    "a\x00b",
    "a/\x00/../x",
    "\x00",
    "x" * 300,
    "a/" + "y" * 101,
    "a/" + "y" * 100,
    "\u7ae5" * 70,
    "/".join(["d"] * 110),
    "CON",
    "nul.txt/x",
    "com1",
    "a<b",
    "a|b",
    "a?b",
    "a*b",
    'a"b',
    "a:b",
    "\u202eevil",
    "seedstory/",
    "seedstory\\",
    "seedstory/ ",
    "",
    " ",
    "/",
    ".",
    "./",
    "./x",
    "a/./b",
    "link/x",
    "link",
    "dangling/x",
    "linkup/x",
    "linkup/output/x",
    "inner/x",
    "sub/deeplink/x",
    "sub/x",
    "\u7ae5\u8bdd/\u6545\u4e8b",
    "caf\u00e9",
    "cafe\u0301",
    "\uff53\uff54\uff4f\uff52\uff59",
    "a\tb/x",
    "a/b\n/x",
    "x.",
    "x. ",
    "seedstory/story",
]
PIECES = [
    "a",
    "b",
    "\u00e9",
    "\u7ae5",
    " ",
    "\t",
    ".",
    "..",
    "/",
    "\\",
    "%",
    "%2e",
    "%2f",
    ":",
    "C:",
    "~",
    "\uff0e",
    "\uff0f",
    "\u2024",
    "\u2025",
    "\x00",
    "\u2215",
    "*",
    "link",
    "linkup",
    "inner",
    "-",
    "_",
]


def hostile_prefixes():
    out = []
    for dots in DOTS:  # a<sep><dots><sep><dots><sep><tail>
        for sep in SEPS:
            for tail in TAILS:
                out.append(f"a{sep}{dots}{sep}{dots}{sep}{tail}")
    for root in ROOTS:
        for tail in ROOT_TAILS:
            out.append(root + tail)
    out += SPECIAL
    rng = random.Random(16)
    for _ in range(300):
        out.append("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 9))))
    seen, unique = set(), []
    for p in out:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


PREFIXES = hostile_prefixes()
MUST_REFUSE = [p for p in SPECIAL[:12]] + [
    "link/x",
    "link",
    "dangling/x",
    "linkup/x",
    "sub/deeplink/x",
    "x" * 300,
    "",
    "CON",
]


def test_fuzz_nothing_lands_outside_the_output_folder(sandbox):
    box, out = sandbox
    assert len(PREFIXES) >= 200
    before = snapshot(box)
    refused, saved = {}, {}
    for prefix in PREFIXES:
        verdict = SaveStory.VALIDATE_INPUTS(filename_prefix=prefix)
        if verdict is not True:
            assert isinstance(verdict, str) and "filename_prefix" in verdict and "Expected" in verdict, (
                prefix,
                verdict,
            )
            refused[prefix] = verdict
            with pytest.raises(InputError, match="filename_prefix"):  # the run-time check refuses it too
                save(prefix)
            continue
        res = save(prefix)
        index = Path(res["result"][0])
        real = Path(os.path.realpath(index))
        assert real.is_file() and os.path.commonpath([real, os.path.realpath(out)]) == os.path.realpath(out), prefix
        sub = res["ui"]["images"][0]["subfolder"]
        assert Path(os.path.realpath(out / sub)) == real.parent, (prefix, sub)
        saved[prefix] = sub
    after = snapshot(box)
    out_rel = str(out.relative_to(box))
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    stray = sorted(k for k in changed if not k.startswith(out_rel + os.sep))
    assert not stray, stray[:20]
    # symlinks are untouched and nothing was created behind them
    assert {k: v for k, v in after.items() if v[0] == "link"} == {k: v for k, v in before.items() if v[0] == "link"}
    assert not any((box / "outside").iterdir())
    for prefix in MUST_REFUSE:
        assert prefix in refused, (prefix, saved.get(prefix))
    # both outcomes really happen
    assert len(refused) >= 150 and len(saved) >= 10, (len(refused), len(saved))
    print(f"\n{len(PREFIXES)} prefixes: {len(refused)} refused at validation, {len(saved)} saved inside")


@pytest.mark.parametrize(
    "prefix, expected",
    [
        ("seedstory/story", "seedstory/story_00001"),
        ("seedstory/", "seedstory/story_00001"),  # trailing '/': a folder, default name 'story'
        ("seedstory\\", "seedstory/story_00001"),
        ("\u7ae5\u8bdd/\u6545\u4e8b", "\u7ae5\u8bdd/\u6545\u4e8b_00001"),  # non-ASCII kept
        ("caf\u00e9", "caf\u00e9_00001"),
        ("cafe\u0301", "caf\u00e9_00001"),  # NFKC: composed form
        (" a / b ", "a/b_00001"),  # spaces around names stripped
        ("a/./b", "a/b_00001"),
        ("x. ", "x_00001"),  # trailing dots dropped (Windows would drop them)
        ("inner/x", "inner/x_00001"),  # a symlink that stays inside is fine
        ("a/" + "y" * 100, "a/" + "y" * 100 + "_00001"),  # exactly at the limit
    ],
)
def test_accepted_prefixes_keep_their_name(sandbox, prefix, expected):
    _box, out = sandbox
    assert SaveStory.VALIDATE_INPUTS(filename_prefix=prefix) is True
    res = save(prefix)
    assert res["ui"]["images"][0]["subfolder"] == expected
    assert (out / expected / "index.html").is_file() and Path(res["result"][0]) == out / expected / "index.html"


@pytest.mark.parametrize(
    "prefix, words",
    [
        ("a/ ../ ../ ../x", ["'..'", "parent folder"]),
        ("/etc/x", ["absolute path"]),
        ("C:\\x", ["drive letter"]),
        ("C:x", ["drive letter"]),
        ("~/x", ["home folder"]),
        ("a\x00b", ["NUL"]),
        ("a\tb/x", ["control character"]),
        ("a/. ./x", ["made of dots only"]),
        ("%2e%2e%2fx", ["'%'"]),
        ("x" * 300, ["300 characters", "limit is 100 characters"]),
        ("/".join(["d"] * 110), ["219 characters", "limit is 200"]),
        ("link/x", ["outside", "symbolic link"]),
        ("", ["empty"]),
        ("/", ["absolute path"]),
        ("./", ["names nothing"]),
        ("CON", ["reserved device name"]),
    ],
)
def test_refusals_say_what_was_expected_and_what_to_do(sandbox, prefix, words):
    msg = SaveStory.VALIDATE_INPUTS(filename_prefix=prefix)
    assert isinstance(msg, str) and msg.startswith("SeedStory Save Story: filename_prefix"), msg
    for w in words:
        assert w in msg, (w, msg)
    assert "seedstory/story" in msg or "inside" in msg
    assert "File name too long" not in msg


def test_validate_inputs_outside_comfyui_checks_the_text_and_a_linked_prefix_passes(monkeypatch):
    monkeypatch.delitem(sys.modules, "folder_paths", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "ComfyUI" not in p])
    assert isinstance(SaveStory.VALIDATE_INPUTS(filename_prefix="a/ ../ ../x"), str)
    assert SaveStory.VALIDATE_INPUTS(filename_prefix="seedstory/story") is True
    assert SaveStory.VALIDATE_INPUTS(filename_prefix=None) is True  # linked: checked when the node runs


def test_symlink_swapped_in_after_validation_is_caught_at_run_time(sandbox):
    box, out = sandbox
    assert SaveStory.VALIDATE_INPUTS(filename_prefix="later/x") is True
    (out / "later").symlink_to(box / "outside")  # appears between validation and execution
    with pytest.raises(InputError, match="outside"):
        save("later/x")
    assert not any((box / "outside").iterdir())


# ------------------------------------------------------------------------------------------------ pixels
@pytest.mark.parametrize(
    "images, words",
    [
        ((torch.rand(2, 8, 8, 3) * 255).to(torch.uint8), ["uint8", "float pixel values in [0, 1]", "divide by 255"]),
        (torch.ones(1, 8, 8, 3, dtype=torch.int64), ["int64", "values 1..1"]),
        (torch.ones(1, 8, 8, 3, dtype=torch.bool), ["bool"]),
        (torch.full((1, 8, 8, 3), float("nan")), ["192 NaN", "frame(s) [0]", "fp32"]),
        (torch.cat([torch.rand(1, 8, 8, 3), torch.full((1, 8, 8, 3), float("inf"))]), ["192 infinite", "frame(s) [1]"]),
    ],
)
def test_integer_and_non_finite_images_are_refused_and_write_nothing(sandbox, images, words):
    _box, out = sandbox
    before = snapshot(out)
    with pytest.raises(InputError) as err:
        save("seedstory/story", images)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert "nothing was saved" in str(err.value)
    assert snapshot(out) == before


def test_out_of_range_float_pixels_are_clipped_as_documented(sandbox):
    _box, out = sandbox
    img = torch.zeros(1, 2, 2, 3)
    img[0, 0, 0] = 1.7
    img[0, 1, 1] = -0.3
    res = save("clip", img)
    px = np.asarray(Image.open(Path(res["result"][0]).parent / "frame_000.png"))
    assert px[0, 0].tolist() == [255, 255, 255] and px[1, 1].tolist() == [0, 0, 0]
    assert "clipped" in SaveStory.INPUT_TYPES()["required"]["images"][1]["tooltip"]
    story = json.loads((Path(res["result"][0]).parent / "story.json").read_text())
    assert story["frames"][0]["sentence"] == "one"


# ------------------------------------------------------------------------------------------------ helper
def test_resolve_inside_helper(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "out").symlink_to(tmp_path)
    assert paths.resolve_inside(root, "d/new/file.txt") == Path(os.path.realpath(root)) / "d/new/file.txt"
    assert paths.resolve_inside(str(root), Path("d")) == Path(os.path.realpath(root / "d"))
    for bad in ["../x", "d/../../x", "/abs", "~", "C:/x", "out/x", "out", "", ".", "d/\u2025/x", 5]:
        with pytest.raises(InputError):
            paths.resolve_inside(root, bad, node="N", what="path")
    assert paths.is_inside(root, root / "d") and not paths.is_inside(root, root / "out")
    assert paths.clean_name(" \u7ae5\u8bdd / caf\u00e9 ") == ["\u7ae5\u8bdd", "caf\u00e9"]
    assert "PREFIX_TOOLTIP" in dir(output_mod) and "symbolic link" in output_mod.PREFIX_TOOLTIP


def test_path_too_long_for_the_file_system_is_a_clear_error(tmp_path, monkeypatch):
    """A prefix within the limits under an output folder whose own path is already ~3,900 characters long: the
    file system's ENAMETOOLONG becomes a clear error, not a raw OSError."""
    out = tmp_path
    while len(str(out)) < 3900:
        out = out / ("o" * 150)
    out.mkdir(parents=True)
    fp = types.ModuleType("folder_paths")
    fp.get_output_directory = lambda: str(out)
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    prefix = "a" * 100 + "/" + "b" * 99
    assert SaveStory.VALIDATE_INPUTS(filename_prefix=prefix) is True  # the text is fine
    with pytest.raises(InputError, match="storybook path is too long for this file system .*shorter filename_prefix"):
        save(prefix)
