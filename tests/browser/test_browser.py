"""The example workflows in a real browser: headless Chromium on the real ComfyUI frontend (fixture ``comfy_server``).

Driver: tests/browser/drive.mjs (Node, npm ``playwright-core`` pinned in tests/browser/package.json, Debian
``chromium``; no browser download). ``bash scripts/setup_browser.sh`` installs both.

For every workflows/*.json:
  * load it from the frontend's template browser as a user does (after pre-setting first-run settings through
    /api/settings): the left sidebar's Templates button, the dialog's "Extensions" > ``seedstory`` category (custom-node
    templates, listed from GET /api/workflow_templates), a click on the workflow's card; the click must fetch
    /api/workflow_templates/seedstory/<name>.json and open a workflow tab named <name>. The dialog must list
    exactly our workflows there, each card with its thumbnail (workflows/<name>.jpg) loaded. No workflow is loaded
    any other way (no direct fetch, no ``app.loadGraphData`` call of ours);
  * no node is missing (every type registered from /object_info, no missing-nodes dialog, no node errors) and
    every widget shows the value saved in the file;
  * the frontend's own ``app.graphToPrompt()`` gives exactly the API twin in workflows/api/ (class types, inputs,
    links; ``_meta`` ignored), the UI's SeedStory Example Picture being the twin's Load Image of the same file;
  * a screenshot of the canvas.
And one test loads the tiny-model story the same way, queues it from the UI (the Run button), waits for the frames
to show up in the Save Story node, and screenshots the canvas and the storybook page it wrote. And one test opens the
frontend's node help for a SeedStory node (select it, the selection toolbox's Info button: the right side panel's
Info tab, which fetches /extensions/seedstory/docs/<NodeId>.md from our WEB_DIRECTORY) and checks that it shows our
page.

Screenshots go to this run's pytest temp folder; they are copied to docs/img/ (workflow_<name>.png,
workflow_seedstory_tiny_story_run.png, storybook_sample.png, node_help_panel.png) when a file there is missing or
``SEEDSTORY_UPDATE_DOCS_IMG=1`` -- so a plain test run never dirties the checkout.

Without Chromium / Node / playwright-core the module is skipped with the reason, except under ``CI=true`` (or
``SEEDSTORY_REQUIRE_BROWSER=1`` / ``SEEDSTORY_REQUIRE_ALL=1``), where that is a failure (conftest.require_or_skip).
Marks: ``comfyui`` and ``browser``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.make_thumbnails import thumbnail
from tests.conftest import require_or_skip
from tests.support.start_picture import as_api_twin
from tests.support.workflows import API_DIR, NEEDS_EXTERNAL_WEIGHTS, WORKFLOWS

pytest_plugins = ["tests.support.comfy_harness"]

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.comfyui, pytest.mark.browser]

BROWSER_DIR = REPO_ROOT / "tests" / "browser"
DRIVER = BROWSER_DIR / "drive.mjs"
DOCS_IMG = REPO_ROOT / "docs" / "img"
START_PNG = WORKFLOWS / "assets" / "seedstory_start.png"
MODULE = "seedstory"  # the template browser's folder name: ComfyUI/custom_nodes/<this pack's folder>
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
PNG = b"\x89PNG\r\n\x1a\n"

#: The run-from-the-UI test: tiny story, its Save Story node, frames = story_steps + 1, and a widget set in the UI
#: (a seed no other test uses, so ComfyUI's cache cannot answer it from an earlier identical prompt).
RUN_WORKFLOW, SAVE_NODE, GENERATE_NODE, RUN_SEED = "seedstory_tiny_story", 4, 3, 7


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in {"1", "true", "yes"}


def chromium_path() -> str:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    if shutil.which("node") is None:
        return "node (Node.js >= 20) is not on PATH"
    chrome = chromium_path()
    if not (os.path.isfile(chrome) and os.access(chrome, os.X_OK)):
        return f"Chromium not found at {chrome} (apt-get install chromium, or set CHROMIUM=...)"
    pinned = json.loads((BROWSER_DIR / "package.json").read_text())["dependencies"]["playwright-core"]
    installed = BROWSER_DIR / "node_modules" / "playwright-core" / "package.json"
    if not installed.is_file():
        return f"playwright-core is not installed in {BROWSER_DIR / 'node_modules'}"
    version = json.loads(installed.read_text())["version"]
    if version != pinned:
        return f"playwright-core {version} installed, package.json pins {pinned}"
    return None


@pytest.fixture(scope="session")  # session scope: checked before the session's ComfyUI server is started
def browser():
    reason = browser_missing()
    if reason:
        reason += "; run: bash scripts/setup_browser.sh"
        require_or_skip(f"browser unavailable: {reason}", "SEEDSTORY_REQUIRE_BROWSER")
    return chromium_path()


@pytest.fixture(scope="module")
def server(browser, comfy_server):
    """The session server with the workflows' start image in its input folder."""
    up = comfy_server.upload_image(START_PNG.read_bytes(), name="seedstory_start.png")
    assert up["name"] == "seedstory_start.png"
    return comfy_server


