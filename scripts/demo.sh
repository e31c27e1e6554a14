#!/usr/bin/env bash
# The seedstory demo: set up, start ComfyUI, make one story with the bundled tiny model, print its storybook.
#
#   bash scripts/demo.sh [--venv DIR] [--skip-setup] [--frames N] [--seed S]
#
#   1. bash scripts/setup_env.sh --venv DIR   (Python 3.11 venv + everything; skipped with --skip-setup)
#   2. bash scripts/provision_comfyui.sh      (ComfyUI 0.30.0 in .comfyui/ComfyUI-0.30.0, or $COMFYUI_DIR,
#                                             with this pack copied into its custom_nodes)
#   3. scripts/comfy_server.py start          (127.0.0.1, free port, --cpu, output folder <repo>/output)
#   4. seedstory-batch with ONE job on the tiny model (workflows/api/seedstory_tiny_story.json):
#      start image + sentence from models/seedstory-tiny/demo_start.{png,txt} when the trained
#      model ships them, else workflows/assets/seedstory_start.png and a built-in sentence.
#   5. the server is stopped (also on failure or Ctrl-C).
# The storybook lands in <repo>/output/seedstory/demo_NNNNN/ (a new folder per run); the batch
# client's copy and summary.json in <repo>/output/demo_batch/. The LAST line printed is the
# storybook's index.html. DIR defaults to $VENV_DIR, else <repo>/.venv. Idempotent; exits non-zero
# (with the server log tail) on any failure.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
SKIP_SETUP=0
FRAMES=4
SEED=42
DEFAULT_SENTENCE="A little red boat sets out on the sea at sunrise."

usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV_DIR="${2:?--venv needs a directory}"; shift 2 ;;
    --venv=*) VENV_DIR="${1#--venv=}"; shift ;;
    --skip-setup) SKIP_SETUP=1; shift ;;
    --frames) FRAMES="${2:?--frames needs a number}"; shift 2 ;;
    --seed) SEED="${2:?--seed needs a number}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "demo.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ "$FRAMES" =~ ^[1-9][0-9]*$ ]] || { echo "demo.sh: --frames must be a positive integer" >&2; exit 2; }
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "demo.sh: --seed must be a non-negative integer" >&2; exit 2; }

log() { printf '[demo] %s\n' "$*" >&2; }
die() { printf '[demo] ERROR: %s\n' "$*" >&2; exit 1; }

STATE="$REPO_ROOT/.comfyui/demo_server.json"
SCRATCH="$REPO_ROOT/.comfyui/demo_server"
OUTPUT_DIR="$REPO_ROOT/output"
BATCH_OUT="$OUTPUT_DIR/demo_batch"
PY="$VENV_DIR/bin/python"
SERVER_STARTED=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ $SERVER_STARTED -eq 1 ]]; then
    if [[ $rc -ne 0 && -f "$STATE" ]]; then
      local logf
      logf="$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["log_path"])' "$STATE" 2>/dev/null || true)"
      if [[ -n "$logf" && -f "$logf" ]]; then
        log "ComfyUI log tail ($logf):"
        tail -n 40 "$logf" >&2 || true
      fi
    fi
    log "stopping ComfyUI"
    "$PY" "$REPO_ROOT/scripts/comfy_server.py" stop --state "$STATE" >&2 || log "could not stop the server (state $STATE)"
  fi
  if [[ $rc -ne 0 ]]; then
    printf '[demo] FAILED (exit %s)\n' "$rc" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. environment -------------------------------------------------------------------------------
if [[ $SKIP_SETUP -eq 1 ]]; then
  log "skipping setup (--skip-setup); using the venv $VENV_DIR"
else
  log "setting up the environment: scripts/setup_env.sh --venv $VENV_DIR"
  bash "$REPO_ROOT/scripts/setup_env.sh" --venv "$VENV_DIR" >&2
fi
[[ -x "$PY" ]] || die "no Python at $PY (run without --skip-setup, or pass --venv DIR)"
(cd "$REPO_ROOT" && "$PY" -c 'import seedstory_client.batch, requests, websocket, tqdm') 2>/dev/null \
  || die "$VENV_DIR lacks seedstory and its dependencies; run: bash scripts/setup_env.sh --venv $VENV_DIR"

