#!/usr/bin/env bash
# Reproduces the figures of BENCHMARKS.md on this machine: `bash examples/benchmarks.sh [ingest|window|idle|fleet|dashboards|auth|history|cluster|peer|all]`.
#
# `cluster` (issue 14; not part of `all`: it needs Debian's redis-server and about 3 minutes of both cores)
# runs 50,000 simulated devices over 3 instances sharing one Redis: device errors, device->dashboard latency
# across instances, each instance's CPU and RSS, Redis's CPU and bytes per change (see cluster() below for its
# CLUSTER_* settings, e.g. CLUSTER_DEVICES=1500 CLUSTER_SECONDS=10 for a smoke run). One instance with and
# without --redis: examples/redis_ab.sh.
#
# `peer` (issue 15; not part of `all`: it needs Debian's mosquitto, which it does not install) measures
# smart-server and Mosquitto 2 side by side with the same device model (loadgen, and examples/mqtt_load.rs on
# the MQTT side), alternating round by round, and prints the medians and the ratios smart/mosquitto (see
# peer() below for its PEER_* settings).
#
# Each measurement starts a fresh release smart-server on 127.0.0.1 (port 0, temporary data dir), runs one
# example against it with --server-pid so the server's CPU and memory are read from /proc, stops it with
# SIGTERM and prints the example's JSON line (ingest and idle) or summary (fleet). Every run is bounded:
# an ingest run alternates smart-server and the baseline for 3 rounds of 1 s warm-up + 2 s measured
# (about 20 s) and reports the median round of each, with the spread of all rounds.
#
#   ROUNDS=N            rounds per ingest run (default 3)
#   SECONDS_MEASURED=N  measured seconds per round (default 2)
#   WARMUP=N            warm-up seconds per round (default 1)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${ROUNDS:-3}
measured=${SECONDS_MEASURED:-2}
warmup=${WARMUP:-1}
what=${1:-all}

# mosquitto_bin: the path of Debian's mosquitto (it lives in /usr/sbin, which a user's PATH may not hold).
mosquitto_bin() { command -v mosquitto || { [[ -x /usr/sbin/mosquitto ]] && echo /usr/sbin/mosquitto; }; }
if [[ $what == peer ]] && ! mosquitto_bin >/dev/null; then
    echo "peer: mosquitto is not installed, so there is nothing to compare with; this script installs nothing." >&2
    echo "peer: on Debian, install Mosquitto 2 with \`sudo apt-get install -y mosquitto\` (the package also enables a" >&2
    echo "peer: systemd service on port 1883, which the benchmark does not use), then run this again." >&2
    exit 0
fi

cargo build --quiet --release -p smart-server
cargo build --quiet --release --examples -p smart-os
server_bin=${CARGO_TARGET_DIR:-target}/release/smart-server
examples=${CARGO_TARGET_DIR:-target}/release/examples

# Extra flags for the servers with_server starts (none unless a benchmark sets them).
server_args=()

