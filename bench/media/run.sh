#!/usr/bin/env bash
# Media relay benchmark: sipward's relay vs rtpengine (userspace, one thread), same
# load, same run. Usage: bench/media/run.sh [seconds per step] [stream counts...]
# PIN=0 / RT=0 turn off the CPU pinning / real-time scheduling of both relays.
# Appends to bench/results/media-DATE.md; progress goes to the terminal.
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
    echo "rtpengine $(rtpengine --version 2>&1 | head -1 | awk '{print $NF}') userspace (--table=-1), one worker thread; sipward's relay thread,"
    echo "as configured by default (sipward) and with [relay] busy_poll_us = 100 (sipward-poll: after work it polls for"
    echo "100 µs before sleeping, for at most 70 % of each 10 ms). floor: the least a userspace relay can do (bench/media/src/floor.rs:"
    echo "epoll, then one recv and one sendto per packet; no checks, no counters), placed like the others."
    echo "One generator thread pinned to CPU 0, each relay pinned to CPU 1 under SCHED_FIFO 10 (sipward: [relay] cpu and"
    echo "realtime_priority; rtpengine: taskset -a, --scheduling=fifo --priority=10); ${secs} s per step; 172-byte RTP packets."
    echo "Throughput, two sweeps at rising rates, each followed by two halvings between the last rate passed and the first"
    echo "failed: (1) batched: evenly spaced batches of 16 packets (sendmmsg, to 16 streams); (2) evenly spaced: one packet"
    echo "at a time (a send the generator misses by over 50 µs is skipped, not burst). The highest rate forwarded with"
    echo "under 1% loss while the generator offered at least 90% of it (forwarded: what reached the receiving socket,"
    echo "including what it dropped because the generator, busy sending, read too late); per core-second = forwarded /"
    echo "relay CPU seconds. A batch wakes a relay once for 16 packets, so the batched rates are the higher. A failed step"
    echo "is run again once before it ends the sweep (a stall of the host can fail one step alone)."
    echo "Kept up (second table): the same sweeps, counting only the steps, from the bottom up to the first one that"
    echo "failed three times, after which the relay held at most 2 ms of the offered traffic (besides the last batch) when the"
    echo "load stopped. Loss alone lets a relay that falls behind pass: each stream's socket buffer absorbs the backlog"
    echo "and the generator waits 300 ms for it, so a step can pass with tens of ms of media queued; for media that is"
    echo "delay, not forwarding."
    echo "Latency: at half the highest evenly spaced rate the relay kept up with (the same kind of load as the latency run,"
    echo "one packet at a time; above that rate a relay queues, and the run would time its queue),"
    echo "timed from send to the kernel's arrival timestamp at the receiver (SO_TIMESTAMPNS), minus the same load sent"
    echo "directly; 250 ms warm-up untimed, 2 s timed. CPU 1 stolen: the steal time of the relays' CPU during that run"
    echo "(/proc/stat, 10 ms ticks): the host ran something else there, and packets waited; a latency run during which it"
    echo "stole 20 ms or more is run again, at most twice, and the cell says so. Memory: relay RSS growth / streams."
    echo
    echo "$table"
} | tee -a "$out"
echo "wrote $out"
