#!/usr/bin/env bash
# test.sh - tpckv end-to-end test.
#
# Starts serve processes on free ports with temporary data under one temp dir,
# drives them with clie over UDP and then TCP (randomized workloads whose keys
# and values come from `openssl rand`, several clie processes in parallel,
# every value read back and compared byte for byte), throws malformed input at
# them, runs a memcached client library nobody on the team wrote (pymemcache)
# and libmemcached's conformance checker (memccapable), checks limits (memory,
# -c, idle and output-stall timeouts, a client that never reads, floods of
# thousands of connections: tests/e2e/e2e_limits.py) and client authentication
# (--auth-file, clie --user), kills servers with SIGKILL at random moments and
# checks that every acknowledged write survived, and stops everything it
# started by PID, whatever happens.
#
# Then it runs tests/e2e/e2e_cluster.sh: three replicas on 127.0.0.1, writes
# through each read from the others, conflicting writers, kill -9 of a
# participant and of a coordinator under load, a replica down, a wrong secret.
#
# Prints one line per check and ends with "N passed, N failed"; exits 1 if
# anything failed. Knobs: E2E_KEYS (keys per workload, default 1000),
# E2E_WORKERS (parallel clie workers, default 4), E2E_CRASH_ROUNDS (kill -9
# rounds, default 5), E2E_FLOOD (sockets in the flood checks, default 4000),
# SERVE, CLIE (binaries).
set -euo pipefail
cd "$(dirname "$0")"

SERVE=${SERVE:-./serve}
CLIE=${CLIE:-./clie}
PY=/usr/bin/python3 # Debian's python3, where python3-pymemcache lives
KEYS=${E2E_KEYS:-1000}
WORKERS=${E2E_WORKERS:-4}
UDP_MAX_VALUE=32768 # a UDP request must fit one datagram
TCP_MAX_VALUE=1048576

for bin in "$SERVE" "$CLIE"; do
    [ -x "$bin" ] || { echo "test.sh: $bin missing: run 'make' first" >&2; exit 2; }
done
for tool in openssl timeout cmp memccapable "$PY"; do
    command -v "$tool" >/dev/null || { echo "test.sh: $tool missing: run 'make deps'" >&2; exit 2; }
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tpckv-e2e.XXXXXX")
declare -A SPID=() SPORT=()
passed=0
failed=0

