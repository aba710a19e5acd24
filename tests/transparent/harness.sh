#!/usr/bin/env bash
# Issue 19's judging harness: the same office / router / provider topology in network
# namespaces, the router's SIP ALG being either sipward in transparent mode or the
# kernel's nf_conntrack_sip + nf_nat_sip; one PASS/FAIL row per case.
# Usage (root): tests/transparent/harness.sh --alg sipward|kernel [--cases 1,3,7]
#               [--manual-firewall] [--keep] [--no-record]  (--no-record: results not written)
# See tests/transparent/README.md.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SC=$HERE/sipp
TOOLS=$HERE/tools.py
ALL_CASES="1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"

usage() {
    sed -n 2,8p "$0" | sed 's/^# \{0,1\}//'
}

ALG="" CASES="" MANUAL_FW=0 KEEP=0 RECORD=1
while [ $# -gt 0 ]; do
    case $1 in
    --alg) ALG=${2:-}; shift 2 ;;
    --cases) CASES=${2:-}; shift 2 ;;
    --manual-firewall) MANUAL_FW=1; shift ;;
    --keep) KEEP=1; shift ;;
    --no-record) RECORD=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "harness: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case $ALG in sipward | kernel) ;; *) usage >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "harness: needs root (network namespaces)" >&2; exit 2; }
for tool in ip ss nft curl sipp kamailio tcpdump python3 baresip sox soxi timeout; do
    command -v $tool >/dev/null || { echo "harness: $tool is missing (scripts/install-deps.sh)" >&2; exit 2; }
done
FULL_RUN=1
if [ -n "$CASES" ]; then
    FULL_RUN=0
    CASES=${CASES//,/ }
else
    CASES=$ALL_CASES
fi
SIPWARD=${SIPWARD:-$ROOT/target/debug/sipward}
SIPWARD_CONFIG=${SIPWARD_CONFIG:-$HERE/sipward.toml}
if [ "$ALG" = sipward ] && [ ! -x "$SIPWARD" ]; then
    (cd "$ROOT" && cargo build --offline -p sipward) || exit 2
fi

ID=swt-$$
NS_O=$ID-office NS_G=$ID-gw NS_N=$ID-net
O="ip netns exec $NS_O"
G="ip netns exec $NS_G"
N="ip netns exec $NS_N"
WORK=$(mktemp -d /tmp/swt-XXXXXX)
chmod 755 "$WORK"

PA=198.51.100.10 PB=198.51.100.20 NODE2=198.51.100.11 CALLER=198.51.100.12
MEDIA=198.51.100.30 FAR=198.51.100.40 GW_LAN=10.10.0.1 GW_WAN=198.51.100.1
P1=10.10.0.10 P2=10.10.0.11 P3=10.10.0.12 P4=10.10.0.13 P5=10.10.0.14 P6=10.10.0.15

cleanup() {
    set +e
    local ns pids
    # sipward first, politely, so that a managed firewall is taken down by sipward itself
    [ -n "${SW_PID:-}" ] && kill "$SW_PID" 2>/dev/null && sleep 0.5
    for ns in $NS_O $NS_G $NS_N; do
        [ -e /run/netns/$ns ] || continue
        pids=$(ip netns pids $ns 2>/dev/null)
        [ -n "$pids" ] && kill $pids 2>/dev/null
    done
    sleep 0.3
    for ns in $NS_O $NS_G $NS_N; do
        [ -e /run/netns/$ns ] || continue
        pids=$(ip netns pids $ns 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del $ns 2>/dev/null
    done
    if [ "$KEEP" = 1 ]; then echo "harness: work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "harness: $*" >&2; exit 2; }
now() { date +%s.%N; }

# --- topology ---------------------------------------------------------------------
ip netns add $NS_O && ip netns add $NS_G && ip netns add $NS_N || die "cannot create namespaces"
# The router's devices carry the configuration's interface names (office, wan).
ip link add eth0 netns $NS_O type veth peer name office netns $NS_G || die "veth office"
ip link add eth0 netns $NS_N type veth peer name wan netns $NS_G || die "veth wan"
for ns in $NS_O $NS_G $NS_N; do ip -n $ns link set lo up; done
ip -n $NS_O link set eth0 up
for a in $P1 $P2 $P3 $P4 $P5 $P6; do ip -n $NS_O addr add $a/24 dev eth0; done
ip -n $NS_O route add default via $GW_LAN
ip -n $NS_G addr add $GW_LAN/24 dev office
ip -n $NS_G addr add $GW_WAN/24 dev wan
ip -n $NS_G link set office up
ip -n $NS_G link set wan up
ip -n $NS_N link set eth0 up
# The provider side has no route to the office: a leaked private address goes nowhere.
for a in $PA $NODE2 $CALLER $PB $MEDIA $FAR; do ip -n $NS_N addr add $a/24 dev eth0; done
$G sysctl -qw net.ipv4.ip_forward=1
sleep 1.5 # duplicate address detection is IPv6-only, but let the links settle

# The office router: forward only what the office starts (and what belongs to it),
# masquerade the office behind the WAN address.
$G nft -f - <<EOF || die "router firewall"
table inet swt_router {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "office" oifname "wan" accept
        counter comment "dropped"
    }
}
table ip swt_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" ip saddr 10.10.0.0/24 masquerade
    }
}
EOF

