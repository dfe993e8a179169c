#!/usr/bin/env bash
# bench.sh - tpckv against memcached (issue 5), the benchmark behind `make
# bench`. A benchmark, not a test: it prints figures and marks the targets
# met or missed, and exits 0 either way (non-zero only when it cannot run).
#
# Starts, on free ports of 127.0.0.1 with data dirs under a temp dir:
#   memcached -t 2 -m 1024 (TCP and UDP)      installed with apt-get if missing
#   tpckv, 1 replica, --fsync none            (TCP and UDP)
#   tpckv, 1 replica, --fsync always          (TCP)
#   tpckv, 3 replicas, --fsync always         (TCP, one secret, peer links up)
# and drives them with the same `clie bench` workloads (32-byte keys, 100-byte
# values, BENCH_KEYS keys, 50 connections), tpckv then memcached, workload by
# workload, over BENCH_ROUNDS rounds (A B A B ...), each run BENCH_SECONDS
# measured after BENCH_WARMUP of warm-up. Gets only hit keys preloaded once
# at the start. Then, on fresh servers: RSS with 1,000,000 keys (BENCH_MEM_KEYS)
# of 100-byte values, and the time tpckv takes to restart with them.
# It prints a table of medians over the rounds, with tpckv/memcached ratios
# and the issue's targets, and stops (by PID) everything it started.
#
#   bench/bench.sh                 (or: make bench)
#   BENCH_SECONDS=10 BENCH_ROUNDS=5 bench/bench.sh
#
# Environment knobs:
#   BENCH_SECONDS=4        measured seconds per run
#   BENCH_WARMUP=1         warm-up seconds before each run (not counted)
#   BENCH_ROUNDS=3         rounds of every workload (medians over them)
#   BENCH_CONNS=50         connections per run
#   BENCH_THREADS=2        clie bench -T (threads of the load generator)
#   BENCH_KEYS=100000      key space of the throughput runs
#   BENCH_DEPTH=16         pipelining depth of the "depth" rows
#   BENCH_MEM_KEYS=1000000 keys for the memory and restart rows (0 skips them)
#   BENCH_RESTART_SIGNAL=KILL  how tpckv is stopped before the restart (KILL
#                          for a crash, TERM for a clean stop)
#   BENCH_VERBOSE=1        also print each run's figures as it finishes
#   BENCH_ONLY=set_3,get_tcp  run only these workloads (ids: get_tcp set_none
#                          get_udp get_d set_d set_always set_3)
#   BENCH_CLUSTER_ARGS='--threads 0'  more serve flags for the 3 replicas. The
#                          default, --threads 0, runs each replica on one
#                          thread: three replicas share this machine's cores
#                          (with serve's default --threads 2 they run 12
#                          threads on 2 cores; '' measures that)
#   BENCH_IDLE_WAIT=30     seconds to wait for other load on the machine to go
#                          before the runs (the figures say how busy it was)
#   SERVE, CLIE, MEMCACHED the binaries (./serve, ./clie, memcached)
#
# Rows that need `clie bench -d/--depth` or `-u/--udp` print "skipped" when
# this clie does not have them.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

SERVE=${SERVE:-./serve}
CLIE=${CLIE:-./clie}
MEMCACHED=${MEMCACHED:-memcached}
SECS=${BENCH_SECONDS:-4}
WARMUP=${BENCH_WARMUP:-1}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNS:-50}
THREADS=${BENCH_THREADS:-2}
KEYS=${BENCH_KEYS:-100000}
DEPTH=${BENCH_DEPTH:-16}
MEM_KEYS=${BENCH_MEM_KEYS:-1000000}
RESTART_SIG=${BENCH_RESTART_SIGNAL:-KILL}
VERBOSE=${BENCH_VERBOSE:-0}
IDLE_WAIT=${BENCH_IDLE_WAIT:-30}
ONLY=${BENCH_ONLY:-}
read -r -a CLUSTER_ARGS <<<"${BENCH_CLUSTER_ARGS---threads 0}"

