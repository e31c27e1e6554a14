"""The example workflows: every UI-format file in workflows/ and its API twin in workflows/api/ stay in sync, and
every node type / input / link is checked against the nodes' INPUT_TYPES (ours) or a table of the core nodes used.

UI -> API conversion rule (what ComfyUI's frontend ``graphToPrompt`` does for V1 nodes):
  * virtual nodes (Note, MarkdownNote) and muted/bypassed nodes (mode 2/4) are dropped;
  * inputs are walked in INPUT_TYPES order, required then optional; hidden inputs are skipped;
  * a widget input (INT, FLOAT, STRING, BOOLEAN or a combo list, unless ``forceInput``) takes the next value of
    ``widgets_values``; an INT/FLOAT with ``control_after_generate`` is followed by its UI-only control value
    ('fixed', 'randomize', ...), and an ``image_upload`` combo by the upload button's value -- both skipped;
  * a widget input whose socket is linked, and every socket input, become ``[source node id, output slot]``;
  * unlinked optional sockets are left out.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image
from tests.support.pack_loader import load_pack
from tests.support.start_picture import as_api_twin
from tests.support.workflows import API_DIR, NEEDS_EXTERNAL_WEIGHTS, WORKFLOWS

VIRTUAL = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def _dyn(*_):
    return []  # a combo filled from folders at run time


#: The core ComfyUI nodes our workflows use (ComfyUI 0.3.75 nodes.py): (INPUT_TYPES, RETURN_TYPES).
CORE_SPECS = {
    "LoadImage": ({"required": {"image": ([], {"image_upload": True})}}, ("IMAGE", "MASK")),
    "ImageBatch": ({"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}, ("IMAGE",)),
    "PreviewImage": ({"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT"}}, ()),
    "SaveImage": ({"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}, ()),
    "CheckpointLoaderSimple": ({"required": {"ckpt_name": ([],)}}, ("MODEL", "CLIP", "VAE")),
    "EmptyLatentImage": (
        {
            "required": {
                "width": ("INT", {"default": 512, "min": 16, "max": 16384}),
                "height": ("INT", {"default": 512, "min": 16, "max": 16384}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        },
        ("LATENT",),
    ),
    "KSampler": (
        {
            "required": {
                "model": ("MODEL",),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
                "sampler_name": ([],),
                "scheduler": ([],),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
            }
        },
        ("LATENT",),
    ),
    "VAEDecode": ({"required": {"samples": ("LATENT",), "vae": ("VAE",)}}, ("IMAGE",)),
}


def node_specs() -> dict:
    """type -> (INPUT_TYPES dict, RETURN_TYPES) for our nodes and the core nodes above."""
    pack = load_pack()
    specs = {k: (cls.INPUT_TYPES(), tuple(cls.RETURN_TYPES)) for k, cls in pack.NODE_CLASS_MAPPINGS.items()}
    specs.update(CORE_SPECS)
    return specs


def ordered_inputs(input_types: dict):
    """[(name, type, options, optional?)] in the order the frontend creates widgets / sockets."""
    out = []
    for section in ("required", "optional"):
        for name, entry in input_types.get(section, {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            out.append((name, kind, opts, section == "optional"))
    return out


def is_widget(kind, opts) -> bool:
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def extra_ui_values(kind, opts) -> int:
    """UI-only values that follow a widget's value in widgets_values."""
    if kind in ("INT", "FLOAT") and opts.get("control_after_generate"):
        return 1
    if isinstance(kind, list) and opts.get("image_upload"):
        return 1
    return 0