cleanup() {
    local name pid
    for name in "${!SPID[@]}"; do
        pid=${SPID[$name]}
        kill -TERM "$pid" 2>/dev/null || true
    done
    for name in "${!SPID[@]}"; do
        pid=${SPID[$name]}
        # Give each 5 s to stop cleanly, then insist.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "test.sh: interrupted" >&2; exit 130' INT TERM
trap 'echo "test.sh: line $LINENO: unexpected failure of: $BASH_COMMAND" >&2' ERR

ok() {
    passed=$((passed + 1))
    echo "ok   - $*"
}

not_ok() {
    failed=$((failed + 1))
    echo "FAIL - $*"
}

# check DESCRIPTION COMMAND...: the command's success is the check.
check() {
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}

# cl ARGS...: one clie call, never allowed to hang.
cl() {
    timeout 20 "$CLIE" "$@"
}

# expect_exit CODE DESCRIPTION ARGS...: clie exits with CODE.
expect_exit() {
    local want=$1 desc=$2 rc=0
    shift 2
    cl "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [ "$rc" -eq "$want" ]; then
        ok "$desc (exit $rc)"
    else
        not_ok "$desc: exit $rc, want $want; stderr: $(head -c 300 "$tmp/err")"
    fi
}

# expect_out EXPECTED DESCRIPTION ARGS...: clie succeeds and prints EXPECTED.
expect_out() {
    local want=$1 desc=$2 rc=0
    shift 2
    cl "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [ "$rc" -eq 0 ] && [ "$(cat "$tmp/out")" = "$want" ]; then
        ok "$desc"
    else
        not_ok "$desc: exit $rc, got '$(head -c 200 "$tmp/out")' want '$want'"
    fi
}

# start_server NAME PORT ARGS...: starts serve (PORT 0 = pick a free one) and
# waits for its "listening" line; sets SPID[NAME] and SPORT[NAME].
start_server() {
    local name=$1 port=$2 log=$tmp/$1.log
    shift 2
    : >"$log"
    # Each server gets its own data directory under the test's temp dir
    # (kept across a restart of the same NAME).
    "$SERVE" -s 127.0.0.1 -p "$port" -d "$tmp/$name.data" --log-file "$log" "$@" 2>>"$log" &
    SPID[$name]=$!
    for _ in $(seq 200); do
        if grep -q 'listening on' "$log"; then
            SPORT[$name]=$(sed -n 's/.*listening on .* port \([0-9]*\) .*/\1/p' "$log" | head -n 1)
            return 0
        fi
        if ! kill -0 "${SPID[$name]}" 2>/dev/null; then
            echo "serve $name did not start:" >&2
            cat "$log" >&2
            unset "SPID[$name]"
            return 1
        fi
        sleep 0.05
    done
    echo "serve $name: no listening line after 10 s" >&2
    return 1
}

# stop_server NAME: SIGTERM, and it must exit 0 having logged "stopped".
stop_server() {
    local name=$1 rc=0
    kill -TERM "${SPID[$name]}"
    timeout 10 tail --pid="${SPID[$name]}" -f /dev/null || true
    wait "${SPID[$name]}" || rc=$?
    unset "SPID[$name]"
    if [ "$rc" -eq 0 ] && grep -q 'serve: stopped' "$tmp/$name.log"; then
        ok "$name: SIGTERM stops serve cleanly (exit 0)"
    else
        not_ok "$name: SIGTERM: exit $rc; log tail: $(tail -n 3 "$tmp/$name.log")"
    fi
}

kill9_server() {
    kill -KILL "${SPID[$1]}"
    wait "${SPID[$1]}" 2>/dev/null || true
    unset "SPID[$1]"
}

# A port nothing listens on (bound and released at once).
free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---- randomized workload -------------------------------------------------------

# gen_items DIR COUNT MAXVAL: writes DIR/k.I (key) and DIR/v.I (value) for I in
# 0..COUNT-1. Keys are random hex of 1..60 bytes (every 97th is exactly 250
# bytes); values are base64 or hex text of random length, raw binary of
# random length, a few binary values within 64 bytes of MAXVAL, and a few
# empty ones.
gen_items() {
    local dir=$1 count=$2 maxval=$3 i n prefix len
    mkdir -p "$dir"
    for ((i = 0; i < count; i++)); do
        prefix="e2e:$i:"
        if ((i % 97 == 5)); then
            len=$((250 - ${#prefix}))
            printf '%s%s' "$prefix" "$(openssl rand -hex $((len / 2 + 1)) | cut -c1-$len)" >"$dir/k.$i"
        else
            printf '%s%s' "$prefix" "$(openssl rand -hex $((1 + RANDOM % 30)))" >"$dir/k.$i"
        fi
        if ((i % 89 == 3)); then
            : >"$dir/v.$i"
        elif ((i % 50 == 7)); then
            openssl rand $((maxval - RANDOM % 64)) >"$dir/v.$i"
        else
            case $((RANDOM % 3)) in
            0) openssl rand -base64 $((1 + RANDOM % 3000)) | tr -d '\n' >"$dir/v.$i" ;;
            1) openssl rand -hex $((1 + RANDOM % 1000)) | tr -d '\n' >"$dir/v.$i" ;;
            *) openssl rand $((1 + RANDOM % (maxval / 8))) >"$dir/v.$i" ;;
            esac
        fi
    done
}

# writer DIR PORT MODE W: worker W writes its share of the items (I % WORKERS
# == W), then updates every 7th with a new value and deletes every 11th,
# recording the expected final state in DIR/x.I (a copy of the value, or
# absent). Prints one line per failure and a final "done N" line.
writer() {
    local dir=$1 port=$2 mode=$3 w=$4 i key bad=0 n=0 out
    for ((i = w; i < KEYS; i += WORKERS)); do
        key=$(cat "$dir/k.$i")
        n=$((n + 1))
        if ! out=$(cl "$mode" -p "$port" put "$key" - <"$dir/v.$i" 2>&1) || [ "$out" != STORED ]; then
            echo "put $i failed: $out"
            bad=$((bad + 1))
            continue
        fi
        cp "$dir/v.$i" "$dir/x.$i"
        if ((i % 7 == 0)); then
            openssl rand -base64 48 | tr -d '\n' >"$dir/u.$i"
            if out=$(cl "$mode" -p "$port" update "$key" - <"$dir/u.$i" 2>&1) && [ "$out" = STORED ]; then
                cp "$dir/u.$i" "$dir/x.$i"
            else
                echo "update $i failed: $out"
                bad=$((bad + 1))
            fi
        fi
        if ((i % 11 == 0)); then
            if out=$(cl "$mode" -p "$port" -o 2 -k "$key" 2>&1) && [ "$out" = DELETED ]; then
                rm -f "$dir/x.$i"
            else
                echo "delete $i failed: $out"
                bad=$((bad + 1))
            fi
        fi
    done
    echo "done $n $bad"
}

# reader DIR PORT MODE W: worker W checks the items another worker wrote
# ((I + 1) % WORKERS == W): present ones byte for byte, deleted ones absent.
reader() {
    local dir=$1 port=$2 mode=$3 w=$4 i key rc bad=0 n=0
    local got=$dir/got.$w
    for ((i = 0; i < KEYS; i++)); do
        (((i + 1) % WORKERS == w)) || continue
        key=$(cat "$dir/k.$i")
        n=$((n + 1))
        rc=0
        if ((i % 2)); then
            cl "$mode" -p "$port" get "$key" >"$got" 2>/dev/null || rc=$?
        else
            cl "$mode" -p "$port" -o 1 -k "$key" >"$got" 2>/dev/null || rc=$?
        fi
        if [ -e "$dir/x.$i" ]; then
            if [ "$rc" -ne 0 ] || ! cmp -s "$got" "$dir/x.$i"; then
                echo "value $i differs (exit $rc, $(stat -c %s "$got") bytes, want $(stat -c %s "$dir/x.$i"))"
                bad=$((bad + 1))
            fi
        elif [ "$rc" -ne 1 ]; then
            echo "deleted key $i: exit $rc, want 1"
            bad=$((bad + 1))
        fi
    done
    echo "done $n $bad"
}

# run_workers FUNC DIR PORT MODE: runs FUNC in WORKERS parallel processes
# and checks each finished with no failure.
run_workers() {
    local func=$1 dir=$2 port=$3 mode=$4 w pids=() total=0 bad=0 line
    for ((w = 0; w < WORKERS; w++)); do
        (timeout 600 bash -c "$(declare -f cl "$func"); KEYS=$KEYS WORKERS=$WORKERS CLIE=$CLIE \
            $func '$dir' '$port' '$mode' $w") >"$dir/$func.$w.out" 2>&1 &
        pids+=($!)
    done
    for w in "${!pids[@]}"; do
        wait "${pids[$w]}" || true
        line=$(grep '^done ' "$dir/$func.$w.out" || echo "done 0 1")
        total=$((total + $(echo "$line" | cut -d' ' -f2)))
        bad=$((bad + $(echo "$line" | cut -d' ' -f3)))
        grep -v '^done ' "$dir/$func.$w.out" | head -n 5 | sed 's/^/     /' || true
    done
    echo "$total $bad"
}

workload() {
    local name=$1 mode=$2 maxval=$3 port=${SPORT[$1]} dir=$tmp/$1-items res
    gen_items "$dir" "$KEYS" "$maxval"
    res=$(run_workers writer "$dir" "$port" "$mode")
    if [ "${res#* }" = 0 ] && [ "${res% *}" -eq "$KEYS" ]; then
        ok "$name: $KEYS random keys written by $WORKERS parallel clie processes ($mode)"
    else
        not_ok "$name: writers: $res (keys, failures)"
    fi
    res=$(run_workers reader "$dir" "$port" "$mode")
    if [ "${res#* }" = 0 ] && [ "${res% *}" -eq "$KEYS" ]; then
        ok "$name: every value read back by another client, byte for byte ($mode)"
    else
        not_ok "$name: readers: $res (keys, failures)"
    fi
    local present listed
    present=$(find "$dir" -name 'x.*' | wc -l)
    listed=$(cl "$mode" -p "$port" keys 'e2e:' 2>/dev/null | wc -l || true)
    if [ "$listed" -eq "$present" ]; then
        ok "$name: keys e2e: lists exactly the $present live keys"
    else
        not_ok "$name: keys e2e: lists $listed keys, want $present"
    fi
    # Regression: a listing that matches nothing must still end (END).
    expect_exit 0 "$name: keys with no match answers at once" "$mode" -p "$port" keys 'no-such-prefix:'
}

# ---- the checks -------------------------------------------------------------------

basic_ops() {
    local name=$1 mode=$2 port=${SPORT[$1]}
    expect_out STORED "$name: put" "$mode" -p "$port" put greet hello
    expect_out hello "$name: get" "$mode" -p "$port" get greet
    expect_out STORED "$name: -o 3 (put)" "$mode" -p "$port" -o 3 -k classic -v one
    expect_out STORED "$name: -o 0 (update)" "$mode" -p "$port" -o 0 -k classic -v two
    expect_out two "$name: -o 1 (get)" "$mode" -p "$port" -o 1 -k classic
    expect_out DELETED "$name: -o 2 (delete)" "$mode" -p "$port" -o 2 -k classic
    expect_exit 1 "$name: -o 1 of a deleted key" "$mode" -p "$port" -o 1 -k classic
    expect_exit 1 "$name: -o 0 of a missing key" "$mode" -p "$port" -o 0 -k classic -v x
    expect_exit 1 "$name: add of a present key" "$mode" -p "$port" add greet again
    expect_out STORED "$name: add of a new key" "$mode" -p "$port" add fresh new
    expect_out STORED "$name: append" "$mode" -p "$port" append greet ", world"
    expect_out STORED "$name: prepend" "$mode" -p "$port" prepend greet ">> "
    expect_out ">> hello, world" "$name: append+prepend result" "$mode" -p "$port" get greet
    expect_out STORED "$name: put a number" "$mode" -p "$port" put n 18446744073709551614
    expect_out 18446744073709551615 "$name: incr" "$mode" -p "$port" incr n 1
    expect_out 0 "$name: incr wraps at 2^64" "$mode" -p "$port" incr n 1
    expect_out 0 "$name: decr stops at 0" "$mode" -p "$port" decr n 5
    expect_exit 4 "$name: incr of text is a server error" "$mode" -p "$port" incr greet 1
    local cas
    cas=$(cl "$mode" -p "$port" gets greet | head -n 1)
    expect_out STORED "$name: cas with the current unique" "$mode" -p "$port" cas greet v2 "$cas"
    expect_exit 1 "$name: cas with a stale unique (EXISTS)" "$mode" -p "$port" cas greet v3 "$cas"
    expect_out TOUCHED "$name: touch" "$mode" -p "$port" touch greet 100
    expect_out STORED "$name: put with -e 1 (expires)" "$mode" -p "$port" -e 1 put brief soon
    expect_out soon "$name: get before expiry" "$mode" -p "$port" get brief
    sleep 2.1
    expect_exit 1 "$name: get after expiry" "$mode" -p "$port" get brief
    expect_out STORED "$name: flags kept" "$mode" -p "$port" -f 42 put flagged x
    cl "$mode" -p "$port" -l debug get flagged >/dev/null 2>"$tmp/dbg" || true
    if grep -q 'VALUE flagged 42 1' "$tmp/dbg"; then
        ok "$name: flags come back in VALUE"
    else
        not_ok "$name: flags come back in VALUE"
    fi
    expect_out "1.6.0-tpckv-0.3.0" "$name: version" "$mode" -p "$port" version
    if cl "$mode" -p "$port" stats >"$tmp/stats" 2>&1 &&
        for s in pid uptime version curr_connections total_connections curr_items bytes \
            cmd_get cmd_set get_hits get_misses; do grep -q "^$s " "$tmp/stats" || exit 1; done; then
        ok "$name: stats has pid uptime version connections items bytes cmd_* hits misses"
    else
        not_ok "$name: stats fields: $(head -c 300 "$tmp/stats")"
    fi
    cl "$mode" -p "$port" stats settings >"$tmp/settings" 2>&1 || true
    local th nth
    th=$(sed -n 's/^threads //p' "$tmp/stats")
    nth=$(sed -n 's/^num_threads //p' "$tmp/settings")
    check "$name: stats settings num_threads ($nth) = stats threads ($th)" [ -n "$th" -a "$nth" = "$th" ]
}

clie_exit_codes() {
    local port=$1 dead
    dead=$(free_port)
    expect_exit 2 "clie: unknown option is a usage error" --bogus get k
    expect_exit 2 "clie: missing argument is a usage error" -p "$port" put onlykey
    expect_exit 2 "clie: key over 250 bytes is refused before sending" -p "$port" get \
        "$(printf 'k%.0s' $(seq 251))"
    expect_exit 2 "clie: unknown subcommand" frobnicate
    local rc=0
    cl -p "$port" -e 99999999999 put k v 2>"$tmp/err" || rc=$?
    check "clie: an --exptime out of range is a usage error that says the range" \
        bash -c '[ "$1" -eq 2 ] && grep -q "from -2147483648 to 2147483647, not .99999999999." "$2"' _ "$rc" "$tmp/err"
    # A single get prints the value's exact bytes; on a terminal, a newline
    # after them (script(1) gives it one).
    cl -p "$port" -q put tty:k "no newline"
    cl -p "$port" get tty:k >"$tmp/tty.file"
    check "clie: get into a file: exactly the value's bytes" \
        bash -c '[ "$(od -An -c "$1" | tr -d " \n")" = "nonewline" ]' _ "$tmp/tty.file"
    if command -v script >/dev/null; then
        script -qec "$CLIE -p $port get tty:k" /dev/null >"$tmp/tty.term" </dev/null || true
        check "clie: get on a terminal ends the value with a newline" \
            bash -c 'grep -q "^no newline" "$1" && [ "$(tail -c 1 "$1" | od -An -c | tr -d " ")" = "\\n" ]' _ "$tmp/tty.term"
    fi
    expect_exit 3 "clie: connection refused (TCP)" -t --timeout 1000 -p "$dead" get k
    expect_exit 3 "clie: no answer (UDP)" -u --timeout 300 --retries 1 -p "$dead" get k
    head -c $((TCP_MAX_VALUE + 1)) /dev/zero >"$tmp/toobig"
    expect_exit 4 "clie: value over --max-value is a server error" -p "$port" put big - \
        <"$tmp/toobig"
    if grep -q 'SERVER_ERROR object too large' "$tmp/err"; then
        ok "clie: names the server's error on stderr"
    else
        not_ok "clie: names the server's error on stderr"
    fi
    expect_exit 0 "clie help get" help get
    cl --help >"$tmp/help" || true
    if grep -q 'Exit status' "$tmp/help" && grep -q 'Examples' "$tmp/help"; then
        ok "clie --help lists exit statuses and examples"
    else
        not_ok "clie --help lists exit statuses and examples"
    fi
    "$SERVE" --help >"$tmp/help" || true
    if grep -q -- '--max-value' "$tmp/help" && grep -q 'Examples' "$tmp/help"; then
        ok "serve --help lists flags and examples"
    else
        not_ok "serve --help lists flags and examples"
    fi
    local rc=0
    "$SERVE" --max-value nope >/dev/null 2>&1 || rc=$?
    check "serve: bad flag value is a usage error (exit 2)" [ "$rc" -eq 2 ]
}

raw_checks() {
    local name=$1 port=$2
    shift 2
    local line rc=0
    MAX_VALUE=$TCP_MAX_VALUE timeout 300 "$PY" tests/e2e/e2e_raw.py "$port" "$@" >"$tmp/raw.out" 2>&1 || rc=$?
    while IFS= read -r line; do
        case $line in
        "ok - "*) ok "$name: ${line#ok - }" ;;
        "FAIL - "*) not_ok "$name: ${line#FAIL - }" ;;
        *) echo "     $line" ;;
        esac
    done <"$tmp/raw.out"
    check "$name: raw protocol checker finished" [ "$rc" -eq 0 ]
}

