#!/usr/bin/env bash
# demo.sh - what `make run` runs: start a local 3-replica tpckv cluster,
# show a write through one replica read back from the others, then keep
# serving until Ctrl-C.
#
# Clients use ports 11211, 11212, 11213 and the replicas talk to each other
# on 11311..11313 when those can be bound the way serve binds them (a port
# whose old connections linger in TIME_WAIT still can); otherwise free
# ports the kernel picks. The cluster secret is generated once into
# ./data/secret; each replica keeps its data in ./data/rN and its log in
# ./data/rN.log, so everything is still there after Ctrl-C and the next
# `make run`. If a replica exits (killed, crashed), the demo says which and
# how to start it again, and the others keep serving.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=python3
mkdir -p data
pids=()

cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo; echo "stopping the replicas (pids ${pids[*]})"; exit 0' INT TERM

# port_or_free WANT: WANT if serve could bind it on 127.0.0.1 (TCP and UDP,
# with SO_REUSEADDR as libuv sets it), else a free port the kernel picks.
port_or_free() {
    "$PY" - "$1" <<'EOF'
import socket, sys
def bindable(p):
    t = socket.socket()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("127.0.0.1", p))
        got = t.getsockname()[1]
        u.bind(("127.0.0.1", got))
        return got
    except OSError:
        return 0
    finally:
        t.close()
        u.close()
print(bindable(int(sys.argv[1])) or bindable(0))
EOF
}

# quote ARG: ARG as a person would type it in a shell.
quote() {
    case $1 in
    *[!A-Za-z0-9_./:=@%+-]* | '') printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
    esac
}

# A replica of an earlier run still holding its data directory (started by
# hand, say) would make this one fail: say so, and how to stop it.
for i in 1 2 3; do
    lock=data/r$i/LOCK
    [ -s "$lock" ] || continue
    pid=$(head -c 32 "$lock" | tr -dc 0-9)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q serve; then
        echo "make run: replica $i of an earlier run is still running (pid $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline"))" >&2
        echo "          and holds data/r$i. Stop it (kill $pid), then run make run again." >&2
        exit 1
    fi
done

if [ ! -s data/secret ]; then
    (umask 077 && openssl rand -hex 32 >data/secret)
    echo "generated the cluster secret in data/secret"
fi

cport=() pport=() cmd=()
for i in 1 2 3; do
    cport[i]=$(port_or_free $((11210 + i)))
    pport[i]=$(port_or_free $((11310 + i)))
done
replicas="1@127.0.0.1:${pport[1]},2@127.0.0.1:${pport[2]},3@127.0.0.1:${pport[3]}"

# start I: replica I in the background, logging to data/rI.log.
start() {
    local i=$1
    cmd[i]="./serve --id $i --replicas $replicas --secret-file data/secret -p ${cport[i]} -d data/r$i -l info --log-file data/r$i.log"
    : >>"data/r$i.log"
    # shellcheck disable=SC2086 # the command line is split on purpose
    ${cmd[i]} 2>>"data/r$i.log" &
    pids[i]=$!
}

marks=()
for i in 1 2 3; do
    marks[i]=$(stat -c %s "data/r$i.log" 2>/dev/null || echo 0)
    start "$i"
done
for i in 1 2 3; do
    ok=""
    for _ in $(seq 100); do
        tail -c +$((marks[i] + 1)) "data/r$i.log" | grep -q 'listening on' && { ok=1; break; }
        kill -0 "${pids[i]}" 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$ok" ]; then
        tail -c +$((marks[i] + 1)) "data/r$i.log" | tail -n 20 >&2
        echo "make run: replica $i did not start (its log: data/r$i.log)" >&2
        exit 1
    fi
done
# Wait until every replica has its links to the other two.
for _ in $(seq 100); do
    up=0
    for i in 1 2 3; do
        n=$(./clie -p "${cport[i]}" stats 2>/dev/null | grep -c '_link up' || true)
        [ "$n" -eq 2 ] && up=$((up + 1))
    done
    [ "$up" -eq 3 ] && break
    sleep 0.1
done

run() {
    local rc=0 out a
    printf '\n$'
    for a in "$@"; do printf ' %s' "$(quote "$a")"; done
    printf '\n'
    # get prints a value's bytes with no newline: add one for the eye.
    out=$("$@") || rc=$?
    [ -z "$out" ] || printf '%s\n' "$out"
    [ "$rc" -eq 0 ] || echo "(exit status $rc)"
}

p1=${cport[1]} p2=${cport[2]} p3=${cport[3]}
echo
echo "== a 3-replica tpckv cluster is serving on 127.0.0.1 ports $p1, $p2, $p3 (data in ./data)."
echo "   Every write is committed on all three by two-phase commit. A short demo:"
run ./clie -p "$p1" put greeting "hello, tpckv"
run ./clie -p "$p2" get greeting
run ./clie -p "$p3" -u get greeting
run ./clie -p "$p2" put visits 41
run ./clie -p "$p3" incr visits 1
run ./clie -p "$p1" get visits
run ./clie -p "$p3" add greeting "add only stores new keys"
run ./clie -p "$p1" keys

cat <<MSG

== Try it yourself (another terminal): point clie at any replica.
   ./clie -p $p1 put mykey myvalue        store through replica 1 (memcached 'set')
   ./clie -p $p2 get mykey                read it back from replica 2
   ./clie -p $p3 -u get mykey             or from replica 3, over UDP
   ./clie -p $p1 stats                      statistics: txn_*, peer_*_link ...
   ./clie --help                            everything clie can do
   Any memcached client works too: host 127.0.0.1, port $p1, $p2 or $p3.
   Stop one replica (kill ${pids[3]}) and writes fail, naming it, while reads go on.

== The replicas (each logs to data/rN.log):
MSG
for i in 1 2 3; do
    echo "   replica $i, pid ${pids[i]}: ${cmd[i]}"
done
echo
echo "Serving until Ctrl-C (replica 1's log appears below)."
tail -n 0 -f "data/r1.log" &
tailpid=$!
pids+=("$tailpid")
# Say when a replica exits, and how to start it again; go on while any
# serves.
alive=3
declare -A gone=()
while [ "$alive" -gt 0 ]; do
    sleep 0.5
    alive=0
    for i in 1 2 3; do
        if kill -0 "${pids[i]}" 2>/dev/null; then
            alive=$((alive + 1))
        elif [ -z "${gone[$i]+x}" ]; then
            gone[$i]=1
            rc=0
            wait "${pids[i]}" 2>/dev/null || rc=$?
            echo
            echo "== replica $i (pid ${pids[i]}) exited (status $rc); the others keep serving."
            echo "   Its log: data/r$i.log. To start it again, in another terminal:"
            echo "   ${cmd[i]}"
        fi
    done
done
echo "== every replica has exited"
