#!/usr/bin/env bash
# Call-rate benchmark: SIPp calls (INVITE, 180, 200, ACK, BYE, 200; hold time 0) at
# increasing rates, through three paths measured in the same run:
#   direct   - SIPp uac straight to SIPp uas (what SIPp itself sustains on this machine),
#   kamailio - through Kamailio as a stateful relay to the same next hop (a peer middlebox),
#   sipward  - through the gateway (inside phone -> NAT rule -> outside proxy).
# For each path it reports the highest rate with zero failed calls, and for the two
# middleboxes the CPU they used at that rate and their peak memory. Results go to
# bench/results/calls-DATE.md. Loopback only (127.60.x.x).
#
# Usage: bench/calls/run.sh [seconds per step, default 5] [rates, default "100 200 400 800 1600 3200"]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs="${1:-5}"
rates="${2:-100 200 400 800 1600 3200}"
work="$(mktemp -d /tmp/sipward-bench-calls.XXXXXX)"
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true' EXIT

cargo build --release -q -p sipward
bin=target/release/sipward
lan=127.60.0.1; wan=127.60.1.1; proxy=127.60.1.10; phone=127.60.0.20; kam=127.60.1.5

cat > "$work/sipward.toml" <<TOML
[gateway]
name = "sipward-bench"
events = "off"
[[interface]]
name = "lan"
address = "$lan"
networks = ["127.60.0.0/24"]
inside = true
[[interface]]
name = "wan"
address = "$wan"
networks = ["127.60.1.0/24"]
[[address]]
name = "phones"
network = "127.60.0.0/24"
[[address]]
name = "proxy"
host = "$proxy:5060"
[alg.sip]
max_sessions_per_id = 100000
# INVITE transactions linger 32 s after their final response (RFC 6026): at thousands of
# calls a second the default table (20000) is the limit, not the gateway.
max_transactions = 500000
max_dialogs = 100000
# One SIPp "phone" places every call: per-source limits sized for a load generator.
[protection]
new_requests_per_second = 100000
new_requests_burst = 100000
dialog_requests_per_second = 200000
dialog_requests_burst = 200000
responses_per_second = 200000
responses_burst = 200000
admission_per_second = 100000
admission_burst = 100000
[service.sip]
protocol = "udp"
port = 5060
alg = "sip"
[[rule]]
action = "nat"
from = "lan"
source = "phones"
to = "wan"
destination = "proxy"
service = "sip"
[[rule]]
action = "allow"
from = "wan"
source = "proxy"
to = "core"
service = "sip"
TOML

cat > "$work/kamailio.cfg" <<KAM
#!KAMAILIO
log_stderror=yes
debug=1
fork=yes
# One UDP worker: with two, Kamailio handles a call's 180 and 200 in parallel workers and
# sometimes sends them in the wrong order, which strict SIPp counts as failed calls
# (seen at 100 calls/s).
children=1
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "maxfwd.so"
loadmodule "pv.so"
request_route {
    # A stateful relay to one next hop: the job the gateway does for inside phones.
    if (!mf_process_maxfwd_header("10")) { sl_send_reply("483", "Too Many Hops"); exit; }
    \$du = "sip:$proxy:5060";
    t_relay();
}
KAM

# cpu_ticks PID...: user+system clock ticks of the processes.
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
# peak_kib PID...: sum of the processes' peak resident memory (VmHWM).
peak_kib() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmHWM/{print $2}' "/proc/$p/status"))); done; echo $t; }
hz=$(getconf CLK_TCK)

# step TARGET RATE: runs RATE*secs calls at RATE/s towards TARGET; exit 0 iff none failed.
step() {
    local target=$1 rate=$2 calls=$(( $2 * secs ))
    sipp -sn uas -i $proxy -p 5060 -m "$calls" -nostdin -timeout $((secs + 20))s >/dev/null 2>&1 &
    local uas=$!
    sleep 0.3
    local ok=0
    sipp -sn uac "$target" -i $phone -p 5070 -r "$rate" -m "$calls" -d 0 -l $((rate * 4)) \
        -nostdin -timeout $((secs + 15))s -timeout_error -recv_timeout 5s \
        -trace_screen -screen_file "$work/uac-$rate.txt" >/dev/null 2>&1 || ok=$?
    wait $uas 2>/dev/null || true
    awk '/Failed call/ {print $NF; exit}' "$work/uac-$rate.txt" > "$work/last-failed" 2>/dev/null || echo "?" > "$work/last-failed"
    return $ok
}