pymemcache_checks() {
    local port=$1 rc=0
    timeout 120 "$PY" - "$port" >"$tmp/py.out" 2>&1 <<'PYEOF' || rc=$?
import sys
from pymemcache.client.base import Client
c = Client(("127.0.0.1", int(sys.argv[1])), connect_timeout=5, timeout=5)
def chk(cond, desc):
    print(("ok - " if cond else "FAIL - ") + desc)
c.set("py:a", b"alpha")
chk(c.get("py:a") == b"alpha", "set/get")
chk(c.add("py:a", b"x", noreply=False) is False, "add of a present key refused")
val, cas = c.gets("py:a")
chk(val == b"alpha" and cas is not None, "gets returns a cas unique")
chk(c.cas("py:a", b"beta", cas) is True, "cas with that unique stores")
chk(c.cas("py:a", b"gamma", cas) is False, "cas with a stale unique is refused")
chk(c.get("py:a") == b"beta", "value after cas")
c.set("py:n", b"10")
chk(c.incr("py:n", 5) == 15, "incr")
chk(c.decr("py:n", 20) == 0, "decr floors at 0")
chk(c.incr("py:missing", 1) is None, "incr of a missing key")
chk(c.replace("py:a", b"delta", noreply=False) is True, "replace")
chk(c.append("py:a", b"!", noreply=False) is True and c.get("py:a") == b"delta!", "append")
chk(c.get_many(["py:a", "py:n", "py:none"]) == {"py:a": b"delta!", "py:n": b"0"}, "get_many")
chk(c.touch("py:a", 100, noreply=False) is True, "touch")
chk(c.delete("py:a", noreply=False) is True, "delete")
chk(c.get("py:a") is None, "get after delete")
chk(c.set("py:bin", bytes(range(256)) * 10) and c.get("py:bin") == bytes(range(256)) * 10,
    "binary value round trip")
chk(c.version().startswith(b"1.6.0-tpckv"), "version")
st = c.stats()
chk(st.get(b"curr_items", 0) >= 2 and b"uptime" in st, "stats")
c.close()
PYEOF
    local line
    while IFS= read -r line; do
        case $line in
        "ok - "*) ok "pymemcache: ${line#ok - }" ;;
        "FAIL - "*) not_ok "pymemcache: ${line#FAIL - }" ;;
        *) echo "     $line" ;;
        esac
    done <"$tmp/py.out"
    check "pymemcache: script finished" [ "$rc" -eq 0 ]
}

