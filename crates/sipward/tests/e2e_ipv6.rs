//! IPv6 through `sipward run` over UDP, with real peers: an IPv6 inside with an IPv4
//! outside and the reverse; REGISTER, then a call with RTP streamed one way and echoed
//! back, every hop counted by tcpdump; both relay engines; an inbound call to an IPv6
//! phone at its registered contact. The outside's SIPp logs every message it sent and
//! received: no inside address in any text form may be in it, and the SDP it got names
//! the gateway in its own family (`IN IP4` toward IPv4, `IN IP6` toward IPv6).
//!
//! Each test runs its processes in a network namespace of its own (`ip netns`): its
//! loopback has 127.0.0.0/8 as usual and gets the IPv6 addresses added, which the host's
//! loopback must not.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use common::{count, logged, scenario, Guard, Packet, Topology, ALICE_DIGEST};

/// A network namespace with loopback up and `addresses` added to it; deleted when
/// dropped (declare it before the processes that run in it, so that they stop first).
struct Namespace {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Namespace {
    fn new(tag: &str, addresses: &[&str]) -> Self {
        let ns = Namespace {
            name: format!("swv6-{}-{tag}", std::process::id()),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for a in addresses {
            // No duplicate address detection: the address is usable at once.
            let prefix = format!("{a}/64");
            ip(&["-n", &ns.name, "addr", "add", &prefix, "dev", "lo", "nodad"]);
        }
        ns
    }

    /// The command prefix that runs a program in the namespace.
    fn wrapper(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.name]
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Who stands where: the gateway's inside and outside addresses and their networks, the
/// phone inside and the proxy (registrar, far end, caller) outside.
struct Plan {
    lan: &'static str,
    lan_net: &'static str,
    phone: &'static str,
    wan: &'static str,
    wan_net: &'static str,
    proxy: &'static str,
    /// Text that names the inside in every form the peers write it ("fd00:" for the
    /// IPv6 inside, matched case-insensitively).
    inside_text: &'static str,
}

const V6_INSIDE: Plan = Plan {
    lan: "fd00::1",
    lan_net: "fd00::/64",
    phone: "fd00::20",
    wan: "127.0.61.1",
    wan_net: "127.0.61.0/24",
    proxy: "127.0.61.10",
    inside_text: "fd00:",
};

const V6_OUTSIDE: Plan = Plan {
    lan: "127.0.62.1",
    lan_net: "127.0.62.0/24",
    phone: "127.0.62.20",
    wan: "2001:db8::1",
    wan_net: "2001:db8::/64",
    proxy: "2001:db8::10",
    inside_text: "127.0.62.",
};

/// `ip` with `port`, bracketed for IPv6.
fn at(ip: &str, port: u16) -> String {
    SocketAddr::new(ip.parse().unwrap(), port).to_string()
}

/// "IP4" or "IP6", the SDP address type of `ip`.
fn sdp_type(ip: &str) -> &'static str {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

impl Plan {
    fn v6_addresses(&self) -> Vec<&'static str> {
        [self.lan, self.phone, self.wan, self.proxy]
            .into_iter()
            .filter(|a| a.contains(':'))
            .collect()
    }

    /// The gateway's configuration; `tail` is added at the end (whole tables).
    fn config(&self, t: &Topology, tail: &str) -> String {
        format!(
            r#"
[gateway]
name = "sipward-e2e"
events = "{events}"
[[interface]]
name = "lan"
address = "{lan}"
networks = ["{lan_net}"]
inside = true
media_ports = "30000-30099"
[[interface]]
name = "wan"
address = "{wan}"
networks = ["{wan_net}"]
media_ports = "30000-30099"
[[address]]
name = "phones"
network = "{lan_net}"
[[address]]
name = "proxy"
host = "{proxy}"
[alg.sip]
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
{tail}
"#,
            events = t.dir.join("events.jsonl").display(),
            lan = self.lan,
            lan_net = self.lan_net,
            wan = self.wan,
            wan_net = self.wan_net,
            proxy = at(self.proxy, 5060),
        )
    }
}

/// One test's namespace, topology directory and running gateway.
struct Bed {
    // Dropped in reverse order: the gateway first, the namespace last.
    ns: Namespace,
    t: Topology,
    _gateway: Option<Guard>,
}

impl Bed {
    fn new(tag: &str, n: u8, plan: &Plan, tail: &str) -> Bed {
        let ns = Namespace::new(tag, &plan.v6_addresses());
        let t = Topology::new(n);
        t.tone(2);
        let gateway = t.start_gateway_under(&ns.wrapper(), &plan.config(&t, tail));
        Bed {
            ns,
            t,
            _gateway: Some(gateway),
        }
    }

