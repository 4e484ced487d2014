#!/usr/bin/env bash
# Run cargo-fuzz targets for a bounded time each and print, per target: executions, seconds,
# crashes, corpus size. Usage: fuzz/run.sh SECONDS TARGET... (run from the repository root).
# FUZZ_PARALLEL=N runs N targets at a time; FUZZ_LOG_DIR keeps each target's libFuzzer log.
# The working corpus is fuzz/corpus-work/<target> (not committed), seeded from the committed
# fuzz/corpus/<target>; crashes land in fuzz/artifacts/<target>/.
set -u
secs=$1; shift
cd "$(dirname "$0")" || exit 1
logs=${FUZZ_LOG_DIR:-corpus-work/logs}
mkdir -p "$logs"
parallel=${FUZZ_PARALLEL:-1}

run_one() {
    local t=$1
    mkdir -p "corpus-work/$t" "artifacts/$t"
    cargo +nightly fuzz run -s none "$t" "corpus-work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -max_len=8192 -timeout=10 -rss_limit_mb=1024 \
        -print_final_stats=1 >"$logs/$t.log" 2>&1
    echo $? >"$logs/$t.rc"
}

running=0
for t in "$@"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$parallel" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

status=0
printf '%-14s %12s %8s %8s %8s\n' target executions seconds crashes corpus
for t in "$@"; do
    log=$logs/$t.log
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
    crashes=$(find "artifacts/$t" -type f | wc -l)
    corpus=$(find "corpus-work/$t" -type f | wc -l)
    rc=$(cat "$logs/$t.rc")
    [ "$rc" = 0 ] && [ "$crashes" = 0 ] || status=1
    printf '%-14s %12s %8s %8s %8s\n' "$t" "${execs:-?}" "${took:-?}" "$crashes" "$corpus"
done
exit $status
