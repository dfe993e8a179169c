#!/usr/bin/env bash
# tests/e2e/e2e_valgrind.sh - serve under valgrind memcheck (make e2e-valgrind).
#
# Runs serve under valgrind --leak-check=full with definite leaks counted as
# errors, on a small workload each time, and stops it with SIGTERM:
#   1. --threads 0: tests/e2e/e2e_raw.py --udp (malformed and edge-case input,
#      TCP and UDP) and a round of clie commands, a snapshot; then a restart on the
#      same data directory (recovery from the snapshot and the log);
#   2. the default --threads: the clie round over TCP and UDP;
#   3. two replicas (--threads 0), writes through one read from the other.
# A run passes when valgrind reports no error and no definite leak (exit
# status 0, "ERROR SUMMARY: 0 errors") and serve stopped cleanly.
# "Still reachable" and "possibly lost" blocks (libuv, OpenSSL) are allowed.
#
# Every serve listens on 127.0.0.1 on ports picked free, keeps its data
# under one mktemp -d directory, and is stopped by its PID on exit.
# Prints one line per check and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/../.."

SERVE=${SERVE:-./serve}
CLIE=${CLIE:-./clie}
PY=/usr/bin/python3
for tool in valgrind timeout "$PY"; do
    command -v "$tool" >/dev/null || { echo "e2e_valgrind: $tool missing: run 'make deps'" >&2; exit 2; }
