"""The documentation stays true: docs/nodes.md is generated from the nodes, and every command shown in a ```bash
block of README.md or docs/*.md is exercised.

Every documented command must match a rule in COMMANDS:
  * ``run``   -- cheap: the test runs it exactly as written (from the repository root) and expects exit 0;
  * ``help``  -- too slow / needs weights, data, network or GPUs: the test runs the tool's ``--help`` and checks that
                 every ``--flag`` the command uses is accepted, and that every repository path it names exists;
  * ``test``  -- run by another test (named; the test checks that test still exists), or by CI;
  * ``server``-- run against the real ComfyUI (``test_api_command_from_readme_against_real_server``).
An unmatched command fails: add a rule (or a test) when you document a new command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from scripts import gen_node_docs
from tests.conftest import require_or_skip

REPO_ROOT = Path(__file__).resolve().parents[2]

DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
PY = sys.executable


def _python_module_help(cmd: list[str]) -> list[str]:
    """[python, -m, module, --help] for a `python -m module ...` command."""
    i = cmd.index("-m")
    return [PY, "-m", cmd[i + 1], "--help"]


def _accelerate_help(cmd: list[str]) -> list[str]:
    i = cmd.index("-m")
    return [PY, "-m", cmd[i + 1], "--help"]


#: (regex on the command, kind, detail)
COMMANDS = [
    (r"^bash scripts/demo\.sh$", "test", "CI entry (README top block, owned by the lead)"),
    (r"^bash scripts/setup_env\.sh( --venv DIR)?$", "test", "CI entry: creates the venv every test run uses"),
    (
        r"^bash scripts/setup_browser\.sh( --check| --no-apt)*$",
        "test",
        "tests/browser/test_browser.py::browser_missing (its skip reason names it)",
    ),
    (r"^\.venv/bin/python -m pytest", "test", "CI: the test run itself"),
    (
        r"^bash scripts/test\.sh( --lane (current|classic|oldest))?$",
        "test",
        "tests/server/test_comfyui_server.py::test_ci_runs_the_readme_test_command (.ci/run runs it)",
    ),
    (
        r"^\.venv/bin/python scripts/comfy_server\.py (start|stop)$",
        "test",
        "tests/server/test_comfyui_server.py (scripts/comfy_server.py's library, seedstory_client.launcher, starts "
        "every test server)",
    ),
    (r"^python scripts/gen_node_docs\.py( --check| --stdout)?$", "run", None),
    (r"^python -m seedstory_core\.(convert|golden|sink|data\.mini) --help$", "run", None),
    (r"^python -m seedstory_client\.batch --help$", "run", None),
    (r"^python evaluation/results/(paired|table)\.py \S", "run", None),
    (
        r"^python -m training\.(vae|stage0_visual_tokenizer|stage1_detokenizer|stage2_instruction|stage3_adaptation"
        r"|rollout) --help$",
        "run",
        None,
    ),
    (
        r"^python -m seedstory_core\.convert (vit|agent|detokenizer) \S+ \S+",
        "help",
        "tests/core/test_agent_checkpoints.py::test_convert_cli_round_trip runs the converter on a real file",
    ),
    (r"^python -m seedstory_core\.data\.mini ", "help", None),
    (
        r"^python -m training\.(vae|stage1_detokenizer|stage2_instruction|stage3_adaptation) --data ",
        "help",
        "tests/training/test_training.py::test_stage2_resume_in_new_process_matches_uninterrupted runs the stage CLIs",
    ),
    (
        r"^python -m training\.rollout --model ",
        "help",
        "tests/training/test_tiny_recipe.py::test_recipe_smoke_run_exports_a_loadable_bundle runs the rollouts of the "
        "recipe; tests/training/test_training.py::test_rollout_records_free_running_features_not_teacher_forced",
    ),
    (
        r"^python -m training\.stage0_visual_tokenizer --(data|measure) ",
        "help",
        "tests/training/test_tiny_recipe.py::test_recipe_smoke_run_exports_a_loadable_bundle runs stage 0 from its "
        "CLI arguments and its measurement; tests/training/test_stage0.py runs train_stage0 and measure_bundles",
    ),
    (
        r"^accelerate launch --config_file training/configs/\S+\.yaml -m training\.",
        "help",
        "tests/training/test_training.py::test_accelerate_configs_parse parses the configs",
    ),
    (
        r"^python -m training\.tiny_recipe ",
        "help",
        "tests/training/test_tiny_recipe.py::test_recipe_smoke_run_exports_a_loadable_bundle runs the whole recipe "
        "at 1% scale",
    ),
    (
        r"^python -m seedstory_core\.tell ",
        "help",
        "tests/core/test_storybook_writer.py::test_tell_command_writes_a_storybook runs the command on the bundled "
        "model",
    ),
    (
        r"^python -m evaluation\.evaluate ",
        "help",
        "tests/evaluation/test_evaluate.py::test_evaluate_cli_runs_on_a_small_model runs the evaluation CLI",
    ),
    (
        r"^python -m evaluation\.renderer_budget ",
        "help",
        "tests/evaluation/test_renderer_budget.py runs the CLI (main) on one story",
    ),
    (
        r"^python -m evaluation\.context_drift ",
        "help",
        "tests/evaluation/test_context_drift.py runs the CLI (main) on two short stories",
    ),
    (
        r"^python -m evaluation\.(cast_eval|pooled|tune_retry|hand_check) ",
        "help",
        "tests/evaluation/test_cast_eval.py runs cast_eval and pooled on a random tiny model, "
        "tests/evaluation/test_tune_retry.py runs tune_retry on one short story; hand_check ran for "
        "docs/evaluation.md (outputs in evaluation/results/cast and evaluation/hand_check)",
    ),
    (
        r"^python -m evaluation\.(decoding|next_sentence) ",
        "help",
        "tests/evaluation/test_decoding.py and tests/evaluation/test_next_sentence.py run the CLIs on one story of "
        "the bundled model (outputs: evaluation/results/decoding, evaluation/results/next_sentence)",
    ),
    (r"^hf download ", "help", "network: Hugging Face downloads are not run by tests"),
    (r"^seedstory-batch ", "help", "seedstory_client/batch/ (python -m seedstory_client.batch)"),
    (
        r"^python -m seedstory_client\.batch \S+\.jsonl ",
        "help",
        "tests/project/test_docs.py::test_api_command_from_readme_against_real_server runs the batch client as written",
    ),
    (r"^python -c .*\| curl -s -X POST http://127\.0\.0\.1:8188/prompt ", "server", None),
]


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every command line in a ```bash / ```sh fence (continuations joined, comments dropped)."""
    out = []
    fence = re.compile(r"^```(\w*)\s*$")
    for path in DOC_FILES:
        lang, buf = None, []
        for line in path.read_text(encoding="utf-8").splitlines():
            m = fence.match(line.strip())
            if m and lang is None:
                lang = m.group(1) or "text"
                continue
            if line.strip() == "```" and lang is not None:
                if lang in ("bash", "sh", "shell"):
                    joined = "\n".join(buf).replace("\\\n", " ")
                    for cmd in joined.splitlines():
                        cmd = re.sub(r"\s+#\s.*$", "", cmd).strip()
                        if cmd and not cmd.startswith("#"):
                            for part in cmd.split(" && "):  # `a && b` = two commands
                                out.append((path.relative_to(REPO_ROOT).as_posix(), " ".join(part.split())))
                lang, buf = None, []
                continue
            if lang is not None:
                buf.append(line)
    return out