die() { echo "bench.sh: $*" >&2; exit 2; }
for v in ROUNDS CONNS THREADS KEYS DEPTH; do
    case ${!v} in '' | *[!0-9]* | 0) die "BENCH_$v must be a number from 1" ;; esac
done
case $MEM_KEYS in '' | *[!0-9]*) die "BENCH_MEM_KEYS must be a number" ;; esac
case $IDLE_WAIT in '' | *[!0-9]*) die "BENCH_IDLE_WAIT must be a number" ;; esac
case $SECS in '' | *[!0-9.]* | 0) die "BENCH_SECONDS must be a positive number" ;; esac
case $WARMUP in '' | *[!0-9.]*) die "BENCH_WARMUP must be a number" ;; esac
case $RESTART_SIG in KILL | TERM) ;; *) die "BENCH_RESTART_SIGNAL must be KILL or TERM" ;; esac

# memcached: the issue asks the benchmark to install it when missing.
if ! command -v "$MEMCACHED" >/dev/null; then
    echo "bench.sh: memcached missing, installing it (apt-get install memcached)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends memcached
    MEMCACHED=memcached
fi
for tool in "$SERVE" "$CLIE" "$MEMCACHED" openssl python3; do
    command -v "$tool" >/dev/null || die "$tool missing (make; make deps)"
done

. "$(dirname "$0")/lib.sh"
bench_setup bench.sh

# Does this clie bench have pipelining and UDP yet?
help_bench=$("$CLIE" help bench 2>&1 || true)
has_depth=0
has_udp=0
grep -q -- '--depth' <<<"$help_bench" && has_depth=1
grep -q -- '--udp' <<<"$help_bench" && has_udp=1

cpu_ticks() { # cpu_ticks PID...: utime+stime of the processes, in clock ticks
    local p s=0 f
    for p in "$@"; do
        # Fields after the ")" of the command name: utime is the 12th, stime the 13th.
        f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        s=$((s + $(awk '{ print $12 + $13 }' <<<"$f")))
    done
    echo "$s"
}

read -r -a P < <(free_ports 9)
mc_port=${P[0]}
none_port=${P[1]}
always_port=${P[2]}
cport=("${P[3]}" "${P[4]}" "${P[5]}")
pport=("${P[6]}" "${P[7]}" "${P[8]}")
replicas="1@127.0.0.1:${pport[0]},2@127.0.0.1:${pport[1]},3@127.0.0.1:${pport[2]}"

mc_user=()
[ "$(id -u)" -ne 0 ] || mc_user=(-u root) # memcached refuses root without -u
start_memcached() { # start_memcached PORT: sets mc_pid
    "$MEMCACHED" "${mc_user[@]}" -l 127.0.0.1 -p "$1" -U "$1" -t 2 -m 1024 -c 4096 \
        >"$tmp/memcached.$1.log" 2>&1 &
    mc_pid=$!
    pids+=("$mc_pid")
}

openssl rand -hex 32 >"$tmp/secret"
chmod 600 "$tmp/secret"

start_memcached "$mc_port"
mc_main=$mc_pid
# No -t/-u: TCP, plus UDP since the address is loopback.
"$SERVE" -s 127.0.0.1 -p "$none_port" -d "$tmp/none" --fsync none -l warn \
    --log-file "$tmp/none.log" &
none_pid=$!
pids+=("$none_pid")
"$SERVE" -s 127.0.0.1 -t -p "$always_port" -d "$tmp/always" --fsync always -l warn \
    --log-file "$tmp/always.log" &
always_pid=$!
pids+=("$always_pid")
cl_pids=()
for i in 1 2 3; do
    "$SERVE" --id "$i" --replicas "$replicas" --secret-file "$tmp/secret" -s 127.0.0.1 -t \
        -p "${cport[i - 1]}" -d "$tmp/r$i" --fsync always -l warn --log-file "$tmp/r$i.log" \
        "${CLUSTER_ARGS[@]}" &
    cl_pids+=($!)
    pids+=($!)
done
wait_ready 0 "$mc_port" "$none_port" "$always_port"
wait_ready 2 "${cport[@]}"