# with_server COMMAND...: runs COMMAND with $url and $pid of a fresh server in its environment.
with_server() {
    local dir
    dir=$(mktemp -d)
    "$server_bin" --listen 127.0.0.1:0 --data-dir "$dir/data" "${server_args[@]}" >"$dir/stdout" 2>"$dir/stderr" &
    local pid=$!
    for _ in $(seq 100); do
        [[ -s $dir/stdout ]] && break
        sleep 0.1
    done
    local addr
    addr=$(head -n 1 "$dir/stdout")
    addr=${addr#listening on }
    url="ws://$addr" pid=$pid "$@" || echo "run failed: $*" >&2
    kill -TERM "$pid"
    wait "$pid" || true
    rm -rf "$dir"
}

ingest() {
    for devices in 1 10 100 1000; do
        for dashboards in 0 1 10; do
            echo "ingest: $devices devices, $dashboards dashboards (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
            with_server sh -c "\"$examples/loadgen\" --url \"\$url\" --server-pid \"\$pid\" --devices $devices \
                --dashboards $dashboards --warmup $warmup --seconds $measured --rounds $rounds --baseline --json"
        done
    done
}

window() {
    echo "ingest: 100 devices with 8 messages in flight each" >&2
    with_server sh -c "\"$examples/loadgen\" --url \"\$url\" --server-pid \"\$pid\" --devices 100 --window 8 \
        --warmup $warmup --seconds $measured --rounds $rounds --baseline --json"
}

idle() {
    echo "idle: 10000 connections" >&2
    with_server sh -c "\"$examples/loadgen\" --url \"\$url\" --server-pid \"\$pid\" --idle 10000 --json"
}

fleet() {
    echo "fleet: 10000 simulated devices, one change every 2-8 s, 20 s" >&2
    with_server sh -c "\"$examples/solmate_sim\" --url \"\$url\" --server-pid \"\$pid\" --devices 10000 \
        --min-interval 2 --max-interval 8 --seconds 20 --quiet"
}

dashboards() {
    echo "dashboards: 100 devices + 10 reading dashboards, against no dashboards in alternate rounds" >&2
    with_server sh -c "\"$examples/loadgen\" --url \"\$url\" --server-pid \"\$pid\" --devices 100 --dashboards 10 \
        --against-no-dashboards --warmup $warmup --seconds $measured --rounds $rounds --json"
    # Without the history: it holds every acked change in memory until the next checkpoint, so its growth
    # during a round follows the ack rate and would be counted as the stalled dashboards' memory.
    echo "dashboards: 100 devices + 1000 dashboards that never read, against no dashboards in alternate rounds (--history off)" >&2
    server_args=(--history off)
    with_server sh -c "\"$examples/loadgen\" --url \"\$url\" --server-pid \"\$pid\" --devices 100 \
        --stalled-dashboards 1000 --against-no-dashboards --warmup 5 --seconds $measured --rounds $rounds --json"
    server_args=()
}

# start_server DIR ARGS...: a release server on a data dir kept across starts; sets $addr and $server_pid.
start_server() {
    local dir=$1
    shift
    : >"$dir/stdout"
    "$server_bin" --listen 127.0.0.1:0 --data-dir "$dir/data" "$@" >"$dir/stdout" 2>>"$dir/stderr" &
    server_pid=$!
    for _ in $(seq 100); do
        [[ -s $dir/stdout ]] && break
        sleep 0.1
    done
    addr=$(head -n 1 "$dir/stdout")
    addr=${addr#listening on }
}

stop_server() {
    kill -TERM "$server_pid"
    wait "$server_pid" || true
}

# auth: durable acks at 100 devices (window 1) with auth off, with --auth required (device tokens), and with
# --auth required over TLS, alternating in each round; then 10,000 devices connecting with tokens at once
# (time to the last welcome, server CPU) and the server memory per idle connection, plain and TLS.
# Needs `openssl` (a self-signed certificate for localhost).
auth() {
    local dir
    dir=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "basicConstraints=critical,CA:FALSE" \
        -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
    seq -f %04g 1 10000 | "$server_bin" --data-dir "$dir/data" token bulk --out "$dir/tokens.txt" 2>/dev/null
    local tls=(--auth required --tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem")
    local load=(--devices 100 --warmup "$warmup" --seconds "$measured" --rounds 1 --json)
    for round in $(seq "$rounds"); do
        echo "auth: round $round of $rounds (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
        start_server "$dir"
        "$examples/loadgen" --url "ws://$addr" --server-pid "$server_pid" "${load[@]}" | sed 's/^/off /' >>"$dir/runs"
        stop_server
        start_server "$dir" --auth required
        "$examples/loadgen" --url "ws://$addr" --server-pid "$server_pid" --token-file "$dir/tokens.txt" "${load[@]}" \
            | sed 's/^/required /' >>"$dir/runs"
        stop_server
        start_server "$dir" "${tls[@]}"
        "$examples/loadgen" --url "wss://localhost:${addr##*:}" --server-pid "$server_pid" --ca-cert "$dir/cert.pem" \
            --token-file "$dir/tokens.txt" "${load[@]}" | sed 's/^/tls /' >>"$dir/runs"
        stop_server
    done
    PYTHONPATH=examples python3 - "$dir/runs" <<'PY'
import json, statistics, sys
from labelled import load
runs = load(sys.argv[1])
median = {k: statistics.median(r["acks_per_s"] for r in v) for k, v in runs.items()}
cpu = {k: statistics.median(r.get("server_cpu_percent") or 0 for r in v) for k, v in runs.items()}
print(json.dumps({"acks_per_s": median, "server_cpu_percent": cpu,
                  "required_vs_off": round(median["required"] / median["off"], 3),
                  "tls_vs_off": round(median["tls"] / median["off"], 3),
                  "rounds": {k: [r["acks_per_s"] for r in v] for k, v in runs.items()}}))
PY
    echo "auth: 10000 devices connecting with tokens at once, then idle (plain, then TLS)" >&2
    start_server "$dir" --auth required
    "$examples/loadgen" --url "ws://$addr" --server-pid "$server_pid" --token-file "$dir/tokens.txt" --idle 10000 --json
    stop_server
    start_server "$dir" "${tls[@]}"
    "$examples/loadgen" --url "wss://localhost:${addr##*:}" --server-pid "$server_pid" --ca-cert "$dir/cert.pem" \
        --token-file "$dir/tokens.txt" --idle 10000 --json
    stop_server
    rm -rf "$dir"
}

# history: what keeping the history costs, against --history off in alternate rounds, each from a copy of
# one store that `history-fill` gave 3 simulated hours of 10,000 devices (so the current hour holds data, as it
# does in steady operation; HISTORY_SEED=0 starts empty): server CPU of 10,000 devices changing once every 5 s
# (solmate_sim, HISTORY_FLEET_SECONDS, default 60), over the whole run and in steady state (from /proc between
# 20 s and 5 s before the end, after the devices have connected), and durable acks at 100 devices (window 1);
# then `smart-server history-fill` (48 simulated hours of 10,000 devices, HISTORY_FILL_DEVICES): bytes per raw
# sample, rollup, query and retention times; then acks (p50/p99) at 100 devices while a server on that store
# deletes 12 h of raw samples, against a run right after it. HISTORY_COMPARE=0 skips the comparison with
# --history off.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

history() {
    local dir
    dir=$(mktemp -d)
    if [[ ${HISTORY_COMPARE:-1} != 0 ]]; then
    local fleet_seconds=${HISTORY_FLEET_SECONDS:-60}
    mkdir -p "$dir/seed/data"
    if [[ ${HISTORY_SEED:-1} != 0 ]]; then
        echo "history: seeding a store with 3 simulated hours of 10,000 devices (HISTORY_SEED=0 skips it)" >&2
        rm -rf "$dir/seed/data"
        "$server_bin" --data-dir "$dir/seed/data" history-fill --devices 10000 --hours 3 >/dev/null
    fi
    local hz
    hz=$(getconf CLK_TCK)
    for round in $(seq "$rounds"); do
        for setting in on off; do
            echo "history: round $round of $rounds, --history $setting (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
            rm -rf "${dir:?}/$setting"
            mkdir -p "$dir/$setting"
            cp -a "$dir/seed/data" "$dir/$setting/data"
            start_server "$dir/$setting" --history "$setting"
            "$examples/solmate_sim" --url "ws://$addr" --server-pid "$server_pid" --devices 10000 \
                --min-interval 5 --max-interval 5 --seconds "$fleet_seconds" --json 2>/dev/null | tail -n 1 | sed "s/^/fleet-$setting /" >>"$dir/runs" &
            local sim=$!
            sleep 20
            local t0 c0 t1 c1
            t0=$(date +%s.%N) c0=$(cpu_ticks "$server_pid")
            sleep $((fleet_seconds - 25))
            t1=$(date +%s.%N) c1=$(cpu_ticks "$server_pid")
            wait "$sim"
            awk -v c0="$c0" -v c1="$c1" -v t0="$t0" -v t1="$t1" -v hz="$hz" -v s="$setting" \
                'BEGIN { printf "steady-%s {\"cpu_percent\": %.3f}\n", s, 100 * (c1 - c0) / hz / (t1 - t0) }' >>"$dir/runs"
            "$examples/loadgen" --url "ws://$addr" --server-pid "$server_pid" --devices 100 --warmup "$warmup" \
                --seconds "$measured" --rounds 1 --json | sed "s/^/ingest-$setting /" >>"$dir/runs"
            stop_server
        done
    done
    PYTHONPATH=examples python3 - "$dir/runs" <<'PY'
import json, statistics, sys
from labelled import load
runs = load(sys.argv[1])
cpu = {k: statistics.median(r.get("server_cpu_percent") or 0 for r in v) for k, v in runs.items() if k.startswith("fleet")}
steady = {k: statistics.median(r["cpu_percent"] for r in v) for k, v in runs.items() if k.startswith("steady")}
acks = {k: statistics.median(r["acks_per_s"] for r in v) for k, v in runs.items() if k.startswith("ingest")}
print(json.dumps({"fleet_server_cpu_percent": cpu, "fleet_cpu_on_vs_off": round(cpu["fleet-on"] / max(cpu["fleet-off"], 1e-9), 3),
                  "steady_server_cpu_percent": {k: round(v, 2) for k, v in steady.items()},
                  "steady_cpu_on_vs_off": round(steady["steady-on"] / max(steady["steady-off"], 1e-9), 3),
                  "steady_rounds": {k: [round(r["cpu_percent"], 2) for r in v] for k, v in runs.items() if k.startswith("steady")},
                  "fleet_acked": {k: [r.get("acked") for r in v] for k, v in runs.items() if k.startswith("fleet")},
                  "ingest_acks_per_s": acks, "ingest_on_vs_off": round(acks["ingest-on"] / acks["ingest-off"], 3),
                  "ingest_rounds": {k: [r["acks_per_s"] for r in v] for k, v in runs.items() if k.startswith("ingest")}}))
PY
    fi
    if [[ ${HISTORY_FILL:-1} != 0 ]]; then
        local devices=${HISTORY_FILL_DEVICES:-10000}
        echo "history: history-fill, 48 simulated hours of $devices devices (HISTORY_FILL=0 skips it)" >&2
        mkdir -p "$dir/fill"
        "$server_bin" --data-dir "$dir/fill/data" history-fill --devices "$devices" --hours 48
        # The fill keeps its last 24 raw hours. A server keeping 12 deletes half of them as it starts (the
        # history's thread), while 100 devices send; a second run on the same server afterwards is the
        # baseline of the same run.
        echo "history: acks while the history thread deletes 12 h of raw samples, then after it" >&2
        # First the 100 devices, so that both measured runs update known records.
        start_server "$dir/fill"
        "$examples/loadgen" --url "ws://$addr" --devices 100 --warmup 0 --seconds 1 --rounds 1 --json >/dev/null
        stop_server
        start_server "$dir/fill" --history-raw-hours 12
        local run=("$examples/loadgen" --url "ws://$addr" --server-pid "$server_pid" --devices 100 --warmup 0
            --seconds 5 --rounds 1 --json)
        "${run[@]}" | sed "s/^/during /" >"$dir/retention"
        for _ in $(seq 600); do
            grep -q "history retention" "$dir/fill/stderr" && break
            sleep 0.2
        done
        "${run[@]}" | sed "s/^/after /" >>"$dir/retention"
        stop_server
        PYTHONPATH=examples python3 - "$dir/retention" "$dir/fill/stderr" <<'PY'
import json, re, sys
from labelled import load
keys = ("acks_per_s", "ack_p50_ms", "ack_p99_ms", "ack_p999_ms")
runs = {label: {k: r[-1][k] for k in keys} for label, r in load(sys.argv[1]).items()}
log = [l for l in open(sys.argv[2]) if "history retention" in l]
found = re.search(r"removed=(\d+).*elapsed=(\S+)", log[-1]) if log else None
print(json.dumps({"retention_parts_removed": found and int(found.group(1)), "retention_elapsed": found and found.group(2),
                  "acks_during_retention": runs.get("during"), "acks_after": runs.get("after"),
                  "p99_during_vs_after": round(runs["during"]["ack_p99_ms"] / runs["after"]["ack_p99_ms"], 2)}))
PY
    fi
    rm -rf "$dir"
}

# cluster: CLUSTER_DEVICES (default 50,000) simulated devices over 3 instances sharing one fleet through
# one Redis (issue 14). Starts a test redis-server (free loopback port, temp dir, `--appendonly yes
# --appendfsync always --save ''`), 3 release servers (`--redis`, each its own temp data dir, `--listen
# 127.0.0.1:0`) and one `solmate_sim` per instance on disjoint serials (ceil(CLUSTER_DEVICES / 3) devices each,
# one change every CLUSTER_INTERVAL s (default 5), a share CLUSTER_STAMP (default 0.2) of the UPDTs stamped
# with their send time in the extra field `sent_ms`). Once every device is connected (at most
# CLUSTER_CONNECT_SECONDS, default 90) and CLUSTER_SETTLE s more (default 10: the INIT burst; the latency
# dashboard connects at its start, so its snapshot of the whole fleet is not in the window), it measures for
# CLUSTER_SECONDS (default 60): a latency dashboard (`watch --latency-field sent_ms`) on the first instance
# takes the device->dashboard latency of the changes acked on the other two (`remote`) and on its own
# (`local`); each instance's CPU (utime+stime from /proc over the window) and RSS at its end; Redis's CPU per
# change (its /proc ticks over the window / the records the instances shipped, smart_cluster_shipped_records_total)
# and its network bytes per change (INFO stats). The simulators run CLUSTER_CONNECT_SECONDS + CLUSTER_SETTLE +
# CLUSTER_SECONDS + 5 s, then drain; their reports (errors over the whole run) end the JSON line. About 3 min.
# CLUSTER_FOLLOWER=1 adds a fourth instance with no devices (`follower_without_devices`): the cost of following
# the fleet alone. On stderr at the end: Redis's commandstats, its AOF rewrites in the run and the latency events
# it saw above 100 ms; CLUSTER_REDIS_ARGS adds arguments to redis-server (e.g. "--auto-aof-rewrite-percentage 0").
metric() { curl -s --max-time 5 "http://$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'; }
redis_stat() { redis-cli -p "$1" info stats | tr -d '\r' | awk -F: -v k="$2" '$1 == k {print $2}'; }

cluster() {
    local dir total per connect settle window interval stamp hz
    dir=$(mktemp -d)
    total=${CLUSTER_DEVICES:-50000} connect=${CLUSTER_CONNECT_SECONDS:-90} settle=${CLUSTER_SETTLE:-10}
    window=${CLUSTER_SECONDS:-60} interval=${CLUSTER_INTERVAL:-5} stamp=${CLUSTER_STAMP:-0.2}
    per=$(((total + 2) / 3))
    hz=$(getconf CLK_TCK)
    local rport rpid
    rport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$dir/redis"
    redis-server --bind 127.0.0.1 --port "$rport" --dir "$dir/redis" --appendonly yes --appendfsync always \
        --save '' --daemonize no --logfile "$dir/redis/log" --latency-monitor-threshold 100 ${CLUSTER_REDIS_ARGS:-} >/dev/null 2>&1 &
    rpid=$!
    for _ in $(seq 100); do
        redis-cli -p "$rport" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    local pids=() addrs=() sims=() i
    for i in 0 1 2; do
        mkdir -p "$dir/$i"
        start_server "$dir/$i" --redis "redis://127.0.0.1:$rport"
        pids+=("$server_pid") addrs+=("$addr")
    done
    if [[ ${CLUSTER_FOLLOWER:-0} != 0 ]]; then
        # A fourth instance with no devices: what following the fleet alone costs.
        mkdir -p "$dir/3"
        start_server "$dir/3" --redis "redis://127.0.0.1:$rport"
        pids+=("$server_pid") addrs+=("$addr")
    fi
    echo "cluster: $((3 * per)) devices over 3 instances (${addrs[*]:0:3}${pids[3]:+; a follower with no devices: ${addrs[3]}}), Redis on 127.0.0.1:$rport (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
    for i in 0 1 2; do
        "$examples/solmate_sim" --url "ws://${addrs[$i]}" --server-pid "${pids[$i]}" --devices "$per" \
            --first-serial $((1 + i * per)) --min-interval "$interval" --max-interval "$interval" \
            --seconds $((connect + settle + window + 5)) --stamp-field sent_ms --stamp-fraction "$stamp" --json \
            >"$dir/sim$i.json" 2>"$dir/sim$i.err" &
        sims+=($!)
    done
    local t connected=0
    local start=$SECONDS
    while ((SECONDS - start < connect)); do
        connected=0
        for i in 0 1 2; do
            connected=$((connected + $(metric "${addrs[$i]}" 'smart_connections{role="device"}')))
        done
        ((connected >= 3 * per)) && break
        sleep 1
    done
    echo "cluster: $connected devices connected after $((SECONDS - start)) s; settling ${settle} s, then measuring ${window} s" >&2
    # The latency dashboard connects now: its snapshot (the whole fleet) is built and sent before the window.
    "$examples/watch" --url "ws://${addrs[0]}" --seconds $((settle + window)) --latency-warmup "$settle" \
        --latency-field sent_ms --local-serials "1-$per" >"$dir/watch.json" 2>"$dir/watch.err" &
    local watcher=$!
    sleep "$settle"
    echo "cluster: measuring from $(date -u +%H:%M:%S.%N | cut -c1-12) UTC" >&2
    # The window: /proc ticks and counters before and after, the latency dashboard in between.
    sample() {
        local label=$1 i
        {
            printf '%s {"t": %s, "load": "%s", "redis_ticks": %s, "redis_rss_kib": %s' "$label" "$(date +%s.%N)" \
                "$(cut -d' ' -f1-3 /proc/loadavg)" "$(cpu_ticks "$rpid")" "$(awk '/^VmRSS/ {print $2}' "/proc/$rpid/status")"
            printf ', "redis_in": %s, "redis_out": %s' "$(redis_stat "$rport" total_net_input_bytes)" \
                "$(redis_stat "$rport" total_net_output_bytes)"
            printf ', "instances": ['
            for i in "${!pids[@]}"; do
                ((i > 0)) && printf ', '
                printf '{"ticks": %s, "rss_kib": %s, "devices": %s, "acks": %s, "shipped": %s, "batches": %s, "remote_applied": %s, "resyncs": %s, "ship_errors": %s, "follow_errors": %s}' \
                    "$(cpu_ticks "${pids[$i]}")" "$(awk '/^VmRSS/ {print $2}' "/proc/${pids[$i]}/status")" \
                    "$(metric "${addrs[$i]}" 'smart_connections{role="device"}')" "$(metric "${addrs[$i]}" smart_acks_total)" \
                    "$(metric "${addrs[$i]}" smart_cluster_shipped_records_total)" \
                    "$(metric "${addrs[$i]}" smart_cluster_shipped_batches_total)" \
                    "$(metric "${addrs[$i]}" smart_cluster_remote_applied_total)" \
                    "$(metric "${addrs[$i]}" smart_cluster_resyncs_total)" \
                    "$(metric "${addrs[$i]}" smart_cluster_ship_errors_total)" \
                    "$(metric "${addrs[$i]}" smart_cluster_follow_errors_total)"
            done
            printf ']}\n'
        } >>"$dir/runs"
    }
    sample before
    wait "$watcher" || echo "cluster: the latency dashboard failed: $(cat "$dir/watch.err")" >&2
    sample after
    printf 'latency %s\n' "$(tail -n 1 "$dir/watch.json")" >>"$dir/runs"
    echo "cluster: window over; waiting for the simulators (they stop by themselves, after a drain)" >&2
    for i in 0 1 2; do
        # solmate_sim stops by itself: its run, a drain window and a hard stop (--seconds + 45 s at most).
        wait "${sims[$i]}" || echo "cluster: simulator $i failed: $(tail -n 3 "$dir/sim$i.err")" >&2
        printf 'sim %s\n' "$(tail -n 1 "$dir/sim$i.json")" >>"$dir/runs"
    done
    for i in "${!pids[@]}"; do
        kill -TERM "${pids[$i]}"
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || true
    done
    # What a record and the fleet weigh in Redis (for sizing).
    printf 'sizes {"record_bytes": %s, "used_memory": %s, "stream_entries": %s}\n' \
        "$(redis-cli -p "$rport" hstrlen smart:devices "$(printf %04d "$per")")" \
        "$(redis-cli -p "$rport" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" {print $2}')" \
        "$(redis-cli -p "$rport" xlen smart:changes)" >>"$dir/runs"
    # Where Redis's CPU went, per command (microseconds in all and per call), on stderr.
    redis-cli -p "$rport" info commandstats | tr -d '\r' | grep '^cmdstat' | sed 's/^/cluster: redis /' >&2
    # Rewrites of the append-only file (each a fork of the whole Redis, then a burst of disk writes) and the
    # latency events Redis saw above 100 ms.
    redis-cli -p "$rport" info persistence | tr -d '\r' | grep -E '^(aof_rewrites|aof_current_size|aof_last_rewrite_time_sec|latest_fork_usec):' | sed 's/^/cluster: redis /' >&2
    redis-cli -p "$rport" latency latest | tr -d '\r' | paste -sd' ' | sed 's/^/cluster: redis latency latest (event, time, last ms, max ms): /' >&2
    kill -TERM "$rpid"
    wait "$rpid" || true
    PYTHONPATH=examples python3 - "$dir/runs" "$hz" "$per" "$interval" <<'PY'
import json, sys
from labelled import load
runs = load(sys.argv[1])
hz, per, interval = float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
b, a = runs["before"][0], runs["after"][0]
dt = a["t"] - b["t"]
shipped = sum(y["shipped"] - x["shipped"] for x, y in zip(b["instances"], a["instances"]))
acks = sum(y["acks"] - x["acks"] for x, y in zip(b["instances"], a["instances"]))
redis_cpu_s = (a["redis_ticks"] - b["redis_ticks"]) / hz
instances = []
for x, y in zip(b["instances"], a["instances"]):
    cpu_s = (y["ticks"] - x["ticks"]) / hz
    instances.append({"cpu_percent": round(100 * cpu_s / dt, 1), "rss_kib": y["rss_kib"], "devices": y["devices"],
                      "acks_per_s": round((y["acks"] - x["acks"]) / dt, 1),
                      "remote_applied_per_s": round((y["remote_applied"] - x["remote_applied"]) / dt, 1),
                      "records_per_batch": round((y["shipped"] - x["shipped"]) / max(y["batches"] - x["batches"], 1), 1),
                      "cpu_us_per_cluster_change": round(1e6 * cpu_s / max(acks, 1), 1),
                      "cpu_us_per_remote_change": round(1e6 * cpu_s / max(y["remote_applied"] - x["remote_applied"], 1), 1),
                      "resyncs": y["resyncs"], "ship_errors": y["ship_errors"], "follow_errors": y["follow_errors"]})
sims = runs.get("sim", [])
bad = ("errors", "unexpected", "unacked", "unsent_fields", "connect_failures", "ack_timeouts", "lost_in_flight", "stragglers")
print(json.dumps({
    "devices": 3 * per, "change_interval_s": interval, "window_s": round(dt, 2),
    "load_before": b["load"], "load_after": a["load"],
    "acks_per_s": round(acks / dt, 1), "shipped_records_per_s": round(shipped / dt, 1),
    "latency_dashboard": runs.get("latency", [None])[0],
    "instances": instances[:3],
    "follower_without_devices": instances[3] if len(instances) > 3 else None,
    "redis": {"cpu_percent": round(100 * redis_cpu_s / dt, 1), "cpu_us_per_change": round(1e6 * redis_cpu_s / max(shipped, 1), 2),
              "rss_kib": a["redis_rss_kib"], "in_bytes_per_change": round((a["redis_in"] - b["redis_in"]) / max(shipped, 1), 1),
              "out_bytes_per_change": round((a["redis_out"] - b["redis_out"]) / max(shipped, 1), 1),
              **runs.get("sizes", [{}])[0]},
    "device_errors": {k: sum(s.get(k, 0) for s in sims) for k in bad},
    "simulators": [{k: s.get(k) for k in ("devices", "connected", "sent", "acked", "stamped", "reconnects", "ack_p50_ms",
                                          "ack_p99_ms", "ack_max_ms", "sim_cpu_percent", "server_cpu_percent",
                                          "server_rss_kib", "first_errors")} for s in sims],
}))
PY
    # What the instances logged as slow (round trips to Redis, stream entries read late, checkpoints):
    # where a latency tail came from, by time of day (the window's start is printed above).
    for i in "${!pids[@]}"; do
        grep -h -E 'slow |late ' "$dir/$i/stderr" 2>/dev/null | tail -n 30 | sed "s/^/cluster: instance $i: /" >&2
    done
    rm -rf "$dir"
}

# peer (issue 15): smart-server against Mosquitto 2 (Debian's `mosquitto`), the broker operators would pick
# instead, with the same load: loadgen's device model, and examples/mqtt_load.rs (on rumqttc) on the MQTT side.
# For ROUNDS rounds, alternating, each with a fresh release smart-server (temp data dir) and a fresh mosquitto
# (free loopback port, temp config):
#   ingest      PEER_DEVICES (100) devices, PEER_WINDOW (1) messages in flight each, WARMUP + SECONDS_MEASURED;
#   dashboards  the same + PEER_DASHBOARDS (10) dashboards (MQTT: subscribers to `#`, QoS PEER_DASHBOARD_QOS, 0
#               by default: pushed without acks, as smart-server pushes to its dashboards);
#   idle        PEER_IDLE (10,000) idle connections: server/broker RSS growth per connection.
# Then the medians of each mode and the ratios smart/mosquitto (acks/s > 1: smart-server faster; CPU per ack,
# latency and memory < 1: smart-server leaner). PEER_IDLE=0 skips idle, PEER_DASHBOARDS=0 skips dashboards.
#
# The two acks do not promise the same: smart-server acks a message once the fdatasync covering it returned
# (it is on disk); Mosquitto's QoS 1 PUBACK here means the broker has routed the message in memory (to the
# subscribers' queues), with `persistence false` nothing is written anywhere, and a broker crash loses it.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_mosquitto DIR: a fresh mosquitto on a free loopback port; sets $mqtt_port and $mqtt_pid.
start_mosquitto() {
    local dir=$1
    mqtt_port=$(free_port)
    # persistence false: no database on disk, so a PUBACK means "routed in memory" (see above).
    # set_tcp_nodelay true: Nagle off on client sockets, as smart-server and both load clients do.
    # Everything else is Mosquitto 2's default (e.g. max_queued_messages 1000, max_inflight_messages 20).
    cat >"$dir/mosquitto.conf" <<EOF
listener $mqtt_port 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
    "$(mosquitto_bin)" -c "$dir/mosquitto.conf" 2>>"$dir/mosquitto.log" &
    mqtt_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$mqtt_port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "peer: mosquitto did not start: $(tail -n 3 "$dir/mosquitto.log")" >&2
    return 1
}

stop_mosquitto() {
    kill -TERM "$mqtt_pid" 2>/dev/null || echo "peer: mosquitto had stopped: $(tail -n 3 "$dir/mosquitto.log")" >&2
    wait "$mqtt_pid" || true
}

# peer_round LABEL SMART_ARGS -- MQTT_ARGS: one smart-server run (loadgen) and one mosquitto run (mqtt_load),
# each with its own fresh server, each JSON line appended to $dir/runs as `smart-LABEL` / `mosquitto-LABEL`.
peer_round() {
    local label=$1
    shift
    local smart=() mqtt=()
    while (($#)) && [[ $1 != -- ]]; do
        smart+=("$1")
        shift
    done
    shift
    mqtt=("$@")
    with_server bash -c '"$0" --url "$url" --server-pid "$pid" "$@"' "$examples/loadgen" "${smart[@]}" \
        | sed "s/^/smart-$label /" >>"$dir/runs"
    start_mosquitto "$dir" || return 0
    "$examples/mqtt_load" --url "mqtt://127.0.0.1:$mqtt_port" --server-pid "$mqtt_pid" "${mqtt[@]}" \
        | sed "s/^/mosquitto-$label /" >>"$dir/runs" || echo "peer: mqtt_load failed ($label)" >&2
    stop_mosquitto
}

peer() {
    local devices=${PEER_DEVICES:-100} dashboards=${PEER_DASHBOARDS:-10} connections=${PEER_IDLE:-10000}
    local peer_window=${PEER_WINDOW:-1} qos=${PEER_DASHBOARD_QOS:-0}
    local dir
    dir=$(mktemp -d)
    echo "peer: $("$(mosquitto_bin)" -h 2>/dev/null | head -n 1); $rounds rounds of $devices devices (window $peer_window), + $dashboards dashboards, $connections idle connections" >&2
    # smart-server's data directories are made under TMPDIR like this one: TMPDIR=/dev/shm (tmpfs) measures
    # the server without the disk's price, which is not what its OK promises anywhere else.
    echo "peer: smart-server's data directory on $(stat -f -c %T "$dir") (TMPDIR=${TMPDIR:-/tmp})" >&2
    local load=(--devices "$devices" --window "$peer_window" --warmup "$warmup" --seconds "$measured" --rounds 1 --json)
    for round in $(seq "$rounds"); do
        echo "peer: round $round of $rounds, ingest (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
        peer_round ingest "${load[@]}" -- "${load[@]}"
        if ((dashboards > 0)); then
            echo "peer: round $round of $rounds, $dashboards dashboards (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
            peer_round dashboards "${load[@]}" --dashboards "$dashboards" -- "${load[@]}" --dashboards "$dashboards" \
                --dashboard-qos "$qos"
        fi
        if ((connections > 0)); then
            echo "peer: round $round of $rounds, $connections idle connections (load average $(cut -d' ' -f1 /proc/loadavg))" >&2
            peer_round idle --idle "$connections" --json -- --idle "$connections" --json
        fi
    done
    PYTHONPATH=examples python3 - "$dir/runs" <<'PY'
import json, statistics, sys
from labelled import load
runs = load(sys.argv[1])

def cpu_us_per_ack(r):
    # mqtt_load reports it; for loadgen, from the server's CPU over the measured period and the ack rate.
    if r.get("server_cpu_us_per_ack") is not None:
        return r["server_cpu_us_per_ack"]
    if r.get("server_cpu_percent") is not None and r.get("acks_per_s"):
        return r["server_cpu_percent"] / 100 * 1e6 / r["acks_per_s"]
    return None

def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None

def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None

keys = {
    "acks_per_s": lambda r: r.get("acks_per_s"),
    "ack_p50_ms": lambda r: r.get("ack_p50_ms"),
    "ack_p99_ms": lambda r: r.get("ack_p99_ms"),
    "server_cpu_us_per_ack": cpu_us_per_ack,
    "server_cpu_percent": lambda r: r.get("server_cpu_percent"),
    "server_rss_kib": lambda r: r.get("server_rss_kib"),
    "dashboard_msgs_per_s": lambda r: r.get("dashboard_msgs_per_s"),
    "fanout_p99_ms": lambda r: r.get("fanout_p99_ms"),
    "loadgen_cpu_percent": lambda r: r.get("loadgen_cpu_percent"),
    # The load client's own CPU per ack (loadgen or mqtt_load): both share the two cores with the server.
    "client_cpu_us_per_ack": lambda r: r["loadgen_cpu_percent"] / 100 * 1e6 / r["acks_per_s"] if r.get("acks_per_s") else None,
    "rss_per_connection_kib": lambda r: r.get("rss_per_connection_kib"),
    "connect_seconds": lambda r: r.get("connect_seconds"),
    "errors": lambda r: r.get("errors"),
    "load_average": lambda r: r.get("load_average"),
}
out = {}
for mode in ("ingest", "dashboards", "idle"):
    smart, mqtt = runs.get(f"smart-{mode}", []), runs.get(f"mosquitto-{mode}", [])
    if not smart and not mqtt:
        continue
    entry = {"rounds": {"smart": len(smart), "mosquitto": len(mqtt)}}
    for key, get in keys.items():
        s, m = median(get(r) for r in smart), median(get(r) for r in mqtt)
        if not s and not m and key != "errors":
            continue
        entry[key] = {"smart": s, "mosquitto": m, "smart_over_mosquitto": ratio(s, m)}
    if mode != "idle":
        entry["rounds_acks_per_s"] = {"smart": [r.get("acks_per_s") for r in smart],
                                      "mosquitto": [r.get("acks_per_s") for r in mqtt]}
    if mode == "dashboards":
        entry["resyncs_smart"] = [r.get("resyncs") for r in smart]
        entry["delivery_mosquitto"] = [r.get("dashboard_delivery") for r in mqtt]
    if mode == "idle":
        entry["rounds_rss_per_connection_kib"] = {"smart": [r.get("rss_per_connection_kib") for r in smart],
                                                  "mosquitto": [r.get("rss_per_connection_kib") for r in mqtt]}
    errors = [e for r in smart + mqtt for e in r.get("first_errors", [])][:5]
    if errors:
        entry["first_errors"] = errors
    out[mode] = entry
print(json.dumps(out))
for mode, entry in out.items():
    line = [f"{mode}:"]
    for key in ("acks_per_s", "ack_p99_ms", "server_cpu_us_per_ack", "dashboard_msgs_per_s", "rss_per_connection_kib"):
        if key in entry:
            v = entry[key]
            line.append(f"{key} smart {v['smart']} / mosquitto {v['mosquitto']} = {v['smart_over_mosquitto']}")
    print("  ".join(line), file=sys.stderr)
PY
    rm -rf "$dir"
}

case $what in
    ingest) ingest ;;
    window) window ;;
    idle) idle ;;
    fleet) fleet ;;
    dashboards) dashboards ;;
    auth) auth ;;
    history) history ;;
    cluster) cluster ;;
    peer) peer ;;
    all)
        ingest
        window
        idle
        fleet
        dashboards
        auth
        history
        ;;
    *)
        echo "usage: $0 [ingest|window|idle|fleet|dashboards|auth|history|cluster|peer|all]" >&2
        exit 2
        ;;
esac
