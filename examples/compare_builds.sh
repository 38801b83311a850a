#!/usr/bin/env bash
# Compare server builds at the same load, in alternating rounds (the machine is shared and noisy: only
# ratios measured in the same run mean something).
#
#   bash examples/compare_builds.sh LOADGEN ROUNDS LABEL=SERVER_BINARY [LABEL=SERVER_BINARY ...]
#
# Each round starts every build once, on a fresh data directory and port, runs
# `loadgen --devices 100 --seconds 3 --warmup 1 --server-pid PID --json` against it and prints
# "label acks/s server-cpu-% server-cpu-µs-per-ack". Longer rounds: SECONDS_MEASURED=N WARMUP=N (past the
# start-up of a fresh server). Extra loadgen flags: LOADGEN_FLAGS="...".
set -euo pipefail
loadgen=$1 rounds=$2
shift 2
run() {
    local label=$1 bin=$2 dir
    dir=$(mktemp -d)
    "$bin" --listen 127.0.0.1:0 --data-dir "$dir/data" >"$dir/out" 2>/dev/null &
    local pid=$!
    for _ in $(seq 100); do grep -q listening "$dir/out" && break; sleep 0.1; done
    local addr
    addr=$(sed -n 's/listening on //p' "$dir/out")
    # shellcheck disable=SC2086
    "$loadgen" --url "ws://$addr" --devices 100 --seconds "${SECONDS_MEASURED:-3}" --warmup "${WARMUP:-1}" --server-pid "$pid" --json ${LOADGEN_FLAGS:-} 2>/dev/null |
        python3 -c 'import json,sys; d=json.load(sys.stdin); r=d["acks_per_s"]; c=d["server_cpu_percent"]; print(sys.argv[1], r, c, round(c*1e4/r, 1))' "$label"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
for _ in $(seq "$rounds"); do
    for build in "$@"; do
        run "${build%%=*}" "${build#*=}"
    done
done
