#!/usr/bin/env bash
# `bash scripts/apt-install.sh COMMAND PACKAGE...`: install the Debian PACKAGEs (apt-get, as root or with
# sudo) unless COMMAND is already on the PATH; idempotent. Fails with the command to run when it cannot.
set -euo pipefail

command=$1
shift
if command -v "$command" >/dev/null; then
    exit 0
fi
printf '\n==== installing %s (for %s) ====\n' "$*" "$command"
if [[ $(id -u) -eq 0 ]]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "$command is missing and this user cannot install it:" >&2
    echo "  apt-get install $*   (as root)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "$@"
command -v "$command" >/dev/null || { echo "$command still missing after installing $*" >&2; exit 1; }
