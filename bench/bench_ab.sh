#!/usr/bin/env bash
# bench_ab.sh - two builds of serve against each other, interleaved: figures,
# not a test. For each round, each workload runs against build A then build
# B (then B then A in the next round, so neither always goes first), each on
# a fresh server and data directory; it prints the median ops/s of each and
# B/A.
#
#   bench/bench_ab.sh OLD_SERVE NEW_SERVE
#
# Knobs (environment):
#   AB_ROUNDS=3        rounds (medians over them)
#   AB_SECONDS=4       measured seconds per run (after 1 s of warm-up)
#   AB_ONLY=get_d1,set_3   only these workloads: get_d1 set_d1 get_d16
#                      set_d16 (one replica, --fsync none, 50 connections,
#                      depth 1 or 16) and set_3 (3 replicas, --fsync always,
#                      50 connections spread over them)
#   AB_FSYNC3=always   --fsync of the set_3 replicas (none: the CPU path alone)
#   CLIE=./clie
# Servers listen on free 127.0.0.1 ports with data under a temporary
# directory; every process it starts is stopped by its PID.
set -u

A=${1:?usage: bench/bench_ab.sh OLD_SERVE NEW_SERVE}
B=${2:?usage: bench/bench_ab.sh OLD_SERVE NEW_SERVE}
ROUNDS=${AB_ROUNDS:-3}
SECS=${AB_SECONDS:-4}
ONLY=${AB_ONLY:-get_d1,set_d1,get_d16,set_d16,set_3}
CLIE=${CLIE:-./clie}
FSYNC3=${AB_FSYNC3:-always}
. "$(dirname "$0")/lib.sh"
bench_setup bench_ab.sh

# ops WORKLOAD SERVE: one run, prints its ops/s.
ops() {
    local w=$1 serve=$2 d=$tmp/d.$RANDOM p p2 p3 q1 q2 q3 secret out
    rm -rf "$d"
    mkdir -p "$d"
    case $w in
    get_d1 | set_d1 | get_d16 | set_d16)
        p=$(free_port)
        "$serve" -p "$p" -d "$d/r" --fsync none -l warn 2>>"$tmp/serve.log" &
        pids+=($!)
        wait_up "$p" "${pids[-1]}" || { echo 0; bench_stop_all; return; }
        local ratio=1:0 depth=1
        [[ $w == get_* ]] && ratio=0:1
        [[ $w == *_d16 ]] && depth=16
        [[ $w == get_* ]] && "$CLIE" -p "$p" bench -c 8 --keys 100000 --preload -n 1 \
            >/dev/null 2>&1
        out=$("$CLIE" -p "$p" bench -c 50 -T 2 -d "$depth" --ratio "$ratio" --keys 100000 \
            --warmup 1 --duration "$SECS" --json 2>/dev/null)
        ;;
    set_3)
        p=$(free_port) p2=$(free_port) p3=$(free_port)
        q1=$(free_port) q2=$(free_port) q3=$(free_port)
        secret=$d/secret
        openssl rand -hex 32 >"$secret" && chmod 600 "$secret"
        local R="1@127.0.0.1:$q1,2@127.0.0.1:$q2,3@127.0.0.1:$q3" i port
        i=1
        for port in "$p" "$p2" "$p3"; do
            "$serve" --id "$i" --replicas "$R" --secret-file "$secret" -p "$port" \
                -d "$d/r$i" --threads 0 --fsync "$FSYNC3" -l warn 2>>"$tmp/serve.log" &
            pids+=($!)
            i=$((i + 1))
        done
        wait_ready 2 "$p" "$p2" "$p3"
        local bp=()
        for port in "$p" "$p2" "$p3"; do
            "$CLIE" -p "$port" bench -c 17 -T 1 --ratio 1:0 --keys 100000 --warmup 1 \
                --duration "$SECS" --json >"$d/out.$port" 2>/dev/null &
            bp+=($!)
        done
        wait "${bp[@]}"
        out=$(cat "$d"/out.*)
        ;;
    esac
    bench_stop_all
    python3 -c '
import json, sys
tot = 0.0
for line in sys.stdin.read().splitlines():
    line = line.strip()
    if line.startswith("{"):
        tot += json.loads(line).get("ops_per_sec", 0)
print(int(tot))' <<<"$out"
}

declare -A RES
IFS=, read -r -a WL <<<"$ONLY"
for ((r = 0; r < ROUNDS; r++)); do
    for w in "${WL[@]}"; do
        if ((r % 2 == 0)); then order="A B"; else order="B A"; fi
        for which in $order; do
            bin=$A
            [ "$which" = B ] && bin=$B
            v=$(ops "$w" "$bin")
            RES[$w.$which]="${RES[$w.$which]:-} $v"
            echo "round $((r + 1)) $w $which: $v ops/s" >&2
        done
    done
done

printf '%-8s %14s %14s %8s   (%d rounds of %d s, A=%s, B=%s)\n' workload "A ops/s" \
    "B ops/s" "B/A" "$ROUNDS" "$SECS" "$A" "$B"
for w in "${WL[@]}"; do
    a=$(median <<<"${RES[$w.A]}")
    b=$(median <<<"${RES[$w.B]}")
    printf '%-8s %14s %14s %8s   A: %s  B: %s\n' "$w" "$a" "$b" \
        "$(python3 -c "print('%.2f' % ($b / $a) if $a else 'n/a')")" "${RES[$w.A]# }" "${RES[$w.B]# }"
done
