"""Registry metadata: `comfy node validate` (comfy-cli) passes with no security warnings; pack layout; the
requirement lists agree (requirements.txt, [project] dependencies, the `client` and `test` extras,
requirements-dev.txt); seedstory_core imports no HTTP library; the client is its own light distribution
(seedstory_client/pyproject.toml: no torch, installed in a fresh venv)."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from tests.conftest import require_or_skip

from seedstory_client import deps
from seedstory_client.install import EXCLUDE_DIRS, copy_pack

REPO = Path(__file__).resolve().parents[2]


def _req_names(lines) -> dict:
    """{normalised distribution name: specifier text} of requirement lines (comments and blanks dropped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", line)
        out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2).replace(" ", "")
    return out


def test_pyproject_has_registry_metadata():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    comfy = data["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert data["project"]["name"] and data["project"]["version"]
    icon = comfy["Icon"]
    assert icon and (REPO / icon).is_file() and (REPO / icon).read_bytes().startswith(b"\x89PNG"), icon
    assert re.fullmatch(r">=\d+\.\d+\.\d+(,<=?\d+\.\d+\.\d+)?", comfy["requires-comfyui"]), comfy
    classifiers = data["project"]["classifiers"]
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(c.startswith("Environment :: GPU :: ") for c in classifiers)
    assert "example.invalid" not in (REPO / "pyproject.toml").read_text()
    for url in data["project"].get("urls", {}).values():
        assert url.startswith("https://") and "example" not in url, url


def test_requirements_txt_matches_project_dependencies():
    """requirements.txt (what ComfyUI-Manager / `comfy node install` install) = [project].dependencies minus torch
    (ComfyUI's own requirements provide torch; listing it could replace a user's CUDA build)."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = _req_names(data["project"]["dependencies"])
    reqs = _req_names((REPO / "requirements.txt").read_text().splitlines())
    assert project.pop("torch") and "torch" not in reqs and "torchvision" not in reqs
    assert reqs == project
    for core in ("transformers", "diffusers", "peft", "safetensors", "accelerate", "numpy", "pillow"):
        assert core in reqs, core
    # compatible with ComfyUI's own pin (transformers>=4.50.3): a lower bound only above it, no upper bound below 5
    assert reqs["transformers"] == ">=5.0,<6"


def test_requirements_cover_the_runtime_imports():
    """Every third-party module imported by the pack's runtime code (nodes/, seedstory_core/, training/) comes from
    requirements.txt or from what ComfyUI itself installs (torch, torchvision)."""
    provided = {
        "torch",
        "torchvision",
        "transformers",
        "tokenizers",
        "sentencepiece",
        "diffusers",
        "peft",
        "accelerate",
        "safetensors",
        "huggingface_hub",
        "numpy",
        "PIL",
        "tqdm",
        "fpdf",
        "fontTools",
        "torchao",
    }
    dist_of = {"PIL": "pillow", "huggingface_hub": "huggingface-hub", "fpdf": "fpdf2", "fontTools": "fonttools"}
    reqs = _req_names((REPO / "requirements.txt").read_text().splitlines())
    for mod in provided - {"torch", "torchvision"}:
        assert dist_of.get(mod, mod).lower().replace("_", "-") in reqs, mod
    local = {"seedstory_core", "training", "evaluation", "nodes", "bench"}
    ComfyUI = {"comfy", "folder_paths", "server", "comfy_api", "node_helpers", "latent_preview", "aiohttp"}
    found = _third_party_imports(("nodes", "seedstory_core", "training"), local | ComfyUI)
    missing = {m: where for m, where in found.items() if m not in provided}
    assert not missing, f"imported but not in requirements.txt: {missing}"


def _third_party_imports(folders, local) -> dict:
    """{top-level module: first file importing it} of the absolute imports in ``folders`` that are neither the
    standard library nor in ``local``."""
    found = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_client_extra_holds_the_http_libraries_and_the_dev_requirements_match_the_test_extra():
    """requests and websocket-client are the `client` extra only (the nodes never talk HTTP; ComfyUI-Manager does
    not install them for the pack); seedstory_client imports nothing else but [project] dependencies; the `test`
    extra is the `client` extra plus requirements-dev.txt's tools, and requirements-dev.txt (what
    scripts/setup_env.sh installs for the tests) lists the same packages."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = data["project"]["optional-dependencies"]
    client = _req_names(extras["client"])
    assert set(client) == {"requests", "websocket-client"}, client
    project = _req_names(data["project"]["dependencies"])
    reqs = _req_names((REPO / "requirements.txt").read_text().splitlines())
    assert not set(client) & (set(project) | set(reqs)), "the HTTP client's packages belong to the extra only"
    dist_of = {"websocket": "websocket-client", "PIL": "pillow"}
    used = _third_party_imports(("seedstory_client",), {"seedstory_client", "seedstory_core"})
    missing = {m: where for m, where in used.items() if dist_of.get(m, m).lower() not in set(client) | set(project)}
    assert not missing, f"seedstory_client imports packages outside the client extra and the dependencies: {missing}"
    test = _req_names(extras["test"])
    assert test.pop("seedstory") == "[client]", extras["test"]
    dev = _req_names((REPO / "requirements-dev.txt").read_text().splitlines())
    assert dev == {**client, **test}, (dev, client, test)