if [ "$ALG" = kernel ]; then
    $G nft -f - <<EOF || die "kernel ALG (ct helper sip)"
table inet swt_kernel_alg {
    ct helper sip_udp {
        type "sip" protocol udp;
        l3proto ip;
    }
    ct helper sip_tcp {
        type "sip" protocol tcp;
        l3proto ip;
    }
    chain prerouting {
        type filter hook prerouting priority filter; policy accept;
        iifname "office" udp dport 5060 ct helper set "sip_udp"
        iifname "office" tcp dport 5060 ct helper set "sip_tcp"
    }
}
EOF
fi

# --- captures ---------------------------------------------------------------------
$N tcpdump -i eth0 -n -U -s 0 -w $WORK/net.pcap >$WORK/tcpdump-net.log 2>&1 &
$O tcpdump -i eth0 -n -U -s 0 -w $WORK/office.pcap >$WORK/tcpdump-office.log 2>&1 &
for f in net office; do
    for _ in $(seq 50); do grep -q "listening on" $WORK/tcpdump-$f.log && break; sleep 0.1; done
done

# --- providers ----------------------------------------------------------------------
start_kamailio() { # name, listen...
    local name=$1
    shift
    local args=()
    for l in "$@"; do args+=(-l "udp:$l"); done
    mkdir -p $WORK/$name
    $N kamailio -f $HERE/kamailio.cfg "${args[@]}" -DD -E -P $WORK/$name/pid -Y $WORK/$name -w $WORK/$name \
        >$WORK/$name.log 2>&1 &
}
start_kamailio proxy-a $PA:5060
start_kamailio proxy-b $PB:5060 $PB:5080
for _ in $(seq 50); do
    up=$($N ss -Huln | grep -c -E "($PA|$PB):50[68]0")
    [ "$up" -ge 3 ] && break
    sleep 0.1
done
[ "$up" -ge 3 ] || die "kamailio did not start: $(tail -3 $WORK/proxy-a.log)"

# --- sipward --------------------------------------------------------------------------
SW_PID="" SW_ERROR=""
start_sipward() {
    local cfg=$WORK/sipward.toml
    sed -e "s|^events = .*|events = \"$WORK/events.jsonl\"|" "$SIPWARD_CONFIG" >$cfg
    if [ "$MANUAL_FW" = 1 ]; then
        sed -i -e 's/^manage_firewall = true/manage_firewall = false/' $cfg
        if ! $G "$SIPWARD" nft-rules --config $cfg >$WORK/nft-rules.txt 2>$WORK/nft-rules.err; then
            SW_ERROR="sipward nft-rules failed: $(head -c 200 $WORK/nft-rules.err)"
            return
        fi
        # The ruleset, then `ip rule` / `ip route` lines (possibly as comments, possibly
        # several on one line joined by ";").
        grep -v -E '^[#[:space:]]*ip (-4 |-6 )?(rule|route) ' $WORK/nft-rules.txt >$WORK/nft-rules.nft
        if ! $G nft -f $WORK/nft-rules.nft 2>$WORK/nft-load.err; then
            SW_ERROR="nft -f of the printed rules failed: $(head -c 200 $WORK/nft-load.err)"
            return
        fi
        grep -E '^[#[:space:]]*ip (-4 |-6 )?(rule|route) ' $WORK/nft-rules.txt | sed 's/^[#[:space:]]*//' |
            tr ';' '\n' | sed 's/^[[:space:]]*//' | grep -E '^ip ' >$WORK/nft-rules.ip
        [ -s $WORK/nft-rules.ip ] || { SW_ERROR="sipward nft-rules printed no ip rule/route lines"; return; }
        while read -r line; do
            # shellcheck disable=SC2086
            $G $line 2>>$WORK/nft-load.err || { SW_ERROR="'$line' failed: $(tail -1 $WORK/nft-load.err)"; return; }
        done <$WORK/nft-rules.ip
    fi
    $G "$SIPWARD" run --config $cfg >$WORK/sipward.out 2>$WORK/sipward.err &
    SW_PID=$!
    for _ in $(seq 100); do
        grep -q "^sipward: ready" $WORK/sipward.out && return
        kill -0 $SW_PID 2>/dev/null || break
        sleep 0.1
    done
    SW_ERROR="sipward did not start: $(grep -v '^$' $WORK/sipward.err | tail -2 | tr '\n' ' ' | head -c 300)"
}
if [ "$ALG" = sipward ]; then
    start_sipward
    [ -n "$SW_ERROR" ] && echo "harness: $SW_ERROR" >&2
fi

