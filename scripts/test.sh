#!/usr/bin/env bash
# The project's test command: `bash scripts/test.sh` from anywhere in the checkout.
#
# Needs Rust (stable), Python, Node 20 with npm, and gcc. It installs the rest itself, once:
# Chromium and chromedriver for the browser tests and redis-server for the cluster tests (Debian packages,
# as root), and the browser tests' npm packages. Then it runs every Rust test (unit, integration, examples and benches in test mode), the doc
# tests, and the browser tests. Any failure stops it with a non-zero exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

section() { printf '\n==== %s ====\n' "$*"; }

# --- Chromium (browser tests) -------------------------------------------------------------------------
chromium_bin() { command -v chromium || command -v chromium-browser || true; }
[[ -n "$(chromium_bin)" ]] || bash scripts/apt-install.sh chromium chromium chromium-driver
bash scripts/apt-install.sh chromedriver chromium chromium-driver
chromium=$(chromium_bin)
echo "chromium: $chromium ($("$chromium" --version 2>/dev/null || echo 'version unknown'))"
export CHROMIUM_BIN=$chromium

# --- redis-server (tests/cluster*.rs start their own on a free loopback port) ----------------------------
bash scripts/apt-install.sh redis-server redis-server
echo "redis-server: $(redis-server --version)"

# --- npm packages of the browser tests ----------------------------------------------------------------
browser_tests=$root/browser-tests
if [[ -f $browser_tests/package.json ]]; then
    # npm writes node_modules/.package-lock.json on every install: newer than the lock file means current.
    installed=$browser_tests/node_modules/.package-lock.json
    if [[ ! -f $installed || $browser_tests/package.json -nt $installed \
        || ( -f $browser_tests/package-lock.json && $browser_tests/package-lock.json -nt $installed ) ]]; then
        section "installing browser-tests npm packages"
        if [[ -f $browser_tests/package-lock.json ]]; then
            (cd "$browser_tests" && npm ci --no-audit --no-fund)
        else
            (cd "$browser_tests" && npm install --no-audit --no-fund)
        fi
    fi
fi

# --- Rust ---------------------------------------------------------------------------------------------
# Every runner's output is also kept, to add up the counts for the closing line.
log=$(mktemp)
trap 'rm -f "$log"' EXIT

section "cargo test --workspace --all-targets"
cargo test --workspace --all-targets 2>&1 | tee -a "$log"

section "cargo test --workspace --doc"
cargo test --workspace --doc 2>&1 | tee -a "$log"

# --- browser ------------------------------------------------------------------------------------------
if [[ -f $browser_tests/package.json ]]; then
    section "browser tests (npm test --prefix browser-tests)"
    # The tests start the real server; build it here so they need no cargo knowledge and no long start.
    cargo build -p smart-server --bins
    export SMART_SERVER_BIN=${CARGO_TARGET_DIR:-$root/target}/debug/smart-server
    npm test --prefix "$browser_tests" 2>&1 | tee -a "$log"
fi

# cargo: "test result: ok. 12 passed; 0 failed; …"; node's runner: "# pass 3" (TAP) or "ℹ pass 3" (spec).
read -r passed failed < <(awk '
    /^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
    /^(# |ℹ )pass [0-9]+$/ { p += $NF }
    /^(# |ℹ )fail [0-9]+$/ { f += $NF }
    END { print p + 0, f + 0 }' "$log")
section "all tests passed"
echo "$passed passed, $failed failed"
