#!/usr/bin/env bash
# sipward against the edge people build from Kamailio + rtpengine, same machine, same
# loopback topology, one after the other. The one command for issue 7:
#
#   bench/compare/run.sh            # ~15 minutes; writes bench/results/compare-DATE.md
#
# It installs the peers if missing (kamailio, rtpengine-daemon, sip-tester, via
# scripts/install-deps.sh), builds sipward and the load tools, and measures each system:
#   calls      SIPp INVITE/180/200/ACK/BYE with SDP (media anchored by the edge): the
#              highest rate with zero failed calls, CPU seconds per 1000 calls there
#   registers  REGISTER with digest (401 then 200 from the upstream registrar): the
#              highest rate with zero failures, CPU seconds per 1000 registrations
#   memory     proportional set size (PSS, so Kamailio's shared memory counts once) with
#              100,000 registrations; with 10,000 concurrent calls (signalling only); with
#              4,000 concurrent media calls (the open-file limit here, 20,000, caps both
#              systems' four media sockets per call below 5,000 calls)
#   flood      50,000 INVITE/s from one inside address while a phone places 10 calls/s:
#              share of the legitimate calls that complete
#   media      bench/media (sipward's relay and rtpengine, 100 and 2000 streams): packets
#              per core-second and added latency
# Topology: phones 127.70.0.20, edge LAN 127.70.0.1, edge WAN 127.70.1.1, upstream proxy
# and registrar 127.70.1.10 (SIPp), flooder 127.70.0.66. Kamailio's configuration is
# bench/compare/kamailio-edge.cfg, sipward's bench/compare/sipward-edge.toml.
#
# Environment: STEP_SECONDS (5), CALL_RATES, REG_RATES, MEDIA_STREAMS ("100 2000"),
# KAMAILIO_WORKERS (1), SYSTEMS ("kamailio sipward"), MEM_REGISTRATIONS, MEM_CALLS, MEM_MEDIA_CALLS, and
# FIGURES (all of "calls registers mem_regs mem_calls mem_media flood media") to run a part,
# OUT (the results file, bench/results/compare-DATE.md by default).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
secs="${STEP_SECONDS:-5}"
call_rates="${CALL_RATES:-400 800 1200 1600 2400 3200 4800 6400}"
reg_rates="${REG_RATES:-500 1000 2000 3000 4000 6000 8000 12000 16000}"
media_streams="${MEDIA_STREAMS:-100 2000}"
systems="${SYSTEMS:-kamailio sipward}"
# Smaller values make a quick trial run; the committed results use the defaults.
kamailio_workers="${KAMAILIO_WORKERS:-1}"
figures="${FIGURES:-calls registers mem_regs mem_calls mem_media flood media}"
mem_regs="${MEM_REGISTRATIONS:-100000}" mem_calls="${MEM_CALLS:-10000}" mem_media="${MEM_MEDIA_CALLS:-4000}"
lan=127.70.0.1 wan=127.70.1.1 proxy=127.70.1.10 phone=127.70.0.20 flooder=127.70.0.66
admin_token=sipward-bench-admin-token

say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

command -v kamailio >/dev/null && command -v rtpengine >/dev/null && command -v sipp >/dev/null \
    && command -v curl >/dev/null || bash "$root/scripts/install-deps.sh"
say "building sipward and the load tools (release)"
cargo build --release -q -p sipward --manifest-path "$root/Cargo.toml"
# The load tools (sipflood, the media bench) only for the figures that use them, so a
# quick UDP check (FIGURES=calls, as bench/tls/run.sh runs it) builds sipward alone.
case " ${FIGURES:-flood media} " in
*" flood "* | *" media "*) cargo build --release -q --manifest-path "$root/bench/media/Cargo.toml" ;;
esac
sipward_bin="$root/target/release/sipward"
flood_bin="$root/bench/media/target/release/sipflood"
media_bin="$root/bench/media/target/release/sipward-bench-media"