done
for bin in "$SERVE" "$CLIE"; do
    [ -x "$bin" ] || { echo "e2e_valgrind: $bin missing: run 'make' first" >&2; exit 2; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tpckv-vg.XXXXXX")
declare -A SPID=() SPORT=()
passed=0
failed=0
t0=$(date +%s)

cleanup() {
    local name
    for name in "${!SPID[@]}"; do
        kill -KILL "${SPID[$name]}" 2>/dev/null || true
        wait "${SPID[$name]}" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "e2e_valgrind: interrupted" >&2; exit 130' INT TERM

ok() {
    passed=$((passed + 1))
    echo "ok   - $*"
}
not_ok() {
    failed=$((failed + 1))
    echo "FAIL - $*"
}
check() {
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# vg_start NAME ARGS...: serve under valgrind, on a free port, data in
# $tmp/NAME.data (kept across a restart of NAME); waits for "listening on".
vg_start() {
    local name=$1 log=$tmp/$1.log
    shift
    : >"$log"
    valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
        --show-leak-kinds=definite --track-fds=no --log-file="$tmp/$name.vg" \
        "$SERVE" -s 127.0.0.1 -p 0 -d "$tmp/$name.data" --log-file "$log" "$@" 2>>"$log" &
    SPID[$name]=$!
    for _ in $(seq 600); do
        if grep -q 'listening on' "$log"; then
            SPORT[$name]=$(sed -n 's/.*listening on .* port \([0-9]*\) .*/\1/p' "$log" | head -n 1)
            return 0
        fi
        if ! kill -0 "${SPID[$name]}" 2>/dev/null; then
            echo "serve $name did not start:" >&2
            cat "$log" "$tmp/$name.vg" >&2
            unset "SPID[$name]"
            return 1
        fi
        sleep 0.1
    done
    echo "serve $name: no listening line after 60 s" >&2
    return 1
}

# vg_stop NAME: SIGTERM; valgrind must exit 0 (no error, no definite leak).
vg_stop() {
    local name=$1 rc=0
    kill -TERM "${SPID[$name]}"
    timeout 60 tail --pid="${SPID[$name]}" -f /dev/null || true
    kill -KILL "${SPID[$name]}" 2>/dev/null || true
    wait "${SPID[$name]}" || rc=$?
    unset "SPID[$name]"
    if [ "$rc" -eq 0 ] && grep -q 'serve: stopped' "$tmp/$name.log" &&
        ! grep -q 'definitely lost\|Invalid \|uninitialised\|Mismatched' "$tmp/$name.vg"; then
        ok "$name: memcheck: no errors, no definite leaks, clean SIGTERM"
    else
        not_ok "$name: memcheck: exit $rc (99 = valgrind found errors); its report:"
        head -n 60 "$tmp/$name.vg" | sed 's/^/     /'
        tail -n 3 "$tmp/$name.log" | sed 's/^/     /'
    fi
}

# cl_is DESC WANT ARGS...: clie's output must be WANT.
cl_is() {
    local desc=$1 want=$2 got
    shift 2
    got=$(timeout 30 "$CLIE" --timeout 10000 "$@" 2>/dev/null)
    check "$desc" [ "$got" = "$want" ]
}

# A round of every client command against port $1 ($2: -t or -u).
clie_round() {
    local p=$1 tr=$2 name=$3
    cl_is "$name: put" STORED -p "$p" "$tr" put k1 hello
    cl_is "$name: get" hello -p "$p" "$tr" get k1
    cl_is "$name: append" STORED -p "$p" "$tr" append k1 ", world"
    cl_is "$name: prepend" STORED -p "$p" "$tr" prepend k1 ">"
    cl_is "$name: get after append/prepend" ">hello, world" -p "$p" "$tr" get k1
    cl_is "$name: add to an existing key" NOT_STORED -p "$p" "$tr" add k1 x
    cl_is "$name: put a number" STORED -p "$p" "$tr" put n 41
    cl_is "$name: incr" 42 -p "$p" "$tr" incr n 1
    cl_is "$name: decr" 40 -p "$p" "$tr" decr n 2
    cl_is "$name: touch" TOUCHED -p "$p" "$tr" touch n 100
    cl_is "$name: delete" DELETED -p "$p" "$tr" delete n
    cl_is "$name: get several" "$(printf 'k1 13\n>hello, world')" -p "$p" "$tr" get k1 n
    cl_is "$name: keys" k1 -p "$p" "$tr" keys
    local cas
    cas=$(timeout 30 "$CLIE" --timeout 10000 -p "$p" "$tr" gets k1 | head -n 1 | cut -d' ' -f1)
    cl_is "$name: cas with the current unique" STORED -p "$p" "$tr" cas k1 new "$cas"
    cl_is "$name: cas with a stale unique" EXISTS -p "$p" "$tr" cas k1 newer "$cas"
    timeout 30 "$CLIE" -p "$p" "$tr" stats >/dev/null 2>&1
    check "$name: stats" [ $? -eq 0 ]
}

echo "== serve under valgrind memcheck"

# 1. One event loop: raw protocol checks, the client round, a snapshot, a
#    restart that recovers.
if vg_start single --threads 0 -t -u --max-value 65536; then
    p=${SPORT[single]}
    rc=0
    MAX_VALUE=65536 timeout 120 "$PY" tests/e2e/e2e_raw.py "$p" --udp >"$tmp/raw.out" 2>&1 || rc=$?
    check "single: e2e_raw.py --udp (TCP and UDP): $(grep -c '^ok' "$tmp/raw.out") checks pass" [ "$rc" -eq 0 ]
    [ "$rc" -eq 0 ] || grep -v '^ok' "$tmp/raw.out" | head -n 20 | sed 's/^/     /'
    timeout 30 "$CLIE" -p "$p" flush >/dev/null 2>&1
    clie_round "$p" -t single
    cl_is "single: snapshot" OK -p "$p" snapshot
    cl_is "single: put after the snapshot" STORED -p "$p" put after snap
    vg_stop single
    if vg_start single --threads 0 -t; then
        cl_is "single: restart recovers the snapshot" new -p "${SPORT[single]}" get k1
        cl_is "single: restart recovers the log" snap -p "${SPORT[single]}" get after
        vg_stop single
    else
        not_ok "single: restart under valgrind"
    fi
else
    not_ok "single: start under valgrind"
fi

# 2. The default connection threads, TCP and UDP.
if vg_start threads -t -u; then
    clie_round "${SPORT[threads]}" -t threads-tcp
    clie_round "${SPORT[threads]}" -u threads-udp
    vg_stop threads
else
    not_ok "threads: start under valgrind"
fi

# 3. Two replicas: two-phase commit over authenticated peer links.
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/secret"
chmod 600 "$tmp/secret"
reps="1@127.0.0.1:$(free_port),2@127.0.0.1:$(free_port)"
if vg_start r1 --threads 0 --id 1 --replicas "$reps" --secret-file "$tmp/secret" &&
    vg_start r2 --threads 0 --id 2 --replicas "$reps" --secret-file "$tmp/secret"; then
    # The links come up after start; retry the first write until they do.
    for _ in $(seq 60); do
        [ "$(timeout 30 "$CLIE" --timeout 10000 -p "${SPORT[r1]}" put rk rv 2>&1)" = STORED ] && break
        sleep 0.5
    done
    cl_is "replicas: a write through r1 is read on r2" rv -p "${SPORT[r2]}" get rk
    cl_is "replicas: delete through r2" DELETED -p "${SPORT[r2]}" delete rk
    cl_is "replicas: r1 sees the delete" "" -p "${SPORT[r1]}" get rk
    vg_stop r1
    vg_stop r2
else
    not_ok "replicas: start under valgrind"
fi

echo "e2e_valgrind: $(($(date +%s) - t0)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
