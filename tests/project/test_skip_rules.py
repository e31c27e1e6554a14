"""The skip-or-fail rule (tests/conftest.py ``require_or_skip``): a missing component skips with its reason on a
developer machine and fails under ``CI=true`` (or its ``SEEDSTORY_REQUIRE_*`` flag). Each case runs one real test
of the suite in a child pytest with the component pointed at a path that does not exist (three child runs in all:
locally, under CI=true, with one component's flag)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MISSING = "/nonexistent/seedstory-missing-component"

#: (test id, env that hides the component, words the reason must contain)
CASES = [
    (
        "tests/core/test_agent_checkpoints.py::test_full_size_meta_keys_equal_official_manifest",
        {"SEEDSTORY_REFERENCE": MISSING},
        "reference material not found",
        "SEEDSTORY_REQUIRE_REFERENCE",
    ),
    (
        "tests/core/test_tokenizer.py::test_real_base_and_image_ids",
        {"SEEDSTORY_LLAMA2_TOKENIZER": MISSING},
        "real LLaMA-2 tokenizer not found",
        "SEEDSTORY_REQUIRE_LLAMA_TOKENIZER",
    ),
    (
        "tests/browser/test_browser.py::test_template_browser_lists_every_workflow",
        {"CHROMIUM": MISSING},
        "browser unavailable: Chromium not found",
        "SEEDSTORY_REQUIRE_BROWSER",
    ),
]


HIDE = {k: v for _t, hide, _r, _f in CASES for k, v in hide.items()}
IDS = [c[0] for c in CASES]


def _child(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI" and not k.startswith("SEEDSTORY_REQUIRE_")}
    env.update(HIDE, **env_extra)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", *IDS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_missing_components_skip_locally_and_fail_in_ci():
    local = _child({})
    assert local.returncode == 0 and f"{len(CASES)} skipped" in local.stdout, local.stdout[-3000:]
    for _test, _hide, reason, _flag in CASES:
        assert reason in local.stdout, (reason, local.stdout[-3000:])
    ci = _child({"CI": "true"})
    assert ci.returncode == 1 and f"{len(CASES)} errors" in ci.stdout, ci.stdout[-3000:]  # failed in the fixture
    for _test, _hide, reason, _flag in CASES:
        assert f"required here (CI=true) but missing: {reason}" in ci.stdout, (reason, ci.stdout[-3000:])
    assert "[comfy_harness] ComfyUI http" not in local.stdout + ci.stdout  # the browser check comes first
    # a component's own flag makes only that component required
    test_id, _hide, reason, flag = CASES[0]
    flagged = _child({flag: "1"})
    assert flagged.returncode == 1 and f"{len(CASES) - 1} skipped, 1 error" in flagged.stdout, flagged.stdout[-3000:]
    assert f"required here ({flag}=1) but missing: {reason}" in flagged.stdout, flagged.stdout[-3000:]