work="$(mktemp -d /tmp/sipward-compare.XXXXXX)"
ulimit -n "$(ulimit -Hn)"
hz=$(getconf CLK_TCK)
# SIPp's own socket buffers (64 KiB by default) drop bursts at a few thousand calls a
# second, whichever system is under test: the load generator gets 4 MiB.
sipp_buffer=4194304

stop_all() {
    pkill -f "sipp .* -i $proxy" 2>/dev/null || true
    pkill -f "sipp .* -i $phone" 2>/dev/null || true
    pkill -f "kamailio -f $here/kamailio-edge.cfg" 2>/dev/null || true
    pkill -f "rtpengine --interface=internal/$lan" 2>/dev/null || true
    pkill -f "sipward run --config $work" 2>/dev/null || true
    sleep 1
}
trap stop_all EXIT
stop_all

# ---- the two systems -------------------------------------------------------------

# start SYSTEM PROFILE: PROFILE is "capacity" (per-source limits raised for the load
# generator) or "flood" (each system's defaults for a real deployment).
start() {
    case $1 in
    sipward)
        cp "$here/sipward-edge.toml" "$work/sipward.toml"
        if [ "$2" = capacity ]; then
            cat >> "$work/sipward.toml" <<TOML
[protection]
new_requests_per_second = 1000000
new_requests_burst = 1000000
dialog_requests_per_second = 1000000
dialog_requests_burst = 1000000
responses_per_second = 1000000
responses_burst = 1000000
admission_per_second = 1000000
admission_burst = 1000000
TOML
        fi
        "$sipward_bin" run --config "$work/sipward.toml" > "$work/sipward.log" 2>&1 &
        for _ in $(seq 50); do grep -q "sipward: ready" "$work/sipward.log" && break; sleep 0.1; done
        grep -q "sipward: ready" "$work/sipward.log" || { tail "$work/sipward.log" >&2; exit 1; }
        ;;
    kamailio)
        rtpengine --interface=internal/$lan --interface=external/$wan --listen-ng=$lan:22222 \
            --table=-1 --port-min=20000 --port-max=59999 --foreground --log-stderr --log-level=3 \
            --delete-delay=0 > "$work/rtpengine.log" 2>&1 &
        local density=100
        [ "$2" = capacity ] && density=1000000
        rm -f "$work/kamailio.pid"
        kamailio -f "$here/kamailio-edge.cfg" -A "PIKE_DENSITY=$density" -A "WORKERS=$kamailio_workers" -P "$work/kamailio.pid" \
            -Y "$work" -w "$work" -DD -E -m 1024 -M 32 > "$work/kamailio.log" 2>&1 &
        for _ in $(seq 50); do [ -s "$work/kamailio.pid" ] && break; sleep 0.1; done
        sleep 1.5
        [ -s "$work/kamailio.pid" ] || { tail "$work/kamailio.log" >&2; exit 1; }
        ;;
    esac
}

# pids SYSTEM: every process that is part of the system.
pids() {
    case $1 in
    sipward) pgrep -f "sipward run --config $work" | tr '\n' ' ' ;;
    kamailio) { pgrep -f "kamailio -f $here/kamailio-edge.cfg"; pgrep -f "rtpengine --interface=internal/$lan"; } | tr '\n' ' ' ;;
    esac
}

cpu_ticks() { local t=0 p; for p in $(pids "$1"); do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
# pss_kib SYSTEM: proportional set size of the system's processes, KiB.
pss_kib() { local t=0 p; for p in $(pids "$1"); do t=$((t + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0))); done; echo $t; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }

# sipp_stat FILE COLUMN: a column of the last line of a SIPp -trace_stat CSV.
sipp_stat() {
    local head last n
    head="$(head -1 "$1")"; last="$(tail -1 "$1")"
    n=$(echo "$head" | tr ';' '\n' | grep -n -x "$2" | cut -d: -f1)
    echo "$last" | cut -d';' -f"$n"
}

users_file() {
    [ -s "$work/users.csv" ] && return
    { echo SEQUENTIAL; seq -f "u%06g;" 1 "$mem_regs"; } > "$work/users.csv"
}

# ---- one load step -----------------------------------------------------------------

