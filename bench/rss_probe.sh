#!/usr/bin/env bash
# rss_probe.sh - the memory row of bench/bench.sh on its own: preload KEYS keys
# (32-byte keys, 100-byte values, clie bench --preload -n 1, 50 connections,
# 2 threads) into a fresh tpckv (--fsync none, one replica) and, with
# PROBE_MEMCACHED=1, into memcached -m 1024 -t 2, and print VmRSS (KiB) after
# the preload; then tpckv is killed (SIGKILL) and restarted on its data dir
# and its VmRSS printed again.
#
#   bench/rss_probe.sh [KEYS]          (default 1000000)
#   PROBE_MEMCACHED=1                  also measure memcached
#   PROBE_RESTART=0                    skip the restart
#   PROBE_HOOK='cmd'                   run with $PID set (the loaded tpckv)
#                                      before it is killed, e.g. to read smaps
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=${1:-1000000}
SERVE=${SERVE:-./serve}
CLIE=${CLIE:-./clie}
MEMCACHED=${MEMCACHED:-/usr/bin/memcached}
. bench/lib.sh
bench_setup rss_probe
preload() { # preload PORT
    "$CLIE" -p "$1" bench -c 50 -T 2 --key-size 32 --value-size "${PROBE_VALUE:-100}" --keys "$KEYS" \
        --preload -n 1 --json >"$tmp/preload.$1.json" 2>"$tmp/preload.$1.err" ||
        { cat "$tmp/preload.$1.err" >&2; exit 2; }
}
items() { "$CLIE" -p "$1" stats | sed -n 's/^curr_items //p'; }

port=$(free_port)
"$SERVE" -s 127.0.0.1 -t -p "$port" -d "$tmp/data" --fsync none -l info \
    --log-file "$tmp/serve.log" &
PID=$!
pids+=("$PID")
wait_up "$port" "$PID" || exit 2
before=$(rss_kib "$PID")
preload "$port"
echo "tpckv     keys $KEYS items $(items "$port") VmRSS before $before KiB after $(rss_kib "$PID") KiB"
if [ -n "${PROBE_HOOK:-}" ]; then
    export PID
    bash -c "$PROBE_HOOK"
fi
if [ "${PROBE_RESTART:-1}" = 1 ]; then
    kill -KILL "$PID"
    wait "$PID" 2>/dev/null || true
    "$SERVE" -s 127.0.0.1 -t -p "$port" -d "$tmp/data" --fsync none -l info \
        --log-file "$tmp/serve2.log" &
    PID=$!
    pids+=("$PID")
    wait_up "$port" "$PID" || exit 2
    echo "tpckv     restarted: items $(items "$port") VmRSS $(rss_kib "$PID") KiB"
fi
if [ "${PROBE_MEMCACHED:-0}" = 1 ]; then
    mport=$(free_port)
    user=()
    [ "$(id -u)" -ne 0 ] || user=(-u root)
    "$MEMCACHED" "${user[@]}" -l 127.0.0.1 -p "$mport" -U 0 -t 2 -m 1024 -c 4096 &
    mpid=$!
    pids+=("$mpid")
    wait_up "$mport" "$mpid" || exit 2
    before=$(rss_kib "$mpid")
    preload "$mport"
    echo "memcached keys $KEYS items $(items "$mport") VmRSS before $before KiB after $(rss_kib "$mpid") KiB"
fi
