#!/usr/bin/env bash
# Create (or update) the Python environment for seedstory and its ComfyUI test server.
#
#   bash scripts/setup_env.sh [--venv DIR]
#
# DIR defaults to $VENV_DIR, else <repo>/.venv. Idempotent: a second run only checks.
# Steps:
#   1. python3.11 -m venv DIR                      (skipped when DIR/bin/python exists)
#   2. torch==2.13.0 torchvision==0.28.0 with `pip install --isolated`
#      (plain PyPI, ignoring any pip config: a local torch "+cpu" wheel in find-links
#      does not work with torchvision)            (skipped when already installed)
#   3. pip install -e .[test]                      (the project, editable, with test extras)
#   4. pip install -r requirements-comfyui.txt     (ComfyUI 0.3.75's requirements)
#   5. scripts/fetch_llama2_tokenizer.sh           (when that script exists)
#   6. scripts/setup_browser.sh                    (Debian chromium + npm playwright-core for tests/test_browser.py)
# Steps 3-4 run under a constraints file that keeps torch/torchvision pinned and
# transformers >= 5.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV_DIR="${2:?--venv needs a directory}"; shift 2 ;;
    --venv=*) VENV_DIR="${1#--venv=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup_env.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
VENV_DIR="$(mkdir -p "$VENV_DIR" && cd "$VENV_DIR" && pwd)"

log() { printf '\n[setup_env] %s\n' "$*"; }
die() { printf '\n[setup_env] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [[ $rc -ne 0 ]] && printf "\n[setup_env] FAILED (exit %s) at line %s: %s\n" "$rc" "$LINENO" "$BASH_COMMAND" >&2' ERR

start_s=$SECONDS
command -v "$PYTHON" >/dev/null || die "$PYTHON not found (Python 3.11 is required; set PYTHON=... to override)"

# 1. venv -----------------------------------------------------------------------------
VPY="$VENV_DIR/bin/python"
if [[ -x "$VPY" ]]; then
  log "venv exists: $VENV_DIR ($("$VPY" --version 2>&1))"
else
  log "creating venv: $PYTHON -m venv $VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR"
  "$VPY" -m pip install --isolated --quiet --upgrade pip
fi
PIP=("$VPY" -m pip)

# 2. torch ----------------------------------------------------------------------------
torch_ok() {
  "$VPY" - "$TORCH_VERSION" "$TORCHVISION_VERSION" <<'PY' 2>/dev/null
import sys
import torch, torchvision
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
assert torchvision.__version__.split("+")[0] == sys.argv[2], torchvision.__version__
import torchvision.ops  # the broken combination fails here (torchvision::nms missing)
PY
}
if torch_ok; then
  log "torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION already installed"
else
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION from the package index (pip --isolated; ~5 GB)"
  "${PIP[@]}" install --isolated "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  torch_ok || die "torch/torchvision installed but do not import together"
fi

CONSTRAINTS="$(mktemp -t seedstory-constraints.XXXXXX)"
trap 'rm -f "$CONSTRAINTS"' EXIT
cat >"$CONSTRAINTS" <<EOF
torch==$TORCH_VERSION
torchvision==$TORCHVISION_VERSION
transformers>=5.0
EOF

# 3. the project ----------------------------------------------------------------------
log "installing the project (editable, test extras): pip install -e '$REPO_ROOT[test]'"
"${PIP[@]}" install --isolated -c "$CONSTRAINTS" -e "$REPO_ROOT[test]"

# 4. ComfyUI's requirements -----------------------------------------------------------
log "installing ComfyUI 0.3.75 requirements: $REPO_ROOT/requirements-comfyui.txt"
"${PIP[@]}" install --isolated -c "$CONSTRAINTS" -r "$REPO_ROOT/requirements-comfyui.txt"

log "checking the environment"
"${PIP[@]}" check || die "pip check found broken requirements"
"$VPY" - <<'PY'
import importlib.metadata as md
for name in ("torch", "torchvision", "transformers", "diffusers", "peft",
             "comfyui-frontend-package", "websocket-client", "requests", "pytest"):
    try:
        print(f"  {name:26s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name:26s} MISSING")
import transformers, torch, torchvision.ops  # noqa: F401
assert int(transformers.__version__.split(".")[0]) >= 5, transformers.__version__
PY

# 5. tokenizer ------------------------------------------------------------------------
FETCH="$REPO_ROOT/scripts/fetch_llama2_tokenizer.sh"
if [[ -f "$FETCH" ]]; then
  log "fetching the LLaMA-2 tokenizer: $FETCH"
  VENV_DIR="$VENV_DIR" PATH="$VENV_DIR/bin:$PATH" bash "$FETCH"
else
  log "skipping tokenizer: $FETCH does not exist"
fi

# 6. headless browser for the canvas tests (Debian chromium + npm playwright-core) -------
log "setting up the headless browser: scripts/setup_browser.sh"
bash "$REPO_ROOT/scripts/setup_browser.sh" || die "browser set-up failed (scripts/setup_browser.sh)"

log "done in $(( (SECONDS - start_s) / 60 )) min $(( (SECONDS - start_s) % 60 )) s; venv: $VENV_DIR ($(du -sh "$VENV_DIR" 2>/dev/null | cut -f1))"
