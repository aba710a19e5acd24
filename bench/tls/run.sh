#!/usr/bin/env bash
# sipward against Kamailio 5.6 with tls.so as the TLS edge in front of the same outside
# SIPp, same machine, same run. The one command for issue 18's benchmark:
#
#   bench/tls/run.sh        # ~12 minutes, as root; writes bench/results/tls-DATE.md
#
# Both edges run side by side on the loopback (sipward LAN 127.70.0.1 / WAN 127.70.1.1,
# Kamailio LAN 127.70.0.2 / WAN 127.70.1.2, TLS on port 5061 inside, UDP outside to the
# proxy/registrar SIPp at 127.70.1.10:5060; phones 127.70.0.20 and up), and the figures
# alternate between them step by step, so a noisy neighbour hits both alike:
#   calls       SIPp INVITE/200/ACK/BYE without SDP over one TLS connection (Debian's SIPp
#               has no TLS: `-t t1` to a local socat that carries the bytes over
#               `OPENSSL:`), rates climbed until a call fails: the highest rate with zero
#               failed calls and the edge's CPU seconds per 1000 calls there (user+system
#               from /proc/PID/stat, every process of the edge). socat's own CPU is
#               recorded to show whether the shim, not the edge, was the limit.
#   handshakes  `openssl s_time` full handshakes (-new) and resumed ones (-reuse) per
#               second, and the edge's CPU per 1000 handshakes.
#   idle        10,000 TLS phones (bench/tls/tlsload.py) each registering on its own
#               connection and pinging CRLFCRLF every 30 s: PSS per connection (all the
#               edge's processes from /proc/PID/smaps_rollup, so Kamailio's shared memory
#               counts once) before, once registered, and after a ping round.
#   attack      a TLS phone places 10 calls/s for 30 s; 4 s in, 2,000 slowloris TLS
#               connections (from 100 addresses, one byte a second) and a 200/s TLS
#               connection flood (one address) for 20 s: legitimate calls completed.
#               Each edge runs its deployment defaults here (sipward's [transport] and
#               [protection]; Kamailio's pike at 100 requests per 2 s).
#   udp         bench/compare/run.sh with FIGURES=calls (the UDP call sweep against
#               Kamailio + rtpengine), set beside the latest committed compare results.
#
# Environment: STEP_SECONDS (5), TLS_CALL_RATES, IDLE_CONNECTIONS (10000), HANDSHAKE_SECONDS
# (8), ATTACK_ROUNDS (2, alternating the edges), FIGURES (all of "calls handshakes idle attack udp").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
secs="${STEP_SECONDS:-5}"
call_rates="${TLS_CALL_RATES:-200 400 800 1200 1600 2400 3200 4800 6400 8000}"
idle_count="${IDLE_CONNECTIONS:-10000}"
hs_secs="${HANDSHAKE_SECONDS:-8}"
figures="${FIGURES:-calls handshakes idle attack udp}"
attack_rounds="${ATTACK_ROUNDS:-2}"
# The idle phones connect at 300/s, 20 handshakes at once: Kamailio 5.6.3's tls.so aborted
# (q_malloc "fragment overwritten", double free from tls_init.c) with 200 at once at 1000/s
# (and still does in some runs at this pace: the report then says "crashed").
idle_rate="${IDLE_RATE:-300}"
proxy=127.70.1.10 phone=127.70.0.20 shim=127.70.0.21 flooder=127.70.0.66
declare -A lan=([sipward]=127.70.0.1 [kamailio]=127.70.0.2)
declare -A shim_port=([sipward]=15061 [kamailio]=15062)
admin_token=sipward-bench-admin-token
# The slowloris and idle phones come from 100 addresses (127.70.0.100-199).
sources="$(seq -s, -f '127.70.0.%g' 100 199)"

say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
wanted() { [[ " $figures " == *" $1 "* ]]; }