# run_load KIND RATE COUNT HOLD_MS: KIND is calls, calls_nosdp or registers. Places COUNT
# at RATE/s from the phone through the edge to the SIPp upstream; exit 0 iff none failed.
# The uac's statistics go to $work/KIND-RATE.csv.
run_load() {
    local kind=$1 rate=$2 count=$3 hold=$4 uas_args uac_args
    case $kind in
    calls) uas_args=(-sn uas); uac_args=(-sn uac) ;;
    calls_nosdp) uas_args=(-sf "$here/sipp/answer_nosdp.xml"); uac_args=(-sf "$here/sipp/call_nosdp.xml") ;;
    registers) users_file
        uas_args=(-sf "$here/sipp/registrar.xml"); uac_args=(-sf "$here/sipp/register.xml" -inf "$work/users.csv") ;;
    esac
    rm -f "$work/$kind-$rate".csv
    sipp "${uas_args[@]}" -i $proxy -p 5060 -buff_size $sipp_buffer -nostdin -bg > /dev/null 2>&1
    sleep 0.3
    local ok=0 limit=$((rate * 4 + hold * rate / 1000 + 10))
    (cd "$work" && sipp "${uac_args[@]}" "$lan:5060" -i $phone -p 5070 -buff_size $sipp_buffer \
        -r "$rate" -m "$count" -d "$hold" \
        -l "$limit" -nostdin -timeout $((count / rate + hold / 1000 + 20))s -timeout_error \
        -trace_stat -stf "$kind-$rate.csv" -fd 1 > /dev/null 2>&1) || ok=$?
    pkill -f "sipp .* -i $proxy" 2>/dev/null || true
    return $ok
}

# sweep SYSTEM KIND RATES: climbs the rates on a fresh system; prints
# "best_rate cpu_seconds_per_1000".
sweep() {
    local system=$1 kind=$2 rates=$3 best=0 per1000="-" t0 t1 rate
    start "$system" capacity
    for rate in $rates; do
        t0=$(cpu_ticks "$system")
        if run_load "$kind" "$rate" $((rate * secs)) 0; then
            t1=$(cpu_ticks "$system")
            best=$rate
            per1000=$(awk -v d=$((t1 - t0)) -v hz="$hz" -v n=$((rate * secs)) 'BEGIN{printf "%.3f", d / hz / n * 1000}')
            say "  $system $kind: $rate/s ok (CPU ${per1000} s per 1000)"
        else
            say "  $system $kind: $rate/s FAILED ($(sipp_stat "$work/$kind-$rate.csv" 'FailedCall(C)' 2>/dev/null || echo '?') failed)"
            break
        fi
        sleep 1
    done
    stop_all
    echo "$best $per1000"
}

# memory SYSTEM KIND COUNT RATE HOLD_MS SETTLE: PSS in MiB once COUNT calls or
# registrations are in place (SETTLE seconds after the last was placed), and the growth
# over the idle system per item in bytes. Prints "mib bytes_each in_place".
memory() {
    local system=$1 kind=$2 count=$3 rate=$4 hold=$5 settle=$6 base after placed
    start "$system" capacity
    base=$(pss_kib "$system")
    run_load "$kind" "$rate" "$count" "$hold" &
    local load=$!
    sleep $((count / rate + settle))
    after=$(pss_kib "$system")
    if [ "$kind" = registers ]; then
        wait $load || true
        placed=$(sipp_stat "$work/$kind-$rate.csv" 'SuccessfulCall(C)')
    else
        placed=$(sipp_stat "$work/$kind-$rate.csv" 'CurrentCall')
        pkill -f "sipp .* -i $phone" 2>/dev/null || true
        wait $load 2>/dev/null || true
    fi
    if [ "$system" = sipward ]; then
        say "  sipward reports: $(curl -s -H "Authorization: Bearer $admin_token" "http://$lan:8080/metrics" \
            | grep -E '^sipward_(registrations|calls|media_streams)' | tr '\n' ' ')"
    fi
    stop_all
    say "  $system: $placed $kind in place, PSS $(mib "$after") MiB (idle $(mib "$base") MiB)"
    echo "$(mib "$after") $(awk -v a="$after" -v b="$base" -v n="$count" 'BEGIN{printf "%.0f", (a - b) * 1024 / n}') $placed"
}