# --- helpers ----------------------------------------------------------------------
MP=30000
next_mp() { MP=$((MP + 4)); }
# sipp_bg LOGNAME NS-PREFIX SCENARIO ARGS...: SIPp in the background (bounded); pid in $!.
sipp_bg() {
    local log=$1 ns=$2 scen=$3
    shift 3
    next_mp
    (cd $WORK && exec $ns timeout 12 sipp -sf $scen -mp $MP -m 1 -nostdin -timeout 8s "$@" >$WORK/$log.log 2>&1) &
}
sipp_rc() { wait "$1"; }
# register NAME NS IP USER TARGET [extra sipp args]
register() {
    local name=$1 ns=$2 ip=$3 user=$4 target=$5
    shift 5
    next_mp
    (cd $WORK && $ns timeout 8 sipp -sf $SC/register.xml "$target" -i $ip -p 5060 -mp $MP -m 1 -nostdin \
        -timeout 6s -s $user "$@" >$WORK/$name.log 2>&1)
}
# answerer NAME IP USER: a phone waiting for one call on IP:5060 (SDP port 6002)
answerer() {
    sipp_bg $1 "$O" $ROOT/tests/sipp/phone_answer.xml -i $2 -p 5060 -s $3
}
peer_bg() { # NAME NS BIND DURATION ARGS...
    local name=$1 ns=$2 bind=$3 dur=$4
    shift 4
    $ns python3 $TOOLS peer $bind $dur $WORK/$name.json "$@" 2>$WORK/$name.err &
    PEERS+=($!)
}
PEERS=()
wait_peers() {
    local p
    for p in "${PEERS[@]}"; do wait $p; done
    PEERS=()
}
received() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['received'])" $WORK/$1.json 2>/dev/null || echo 0; }
contact_of() { # PROXYLOG USER -> the last Contact URI the registrar saved for USER
    grep "swt-contact $2 " $WORK/$1.log | tail -1 | sed -e 's/^.*swt-contact [^ ]* //' -e 's/^.*<\(.*\)>.*$/\1/'
}
uri_hostport() { # sip:user@host[:port][;params] -> host:port
    local hp=${1#*@}
    hp=${hp%%;*}
    hp=${hp%%>*}
    case $hp in *:*) echo $hp ;; *) echo $hp:5060 ;; esac
}
LEAK=""
leak_check() { # T0 T1: sets LEAK to a description when an office address shows on the net side
    if python3 $TOOLS leak $WORK/net.pcap $1 $2 10.10.0. >$WORK/leak.out 2>&1; then
        LEAK=""
    else
        LEAK="office address on the net side: $(head -1 $WORK/leak.out | head -c 200)"
    fi
}

# sipward's own count of what the router diverted to it (0 for the kernel ALG)
metrics() {
    $G curl -s -m 2 -H "Authorization: Bearer $(sed -n 's/^token = "\(.*\)"/\1/p' $WORK/sipward.toml)" \
        http://127.0.0.1:8080/metrics 2>/dev/null
}
diverted() {
    [ "$ALG" = sipward ] && [ -n "$SW_PID" ] || { echo 0; return; }
    metrics | awk '/^sipward_diverted_(total|unmatched_total)/ {n += $NF} END {print n + 0}'
}

R="" WHY=""
pass() { R=PASS WHY="$*"; }
fail() { R=FAIL WHY="$*"; }

# --- cases ---------------------------------------------------------------------------
# Each sets R and WHY. T0 is the case's start (for the captures).

title_1="SIPp call with RTP to the proxy's address, no office address on the net side"
case_1() {
    rm -f $WORK/c1-*.sdp
    sipp_bg c1-far "$N" $SC/answer.xml -i $FAR -p 5060 -set mport 7000 -set sdpfile $WORK/c1-offer.sdp
    local far=$!
    peer_bg c1-farmedia "$N" $FAR:7000 5 --echo
    peer_bg c1-phonemedia "$O" $P1:6000 5 --send-file $WORK/c1-answer.sdp --delay 0.3
    sleep 0.3
    sipp_bg c1-phone "$O" $SC/call.xml $PA:5060 -i $P1 -p 5060 -d 2500 \
        -set ruri sip:echo@$PA -set mport 6000 -set sdpfile $WORK/c1-answer.sdp
    local phone=$!
    sipp_rc $phone; local rp=$?
    sipp_rc $far; local rf=$?
    wait_peers
    local back fwd
    fwd=$(received c1-farmedia) back=$(received c1-phonemedia)
    leak_check $T0 $(now)
    if [ $rp -ne 0 ] || [ $rf -ne 0 ]; then
        fail "call failed (phone sipp $rp, far end $rf)"
    elif [ "$fwd" -lt 9 ] || [ "$back" -lt 9 ]; then
        fail "RTP: far end got $fwd/10, phone got $back/10 back"
    elif [ -n "$LEAK" ]; then
        fail "call ok, RTP $fwd/10 out and $back/10 back, but $LEAK"
    else
        pass "call ok, RTP $fwd/10 out and $back/10 back, no office address in $(grep -o 'packets=[0-9]*' $WORK/leak.out) net-side packets"
    fi
}

