#!/usr/bin/env bash
# Line coverage of the workspace's tests with cargo-tarpaulin (installed on first use, a few minutes).
#   bash scripts/coverage.sh                 # whole workspace
#   bash scripts/coverage.sh -p smart-proto  # one crate, its own files (other tarpaulin flags pass through)
# Builds in target/tarpaulin so that the instrumented build does not invalidate the normal one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo tarpaulin --version >/dev/null 2>&1; then
    cargo install cargo-tarpaulin --locked
fi
if [[ $# -eq 0 ]]; then
    set -- --workspace
elif [[ $# -eq 2 && $1 == -p && -d $2 ]]; then
    # One crate: count its own files only (tarpaulin also lists the other members' files, unrun).
    set -- -p "$2" --include-files "$2/*"
fi
# The llvm engine works on stable; files under target/ are `cargo package` copies, not sources.
exec cargo tarpaulin "$@" --engine llvm --target-dir target/tarpaulin --skip-clean \
    --exclude-files 'target/*' --exclude-files 'benches/*' --exclude-files 'examples/*' --out Stdout
