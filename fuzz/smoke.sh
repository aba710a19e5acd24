#!/usr/bin/env bash
# Runs every fuzz target for a short time (default 20 s each); fails on any crash.
# Uses the stable toolchain: RUSTC_BOOTSTRAP unlocks the sanitizer flags cargo-fuzz needs.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-20}"
export RUSTC_BOOTSTRAP=1
for target in parse_message parse_sdp edit gateway framing; do
    mkdir -p "corpus/$target"
    cp -n seeds/$target/* "corpus/$target/" 2>/dev/null || true
    echo "fuzz smoke: $target for ${seconds}s"
    mkdir -p logs
    status=0
    dict=()
    if [ -f "$target.dict" ]; then dict=(-dict="$target.dict"); fi
    cargo +stable fuzz run "$target" "corpus/$target" -- "${dict[@]}" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
        > "logs/smoke-$target.log" 2>&1 || status=$?
    grep -E "stat::number_of_executed_units|ERROR|panicked|Done" "logs/smoke-$target.log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "logs/smoke-$target.log"
        echo "fuzz smoke: $target FAILED (exit $status)"
        exit 1
    fi
done
echo "fuzz smoke: all targets ran without a crash"
