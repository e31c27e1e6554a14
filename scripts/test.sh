#!/usr/bin/env bash
# The test suite, in lanes (the README's test command; .ci/run runs it with CI=true).
#
#   bash scripts/test.sh [--venv DIR] [--lane all|current|classic|oldest] [-- PYTEST_ARGS...]
#
#   current  the whole suite on ComfyUI 0.30.0 (or on $COMFYUI_DIR: your own ComfyUI), whose default cache is
#            the RAM-pressure cache
#   classic  the caching tests (identical re-queue, branches, interruption, POST /free) again on 0.30.0 started
#            with --cache-classic (SEEDSTORY_COMFYUI_ARGS)
#   oldest   the real-server subset (marker `comfyui`, without the browser tests, whose frontend is the one
#            0.30.0 pins) on ComfyUI 0.3.75, the oldest supported release; skipped when $COMFYUI_DIR is set
#   all      (default) the three, one after the other
# DIR defaults to $VENV_DIR, else <repo>/.venv (made by scripts/setup_env.sh). PYTEST_ARGS go to every lane.
# Prints each lane's wall time and, last, one line "N passed, N failed, N skipped" for all lanes together;
# exits non-zero when a lane fails or runs no test.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${VENV_DIR:-$REPO_ROOT/.venv}"
LANE="all"
EXTRA=()
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV_DIR="${2:?--venv needs a directory}"; shift 2 ;;
    --venv=*) VENV_DIR="${1#--venv=}"; shift ;;
    --lane) LANE="${2:?--lane needs a name}"; shift 2 ;;
    --lane=*) LANE="${1#--lane=}"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "test.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$LANE" in all|current|classic|oldest) ;; *) echo "test.sh: unknown lane '$LANE'" >&2; exit 2 ;; esac
PY="$VENV_DIR/bin/python"
[[ -x "$PY" ]] || { echo "test.sh: no Python at $PY; run: bash scripts/setup_env.sh" >&2; exit 1; }
cd "$REPO_ROOT"

REPORTS="$(mktemp -d -t seedstory-lanes.XXXXXX)"
trap 'rm -rf "$REPORTS"' EXIT
SUMMARY=()
FAILED=0

# The caching tests that must pass under both cache modes.
CACHE_TESTS="cached or requeue or branches or interrupt or free"

run_lane() {  # name, env assignments..., --, pytest args...
  local name="$1"; shift
  local envs=()
  while [[ "$1" != "--" ]]; do envs+=("$1"); shift; done
  shift
  printf '\n[test.sh] lane %s: %s %s -m pytest %s\n' "$name" "${envs[*]}" "$PY" "$*"
  local t0=$SECONDS rc
  env "${envs[@]}" "$PY" -m pytest "$@" --junitxml "$REPORTS/$name.xml" "${EXTRA[@]}"
  rc=$?
  local secs=$((SECONDS - t0))
  SUMMARY+=("$(printf 'lane %-8s exit %-3s %4d min %02d s' "$name" "$rc" $((secs / 60)) $((secs % 60)))")
  if [[ $rc -ne 0 ]]; then FAILED=1; fi
}

if [[ "$LANE" == all || "$LANE" == current ]]; then
  run_lane current "SEEDSTORY_COMFYUI_VERSION=0.30.0" -- -q
fi
if [[ "$LANE" == all || "$LANE" == classic ]]; then
  run_lane classic "SEEDSTORY_COMFYUI_VERSION=0.30.0" "SEEDSTORY_COMFYUI_ARGS=--cache-classic" -- \
    -q -m comfyui tests/server/test_comfyui_nodes.py tests/server/test_comfyui_server.py -k "$CACHE_TESTS"
fi
if [[ "$LANE" == all || "$LANE" == oldest ]]; then
  if [[ -n "${COMFYUI_DIR:-}" ]]; then
    SUMMARY+=("lane oldest   skipped: COMFYUI_DIR is set (your ComfyUI replaces the provisioned releases)")
  else
    run_lane oldest "SEEDSTORY_COMFYUI_VERSION=0.3.75" -- -q -m "comfyui and not browser"
  fi
fi

printf '\n[test.sh] lanes:\n'
printf '  %s\n' "${SUMMARY[@]}"
"$PY" - "$REPORTS" <<'PY'
import glob, sys
import xml.etree.ElementTree as ET
tot = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in glob.glob(sys.argv[1] + "/*.xml"):
    root = ET.parse(path).getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for k in tot:
            tot[k] += int(suite.get(k, 0))
passed = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
print(f"{passed} passed, {tot['failures'] + tot['errors']} failed, {tot['skipped']} skipped")
sys.exit(1 if tot["tests"] == 0 else 0)
PY
[[ $? -eq 0 ]] || FAILED=1
exit $FAILED
