#!/usr/bin/env bash
# bench_repl.sh - replicated durable set throughput and p50/p99 latency for 1
# and 3 replicas at 1 and 50 connections (a benchmark, not a test: it prints
# figures and judges nothing).
#
# Starts, on free ports of 127.0.0.1 with data dirs under a temp dir, one
# single-replica serve and one 3-replica cluster, all with --fsync always,
# waits for the cluster's peer links, then drives them with `clie bench`
# (sets only, 32-byte keys, 100-byte values, 100000 keys) in four setups:
#
#   A  1 replica,  1 connection
#   B  1 replica,  50 connections
#   C  3 replicas, 1 connection, through replica 1
#   D  3 replicas, 50 connections spread over the replicas: three clie bench
#      processes in parallel, one per replica (17 + 17 + 16 connections)
#
# Each run measures BENCH_SECONDS (default 5) after 1 s of warm-up. The runs
# are interleaved over BENCH_ROUNDS rounds (default 3: A B C D, A B C D, ...)
# so that a slow spell of the machine spreads over every setup, and the table
# shows each figure's median over the rounds.
#
#   bench/bench_repl.sh            (or: make bench, after bench_wal.sh)
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 bench/bench_repl.sh
#
# The load generator runs on the same machine as the servers (and, for the
# cluster, the three replicas share it too): the figures are for comparing
# setups and versions on one machine, not absolute capacity.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

SERVE=${SERVE:-./serve}
CLIE=${CLIE:-./clie}
ROUNDS=${BENCH_ROUNDS:-3}
SECS=${BENCH_SECONDS:-5}
WARMUP=1

for tool in "$SERVE" "$CLIE" openssl python3; do
    command -v "$tool" >/dev/null || { echo "bench_repl.sh: $tool missing (make; make deps)" >&2; exit 2; }
done
case "$ROUNDS" in '' | *[!0-9]* | 0) echo "bench_repl.sh: BENCH_ROUNDS must be a number from 1" >&2; exit 2 ;; esac
case "$SECS" in '' | *[!0-9.]* | 0) echo "bench_repl.sh: BENCH_SECONDS must be a positive number" >&2; exit 2 ;; esac

. "$(dirname "$0")/lib.sh"
bench_setup bench_repl.sh

# Seven free TCP ports: the single serve, three client ports, three peer ports.
# (Found by binding port 0; a port could in principle be taken in between.)
read -r -a ports < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(7)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
for s in ss:
    s.close()')
single_port=${ports[0]}
cport=("${ports[1]}" "${ports[2]}" "${ports[3]}")
pport=("${ports[4]}" "${ports[5]}" "${ports[6]}")
replicas="1@127.0.0.1:${pport[0]},2@127.0.0.1:${pport[1]},3@127.0.0.1:${pport[2]}"

openssl rand -hex 32 >"$tmp/secret"
chmod 600 "$tmp/secret"

"$SERVE" -s 127.0.0.1 -t -p "$single_port" -d "$tmp/single" --fsync always -l warn \
    --log-file "$tmp/single.log" &
pids+=($!)
for i in 1 2 3; do
    "$SERVE" --id "$i" --replicas "$replicas" --secret-file "$tmp/secret" -s 127.0.0.1 -t \
        -p "${cport[i - 1]}" -d "$tmp/r$i" --fsync always -l warn --log-file "$tmp/r$i.log" &
    pids+=($!)
done

wait_ready 0 "$single_port"
wait_ready 2 "${cport[@]}"

# run NAME SERVER_PORTS STATS_PORTS THREADS CONNS...: one clie bench process per
# server port (with the matching connection count), all at once; prints
# "sets/s p50_us p99_us errors worst_p99_us fsyncs_per_set".
run() {
    local name=$1 ports_csv=$2 stats_csv=$3 threads=$4
    shift 4
    local -a sp=() st=() conns=("$@") bpids=()
    local f0 s0 f1 s1 i rc=0
    IFS=, read -r -a sp <<<"$ports_csv"
    IFS=, read -r -a st <<<"$stats_csv"
    f0=$(stat_sum wal_fsyncs "${st[@]}")
    s0=$(stat_sum cmd_set "${st[@]}")
    for i in "${!sp[@]}"; do
        "$CLIE" -p "${sp[i]}" bench -c "${conns[i]}" -T "$threads" --duration "$SECS" \
            --warmup "$WARMUP" --ratio 1:0 --key-size 32 --value-size 100 --keys 100000 \
            --json >"$tmp/$name.$i.json" 2>"$tmp/$name.$i.err" &
        bpids+=($!)
    done
    for i in "${!bpids[@]}"; do
        wait "${bpids[i]}" || rc=$?
    done
    if [ "$rc" -ne 0 ]; then
        echo "bench_repl.sh: clie bench failed (exit $rc) in setup $name:" >&2
        cat "$tmp/$name".*.err >&2
        exit 1
    fi
    f1=$(stat_sum wal_fsyncs "${st[@]}")
    s1=$(stat_sum cmd_set "${st[@]}")
    python3 - "$((f1 - f0))" "$((s1 - s0))" "$tmp/$name".*.json <<'EOF'
import json, sys

sys.path.insert(0, "bench")  # run from the repository root
import bench_hist

fsyncs, sets = int(sys.argv[1]), int(sys.argv[2])
runs = [json.load(open(p)) for p in sys.argv[3:]]
# The processes' latency histograms merged, percentiles of the sum.
ops, errors, pct = bench_hist.merge(runs)

worst99 = max((r["latency"]["p99"] if r["latency"] else 0.0) for r in runs)
fps = fsyncs / sets if sets > 0 else 0.0
print(f"{ops:.0f} {pct(50):.1f} {pct(99):.1f} {errors} {worst99:.1f} {fps:.3f}")
EOF
}

