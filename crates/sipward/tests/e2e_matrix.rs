//! Every inside × outside transport pair (UDP, TCP, TLS on each leg) through the real
//! `sipward run` binary, with real peers: a SIPp phone registers with digest to a SIPp
//! registrar that challenges, calls out (and hangs up), and takes a call in (hung up by
//! the far end). No inside address reaches the outside, and Via and Contact on each leg
//! name that leg's transport. Debian's SIPp has no TLS: a TLS peer is SIPp on TCP behind
//! a `socat` shim, so its message log is the decrypted text. Run inside a private
//! network namespace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{logged, Guard, Topology, ADMIN_TOKEN, ALICE_DIGEST};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum T {
    Udp,
    Tcp,
    Tls,
}

impl T {
    /// The Via's transport token.
    fn via(self) -> &'static str {
        match self {
            T::Udp => "UDP",
            T::Tcp => "TCP",
            T::Tls => "TLS",
        }
    }
    /// The Contact's `transport=` parameter (none on UDP).
    fn contact_params(self) -> &'static str {
        match self {
            T::Udp => "",
            T::Tcp => ";transport=tcp",
            T::Tls => ";transport=tls",
        }
    }
    /// The port the gateway listens on for this transport (its Via and Contact name it).
    fn port(self) -> u16 {
        if self == T::Tls {
            5061
        } else {
            5060
        }
    }
    /// The gateway's service (and listener) for this transport.
    fn service(self) -> &'static str {
        match self {
            T::Udp => "sip",
            T::Tcp => "sip-tcp",
            T::Tls => "sip-tls",
        }
    }
    /// SIPp's own transport: TLS is TCP into a socat shim.
    fn sipp(self) -> &'static str {
        match self {
            T::Udp => "u1",
            T::Tcp | T::Tls => "t1",
        }
    }
}

/// Makes a certificate for `name` (and `ips`) signed by the topology's test CA
/// (`certs/ca.crt`, made by the first call) with `sipward cert`.
fn cert(t: &Topology, name: &str, ips: &[String]) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipward"));
    cmd.args(["cert", "--name", name]);
    for ip in ips {
        cmd.args(["--ip", ip]);
    }
    let out = cmd.arg("--out").arg(t.dir.join("certs")).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The TLS settings of a gateway interface: its certificate, and the test CA it trusts
/// for the servers it connects to (and for clients, when `verify_client` asks).
fn interface_tls(t: &Topology, extra: &str) -> String {
    format!(
        "tls = {{ certificate = \"{c}/gw.sipward.test.crt\", private_key = \"{c}/gw.sipward.test.key\", ca = \"{c}/ca.crt\"{extra} }}\n",
        c = t.dir.join("certs").display()
    )
}

/// The gateway's configuration for phones on `inside` and a proxy on `outside`: the
/// phones' nat rule on the inside transport's service, the proxy's address object
/// reached over the outside transport (a TLS proxy at port 5061 by its name
/// proxy.sipward.test), and the proxy's calls in admitted on the outside transport.
fn matrix_config(t: &Topology, inside: T, outside: T) -> String {
    cert(t, "gw.sipward.test", &[t.gw_lan(), t.gw_wan()]);
    cert(t, "proxy.sipward.test", &[t.proxy()]);
    let lan = format!("networks = [\"127.{}.0.0/24\"]\ninside = true\n", t.n);
    let wan = format!("networks = [\"127.{}.1.0/24\"]\n", t.n);
    let proxy_object = format!("host = \"{}:5060\"\n", t.proxy());
    let next_hop = match outside {
        T::Udp => proxy_object.clone(),
        T::Tcp => format!("{proxy_object}transport = \"tcp\"\n"),
        T::Tls => format!(
            "host = \"{}:5061\"\ntransport = \"tls\"\nserver_name = \"proxy.sipward.test\"\n",
            t.proxy()
        ),
    };
    let text = t
        .config()
        .replacen(&lan, &format!("{lan}{}", interface_tls(t, "")), 1)
        .replacen(&wan, &format!("{wan}{}", interface_tls(t, "")), 1)
        .replacen(&proxy_object, &next_hop, 1)
        // The first is the phones' nat rule, the second the proxy's allow rule.
        .replacen(
            "service = \"sip\"\n",
            &format!("service = \"{}\"\n", inside.service()),
            1,
        )
        .replacen(
            "source = \"proxy\"\nto = \"core\"\nservice = \"sip\"\n",
            &format!(
                "source = \"proxy\"\nto = \"core\"\nservice = \"{}\"\n",
                outside.service()
            ),
            1,
        );
    assert!(text.contains("tls = {") && text.contains(&next_hop));
    text + r#"
[service.sip-tcp]
protocol = "tcp"
port = 5060
alg = "sip"
[service.sip-tls]
protocol = "tls"
port = 5061
alg = "sip"
"#
}