# flood SYSTEM: a phone places 10 calls/s for 30 s; 4 s in, 50,000 INVITE/s from the
# flooder for 20 s. Prints "completed_percent completed total flood_rate".
flood() {
    local system=$1 calls=300
    start "$system" flood
    sipp -sn uas -i $proxy -p 5060 -buff_size $sipp_buffer -nostdin -bg > /dev/null 2>&1
    sleep 0.3
    rm -f "$work/flood-calls.csv"
    (cd "$work" && sipp -sn uac "$lan:5060" -i $phone -p 5070 -buff_size $sipp_buffer -r 10 -m $calls -nostdin \
        -timeout 90s -trace_stat -stf flood-calls.csv -fd 1 > /dev/null 2>&1 || true) &
    local uac=$!
    sleep 4
    local sent
    sent=$("$flood_bin" "$lan:5060" $flooder 50000 20)
    wait $uac || true
    local ok failed
    ok=$(sipp_stat "$work/flood-calls.csv" 'SuccessfulCall(C)')
    failed=$(sipp_stat "$work/flood-calls.csv" 'FailedCall(C)')
    stop_all
    say "  $system under flood ($sent): $ok of $calls calls completed, $failed failed"
    echo "$(awk -v a="$ok" -v n=$calls 'BEGIN{printf "%.1f", 100 * a / n}') $ok $calls $(echo "$sent" | grep -o '([0-9]*' | tr -d '(')"
}

# ---- the run -----------------------------------------------------------------------

declare -A result
field() { echo "${result[$1]:-}" | awk -v i="$2" '{print $i}'; }
# half_of RATE CAP: half of RATE, at most CAP, at least 100; CAP when RATE was not measured.
half_of() { awk -v r="${1:-0}" -v c="$2" 'BEGIN{h = (r > 0) ? int(r / 2) : c; if (h > c) h = c; if (h < 100) h = 100; print h}'; }
wanted() { [[ " $figures " == *" $1 "* ]]; }
for system in $systems; do
    if wanted calls; then
        say "$system: call rate (SIPp with SDP, media anchored)"
        result[$system.calls]=$(sweep "$system" calls "$call_rates")
    fi
    if wanted registers; then
        say "$system: registration rate (digest)"
        result[$system.registers]=$(sweep "$system" registers "$reg_rates")
    fi
    # Memory: calls and registrations are placed at half the highest rate the system
    # passed (capped), so that memory, not overload, is what is measured, and read 40 s
    # after the last one, when the transactions that set them up are gone (both systems
    # keep a finished transaction a while for retransmissions) and what is left is the
    # state of registrations and calls in progress (calls are held for 120 s).
    if wanted mem_regs; then
        say "$system: memory with $mem_regs registrations"
        rate=$(half_of "$(field "$system.registers" 1)" 4000)
        result[$system.mem_regs]=$(memory "$system" registers "$mem_regs" "$rate" 0 40)
    fi
    if wanted mem_calls; then
        say "$system: memory with $mem_calls concurrent calls (no media)"
        rate=$(half_of "$(field "$system.calls" 1)" 1000)
        result[$system.mem_calls]=$(memory "$system" calls_nosdp "$mem_calls" "$rate" 120000 40)
    fi
    if wanted mem_media; then
        say "$system: memory with $mem_media concurrent media calls"
        rate=$(half_of "$(field "$system.calls" 1)" 500)
        result[$system.mem_media]=$(memory "$system" calls "$mem_media" "$rate" 120000 40)
    fi
    if wanted flood; then
        say "$system: 50,000 INVITE/s flood from one address"
        result[$system.flood]=$(flood "$system")
    fi
done

media_table="(not run)"
if wanted media; then
    say "media relay: sipward vs rtpengine ($media_streams streams)"
    # shellcheck disable=SC2086
    media_table="$("$media_bin" 2 $media_streams)"
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }'; }