command -v kamailio >/dev/null && command -v sipp >/dev/null && command -v socat >/dev/null \
    && [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so ] || bash "$root/scripts/install-deps.sh"
say "building sipward (release)"
cargo build --release -q -p sipward --manifest-path "$root/Cargo.toml"
sipward_bin="$root/target/release/sipward"

work="$(mktemp -d /tmp/sipward-tlsbench.XXXXXX)"
# 10,000 phones: the edge and the load tool each hold one descriptor per connection.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
ulimit -c 0
hz=$(getconf CLK_TCK)

# ---- processes: every one this script starts is tracked by its pid ------------------

declare -A edge_pid=()
uas_pid=""
stop_pid() { [ -n "${1:-}" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }
stop_uas() { stop_pid "$uas_pid"; uas_pid=""; }
stop_edge() { stop_pid "${edge_pid[$1]:-}"; edge_pid[$1]=""; sleep 0.5; }
cleanup() {
    stop_uas
    stop_edge sipward
    stop_edge kamailio
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

"$sipward_bin" cert --name edge.bench.test --ip 127.70.0.1 --ip 127.70.0.2 --out "$work/certs" > /dev/null
cat > "$work/tls.cfg" <<CFG
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = $work/certs/edge.bench.test.crt
private_key = $work/certs/edge.bench.test.key

[client:default]
verify_certificate = no
require_certificate = no
CFG

# start_edge SYSTEM PROFILE: PROFILE "capacity" raises the per-source limits (one load
# generator is every phone) and the connection cap; "defaults" is a deployment's.
start_edge() {
    case $1 in
    sipward)
        cp "$here/sipward-tls-edge.toml" "$work/sipward.toml"
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
[transport]
max_connections = 20000
max_connections_per_source = 100000
new_connections_per_second = 1000000
new_connections_burst = 1000000
# One connection carries every call: a burst the single-threaded SIPp and socat read late
# must not close it (the load generator's buffers are raised the same way).
send_queue = 4194304
TOML
        fi
        "$sipward_bin" run --config "$work/sipward.toml" > "$work/sipward.log" 2>&1 &
        edge_pid[sipward]=$!
        for _ in $(seq 50); do grep -q "sipward: ready" "$work/sipward.log" && break; sleep 0.1; done
        grep -q "sipward: ready" "$work/sipward.log" || { tail "$work/sipward.log" >&2; exit 1; }
        ;;
    kamailio)
        local density=100
        [ "$2" = capacity ] && density=1000000
        kamailio -f "$here/kamailio-tls-edge.cfg" -A "PIKE_DENSITY=$density" -A "TLS_CFG=\"$work/tls.cfg\"" \
            -Y "$work" -w "$work" -DD -E -m 2048 -M 32 > "$work/kamailio.log" 2>&1 &
        edge_pid[kamailio]=$!
        for _ in $(seq 100); do
            ss -Hltn "src ${lan[kamailio]}:5061" | grep -q . && break
            sleep 0.1
        done
        ss -Hltn "src ${lan[kamailio]}:5061" | grep -q . || { tail "$work/kamailio.log" >&2; exit 1; }
        sleep 1
        ;;
    esac
}

# crashed SYSTEM: "crashed" when the edge is gone or one of its processes died of a signal.
crashed() {
    local p=${edge_pid[$1]:-}
    if [ -z "$p" ] || ! kill -0 "$p" 2>/dev/null || grep -q "exited by a signal" "$work/$1.log" 2>/dev/null; then
        echo crashed
    else
        echo ok
    fi
}

# pids SYSTEM: the edge's processes (Kamailio: the main process and its children).
pids() {
    local p=${edge_pid[$1]:-}
    [ -n "$p" ] || return 0
    echo "$p $(pgrep -P "$p" | tr '\n' ' ')"
}
ticks_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0))); done; echo $t; }
cpu_ticks() { # shellcheck disable=SC2046
    ticks_of $(pids "$1"); }
