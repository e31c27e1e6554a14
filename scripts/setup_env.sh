#!/usr/bin/env bash
# Create (or update) the Python environment for seedstory: ComfyUI's environment plus the test tools.
#
#   bash scripts/setup_env.sh [--venv DIR] [--comfyui-version 0.30.0|0.3.75]
#
# DIR defaults to $VENV_DIR, else <repo>/.venv. Idempotent: a second run only checks.
# The venv is what a user's ComfyUI environment holds after installing this pack with ComfyUI-Manager
# or `comfy node install`, plus test tools -- the pack itself is NOT pip-installed (ComfyUI loads
# it from custom_nodes; the tests import it from the repository):
#   1. python3.11 -m venv DIR                       (skipped when DIR/bin/python exists)
#   2. torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0 (pip --isolated: plain PyPI, ignoring
#      any local pip config; these three import together on a CPU; ComfyUI 0.30.0 needs torchaudio)
#   3. scripts/provision_comfyui.sh --no-pack       (ComfyUI 0.30.0 in .comfyui/ComfyUI-0.30.0, or
#      $COMFYUI_DIR) -- and 0.3.75 in .comfyui/ComfyUI-0.3.75 for the oldest-version test lane
#   4. pip install -r <ComfyUI>/requirements.txt    (ComfyUI's own requirements, unchanged)
#   5. pip install -r requirements.txt              (this pack's runtime requirements, as Manager does)
#   6. pip install -r requirements-dev.txt          (requests + websocket-client for seedstory_client,
#      the ComfyUI client the tests use; pytest, comfy-cli, matplotlib)
#   7. scripts/fetch_llama2_tokenizer.sh            (when that script exists)
#   8. scripts/setup_browser.sh                     (Debian chromium + npm playwright-core)
# Steps 4-6 run under a constraints file that keeps the torch trio pinned.
# For the `seedstory-batch` command elsewhere: `pip install ./seedstory_client` (its own light distribution; README).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
COMFY_VERSION="${SEEDSTORY_COMFYUI_VERSION:-0.30.0}"
# The torch / torchvision / torchaudio trio (see README "Running the tests" for why this one).
TORCH_VERSION="2.11.0"
TORCHVISION_VERSION="0.26.0"
TORCHAUDIO_VERSION="2.11.0"

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV_DIR="${2:?--venv needs a directory}"; shift 2 ;;
    --venv=*) VENV_DIR="${1#--venv=}"; shift ;;
    --comfyui-version) COMFY_VERSION="${2:?--comfyui-version needs a value}"; shift 2 ;;
    --comfyui-version=*) COMFY_VERSION="${1#--comfyui-version=}"; shift ;;
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
  "$VPY" - "$TORCH_VERSION" "$TORCHVISION_VERSION" "$TORCHAUDIO_VERSION" <<'PY' 2>/dev/null
import sys
import torch, torchvision, torchaudio
for mod, want in zip((torch, torchvision, torchaudio), sys.argv[1:]):
    assert mod.__version__.split("+")[0] == want, (mod.__name__, mod.__version__)
import torchvision.ops  # a mismatched torchvision fails here (torchvision::nms missing)
import torchaudio.functional  # a mismatched torchaudio fails to load libtorchaudio.so
PY
}
if torch_ok; then
  log "torch $TORCH_VERSION + torchvision $TORCHVISION_VERSION + torchaudio $TORCHAUDIO_VERSION already installed"
else
  log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION torchaudio==$TORCHAUDIO_VERSION (pip --isolated; ~5 GB)"
  "${PIP[@]}" install --isolated "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" \
    "torchaudio==$TORCHAUDIO_VERSION"
  torch_ok || die "torch/torchvision/torchaudio installed but do not import together"
fi

CONSTRAINTS="$(mktemp -t seedstory-constraints.XXXXXX)"
trap 'rm -f "$CONSTRAINTS"' EXIT
cat >"$CONSTRAINTS" <<EOF
torch==$TORCH_VERSION
torchvision==$TORCHVISION_VERSION
torchaudio==$TORCHAUDIO_VERSION
EOF

# 3. ComfyUI --------------------------------------------------------------------------
log "provisioning ComfyUI $COMFY_VERSION (or \$COMFYUI_DIR): scripts/provision_comfyui.sh --no-pack"
COMFY="$(bash "$REPO_ROOT/scripts/provision_comfyui.sh" --no-pack --version "$COMFY_VERSION" --venv "$VENV_DIR" | tail -n 1)"
[[ -f "$COMFY/requirements.txt" ]] || die "no requirements.txt in the ComfyUI folder '$COMFY'"
if [[ -z "${COMFYUI_DIR:-}" && "$COMFY_VERSION" != "0.3.75" ]]; then
  log "provisioning ComfyUI 0.3.75 (the oldest supported release; the second test lane)"
  bash "$REPO_ROOT/scripts/provision_comfyui.sh" --no-pack --version 0.3.75 --venv "$VENV_DIR" >/dev/null
fi

# 4-6. requirements -------------------------------------------------------------------
log "installing ComfyUI's requirements ($COMFY/requirements.txt), the pack's (requirements.txt) and the test tools (requirements-dev.txt)"
"${PIP[@]}" install --isolated -c "$CONSTRAINTS" -r "$COMFY/requirements.txt" \
  -r "$REPO_ROOT/requirements.txt" -r "$REPO_ROOT/requirements-dev.txt"

log "checking the environment"
"${PIP[@]}" check || die "pip check found broken requirements"
"$VPY" - <<'PY'
import importlib.metadata as md
for name in ("torch", "torchvision", "torchaudio", "transformers", "diffusers", "peft",
             "comfyui-frontend-package", "websocket-client", "requests", "pytest", "comfy-cli"):
    try:
        print(f"  {name:26s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name:26s} MISSING")
try:
    md.version("seedstory")
    print("  NOTE: seedstory is pip-installed in this venv (an older setup); the tests use the repository's files")
except md.PackageNotFoundError:
    pass
import transformers, torch, torchvision.ops, torchaudio  # noqa: F401
assert int(transformers.__version__.split(".")[0]) >= 5, transformers.__version__
PY

# 7. tokenizer ------------------------------------------------------------------------
FETCH="$REPO_ROOT/scripts/fetch_llama2_tokenizer.sh"
if [[ -f "$FETCH" ]]; then
  log "fetching the LLaMA-2 tokenizer: $FETCH"
  VENV_DIR="$VENV_DIR" PATH="$VENV_DIR/bin:$PATH" bash "$FETCH"
else
  log "skipping tokenizer: $FETCH does not exist"
fi

# 8. headless browser for the canvas tests (Debian chromium + npm playwright-core) -------
log "setting up the headless browser: scripts/setup_browser.sh"
bash "$REPO_ROOT/scripts/setup_browser.sh" || die "browser set-up failed (scripts/setup_browser.sh)"

log "done in $(( (SECONDS - start_s) / 60 )) min $(( (SECONDS - start_s) % 60 )) s; venv: $VENV_DIR ($(du -sh "$VENV_DIR" 2>/dev/null | cut -f1))"