# memccapable (libmemcached's protocol conformance checker) over TCP. It
# flushes the server, so it gets one of its own. The binary protocol is not
# supported by tpckv, so only its ASCII tests (-a) run.
memcapable_checks() {
    local rc=0 line
    start_server capable 0 -t
    timeout 120 memccapable -h 127.0.0.1 -p "${SPORT[capable]}" -a -t 5 >"$tmp/capable.out" 2>&1 || rc=$?
    while IFS= read -r line; do
        case $line in
        *"[pass]") ok "memccapable: ${line% "[pass]"}" ;;
        *"[FAIL]"*) not_ok "memccapable: $line" ;;
        esac
    done < <(tr -s ' ' <"$tmp/capable.out")
    check "memccapable -a: all ASCII tests passed" [ "$rc" -eq 0 ]
    stop_server capable
}

# py_checks NAME SCRIPT ARGS...: runs a python checker that prints "ok - " and
# "FAIL - " lines, counting them as ours.
py_checks() {
    local name=$1 rc=0 line
    shift
    timeout 120 "$PY" "$@" >"$tmp/pycheck.out" 2>&1 || rc=$?
    while IFS= read -r line; do
        case $line in
        "ok - "*) ok "$name: ${line#ok - }" ;;
        "FAIL - "*) not_ok "$name: ${line#FAIL - }" ;;
        *) echo "     $line" ;;
        esac
    done <"$tmp/pycheck.out"
    [ "$rc" -eq 0 ] || not_ok "$name: $* exited $rc"
}

# A client that sends and never reads, and floods of connections: under and
# over -c. FLOOD sockets (E2E_FLOOD, default 4000; fewer if ulimit -n is low).
flood_checks() {
    local n=${E2E_FLOOD:-4000} hard
    # serve and the checker raise their own soft limits (up to the hard one).
    hard=$(ulimit -Hn)
    if [ "$hard" != unlimited ] && [ "$hard" -lt $((n + 1200)) ]; then
        n=$((hard - 1200))
        echo "     (ulimit -Hn is $hard: flooding with $n sockets)"
    fi
    start_server stall 0 -t --max-output 256k --output-stall-timeout 2
    py_checks stall tests/e2e/e2e_limits.py stall "${SPORT[stall]}" "${SPID[stall]}" 2
    check "stall: the server logged why it closed the connection" \
        grep -q 'has not read its replies for 2 s' "$tmp/stall.log"
    stop_server stall
    start_server flood 0 -t -c $((n + 1000))
    py_checks flood tests/e2e/e2e_limits.py flood "${SPORT[flood]}" "${SPID[flood]}" "$n" $((n + 1000))
    stop_server flood
    start_server flood 0 -t -c 300
    py_checks "flood -c 300" tests/e2e/e2e_limits.py flood "${SPORT[flood]}" "${SPID[flood]}" \
        $((n / 2)) 300
    check "flood -c 300: refused connections are logged, a few a second" \
        grep -q 'more refused connections (--max-conns) not logged' "$tmp/flood.log"
    stop_server flood
}