common=(--key-size 32 --value-size 100 --keys "$KEYS")
# Preload the key space of the gets, once, on the servers the gets run on.
for p in "$none_port" "$mc_port"; do
    "$CLIE" -p "$p" bench -c "$CONNS" -T "$THREADS" "${common[@]}" --preload -n 1 --json \
        >"$tmp/preload.$p.json" 2>"$tmp/preload.$p.err" ||
        { cat "$tmp/preload.$p.err" >&2; die "preload of port $p failed"; }
done

res=$tmp/res
mkdir -p "$res"

# run OUT SERVER_PIDS PORTS CONNS CLIE_ARGS...: one clie bench per port (CONNS
# is a comma-separated list, one count per port), all at once; their JSON in
# OUT.N.json; OUT.cpu gets "server_cpu_% clie_cpu_%" over the run.
run() {
    local out=$1 spids=$2 ports=$3 conns=$4
    shift 4
    local -a sp=() cs=() sv=() bp=()
    local i rc=0 t0 t1 c0 c1
    IFS=, read -r -a sp <<<"$ports"
    IFS=, read -r -a cs <<<"$conns"
    IFS=, read -r -a sv <<<"$spids"
    c0=$(cpu_ticks "${sv[@]}")
    m0=$(head -n 1 /proc/stat)
    t0=$(date +%s.%N)
    for i in "${!sp[@]}"; do
        {
            TIMEFORMAT='%U %S'
            time "$CLIE" -p "${sp[i]}" bench -c "${cs[i]}" -T "$THREADS" --duration "$SECS" \
                --warmup "$WARMUP" "${common[@]}" "$@" --json >"$out.$i.json" 2>"$out.$i.err"
        } 2>"$out.$i.time" &
        bp+=($!)
    done
    for i in "${!bp[@]}"; do wait "${bp[i]}" || rc=$?; done
    t1=$(date +%s.%N)
    m1=$(head -n 1 /proc/stat)
    c1=$(cpu_ticks "${sv[@]}")
    if [ "$rc" -ne 0 ]; then
        echo "bench.sh: clie bench failed (exit $rc) for $out:" >&2
        cat "$out".*.err >&2
        exit 1
    fi
    cat "$out".*.time | awk -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v t0="$t0" -v t1="$t1" \
        '{ u += $1 + $2 } END { w = t1 - t0; printf "%.0f %.0f ", 100 * c / hz / w, 100 * u / w }' \
        >"$out.cpu"
    # The whole machine: busy % of all cores, and the softirq share (loopback
    # networking that no process is charged for).
    printf '%s\n%s\n' "$m0" "$m1" | awk '{ t = 0; for (i = 2; i <= 9; i++) t += $i
        tot[NR] = t; idle[NR] = $5 + $6; si[NR] = $8 }
        END { d = tot[2] - tot[1]; if (d <= 0) d = 1
              printf "%.0f %.0f\n", 100 * (1 - (idle[2] - idle[1]) / d), 100 * (si[2] - si[1]) / d }' \
        >>"$out.cpu"
    if [ "$VERBOSE" = 1 ]; then
        python3 "$tmp/report.py" one "$out"
    fi
}

# The report: medians over rounds, merged histograms for parallel processes.
cat >"$tmp/report.py" <<'EOF'
import glob, json, os, statistics, sys

sys.path.insert(0, "bench")  # bench.sh runs from the repository root
import bench_hist

def load(prefix):
    """One run (maybe several clie processes): ops, p50, p99 (us), errors,
    misses, server cpu %, clie cpu %."""
    runs = [json.load(open(p)) for p in sorted(glob.glob(prefix + ".*.json"))]
    ops, errors, pct = bench_hist.merge(runs)
    misses = sum(r["measured"].get("misses", 0) for r in runs)
    # Timeouts, lost requests, dropped connections (UDP: udp_timeouts).
    probs = sum(r.get(k, 0) or 0 for r in runs for k in
                ("timeouts", "udp_timeouts", "lost", "disconnects", "conn_failures"))

    if len(runs) == 1 and runs[0]["latency"]:
        p50, p99 = runs[0]["latency"]["p50"], runs[0]["latency"]["p99"]
    else:
        p50, p99 = pct(50), pct(99)
    cpu = open(prefix + ".cpu").read().split()
    return dict(ops=ops, p50=p50, p99=p99, errors=errors, misses=misses, probs=probs,
                scpu=float(cpu[0]), ccpu=float(cpu[1]), busy=float(cpu[2]), sirq=float(cpu[3]))