title_2="every SIP datagram the phone receives comes from the proxy's address"
case_2() {
    register c2-reg "$O" $P1 p1 $PA:5060
    local rr=$?
    sipp_bg c2-far "$N" $SC/answer.xml -i $FAR -p 5060 -set mport 7000 -set sdpfile $WORK/c2-offer.sdp
    local far=$!
    sleep 0.2
    sipp_bg c2-phone "$O" $SC/call.xml $PA:5060 -i $P1 -p 5060 -d 300 \
        -set ruri sip:echo@$PA -set mport 6000 -set sdpfile $WORK/c2-answer.sdp
    local phone=$!
    sipp_rc $phone; local rp=$?
    sipp_rc $far
    sleep 0.2
    local seen
    seen=$(python3 $TOOLS sources $WORK/office.pcap $T0 $(now) 10.10.0. 5060)
    local others
    others=$(python3 -c "import json,sys;d=json.loads(sys.argv[1]);print(' '.join(k for k in d if k!='$PA:5060'))" "$seen")
    if [ $rr -ne 0 ] || [ $rp -ne 0 ]; then
        fail "register $rr / call $rp failed; sources $seen"
    elif [ "$seen" = "{}" ]; then
        fail "no datagram reached the phone"
    elif [ -n "$others" ]; then
        fail "datagrams from $others (all: $seen)"
    else
        pass "all from $PA:5060: $seen"
    fi
}

title_3="inbound call from the registrar (proxy A) rings"
case_3() {
    register c3-reg "$O" $P1 p1 $PA:5060 || { fail "REGISTER failed ($(grep -m1 -o 'Failed call.*' $WORK/c3-reg.log))"; return; }
    answerer c3-phone $P1 p1
    local phone=$!
    sleep 0.3
    sipp_bg c3-caller "$N" $SC/call.xml $PA:5060 -i $CALLER -p 5060 -d 300 \
        -set ruri sip:p1@$PA -set mport 7100 -set sdpfile $WORK/c3-answer.sdp
    local caller=$!
    sipp_rc $caller; local rc=$?
    sipp_rc $phone; local rp=$?
    leak_check $T0 $(now)
    if [ $rp -ne 0 ] || [ $rc -ne 0 ]; then
        fail "phone sipp $rp, caller $rc ($(grep -c INVITE $WORK/c3-phone.log >/dev/null; [ $rp -eq 0 ] || echo "the phone did not get/finish the call"))"
    elif [ -n "$LEAK" ]; then
        fail "rang, but $LEAK"
    else
        pass "rang and answered via $PA"
    fi
}

title_4="inbound call from a second provider node (.11) to the registered Contact rings"
case_4() {
    register c4-reg "$O" $P1 p1 $PA:5060 || { fail "REGISTER failed"; return; }
    local contact
    contact=$(contact_of proxy-a p1)
    [ -n "$contact" ] || { fail "registrar logged no Contact for p1"; return; }
    answerer c4-phone $P1 p1
    local phone=$!
    sleep 0.3
    sipp_bg c4-node "$N" $SC/call.xml $(uri_hostport "$contact") -i $NODE2 -p 5060 -d 300 \
        -set ruri "$contact" -set mport 7100 -set sdpfile $WORK/c4-answer.sdp
    local node=$!
    sipp_rc $node; local rn=$?
    sipp_rc $phone; local rp=$?
    if [ $rp -ne 0 ] || [ $rn -ne 0 ]; then
        fail "the INVITE from $NODE2 to the registered $contact did not ring the phone (phone sipp $rp, node $rn)"
    else
        pass "rang: $NODE2 -> $contact"
    fi
}

title_5="two phones both on source port 5060 register and both ring"
case_5() {
    register c5-reg1 "$O" $P1 p1 $PA:5060 || { fail "p1 REGISTER failed"; return; }
    register c5-reg2 "$O" $P2 p2 $PA:5060 || { fail "p2 REGISTER failed"; return; }
    local c1 c2
    c1=$(contact_of proxy-a p1) c2=$(contact_of proxy-a p2)
    answerer c5-p1 $P1 p1
    local a1=$!
    answerer c5-p2 $P2 p2
    local a2=$!
    sleep 0.3
    sipp_bg c5-call1 "$N" $SC/call.xml $PA:5060 -i $CALLER -p 5060 -d 200 \
        -set ruri sip:p1@$PA -set mport 7100 -set sdpfile $WORK/c5-a1.sdp
    local k1=$!
    sipp_bg c5-call2 "$N" $SC/call.xml $PA:5060 -i $CALLER -p 5062 -d 200 \
        -set ruri sip:p2@$PA -set mport 7200 -set sdpfile $WORK/c5-a2.sdp
    local k2=$!
    sipp_rc $k1; local r1=$?
    sipp_rc $k2; local r2=$?
    sipp_rc $a1; local s1=$?
    sipp_rc $a2; local s2=$?
    if [ $((r1 + r2 + s1 + s2)) -ne 0 ]; then
        fail "p1 rang: $([ $s1 = 0 ] && echo yes || echo no), p2 rang: $([ $s2 = 0 ] && echo yes || echo no) (contacts $c1, $c2)"
    else
        pass "both rang (contacts $c1, $c2)"
    fi
}

