#!/usr/bin/env bash
# tests/fuzz/run.sh - runs the fuzz targets (see the Makefile's fuzz rules).
#
#   run.sh fuzz   BIN_DIR TARGET...  each libFuzzer target for FUZZ_SECONDS
#                                    (default 60), one after the other
#   run.sh merge  BIN_DIR TARGET...  adds what fuzz runs found to the
#                                    committed corpus, minimized (-merge=1)
#   run.sh replay BIN_DIR TARGET...  every corpus and crash file through each
#                                    target once (replay_main.c builds)
#
# Corpora: tests/fuzz/corpus/<target>/ (committed: seeds and merged finds);
# a fuzz run writes new inputs to build/fuzz/corpus/<target>/ and crash,
# leak, timeout and oom inputs to tests/fuzz/crashes/<target>/. A crash
# input stays there once fixed, so replay keeps checking it.
# Prints a line per target, then "N passed, N failed"; exits 1 on a failure.
set -uo pipefail
cd "$(dirname "$0")/../.."

mode=${1:?usage: run.sh fuzz|merge|replay BIN_DIR TARGET...}
bin=${2:?BIN_DIR}
shift 2
seconds=${FUZZ_SECONDS:-60}
passed=0
failed=0

# Longest input each target is given: past every limit it tests (a 2048-byte
# line, a handshake frame, a few records) without slowing it down.
max_len() {
    case $1 in
    fuzz_proto | fuzz_peer) echo 4096 ;;
    *) echo 8192 ;;
    esac
}

# "#123 DONE cov: 812 ft: 2345 corp: 120/9Kb ..." -> "cov 812 ft 2345 corpus 120"
last_status() {
    grep -E '^#[0-9]+' "$1" | tail -n 1 |
        sed -nE 's/.*cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/cov \1, ft \2, corpus \3/p'
}

stat_of() {
    sed -nE "s/^stat::$2: *([0-9]+).*/\1/p" "$1" | tail -n 1
}

for t in "$@"; do
    corpus=tests/fuzz/corpus/$t
    crashes=tests/fuzz/crashes/$t
    case $mode in
    fuzz)
        work=build/fuzz/corpus/$t
        log=build/fuzz/$t.log
        mkdir -p "$work" "$crashes" "$corpus"
        before=$(ls -A "$crashes" | wc -l)
        start=$(date +%s)
        "$bin/$t" "$work" "$corpus" "$crashes" -max_total_time="$seconds" \
            -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
            -print_final_stats=1 -artifact_prefix="$crashes/" >"$log" 2>&1
        rc=$?
        secs=$(($(date +%s) - start))
        runs=$(stat_of "$log" number_of_executed_units)
        speed=$(stat_of "$log" average_exec_per_sec)
        new=$(stat_of "$log" new_units_added)
        after=$(ls -A "$crashes" | wc -l)
        if [ "$rc" -eq 0 ] && [ "$after" -eq "$before" ]; then
            echo "$t: ok, ${secs} s, ${runs:-?} runs, ${speed:-?} exec/s, $(last_status "$log"), ${new:-0} new inputs"
            passed=$((passed + 1))
        else
            echo "$t: FAILED (exit $rc) after ${secs} s; log $log; new inputs in $crashes:"
            ls -t "$crashes" | head -n $((after - before > 0 ? after - before : 1)) | sed 's/^/    /'
            grep -E 'ERROR|property broken|SUMMARY' "$log" | head -n 5 | sed 's/^/    /'
            failed=$((failed + 1))
        fi
        ;;
    merge)
        work=build/fuzz/corpus/$t
        mkdir -p "$corpus" "$work"
        before=$(ls -A "$corpus" | wc -l)
        if "$bin/$t" -merge=1 -max_len="$(max_len "$t")" "$corpus" "$work" \
            >"build/fuzz/$t.merge.log" 2>&1; then
            echo "$t: corpus $before -> $(ls -A "$corpus" | wc -l) files, $(du -sk --apparent-size "$corpus" | cut -f1) KiB"
            passed=$((passed + 1))
        else
            echo "$t: merge FAILED; log build/fuzz/$t.merge.log"
            failed=$((failed + 1))
        fi
        ;;
    replay)
        dirs=()
        for d in "$corpus" "$crashes"; do
            [ -d "$d" ] && dirs+=("$d")
        done
        log=$bin/$t.log
        if [ ${#dirs[@]} -eq 0 ]; then
            echo "$t: FAILED: no corpus in $corpus"
            failed=$((failed + 1))
        elif out=$("$bin/$t" "${dirs[@]}" 2>"$log"); then
            echo "$out"
            passed=$((passed + 1))
        else
            echo "$t: FAILED on an input; the end of $log:"
            tail -n 30 "$log" | sed 's/^/    /'
            failed=$((failed + 1))
        fi
        ;;
    *)
        echo "run.sh: unknown mode $mode" >&2
        exit 2
        ;;
    esac
done
echo "fuzz-$mode: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