def test_seedstory_core_imports_no_http_library():
    """Every seedstory_core module, imported in a fresh interpreter, leaves requests and websocket (websocket-client)
    out of sys.modules; and no seedstory_core file imports them (or another HTTP library) itself."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import seedstory_core\n"
        "mods = [m.name for m in pkgutil.walk_packages(seedstory_core.__path__, 'seedstory_core.')]\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        "http = [n for n in ('requests', 'websocket') if n in sys.modules]\n"
        "print(json.dumps({'modules': mods, 'http': http}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert "seedstory_core.story" in out["modules"] and len(out["modules"]) >= 10, out["modules"]
    assert out["http"] == [], f"importing seedstory_core loaded {out['http']}"
    direct = _third_party_imports(("seedstory_core",), {"seedstory_core"})
    http = {
        m: where
        for m, where in direct.items()
        if m in {"requests", "websocket", "urllib3", "httpx", "aiohttp", "seedstory_client"}
    }
    assert not http, f"seedstory_core imports an HTTP library or the client: {http}"


def test_comfy_node_validate(tmp_path):
    exe = shutil.which("comfy", path=str(Path(sys.executable).parent)) or shutil.which("comfy")
    if exe is None:
        require_or_skip(
            "comfy-cli is not installed (requirements-dev.txt; scripts/setup_env.sh installs it)",
            "SEEDSTORY_REQUIRE_COMFY_CLI",
        )
    env = dict(os.environ, HOME=str(tmp_path), COMFY_CLI_NO_REMOTE_REFRESH="1")
    res = subprocess.run(
        [exe, "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Security warnings found" not in out, out


def test_pack_layout():
    for path in (
        "nodes",
        "seedstory_core",
        "training",
        "workflows",
        "tests",
        "__init__.py",
        "pyproject.toml",
        "requirements.txt",
        "web/seedstory.js",
        "web/icon.png",
    ):
        assert (REPO / path).exists(), path


def test_pack_copy_is_what_a_user_gets(tmp_path):
    """scripts/install_pack.py (seedstory_client.install.copy_pack) copies the pack (no symlink, no environments or
    caches) and replaces old copies."""
    target = tmp_path / "custom_nodes" / "seedstory"
    target.parent.mkdir()
    target.symlink_to(REPO)  # what older versions of provision_comfyui.sh left behind
    copy_pack(target)
    assert target.is_dir() and not target.is_symlink()
    for rel in (
        "__init__.py",
        "requirements.txt",
        "nodes/__init__.py",
        "seedstory_core/__init__.py",
        "web/docs/SeedStoryGenerateStory.md",
        "models/seedstory-tiny/seedstory_config.json",
    ):
        assert (target / rel).is_file(), rel
    for rel in (".venv", ".comfyui", ".git", "tests/browser/node_modules"):
        assert not (target / rel).exists(), rel
    (target / "stale.txt").write_text("old copy")
    copy_pack(target)
    assert not (target / "stale.txt").exists()
    with pytest.raises(ValueError):
        copy_pack(REPO / "nodes" / "copy")
    with pytest.raises(ValueError):
        copy_pack(REPO)
    # the provisioned ComfyUIs live in the repository's (never copied) .comfyui folder: allowed there
    assert ".comfyui" in EXCLUDE_DIRS


HEAVY = {"torch", "torchvision", "torchaudio", "transformers", "diffusers", "accelerate", "peft", "safetensors"}


def _client_source(dest: Path) -> Path:
    """A copy of seedstory_client/ (the client's own distribution) without caches or build leftovers, so that the
    build writes nothing into the checkout."""
    return Path(
        shutil.copytree(
            REPO / "seedstory_client",
            dest,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist"),
        )
    )


def test_client_distribution_lists_what_the_client_imports_and_no_torch():
    """seedstory_client/pyproject.toml: its dependencies are exactly the packages seedstory_client imports
    (requests, websocket-client, Pillow, tqdm), none of the model stack, and it gives `seedstory-batch`;
    seedstory_client.deps checks the same packages."""
    data = tomllib.loads((REPO / "seedstory_client" / "pyproject.toml").read_text())
    client = _req_names(data["project"]["dependencies"])
    assert set(client) == {"requests", "websocket-client", "pillow", "tqdm"}, client
    assert not set(client) & HEAVY
    assert data["project"]["scripts"] == {"seedstory-batch": "seedstory_client.batch:main"}
    dist_of = {"websocket": "websocket-client", "PIL": "pillow"}
    used = {dist_of.get(m, m).lower() for m in _third_party_imports(("seedstory_client",), {"seedstory_client"})}
    assert used == set(client), (used, client)
    checked = {d.lower() for d in {**deps.REQUIRED, **deps.OPTIONAL}.values()}
    assert checked == set(client), checked
    # the pack's own distribution no longer ships the client (one distribution per package)
    main = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert not [p for p in main["tool"]["setuptools"]["packages"] if p.startswith("seedstory_client")]


def test_the_client_installs_light_in_a_fresh_venv(tmp_path):
    """README: `pip install ./seedstory_client` gives `seedstory-batch` with requests, websocket-client, Pillow and
    tqdm, and no torch, transformers or diffusers. A fresh venv (python -m venv), a real install through pip's
    resolver (from the configured package index: dependencies are not taken from this environment), its
    --report checked; then the installed command runs, imports no heavy package, and without tqdm still works;
    without Pillow it stops naming it."""
    venv = tmp_path / "venv"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    report = tmp_path / "report.json"
    res = subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--report", str(report), str(_client_source(tmp_path / "src"))],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0 and ("Could not find a version" in res.stderr or "No matching distribution" in res.stderr):
        require_or_skip(f"no package index for the client's dependencies: {res.stderr[-500:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    installed = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    assert {"seedstory-client", "requests", "websocket-client", "pillow", "tqdm"} <= set(installed), installed
    assert not set(installed) & HEAVY, f"the client pulls in {set(installed) & HEAVY}"
    assert len(installed) <= 12, installed  # the client and the small packages requests itself needs
    exe = venv / "bin" / "seedstory-batch"
    run = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and "usage: seedstory-batch" in run.stdout, run.stderr
    probe = (
        "import sys, seedstory_client.batch, seedstory_client.launcher\n"
        "print(sorted(m for m in {'torch', 'transformers', 'diffusers', 'seedstory_core'} if m in sys.modules))"
    )
    run = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr
    # tqdm is optional; Pillow is not: the command names it before doing anything
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"image": "none.png", "text": "Hi."}) + "\n")
    pip_quiet = [str(py), "-m", "pip", "uninstall", "--quiet", "--yes"]
    subprocess.run([*pip_quiet, "tqdm"], check=True, capture_output=True, timeout=120)
    run = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and "--no-progress" in run.stdout, run.stderr
    subprocess.run([*pip_quiet, "pillow"], check=True, capture_output=True, timeout=120)
    run = subprocess.run(
        [str(exe), str(jobs), "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert run.returncode != 0 and "seedstory-batch needs the Python package(s) Pillow (module PIL)" in run.stderr, (
        run.stderr[-2000:]
    )
    assert not (tmp_path / "out").exists()
    print(f"\n[client install] fresh venv + install + checks: {time.monotonic() - t0:.1f} s; {sorted(installed)}")
