#!/usr/bin/env bash
# bench_wal.sh - durable write throughput and group commit (a benchmark, not
# a test: it prints figures and judges nothing).
#
# For --fsync always and --fsync none, starts a fresh serve (TCP, its own data
# dir under a temp dir, a free port), drives it with memcslap (libmemcached's
# load generator) doing sets from 1 and from 50 connections, and prints for
# each run: sets per second, and fsyncs per acknowledged set, read from the
# server's own counters (writes_logged, wal_fsyncs). Each figure is the median
# of BENCH_ROUNDS runs (default 3).
#
#   bench/bench_wal.sh            (or: make bench)
#   BENCH_SETS_1=3000 BENCH_SETS_50=2000 BENCH_ROUNDS=5 bench/bench_wal.sh
#
# memcslap's keys are 20-50 bytes and its values about 2.5 KB. The load
# generator runs on the same machine as the server.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVE=${SERVE:-./serve}
CLIE=${CLIE:-./clie}
ROUNDS=${BENCH_ROUNDS:-3}
SETS_1=${BENCH_SETS_1:-5000}   # sets by the single connection
SETS_50=${BENCH_SETS_50:-2000} # sets per connection, 50 connections

for tool in "$SERVE" "$CLIE" memcslap; do
    command -v "$tool" >/dev/null || { echo "bench_wal.sh: $tool missing (make; make deps)" >&2; exit 2; }
done

. "$(dirname "$0")/lib.sh"
bench_setup bench_wal.sh

start() { # start MODE: a fresh server; sets $port
    rm -rf "$tmp/data"
    : >"$tmp/log"
    "$SERVE" -s 127.0.0.1 -p 0 -t -d "$tmp/data" --fsync "$1" --log-file "$tmp/log" &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 200); do
        grep -q 'listening on' "$tmp/log" && break
        sleep 0.05
    done
    port=$(sed -n 's/.*listening on .* port \([0-9]*\) .*/\1/p' "$tmp/log" | head -n 1)
    [ -n "$port" ] || { cat "$tmp/log" >&2; exit 1; }
}

stop() { bench_stop_all; }

stat() { # stat NAME: one counter from the server
    timeout 10 "$CLIE" -p "$port" stats | sed -n "s/^$1 //p"
}

# run CONNS SETS_PER_CONN: prints "sets_per_second fsyncs_per_set"
run() {
    local conns=$1 per=$2 w0 f0 w1 f1 secs
    w0=$(stat writes_logged)
    f0=$(stat wal_fsyncs)
    secs=$(timeout 300 memcslap --servers="127.0.0.1:$port" --concurrency="$conns" \
        --execute-number="$per" --test=set 2>&1 | sed -n 's/^Time to set .*: *\([0-9.]*\) seconds\./\1/p')
    w1=$(stat writes_logged)
    f1=$(stat wal_fsyncs)
    awk -v w=$((w1 - w0)) -v f=$((f1 - f0)) -v s="$secs" \
        'BEGIN { if (s <= 0 || w <= 0) { print "0 0"; exit } printf "%.0f %.3f\n", w / s, f / w }'
}


echo "tpckv durable set throughput: memcslap sets, median of $ROUNDS runs"
echo "machine: $(nproc) cores; $(uname -sr); data dir on $(df -P "$tmp" | awk 'NR==2 {print $1}')"
printf '%-8s %6s %12s %16s %14s\n' fsync conns sets/s fsyncs/set "fsync avg us"
for mode in always none; do
    start "$mode"
    for conns in 1 50; do
        per=$SETS_50
        [ "$conns" -eq 1 ] && per=$SETS_1
        : >"$tmp/r"
        for ((i = 0; i < ROUNDS; i++)); do run "$conns" "$per" >>"$tmp/r"; done
        ops=$(cut -d' ' -f1 "$tmp/r" | median)
        fps=$(cut -d' ' -f2 "$tmp/r" | median)
        avg=$(stat wal_fsync_us_avg)
        [ "$mode" = always ] || avg=- # only segment switches fsync: not comparable
        printf '%-8s %6d %12s %16s %14s\n' "$mode" "$conns" "$ops" "$fps" "$avg"
    done
    stop
done
echo "(fsyncs/set far below 1 at 50 connections is group commit: one fdatasync"
echo " acknowledges every set that arrived while the previous one ran. With"
echo " --fsync none the log is written but fsynced only at segment switches"
echo " and shutdown.)"
