#!/usr/bin/env bash
# One server binary without `--redis`, with it (`--ack local`) and with `--ack cluster`, in alternating
# rounds, at the same load (the machine is shared and noisy: only ratios measured in the same run mean
# something). MODES="plain redis cluster" (the default) picks which.
#
#   bash examples/redis_ab.sh [ROUNDS]     (after cargo build --release -p smart-server and
#                                           cargo build --release --examples -p smart-os)
#
# Starts its own redis-server (append-only, synced on every write) on a free loopback port, then per round
# and mode a fresh server and `loadgen --devices 100 --seconds 5 --warmup 1 --server-pid PID`; prints
# loadgen's report, then the whole run's server CPU per ack (utime+stime / smart_acks_total), Redis's CPU
# ticks (1/100 s) and what was shipped.
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
    "$loadgen" --url "ws://$addr" --devices 100 --seconds 5 --warmup 1 --server-pid "$pid" --quiet | sed "s/^/[$mode] /"
    acks=$(curl -s "http://$addr/metrics" | awk '/^smart_acks_total/ {print $2}')
    shipped=$(curl -s "http://$addr/metrics" | awk '/^smart_cluster_shipped_(batches|records)_total/ {printf "%s=%s ", $1, $2}')
    echo "[$mode] whole run: server $(( ($(ticks "$pid") - t0) * 10000 / acks )) µs CPU per ack ($acks acks), redis $(( $(ticks "$rpid") - r0 )) ticks $shipped"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
for _ in $(seq "$rounds"); do
    for mode in ${MODES:-plain redis cluster}; do run "$mode"; done
done