title_6="two proxies, a phone registered at each, both get their calls"
case_6() {
    register c6-reg1 "$O" $P1 p1 $PA:5060 || { fail "p1 REGISTER at A failed"; return; }
    register c6-reg3 "$O" $P3 p3 $PB:5060 || { fail "p3 REGISTER at B failed"; return; }
    answerer c6-p1 $P1 p1
    local a1=$!
    answerer c6-p3 $P3 p3
    local a3=$!
    sleep 0.3
    sipp_bg c6-callA "$N" $SC/call.xml $PA:5060 -i $CALLER -p 5060 -d 200 \
        -set ruri sip:p1@$PA -set mport 7100 -set sdpfile $WORK/c6-a1.sdp
    local k1=$!
    sipp_bg c6-callB "$N" $SC/call.xml $PB:5060 -i $CALLER -p 5062 -d 200 \
        -set ruri sip:p3@$PB -set mport 7200 -set sdpfile $WORK/c6-a3.sdp
    local k3=$!
    sipp_rc $k1; local r1=$?
    sipp_rc $k3; local r3=$?
    sipp_rc $a1; local s1=$?
    sipp_rc $a3; local s3=$?
    if [ $((r1 + r3 + s1 + s3)) -ne 0 ]; then
        fail "phone at A rang: $([ $s1 = 0 ] && echo yes || echo no), phone at B rang: $([ $s3 = 0 ] && echo yes || echo no)"
    else
        pass "both rang, each through its own proxy"
    fi
}

title_7="media from a media server (.30) that is not the signalling peer, far end first"
case_7() {
    sipp_bg c7-media "$N" $SC/answer.xml -i $MEDIA -p 5060 -set mport 7000 -set sdpfile $WORK/c7-offer.sdp
    local ms=$!
    peer_bg c7-mediartp "$N" $MEDIA:7000 5 --send-file $WORK/c7-offer.sdp --delay 0.1
    peer_bg c7-phonertp "$O" $P1:6000 5
    sleep 0.3
    sipp_bg c7-phone "$O" $SC/call.xml $PA:5060 -i $P1 -p 5060 -d 2500 \
        -set ruri sip:media@$PA -set mport 6000 -set sdpfile $WORK/c7-answer.sdp
    local phone=$!
    sipp_rc $phone; local rp=$?
    sipp_rc $ms; local rm=$?
    wait_peers
    local got
    got=$(received c7-phonertp)
    if [ $rp -ne 0 ] || [ $rm -ne 0 ]; then
        fail "call failed (phone $rp, media server $rm)"
    elif [ "$got" -lt 9 ]; then
        fail "$got/10 RTP packets from $MEDIA reached the phone"
    else
        pass "$got/10 RTP packets from $MEDIA reached the phone"
    fi
}

title_8="asymmetric RTP (phone sends from another port than its SDP's), latching"
case_8() {
    sipp_bg c8-far "$N" $SC/answer.xml -i $FAR -p 5060 -set mport 7000 -set sdpfile $WORK/c8-offer.sdp
    local far=$!
    # The far end sends to the address the offer named, once the phone's stream has begun.
    peer_bg c8-farrtp "$N" $FAR:7000 5 --send-file $WORK/c8-offer.sdp --delay 1.2
    peer_bg c8-phonertp "$O" $P1:6002 5 --send-file $WORK/c8-answer.sdp --delay 0.3 --extra-bind $P1:6000
    sleep 0.3
    sipp_bg c8-phone "$O" $SC/call.xml $PA:5060 -i $P1 -p 5060 -d 3000 \
        -set ruri sip:echo@$PA -set mport 6000 -set sdpfile $WORK/c8-answer.sdp
    local phone=$!
    sipp_rc $phone; local rp=$?
    sipp_rc $far; local rf=$?
    wait_peers
    local fwd back
    fwd=$(received c8-farrtp) back=$(received c8-phonertp)
    if [ $rp -ne 0 ] || [ $rf -ne 0 ]; then
        fail "call failed (phone $rp, far end $rf)"
    elif [ "$fwd" -lt 9 ] || [ "$back" -lt 9 ]; then
        fail "far end got $fwd/10 sent from port 6002; phone got $back/10 of the far end's"
    else
        pass "far end got $fwd/10 from port 6002; phone got $back/10 back"
    fi
}

