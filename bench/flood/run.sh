#!/usr/bin/env bash
# Flood benchmark: sipsak INVITE, REGISTER and OPTIONS floods from one attacking inside
# address (127.0.0.1) through sipward for SECONDS, while SIPp places legitimate calls from
# a phone at 10 calls/s. Reports the offered flood rate, what the gateway saw and
# dropped, the share of legitimate calls that completed, whether the flooder was banned,
# and the gateway's CPU and peak memory. Writes bench/results/flood-DATE.md.
# Usage: bench/flood/run.sh [seconds=30]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
secs="${1:-30}"
command -v sipsak >/dev/null && command -v sipp >/dev/null || bash "$root/scripts/install-deps.sh"
echo "building sipward (release)..."
cargo build --release -p sipward --manifest-path "$root/Cargo.toml" 2>&1 | tail -1
bin="$root/target/release/sipward"
work="$(mktemp -d)"
trap 'pkill -P $$ 2>/dev/null || true; pkill -f "sipp -sn uas -i $proxy" || true; kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true' EXIT
lan=127.80.0.1 wan=127.80.1.1 proxy=127.80.1.10 phone=127.80.0.20
cat > "$work/sipward.toml" <<TOML
[gateway]
name = "sipward-flood"
events = "$work/events.jsonl"
[admin]
listen = "$lan:8080"
token = "flood-bench-token-0123456789"
[[interface]]
name = "lan"
address = "$lan"
networks = ["127.80.0.0/24"]
inside = true
[[interface]]
name = "wan"
address = "$wan"
networks = ["127.80.1.0/24"]
[[address]]
name = "phones"
network = "127.80.0.0/24"
[[address]]
name = "attacker"
host = "127.0.0.1"
[[address]]
name = "proxy"
host = "$proxy:5060"
[alg.sip]
max_sessions_per_id = 1000        # the phone is a call generator
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
action = "nat"
from = "lan"
source = "attacker"
to = "wan"
destination = "proxy"
service = "sip"
[[rule]]
action = "allow"
from = "wan"
source = "proxy"
to = "core"
service = "sip"
[protection]
scanner_filter = "off"            # let the flood limits, not the User-Agent, stop sipsak
TOML
"$bin" run --config "$work/sipward.toml" > "$work/sipward.log" 2>&1 &
gw=$!; echo $gw > "$work/gw.pid"
sleep 0.5
sipp -sn uas -i "$proxy" -p 5060 -nostdin -bg > /dev/null 2>&1 || true
calls=$((secs * 10))
echo "legitimate calls: $calls at 10/s; flood for $((secs - 4)) s from 127.0.0.1"
(cd "$work" && sipp -sn uac "$lan:5060" -i "$phone" -p 5070 -s bob -m "$calls" -r 10 -nostdin \
    -trace_stat -stf calls.csv -fd 1 > /dev/null 2>&1 || true) &
uac=$!
sleep 2
cpu0=$(awk '{print $14+$15}' /proc/$gw/stat)
rss_peak=0
flood_end=$((SECONDS + secs - 4))
sent=0 flood_secs=0
for method in INVITE REGISTER OPTIONS; do
    port=$((5090 + ${#method}))
    printf '%s sip:bob@%s SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%s;branch=z9hG4bKflood%s\r\nFrom: <sip:mallory@%s>;tag=f\r\nTo: <sip:bob@%s>\r\nCall-ID: flood%s@127.0.0.1\r\nCSeq: 1 %s\r\nMax-Forwards: 70\r\nContact: <sip:mallory@127.0.0.1:%s>\r\nContent-Length: 0\r\n\r\n' \
        "$method" "$lan" "$port" "$port" "$lan" "$lan" "$port" "$method" "$port" > "$work/$method.txt"
done
while [ $SECONDS -lt $flood_end ]; do
    pids=()
    for method in INVITE REGISTER OPTIONS; do
        port=$((5090 + ${#method}))
        sipsak -F -e 100000 -L -l "$port" -f "$work/$method.txt" -s "sip:bob@$lan" > "$work/sipsak-$method.out" 2>/dev/null &
        pids+=($!)
    done
    t0=$(date +%s.%N)
    wait "${pids[@]}" || true
    t1=$(date +%s.%N)
    sent=$((sent + 300000))
    flood_secs=$(echo "$flood_secs + $t1 - $t0" | bc)
    rss=$(awk '/VmRSS/ {print $2}' /proc/$gw/status)
    [ "$rss" -gt "$rss_peak" ] && rss_peak=$rss
    printf '  flood: %d requests sent so far, gateway RSS %d KiB, %d s left\n' "$sent" "$rss" $((flood_end - SECONDS))
done
cpu1=$(awk '{print $14+$15}' /proc/$gw/stat)
echo "waiting for the legitimate calls to finish..."
wait $uac || true
api() { curl -s -H "Authorization: Bearer flood-bench-token-0123456789" "http://$lan:8080$1"; }
counters="$(api /api/v1/counters)"
bans="$(api /api/v1/blacklist)"
last="$(tail -1 "$work"/calls*.csv)"
head="$(head -1 "$work"/calls*.csv)"
col() { echo "$head" | tr ';' '\n' | grep -n -x "$1" | cut -d: -f1; }
ok=$(echo "$last" | cut -d';' -f"$(col 'SuccessfulCall(C)')")
failed=$(echo "$last" | cut -d';' -f"$(col 'FailedCall(C)')")
received=$(echo "$counters" | grep -o '"received":[0-9]*' | grep -o '[0-9]*$')
banned=$(echo "$counters" | grep -o '"dropped_banned":[0-9]*' | grep -o '[0-9]*$')
hz=$(getconf CLK_TCK)
rate=$(echo "$sent / $flood_secs" | bc)
cpu=$(echo "scale=2; ($cpu1 - $cpu0) / $hz / $flood_secs" | bc)
share=$(echo "scale=2; 100 * $ok / ($ok + $failed)" | bc)
mkdir -p "$root/bench/results"
out="$root/bench/results/flood-$(date +%F).md"
{
    echo "# Flood benchmark $(date -u +%FT%TZ)"
    echo
    echo "Machine: $(uname -m), $(nproc) cores. sipward release build, default protection (scanner filter off)."
    echo "Flood: three sipsak processes (INVITE, REGISTER, OPTIONS) from 127.0.0.1 for ${flood_secs%.*} s."
    echo "Legitimate: SIPp uac at 10 calls/s from an inside phone, $calls calls, to a SIPp uas outside."
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| flood offered (requests/s) | $rate |"
    echo "| datagrams the gateway received (the rest the kernel dropped at its socket) | $received |"
    echo "| of them dropped as from a banned source | $banned |"
    echo "| legitimate calls completed | $ok of $((ok + failed)) ($share %) |"
    echo "| gateway CPU during the flood (cores) | $cpu |"
    echo "| gateway peak RSS (KiB) | $rss_peak |"
    echo "| flooder banned | $(echo "$bans" | grep -q '"source":"127.0.0.1"' && echo "yes: $(echo "$bans" | grep -o '"reason":"[^"]*"')" || echo no) |"
} | tee "$out"
echo "wrote $out"