# 2. ComfyUI -----------------------------------------------------------------------------------
log "provisioning ComfyUI: scripts/provision_comfyui.sh"
COMFY="$(bash "$REPO_ROOT/scripts/provision_comfyui.sh" --venv "$VENV_DIR" | tail -n 1)"
[[ -f "$COMFY/main.py" ]] || die "provision_comfyui.sh did not give a ComfyUI folder (got '$COMFY')"

# 3. server ------------------------------------------------------------------------------------
mkdir -p "$OUTPUT_DIR" "$SCRATCH"
# a server left behind by an interrupted demo (same state file) is stopped first: it may be stale
if [[ -f "$STATE" ]]; then
  "$PY" "$REPO_ROOT/scripts/comfy_server.py" stop --state "$STATE" >&2 || true
fi
log "starting ComfyUI ($COMFY) with output folder $OUTPUT_DIR"
SERVER_STARTED=1
URL="$("$PY" "$REPO_ROOT/scripts/comfy_server.py" start --comfy-dir "$COMFY" --state "$STATE" --port auto \
        --scratch-dir "$SCRATCH" -- --output-directory "$OUTPUT_DIR" | tail -n 1)"
[[ "$URL" == http://* ]] || die "comfy_server.py start printed no URL (got '$URL')"
log "ComfyUI is up at $URL"

# 4. one story ---------------------------------------------------------------------------------
TINY="$REPO_ROOT/models/seedstory-tiny"
if [[ -f "$TINY/demo_start.png" && -f "$TINY/demo_start.txt" ]]; then
  IMAGE="$TINY/demo_start.png"
  SENTENCE="$(tr '\n' ' ' <"$TINY/demo_start.txt" | sed 's/[[:space:]]\+/ /g; s/^ //; s/ $//')"
  [[ -n "$SENTENCE" ]] || die "$TINY/demo_start.txt is empty"
  log "start frame from the trained tiny model: $IMAGE"
else
  IMAGE="$REPO_ROOT/workflows/assets/seedstory_start.png"
  SENTENCE="$DEFAULT_SENTENCE"
  log "start frame: $IMAGE (no models/seedstory-tiny/demo_start.png + .txt)"
fi
[[ -f "$IMAGE" ]] || die "start image $IMAGE is missing"
log "opening sentence: $SENTENCE"

mkdir -p "$BATCH_OUT"
JOBS="$BATCH_OUT/jobs.jsonl"
"$PY" - "$JOBS" "$IMAGE" "$SENTENCE" "$FRAMES" "$SEED" <<'PY'
import json, sys
path, image, text, frames, seed = sys.argv[1:]
job = {"id": "demo", "image": image, "text": text, "frames": int(frames), "seed": int(seed),
       "overrides": {"SeedStory Save Story.filename_prefix": "seedstory/demo",
                     "SeedStory Save Story.title": "A SEED-Story demo"}}
with open(path, "w", encoding="utf-8") as f:
    f.write(json.dumps(job) + "\n")
PY

log "running seedstory-batch (1 job, tiny model, $FRAMES frames)"
set +e
BOOKS="$(cd "$REPO_ROOT" && "$PY" -m seedstory_client.batch "$JOBS" --out "$BATCH_OUT" --server "$URL" \
          --template "$REPO_ROOT/workflows/api/seedstory_tiny_story.json" --force --print-storybooks)"
rc=$?
set -e
[[ $rc -eq 0 ]] || die "seedstory-batch failed (exit $rc); see $BATCH_OUT/summary.json"
REL="$(printf '%s\n' "$BOOKS" | tail -n 1)"
[[ -n "$REL" ]] || die "seedstory-batch reported no storybook; see $BATCH_OUT/summary.json"
BOOK="$OUTPUT_DIR/$REL"
[[ -f "$BOOK" ]] || die "the storybook $BOOK does not exist"
log "frames: $(ls "$(dirname "$BOOK")"/frame_*.png | wc -l); a copy is in $BATCH_OUT/demo/"

# 5. stop the server, then report ----------------------------------------------------------------
log "stopping ComfyUI"
"$PY" "$REPO_ROOT/scripts/comfy_server.py" stop --state "$STATE" >&2
SERVER_STARTED=0
log "done: the storybook (open it in a browser) is"
echo "$BOOK"