def rule_for(cmd: str):
    for pattern, kind, detail in COMMANDS:
        if re.search(pattern, cmd):
            return kind, detail
    return None


ALL = doc_commands()


# ------------------------------------------------------------------------------------------------ nodes.md
def test_nodes_md_is_up_to_date():
    """docs/nodes.md and the in-app help pages web/docs/<NodeId>.md come from one generator and are current."""
    files = gen_node_docs.render_all()
    assert gen_node_docs.stale(files) == [], "stale node docs: run python scripts/gen_node_docs.py"
    pack = gen_node_docs.load_pack()
    pages = {p.stem for p in gen_node_docs.WEB_DOCS.glob("*.md")}
    assert pages == set(pack.NODE_CLASS_MAPPINGS), pages ^ set(pack.NODE_CLASS_MAPPINGS)
    nodes_md = files[gen_node_docs.OUT]
    for node_id in pack.NODE_CLASS_MAPPINGS:  # each help page is that node's section of docs/nodes.md
        page = files[gen_node_docs.WEB_DOCS / f"{node_id}.md"]
        body = page.split("\n", 1)[1].rsplit("<!--", 1)[0].strip()
        assert body in nodes_md, node_id
    assert pack.WEB_DIRECTORY == "./web"


def test_every_node_has_search_aliases():
    pack = gen_node_docs.load_pack()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.NODE_ID == node_id and pack.NODE_DISPLAY_NAME_MAPPINGS[node_id] == cls.DISPLAY_NAME
        assert cls.SEARCH_ALIASES and all(isinstance(a, str) and a for a in cls.SEARCH_ALIASES), node_id
    assert {"story", "comic", "storyboard"} <= set(pack.NODE_CLASS_MAPPINGS["SeedStoryGenerateStory"].SEARCH_ALIASES)