title_9="SIP on port 5080 (proxy B): call with RTP, no office address on the net side"
case_9() {
    register c9-reg "$O" $P6 p6 $PB:5080 || { fail "REGISTER to $PB:5080 failed"; return; }
    sipp_bg c9-far "$N" $SC/answer.xml -i $FAR -p 5060 -set mport 7000 -set sdpfile $WORK/c9-offer.sdp
    local far=$!
    peer_bg c9-farrtp "$N" $FAR:7000 5 --echo
    peer_bg c9-phonertp "$O" $P6:6000 5 --send-file $WORK/c9-answer.sdp --delay 0.3
    sleep 0.3
    sipp_bg c9-phone "$O" $SC/call.xml $PB:5080 -i $P6 -p 5060 -d 2500 \
        -set ruri sip:echo@$PB:5080 -set mport 6000 -set sdpfile $WORK/c9-answer.sdp
    local phone=$!
    sipp_rc $phone; local rp=$?
    sipp_rc $far; local rf=$?
    wait_peers
    local fwd back
    fwd=$(received c9-farrtp) back=$(received c9-phonertp)
    leak_check $T0 $(now)
    if [ $rp -ne 0 ] || [ $rf -ne 0 ]; then
        fail "call failed (phone $rp, far end $rf) ${LEAK}"
    elif [ -n "$LEAK" ]; then
        fail "call ok (RTP $fwd/10, $back/10), but $LEAK"
    elif [ "$fwd" -lt 9 ] || [ "$back" -lt 9 ]; then
        fail "RTP: far end got $fwd/10, phone got $back/10 back"
    else
        pass "call ok on 5080, RTP $fwd/10 and $back/10, no leak"
    fi
}

title_10="hold and resume, media moved by re-INVITE"
case_10() {
    sipp_bg c10-far "$N" $SC/hold_answer.xml -i $FAR -p 5060 -set mport 7000 -set mport2 7002
    local far=$!
    peer_bg c10-farrtp "$N" $FAR:7002 6 --echo
    peer_bg c10-phonertp "$O" $P1:6000 6 --send-file $WORK/c10-answer.sdp --delay 0.3
    sleep 0.3
    sipp_bg c10-phone "$O" $SC/hold_call.xml $PA:5060 -i $P1 -p 5060 -d 2500 \
        -set ruri sip:echo@$PA -set mport 6000 -set sdpfile $WORK/c10-answer.sdp
    local phone=$!
    sipp_rc $phone; local rp=$?
    sipp_rc $far; local rf=$?
    wait_peers
    local fwd back
    fwd=$(received c10-farrtp) back=$(received c10-phonertp)
    leak_check $T0 $(now)
    if [ $rp -ne 0 ] || [ $rf -ne 0 ]; then
        fail "hold/resume signalling failed (phone $rp, far end $rf)"
    elif [ "$fwd" -lt 9 ] || [ "$back" -lt 9 ]; then
        fail "after the move to port 7002: far end got $fwd/10, phone got $back/10 back"
    elif [ -n "$LEAK" ]; then
        fail "hold, resume and RTP on the moved port ok ($fwd/10, $back/10), but $LEAK"
    else
        pass "held (recvonly answer), resumed, RTP on the moved port $fwd/10 and $back/10"
    fi
}

title_11="hairpin: two office phones call each other through the proxy"
case_11() {
    register c11-reg "$O" $P2 p2 $PA:5060 || { fail "p2 REGISTER failed"; return; }
    sipp_bg c11-p2 "$O" $SC/answer.xml -i $P2 -p 5060 -set mport 6002 -set sdpfile $WORK/c11-offer.sdp
    local callee=$!
    peer_bg c11-p2rtp "$O" $P2:6002 5 --echo
    peer_bg c11-p1rtp "$O" $P1:6000 5 --send-file $WORK/c11-answer.sdp --delay 0.3
    sleep 0.3
    sipp_bg c11-p1 "$O" $SC/call.xml $PA:5060 -i $P1 -p 5060 -d 2500 \
        -set ruri sip:p2@$PA -set mport 6000 -set sdpfile $WORK/c11-answer.sdp
    local caller=$!
    sipp_rc $caller; local r1=$?
    sipp_rc $callee; local r2=$?
    wait_peers
    local fwd back
    fwd=$(received c11-p2rtp) back=$(received c11-p1rtp)
    leak_check $T0 $(now)
    if [ $r1 -ne 0 ] || [ $r2 -ne 0 ]; then
        fail "call failed (caller $r1, callee $r2)"
    elif [ "$fwd" -lt 9 ] || [ "$back" -lt 9 ]; then
        fail "RTP: callee got $fwd/10, caller got $back/10 back"
    elif [ -n "$LEAK" ]; then
        fail "call ok, RTP $fwd/10 and $back/10, but $LEAK"
    else
        pass "call ok, RTP $fwd/10 and $back/10, no leak"
    fi
}

