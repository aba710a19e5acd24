#!/usr/bin/env bash
# Media relay benchmark: sipward's relay vs rtpengine (userspace, one thread), same
# load, same run. Usage: bench/media/run.sh [seconds per step] [stream counts...]
# PIN=0 / RT=0 turn off the CPU pinning / real-time scheduling of both relays.
# Writes bench/results/media-DATE.md; progress goes to the terminal.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
command -v rtpengine >/dev/null || bash "$root/scripts/install-deps.sh"
secs="${1:-2}"
shift || true
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1 100 2000)
echo "building the media benchmark..."
cargo build --release --manifest-path "$here/Cargo.toml" 2>&1 | tail -1
mkdir -p "$root/bench/results"
out="$root/bench/results/media-$(date +%F).md"
table="$("$here/target/release/sipward-bench-media" "$secs" "${counts[@]}")"
{
    echo "# Media relay benchmark $(date -u +%FT%TZ)"
    echo
    echo "Machine: $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)."
    echo "rtpengine $(rtpengine --version 2>&1 | head -1 | awk '{print $NF}') userspace (--table=-1), one worker thread; sipward's relay thread."
    echo "One generator thread pinned to CPU 0, each relay pinned to CPU 1 under SCHED_FIFO 10 (sipward: [relay] cpu and"
    echo "realtime_priority; rtpengine: taskset -a, --scheduling=fifo --priority=10); ${secs} s per step; 172-byte RTP packets."
    echo "Throughput: evenly spaced batches of 16 packets (sendmmsg) at rising rates, then two halvings between the last rate passed"
    echo "and the first failed; the highest rate forwarded with under 1% loss (forwarded: what reached the receiving socket,"
    echo "including what it dropped because the generator, busy sending, read too late);"
    echo "per core-second = forwarded / relay CPU seconds."
    echo "Latency: at half that rate, packets sent one at a time evenly spaced, timed from send to the kernel's arrival"
    echo "timestamp at the receiver (SO_TIMESTAMPNS), minus the same load sent directly; a send the generator misses by"
    echo "over 50 µs is skipped, not burst; 250 ms warm-up untimed. Memory: relay RSS growth / streams."
    echo
    echo "$table"
} | tee "$out"
echo "wrote $out"
