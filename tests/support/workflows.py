"""The example workflows: where they are, and which need model files this repository does not ship (used by
tests/project/test_workflows.py, the real-server tests and the browser test)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS / "api"

#: Workflows that need model files this repository does not ship (excluded from the real-server run), with why.
NEEDS_EXTERNAL_WEIGHTS = {
    "seedstory_official_george": "the released SEED-Story-George weights (ViT-G, agent, tokenizer, Llama-2-7b, "
    "de-tokenizer) and SD-XL base 1.0, ~35 GB, see the note node",
    "seedstory_native_ksampler": "an SD-XL base checkpoint plus the official visual tokenizer and de-tokenizer: "
    "the tiny model's conditioning (96/64 wide) cannot drive an SD-XL UNet (2048/1280)",
}