title_12="office phone-to-phone traffic (direct) is untouched"
case_12() {
    sipp_bg c12-p2 "$O" $SC/answer.xml -i $P2 -p 5060 -set mport 6002 -set sdpfile $WORK/c12-offer.sdp
    local callee=$!
    sleep 0.3
    sipp_bg c12-p1 "$O" $SC/call.xml $P2:5060 -i $P1 -p 5060 -d 200 \
        -set ruri sip:p2@$P2 -set mport 6000 -set sdpfile $WORK/c12-answer.sdp
    local caller=$!
    sipp_rc $caller; local r1=$?
    sipp_rc $callee; local r2=$?
    local offer answer
    offer=$(cat $WORK/c12-offer.sdp 2>/dev/null) answer=$(cat $WORK/c12-answer.sdp 2>/dev/null)
    local netside diverted_now
    netside=$(python3 $TOOLS leak $WORK/net.pcap $T0 $(now) 10.10.0. | grep -o 'packets=[0-9]*')
    diverted_now=$(diverted)
    if [ $r1 -ne 0 ] || [ $r2 -ne 0 ]; then
        fail "direct call failed (caller $r1, callee $r2)"
    elif [ "$offer" != "$P1 6000" ] || [ "$answer" != "$P2 6002" ]; then
        fail "SDP altered: offer '$offer', answer '$answer'"
    elif [ "$netside" != "packets=0" ]; then
        fail "traffic went to the net side ($netside)"
    elif [ "$diverted_now" != "$DIVERTED0" ]; then
        fail "the router diverted $((diverted_now - DIVERTED0)) datagrams of a direct call"
    else
        pass "SDP arrived as sent ($offer / $answer), nothing on the net side"
    fi
}

title_13="explicit-mode phone (to $GW_LAN:5060) beside a transparent one, both ring"
case_13() {
    register c13-reg4 "$O" $P4 p4 $PA:5060 -rsa $GW_LAN:5060 || { fail "explicit phone's REGISTER via $GW_LAN failed"; return; }
    register c13-reg1 "$O" $P1 p1 $PA:5060 || { fail "transparent phone's REGISTER failed"; return; }
    answerer c13-p4 $P4 p4
    local a4=$!
    answerer c13-p1 $P1 p1
    local a1=$!
    sleep 0.3
    sipp_bg c13-call4 "$N" $SC/call.xml $PA:5060 -i $CALLER -p 5060 -d 200 \
        -set ruri sip:p4@$PA -set mport 7100 -set sdpfile $WORK/c13-a4.sdp
    local k4=$!
    sipp_bg c13-call1 "$N" $SC/call.xml $PA:5060 -i $CALLER -p 5062 -d 200 \
        -set ruri sip:p1@$PA -set mport 7200 -set sdpfile $WORK/c13-a1.sdp
    local k1=$!
    sipp_rc $k4; local r4=$?
    sipp_rc $k1; local r1=$?
    sipp_rc $a4; local s4=$?
    sipp_rc $a1; local s1=$?
    leak_check $T0 $(now)
    if [ $((r4 + r1 + s4 + s1)) -ne 0 ]; then
        fail "explicit phone rang: $([ $s4 = 0 ] && echo yes || echo no), transparent phone rang: $([ $s1 = 0 ] && echo yes || echo no)"
    elif [ -n "$LEAK" ]; then
        fail "both rang, but $LEAK"
    else
        pass "both registered and rang"
    fi
}

baresip_dir() { # DIR IP SOURCE ACCOUNT
    mkdir -p $1
    cat >$1/config <<EOF
poll_method epoll
sip_listen $2:5060
sip_trans_def udp
audio_player aubridge,nil
audio_alert aubridge,nil
audio_source aufile,$3
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module aubridge.so
module sndfile.so
module account.so
module menu.so
snd_path $1
EOF
    echo "$4" >$1/accounts
}