def us(v):
    if v < 1000:
        return f"{v:.0f}us"
    if v < 10000:
        return f"{v / 1000:.2f}ms"
    return f"{v / 1000:.1f}ms"

def fmt_ops(v):
    return f"{v:,.0f}"

if sys.argv[1] == "one":
    r = load(sys.argv[2])
    print(f"  {os.path.basename(sys.argv[2]):<28} {fmt_ops(r['ops']):>10} ops/s  "
          f"p50 {us(r['p50'])}  p99 {us(r['p99'])}  errors {r['errors']}  "
          f"cpu server {r['scpu']:.0f}% clie {r['ccpu']:.0f}%, machine busy {r['busy']:.0f}% "
          f"(softirq {r['sirq']:.0f}%)")
    sys.exit(0)

# report RESDIR ROUNDS: rows from RESDIR/rows (tab-separated:
# id, label, tpckv prefix, memcached prefix or "-", target ops, target p99 us,
# or "skip" and a reason), extra rows from RESDIR/extra.
resdir, rounds = sys.argv[2], int(sys.argv[3])
fmt = "{:<34} {:>10} {:>10} {:>6} {:>15} {:>15} {:>20} {:>5}"
print(fmt.format("workload", "tpckv", "memcached", "ratio", "tpckv p50/p99",
                 "memc p50/p99", "target", "met?"))
print(fmt.format("", "ops/s", "ops/s", "", "", "", "", ""))
notes, noted = [], set()
for line in open(os.path.join(resdir, "rows")):
    f = line.rstrip("\n").split("\t")
    if f[1] == "skip":
        print(f"{f[0]:<34} skipped: {f[2]}")
        continue
    label, tp, mp, tops, tp99 = f
    def med(prefix):
        rs = [load(f"{prefix}.{i}") for i in range(1, rounds + 1)]
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        for k in ("errors", "misses", "probs"):
            m[k] = sum(r[k] for r in rs)
        m["all_ops"] = [r["ops"] for r in rs]
        return m
    t = med(tp)
    m = med(mp) if mp != "-" else None
    target, met = "-", ""
    if tops != "-":
        target = f">= {int(tops):,}/s"
        ok = t["ops"] >= int(tops)
        if tp99 != "-":
            target += f", p99<{us(float(tp99))}"
            ok = ok and t["p99"] < float(tp99)
        met = "yes" if ok else "NO"
    print(fmt.format(label, fmt_ops(t["ops"]), fmt_ops(m["ops"]) if m else "-",
                     f"{t['ops'] / m['ops']:.2f}" if m and m["ops"] else "-",
                     f"{us(t['p50'])}/{us(t['p99'])}",
                     f"{us(m['p50'])}/{us(m['p99'])}" if m else "-", target, met))
    for who, r, pre in (("tpckv", t, tp), ("memcached", m, mp)):
        if r is None or pre in noted:
            continue
        noted.add(pre)
        notes.append(f"  {label} {who}: rounds " + ", ".join(fmt_ops(x) for x in r["all_ops"])
                     + f" ops/s; cpu server {r['scpu']:.0f}%, clie {r['ccpu']:.0f}%,"
                     + f" machine busy {r['busy']:.0f}% (softirq {r['sirq']:.0f}%)"
                     + (f"; ERRORS {r['errors']}" if r["errors"] else "")
                     + (f"; get misses {r['misses']}" if r["misses"] else "")
                     + (f"; timeouts/lost/dropped {r['probs']}" if r["probs"] else ""))