def drive(job: dict, chromium: str, timeout: float = 240) -> dict:
    """Run tests/browser/drive.mjs with ``job``; returns its JSON (fails the test on a driver error)."""
    job = {"chromium": chromium, **job}
    try:
        proc = subprocess.run(
            ["node", str(DRIVER)],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=BROWSER_DIR,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"browser driver timed out after {timeout}s ({job['action']}): {e.stderr!r}"[-3000:])
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"browser driver printed no JSON (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    if proc.returncode != 0 or "error" in out:
        pytest.fail(f"browser driver failed ({job['action']}): {out.get('error')}\n{proc.stderr[-2000:]}")
    return out


def publish(shot: Path, name: str) -> None:
    """Copy a screenshot into docs/img when it is missing there or SEEDSTORY_UPDATE_DOCS_IMG=1."""
    dest = DOCS_IMG / name
    if _truthy("SEEDSTORY_UPDATE_DOCS_IMG") or not dest.is_file():
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)
        workflow = WORKFLOWS / (name[len("workflow_") : -len(".png")] + ".json")
        if name.startswith("workflow_") and workflow.is_file():  # its template-browser thumbnail too
            thumbnail(dest, workflow.with_suffix(".jpg"))


def png_size(path: Path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data.startswith(PNG), path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def same_value(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def strip(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


# ------------------------------------------------------------------------------------------------ every workflow
@pytest.fixture(scope="module")
def loaded(server, browser, tmp_path_factory):
    """One browser session: each workflow loaded by a click in the template browser, described, converted,
    screenshot."""
    shots = tmp_path_factory.mktemp("browser_shots")
    _INFO.update(server.object_info())  # what this server offers (model-file combos)
    t0 = time.monotonic()
    out = drive(
        {"action": "check", "base": server.base_url, "module": MODULE, "workflows": NAMES, "shots": str(shots)}, browser
    )
    out["seconds"] = time.monotonic() - t0
    sys.stderr.write(f"\n[test_browser] {len(NAMES)} workflows checked in {out['seconds']:.1f} s; shots in {shots}\n")
    return out


_INFO: dict = {}


def server_info() -> dict:
    return _INFO


def _missing_model_values(info: dict, node_type: str, node: dict) -> list:
    """Widget values of ``node`` that are model-file combo choices missing from this server's /object_info list."""
    spec = info.get(node_type, {}).get("input", {})
    combos = {
        k: v[0] for sec in ("required", "optional") for k, v in spec.get(sec, {}).items() if isinstance(v[0], list)
    }
    return [
        w["value"]
        for w in node["widgets"]
        if w["name"] in combos
        and w["value"] not in combos[w["name"]]
        and str(w["value"]).endswith((".safetensors", ".bin", ".pt", ".ckpt", ".json", ".model"))
        or (w["name"] in combos and not combos[w["name"]])
    ]


def test_template_browser_lists_every_workflow(server, loaded):
    """The server lists our workflows as custom-node templates, and the frontend's Templates dialog shows them.

    In the dialog (frontend 1.47.12), custom-node modules are items of the left nav's "Extensions" group; ours,
    ``seedstory``, holds one card per workflows/*.json, each with its thumbnail fetched from
    /api/workflow_templates/seedstory/<name>.jpg and decoded by the browser.
    """
    listed = server.get("/api/workflow_templates").json()
    assert sorted(listed.get(MODULE, [])) == NAMES, listed
    for name in NAMES:  # what the dialog showed each time it was opened to click a card
        got = loaded["workflows"][name]
        assert MODULE in got.get("extensions", []), (name, got.get("extensions"), got.get("error"))
        cards = {c["name"]: c for c in got["listed"]}
        assert sorted(cards) == NAMES, (name, sorted(cards))
        for card, info in cards.items():
            assert len(info["thumbnails"]) == 1, (card, info)
            complete, width, height = info["thumbnails"][0]
            assert complete and width > 0 and height > 0, f"{card}: the card's thumbnail did not load: {info}"
            assert card in info["text"], (card, info["text"])
    # the thumbnails came from our pack (workflows/<name>.jpg), served as JPEG
    fetched = {r["path"]: r for w in loaded["workflows"].values() for r in w.get("requests", [])}
    for name in NAMES:
        jpg = fetched.get(f"/api/workflow_templates/{MODULE}/{name}.jpg")
        assert jpg and jpg["status"] == 200 and jpg["content_type"] == "image/jpeg", (name, jpg)


@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_with_no_missing_nodes_and_saved_widget_values(loaded, name):
    got = loaded["workflows"][name]
    # loaded by the click on its card: that click fetched our template and opened a workflow tab of that name
    assert got.get("via") == "template-browser" and not got.get("error"), got
    assert got.get("http_status") == 200, got
    assert got["template_url"] == f"/api/workflow_templates/{MODULE}/{name}.json", got["template_url"]
    assert got["active_workflow"] == name, got["active_workflow"]
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert not got["dialogs"], f"{name}: a dialog opened on load (missing nodes?): {got['dialogs']}"
    # node ids are numbers in the file; frontend 1.47 (ComfyUI 0.30.0) reports them as strings
    nodes = {str(n["id"]): n for n in got["nodes"]}
    assert sorted(nodes) == sorted(str(n["id"]) for n in ui["nodes"]), (name, sorted(nodes))
    for saved in ui["nodes"]:
        node = nodes[str(saved["id"])]
        where = f"{name}: node {saved['id']} ({saved['type']})"
        assert node["type"] == saved["type"], where
        assert node["registered"], f"{where} is missing in the frontend (not in /object_info?)"
        if node["has_errors"]:
            # frontend 1.47 flags a model combo whose file is not on this server; only the workflows that need
            # external weights (tests/support/workflows.py NEEDS_EXTERNAL_WEIGHTS) may have those, and only on
            # such a combo
            missing = _missing_model_values(server_info(), saved["type"], node)
            assert name in NEEDS_EXTERNAL_WEIGHTS and missing, f"{where} is flagged with errors"
        assert node["mode"] == saved.get("mode", 0), where
        want = saved.get("widgets_values") or []
        # the live widgets, in order, show the file's values ('$$' widgets are canvas-only, e.g. the image preview)
        live = [w for w in node["widgets"] if not w["name"].startswith("$$")]
        assert len(live) == len(want), (where, [w["name"] for w in live], want)
        for i, value in enumerate(want):
            assert same_value(live[i]["value"], value), (
                f"{where}: widget {live[i]['name']!r} shows {live[i]['value']!r}, the file says {value!r}"
            )
        # and what the frontend would save again is what the file holds
        again = node["widgets_values"] or []
        assert len(again) == len(want) and all(map(same_value, again, want)), (where, again, want)


@pytest.mark.parametrize("name", NAMES)
def test_frontend_graph_to_prompt_equals_the_api_twin(loaded, name):
    # the UI's SeedStory Example Picture is Load Image in the API twin (tests/support/start_picture.py)
    got = as_api_twin(loaded["workflows"][name]["prompt"])
    twin = json.loads((API_DIR / f"{name}.json").read_text())
    got_s, twin_s = strip(got), strip(twin)
    assert sorted(got_s) == sorted(twin_s), f"{name}: node ids differ: frontend {sorted(got_s)}, twin {sorted(twin_s)}"
    for node_id in twin_s:
        g, t = got_s[node_id], twin_s[node_id]
        assert g["class_type"] == t["class_type"], (name, node_id)
        assert sorted(g["inputs"]) == sorted(t["inputs"]), (name, node_id, sorted(g["inputs"]), sorted(t["inputs"]))
        for inp, value in t["inputs"].items():
            assert same_value(g["inputs"][inp], value), (
                f"{name}: node {node_id} input {inp!r}: frontend {g['inputs'][inp]!r}, API twin {value!r}"
            )


@pytest.mark.parametrize("name", NAMES)
def test_workflow_screenshot(loaded, name):
    shot = Path(loaded["workflows"][name]["screenshot"])
    assert png_size(shot) == (1600, 1000)
    assert shot.stat().st_size > 20_000, "an empty canvas compresses to almost nothing"
    publish(shot, f"workflow_{name}.png")


def test_page_had_no_uncaught_errors(loaded):
    assert not loaded["log"]["page_errors"], loaded["log"]["page_errors"]
    assert loaded["seconds"] < 120, loaded["seconds"]


# ------------------------------------------------------------------------------------------------ run from the UI
def wait_history(server, prompt_id: str, timeout: float = 30.0) -> dict:
    """The history entry of a finished prompt (it is written just after the last 'executed' message)."""
    deadline = time.monotonic() + timeout
    while True:
        entry = server.history(prompt_id).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None or time.monotonic() > deadline:
            assert entry, f"prompt {prompt_id} not in /history after {timeout}s"
            return entry
        time.sleep(0.25)


def test_queue_tiny_story_from_the_ui(server, browser, tmp_path):
    run_shot = tmp_path / "run.png"
    api = json.loads((API_DIR / f"{RUN_WORKFLOW}.json").read_text())
    frames = api[str(GENERATE_NODE)]["inputs"]["story_steps"] + 1
    out = drive(
        {
            "action": "queue",
            "base": server.base_url,
            "module": MODULE,
            "workflow": RUN_WORKFLOW,
            "node": SAVE_NODE,
            "frames": frames,
            "set": [[GENERATE_NODE, "seed", RUN_SEED]],
            "shot": str(run_shot),
            "timeout_ms": 200_000,
        },
        browser,
        timeout=260,
    )
    assert not out["log"]["page_errors"], out["log"]["page_errors"]
    # loaded by a click on its card in the template browser
    load = out["load"]
    assert load["via"] == "template-browser" and load["http_status"] == 200, load
    assert load["template_url"] == f"/api/workflow_templates/{MODULE}/{RUN_WORKFLOW}.json", load
    assert load["active_workflow"] == RUN_WORKFLOW, load
    response = out["prompt_response"]
    assert response["node_errors"] == {}, response
    # what the node shows: the frames written by Save Story, served by /view
    assert len(out["srcs"]) == frames and all("/view?" in s and "type=output" in s for s in out["srcs"]), out["srcs"]
    assert all(w > 0 and h > 0 for w, h in out["sizes"]), out["sizes"]
    # the server ran exactly what the UI showed, with the widget the test set
    hist = wait_history(server, response["prompt_id"])
    assert hist["status"]["status_str"] == "success", hist["status"]
    ran = hist["prompt"][2]
    assert ran[str(GENERATE_NODE)]["inputs"]["seed"] == RUN_SEED
    expected = strip(api)
    expected[str(GENERATE_NODE)]["inputs"]["seed"] = RUN_SEED
    assert strip(as_api_twin(ran)) == expected  # the UI's Example Picture is its twin's Load Image
    saved = hist["outputs"][str(SAVE_NODE)]
    assert [i["filename"] for i in saved["images"]] == [f"frame_{i:03d}.png" for i in range(frames)]
    book = server.output_dir / saved["storybook"][0]
    assert book.is_file(), book
    assert png_size(run_shot) == (1600, 1000)
    publish(run_shot, f"workflow_{RUN_WORKFLOW}_run.png")

    # the storybook page it wrote, as a reader sees it
    book_shot = tmp_path / "storybook.png"
    page = drive(
        {"action": "shot", "url": book.as_uri(), "shot": str(book_shot), "viewport": [1000, 1100]}, browser, timeout=60
    )
    assert page["title"] == api[str(SAVE_NODE)]["inputs"]["title"]
    assert len(page["images"]) == frames and all(ok and w > 0 for ok, w in page["images"]), page["images"]
    publish(book_shot, "storybook_sample.png")
    sys.stderr.write(f"\n[test_browser] UI run: {out['run_ms'] / 1000:.1f} s from click to frames; {run_shot}\n")


# ------------------------------------------------------------------------------------------------ in-app node help
HELP_NODE = "SeedStoryGenerateStory"
WEB_DOCS = REPO_ROOT / "web" / "docs"


def _markdown_plain(line: str) -> str:
    """A one-line markdown paragraph as the browser's innerText shows it (emphasis and code marks dropped)."""
    return line.replace("**", "").replace("*", "").replace("`", "").strip()


def test_node_help_panel_shows_our_docs_page(server, browser, tmp_path):
    """Select a SeedStory node, press the selection toolbox's Info button: the panel renders web/docs/<NodeId>.md.

    Frontend 1.47 (ComfyUI 0.30.0): the Info button opens the right side panel on its Info tab; that tab's node
    help fetches ``/extensions/<pack folder>/docs/<NodeId>/<locale>.md``, then ``/extensions/<pack>/docs/<NodeId>.md``
    (our WEB_DIRECTORY), and falls back to the node's description and an inputs table when neither is there.
    What is checked comes from the page itself, and none of it is in that fallback: its title, the search-alias
    line (the generator writes it from SEARCH_ALIASES, not from the node's description) and the columns of its
    inputs table (the fallback table has name / type / description only).
    """
    page_md = (WEB_DOCS / f"{HELP_NODE}.md").read_text(encoding="utf-8").splitlines()
    title = next(line[2:].strip() for line in page_md if line.startswith("# "))
    aliases = _markdown_plain(next(line for line in page_md if line.startswith("Also found in the node search as")))
    columns = [c.strip() for c in next(line for line in page_md if line.startswith("| input |")).strip("|").split("|")]
    assert "range" in columns and "default" in columns, columns  # the columns only our page has

    shot = tmp_path / "node_help_panel.png"
    out = drive(
        {"action": "help", "base": server.base_url, "node": HELP_NODE, "expect": [title, aliases], "shot": str(shot)},
        browser,
        timeout=180,
    )
    assert not out["log"]["page_errors"], out["log"]["page_errors"]
    assert out["selected"] == [HELP_NODE]
    # the panel rendered our markdown (not the fallback), fetched from our pack's web folder
    fetched = {d["path"]: d for d in out["docs"]}
    ours = f"/extensions/{MODULE}/docs/{HELP_NODE}.md"
    assert ours in fetched, out["docs"]
    assert fetched[ours]["status"] == 200 and "html" not in fetched[ours]["content_type"], fetched[ours]
    assert title in out["headings"], out["headings"]
    assert aliases in out["text"], out["text"][:2000]
    assert [c for c in columns if c not in out["table_headers"]] == [], (columns, out["table_headers"])
    # every input of the node is named in the panel
    inputs = server.object_info()[HELP_NODE]["input"]
    names = [k for sec in ("required", "optional") for k in inputs.get(sec, {})]
    assert [n for n in names if n not in out["text"]] == [], names
    left, top, width, height = out["box"]
    assert width > 200 and height > 200, out["box"]
    assert png_size(shot) == (1600, 1000)
    publish(shot, "node_help_panel.png")
