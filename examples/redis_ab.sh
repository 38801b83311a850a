#!/usr/bin/env bash
# One server binary without `--redis`, with it (`--ack local`) and with `--ack cluster`, in alternating
# rounds, at the same load (the machine is shared and noisy: only ratios measured in the same run mean
# something). MODES="plain redis cluster" (the default) picks which.
#
#   bash examples/redis_ab.sh [ROUNDS]     (after cargo build --release -p smart-server and
#                                           cargo build --release --examples -p smart-os)
#
# Starts its own redis-server (append-only, synced on every write) on a free loopback port, then per round
# and mode a fresh server and `loadgen --devices 100 --seconds 5 --warmup 1 --server-pid PID`; prints one
# line per round and mode (loadgen's JSON, then the whole run's server CPU per ack: utime+stime /
# smart_acks_total, Redis's CPU ticks (1/100 s) and what was shipped), then one JSON summary: each mode's
# median acks/s, p99 and CPU per ack over the rounds, the ratio of the medians to plain's, and each round's
# ratio to the plain run of the same round.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${1:-3}
server=target/release/smart-server loadgen=target/release/examples/loadgen
rdir=$(mktemp -d)
rport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --bind 127.0.0.1 --port "$rport" --dir "$rdir" --appendonly yes --appendfsync always --save '' \
    --daemonize no --logfile "$rdir/log" > /dev/null 2>&1 &
rpid=$!
trap 'kill $rpid 2>/dev/null || true; wait $rpid 2>/dev/null || true; rm -rf "$rdir"' EXIT
echo "redis_ab: $rounds rounds of ${MODES:-plain redis cluster}, Redis on 127.0.0.1:$rport, $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
until redis-cli -p "$rport" ping > /dev/null 2>&1; do sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() {
    local mode=$1 dir pid addr t0 r0 acks shipped
    dir=$(mktemp -d)
    if [[ $mode == redis ]]; then
        SMART_REDIS=redis://127.0.0.1:$rport "$server" --listen 127.0.0.1:0 --data-dir "$dir" > "$dir/out" 2> "$dir/err" &
    elif [[ $mode == cluster ]]; then
        SMART_REDIS=redis://127.0.0.1:$rport SMART_ACK=cluster "$server" --listen 127.0.0.1:0 --data-dir "$dir" > "$dir/out" 2> "$dir/err" &
    else
        "$server" --listen 127.0.0.1:0 --data-dir "$dir" > "$dir/out" 2> "$dir/err" &
    fi
    pid=$!
    for _ in $(seq 100); do [[ -s $dir/out ]] && break; sleep 0.1; done
    addr=$(head -1 "$dir/out" | awk '{print $3}')
    t0=$(ticks "$pid") r0=$(ticks "$rpid")
    local report
    report=$("$loadgen" --url "ws://$addr" --devices 100 --seconds 5 --warmup 1 --server-pid "$pid" --json)
    echo "$mode $report" >> "$rdir/runs"
    echo "[$mode] $report"
    acks=$(curl -s --max-time 5 "http://$addr/metrics" | awk '/^smart_acks_total/ {print $2}')
    shipped=$(curl -s --max-time 5 "http://$addr/metrics" | awk '/^smart_cluster_shipped_(batches|records)_total/ {printf "%s=%s ", $1, $2}')
    local cpu_us=$(( ($(ticks "$pid") - t0) * 10000 / acks ))
    echo "$mode-cpu {\"cpu_us_per_ack\": $cpu_us}" >> "$rdir/runs"
    echo "[$mode] whole run: server $cpu_us µs CPU per ack ($acks acks), redis $(( $(ticks "$rpid") - r0 )) ticks $shipped"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
for _ in $(seq "$rounds"); do
    for mode in ${MODES:-plain redis cluster}; do run "$mode"; done
done
PYTHONPATH=examples python3 - "$rdir/runs" <<'PY'
import json, statistics, sys
from labelled import load
runs = load(sys.argv[1])
modes = [m for m in runs if not m.endswith("-cpu")]
med = lambda xs: round(statistics.median(xs), 3)
rates = {m: [r["acks_per_s"] for r in runs[m]] for m in modes}
summary = {"median_acks_per_s": {m: med(v) for m, v in rates.items()},
           "median_ack_p99_ms": {m: med([r["ack_p99_ms"] for r in runs[m]]) for m in modes},
           "median_cpu_us_per_ack": {m: med([r["cpu_us_per_ack"] for r in runs[m + "-cpu"]]) for m in modes},
           "errors": {m: sum(r["errors"] for r in runs[m]) for m in modes},
           "rounds_acks_per_s": rates,
           "load_average": [r.get("load_average") for m in modes for r in runs[m]]}
if "plain" in rates:
    summary["ratio_of_medians_to_plain"] = {m: round(statistics.median(rates[m]) / statistics.median(rates["plain"]), 3)
                                            for m in modes if m != "plain"}
    summary["ratio_to_plain_per_round"] = {m: [round(x / p, 3) for x, p in zip(rates[m], rates["plain"])]
                                           for m in modes if m != "plain"}
print(json.dumps(summary))
PY