extra = os.path.join(resdir, "extra")
if os.path.exists(extra):
    for line in open(extra):
        f = line.rstrip("\n").split("\t")
        print(fmt.format(*f, "", "", "", "").rstrip())
print()
print("ops/s of each round; cpu (medians over rounds, warm-up included): % of one core used by the")
print("server(s) and by clie bench (user+sys; 200% = two cores); machine busy: % of all cores not")
print("idle, of which softirq (loopback networking, charged to no process):")
print("\n".join(notes))
EOF

rows=()     # "id<TAB>label<TAB>tpckv-prefix<TAB>memcached-prefix<TAB>target<TAB>p99 target"
declare -A skip=()
skip_udp="clie bench has no -u/--udp yet"
skip_depth="clie bench has no -d/--depth yet"
[ "$has_udp" = 1 ] || skip[get_udp]=$skip_udp
[ "$has_depth" = 1 ] || { skip[get_d]=$skip_depth; skip[set_d]=$skip_depth; }
if [ -n "$ONLY" ]; then
    for id in get_tcp set_none get_udp get_d set_d set_always set_3; do
        [[ ",$ONLY," == *",$id,"* ]] || skip[$id]="not in BENCH_ONLY"
    done
fi

fs_type=$(df -T "$tmp" | awk 'NR == 2 { print $2 }')
fs_dev=$(df -T "$tmp" | awk 'NR == 2 { print $1 }')
echo "tpckv vs memcached (issue 5): clie bench, ${CONNS} connections, clie -T $THREADS,"
echo "32-byte keys ($KEYS), 100-byte values, ${SECS} s per run after ${WARMUP} s of warm-up,"
echo "median of $ROUNDS rounds (tpckv then memcached, workload by workload, round by round)"
echo "machine: $(nproc) cores; $(uname -sr); temp dir on $fs_type ($fs_dev); memcached $("$MEMCACHED" -V | awk '{ print $2 }')"
# Other load on the machine skews every figure: wait up to BENCH_IDLE_WAIT
# seconds for it to go (servers started, idle), then say how busy it was.
busy_1s() { # busy_1s: % of all cores not idle over one second
    local s0 s1
    s0=$(head -n 1 /proc/stat)
    sleep 1
    s1=$(head -n 1 /proc/stat)
    printf '%s\n%s\n' "$s0" "$s1" | awk '{ t = 0; for (i = 2; i <= 9; i++) t += $i
        tot[NR] = t; idle[NR] = $5 + $6 } END { d = tot[2] - tot[1]; if (d <= 0) d = 1
        printf "%.0f", 100 * (1 - (idle[2] - idle[1]) / d) }'
}
busy0=$(busy_1s)
waited=0
while [ "$busy0" -ge 15 ] && [ "$waited" -lt "$IDLE_WAIT" ]; do
    busy0=$(busy_1s)
    waited=$((waited + 1))
done
echo "machine busy before the runs (servers idle, 1 s): ${busy0}% of all cores$(
    [ "$waited" = 0 ] || echo " (after waiting ${waited} s for other load)")$(
    [ "$busy0" -lt 15 ] || echo "  WARNING: other load, figures will be low and noisy")"
echo

all3="${cport[0]},${cport[1]},${cport[2]}"
all3_pids="${cl_pids[0]},${cl_pids[1]},${cl_pids[2]}"
split3="$((CONNS - 2 * (CONNS / 3))),$((CONNS / 3)),$((CONNS / 3))"