# Client authentication (--auth-file, memcached's ASCII scheme).
auth_checks() {
    local users=$tmp/users pw=$tmp/pw bad=$tmp/badpw rc log=$tmp/authfail.log port
    # A bad file stops the start, saying what is wrong.
    try_auth_file() {
        rc=0
        timeout 10 "$SERVE" -p 0 -t -d "$tmp/authfail.data" --auth-file "$1" >"$log" 2>&1 || rc=$?
        [ "$rc" -eq 1 ] && grep -q "cannot start: --auth-file: .*$2" "$log"
    }
    check "auth: a missing --auth-file stops the start (exit 1, 'cannot open')" \
        try_auth_file "$tmp/nosuch" "cannot open"
    printf 'alice:s3cret\n' >"$users"
    chmod 644 "$users"
    check "auth: an --auth-file others may read stops the start ('chmod 600 it')" \
        try_auth_file "$users" "chmod 600 it"
    : >"$users"
    chmod 600 "$users"
    check "auth: an empty --auth-file stops the start" try_auth_file "$users" "holds no USER:PASSWORD"
    printf 'alice:s3cret\nbob\n' >"$users"
    check "auth: a malformed line stops the start, naming it" try_auth_file "$users" "line 2: no ':'"
    rc=0
    "$SERVE" -p 0 -d "$tmp/authfail.data" -u --auth-file "$users" >/dev/null 2>&1 || rc=$?
    check "auth: -u with --auth-file is a usage error (no UDP form)" [ "$rc" -eq 2 ]

    printf '# test users\nalice:s3cret\nbob:pass with spaces\n' >"$users"
    printf 's3cret\n' >"$pw"
    printf 'wrong\n' >"$bad"
    start_server auth 0 --auth-file "$users" --max-auth-failures 2 --auth-timeout 1
    port=${SPORT[auth]}
    check "auth: serve says UDP is off" grep -q 'UDP is off: --auth-file' "$tmp/auth.log"
    expect_exit 5 "auth: clie without --user is refused" -p "$port" get k
    check "auth: ...saying the server requires authentication" \
        grep -q 'requires authentication: give --user' "$tmp/err"
    expect_exit 5 "auth: a wrong password is refused" -p "$port" --user alice --password-file "$bad" get k
    check "auth: ...as an authentication failure" grep -q 'authentication failed: .*CLIENT_ERROR authentication failure' "$tmp/err"
    expect_out STORED "auth: clie --user --password-file stores" -p "$port" --user alice --password-file "$pw" put k v1
    expect_out v1 "auth: ...and reads back" -p "$port" --user alice --password-file "$pw" get k
    printf 'pass with spaces' >"$tmp/pw2"
    expect_out v1 "auth: a password with spaces, file without a newline" -p "$port" --user bob --password-file "$tmp/pw2" get k
    rc=0
    timeout 20 "$PY" - "$port" >"$tmp/authraw.out" 2>&1 <<'PYEOF' || rc=$?
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
def ask(data, want):
    s.sendall(data)
    got = b""
    while len(got) < len(want):
        d = s.recv(4096)
        if not d:
            break
        got += d
    assert got == want, (data, got, want)
ask(b"get k\r\nstats\r\n", b"CLIENT_ERROR unauthenticated\r\nCLIENT_ERROR unauthenticated\r\n")
ask(b"set x 0 0 11\r\nalice wrong\r\n", b"CLIENT_ERROR authentication failure\r\n")
ask(b"set x 0 0 12\r\nalice s3cret\r\nget k\r\n", b"STORED\r\nVALUE k 0 2\r\nv1\r\nEND\r\n")
PYEOF
    check "auth: raw protocol: commands refused before, a wrong password refused, then served $(head -c 200 "$tmp/authraw.out")" [ "$rc" -eq 0 ]
    rc=0
    timeout 20 "$PY" -c 'import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
t = time.monotonic()
assert s.recv(10) == b"" and time.monotonic() - t < 4' "$port" || rc=$?
    check "auth: --auth-timeout 1 closes a connection that does not log in" [ "$rc" -eq 0 ]
    cl -p "$port" --user alice --password-file "$pw" stats >"$tmp/authstats" 2>&1 || true
    check "auth: stats auth_timeouts counts it" grep -q '^auth_timeouts [1-9]' "$tmp/authstats"
    check "auth: stats auth_cmds and auth_errors count the attempts" \
        grep -q '^auth_errors [1-9]' "$tmp/authstats"
    logged_not_password() {
        grep -q "from 127.0.0.1:[0-9]*: authentication failed for user 'alice'" "$tmp/auth.log" &&
            ! grep -q wrong "$tmp/auth.log"
    }
    check "auth: a failed attempt is logged with the peer address, not the password" \
        logged_not_password
    cl -p "$port" --user alice --password-file "$pw" bench -c 8 -n 4000 --ratio 1:1 --keys 100 >"$tmp/authbench" 2>&1 || true
    check "auth: clie bench --user: 8 connections authenticate, 4000 requests, no error" \
        grep -q '^requests *4000 (.*, 0 errors)' "$tmp/authbench"
    expect_exit 5 "auth: clie bench with a wrong password exits 5" -p "$port" --user alice --password-file "$bad" bench -c 2 -n 10
    # SIGHUP rereads the file: the new password in, the old out.
    printf 'alice:n3w\n' >"$users"
    printf 'n3w\n' >"$tmp/pw3"
    kill -HUP "${SPID[auth]}"
    for _ in $(seq 50); do grep -q 'SIGHUP: --auth-file .* reloaded' "$tmp/auth.log" && break; sleep 0.1; done
    expect_out v1 "auth: after SIGHUP the new password works" -p "$port" --user alice --password-file "$tmp/pw3" get k
    expect_exit 5 "auth: ...and the old one no longer does" -p "$port" --user alice --password-file "$pw" get k
    # pymemcache gained username/password (ASCII auth) in 4.0.
    if "$PY" -c 'import inspect, sys; from pymemcache.client.base import Client; sys.exit(0 if "username" in inspect.signature(Client).parameters else 1)' 2>/dev/null; then
        rc=0
        timeout 20 "$PY" -c 'import sys; from pymemcache.client.base import Client
c = Client(("127.0.0.1", int(sys.argv[1])), username="alice", password="n3w", connect_timeout=5, timeout=5)
assert c.get("k") == b"v1"' "$port" || rc=$?
        check "auth: pymemcache with username/password" [ "$rc" -eq 0 ]
    else
        echo "     (pymemcache $("$PY" -c 'import pymemcache; print(pymemcache.__version__)') has no ASCII authentication (4.0 added it): skipped)"
    fi
    stop_server auth
}

limits_checks() {
    local port
    start_server limits 0 -t -c 5 -m 1 --idle-timeout 1
    port=${SPORT[limits]}
    # -m 1: 1 MiB of items. Fill it, then writes fail and nothing is evicted.
    head -c 100000 /dev/zero | tr '\0' 'm' >"$tmp/100k"
    local i stored=0
    for ((i = 0; i < 20; i++)); do
        if cl -t -p "$port" put "fill:$i" - <"$tmp/100k" >/dev/null 2>"$tmp/err"; then
            stored=$((stored + 1))
        else
            break
        fi
    done
    if grep -q 'SERVER_ERROR out of memory' "$tmp/err" && [ "$stored" -ge 5 ] && [ "$stored" -lt 11 ]; then
        ok "limits: -m 1 stores $stored x 100 KB, then SERVER_ERROR out of memory"
    else
        not_ok "limits: -m 1: stored $stored; last error: $(cat "$tmp/err")"
    fi
    local intact=1
    for ((i = 0; i < stored; i++)); do
        cl -t -p "$port" get "fill:$i" | cmp -s - "$tmp/100k" || intact=0
    done
    check "limits: nothing was evicted" [ "$intact" -eq 1 ]
    cl -t -p "$port" delete fill:0 >/dev/null
    expect_out STORED "limits: a delete makes room again" -t -p "$port" put "fill:new" - <"$tmp/100k"
    # -c 5 and --idle-timeout 1 (tests/e2e/e2e_limits.py).
    py_checks limits tests/e2e/e2e_limits.py conns "$port" 5
    py_checks limits tests/e2e/e2e_limits.py idle "$port" 1
    stop_server limits
}