    /// [`Bed::new`] with a TLS certificate for the inside address, made by `sipward
    /// cert`, and a TLS listener for the phones beside the UDP one.
    fn with_tls(tag: &str, n: u8, plan: &Plan) -> Bed {
        let ns = Namespace::new(tag, &plan.v6_addresses());
        let t = Topology::new(n);
        let certs = t.dir.join("certs");
        let out = Command::new(env!("CARGO_BIN_EXE_sipward"))
            .args([
                "cert",
                "--name",
                "gw.sipward.test",
                "--ip",
                plan.lan,
                "--out",
            ])
            .arg(&certs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tls = format!(
            "inside = true\ntls = {{ certificate = \"{c}/gw.sipward.test.crt\", private_key = \"{c}/gw.sipward.test.key\" }}\n",
            c = certs.display()
        );
        let tail = "[service.sip-tls]\nprotocol = \"tls\"\nport = 5061\nalg = \"sip\"\n\
                    [[rule]]\naction = \"nat\"\nfrom = \"lan\"\nsource = \"phones\"\nto = \"wan\"\n\
                    destination = \"proxy\"\nservice = \"sip-tls\"\n";
        let config = plan.config(&t, tail).replacen("inside = true\n", &tls, 1);
        let gateway = t.start_gateway_under(&ns.wrapper(), &config);
        Bed {
            ns,
            t,
            _gateway: Some(gateway),
        }
    }

    fn sipp(&self, args: &[&str]) -> Guard {
        self.t.sipp_under(&self.ns.wrapper(), args)
    }

    /// Registers the phone as alice (digest) with the SIPp registrar outside, which
    /// writes the bound contact to contact.csv.
    fn register(&self, plan: &Plan, phone_extra: &[&str]) {
        let registrar = scenario("proxy_registrar.xml");
        let mut args = vec!["-sf", &registrar, "-i", plan.proxy, "-p", "5060", "-m", "1"];
        args.extend(logged("registrar_messages.log"));
        let registrar = self.sipp(&args);
        std::thread::sleep(Duration::from_millis(200));
        let (file, gw) = (scenario("phone_register.xml"), at(plan.lan, 5060));
        let mut args = vec!["-sf", &file, &gw, "-i", plan.phone, "-p", "5070", "-m", "1"];
        args.extend(ALICE_DIGEST);
        args.extend(phone_extra);
        self.sipp(&args).wait_ok("phone registration");
        registrar.wait_ok("registrar");
    }

    /// Every UDP datagram on loopback but SIP, from now until `stop`.
    fn capture(&self) -> common::Capture {
        self.t
            .capture_under(&self.ns.wrapper(), "udp and not portrange 5060-5099")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.t.dir.join(name)).unwrap()
    }
}

/// Every hop of one direction carried the same number of datagrams, about 100 (2 s of
/// 20 ms packets).
fn relayed(p: &[Packet], sender: &str, relay_in: &str, relay_out: &str, receiver: &str) -> usize {
    let sent = count(p, sender, relay_in);
    let delivered = count(p, relay_out, receiver);
    assert!(
        sent >= 90,
        "{sender} sent {sent} packets to {relay_in}, expected about 100"
    );
    assert_eq!(
        delivered, sent,
        "{sender} sent {sent} datagrams to {relay_in}; {receiver} got {delivered} from {relay_out}"
    );
    sent
}

/// The outside's message log names no inside address (in any case) and its SDP (when
/// `sdp`) names the gateway's outside address in the outside's family only.
fn assert_outside_clean(bed: &Bed, plan: &Plan, log: &str, sdp: bool) {
    let text = bed.log(log);
    assert!(text.contains("SIP/2.0"), "empty message log {log}");
    let inside = plan.inside_text.to_ascii_lowercase();
    for (i, line) in text.lines().enumerate() {
        assert!(
            !line.to_ascii_lowercase().contains(&inside),
            "{log}:{}: inside address: {line}",
            i + 1
        );
    }
    let (ours, theirs) = (sdp_type(plan.wan), sdp_type(plan.lan));
    if ours != theirs {
        assert!(
            !text.contains(&format!("IN {theirs}")),
            "{log}: an inside address type reached the outside:\n{text}"
        );
    }
    let gateway_line = format!("c=IN {ours} {}", plan.wan);
    assert!(
        !sdp || text.lines().any(|l| l.trim_end() == gateway_line),
        "{log}: no SDP naming the gateway's outside address {}:\n{text}",
        plan.wan
    );
}

/// The SDP the phone got names the gateway's inside address, in the inside's family.
fn assert_phone_sdp(bed: &Bed, plan: &Plan, log: &str) {
    let text = bed.log(log);
    let want = format!("c=IN {} {}", sdp_type(plan.lan), plan.lan);
    assert!(
        text.lines().any(|l| l.trim_end() == want),
        "{log}: no {want:?}:\n{text}"
    );
}

/// REGISTER, then the phone calls out: it streams 2 s of RTP, the far end echoes it.
fn outbound_call(tag: &str, n: u8, plan: &Plan, tail: &str) {
    outbound_call_with(tag, n, plan, tail, &[]);
}

/// [`outbound_call`] with more SIPp arguments for the phone (its transport).
fn outbound_call_with(tag: &str, n: u8, plan: &Plan, tail: &str, phone_extra: &[&str]) -> Bed {
    let bed = Bed::new(tag, n, plan, tail);
    bed.register(plan, phone_extra);
    assert_outside_clean(&bed, plan, "registrar_messages.log", false);
    let contact = bed.t.read_when("contact.txt", |t| !t.is_empty());
    assert!(
        contact.contains(&at(plan.wan, 5060)),
        "the registrar bound the gateway's address: {contact}"
    );

    let cap = bed.capture();
    let answer = scenario("answer_rtp.xml");
    let mut far_args = vec!["-sf", &answer, "-i", plan.proxy, "-p", "5060", "-m", "1"];
    far_args.extend(["-rtp_echo", "-mi", plan.proxy, "-mp", "16000"]);
    far_args.extend(logged("far_messages.log"));
    let far = bed.sipp(&far_args);
    std::thread::sleep(Duration::from_millis(200));
    let (call, gw) = (scenario("phone_call_rtp.xml"), at(plan.lan, 5060));
    let mut phone_args = vec!["-sf", &call, &gw, "-i", plan.phone, "-p", "5070", "-m", "1"];
    phone_args.extend(["-s", "bob", "-mi", plan.phone, "-mp", "18000", "-d", "2500"]);
    phone_args.extend(logged("phone_messages.log"));
    phone_args.extend(phone_extra);
    let phone = bed.sipp(&phone_args);
    phone.wait_ok("phone");
    far.wait_ok("far end");
    let p = cap.stop();

    let (phone_media, far_media) = (at(plan.phone, 18000), at(plan.proxy, 16000));
    let (lan_relay, wan_relay) = (at(plan.lan, 30000), at(plan.wan, 30000));
    let sent = relayed(&p, &phone_media, &lan_relay, &wan_relay, &far_media);
    let echoed = relayed(&p, &far_media, &wan_relay, &lan_relay, &phone_media);
    assert_eq!(sent, echoed, "the far end echoed every packet");
    // No datagram crossed between the families but through the relay.
    assert_eq!(count(&p, &at(plan.phone, 0), &at(plan.proxy, 0)), 0);
    assert_outside_clean(&bed, plan, "far_messages.log", true);
    assert_phone_sdp(&bed, plan, "phone_messages.log");
    bed
}

#[test]
fn an_ipv6_phone_registers_and_calls_an_ipv4_outside_with_rtp_both_ways() {
    outbound_call("out6", 61, &V6_INSIDE, "");
}

#[test]
fn an_ipv4_phone_registers_and_calls_an_ipv6_outside_with_rtp_both_ways() {
    outbound_call("out4", 62, &V6_OUTSIDE, "");
}

#[test]
fn the_epoll_relay_carries_an_ipv6_phone_call_to_ipv4() {
    outbound_call("epoll", 63, &V6_INSIDE, "[relay]\nengine = \"epoll\"\n");
}

#[test]
fn the_io_uring_relay_carries_an_ipv6_phone_call_to_ipv4() {
    // Explicit: `auto` would fall back to epoll silently where io_uring is refused.
    outbound_call("uring", 64, &V6_INSIDE, "[relay]\nengine = \"io_uring\"\n");
}

/// An IPv4 outside caller reaches the IPv6 phone at the contact it registered through
/// the gateway; RTP streams from the caller and is echoed by the phone.
#[test]
fn an_ipv4_outside_calls_the_registered_ipv6_phone_with_rtp_both_ways() {
    let plan = &V6_INSIDE;
    let bed = Bed::new("in6", 65, plan, "");
    bed.register(plan, &[]);
    let cap = bed.capture();
    let answer = scenario("answer_rtp.xml");
    let mut phone_args = vec!["-sf", &answer, "-i", plan.phone, "-p", "5070", "-m", "1"];
    phone_args.extend(["-rtp_echo", "-mi", plan.phone, "-mp", "18000"]);
    phone_args.extend(logged("phone_messages.log"));
    let phone = bed.sipp(&phone_args);
    std::thread::sleep(Duration::from_millis(200));
    let (call, gw) = (scenario("proxy_call_rtp.xml"), at(plan.wan, 5060));
    let mut caller_args = vec!["-sf", &call, &gw, "-i", plan.proxy, "-p", "5060", "-m", "1"];
    caller_args.extend(["-inf", "contact.csv", "-mi", plan.proxy, "-mp", "16000"]);
    caller_args.extend(logged("caller_messages.log"));
    let caller = bed.sipp(&caller_args);
    caller.wait_ok("caller");
    phone.wait_ok("phone (answering)");
    let p = cap.stop();

    let (phone_media, far_media) = (at(plan.phone, 18000), at(plan.proxy, 16000));
    let (lan_relay, wan_relay) = (at(plan.lan, 30000), at(plan.wan, 30000));
    let sent = relayed(&p, &far_media, &wan_relay, &lan_relay, &phone_media);
    let echoed = relayed(&p, &phone_media, &lan_relay, &wan_relay, &far_media);
    assert_eq!(sent, echoed, "the phone echoed every packet");
    assert_outside_clean(&bed, plan, "caller_messages.log", true);
    assert_phone_sdp(&bed, plan, "phone_messages.log");
    // The INVITE reached the phone at its own (IPv6, bracketed) contact.
    let invite = bed.log("phone_messages.log");
    assert!(
        invite.contains(&format!(
            "INVITE sip:alice@{} SIP/2.0",
            at(plan.phone, 5070)
        )),
        "the phone got no INVITE to its registered contact:\n{invite}"
    );
}

/// The phones' rule over TCP beside the UDP one.
const TCP_PHONES: &str = r#"
[service.sip-tcp]
protocol = "tcp"
port = 5060
alg = "sip"
[[rule]]
action = "nat"
from = "lan"
source = "phones"
to = "wan"
destination = "proxy"
service = "sip-tcp"
"#;

/// A TCP phone on IPv6 (the gateway's stream listener on an IPv6 address) registers
/// and calls through to the IPv4 proxy on UDP; nothing of the inside reaches it.
#[test]
fn an_ipv6_tcp_phone_registers_and_calls_an_ipv4_udp_outside() {
    let plan = &V6_INSIDE;
    let bed = outbound_call_with("tcp6", 66, plan, TCP_PHONES, &["-t", "t1"]);
    let phone = bed.log("phone_messages.log");
    assert!(
        phone.contains("SIP/2.0/TCP"),
        "the phone's leg is TCP:\n{phone}"
    );
    let far = bed.log("far_messages.log");
    assert!(
        far.contains("SIP/2.0/UDP"),
        "the outside leg is UDP:\n{far}"
    );
    assert!(!far.contains("SIP/2.0/TCP"), "{far}");
}

/// A TLS phone on IPv6 (Python's ssl module, verifying the gateway's certificate for its
/// IPv6 address) registers through the gateway's IPv6 TLS listener with the IPv4 UDP
/// registrar; nothing of the inside reaches it.
#[test]
fn an_ipv6_tls_phone_verifies_the_gateway_and_registers_with_an_ipv4_udp_registrar() {
    let plan = &V6_INSIDE;
    let bed = Bed::with_tls("tls6", 67, plan);
    let registrar = scenario("proxy_mute_options.xml");
    let mut args = vec!["-sf", &registrar, "-i", plan.proxy, "-p", "5060"];
    args.extend(logged("registrar_messages.log"));
    let _registrar = bed.sipp(&args);
    std::thread::sleep(Duration::from_millis(200));
    let client = r#"
import socket, ssl, sys
ca, lan, phone = sys.argv[1:4]
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection((lan, 5061), timeout=10, source_address=(phone, 0))
s = ctx.wrap_socket(raw, server_hostname=lan)
port = s.getsockname()[1]
s.sendall((
    "REGISTER sip:sipward.test SIP/2.0\r\n"
    f"Via: SIP/2.0/TLS [{phone}]:{port};branch=z9hG4bKtls6;rport\r\n"
    "From: <sip:alice@sipward.test>;tag=t6\r\nTo: <sip:alice@sipward.test>\r\n"
    "Call-ID: tls6-register\r\nCSeq: 1 REGISTER\r\n"
    f"Contact: <sip:alice@[{phone}]:{port};transport=tls>\r\nExpires: 600\r\n"
    "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
got = b""
while b"\r\n\r\n" not in got:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
print(s.version())
print(got.decode(errors="replace"))
"#;
    let ca = bed.t.dir.join("certs").join("ca.crt");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &bed.ns.name, "python3", "-c", client])
        .arg(&ca)
        .args([plan.lan, plan.phone]);
    let out = common::output_within(&mut command, Duration::from_secs(20)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("TLSv1.3\n"), "{text}");
    assert!(text.contains("SIP/2.0 200 "), "{text}");
    assert!(text.contains("Call-ID: tls6-register"), "{text}");
    assert_outside_clean(&bed, plan, "registrar_messages.log", false);
    let registrar_log = bed.log("registrar_messages.log");
    assert!(
        registrar_log.contains("SIP/2.0/UDP"),
        "the outside leg is UDP: {registrar_log}"
    );
}