# workload id, label, memcached too?, target ops, target p99 (us)
workloads=(
    "get_tcp|get TCP, 1 replica|yes|-|-"
    "set_none|set TCP, 1 replica, fsync none|yes|-|-"
    "get_udp|get UDP, 1 replica|yes|-|-"
    "get_d|get TCP, depth $DEPTH, 1 replica|yes|-|-"
    "set_d|set TCP, depth $DEPTH, fsync none|yes|-|-"
    "set_always|set TCP, 1 replica, fsync always|set_none|60000|-"
    "set_3|set TCP, 3 replicas, fsync always|set_none|30000|10000"
)
for ((r = 1; r <= ROUNDS; r++)); do
    [ "$VERBOSE" = 1 ] && echo "round $r"
    for w in "${workloads[@]}"; do
        IFS='|' read -r id _ _ _ _ <<<"$w"
        [ -z "${skip[$id]:-}" ] || continue
        case $id in
        get_tcp)
            run "$res/$id.tpckv.$r" "$none_pid" "$none_port" "$CONNS" --ratio 0:1
            run "$res/$id.memc.$r" "$mc_main" "$mc_port" "$CONNS" --ratio 0:1 ;;
        set_none)
            run "$res/$id.tpckv.$r" "$none_pid" "$none_port" "$CONNS" --ratio 1:0
            run "$res/$id.memc.$r" "$mc_main" "$mc_port" "$CONNS" --ratio 1:0 ;;
        get_udp)
            run "$res/$id.tpckv.$r" "$none_pid" "$none_port" "$CONNS" --ratio 0:1 --udp
            run "$res/$id.memc.$r" "$mc_main" "$mc_port" "$CONNS" --ratio 0:1 --udp ;;
        get_d)
            run "$res/$id.tpckv.$r" "$none_pid" "$none_port" "$CONNS" --ratio 0:1 --depth "$DEPTH"
            run "$res/$id.memc.$r" "$mc_main" "$mc_port" "$CONNS" --ratio 0:1 --depth "$DEPTH" ;;
        set_d)
            run "$res/$id.tpckv.$r" "$none_pid" "$none_port" "$CONNS" --ratio 1:0 --depth "$DEPTH"
            run "$res/$id.memc.$r" "$mc_main" "$mc_port" "$CONNS" --ratio 1:0 --depth "$DEPTH" ;;
        set_always)
            run "$res/$id.tpckv.$r" "$always_pid" "$always_port" "$CONNS" --ratio 1:0 ;;
        set_3)
            run "$res/$id.tpckv.$r" "$all3_pids" "$all3" "$split3" --ratio 1:0 ;;
        esac
    done
done

: >"$res/rows"
for w in "${workloads[@]}"; do
    IFS='|' read -r id label mc tops tp99 <<<"$w"
    if [ -n "${skip[$id]:-}" ]; then
        printf '%s\tskip\t%s\n' "$label" "${skip[$id]}" >>"$res/rows"
        continue
    fi
    case $mc in
    yes) mprefix=$res/$id.memc ;;
    *) # the same memcached runs as that row, if it ran (BENCH_ONLY)
        mprefix=-
        [ -n "${skip[$mc]:-}" ] || mprefix=$res/$mc.memc ;;
    esac
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$res/$id.tpckv" "$mprefix" "$tops" "$tp99" >>"$res/rows"
done