# sweep NAME TARGET PIDS...: climbs the rates; prints "name max_rate cpu_cores peak_mib".
sweep() {
    local name=$1 target=$2; shift 2
    local best=0 t0 t1 cpu=0
    for rate in $rates; do
        t0=0; [ $# -gt 0 ] && t0=$(cpu_ticks "$@")
        if step "$target" "$rate"; then
            best=$rate
            t1=0; [ $# -gt 0 ] && t1=$(cpu_ticks "$@")
            cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="$secs" 'BEGIN{printf "%.2f", (b-a)/hz/s}')
            echo "  $name: $rate calls/s ok (cpu ${cpu} core)" >&2
        else
            echo "  $name: $rate calls/s FAILED ($(cat "$work/last-failed") failed calls)" >&2
            break
        fi
        sleep 1
    done
    local mem="-"
    [ $# -gt 0 ] && mem=$(awk -v k="$(peak_kib "$@")" 'BEGIN{printf "%.1f", k/1024}')
    echo "$name $best $cpu $mem"
}

echo "direct (SIPp to SIPp):" >&2
direct=$(sweep direct "$proxy:5060")

echo "kamailio relay:" >&2
kamailio -f "$work/kamailio.cfg" -l udp:$kam:5060 -P "$work/kam.pid" -Y "$work" -w "$work" -DD -E \
    -m 256 -M 16 2>"$work/kamailio.log" &
sleep 1.5
[ -s "$work/kam.pid" ] || { echo "kamailio did not start:"; tail -5 "$work/kamailio.log"; exit 1; }
kpids=$(pgrep -f "kamailio -f $work/kamailio.cfg" | tr '\n' ' ' || true)
# shellcheck disable=SC2086
kam_row=$(sweep kamailio "$kam:5060" $kpids)
kill "$(cat "$work/kam.pid")" 2>/dev/null || true
rm -f "$work/kam.pid"
sleep 1

echo "sipward:" >&2
"$bin" run --config "$work/sipward.toml" > "$work/sipward.log" 2>&1 &
gw=$!
echo $gw > "$work/sipward.pid"
sleep 0.5
sw_row=$(sweep sipward "$lan:5060" $gw)
kill $gw 2>/dev/null || true

mkdir -p bench/results
out="bench/results/calls-$(date +%F).md"
{
    echo "# Call-rate benchmark $(date -u +%FT%TZ)"
    echo
    echo "$(nproc) cores; ${secs} s per step; rates tried: $rates calls/s; hold time 0."
    echo "A step passes when every call completes (SIPp strict). CPU: the middlebox's CPU"
    echo "seconds per second at its highest passing rate. Memory: peak resident set."
    echo
    echo "| path | highest rate with 0 failed calls | CPU (cores) at that rate | peak RSS (MiB) |"
    echo "|---|---|---|---|"
    for row in "$direct" "$kam_row" "$sw_row"; do
        # shellcheck disable=SC2086
        set -- $row
        echo "| $1 | $2 | $3 | $4 |"
    done
    echo
    # shellcheck disable=SC2086
    set -- $sw_row; s=$2; sc=$3
    # shellcheck disable=SC2086
    set -- $kam_row; k=$2; kc=$3
    echo "sipward / kamailio: highest rate $(awk -v a="$s" -v b="$k" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a" }'),"
    echo "CPU per call at its highest rate $(awk -v a="$sc" -v ar="$s" -v b="$kc" -v br="$k" 'BEGIN{ if (b>0 && ar>0 && br>0) printf "%.2f", (a/ar)/(b/br); else print "n/a" }')."
} | tee "$out"