mkdir -p "$root/bench/results"
out="${OUT:-$root/bench/results/compare-$(date +%F).md}"
{
    echo "# sipward vs Kamailio + rtpengine, $(date -u +%FT%TZ)"
    echo
    echo "Machine: $(uname -m), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo)."
    echo "sipward $(git -C "$root" describe --always --dirty) (release); kamailio $(kamailio -v | awk 'NR==1{print $3}') with bench/compare/kamailio-edge.cfg (1 UDP worker) +"
    echo "rtpengine $(rtpengine --version 2>&1 | awk '{print $NF}') (userspace, default threads); SIPp $(sipp -v 2>&1 | grep -o 'v[0-9][0-9.]*' | head -1)."
    echo "Re-run: \`bench/compare/run.sh\`. Steps of ${secs} s; rates tried: calls $call_rates, registrations $reg_rates."
    echo "CPU: the system's user+system seconds (Kamailio: all its processes and rtpengine)."
    echo "Memory: PSS, so memory shared between Kamailio's processes counts once."
    echo
    echo "| figure | Kamailio + rtpengine | sipward | sipward / peer |"
    echo "|---|---|---|---|"
    echo "| highest call rate, 0 failed (calls/s) | $(field kamailio.calls 1) | $(field sipward.calls 1) | $(ratio "$(field sipward.calls 1)" "$(field kamailio.calls 1)") |"
    echo "| CPU seconds per 1000 calls at that rate | $(field kamailio.calls 2) | $(field sipward.calls 2) | $(ratio "$(field sipward.calls 2)" "$(field kamailio.calls 2)") |"
    echo "| highest registration rate with digest, 0 failed (/s) | $(field kamailio.registers 1) | $(field sipward.registers 1) | $(ratio "$(field sipward.registers 1)" "$(field kamailio.registers 1)") |"
    echo "| CPU seconds per 1000 registrations at that rate | $(field kamailio.registers 2) | $(field sipward.registers 2) | $(ratio "$(field sipward.registers 2)" "$(field kamailio.registers 2)") |"
    echo "| PSS with $mem_regs registrations (MiB) | $(field kamailio.mem_regs 1) | $(field sipward.mem_regs 1) | $(ratio "$(field sipward.mem_regs 1)" "$(field kamailio.mem_regs 1)") |"
    echo "| growth per registration (bytes) | $(field kamailio.mem_regs 2) | $(field sipward.mem_regs 2) | |"
    echo "| PSS with $mem_calls concurrent calls, no media (MiB) | $(field kamailio.mem_calls 1) | $(field sipward.mem_calls 1) | $(ratio "$(field sipward.mem_calls 1)" "$(field kamailio.mem_calls 1)") |"
    echo "| growth per call (bytes) | $(field kamailio.mem_calls 2) | $(field sipward.mem_calls 2) | |"
    echo "| PSS with $mem_media concurrent media calls (MiB) | $(field kamailio.mem_media 1) | $(field sipward.mem_media 1) | $(ratio "$(field sipward.mem_media 1)" "$(field kamailio.mem_media 1)") |"
    echo "| growth per media call (bytes) | $(field kamailio.mem_media 2) | $(field sipward.mem_media 2) | |"
    echo "| legitimate calls completed under a 50,000/s INVITE flood | $(field kamailio.flood 1) % ($(field kamailio.flood 2)/$(field kamailio.flood 3)) | $(field sipward.flood 1) % ($(field sipward.flood 2)/$(field sipward.flood 3)) | |"
    echo
    echo "Calls in place when memory was read: registrations $(field kamailio.mem_regs 3) / $(field sipward.mem_regs 3),"
    echo "calls $(field kamailio.mem_calls 3) / $(field sipward.mem_calls 3), media calls $(field kamailio.mem_media 3) / $(field sipward.mem_media 3) (Kamailio / sipward)."
    echo "Flood offered: $(field kamailio.flood 4) / $(field sipward.flood 4) INVITE/s."
    echo
    echo "## Media relay (bench/media: sipward's relay thread vs rtpengine with one worker thread)"
    echo
    echo "$media_table"
} | tee "$out"
say "wrote $out"
