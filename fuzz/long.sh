#!/usr/bin/env bash
# Long fuzzing campaign: every target in turn for N seconds (default 1800) at low CPU
# priority (one core stays free for other work), then a summary of executions per
# target in results/long-run-DATE.md.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-1800}"
export RUSTC_BOOTSTRAP=1
mkdir -p results logs
targets=(parse_message parse_sdp edit gateway framing)
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    cp -n seeds/$t/* "corpus/$t/" 2>/dev/null || true
    cargo +stable fuzz build "$t"
done
for t in "${targets[@]}"; do
    echo "long fuzz: $t for ${seconds}s"
    status=0
    dict=()
    if [ -f "$t.dict" ]; then dict=(-dict="$t.dict"); fi
    nice -n 19 cargo +stable fuzz run "$t" "corpus/$t" -- "${dict[@]}" -max_total_time="$seconds" \
        -rss_limit_mb=2048 -print_final_stats=1 > "logs/$t.log" 2>&1 || status=$?
    echo "exit $status" >> "logs/$t.log"
done
out="results/long-run-$(date +%F).md"
{
    echo "# Fuzzing campaign $(date -u +%FT%TZ), ${seconds}s per target, one target at a time, nice 19, on $(nproc) cores"
    echo
    echo "| target | executions | crashes | exit |"
    echo "|---|---|---|---|"
    for t in "${targets[@]}"; do
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
        crashes=$(grep -c 'ERROR: libFuzzer\|panicked' "logs/$t.log" || true)
        code=$(grep -o '^exit [0-9]*' "logs/$t.log" | tail -1)
        echo "| $t | ${execs:-?} | $crashes | ${code#exit } |"
    done
} | tee "$out"