pss_kib() { local t=0 p; for p in $(pids "$1"); do t=$((t + $(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0))); done; echo $t; }
per1000() { awk -v d="$1" -v hz="$hz" -v n="$2" 'BEGIN{ if (n > 0) printf "%.3f", d / hz / n * 1000; else print "-" }'; }

sipp_stat() {
    local head last n
    head="$(head -1 "$1")"; last="$(tail -1 "$1")"
    n=$(echo "$head" | tr ';' '\n' | grep -n -x "$2" | cut -d: -f1)
    echo "$last" | cut -d';' -f"$n"
}

# start_uas SCENARIO: the outside proxy (calls) or registrar (idle phones), UDP.
start_uas() {
    stop_uas
    sipp -sf "$1" -i $proxy -p 5060 -buff_size 4194304 -nostdin > /dev/null 2>&1 &
    uas_pid=$!
    sleep 0.3
}

# tls_calls SYSTEM RATE COUNT NAME: COUNT calls at RATE/s from the phone over one TLS
# connection (SIPp -> socat -> edge); exit 0 iff none failed. Statistics in
# $work/NAME.csv; the shim's CPU ticks in $work/NAME.socat.
tls_calls() {
    local system=$1 rate=$2 count=$3 name=$4 port=${shim_port[$1]} socat_pid ok=0
    rm -f "$work/$name.csv"
    # socat exits when SIPp closes; time(1) reports its CPU then.
    /usr/bin/time -o "$work/$name.socat" -f "%U %S" socat -b 65536 "TCP-LISTEN:$port,bind=$shim,reuseaddr" \
        "OPENSSL:${lan[$system]}:5061,verify=0,bind=$phone" 2> "$work/$name.socat.log" &
    socat_pid=$!
    for _ in $(seq 50); do ss -Hltn "src $shim:$port" | grep -q . && break; sleep 0.05; done
    (cd "$work" && sipp -sf "$here/sipp/call_tls.xml" "$shim:$port" -t t1 -i $phone -p 5070 \
        -r "$rate" -m "$count" -d 0 -l $((rate * 4 + 10)) -nostdin -buff_size 4194304 \
        -timeout $((count / rate + 20))s -timeout_error \
        -trace_stat -stf "$name.csv" -fd 1 > /dev/null 2>&1) || ok=$?
    for _ in $(seq 40); do kill -0 "$socat_pid" 2>/dev/null || break; sleep 0.05; done
    pkill -P "$socat_pid" 2>/dev/null || true
    wait "$socat_pid" 2>/dev/null || true
    return $ok
}

declare -A result

# ---- 1. TLS call rate ----------------------------------------------------------------

if wanted calls || wanted handshakes; then
    start_edge sipward capacity
    start_edge kamailio capacity
fi

if wanted calls; then
    say "TLS call rate: rates $call_rates, ${secs} s steps, alternating the edges"
    start_uas "$here/../compare/sipp/answer_nosdp.xml"
    declare -A climbing=([kamailio]=1 [sipward]=1) best=([kamailio]=0 [sipward]=0) \
        cpu=([kamailio]=- [sipward]=-) socat_share=([kamailio]=- [sipward]=-)
    for rate in $call_rates; do
        for system in kamailio sipward; do
            [ "${climbing[$system]}" = 1 ] || continue
            count=$((rate * secs))
            t0=$(cpu_ticks $system) w0=$(date +%s.%N)
            if tls_calls $system "$rate" "$count" "calls-$system-$rate"; then
                t1=$(cpu_ticks $system) w1=$(date +%s.%N)
                best[$system]=$rate
                cpu[$system]=$(per1000 $((t1 - t0)) "$count")
                socat_share[$system]=$(awk -v w0="$w0" -v w1="$w1" 'NR == 1 && NF == 2 {printf "%.0f", 100 * ($1 + $2) / (w1 - w0)}' \
                    "$work/calls-$system-$rate.socat")
                say "  $system: $rate/s ok, CPU ${cpu[$system]} s per 1000 calls, socat ${socat_share[$system]} % of a core"
            else
                rc=$?
                climbing[$system]=0
                say "  $system: $rate/s FAILED (SIPp exit $rc; $(sipp_stat "$work/calls-$system-$rate.csv" 'SuccessfulCall(C)' 2>/dev/null || echo '?') of $count completed, $(sipp_stat "$work/calls-$system-$rate.csv" 'FailedCall(C)' 2>/dev/null || echo '?') failed; $(tail -1 "$work/calls-$system-$rate.socat.log" 2>/dev/null | cut -c21-))"
            fi
            sleep 1
        done
    done
    stop_uas
    for system in kamailio sipward; do
        result[$system.calls]="${best[$system]} ${cpu[$system]} ${socat_share[$system]}"
    done
