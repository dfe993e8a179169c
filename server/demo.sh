#!/usr/bin/env bash
# demo.sh - what `make run` runs: start a local 3-replica tpckv cluster,
# show a write through one replica read back from the others, then keep
# serving until Ctrl-C.
#
# Clients use ports 11211, 11212, 11213 and the replicas talk to each other
# on 11311..11313 when those are free (so plain `./clie get KEY` reaches
# replica 1); otherwise free ports the kernel picks. The cluster secret is
# generated once into ./data/secret; each replica keeps its data in
# ./data/rN, so everything is still there after Ctrl-C and the next
# `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=python3
mkdir -p data
pids=()
logs=()

cleanup() {
    local p
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -f "${logs[@]}"
}
trap cleanup EXIT
trap 'echo; echo "stopping the replicas (pids ${pids[*]})"; exit 0' INT TERM

# port_or_free WANT: WANT if it can be bound on 127.0.0.1, else a free port.
port_or_free() {
    "$PY" - "$1" <<'EOF'
import socket, sys
def bindable(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return s.getsockname()[1]
    except OSError:
        return 0
    finally:
        s.close()
print(bindable(int(sys.argv[1])) or bindable(0))
EOF
}

if [ ! -s data/secret ]; then
    (umask 077 && openssl rand -hex 32 >data/secret)
    echo "generated the cluster secret in data/secret"
fi

cport=() pport=()
for i in 1 2 3; do
    cport[i]=$(port_or_free $((11210 + i)))
    pport[i]=$(port_or_free $((11310 + i)))
done
replicas="1@127.0.0.1:${pport[1]},2@127.0.0.1:${pport[2]},3@127.0.0.1:${pport[3]}"

for i in 1 2 3; do
    log=$(mktemp -t tpckv-demo-r$i.XXXXXX.log)
    logs[i]=$log
    ./serve --id "$i" --replicas "$replicas" --secret-file data/secret \
        -p "${cport[i]}" -d "data/r$i" -l info 2>>"$log" &
    pids[i]=$!
done
for i in 1 2 3; do
    ok=""
    for _ in $(seq 100); do
        grep -q 'listening on' "${logs[i]}" && { ok=1; break; }
        kill -0 "${pids[i]}" 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$ok" ]; then
        cat "${logs[i]}" >&2
        echo "replica $i did not start" >&2
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
cat "${logs[1]}"

run() {
    local rc=0 out
    printf '\n$'
    printf ' %q' "$@"
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

Serving until Ctrl-C (replica 1's log appears below).
MSG
tail -n 0 -f --pid "${pids[1]}" "${logs[1]}" &
wait "${pids[1]}"
