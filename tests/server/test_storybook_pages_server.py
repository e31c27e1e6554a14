"""A 12-frame story from the tiny workflow, saved as a comic PDF by a REAL ComfyUI server (fixture ``comfy_server``),
fetched through the pack's storybook route, rendered by pdftoppm and read by pdftotext; then hostile requests to the
route (a name over the file system's limit, files a storybook does not write, a half-written storybook) that must
answer 400/404, never 500 and never a file.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
from PIL import Image

from seedstory_core.pages import PageOptions, plan_pages
from tests.conftest import require_or_skip
from tests.support.workflows import API_DIR, WORKFLOWS

pytest_plugins = ["tests.support.comfy_harness"]
pytestmark = pytest.mark.comfyui


def raw_get(base_url: str, raw_path: str):
    """GET with the path sent exactly as given: (status, body)."""
    u = urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def flat(text: str) -> str:
    return " ".join(text.split())


def test_tiny_story_as_comic_pdf_through_the_route(comfy_server, tmp_path):
    for tool in ("pdftoppm", "pdftotext"):
        if shutil.which(tool) is None:
            require_or_skip(f"{tool} not found: install Debian poppler-utils (bash scripts/setup_browser.sh)")
    prompt = json.loads((API_DIR / "seedstory_tiny_story.json").read_text())
    if any(n["class_type"] == "LoadImage" for n in prompt.values()):
        comfy_server.upload_image(
            (WORKFLOWS / "assets" / "seedstory_start.png").read_bytes(), name="seedstory_start.png"
        )
    gen = next(k for k, n in prompt.items() if n["class_type"] == "SeedStoryGenerateStory")
    save = next(k for k, n in prompt.items() if n["class_type"] == "SeedStorySaveStory")
    prompt[gen]["inputs"].update(story_steps=11, diffusion_steps=2)
    prompt[save]["inputs"].update(layout="comic", grid="2x2", pdf=True, filename_prefix="pdf_test/tiny", dpi=72)
    res = comfy_server.run(prompt, timeout=420)
    assert res.status == "success", json.dumps(res.error)[:3000]
    ui = res.outputs()[save]
    book = ui["storybook"][0].rsplit("/", 1)[0]
    assert ui["pdf"] == [f"{book}/story.pdf"]
    story = json.loads(comfy_server.get("/seedstory/storybook/" + quote(f"{book}/story.json")).content)
    assert len(story["frames"]) == 12 and story["pages"]["count"] == 4
    r = comfy_server.get("/seedstory/storybook/" + quote(ui["pdf"][0]))
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/pdf" and r.content[:5] == b"%PDF-"
    pdf = tmp_path / "story.pdf"
    pdf.write_bytes(r.content)
    text = flat(subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout)
    for frame in story["frames"]:
        assert flat(frame["sentence"]) in text, frame
    assert flat(story["title"]) in text
    subprocess.run(["pdftoppm", "-r", "72", "-png", str(pdf), str(tmp_path / "p")], check=True, timeout=120)
    pages = [np.asarray(Image.open(p).convert("RGB"), float) for p in sorted(tmp_path.glob("p-*.png"))]
    assert len(pages) == 4
    frames = []
    for f in story["frames"]:
        data = comfy_server.get("/seedstory/storybook/" + quote(f"{book}/{f['image']}")).content
        frames.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), float))
    lines = [story["intro"]] if story["intro"] else []
    plan = plan_pages(
        [(a.shape[1], a.shape[0]) for a in frames],
        [f["sentence"] for f in story["frames"]],
        story["title"],
        lines + story["extra_sentences"],
        PageOptions(layout="comic", grid="2x2", dpi=72),
    )
    for page, im in zip(plan[1:], pages[1:]):
        assert len(page.panels) == 4
        for panel in page.panels:
            left, top, right, bottom = panel.image.px(72)
            crop = Image.fromarray(im[top:bottom, left:right].astype(np.uint8)).resize((16, 16))
            want = Image.fromarray(frames[panel.frame].astype(np.uint8)).resize((16, 16))
            diff = np.abs(np.asarray(crop, float) - np.asarray(want, float)).mean()
            assert diff < 12, (page.number, panel.frame, diff)
    check_hostile_route_requests(comfy_server, book, Path(comfy_server.output_dir))


def check_hostile_route_requests(server, book: str, output_dir: Path) -> None:
    folder = output_dir / book
    (folder / "notes.html").write_text("not written by a storybook")
    (folder / "secret.json").write_text('{"not": "written by a storybook"}')
    half = folder.parent / ".seedstory-tmp-deadbeef"
    half.mkdir()
    (half / "story.json").write_text("{}")
    (half / "index.html").write_text("half-written")
    cases = {
        "/seedstory/storybook/" + "a" * 256 + "/index.html": (400,),
        "/seedstory/storybook/pdf_test/" + "b" * 300 + "/story.json": (400,),
        "/api/seedstory/storybook/" + "c" * 1000 + "/x": (400,),
        "/seedstory/storybook/" + quote(f"{book}/notes.html"): (400,),
        "/seedstory/storybook/" + quote(f"{book}/secret.json"): (400,),
        "/seedstory/storybook/pdf_test/.seedstory-tmp-deadbeef/index.html": (400,),
        "/seedstory/storybook/" + quote(f"{book}/frame_999.png"): (404,),
    }
    for path, allowed in cases.items():
        status, body = raw_get(server.base_url, path)
        assert status in allowed, (path[:80], status, body[:200])
        assert b"not written" not in body and b"half-written" not in body and b"Traceback" not in body
    log = server.log_text()
    assert not re.search(r"File name too long|Error handling request", log), log[-2000:]