/// A socat shim: plain TCP on `listen` (ip:port) into TLS to `connect`, from `source`,
/// verifying the server's certificate for `name` with the test CA.
fn tls_client_shim(t: &Topology, listen: &str, source: &str, connect: &str, name: &str) -> Guard {
    let (ip, port) = listen.rsplit_once(':').unwrap();
    let shim = Guard::spawn(
        Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind={ip},reuseaddr,fork"))
            .arg(format!(
                "OPENSSL:{connect},bind={source},cafile={},commonname={name}",
                t.dir.join("certs/ca.crt").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("socat is installed (scripts/install-deps.sh installs it)");
    wait_listening(listen);
    shim
}

/// A socat shim: TLS on `listen` (ip:port, certificate `name`, no client certificate
/// asked) into plain TCP to `connect`.
fn tls_server_shim(t: &Topology, listen: &str, connect: &str, name: &str) -> Guard {
    let (ip, port) = listen.rsplit_once(':').unwrap();
    let certs = t.dir.join("certs");
    let shim = Guard::spawn(
        Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{port},bind={ip},reuseaddr,fork,verify=0,cert={},key={}",
                certs.join(format!("{name}.crt")).display(),
                certs.join(format!("{name}.key")).display()
            ))
            .arg(format!("TCP:{connect}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("socat is installed (scripts/install-deps.sh installs it)");
    wait_listening(listen);
    shim
}

/// Waits (up to 5 s) until something accepts TCP connections on `addr`.
fn wait_listening(addr: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "nothing listens on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(t: &Topology, path: &str) -> String {
    let out = common::output_within(
        Command::new("curl").args([
            "-s",
            "-H",
            &format!("Authorization: Bearer {ADMIN_TOKEN}"),
            &format!("{}{path}", t.api()),
        ]),
        Duration::from_secs(10),
    )
    .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Checks that every Via and Contact the gateway wrote (those naming `gw`, its address
/// on the leg) in the message log `log` carries `transport` and the port it listens on
/// for it, and that there are some
/// (Vias only where the gateway sent requests: a caller sees its own in the answers).
fn assert_leg_transport(dir: &Path, log: &str, gw: &str, transport: T, pair: &str) {
    let requests_from_gw = log != "caller_messages.log";
    let text = std::fs::read_to_string(dir.join(log)).unwrap();
    let (mut vias, mut contacts) = (0, 0);
    for line in text.lines() {
        let lower = line.to_ascii_lowercase();
        if !line.contains(&format!("{gw}:")) {
            continue;
        }
        // Where the leg is reached: a TLS Contact naming the UDP port sends the peer's
        // requests to a port that does not speak TLS.
        assert!(
            line.contains(&format!("{gw}:{}", transport.port())),
            "{pair}: {log}: the gateway names a port other than its {} port {}: {line}",
            transport.via(),
            transport.port()
        );
        if lower.starts_with("via:") {
            vias += 1;
            assert!(
                line.contains(&format!("SIP/2.0/{} {gw}:", transport.via())),
                "{pair}: {log}: the gateway's Via on this leg is not {}: {line}",
                transport.via()
            );
        } else if lower.starts_with("contact:") {
            contacts += 1;
            let has = lower.contains("transport=");
            match transport {
                T::Udp => assert!(!has, "{pair}: {log}: a transport= on a UDP leg: {line}"),
                _ => assert!(
                    lower.contains(transport.contact_params()),
                    "{pair}: {log}: the gateway's Contact on this leg lacks {}: {line}",
                    transport.contact_params()
                ),
            }
        }
    }
    assert!(
        (vias > 0 || !requests_from_gw) && contacts > 0,
        "{pair}: {log}: no Via ({vias}) or Contact ({contacts}) of the gateway at {gw}"
    );
}

/// One pair: registration with digest, a call out hung up by the phone, a call in hung
/// up by the far end, on one gateway.
fn pair(n: u8, inside: T, outside: T) {
    let name = format!("inside {inside:?} × outside {outside:?}");
    let t = Topology::new(n);
    let _gw = t.start_gateway_text(&matrix_config(&t, inside, outside));
    let (phone_ip, proxy_ip) = (t.phone(0), t.proxy());

    // The outside: SIPp on the proxy address, port 5060 (UDP or TCP); behind a TLS
    // shim on 5061 for TLS, with a second shim for its calls to the gateway.
    let _proxy_shims = (outside == T::Tls).then(|| {
        (
            tls_server_shim(
                &t,
                &format!("{proxy_ip}:5061"),
                &format!("{proxy_ip}:5060"),
                "proxy.sipward.test",
            ),
            tls_client_shim(
                &t,
                &format!("{proxy_ip}:5098"),
                &proxy_ip,
                &format!("{}:5061", t.gw_wan()),
                "gw.sipward.test",
            ),
        )
    });
    let outside_keys = |contact_port: &'static str| -> Vec<String> {
        [
            "-t",
            outside.sipp(),
            "-key",
            "via_t",
            outside.via(),
            "-key",
            "contact_port",
            contact_port,
            "-key",
            "contact_params",
            outside.contact_params(),
        ]
        .map(String::from)
        .to_vec()
    };
    let outside_port = if outside == T::Tls { "5061" } else { "5060" };

    let registrar = t.play(
        "proxy_registrar.xml",
        common::Peer::Proxy,
        None,
        &[
            &logged("registrar_messages.log")[..],
            &["-t", outside.sipp()],
        ]
        .concat(),
    );
    std::thread::sleep(Duration::from_millis(200));

    // The phone: registers, calls out, stays for the call in (on its one connection for
    // a stream), answering it with the out-of-call scenario.
    let _phone_shim = (inside == T::Tls).then(|| {
        tls_client_shim(
            &t,
            &format!("{phone_ip}:5099"),
            &phone_ip,
            &format!("{}:5061", t.gw_lan()),
            "gw.sipward.test",
        )
    });
    let target = match inside {
        T::Tls => format!("{phone_ip}:5099"),
        _ => t.gw_lan_sip(),
    };
    let answer = common::scenario("phone_answer.xml");
    let phone = t.play(
        "phone_matrix.xml",
        common::Peer::Phone(0),
        Some(&target),
        &[
            &ALICE_DIGEST[..],
            &["-t", inside.sipp(), "-oocsf", &answer, "-d", "4000"],
            &["-key", "via_t", inside.via()],
            &["-key", "contact_params", inside.contact_params()],
            &logged("phone_messages.log"),
        ]
        .concat(),
    );
    registrar.wait_ok(&format!("{name}: registrar"));
    let contact = t.read_when("contact.txt", |c| c.contains("sip:"));
    let contact = contact.trim();
    assert!(
        contact.starts_with("sip:"),
        "{name}: the registrar bound no contact: {contact:?}"
    );

    // The call out: the far end answers, the phone hangs up.
    let far_args = outside_keys(outside_port);
    let mut far: Vec<&str> = far_args.iter().map(String::as_str).collect();
    far.extend(logged("far_messages.log"));
    let far = t.play("proxy_answer_matrix.xml", common::Peer::Proxy, None, &far);
    far.wait_ok(&format!("{name}: far end of the call out"));

    // The call in: the far end calls the contact the registrar bound, and hangs up.
    let caller_args = outside_keys(outside_port);
    let mut caller: Vec<&str> = caller_args.iter().map(String::as_str).collect();
    caller.extend(["-key", "ruri", contact]);
    caller.extend(logged("caller_messages.log"));
    let caller_target = match outside {
        T::Tls => format!("{proxy_ip}:5098"),
        _ => t.gw_wan_sip(),
    };
    let caller = t.play(
        "proxy_call_matrix.xml",
        common::Peer::Proxy,
        Some(&caller_target),
        &caller,
    );
    caller.wait_ok(&format!("{name}: caller of the call in"));
    if inside != T::Udp {
        // The call came over the phone's own connection (SIPp holds just that one): the
        // gateway lists it, inbound, and opened none toward the phone.
        let connections = get(&t, "/api/v1/connections");
        let phone_remote = format!("\"remote\":\"{phone_ip}:");
        let with_phone: Vec<&str> = connections
            .split('{')
            .filter(|c| c.contains(&phone_remote))
            .collect();
        let transport = format!("\"transport\":\"{}\"", inside.via().to_lowercase());
        assert!(
            with_phone.len() == 1
                && with_phone[0].contains("\"direction\":\"in\"")
                && with_phone[0].contains(&transport),
            "{name}: the phone's connections: {connections}"
        );
    }
    phone.wait_ok(&format!("{name}: phone"));

    for log in [
        "registrar_messages.log",
        "far_messages.log",
        "caller_messages.log",
    ] {
        t.assert_no_inside_address_in(log);
        assert_leg_transport(&t.dir, log, &t.gw_wan(), outside, &name);
    }
    assert_leg_transport(&t.dir, "phone_messages.log", &t.gw_lan(), inside, &name);
    let phone_log = std::fs::read_to_string(t.dir.join("phone_messages.log")).unwrap();
    for (what, count) in [("INVITE sip:", 2), ("BYE sip:", 2)] {
        assert_eq!(
            phone_log.lines().filter(|l| l.starts_with(what)).count(),
            count,
            "{name}: the phone's log has not {count} {what} (one sent, one received)"
        );
    }
}

#[test]
fn udp_phone_udp_proxy() {
    pair(101, T::Udp, T::Udp);
}
#[test]
fn udp_phone_tcp_proxy() {
    pair(102, T::Udp, T::Tcp);
}
#[test]
fn udp_phone_tls_proxy() {
    pair(103, T::Udp, T::Tls);
}
#[test]
fn tcp_phone_udp_proxy() {
    pair(104, T::Tcp, T::Udp);
}
#[test]
fn tcp_phone_tcp_proxy() {
    pair(105, T::Tcp, T::Tcp);
}
#[test]
fn tcp_phone_tls_proxy() {
    pair(106, T::Tcp, T::Tls);
}
/// Also: the inbound call to a TLS phone (SIPp behind its TLS shim, answering with
/// `-oocsf`) comes over the connection it registered on, and the gateway opens none
/// toward it (the connection check in [`pair`], on every stream phone).
#[test]
fn tls_phone_udp_proxy() {
    pair(107, T::Tls, T::Udp);
}
#[test]
fn tls_phone_tcp_proxy() {
    pair(108, T::Tls, T::Tcp);
}
#[test]
fn tls_phone_tls_proxy() {
    pair(109, T::Tls, T::Tls);
}

/// The size SIPp's message log gives a message whose first line is `start`.
fn logged_size(log: &str, start: &str) -> Option<usize> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines.iter().position(|l| l.starts_with(start))?;
    // "TCP message received [2645] bytes :" or "UDP message sent (2613 bytes):", then
    // an empty line, then the message.
    let header = lines[..at].iter().rev().find(|l| l.contains(" message "))?;
    header
        .split(['[', ']', '(', ')', ' '])
        .find_map(|n| n.parse().ok())
}

/// RFC 3261 18.1.1: a UDP phone's 2.5 KB INVITE, over the 1300 bytes UDP may carry,
/// goes on to the proxy over TCP. A UDP and a TCP SIPp share the proxy's IP and port
/// 5060 (one host on both transports), so where each message lands shows the transport
/// the gateway took: the INVITE on TCP, then the small ACK and BYE back on UDP, the
/// dialog's configured leg.
#[test]
fn a_large_invite_from_a_udp_phone_reaches_the_proxy_over_tcp() {
    let t = Topology::new(111);
    let _gw = t.start_gateway_text(&t.config());
    let udp_far = t.play(
        "proxy_ack_bye.xml",
        common::Peer::Proxy,
        None,
        &[&["-t", "u1"][..], &logged("udp_far_messages.log")].concat(),
    );
    let tcp_far = t.play(
        "proxy_answer_invite_only.xml",
        common::Peer::Proxy,
        None,
        &[&["-t", "t1"][..], &logged("tcp_far_messages.log")].concat(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let phone = t.play(
        "phone_call_big.xml",
        common::Peer::Phone(0),
        Some(&t.gw_lan_sip()),
        &logged("phone_messages.log"),
    );
    phone.wait_ok("UDP phone with a large INVITE");
    tcp_far.wait_ok("TCP far end (INVITE)");
    udp_far.wait_ok("UDP far end (ACK, BYE)");

    let phone_log = std::fs::read_to_string(t.dir.join("phone_messages.log")).unwrap();
    let sent = logged_size(&phone_log, "INVITE sip:").unwrap();
    assert!(sent >= 2500, "the phone's INVITE is {sent} bytes");
    let tcp_log = std::fs::read_to_string(t.dir.join("tcp_far_messages.log")).unwrap();
    let arrived = logged_size(&tcp_log, "INVITE sip:").unwrap_or(0);
    assert!(
        arrived > 2400,
        "the INVITE reached the TCP far end whole ({arrived} bytes): {tcp_log}"
    );
    assert!(
        tcp_log.contains(&format!("Via: SIP/2.0/TCP {}:5060;", t.gw_wan())),
        "its Via says TCP: {tcp_log}"
    );
    t.assert_no_inside_address_in("tcp_far_messages.log");
    t.assert_no_inside_address_in("udp_far_messages.log");
    let udp_log = std::fs::read_to_string(t.dir.join("udp_far_messages.log")).unwrap();
    assert!(
        !udp_log.contains("INVITE sip:"),
        "the INVITE went over UDP too: {udp_log}"
    );
}