def ui_to_api(ui: dict, specs: dict) -> dict:
    """Convert a UI-format workflow to the API format (module docstring)."""
    links = {link[0]: (str(link[1]), int(link[2])) for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL or node.get("mode", 0) in (2, 4):
            continue
        input_types, _ = specs[node["type"]]
        values = list(node.get("widgets_values") or [])
        linked = {i["name"]: i.get("link") for i in node.get("inputs", [])}
        inputs, pos = {}, 0
        for name, kind, opts, _optional in ordered_inputs(input_types):
            if is_widget(kind, opts):
                if pos >= len(values):
                    raise ValueError(f"node {node['id']} ({node['type']}): no widget value for '{name}'")
                value = values[pos]
                pos += 1 + extra_ui_values(kind, opts)
                inputs[name] = list(links[linked[name]]) if linked.get(name) is not None else value
            elif linked.get(name) is not None:
                inputs[name] = list(links[linked[name]])
        if pos != len(values):
            raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, {pos} used")
        api[str(node["id"])] = {
            "class_type": node["type"],
            "inputs": inputs,
            "_meta": {"title": node.get("title") or node["type"]},
        }
    return api


def ui_files():
    return sorted(WORKFLOWS.glob("*.json"))


def test_every_ui_workflow_has_an_api_twin_and_vice_versa():
    ui = {p.stem for p in ui_files()}
    api = {p.stem for p in API_DIR.glob("*.json")}
    assert len(ui) >= 5 and ui == api, (ui, api)
    assert set(NEEDS_EXTERNAL_WEIGHTS) <= ui


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.stem)
def test_ui_workflow_is_consistent_and_valid(path):
    specs = node_specs()
    ui = json.loads(path.read_text())
    assert ui["version"] == 0.4 and isinstance(ui.get("extra"), dict) and isinstance(ui.get("groups"), list)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and ui["last_node_id"] >= max(nodes)
    assert ui["last_link_id"] >= max((link[0] for link in ui["links"]), default=0)
    assert any(n["type"] in VIRTUAL for n in ui["nodes"]), "every example explains itself in a note node"
    for link_id, src, src_slot, dst, dst_slot, ltype in ui["links"]:
        s, d = nodes[src], nodes[dst]
        assert link_id in s["outputs"][src_slot]["links"], (path.name, link_id)
        assert d["inputs"][dst_slot]["link"] == link_id, (path.name, link_id)
        _, returns = specs[s["type"]]
        assert returns[src_slot] == ltype == s["outputs"][src_slot]["type"], (path.name, link_id)
        in_types = {name: kind for name, kind, _o, _opt in ordered_inputs(specs[d["type"]][0])}
        assert in_types[d["inputs"][dst_slot]["name"]] == ltype == d["inputs"][dst_slot]["type"], (path.name, link_id)
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL:
            continue
        assert node["type"] in specs, f"{path.name}: unknown node type {node['type']}"
        input_types, returns = specs[node["type"]]
        known = {name for name, *_ in ordered_inputs(input_types)}
        for inp in node.get("inputs", []):
            assert inp["name"] in known, f"{path.name}: node {node['id']} has no input {inp['name']}"
        for name, kind, opts, optional in ordered_inputs(input_types):
            socket = next((i for i in node.get("inputs", []) if i["name"] == name), None)
            if not is_widget(kind, opts) and not optional:
                assert socket is not None and socket["link"] is not None, (
                    f"{path.name}: node {node['id']} '{name}' unconnected"
                )
        assert [o["type"] for o in node.get("outputs", [])] == list(returns), (path.name, node["id"])
    api = ui_to_api(ui, specs)
    for node_id, entry in api.items():
        input_types, _ = specs[entry["class_type"]]
        for name, kind, opts, _optional in ordered_inputs(input_types):
            if name not in entry["inputs"] or isinstance(entry["inputs"][name], list) and not isinstance(kind, list):
                continue
            value = entry["inputs"][name]
            if isinstance(value, list):  # a link into a widget
                continue
            if isinstance(kind, list):
                # combos filled from model folders are empty (or just 'none') outside ComfyUI
                dynamic = not kind or kind == ["none"]
                assert isinstance(value, str) and (dynamic or value in kind), (path.name, node_id, name, value)
            elif kind == "INT":
                assert isinstance(value, int) and not isinstance(value, bool), (path.name, node_id, name, value)
                assert opts.get("min", value) <= value <= opts.get("max", value), (path.name, node_id, name, value)
            elif kind == "FLOAT":
                assert isinstance(value, (int, float)), (path.name, node_id, name, value)
                assert opts.get("min", value) <= value <= opts.get("max", value), (path.name, node_id, name, value)
            elif kind == "BOOLEAN":
                assert isinstance(value, bool), (path.name, node_id, name, value)
            elif kind == "STRING":
                assert isinstance(value, str), (path.name, node_id, name, value)
    for node in ui["nodes"]:  # UI-only control values are real control modes
        if node["type"] in VIRTUAL:
            continue
        values, pos = node.get("widgets_values") or [], 0
        for name, kind, opts, _o in ordered_inputs(specs[node["type"]][0]):
            if is_widget(kind, opts):
                pos += 1
                if extra_ui_values(kind, opts) and kind in ("INT", "FLOAT"):
                    assert values[pos] in ("fixed", "increment", "decrement", "randomize"), (path.name, node["id"])
                pos += extra_ui_values(kind, opts)


@pytest.mark.parametrize("path", ui_files(), ids=lambda p: p.stem)
def test_api_twin_matches_ui(path):
    specs = node_specs()
    # the UI's SeedStory Example Picture is Load Image in the API twin (tests/support/start_picture.py)
    expected = as_api_twin(ui_to_api(json.loads(path.read_text()), specs))
    twin = json.loads((API_DIR / path.name).read_text())
    strip = lambda wf: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in wf.items()}  # noqa: E731
    assert strip(twin) == strip(expected)


def test_start_image_asset_is_shipped():
    asset = WORKFLOWS / "assets" / "seedstory_start.png"
    img = Image.open(asset)
    assert img.size[0] >= 64 and img.mode in ("RGB", "RGBA")
    uses = [p.name for p in ui_files() if '"seedstory_start.png"' in p.read_text()]
    assert len(uses) >= 3, uses


def test_every_ui_workflow_has_a_template_thumbnail():
    """workflows/<name>.jpg (scripts/make_thumbnails.py, from the browser tests' screenshot) for the template
    browser."""
    for path in sorted(WORKFLOWS.glob("*.json")):
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{path.name} has no thumbnail: run python scripts/make_thumbnails.py"
        with Image.open(thumb) as img:
            assert img.format == "JPEG" and img.size == (512, 384), (thumb.name, img.format, img.size)
