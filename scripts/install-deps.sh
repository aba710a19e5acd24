#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: Debian packages for the real SIP
# peers the tests run against (SIPp, sipsak, Kamailio, baresip, rtpengine, sipvicious), the
# tools they observe with (sox, tcpdump, chromium for the dashboard, curl, bc), and cargo-fuzz for the fuzz smoke run.
set -euo pipefail

need_apt=()
command -v sipp >/dev/null 2>&1 || need_apt+=(sip-tester)
command -v sipsak >/dev/null 2>&1 || need_apt+=(sipsak)
command -v kamailio >/dev/null 2>&1 || need_apt+=(kamailio)
# Kamailio's TLS module (the TLS proxy/registrar with mutual TLS in e2e_matrix).
dpkg -s kamailio-tls-modules >/dev/null 2>&1 || need_apt+=(kamailio-tls-modules)
# socat: the TLS shim in front of SIPp, which Debian builds without TLS.
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
# openssl: a TLS 1.1-only client the gateway must refuse (e2e_streams).
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v baresip >/dev/null 2>&1 || need_apt+=(baresip)
command -v rtpengine >/dev/null 2>&1 || need_apt+=(rtpengine-daemon)
command -v sipvicious_svcrack >/dev/null 2>&1 || command -v svcrack >/dev/null 2>&1 || need_apt+=(sipvicious)
command -v sox >/dev/null 2>&1 || need_apt+=(sox)
command -v tcpdump >/dev/null 2>&1 || need_apt+=(tcpdump)
command -v bc >/dev/null 2>&1 || need_apt+=(bc)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The Redis state store and the failover tests (e2e_failover) run a local redis-server.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# Transparent mode's tests: namespaces and policy routing, nftables, capsh (to start
# without CAP_NET_ADMIN), python3 (the phones and proxy of e2e_transparent).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v capsh >/dev/null 2>&1 || need_apt+=(libcap2-bin)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "install-deps: apt-get install ${need_apt[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
    echo "install-deps: cargo install cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
echo "install-deps: sipp $(command -v sipp), sipsak $(command -v sipsak), kamailio $(command -v kamailio), cargo-fuzz ok"
