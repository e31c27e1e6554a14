"""The storybook page's redo script (nodes/assets/redo.js) rewrites a storybook's prompt.json for a redo: run with
Node.js on the tiny story's API prompt, no browser (the click itself: tests/browser/test_redo_browser.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require_or_skip
from tests.support.workflows import API_DIR

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "nodes" / "assets" / "redo.js"
RUNNER = """
const vm = require('vm'); const fs = require('fs');
const ctx = { window: {}, JSON, Math, Object, Array, Number, String, isFinite, Error };
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[1], 'utf8'), ctx);
const job = JSON.parse(fs.readFileSync(0, 'utf8'));
const out = [];
let saved = job.saved;
for (const frame of job.frames) {
  try {
    const r = ctx.window.SeedStoryRedo.redoPrompt(saved, frame, 1234);
    out.push(r); saved = { prompt: r.prompt, save_node: saved.save_node };
  } catch (e) { out.push({ error: e.message }); }
}
process.stdout.write(JSON.stringify(out));
"""


def redo_prompts(saved: dict, frames: list) -> list:
    if shutil.which("node") is None:
        require_or_skip("node (Node.js) is not on PATH", "SEEDSTORY_REQUIRE_BROWSER")
    proc = subprocess.run(
        ["node", "-e", RUNNER, str(SCRIPT)],
        input=json.dumps({"saved": saved, "frames": frames}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_redo_rewires_save_story_to_a_redo_frame_node_and_chains():
    prompt = json.loads((API_DIR / "seedstory_tiny_story.json").read_text())
    first, second = redo_prompts({"prompt": prompt, "save_node": "4"}, [2, 3])
    p1 = first["prompt"]
    redo = p1[first["node"]]
    assert first["node"] == "5" and redo["class_type"] == "SeedStoryRedoFrame"
    assert redo["inputs"] == {
        "agent": ["1", 0],
        "detokenizer": ["1", 2],
        "story": ["3", 3],
        "frame": 2,
        "seed": 1234,
        "after": "keep_sentences",
        "sentence": "",
        # Generate Story's visual tokenizer: a story drawn with the consistency retry is redone with it
        "visual_tokenizer": prompt["3"]["inputs"]["visual_tokenizer"],
    }
    assert p1["4"]["inputs"]["images"] == ["5", 0] and p1["4"]["inputs"]["sentences"] == ["5", 1]
    assert "state" not in p1["4"]["inputs"]  # the old story's state does not describe the redone one
    assert {k: v for k, v in p1.items() if k not in ("4", "5")} == {k: v for k, v in prompt.items() if k != "4"}
    # a redo of the redone storybook builds on the first redo's story output
    p2 = second["prompt"]
    assert second["node"] == "6" and p2["6"]["inputs"]["story"] == ["5", 2] and p2["6"]["inputs"]["frame"] == 3
    assert p2["6"]["inputs"]["visual_tokenizer"] == redo["inputs"]["visual_tokenizer"]
    assert p2["4"]["inputs"]["images"] == ["6", 0] and p2["5"] == redo


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        ({"prompt": {}}, "is not a SeedStory storybook prompt"),
        ({"prompt": {}, "save_node": "9"}, "names Save Story node 9, but the prompt has no such node"),
        (
            {
                "prompt": {
                    "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
                    "2": {"class_type": "SeedStorySaveStory", "inputs": {"images": ["1", 0]}},
                },
                "save_node": "2",
            },
            "come from LoadImage, not from SeedStory Generate Story or Redo Frame",
        ),
    ],
)
def test_a_prompt_that_cannot_be_redone_says_why(saved, message):
    (out,) = redo_prompts(saved, [1])
    assert message in out["error"], out