fi

# ---- 2. handshakes -------------------------------------------------------------------

# s_time SYSTEM MODE: "rate cpu_per_1000 connections resumed" for -new (TLS 1.3) or -reuse.
# s_time counts whole seconds, so the rate is over the wall time measured here. Resumption
# is timed on TLS 1.2: s_time closes a TLS 1.3 connection before the server's ticket (sent
# after the handshake) is read, so it has nothing to resume with. It prints one character a
# connection: "r" resumed, "*" full.
s_time() {
    local system=$1 mode=$2 t0 t1 w0 w1 out n resumed version=()
    [ "$mode" = reuse ] && version=(-tls1_2)
    t0=$(cpu_ticks "$system") w0=$(date +%s.%N)
    out="$(openssl s_time -connect "${lan[$system]}:5061" "-$mode" "${version[@]}" -time "$hs_secs" 2>&1 || true)"
    t1=$(cpu_ticks "$system") w1=$(date +%s.%N)
    echo "$out" > "$work/s_time-$system-$mode.log"
    n=$(echo "$out" | awk '/connections in [0-9.]+ real seconds/{print $1; exit}')
    resumed=$(echo "$out" | grep -E '^[*r]+$' | tr -cd 'r' | wc -c)
    awk -v n="${n:-0}" -v w="$(awk -v a="$w0" -v b="$w1" 'BEGIN{print b - a}')" -v d=$((t1 - t0)) -v hz="$hz" -v r="$resumed" \
        'BEGIN{ if (n > 0) printf "%.0f %.3f %d %d", n / w, d / hz / n * 1000, n, r; else print "- - 0 0" }'
}

if wanted handshakes; then
    say "TLS handshakes: openssl s_time, ${hs_secs} s each, alternating"
    # Fresh edges: the calls in progress when a rate failed would still be retransmitted
    # towards the stopped UAS, CPU that is not the handshakes'.
    for system in kamailio sipward; do stop_edge $system; start_edge $system capacity; done
    for mode in new reuse; do
        for system in kamailio sipward; do
            result[$system.hs_$mode]=$(s_time $system $mode)
            say "  $system $mode: ${result[$system.hs_$mode]} (per second, CPU s per 1000, connections, resumed)"
            sleep 1
        done
    done
fi

# ---- 3. idle registered TLS phones ---------------------------------------------------