kill_restart() {
    local name=$1 port=${SPORT[$1]} pids=() i
    # Writers keep going while the server is killed under them; each notes
    # the keys the server acknowledged.
    for ((i = 0; i < 3; i++)); do
        (for ((j = 0; j < 300; j++)); do
            if [ "$(cl -t -p "$port" --timeout 1000 put "load:$i:$j" "v$j" 2>/dev/null)" = STORED ]; then
                echo "load:$i:$j v$j"
            fi
        done) >"$tmp/acked.$i" &
        pids+=($!)
    done
    sleep 0.5
    kill9_server "$name"
    ok "$name: killed with SIGKILL during a write load"
    for p in "${pids[@]}"; do wait "$p" || true; done
    if start_server "$name" "$port" -t; then
        ok "$name: restarted on the same port $port and data directory"
    else
        not_ok "$name: restart on port $port"
        return
    fi
    local acked=0 lost=0 key val
    while read -r key val; do
        acked=$((acked + 1))
        [ "$(cl -t -p "$port" get "$key" 2>/dev/null)" = "$val" ] || lost=$((lost + 1))
    done < <(cat "$tmp"/acked.*)
    check "$name: all $acked writes acknowledged before the kill survived it ($lost lost)" \
        [ "$acked" -gt 0 -a "$lost" -eq 0 ]
    # The randomized workload from before the kill, byte for byte.
    local res
    res=$(run_workers reader "$tmp/$name-items" "$port" -t)
    check "$name: the $KEYS-key workload reads back byte for byte after kill -9 ($res)" \
        [ "${res#* }" = 0 ]
}

# Rounds of: parallel writers, kill -9 at a random moment, restart, check
# that the store holds exactly what the acknowledged writes imply. Small
# snapshot and segment sizes make snapshots and segment removal happen
# between and during the rounds.
crash_rounds() {
    local rounds=${E2E_CRASH_ROUNDS:-5} port state=$tmp/crash.json r wpid line rc
    start_server crash 0 -t --snapshot-bytes 64k --wal-segment-bytes 32k
    port=${SPORT[crash]}
    for ((r = 1; r <= rounds; r++)); do
        timeout 120 "$PY" tests/e2e/e2e_crash.py write "$port" "$state" 60 >"$tmp/crash.w" 2>&1 &
        wpid=$!
        sleep "$((RANDOM % 2)).$((RANDOM % 10))$((RANDOM % 10))"
        # A snapshot under load in the first round, so the last restart
        # always has one to load even if no round ran long enough to reach
        # --snapshot-bytes (a short kill could leave none: a flaky check).
        [ "$r" -ne 1 ] || cl -t -p "$port" snapshot >/dev/null 2>&1 || true
        kill9_server crash
        rc=0
        wait "$wpid" || rc=$?
        check "crash round $r: writer: $(tail -n 1 "$tmp/crash.w")" [ "$rc" -eq 0 ]
        start_server crash "$port" -t --snapshot-bytes 64k --wal-segment-bytes 32k || {
            not_ok "crash round $r: restart failed: $(tail -n 2 "$tmp/crash.log")"
            return
        }
        rc=0
        timeout 120 "$PY" tests/e2e/e2e_crash.py verify "$port" "$state" >"$tmp/crash.v" 2>&1 || rc=$?
        while IFS= read -r line; do
            case $line in
            "ok - "*) ok "crash round $r: ${line#ok - }" ;;
            "FAIL - "*) not_ok "crash round $r: ${line#FAIL - }" ;;
            *) echo "     $line" ;;
            esac
        done <"$tmp/crash.v"
        [ "$rc" -eq 0 ] || not_ok "crash round $r: verify exited $rc"
    done
    cl -t -p "$port" stats >"$tmp/crash.stats"
    local snaps recs
    snaps=$(sed -n 's/^recovery_snapshot_lsn //p' "$tmp/crash.stats")
    recs=$(sed -n 's/^recovery_records //p' "$tmp/crash.stats")
    check "crash: the last restart loaded a snapshot (at log position $snaps) and replayed $recs records after it" \
        [ "${snaps:-0}" -gt 0 ]
    stop_server crash
}

# Durability details: a second serve on a busy data directory, a snapshot
# taken on request then used by a restart, and expiry kept across restarts.
durability_checks() {
    local port log=$tmp/second.log rc=0 holder
    start_server dur 0 -t
    port=${SPORT[dur]}
    holder=${SPID[dur]}
    timeout 10 "$SERVE" -p 0 -t -d "$tmp/dur.data" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 1 ] && grep -q "in use by another serve (pid $holder)" "$log"; then
        ok "a second serve on the same data directory is refused, naming pid $holder"
    else
        not_ok "second serve on a busy data dir: exit $rc: $(cat "$log")"
    fi
    # A start that fails (its port is taken) after creating its data
    # directory leaves no directory, LOCK or log segment behind.
    rc=0
    timeout 10 "$SERVE" -s 127.0.0.1 -p "$port" -t -d "$tmp/never.data" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 1 ] && grep -q "cannot listen" "$log" && [ ! -e "$tmp/never.data" ]; then
        ok "a serve that cannot listen leaves no data directory behind"
    else
        not_ok "failed start: exit $rc, $(ls -A "$tmp/never.data" 2>&1 | tr '\n' ' '): $(tail -n 1 "$log")"
    fi
    local i
    for ((i = 0; i < 200; i++)); do cl -t -p "$port" -q put "snap:$i" "value $i"; done
    cl -t -p "$port" -q -e 3 put "snap:brief" soon
    cl -t -p "$port" -q -e 100000 put "snap:long" later
    expect_out OK "snapshot command answers OK once the snapshot is on disk" -t -p "$port" snapshot
    for ((i = 0; i < 50; i++)); do cl -t -p "$port" -q put "after:$i" "v$i"; done
    cl -t -p "$port" -q delete snap:0
    check "a snapshot file exists" [ -n "$(compgen -G "$tmp/dur.data/snap-*.snap" || true)" ]
    stop_server dur
    start_server dur "$port" -t
    cl -t -p "$port" stats >"$tmp/dur.stats"
    check "restart loaded the snapshot ($(sed -n 's/^recovery_snapshot_items //p' "$tmp/dur.stats") items) and replayed the log after it ($(sed -n 's/^recovery_records //p' "$tmp/dur.stats") records)" \
        [ "$(sed -n 's/^recovery_snapshot_items //p' "$tmp/dur.stats")" -ge 200 ]
    expect_exit 1 "a key deleted after the snapshot stays deleted" -t -p "$port" get snap:0
    expect_out "value 199" "a key from the snapshot is back" -t -p "$port" get snap:199
    expect_out "v49" "a key written after the snapshot is back" -t -p "$port" get after:49
    expect_out later "an expiry time survives the restart (not yet due)" -t -p "$port" get snap:long
    sleep 3
    expect_exit 1 "an expiry time survives the restart (due now: gone)" -t -p "$port" get snap:brief
    stop_server dur
}