title_14="baresip registered to the proxy's address, audio decoded at the far end"
case_14() {
    local d=$WORK/c14
    mkdir -p $d
    sox -n -r 8000 -c 1 -b 16 $d/tone.wav synth 3 sine 440 2>/dev/null
    sox -n -r 8000 -c 1 -b 16 $d/filler.wav synth 10 sine 300 2>/dev/null
    baresip_dir $d/far $FAR $d/filler.wav "<sip:echo@$FAR>;regint=0;answermode=auto"
    baresip_dir $d/phone $P5 $d/tone.wav "<sip:p5@$PA>;regint=600"
    (cd $d/far && exec $N timeout 14 baresip -f $d/far -n $FAR -t 10 </dev/null >$d/far.log 2>&1) &
    local far=$!
    sleep 1
    (cd $d/phone && exec $O timeout 14 baresip -f $d/phone -n $P5 -e "/dial sip:echo@$PA" -t 7 </dev/null \
        >$d/phone.log 2>&1) &
    local phone=$!
    wait $phone
    wait $far
    local dec registered len freq
    dec=$(ls $d/far/*-dec.wav 2>/dev/null | head -1)
    registered=$(contact_of proxy-a p5)
    leak_check $T0 $(now)
    if [ -z "$registered" ]; then
        fail "baresip did not register at $PA"
    elif [ -z "$dec" ]; then
        fail "no call reached the far end (no decoded recording)"
    else
        len=$(soxi -D $dec 2>/dev/null || echo 0)
        freq=$(sox $dec -n stat 2>&1 | sed -n 's/^Rough   frequency: *//p')
        if python3 -c "import sys; l,f=float(sys.argv[1]),float(sys.argv[2] or 0); sys.exit(0 if l>=2.5 and 420<=f<=460 else 1)" "$len" "${freq:-0}"; then
            if [ -n "$LEAK" ]; then fail "audio ok (${len}s), but $LEAK"; else pass "registered; far end decoded ${len}s of the 3 s tone at ${freq} Hz"; fi
        else
            fail "far end decoded ${len}s at ${freq:-?} Hz (sent 3 s of 440 Hz)"
        fi
    fi
}

title_15="REGISTER text in an HTTP body to port 5060 (NAT slipstreaming) opens nothing"
case_15() {
    $N python3 $TOOLS slipsrv $PA 4 2>$WORK/c15-srv.err &
    local srv=$!
    $O python3 $TOOLS listen $P1:7777 5 $WORK/c15-listen.json 2>$WORK/c15-listen.err &
    local lis=$!
    sleep 0.3
    $O python3 $TOOLS slip $P1 $PA 7777 2>$WORK/c15-slip.err
    sleep 0.3
    local expectations
    expectations=$($G cat /proc/net/nf_conntrack_expect 2>/dev/null | grep -c 7777)
    for src in $PA $FAR; do
        $N python3 $TOOLS knock $src $GW_WAN 7777 >>$WORK/c15-knock.out 2>&1
    done
    wait $lis
    wait $srv
    local got
    got=$(cat $WORK/c15-listen.json 2>/dev/null)
    if [ "$got" != "[]" ]; then
        fail "the phone's port 7777 was reached from outside: $got (expectations on 7777: ${expectations:-?})"
    else
        pass "nothing reached port 7777 from outside (expectations on 7777: ${expectations:-n/a})"
    fi
}

# --- run ---------------------------------------------------------------------------
ROWS=()
FAILS=0
for c in $CASES; do
    title_var=title_$c
    [ -n "${!title_var:-}" ] || die "no case $c"
    T0=$(now)
    if [ "$ALG" = sipward ] && [ -n "$SW_ERROR" ]; then
        fail "$SW_ERROR"
    else
        DIVERTED0=$(diverted)
        case_$c
        [ "$ALG" = sipward ] && WHY="$WHY; diverted to sipward: $(($(diverted) - DIVERTED0))"
    fi
    [ $R = PASS ] || FAILS=$((FAILS + 1))
    WHY=${WHY//|/\\|}
    ROWS+=("| $c | ${!title_var} | $R | ${WHY//$'\n'/ } |")
    echo "harness: case $c $R: $WHY" >&2
    sleep 0.3
done

version_of() { "$@" 2>&1 | grep -m1 -E '[0-9]+\.[0-9]+' | sed 's/^[[:space:]]*//; s/[[:space:]]*$//' | head -c 80; }
{
    echo "# Transparent-mode harness: --alg $ALG"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); \`tests/transparent/harness.sh --alg $ALG$([ $FULL_RUN = 1 ] || echo " --cases ${CASES// /,}")$([ $MANUAL_FW = 1 ] && echo " --manual-firewall")\`"
    echo
    if [ "$ALG" = kernel ]; then
        echo "Router ALG: nf_conntrack_sip + nf_nat_sip attached with \`ct helper set \"sip\"\` to udp/tcp 5060 from the office, masquerade."
    else
        echo "Router ALG: sipward (tree $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$([ -n "$(git -C "$ROOT" status --porcelain -- crates Cargo.lock 2>/dev/null)" ] && echo ", crates modified")) in transparent mode ($([ $MANUAL_FW = 1 ] && echo "rules from \`sipward nft-rules\` loaded by the harness" || echo "manage_firewall = true"))."
    fi
    echo
    echo "Environment: kernel $(uname -r); $(version_of sipp -v); $(version_of kamailio -v); $(nft -v); $(version_of baresip -h); $(python3 -V); $(tcpdump --version 2>&1 | head -1)."
    echo
    echo "| # | case | result | detail |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    if [ "$ALG" = sipward ] && [ -z "$SW_ERROR" ]; then
        echo "sipward's diversion counters at the end (/metrics):"
        echo
        echo '```'
        metrics | grep -E '^sipward_(diverted|transparent)'
        echo '```'
        echo
    fi
    echo "$((${#ROWS[@]} - FAILS))/${#ROWS[@]} passed."
} >$WORK/result.md
cat $WORK/result.md
if [ $FULL_RUN = 1 ] && [ $RECORD = 1 ]; then
    mkdir -p $HERE/results
    out=$ALG$([ $MANUAL_FW = 1 ] && echo -manual-firewall)-$(date -u +%Y-%m-%d).md
    cp $WORK/result.md $HERE/results/$out
    echo "harness: written to tests/transparent/results/$out" >&2
fi
[ $FAILS -eq 0 ]