# idle SYSTEM: "base_mib registered_mib after_mib kib_per_conn registered failed pongs closed"
idle() {
    local system=$1 base reg after loader line done_line
    sleep 2
    base=$(pss_kib "$system")
    python3 "$here/tlsload.py" idle "${lan[$system]}:5061" "$sources" "$idle_count" "$idle_rate" 30 20 \
        > "$work/idle-$system.out" 2> "$work/idle-$system.err" &
    loader=$!
    for _ in $(seq 600); do grep -q '^ready' "$work/idle-$system.out" && break; sleep 0.5; done
    line="$(grep '^ready' "$work/idle-$system.out" || echo "ready 0 $idle_count")"
    sleep 5
    reg=$(pss_kib "$system")
    # One ping round (every 30 s) and its pongs, then read again.
    sleep 35
    after=$(pss_kib "$system")
    if [ "$system" = sipward ]; then
        say "  sipward reports: $(curl -s -H "Authorization: Bearer $admin_token" "http://${lan[sipward]}:8080/metrics" \
            | grep -E '^sipward_(registrations|stream_connections|stream_open)' | tr '\n' ' ')"
    fi
    kill -TERM "$loader" 2>/dev/null || true
    wait "$loader" 2>/dev/null || true
    local state
    state=$(crashed "$system")
    done_line="$(grep '^done' "$work/idle-$system.out" || echo done) edge=$state"
    say "  $system: $line; $done_line; PSS idle $base KiB, registered $reg KiB, after a ping round $after KiB"
    local n
    n=$(echo "$line" | awk '{print $2}')
    awk -v b="$base" -v r="$reg" -v a="$after" -v n="$n" -v d="$done_line" 'BEGIN{
        split(d, f, /[ =]/); pongs = "-"; closed = "-"
        for (i = 1; i in f; i++) { if (f[i] == "pongs") pongs = f[i+1]; if (f[i] == "closed_by_edge") closed = f[i+1] }
        edge = "ok"
        for (i = 1; i in f; i++) if (f[i] == "edge") edge = f[i+1]
        printf "%.1f %.1f %.1f %s %d %s %s %s\n", b / 1024, r / 1024, a / 1024,
            (n > 0 && edge == "ok") ? sprintf("%.1f", (a - b) / n) : "-", n, pongs, closed, edge }'
}

if wanted idle; then
    say "memory: $idle_count idle registered TLS phones, CRLFCRLF every 30 s"
    start_uas "$here/sipp/registrar_ok.xml"
    for system in kamailio sipward; do
        # A fresh edge: Kamailio's shared memory already touched by the earlier figures
        # would otherwise be reused for the new connections unseen.
        stop_edge $system
        start_edge $system capacity
        result[$system.idle]=$(idle $system)
    done
    stop_uas
fi
stop_edge sipward
stop_edge kamailio

# ---- 4. attack -----------------------------------------------------------------------

# attack SYSTEM: "completed failed total slowloris_stats flood_stats"
attack() {
    local system=$1 calls=300 legit slow flood ok failed
    start_edge "$system" defaults
    start_uas "$here/../compare/sipp/answer_nosdp.xml"
    tls_calls "$system" 10 $calls "attack-$system" &
    legit=$!
    sleep 4
    python3 "$here/tlsload.py" slowloris "${lan[$system]}:5061" "$sources" 2000 20 > "$work/slow-$system.out" 2>&1 &
    slow=$!
    python3 "$here/tlsload.py" flood "${lan[$system]}:5061" $flooder 200 20 > "$work/flood-$system.out" 2>&1 &
    flood=$!
    wait $slow || true
    wait $flood || true
    wait $legit || true
    ok=$(sipp_stat "$work/attack-$system.csv" 'SuccessfulCall(C)' 2>/dev/null || echo 0)
    failed=$(sipp_stat "$work/attack-$system.csv" 'FailedCall(C)' 2>/dev/null || echo "?")
    if [ "$system" = sipward ]; then
        say "  sipward reports: $(curl -s -H "Authorization: Bearer $admin_token" "http://${lan[sipward]}:8080/metrics" \
            | grep -E '^sipward_stream_(refused|closed)_total' | tr '\n' ' ')"
    fi
    local state
    state=$(crashed "$system")
    stop_uas
    stop_edge "$system"
    say "  $system ($state): $ok of $calls calls completed, $failed failed; slowloris $(sed 's/^done //' "$work/slow-$system.out" | tail -1); flood $(sed 's/^done //' "$work/flood-$system.out" | tail -1)"
    echo "$ok ${failed:-?} $calls $state,$(tail -1 "$work/slow-$system.out" | sed 's/^done //; s/ /,/g') $(tail -1 "$work/flood-$system.out" | sed 's/^done //; s/ /,/g')"
}