# alive PID: the process exists and is not a zombie.
alive() {
    [ -e "/proc/$1/stat" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null
}

# A snapshot child keeps nothing of its parent's but the log, and dies with
# it: a kill -9 of serve during a snapshot must not leave an orphan holding
# the data directory's lock (a restart refused) or the listening socket
# (clients queued unanswered). The child is stopped (SIGSTOP) once seen, so
# it cannot finish first.
snapshot_child_checks() {
    local port pid child= fds try i snapc
    start_server snapkid 0 -t
    port=${SPORT[snapkid]}
    pid=${SPID[snapkid]}
    openssl rand -out "$tmp/big.val" 1000000
    for ((i = 0; i < 24; i++)); do cl -t -p "$port" -q put "big:$i" - <"$tmp/big.val"; done
    for ((try = 0; try < 5; try++)); do
        [ -z "$child" ] || break
        cl -t -p "$port" snapshot >/dev/null 2>&1 &
        snapc=$!
        for ((i = 0; i < 400; i++)); do
            child=$(pgrep -P "$pid" | head -n 1 || true)
            [ -n "$child" ] && kill -STOP "$child" 2>/dev/null && alive "$child" && break
            child=
            sleep 0.002
        done
        [ -n "$child" ] || wait "$snapc" || true
    done
    if [ -z "$child" ]; then
        not_ok "snapshot child: never caught alive in 5 snapshots"
        stop_server snapkid
        return
    fi
    SPID[snapkid_child]=$child
    fds=$(ls -l "/proc/$child/fd" 2>/dev/null || true)
    check "a snapshot child holds no socket (listening or client)" \
        bash -c '! grep -q "socket:" <<<"$1"' _ "$fds"
    check "a snapshot child does not hold the data directory's LOCK" \
        bash -c '! grep -q "/LOCK" <<<"$1"' _ "$fds"
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    unset "SPID[snapkid]"
    for ((i = 0; i < 50; i++)); do alive "$child" || break; sleep 0.1; done
    check "a snapshot child dies with serve (kill -9 during the snapshot)" bash -c '! [ -e "/proc/$1/stat" ] || grep -q "^[0-9]* (.*) Z" "/proc/$1/stat"' _ "$child"
    kill -KILL "$child" 2>/dev/null || true
    unset "SPID[snapkid_child]"
    wait "$snapc" 2>/dev/null || true
    if start_server snapkid "$port" -t; then
        ok "serve restarts on the data directory at once after a kill -9 during a snapshot"
        cl -t -p "$port" get big:23 >"$tmp/big.back" 2>&1 || true
        check "... with the data written before it" cmp -s "$tmp/big.val" "$tmp/big.back"
        stop_server snapkid
    else
        not_ok "serve did not restart after a kill -9 during a snapshot: $(tail -n 2 "$tmp/snapkid.log")"
    fi
}

# The previous snapshot and the log after it are kept: a newest snapshot
# that does not read back (a damaged sector) leaves a full copy.
snapshot_fallback_checks() {
    local port i snaps newest mid
    start_server snapfb 0 -t
    port=${SPORT[snapfb]}
    for ((i = 0; i < 100; i++)); do cl -t -p "$port" -q put "fb:$i" "first $i"; done
    expect_out OK "fallback: a first snapshot" -t -p "$port" snapshot
    for ((i = 100; i < 200; i++)); do cl -t -p "$port" -q put "fb:$i" "second $i"; done
    expect_out OK "fallback: a second snapshot" -t -p "$port" snapshot
    for ((i = 200; i < 250; i++)); do cl -t -p "$port" -q put "fb:$i" "after $i"; done
    stop_server snapfb
    mapfile -t snaps < <(ls "$tmp/snapfb.data"/snap-*.snap | sort)
    check "fallback: the previous snapshot is kept beside the newest (${#snaps[@]} files)" [ "${#snaps[@]}" -eq 2 ]
    newest=${snaps[${#snaps[@]} - 1]}
    mid=$(($(stat -c %s "$newest") / 2))
    "$PY" -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(int(sys.argv[2])); b=f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0]^0x10]))' "$newest" "$mid"
    if start_server snapfb "$port" -t && grep -q "$(basename "$newest").*trying an older snapshot" "$tmp/snapfb.log"; then
        ok "fallback: a damaged newest snapshot is named, and serve starts from the previous one"
        expect_out "first 7" "fallback: a key from before both snapshots is back" -t -p "$port" get fb:7
        expect_out "second 150" "fallback: a key from between them is back (from the log)" -t -p "$port" get fb:150
        expect_out "after 249" "fallback: a key written after the newest is back" -t -p "$port" get fb:249
        stop_server snapfb
    else
        not_ok "fallback: no start from the previous snapshot: $(grep -E 'error|warn' "$tmp/snapfb.log" | tail -n 3)"
    fi
}

