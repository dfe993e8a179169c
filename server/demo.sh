#!/usr/bin/env bash
# demo.sh - what `make run` runs: start a local tpckv server, show a few
# writes and reads through clie, then keep serving until Ctrl-C.
#
# Uses port 11211 when it is free (so plain `./clie get KEY` works), else a
# free port the kernel picks. Data is kept in ./data (serve's default), so it
# is still there after Ctrl-C and the next `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

port=11211
log=$(mktemp -t tpckv-demo.XXXXXX.log)
pid=""

cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -f "$log"
}
trap cleanup EXIT
trap 'echo; echo "stopping serve (pid $pid)"; exit 0' INT TERM

start() {
    : >"$log"
    ./serve -p "$1" -l info 2>>"$log" &
    pid=$!
    # Wait for the "listening" line (or for serve to give up).
    for _ in $(seq 100); do
        if grep -q 'listening on' "$log"; then
            port=$(sed -n 's/.* port \([0-9]*\) .*/\1/p' "$log" | head -n 1)
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; pid=""; return 1; }
        sleep 0.05
    done
    return 1
}

if ! start 11211; then
    echo "port 11211 is busy; letting the kernel pick a free port"
    start 0 || { cat "$log" >&2; echo "serve did not start" >&2; exit 1; }
fi
cat "$log"

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

echo
echo "== tpckv is serving on 127.0.0.1 port $port (TCP and UDP), data in ./data. A short demo:"
run ./clie -p "$port" put greeting "hello, tpckv"
run ./clie -p "$port" get greeting
run ./clie -p "$port" -u get greeting
run ./clie -p "$port" add greeting "add only stores new keys"
run ./clie -p "$port" put visits 41
run ./clie -p "$port" incr visits 1
run ./clie -p "$port" keys
run ./clie -p "$port" -o 2 -k visits
run ./clie -p "$port" get visits

cat <<MSG

== Try it yourself (another terminal):
   ./clie -p $port put mykey myvalue        store (memcached 'set')
   ./clie -p $port get mykey                read
   ./clie -p $port -u get mykey             the same over UDP
   ./clie -p $port stats                    server statistics
   ./clie -p $port snapshot                 write a snapshot now
   ./clie --help                            everything clie can do
   Any memcached client works too: host 127.0.0.1, port $port.

Serving until Ctrl-C (log: serve's messages appear below).
MSG
tail -n 0 -f --pid "$pid" "$log" &
wait "$pid"