if wanted attack; then
    say "attack: 2,000 slowloris + 200/s connection flood while a TLS phone calls at 10/s, $attack_rounds rounds"
    declare -A rounds=([kamailio]="" [sipward]="")
    declare -A completed=([kamailio]=0 [sipward]=0) placed=([kamailio]=0 [sipward]=0)
    for round in $(seq "$attack_rounds"); do
        for system in kamailio sipward; do
            r=$(attack $system)
            [ "$round" = 1 ] && result[$system.attack_load]="$(echo "$r" | awk '{sub(/^[a-z]+,/, "", $4); print $4, $5}')"
            ok=$(echo "$r" | awk '{print $1 + 0}') total=$(echo "$r" | awk '{print $3}')
            completed[$system]=$((completed[$system] + ok)) placed[$system]=$((placed[$system] + total))
            state=$(echo "$r" | awk '{print $4}' | cut -d, -f1)
            [ "$state" = ok ] && state="" || state=" $state"
            rounds[$system]="${rounds[$system]:+${rounds[$system]}, }$ok/$total$state"
        done
    done
    for system in kamailio sipward; do
        result[$system.attack]="${completed[$system]} $((placed[$system] - completed[$system])) ${placed[$system]} ${rounds[$system]// /_}"
    done
fi

# ---- 5. UDP, bench/compare's call sweep ----------------------------------------------

udp_table="(not run)"
if wanted udp; then
    say "UDP: bench/compare/run.sh FIGURES=calls"
    FIGURES=calls OUT="$work/compare-udp.md" bash "$root/bench/compare/run.sh" > /dev/null
    latest="$(ls "$root"/bench/results/compare-*.md | sort | tail -1)"
    row() { grep -F "$1" "$2" | head -1 | awk -F'|' '{gsub(/ /, "", $3); gsub(/ /, "", $4); print $3, $4}'; }
    read -r k_now s_now < <(row "highest call rate" "$work/compare-udp.md")
    read -r kc_now sc_now < <(row "CPU seconds per 1000 calls" "$work/compare-udp.md")
    read -r k_then s_then < <(row "highest call rate" "$latest")
    read -r kc_then sc_then < <(row "CPU seconds per 1000 calls" "$latest")
    udp_table="| UDP figure (bench/compare, SDP and media anchored) | Kamailio + rtpengine | sipward | sipward / peer |
|---|---|---|---|
| highest call rate, 0 failed, this run (calls/s) | $k_now | $s_now | $(awk -v a="$s_now" -v b="$k_now" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }') |
| the same in $(basename "$latest") | $k_then | $s_then | $(awk -v a="$s_then" -v b="$k_then" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }') |
| CPU seconds per 1000 calls, this run | $kc_now | $sc_now | $(awk -v a="$sc_now" -v b="$kc_now" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }') |
| the same in $(basename "$latest") | $kc_then | $sc_then | $(awk -v a="$sc_then" -v b="$kc_then" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }') |"
fi

# ---- report --------------------------------------------------------------------------

field() { echo "${result[$1]:-}" | awk -v i="$2" '{print $i}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a+0 > 0 && b+0 > 0) printf "%.2f", a / b; else print "n/a" }'; }
verdict() { awk -v r="$1" -v goal="$2" -v dir="$3" 'BEGIN{ if (r == "n/a" || r == "" || r == "-") print "not measured"; else if ((dir == "ge" && r >= goal) || (dir == "le" && r <= goal)) print "met"; else print "NOT met" }'; }