# Memory and restart, on fresh servers: MEM_KEYS keys of 100-byte values.
if [ "$MEM_KEYS" -gt 0 ]; then
    # The throughput servers are done: stop them so they do not share the CPU.
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
    read -r mport tport < <(free_ports 2)
    start_memcached "$mport"
    mem_mc=$mc_pid
    "$SERVE" -s 127.0.0.1 -t -p "$tport" -d "$tmp/mem" --fsync none -l info \
        --log-file "$tmp/mem.log" &
    mem_tp=$!
    pids+=("$mem_tp")
    wait_ready 0 "$mport" "$tport"
    rss0_t=$(rss_kib "$mem_tp")
    rss0_m=$(rss_kib "$mem_mc")
    for p in "$tport" "$mport"; do
        "$CLIE" -p "$p" bench -c "$CONNS" -T "$THREADS" --key-size 32 --value-size 100 \
            --keys "$MEM_KEYS" --preload -n 1 --json >"$tmp/mem.$p.json" 2>"$tmp/mem.$p.err" ||
            { cat "$tmp/mem.$p.err" >&2; die "preload of $MEM_KEYS keys on port $p failed"; }
    done
    rss_t=$(rss_kib "$mem_tp")
    rss_m=$(rss_kib "$mem_mc")
    items_t=$(stats "$tport" | sed -n 's/^curr_items //p')
    items_m=$(stats "$mport" | sed -n 's/^curr_items //p')
    # Restart tpckv on the same data dir and time it until "listening on".
    kill "-$RESTART_SIG" "$mem_tp"
    wait "$mem_tp" 2>/dev/null || true
    pids=("$mem_mc")
    : >"$tmp/mem2.log"
    t0=$(date +%s%N)
    "$SERVE" -s 127.0.0.1 -t -p "$tport" -d "$tmp/mem" --fsync none -l info \
        --log-file "$tmp/mem2.log" &
    mem_tp=$!
    pids+=("$mem_tp")
    for _ in $(seq 120000); do
        grep -q 'listening on' "$tmp/mem2.log" && break
        kill -0 "$mem_tp" 2>/dev/null || { cat "$tmp/mem2.log" >&2; die "serve did not restart"; }
        sleep 0.005
    done
    t1=$(date +%s%N)
    restart_ms=$(((t1 - t0) / 1000000))
    recovered=$(grep -m1 'recovered' "$tmp/mem2.log" | sed 's/^[^ ]* [^ ]* *//')
    items_r=$(stats "$tport" | sed -n 's/^curr_items //p')
    rss_r=$(rss_kib "$mem_tp")
    printf '%s\t%s\t%s\t%s\n' \
        "RSS, $MEM_KEYS keys of 100 B (MiB)" "$((rss_t / 1024))" "$((rss_m / 1024))" \
        "$(awk -v a="$rss_t" -v b="$rss_m" 'BEGIN { printf "%.2f", a / b }')" >"$res/extra"
    printf '%s\t%s\t%s\t%s\n' "restart with $MEM_KEYS keys (ms)" "$restart_ms" "-" "-" >>"$res/extra"
fi

python3 "$tmp/report.py" report "$res" "$ROUNDS"
echo
if [ "$MEM_KEYS" -gt 0 ]; then
    echo "memory: VmRSS after preloading $MEM_KEYS keys (clie bench --preload -n 1) into fresh"
    echo "  servers, tpckv --fsync none (items $items_t, RSS before $((rss0_t / 1024)) MiB) and"
    echo "  memcached -m 1024 (items $items_m, RSS before $((rss0_m / 1024)) MiB)."
    echo "restart: tpckv stopped with SIG$RESTART_SIG, started again on its data dir; wall time"
    echo "  from exec to its \"listening on\" log line (polled every 5 ms): $restart_ms ms;"
    echo "  curr_items after: $items_r, RSS after: $((rss_r / 1024)) MiB. Its log:"
    echo "  $recovered"
    echo
fi
cat <<EOF
Servers: memcached $("$MEMCACHED" -V | awk '{ print $2 }') -t 2 -m 1024 (TCP, and UDP with -U); tpckv
1 replica --fsync none (gets, fsync-none sets, UDP and depth rows: TCP, plus
UDP as its address is loopback), 1 replica --fsync always, 3 replicas
--fsync always${CLUSTER_ARGS[*]:+ ${CLUSTER_ARGS[*]}} (serve's other flags at their defaults: --threads 2). Gets hit $KEYS keys preloaded once at the start (misses are
listed above if any). clie bench is closed-loop: each connection has one
request outstanding ($DEPTH in the depth rows; UDP: $CONNS sockets, one each);
ops/s counts every reply; p50/p99 from writing a request to reading its
reply. The fsync-always rows have no memcached run of their own: their
memcached column is the "set TCP, 1 replica, fsync none" row's memcached
runs (the same workload). 3 replicas: the load is spread over the three
replicas, three clie bench processes at once ($split3 connections), ops/s
summed and p50/p99 from their merged latency histograms; every set is a 2PC
transaction across all three. The load generator (clie bench -T $THREADS;
with -T 1 it caps memcached's figures) and every server share this
machine's $(nproc) cores: the figures compare setups on one machine, not
capacity. Ratio = tpckv ops/s / memcached ops/s (RSS row: tpckv MiB / memcached MiB).
EOF