# What an operator sees when a data directory is damaged: each case on its
# own copy of a directory written by a real serve.
damage_checks() {
    local src=$tmp/damage.data i rc log seg mid
    start_server damage 0 -t --wal-segment-bytes 4k
    for ((i = 0; i < 100; i++)); do cl -t -p "${SPORT[damage]}" -q put "dmg:$i" "value number $i"; done
    expect_out OK "damage: snapshot" -t -p "${SPORT[damage]}" snapshot
    for ((i = 100; i < 200; i++)); do cl -t -p "${SPORT[damage]}" -q put "dmg:$i" "value number $i"; done
    stop_server damage
    mapfile -t segs < <(ls "$src"/wal-*.log | sort)
    check "damage: the log spans several segments (${#segs[@]})" [ "${#segs[@]}" -ge 4 ]

    # try NAME: serve on a copy of the damaged dir; sets rc and log.
    try() {
        rc=0
        log=$tmp/$1.log
        timeout 20 "$SERVE" -p 0 -t -d "$tmp/$1" -l info >"$log" 2>&1 &
        local p=$!
        for _ in $(seq 100); do
            grep -q 'listening on\|cannot start' "$log" && break
            sleep 0.05
        done
        # A refused start exits by itself: a SIGTERM sent after its message
        # but before its exit would turn its status into 143.
        if ! grep -q 'cannot start' "$log"; then
            kill -TERM "$p" 2>/dev/null || true
        fi
        wait "$p" || rc=$?
    }
    copy() { rm -rf "$tmp/$1"; cp -a "$src" "$tmp/$1"; rm -f "$tmp/$1/LOCK"; }

    # A record cut short at the end of the last segment: cut off, with a warning.
    copy torn
    seg=$(ls "$tmp/torn"/wal-*.log | sort | tail -n 1)
    truncate -s -7 "$seg"
    try torn
    if [ "$rc" -eq 0 ] && grep -q 'cutting off .* bytes at offset' "$log"; then
        ok "damage: a torn last record is cut off with a warning and serve starts"
    else
        not_ok "damage: torn tail: exit $rc: $(grep -E 'warn|error' "$log" | head -n 3)"
    fi
    # A flipped byte in the middle of a segment: refuse, naming file and offset.
    copy flipped
    seg=$(ls "$tmp/flipped"/wal-*.log | sort | tail -n 2 | head -n 1)
    mid=$(($(stat -c %s "$seg") / 2))
    "$PY" -c 'import sys; f=open(sys.argv[1],"r+b"); f.seek(int(sys.argv[2])); b=f.read(1); f.seek(int(sys.argv[2])); f.write(bytes([b[0]^0x10]))' "$seg" "$mid"
    try flipped
    if [ "$rc" -eq 1 ] && grep -q "$(basename "$seg") is damaged at offset" "$log" &&
        grep -q "truncate -s [0-9]* $tmp/flipped/$(basename "$seg"), and move" "$log"; then
        ok "damage: a flipped byte mid-log stops the start, naming file, offset and the exact cut"
    else
        not_ok "damage: flipped byte: exit $rc: $(grep -E 'error' "$log" | head -n 2)"
    fi
    # Following that hint to the letter gets a start.
    local cut later
    cut=$(grep -o "truncate -s [0-9]* [^,]*" "$log" | head -n 1)
    later=$(grep -o "and move wal-[0-9a-f]*\.log" "$log" | head -n 1 | sed 's/and move //')
    if [ -n "$cut" ] && [ -n "$later" ]; then
        $cut
        mkdir -p "$tmp/flipped.aside"
        for f in "$tmp/flipped"/wal-*.log; do
            [[ "$(basename "$f")" < "$later" ]] || mv "$f" "$tmp/flipped.aside/"
        done
        try flipped
        check "damage: after the cut the hint gives (and the later segments moved aside), serve starts (exit $rc)" \
            [ "$rc" -eq 0 ]
    else
        not_ok "damage: the flipped-byte hint has no cut to follow: $(grep -E 'error' "$log" | head -n 2)"
    fi
    # A zeroed block in the middle of the last segment: corruption, not a torn tail.
    copy zeroed
    seg=$(ls "$tmp/zeroed"/wal-*.log | sort | tail -n 1)
    dd if=/dev/zero of="$seg" bs=1 seek=40 count=64 conv=notrunc status=none
    try zeroed
    check "damage: a zeroed block before valid records stops the start (exit $rc)" \
        grep -q 'is damaged at offset' "$log"
    # A missing segment: a gap in the log.
    copy missing
    rm "$(ls "$tmp/missing"/wal-*.log | sort | tail -n 3 | head -n 1)"
    try missing
    if [ "$rc" -eq 1 ] && grep -q 'the log has a gap: records' "$log"; then
        ok "damage: a missing segment stops the start, naming the missing records"
    else
        not_ok "damage: missing segment: exit $rc: $(grep -E 'error' "$log" | head -n 2)"
    fi
    # A snapshot written by a newer format version: refuse, say so.
    copy newer
    "$PY" - "$(ls "$tmp/newer"/snap-*.snap | head -n 1)" <<'PYEOF'
import sys
def crc32c(b):
    c = 0xffffffff
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0x82f63b78 if c & 1 else c >> 1
    return c ^ 0xffffffff
f = open(sys.argv[1], "r+b")
h = bytearray(f.read(48))
h[8:12] = (2).to_bytes(4, "little")
h[44:48] = crc32c(bytes(h[:44])).to_bytes(4, "little")
f.seek(0)
f.write(h)
PYEOF
    try newer
    if [ "$rc" -eq 1 ] && grep -q 'newer than this serve reads' "$log"; then
        ok "damage: a snapshot from a newer format version is refused with a clear message"
    else
        not_ok "damage: newer snapshot: exit $rc: $(grep -E 'error' "$log" | head -n 2)"
    fi
    # A run state (RUN) that does not parse: refused, not guessed at.
    copy badrun
    printf 'tpckv run 1\nboot x\nfsync none\nclean maybe\n' >"$tmp/badrun/RUN"
    try badrun
    if [ "$rc" -eq 1 ] && grep -q 'RUN, which tells whether the last run may have lost records, cannot be read' "$log"; then
        ok "damage: a RUN file that does not parse stops the start with a clear message"
    else
        not_ok "damage: bad RUN: exit $rc: $(grep -E 'error' "$log" | head -n 2)"
    fi
    # The undamaged original still recovers every key.
    copy intact
    try intact
    check "damage: the undamaged copy starts (exit $rc)" [ "$rc" -eq 0 ]
}

# cluster_checks: the 3-replica cluster test (tests/e2e/e2e_cluster.sh), its
# checks counted with ours.
cluster_checks() {
    local out=$tmp/cluster.out rc=0 summary p f
    SERVE="$SERVE" CLIE="$CLIE" timeout 600 tests/e2e/e2e_cluster.sh >"$out" 2>&1 || rc=$?
    grep -E '^(ok|FAIL) ' "$out" || true
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1 || true)
    if [ -z "$summary" ]; then
        not_ok "cluster: tests/e2e/e2e_cluster.sh ended without a summary (exit $rc): $(tail -n 5 "$out")"
        return
    fi
    p=${summary%% passed*}
    f=${summary#*passed, }
    f=${f%% failed*}
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        not_ok "cluster: tests/e2e/e2e_cluster.sh exited $rc"
    fi
}

echo "== tpckv end-to-end test (keys per workload: $KEYS, parallel clients: $WORKERS)"

echo "-- UDP: serve -u (UDP only), values up to $UDP_MAX_VALUE bytes"
start_server udp 0 -u --max-value "$UDP_MAX_VALUE"
basic_ops udp -u
workload udp -u "$UDP_MAX_VALUE"
expect_exit 2 "udp: clie refuses a request too large for a datagram" -u -p "${SPORT[udp]}" put huge - \
    < <(head -c 70000 /dev/zero)
stop_server udp

echo "-- TCP: serve -t (TCP only), values up to $TCP_MAX_VALUE bytes"
start_server tcp 0 -t
basic_ops tcp -t
workload tcp -t "$TCP_MAX_VALUE"
clie_exit_codes "${SPORT[tcp]}"
pymemcache_checks "${SPORT[tcp]}"

echo "-- malformed input over TCP and UDP (serve with both)"
start_server both 0 -t -u
raw_checks both "${SPORT[both]}" --udp
stop_server both

echo "-- memccapable"
memcapable_checks

echo "-- limits"
limits_checks

echo "-- a client that never reads; connection floods"
flood_checks

echo "-- client authentication (--auth-file)"
auth_checks

echo "-- kill -9 and restart"
kill_restart tcp
stop_server tcp

echo "-- crash rounds: kill -9 at random moments, check every acknowledged write"
crash_rounds

echo "-- durability: data directory lock, snapshots, expiry across restarts"
durability_checks

echo "-- snapshots: the child dies with serve, the previous one is kept"
snapshot_child_checks
snapshot_fallback_checks

echo "-- damaged data directories"
damage_checks

echo "-- replication: a 3-replica cluster"
cluster_checks

leftover=$(for p in "${SPID[@]}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
check "every server this test started has stopped" [ -z "$leftover" ]

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