rate_ratio=$(ratio "$(field sipward.calls 1)" "$(field kamailio.calls 1)")
cpu_ratio=$(ratio "$(field sipward.calls 2)" "$(field kamailio.calls 2)")
mkdir -p "$root/bench/results"
out="$root/bench/results/tls-$(date +%F).md"
{
    echo "# sipward vs Kamailio 5.6 + tls.so as the TLS edge, $(date -u +%FT%TZ)"
    echo
    echo "Machine: $(uname -m), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), shared with other jobs (noisy: compare the ratios, measured in the same run, step by step alternating)."
    echo "sipward $(git -C "$root" describe --always --dirty) (release, bench/tls/sipward-tls-edge.toml); kamailio $(kamailio -v | awk 'NR==1{print $3}') with tls.so ($(openssl version | awk '{print $1, $2}')),"
    echo "bench/tls/kamailio-tls-edge.cfg: 1 UDP worker, 2 TCP workers, connection caps 20,000. SIPp $(sipp -v 2>&1 | grep -o 'v[0-9][0-9.]*' | head -1) over socat $(socat -V 2>/dev/null | awk '/socat version/{print $3; exit}') (OPENSSL); both edges serve the same ECDSA certificate from \`sipward cert\`."
    echo "Re-run: \`bench/tls/run.sh\` (root). Call steps of ${secs} s; rates tried: $call_rates."
    echo "CPU: user+system seconds of the edge's processes (/proc/PID/stat). Memory: PSS (/proc/PID/smaps_rollup) of the edge's processes."
    echo
    echo "| figure | Kamailio + tls.so | sipward | sipward / Kamailio |"
    echo "|---|---|---|---|"
    echo "| highest TLS call rate, 0 failed (calls/s, one TLS connection) | $(field kamailio.calls 1) | $(field sipward.calls 1) | $rate_ratio |"
    echo "| CPU seconds per 1000 calls at that rate | $(field kamailio.calls 2) | $(field sipward.calls 2) | $cpu_ratio |"
    echo "| socat shim's CPU at that rate (% of a core) | $(field kamailio.calls 3) | $(field sipward.calls 3) | |"
    echo "| full TLS handshakes per second (openssl s_time -new, one client) | $(field kamailio.hs_new 1) | $(field sipward.hs_new 1) | $(ratio "$(field sipward.hs_new 1)" "$(field kamailio.hs_new 1)") |"
    echo "| CPU seconds per 1000 full handshakes | $(field kamailio.hs_new 2) | $(field sipward.hs_new 2) | $(ratio "$(field sipward.hs_new 2)" "$(field kamailio.hs_new 2)") |"
    echo "| resumed TLS handshakes per second (s_time -reuse) | $(field kamailio.hs_reuse 1) | $(field sipward.hs_reuse 1) | $(ratio "$(field sipward.hs_reuse 1)" "$(field kamailio.hs_reuse 1)") |"
    echo "| CPU seconds per 1000 resumed handshakes | $(field kamailio.hs_reuse 2) | $(field sipward.hs_reuse 2) | $(ratio "$(field sipward.hs_reuse 2)" "$(field kamailio.hs_reuse 2)") |"
    echo "| PSS idle, no connections (MiB) | $(field kamailio.idle 1) | $(field sipward.idle 1) | $(ratio "$(field sipward.idle 1)" "$(field kamailio.idle 1)") |"
    echo "| PSS with $idle_count registered TLS phones (MiB) | $(field kamailio.idle 2) | $(field sipward.idle 2) | $(ratio "$(field sipward.idle 2)" "$(field kamailio.idle 2)") |"
    echo "| PSS after a ping round (MiB) | $(field kamailio.idle 3) | $(field sipward.idle 3) | $(ratio "$(field sipward.idle 3)" "$(field kamailio.idle 3)") |"
    echo "| PSS per idle registered TLS connection (KiB) | $(field kamailio.idle 4) | $(field sipward.idle 4) | $(ratio "$(field sipward.idle 4)" "$(field kamailio.idle 4)") |"
    echo "| legitimate TLS calls completed under 2,000 slowloris + 200/s connection flood ($attack_rounds rounds: each round's) | $(field kamailio.attack 1)/$(field kamailio.attack 3) ($(field kamailio.attack 4 | tr _ ' ')) | $(field sipward.attack 1)/$(field sipward.attack 3) ($(field sipward.attack 4 | tr _ ' ')) | |"
    echo
    echo "Resumed handshakes (TLS 1.2; the share s_time got resumed, the rest were full): Kamailio $(field kamailio.hs_reuse 4) of $(field kamailio.hs_reuse 3), sipward $(field sipward.hs_reuse 4) of $(field sipward.hs_reuse 3)."
    echo "Idle phones registered / pongs received in the ping round / connections the edge closed / the edge afterwards: Kamailio $(field kamailio.idle 5) / $(field kamailio.idle 6) / $(field kamailio.idle 7) / $(field kamailio.idle 8), sipward $(field sipward.idle 5) / $(field sipward.idle 6) / $(field sipward.idle 7) / $(field sipward.idle 8) (phones connected at $idle_rate/s, 20 handshakes at once)."
    echo "Per connection = (PSS after the ping round - PSS idle) / phones registered; it includes the registration each carries."
    echo "Attack load as the attackers saw it (first round): Kamailio slowloris $(field kamailio.attack_load 1), flood $(field kamailio.attack_load 2); sipward slowloris $(field sipward.attack_load 1), flood $(field sipward.attack_load 2)."
    echo "A call not completed is one that failed or was never placed before SIPp's time limit (30 s of calls + 20 s)."
    echo
    echo "## Goal check (issue 18)"
    echo
    echo "- TLS call rate ≥ 1.5× Kamailio's: $rate_ratio× — $(verdict "$rate_ratio" 1.5 ge)."
    echo "- CPU per call ≤ 1/2 of Kamailio's: $cpu_ratio× — $(verdict "$cpu_ratio" 0.5 le)."
    echo "- PSS per idle TLS connection ≤ 16 KiB: $(field sipward.idle 4) KiB — $(verdict "$(field sipward.idle 4)" 16 le)."
    echo "- Every legitimate TLS call completes under attack: sipward $(field sipward.attack 1)/$(field sipward.attack 3) — $(if [ -z "$(field sipward.attack 3)" ]; then echo "not measured"; elif [ "$(field sipward.attack 1)" = "$(field sipward.attack 3)" ]; then echo met; else echo "NOT met"; fi)."
    echo
    echo "## How to read it"
    echo
    echo "- The TLS call rate is what one TLS connection carries: SIPp -t t1 to a local socat that holds the one TLS connection to the edge (Debian's SIPp has no TLS). socat's CPU at each edge's best rate is in the table: far from a core, so the shim was not the limit; the single-threaded SIPp (its own TCP and scenario work) may be at the top rates."
    echo "- The capacity figures (calls, handshakes, idle phones) run with per-source limits raised on both edges (sipward's [protection], [transport] per-source caps and, for the one connection carrying every call, send_queue 4 MiB; Kamailio's pike), because one load generator plays every phone. The attack runs each edge's deployment defaults."
    echo "- Handshakes: one s_time client, one connection at a time, so the rate is the handshake's latency; CPU per handshake is the edge's cost. Resumption is measured on TLS 1.2 (see above); the table counts all s_time connections, resumed or not."
    echo "- Not measured: the issue's \"1,000 phones with a connection each\" call rate (SIPp -t tn would need a socat per connection; no TLS load generator of our own for it yet)."
    echo
    echo "## UDP (bench/compare/run.sh FIGURES=calls, this run, beside the latest committed results)"
    echo
    echo "$udp_table"
} | tee "$out"
say "wrote $out"
