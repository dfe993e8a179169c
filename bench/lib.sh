# bench/lib.sh - what the benchmark scripts share: a temporary directory,
# the servers started (stopped by PID on exit), free ports, waiting until a
# server answers with its peer links up, and a few figures. Sourced:
#
#   . "$(dirname "$0")/lib.sh"
#   bench_setup NAME     # sets $tmp, $pids and the exit trap; NAME prefixes errors
#
# Every server goes on 127.0.0.1, its PID into pids (pids+=($!)).

bench_setup() { # bench_setup NAME
    BENCH_NAME=$1
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/tpckv-$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    bench_stop_all
    rm -rf "$tmp"
}

bench_stop_all() { # every server started so far: SIGTERM, then wait for each
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}

bench_die() { echo "$BENCH_NAME: $*" >&2; exit 2; }

# free_ports N: N ports free for both TCP and UDP on 127.0.0.1 (each found by
# binding port 0; a port could in principle be taken in between).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
out, held = [], []
while len(out) < int(sys.argv[1]):
    t = socket.socket()
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close(); u.close()
        continue
    held += [t, u]
    out.append(str(port))
print(" ".join(out))
PY
}

free_port() { free_ports 1; }

stats() { timeout 10 "${CLIE:-./clie}" -p "$1" stats; } # stats PORT: "NAME VALUE" lines

stat_sum() { # stat_sum NAME PORT...: a counter summed over servers
    local name=$1 p total=0 v
    shift
    for p in "$@"; do
        v=$(stats "$p" | sed -n "s/^$name //p")
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

ready() { # ready PORT [PEERS]: answering, with PEERS peer links up
    local out up
    out=$(stats "$1" 2>/dev/null) || return 1
    up=$(grep -c '^peer_[0-9]*_link up$' <<<"$out" || true)
    [ "$up" -ge "${2:-0}" ]
}

# wait_ready PEERS PORT...: each answering with PEERS peer links up, within
# 30 s, or the logs in $tmp are shown and the script exits.
wait_ready() {
    local peers=$1 p all
    shift
    for _ in $(seq 300); do
        all=1
        for p in "$@"; do ready "$p" "$peers" || { all=0; break; }; done
        [ "$all" = 1 ] && return 0
        sleep 0.1
    done
    echo "$BENCH_NAME: servers on ports $* not ready after 30 s; logs:" >&2
    cat "$tmp"/*.log >&2 || true
    exit 1
}

# wait_up PORT PID: answering within 30 s while PID lives; 1 otherwise.
wait_up() {
    for _ in $(seq 600); do
        "${CLIE:-./clie}" -p "$1" --timeout 200 version >/dev/null 2>&1 && return 0
        kill -0 "$2" 2>/dev/null || { echo "$BENCH_NAME: the server on port $1 exited" >&2; return 1; }
        sleep 0.05
    done
    echo "$BENCH_NAME: the server on port $1 did not answer in 30 s" >&2
    return 1
}

rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; } # rss_kib PID

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