fmt_us() { # fmt_us MICROSECONDS
    awk -v u="$1" 'BEGIN {
        if (u < 1000) printf "%.0f us", u; else if (u < 10000) printf "%.2f ms", u / 1000;
        else printf "%.1f ms", u / 1000 }'
}


setups=(A B C D)
declare -A label conns_of nrep
label[A]="A 1 replica";          conns_of[A]=1;  nrep[A]=1
label[B]="B 1 replica";          conns_of[B]=50; nrep[B]=1
label[C]="C 3 replicas, via 1";  conns_of[C]=1;  nrep[C]=3
label[D]="D 3 replicas, spread"; conns_of[D]=50; nrep[D]=3
all_stats="${cport[0]},${cport[1]},${cport[2]}"

fs_type=$(df -T "$tmp" | awk 'NR == 2 { print $2 }')
fs_dev=$(df -T "$tmp" | awk 'NR == 2 { print $1 }')
echo "tpckv replicated durable sets (--fsync always): clie bench, sets of 100-byte values"
echo "under 32-byte keys (100000 keys), ${SECS} s per run after ${WARMUP} s of warm-up,"
echo "median of $ROUNDS rounds (runs interleaved: A B C D, A B C D, ...)"
echo "machine: $(nproc) cores; $(uname -sr); temp dir on $fs_type ($fs_dev)"

for ((r = 1; r <= ROUNDS; r++)); do
    for s in "${setups[@]}"; do
        case $s in
        A) line=$(run "A$r" "$single_port" "$single_port" 2 1) ;;
        B) line=$(run "B$r" "$single_port" "$single_port" 2 50) ;;
        C) line=$(run "C$r" "${cport[0]}" "$all_stats" 2 1) ;;
        D) line=$(run "D$r" "$all_stats" "$all_stats" 1 17 17 16) ;;
        esac
        echo "$line" >>"$tmp/res.$s"
        read -r ops p50 p99 errs _ fps <<<"$line"
        printf '  round %d %-22s %8s sets/s  p50 %-9s p99 %-9s errors %s\n' "$r" "${label[$s]}" \
            "$ops" "$(fmt_us "$p50")" "$(fmt_us "$p99")" "$errs"
    done
done

echo
printf '%-22s %5s %9s %10s %10s %11s %12s %7s\n' setup conns sets/s p50 p99 fsyncs/set \
    "per replica" errors
for s in "${setups[@]}"; do
    f=$tmp/res.$s
    ops=$(cut -d' ' -f1 "$f" | median)
    p50=$(cut -d' ' -f2 "$f" | median)
    p99=$(cut -d' ' -f3 "$f" | median)
    errs=$(cut -d' ' -f4 "$f" | awk '{ n += $1 } END { print n }')
    fps=$(cut -d' ' -f6 "$f" | median)
    per=$(awk -v f="$fps" -v n="${nrep[$s]}" 'BEGIN { printf "%.3f", f / n }')
    printf '%-22s %5d %9s %10s %10s %11s %12s %7s\n' "${label[$s]}" "${conns_of[$s]}" "$ops" \
        "$(fmt_us "$p50")" "$(fmt_us "$p99")" "$fps" "$per" "$errs"
done
worst=$(cut -d' ' -f5 "$tmp/res.D" | median)
cat <<EOF

sets/s and latencies are clie bench's (closed loop, one request outstanding
per connection; latency from writing a set to reading STORED). errors: the
error replies of all rounds together; sets/s counts every reply, errors
included, so it means little when errors is not 0. fsyncs/set: wal_fsyncs
gained on every replica of the setup divided by cmd_set gained on them (a
client's set is counted once, by the replica it was sent to), over the whole
run including its warm-up; "per replica" divides that by the replicas (1 or
3): 1.000 would be one fsync per set on each replica. D runs three clie bench
processes at once, one per replica (17, 17 and 16 connections, one thread
each): its sets/s is their sum, and p50/p99 come from their three latency
histograms merged (clie bench --json includes the histogram); the worst of the
three processes' own p99 was $(fmt_us "$worst") (median over rounds).
EOF
