#!/usr/bin/env bash
# Lists the processes that carry the test run's marker (SIPWARD_TEST_RUN=<marker> in the
# environment they were started with: everything the suite started, directly or through
# the tools it ran, inherits it), except the PIDs given after the marker. With --kill it
# also kills them. Exits 1 when any is alive.
# Usage: env -u SIPWARD_TEST_RUN scripts/leftovers.sh [--kill] MARKER [PID...]
set -uo pipefail
kill_them=0
if [ "${1:-}" = "--kill" ]; then kill_them=1; shift; fi
marker="$1"; shift
declare -A spared=()
for p in "$@"; do spared[$p]=1; done
found=0
for env_file in /proc/[0-9]*/environ; do
    pid=${env_file#/proc/}; pid=${pid%/environ}
    [ -n "${spared[$pid]:-}" ] && continue
    [ "$pid" = "$$" ] && continue
    if { tr "\0" "\n" < "$env_file"; } 2>/dev/null | grep -qxF "SIPWARD_TEST_RUN=$marker"; then
        state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo "?")
        [ "$state" = "Z" ] && continue
        found=1
        echo "left behind by the test suite: pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | cut -c1-200)"
        [ "$kill_them" = 1 ] && kill -KILL "$pid" 2>/dev/null
    fi
done
exit "$found"
