#!/usr/bin/env bash
# Install what the browser tests (tests/browser/test_browser.py, marker `browser`) need, and check that it works.
#
#   bash scripts/setup_browser.sh [--no-apt] [--check]
#
#   0. Debian `curl` (the README's API example runs as written)  -- skipped when curl is on PATH
#      Debian `poppler-utils` (pdftoppm, pdftotext: the PDF tests render story.pdf and read its text layer)
#                                                          -- skipped when pdftoppm and pdftotext are on PATH
#   1. Debian `chromium` (apt-get; as root, or with sudo)  -- skipped when $CHROMIUM or /usr/bin/chromium runs
#   2. npm `playwright-core` at the version pinned in tests/browser/package.json + package-lock.json, with `npm ci`
#      into tests/browser/node_modules (git-ignored)        -- skipped when that version is already there.
#      playwright-core downloads no browser; the tests drive the Debian chromium (executablePath).
#   3. a smoke test: headless Chromium renders a page through playwright-core.
#
# Needs Node.js >= 20 and npm on PATH (playwright-core's "engines"). Idempotent: a second run only checks.
#   --no-apt   never call apt-get (fail with the command to run instead)
#   --check    install nothing; exit 0 when everything is in place, 1 otherwise
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BROWSER_DIR="$REPO_ROOT/tests/browser"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
USE_APT=1
CHECK_ONLY=0

usage() { sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-apt) USE_APT=0; shift ;;
    --check) CHECK_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "setup_browser.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

log() { printf '[setup_browser] %s\n' "$*"; }
die() { printf '[setup_browser] ERROR: %s\n' "$*" >&2; exit 1; }

# 0. Node.js ---------------------------------------------------------------------------------
command -v node >/dev/null || die "node is not on PATH (Node.js >= 20 is needed; e.g. the nodesource nodejs package)"
command -v npm >/dev/null || die "npm is not on PATH"
NODE_MAJOR="$(node -p 'process.versions.node.split(".")[0]')"
(( NODE_MAJOR >= 20 )) || die "Node.js $(node --version) is too old: playwright-core needs >= 20"

# 0. curl (the README's API example is run as written by tests/project/test_docs.py) -------------------
if ! command -v curl >/dev/null 2>&1; then
  (( CHECK_ONLY )) && die "curl not found"
  (( USE_APT )) || die "curl not found; run: apt-get update && apt-get install -y curl"
  SUDO=()
  [[ $(id -u) -ne 0 ]] && SUDO=(sudo)
  log "installing Debian curl: apt-get install -y curl"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq curl >/dev/null
fi

# 0. poppler-utils (tests/core/test_pages_pdf.py, tests/server/test_storybook_pages_server.py) ------------------
if ! command -v pdftoppm >/dev/null 2>&1 || ! command -v pdftotext >/dev/null 2>&1; then
  (( CHECK_ONLY )) && die "pdftoppm/pdftotext not found (Debian poppler-utils)"
  (( USE_APT )) || die "pdftoppm/pdftotext not found; run: apt-get update && apt-get install -y poppler-utils"
  SUDO=()
  [[ $(id -u) -ne 0 ]] && SUDO=(sudo)
  log "installing Debian poppler-utils: apt-get install -y poppler-utils"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq poppler-utils >/dev/null
  command -v pdftoppm >/dev/null || die "apt-get installed poppler-utils but pdftoppm is not on PATH"
fi
log "poppler: $(pdftoppm -v 2>&1 | head -1)"

# 1. chromium --------------------------------------------------------------------------------
chromium_ok() { [[ -x "$CHROMIUM" ]] && "$CHROMIUM" --version >/dev/null 2>&1; }
if chromium_ok; then
  log "chromium: $("$CHROMIUM" --version 2>/dev/null) ($CHROMIUM)"
else
  (( CHECK_ONLY )) && die "chromium not found at $CHROMIUM"
  (( USE_APT )) || die "chromium not found at $CHROMIUM; run: apt-get update && apt-get install -y chromium"
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "chromium is missing and this is not root; run as root: apt-get install -y chromium"
    SUDO=(sudo)
  fi
  log "installing Debian chromium: apt-get install -y chromium"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq chromium >/dev/null
  chromium_ok || die "apt-get installed chromium but $CHROMIUM does not run"
  log "chromium: $("$CHROMIUM" --version 2>/dev/null)"
fi

# 2. playwright-core --------------------------------------------------------------------------
PINNED="$(node -p "require('$BROWSER_DIR/package.json').dependencies['playwright-core']")"
installed_version() {
  node -p "require('$BROWSER_DIR/node_modules/playwright-core/package.json').version" 2>/dev/null || true
}
if [[ "$(installed_version)" == "$PINNED" ]]; then
  log "playwright-core $PINNED already in $BROWSER_DIR/node_modules"
else
  (( CHECK_ONLY )) && die "playwright-core $PINNED is not installed in $BROWSER_DIR/node_modules"
  log "installing playwright-core $PINNED: npm ci (tests/browser/package-lock.json)"
  (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
  [[ "$(installed_version)" == "$PINNED" ]] || die "npm ci did not install playwright-core $PINNED"
fi

# 3. smoke test -------------------------------------------------------------------------------
log "smoke test: headless chromium through playwright-core"
(cd "$BROWSER_DIR" && CHROMIUM="$CHROMIUM" node --input-type=module -e "
import { chromium } from 'playwright-core';
const b = await chromium.launch({ executablePath: process.env.CHROMIUM, args: ['--headless=new', '--no-sandbox',
  '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-quic'] });
const p = await b.newPage();
await p.setContent('<title>ok</title><p>seedstory</p>');
const t = await p.title();
console.log('[setup_browser] ' + b.version() + ' rendered a page: ' + t);
await b.close();
if (t !== 'ok') process.exit(1);
") || die "headless chromium did not start (see above)"
log "ready: .venv/bin/python -m pytest -q -m browser"