def test_nodes_md_documents_every_node_and_input():
    pack = gen_node_docs.load_pack()
    text = gen_node_docs.OUT.read_text(encoding="utf-8")
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert f"id `{node_id}`" in text
        assert " ".join(cls.DESCRIPTION.split()) in text
        with gen_node_docs.without_comfyui():
            spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                tip = " ".join(entry[1]["tooltip"].split()).replace("|", "\\|")
                assert f"| `{name}`" in text and tip in text, (node_id, name)
        for rname in cls.RETURN_NAMES:
            assert f"| `{rname}` |" in text, (node_id, rname)


def test_nodes_md_does_not_depend_on_importable_comfyui(monkeypatch):
    """Stand-in ComfyUI modules in sys.modules (as the unit tests put there) must not change the page."""
    fake = types.ModuleType("folder_paths")
    fake.get_filename_list = lambda name: ["should_not_appear.safetensors"]
    fake.models_dir = "/nonexistent"
    fake.folder_names_and_paths = {}
    fake.get_folder_paths = lambda name: []
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    assert "should_not_appear" not in gen_node_docs.render()


# ------------------------------------------------------------------------------------------------ links, images
@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_relative_links_and_images_exist(path):
    text = path.read_text(encoding="utf-8")
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^(https?:|mailto:|#)", target):
            continue
        if not (path.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{path.name}: broken relative links {missing}"


def test_training_md_keeps_the_tiny_recipe_section():
    text = (REPO_ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert "## Tiny model recipe" in text


# ------------------------------------------------------------------------------------------------ commands
def test_docs_show_commands():
    files = {f for f, _ in ALL}
    assert {"README.md", "docs/models.md", "docs/training.md"} <= files, files


@pytest.mark.parametrize("where,cmd", ALL, ids=[f"{f}:{c[:60]}" for f, c in ALL])
def test_documented_command_is_exercised(where, cmd):
    rule = rule_for(cmd)
    assert rule, f"{where}: no test runs `{cmd}` -- add a rule to tests/project/test_docs.py COMMANDS (or a test)"
    kind, detail = rule
    argv = shlex.split(cmd)
    for tok in argv:  # repository paths the command names exist
        if re.match(r"^(training/configs|workflows|scripts)/", tok):
            assert (REPO_ROOT / tok).exists(), f"{where}: `{cmd}` names {tok}, which does not exist"
    if kind == "run":
        if argv[0] == "python":
            argv[0] = PY
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, f"{where}: `{cmd}` exited {proc.returncode}:\n{proc.stderr[-2000:]}"
    elif kind == "help":
        if argv[0] == "python":
            help_cmd = _python_module_help(argv)
        elif argv[0] == "accelerate":
            help_cmd = _accelerate_help(argv)
            flags_of_launcher = {"--config_file"}
            argv = [a for a in argv if a not in flags_of_launcher]
        elif argv[0] == "seedstory-batch":
            help_cmd = [PY, "-m", "seedstory_client.batch", "--help"]
        elif argv[:2] == ["hf", "download"]:
            hf = shutil.which("hf") or str(Path(PY).parent / "hf")
            if not os.path.exists(hf):
                require_or_skip(
                    "the `hf` CLI is not installed (huggingface_hub installs it; scripts/setup_env.sh)",
                    "SEEDSTORY_REQUIRE_HF_CLI",
                )
            help_cmd = [hf, "download", "--help"]
        else:
            pytest.fail(f"no --help recipe for `{cmd}`")
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
        proc = subprocess.run(help_cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, f"`{' '.join(help_cmd)}` exited {proc.returncode}: {proc.stderr[-2000:]}"
        help_text = proc.stdout + proc.stderr
        flags = {a.split("=")[0] for a in argv if a.startswith("--")}
        unknown = sorted(f for f in flags if not re.search(re.escape(f) + r"\b", help_text))
        assert not unknown, f"{where}: `{cmd}` uses {unknown}, which `{' '.join(help_cmd[-3:])}` does not list"
    elif kind == "test":
        m = re.match(r"^(tests/\S+\.py)::(\w+)", detail or "")
        if m:
            body = (REPO_ROOT / m.group(1)).read_text(encoding="utf-8")
            assert re.search(rf"\b{m.group(2)}\b", body), f"rule for `{cmd}` names {detail}, which is gone"
    # kind == "server": test_api_command_from_readme_against_real_server
    if detail:
        m = re.match(r"^(tests/\S+\.py)::(\w+)", detail)
        if m:
            body = (REPO_ROOT / m.group(1)).read_text(encoding="utf-8")
            assert re.search(rf"\b{m.group(2)}\b", body), f"rule for `{cmd}` names {detail}, which is gone"


@pytest.mark.comfyui
def test_api_command_from_readme_against_real_server(comfy_dir, tmp_path):
    """The README's API and batch instructions, AS WRITTEN: the manual server (`scripts/comfy_server.py start`, port
    8188, the ComfyUI tree's own input/ and output/ folders), the start picture copied into its input/ folder, the
    `POST /prompt` one-liner unchanged, the storybook in output/seedstory/ and its page from the pack's route, then
    the batch command from the README."""
    cmds = [c for _f, c in ALL if rule_for(c) and rule_for(c)[0] == "server"]
    assert cmds, "README shows the POST /prompt example"
    batch = [c for _f, c in ALL if c.startswith("python -m seedstory_client.batch jobs.jsonl")]
    assert batch, "README shows the batch command"
    if shutil.which("curl") is None:
        # scripts/setup_env.sh installs curl (through scripts/setup_browser.sh): required under CI=true
        require_or_skip(
            "curl is not installed (apt-get install curl, or bash scripts/setup_browser.sh)", "SEEDSTORY_REQUIRE_CURL"
        )
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8188)) == 0:
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail("port 8188 is taken; the README's instructions need it")
            pytest.skip("port 8188 is taken by another server here; the README's instructions need it")
    state = tmp_path / "server.json"
    start = [PY, "scripts/comfy_server.py", "start", "--comfy-dir", str(comfy_dir), "--state", str(state)]
    proc = subprocess.run(start, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "http://127.0.0.1:8188"
    try:
        installed = comfy_dir / "custom_nodes" / "seedstory"
        if (comfy_dir / ".seedstory_provisioned").is_file():
            assert installed.is_dir() and not installed.is_symlink()  # a copy, as a user gets it
        shutil.copy(REPO_ROOT / "workflows" / "assets" / "seedstory_start.png", comfy_dir / "input")
        for cmd in cmds:
            cmd = cmd.replace("python -c", f"{PY} -c", 1)
            proc = subprocess.run(["bash", "-c", cmd], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            answer = json.loads(proc.stdout)
            assert answer.get("prompt_id") and answer.get("node_errors") == {}, answer
            deadline = time.monotonic() + 300
            entry = None
            while time.monotonic() < deadline:
                entry = (
                    requests.get(f"http://127.0.0.1:8188/history/{answer['prompt_id']}", timeout=30)
                    .json()
                    .get(answer["prompt_id"])
                )
                if entry and entry.get("status", {}).get("completed") is not None:
                    break
                time.sleep(0.5)
            assert entry and entry["status"]["status_str"] == "success", entry and entry["status"]
            book = [o["storybook"][0] for o in entry["outputs"].values() if "storybook" in o][0]
            assert book.startswith("seedstory/") and (comfy_dir / "output" / book).is_file()
            page = requests.get("http://127.0.0.1:8188/seedstory/storybook/" + quote(book), timeout=30)
            assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text(
            json.dumps(
                {
                    "id": "readme",
                    "image": str(REPO_ROOT / "workflows/assets/seedstory_start.png"),
                    "text": "A small boat leaves the harbour.",
                    "frames": 2,
                    "seed": 3,
                }
            )
            + "\n"
        )
        argv = shlex.split(batch[0])
        argv[0] = PY
        argv[argv.index("jobs.jsonl")] = str(jobs)
        argv[argv.index("out")] = str(tmp_path / "out")
        proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / "out" / "summary.json").is_file()
        assert proc.stdout.strip().splitlines()[-1].endswith("index.html"), proc.stdout
    finally:
        subprocess.run(
            [PY, "scripts/comfy_server.py", "stop", "--state", str(state)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
