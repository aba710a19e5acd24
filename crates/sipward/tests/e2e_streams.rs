//! End-to-end over TCP and TLS: SIPp phones on TCP (`-t t1`, `-t tn`) through the real
//! `sipward run` binary to a SIPp proxy/registrar on UDP, and abusive stream peers
//! (garbage, silence, slowloris, huge Content-Length, no ClientHello) against its TCP and
//! TLS listeners, each closed and counted. Run inside a private network namespace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{logged, Peer, Topology, ADMIN_TOKEN, ALICE_DIGEST};

/// The phones' rules over TCP and TLS beside the UDP ones, a TLS certificate for the
/// inside interface made by `sipward cert`, and short stream timeouts.
fn stream_config(t: &Topology) -> String {
    stream_config_with(t, "")
}

/// [`stream_config`] with more `[transport]` keys.
fn stream_config_with(t: &Topology, transport: &str) -> String {
    let certs = t.dir.join("certs");
    let out = Command::new(env!("CARGO_BIN_EXE_sipward"))
        .args([
            "cert",
            "--name",
            "gw.sipward.test",
            "--ip",
            &t.gw_lan(),
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
        "tls = {{ certificate = \"{c}/gw.sipward.test.crt\", private_key = \"{c}/gw.sipward.test.key\", ca = \"{c}/ca.crt\" }}\n",
        c = certs.display()
    );
    let lan = format!("networks = [\"127.{}.0.0/24\"]\ninside = true\n", t.n);
    t.config().replacen(&lan, &format!("{lan}{tls}"), 1)
        + r#"
[service.sip-tcp]
protocol = "tcp"
port = 5060
alg = "sip"
[service.sip-tls]
protocol = "tls"
port = 5061
alg = "sip"
[[rule]]
action = "nat"
from = "lan"
source = "phones"
to = "wan"
destination = "proxy"
service = "sip-tcp"
[[rule]]
action = "nat"
from = "lan"
source = "phones"
to = "wan"
destination = "proxy"
service = "sip-tls"
[transport]
first_message_timeout = 2.0
message_timeout = 1.0
tls_handshake_timeout = 1.0
"# + transport
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

/// The value of one `/metrics` sample, 0 when absent.
fn metric(t: &Topology, sample: &str) -> u64 {
    get(t, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Waits (up to 5 s) until the sample reaches `at_least`.
fn wait_metric(t: &Topology, sample: &str, at_least: u64) -> u64 {
    let started = Instant::now();
    loop {
        let v = metric(t, sample);
        if v >= at_least || started.elapsed() > Duration::from_secs(5) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tcp_phone_registers_and_calls_through_the_gateway_to_a_udp_proxy() {
    let t = Topology::new(91);
    let _gw = t.start_gateway_text(&stream_config(&t));

    // REGISTER with digest over one TCP connection; the registrar on UDP.
    let registrar = t.play(
        "proxy_registrar.xml",
        Peer::Proxy,
        None,
        &logged("registrar_messages.log"),
    );
    std::thread::sleep(Duration::from_millis(200));
    let phone = t.play(
        "phone_register.xml",
        Peer::Phone(0),
        Some(&t.gw_lan_sip()),
        &[&ALICE_DIGEST[..], &["-t", "t1"]].concat(),
    );
    phone.wait_ok("TCP phone registration");
    registrar.wait_ok("UDP registrar");
    t.assert_no_inside_address_in("registrar_messages.log");
    let registrar_log = std::fs::read_to_string(t.dir.join("registrar_messages.log")).unwrap();
    assert!(
        registrar_log.contains("SIP/2.0/UDP"),
        "the outside leg is UDP: {registrar_log}"
    );

    // Calls: a connection per call (-t tn), answered by a UDP far end, hung up by the phone.
    let proxy_ip = t.proxy();
    let mut far = vec!["-sn", "uas", "-i", &proxy_ip, "-p", "5060", "-m", "3"];
    far.extend(logged("proxy_messages.log"));
    let far = t.sipp(&far);
    std::thread::sleep(Duration::from_millis(200));
    let phone_ip = t.phone(0);
    let lan = t.gw_lan_sip();
    let caller = t.sipp(&[
        "-sn",
        "uac",
        &lan,
        "-t",
        "tn",
        "-max_socket",
        "100",
        "-i",
        &phone_ip,
        "-p",
        "5070",
        "-m",
        "3",
        "-r",
        "3",
        "-d",
        "200",
    ]);
    caller.wait_ok("TCP phone (uac)");
    far.wait_ok("UDP far end (uas)");
    t.assert_no_inside_address_in("proxy_messages.log");
    let log = std::fs::read_to_string(t.dir.join("proxy_messages.log")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.starts_with("INVITE ")).count(),
        3,
        "{log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.starts_with("BYE ")).count(),
        3,
        "{log}"
    );
    // Four connections came (the registration's and one per call) and went.
    assert!(
        wait_metric(&t, "sipward_stream_closed_total{reason=\"peer_closed\"}", 4) >= 4,
        "{}",
        get(&t, "/metrics")
    );
    let connections = get(&t, "/api/v1/connections");
    assert!(
        connections.contains("\"max_connections\":10000"),
        "{connections}"
    );
}

/// Connects to `addr` and returns what the gateway sent before closing, and how long
/// that took (at most 10 s).
fn closed_after(addr: &str, send: &[u8]) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if !send.is_empty() {
        s.write_all(send).unwrap();
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (got, started.elapsed())
}

/// `took` is at least `setting` seconds and less than one more.
fn assert_within_a_second_of(took: Duration, setting: f64, what: &str) {
    let setting = Duration::from_secs_f64(setting);
    assert!(
        took >= setting && took < setting + Duration::from_secs(1),
        "{what}: closed after {took:?}, set to {setting:?}"
    );
}

/// Waits (up to 5 s) for a line of the event log holding `text`.
fn wait_event(t: &Topology, text: &str) -> String {
    let started = Instant::now();
    loop {
        let events = std::fs::read_to_string(t.dir.join("events.jsonl")).unwrap_or_default();
        if let Some(line) = events.lines().find(|l| l.contains(text)) {
            return line.to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no event {text:?} in {events}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn abusive_stream_peers_are_closed_and_counted() {
    let t = Topology::new(92);
    let _gw = t.start_gateway_text(&stream_config(&t));
    let tcp = t.gw_lan_sip();
    let tls = format!("{}:5061", t.gw_lan());

    // Each abuse is closed at its setting, not before and less than a second after
    // (garbage and an oversized message at once).
    let (got, took) = closed_after(&tcp, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.is_empty(), "garbage gets no answer");
    assert!(took < Duration::from_secs(1), "garbage: {took:?}");

    let huge = "REGISTER sip:sipward.test SIP/2.0\r\nVia: SIP/2.0/TCP 127.92.0.20:5070;branch=z9hG4bK1\r\n\
                From: <sip:a@sipward.test>;tag=1\r\nTo: <sip:a@sipward.test>\r\nCall-ID: h1\r\nCSeq: 1 REGISTER\r\n\
                Content-Length: 99999999\r\n\r\n";
    let (got, took) = closed_after(&tcp, huge.as_bytes());
    assert!(
        String::from_utf8_lossy(&got).starts_with("SIP/2.0 513 "),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took < Duration::from_secs(1),
        "huge Content-Length: {took:?}"
    );
    let (got, _) = closed_after(
        &tcp,
        huge.replace("Content-Length: 99999999\r\n", "").as_bytes(),
    );
    assert!(
        String::from_utf8_lossy(&got).starts_with("SIP/2.0 400 "),
        "{}",
        String::from_utf8_lossy(&got)
    );

    // Silence: closed at first_message_timeout (2 s).
    let (got, took) = closed_after(&tcp, b"");
    assert!(got.is_empty(), "silence");
    assert_within_a_second_of(took, 2.0, "first_message_timeout");
    // Half a message, never finished (slowloris): message_timeout (1 s).
    let (got, took) = closed_after(
        &tcp,
        b"REGISTER sip:sipward.test SIP/2.0\r\nVia: SIP/2.0/TCP",
    );
    assert!(got.is_empty(), "slowloris");
    assert_within_a_second_of(took, 1.0, "message_timeout");
    // No ClientHello on the TLS port: tls_handshake_timeout (1 s).
    let (got, took) = closed_after(&tls, b"");
    assert!(got.is_empty(), "no ClientHello");
    assert_within_a_second_of(took, 1.0, "tls_handshake_timeout");
    // TLS 1.1 only: refused by the handshake (openssl s_client as an old phone).
    let old = common::output_within(
        Command::new("openssl").args(["s_client", "-connect", &tls, "-tls1_1"]),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(!old.status.success(), "a TLS 1.1 handshake succeeded");

    for (reason, n) in [
        ("not_sip", 1),
        ("message_too_large", 1),
        ("missing_content_length", 1),
        ("first_message_timeout", 1),
        ("message_timeout", 1),
        ("tls_handshake_timeout", 1),
        ("tls_handshake_failed", 1),
    ] {
        let sample = format!("sipward_stream_closed_total{{reason=\"{reason}\"}}");
        assert_eq!(wait_metric(&t, &sample, n), n, "{reason}");
    }
    let events = std::fs::read_to_string(t.dir.join("events.jsonl")).unwrap_or_default();
    assert!(
        events.contains("stream connection closed: message_timeout"),
        "{events}"
    );
}

/// A TLS client trusting the test CA (what a phone configured with it does).
fn tls_client(t: &Topology) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(t.dir.join("certs/ca.crt")).unwrap();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

#[test]
fn a_tls_phone_verifies_the_gateway_and_registers_over_its_connection() {
    let t = Topology::new(93);
    let _gw = t.start_gateway_text(&stream_config(&t));
    // A registrar (no challenge) on UDP, logging what it receives.
    let proxy = t.play(
        "proxy_mute_options.xml",
        Peer::Proxy,
        None,
        &logged("proxy_messages.log"),
    );
    let _proxy = proxy;
    std::thread::sleep(Duration::from_millis(200));
    let name = rustls_pki_types::ServerName::try_from("gw.sipward.test").unwrap();
    let conn = rustls::ClientConnection::new(tls_client(&t), name).unwrap();
    let phone = std::net::SocketAddr::new(t.phone(0).parse().unwrap(), 0);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&phone.into()).unwrap();
    let gw: std::net::SocketAddr = format!("{}:5061", t.gw_lan()).parse().unwrap();
    socket.connect(&gw.into()).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let local = tls.sock.local_addr().unwrap();
    let register = format!(
        "REGISTER sip:sipward.test SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls1;rport\r\n\
         From: <sip:alice@sipward.test>;tag=t1\r\nTo: <sip:alice@sipward.test>\r\nCall-ID: tls-register-1\r\n\
         CSeq: 1 REGISTER\r\nContact: <sip:alice@{local};transport=tls>\r\nExpires: 600\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(register.as_bytes()).unwrap();
    tls.flush().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tls.read(&mut buf).unwrap();
        assert!(n > 0, "closed without an answer");
        got.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&got).to_string();
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
    assert!(answer.contains("Call-ID: tls-register-1"), "{answer}");
    t.assert_no_inside_address_in("proxy_messages.log");
    let connections = get(&t, "/api/v1/connections");
    assert!(
        connections.contains("\"transport\":\"tls\""),
        "{connections}"
    );
    // The CRLFCRLF keepalive is answered on it too.
    tls.write_all(b"\r\n\r\n").unwrap();
    tls.flush().unwrap();
    let mut pong = [0u8; 2];
    tls.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n");
}

#[test]
fn an_inbound_call_reaches_a_tcp_phone_over_the_connection_it_registered_on() {
    let t = Topology::new(94);
    // Idle connections close after 1 s: the registration holds this one.
    let _gw = t.start_gateway_text(&stream_config_with(&t, "idle_timeout = 1.0\n"));
    let registrar = t.play(
        "proxy_registrar.xml",
        Peer::Proxy,
        None,
        &logged("registrar_messages.log"),
    );
    std::thread::sleep(Duration::from_millis(200));
    let answer = common::scenario("phone_answer.xml");
    let phone = t.play(
        "phone_register_stay.xml",
        Peer::Phone(0),
        Some(&t.gw_lan_sip()),
        &[&ALICE_DIGEST[..], &["-t", "t1", "-oocsf", &answer]].concat(),
    );
    registrar.wait_ok("UDP registrar");
    let contact = t.read_when("contact.csv", |c| c.contains(';'));
    assert!(
        contact.contains(';'),
        "the registrar wrote no contact: {contact:?}"
    );
    std::thread::sleep(Duration::from_millis(2500));
    let connections = get(&t, "/api/v1/connections");
    assert!(
        connections.contains("\"usage\":\"binding\""),
        "{connections}"
    );
    let mut caller_args = vec!["-inf", "contact.csv"];
    caller_args.extend(logged("caller_messages.log"));
    let gw_wan = t.gw_wan_sip();
    let caller = t.play("proxy_call.xml", Peer::Proxy, Some(&gw_wan), &caller_args);
    caller.wait_ok("UDP caller");
    // Still within the phone's pause: its one connection is the only one, and the
    // gateway opened none toward it.
    let connections = get(&t, "/api/v1/connections");
    assert_eq!(
        connections.matches("\"direction\":\"in\"").count(),
        1,
        "{connections}"
    );
    assert!(
        !connections.contains("\"direction\":\"out\""),
        "{connections}"
    );
    phone.wait_ok("TCP phone (registered, then answering on its connection)");
    t.assert_no_inside_address_in("caller_messages.log");
}

#[test]
fn a_udp_phone_calls_a_tcp_proxy_over_a_connection_the_gateway_opens() {
    let t = Topology::new(95);
    let proxy_object = format!("name = \"proxy\"\nhost = \"{}:5060\"\n", t.proxy());
    let text = t.config().replacen(
        &proxy_object,
        &format!("{proxy_object}transport = \"tcp\"\n"),
        1,
    );
    assert!(text.contains("transport = \"tcp\""));
    let _gw = t.start_gateway_text(&text);
    let proxy_ip = t.proxy();
    let mut far = vec![
        "-sn", "uas", "-t", "t1", "-i", &proxy_ip, "-p", "5060", "-m", "2",
    ];
    far.extend(logged("proxy_messages.log"));
    let far = t.sipp(&far);
    std::thread::sleep(Duration::from_millis(200));
    let phone_ip = t.phone(0);
    let lan = t.gw_lan_sip();
    let caller = t.sipp(&[
        "-sn", "uac", &lan, "-i", &phone_ip, "-p", "5070", "-m", "2", "-r", "2", "-d", "200",
    ]);
    caller.wait_ok("UDP phone (uac)");
    far.wait_ok("TCP far end (uas)");
    t.assert_no_inside_address_in("proxy_messages.log");
    let log = std::fs::read_to_string(t.dir.join("proxy_messages.log")).unwrap();
    assert!(
        log.contains("SIP/2.0/TCP"),
        "the outside leg's Via says TCP: {log}"
    );
    assert_eq!(
        log.lines().filter(|l| l.starts_with("INVITE ")).count(),
        2,
        "{log}"
    );
    // One connection, opened by the gateway, carried both calls; it ended when the far
    // end exited.
    let closed = "sipward_stream_closed_total{reason=\"peer_closed\"}";
    assert_eq!(wait_metric(&t, closed, 1), 1, "{}", get(&t, "/metrics"));
    let total: u64 = get(&t, "/metrics")
        .lines()
        .filter(|l| l.starts_with("sipward_stream_closed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(total, 1, "only one connection was ever opened");
}

#[test]
fn per_source_cap_and_connection_flood_refuse_before_anything_is_read() {
    let t = Topology::new(96);
    let _gw = t.start_gateway_text(&stream_config_with(
        &t,
        "max_connections_per_source = 3\nnew_connections_per_second = 1\nnew_connections_burst = 8\n",
    ));
    let tcp = t.gw_lan_sip();
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&tcp).unwrap()).collect();
    // The fourth from the same address is closed at once, unread.
    let (got, took) = closed_after(&tcp, b"");
    assert!(
        got.is_empty() && took < Duration::from_millis(900),
        "{took:?}"
    );
    assert_eq!(
        wait_metric(
            &t,
            "sipward_stream_refused_total{reason=\"max_connections_per_source\"}",
            1
        ),
        1
    );
    drop(held);
    // A flood: the burst is spent, the source banned, and every later try refused.
    for _ in 0..12 {
        let _ = TcpStream::connect(&tcp);
    }
    assert!(
        wait_metric(
            &t,
            "sipward_stream_refused_total{reason=\"connection_rate\"}",
            1
        ) >= 1
    );
    let (got, took) = closed_after(&tcp, b"");
    assert!(
        got.is_empty() && took < Duration::from_millis(900),
        "banned: {took:?}"
    );
    assert!(wait_metric(&t, "sipward_stream_refused_total{reason=\"banned\"}", 1) >= 1);
    let events = std::fs::read_to_string(t.dir.join("events.jsonl")).unwrap_or_default();
    assert!(events.contains("\"kind\":\"banned\""), "{events}");
}

#[test]
fn past_the_total_cap_connections_are_refused_at_once_and_an_unused_one_idles_out() {
    let t = Topology::new(99);
    let config = stream_config_with(&t, "max_connections = 3\nidle_timeout = 1.0\n").replace(
        "first_message_timeout = 2.0",
        "first_message_timeout = 10.0",
    );
    let _gw = t.start_gateway_text(&config);
    let tcp = t.gw_lan_sip();
    let tls = format!("{}:5061", t.gw_lan());
    let held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&tcp).unwrap()).collect();
    assert_eq!(wait_metric(&t, "sipward_stream_connections ", 3), 3);
    // The fourth, on either listener, is closed at once, unread.
    for listener in [&tcp, &tls] {
        let (got, took) = closed_after(listener, b"");
        assert!(
            got.is_empty() && took < Duration::from_secs(1),
            "{listener}: {took:?}"
        );
    }
    let sample = "sipward_stream_refused_total{reason=\"max_connections\"}";
    assert_eq!(wait_metric(&t, sample, 2), 2, "{}", get(&t, "/metrics"));
    let event = wait_event(&t, "stream connection refused: max_connections");
    assert!(event.contains("127.0.0.1"), "{event}");
    drop(held);
    assert_eq!(
        wait_metric(&t, "sipward_stream_closed_total{reason=\"peer_closed\"}", 3),
        3
    );

    // Room again. A phone sends a request (forwarded to the proxy, which is not there)
    // and then nothing: closed at idle_timeout (1 s) after its last message.
    let phone = std::net::SocketAddr::new(t.phone(0).parse().unwrap(), 0);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&phone.into()).unwrap();
    let gw: std::net::SocketAddr = tcp.parse().unwrap();
    socket.connect(&gw.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = s.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:bob@sipward.test SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKidle1\r\n\
         From: <sip:alice@sipward.test>;tag=i1\r\nTo: <sip:bob@sipward.test>\r\nCall-ID: idle-1\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(options.as_bytes()).unwrap();
    let sent = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_within_a_second_of(sent.elapsed(), 1.0, "idle_timeout");
    assert_eq!(
        wait_metric(
            &t,
            "sipward_stream_closed_total{reason=\"idle_timeout\"}",
            1
        ),
        1
    );
}

/// A TLS handshake with the gateway's inside TLS listener expecting `name`; the error
/// text when it fails.
fn handshake_as(t: &Topology, name: &str) -> Result<(), String> {
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(tls_client(t), server_name).unwrap();
    let mut tcp = TcpStream::connect(format!("{}:5061", t.gw_lan())).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `POST /api/v1/reload`: the HTTP status and the body.
fn reload(t: &Topology) -> (String, String) {
    let out = common::output_within(
        Command::new("curl").args([
            "-s",
            "-X",
            "POST",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Authorization: Bearer {ADMIN_TOKEN}"),
            &format!("{}/api/v1/reload", t.api()),
        ]),
        Duration::from_secs(10),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

#[test]
fn a_reload_rotates_the_certificate_and_a_bad_key_keeps_the_old_one() {
    let t = Topology::new(97);
    let _gw = t.start_gateway_text(&stream_config(&t));
    assert_eq!(handshake_as(&t, "gw.sipward.test"), Ok(()));

    // A key file that is no key: the reload is refused, naming the file, and the
    // running certificate stays.
    let certs = t.dir.join("certs");
    let key = certs.join("gw.sipward.test.key");
    let good_key = std::fs::read(&key).unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    let (code, body) = reload(&t);
    assert_eq!(code, "400", "{body}");
    assert!(
        body.contains("gw.sipward.test.key: no private key in it"),
        "{body}"
    );
    assert_eq!(handshake_as(&t, "gw.sipward.test"), Ok(()));
    std::fs::write(&key, good_key).unwrap();

    // A new certificate (same CA, another name) in the same files: new handshakes get it.
    let out = Command::new(env!("CARGO_BIN_EXE_sipward"))
        .args(["cert", "--name", "rotated.sipward.test", "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ext in ["crt", "key"] {
        std::fs::copy(
            certs.join(format!("rotated.sipward.test.{ext}")),
            certs.join(format!("gw.sipward.test.{ext}")),
        )
        .unwrap();
    }
    let (code, body) = reload(&t);
    assert_eq!(code, "200", "{body}");
    assert_eq!(handshake_as(&t, "rotated.sipward.test"), Ok(()));
    let refused = handshake_as(&t, "gw.sipward.test")
        .err()
        .unwrap_or_default();
    assert!(refused.contains("not valid for name"), "{refused}");
}

/// A registrar on TLS that requires a client certificate from the test CA: answers one
/// REGISTER with 200 and returns what it received and whether a certificate came.
fn tls_registrar(t: &Topology, at: &str) -> std::thread::JoinHandle<(String, bool)> {
    use rustls_pki_types::pem::PemObject;
    let certs = t.dir.join("certs");
    let chain: Vec<_> =
        rustls_pki_types::CertificateDer::pem_file_iter(certs.join("proxy.sipward.test.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(certs.join("proxy.sipward.test.key"))
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(certs.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind(at).unwrap();
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), tcp);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = tls.read(&mut buf).unwrap();
            assert!(n > 0, "closed before a whole request");
            got.extend_from_slice(&buf[..n]);
        }
        let request = String::from_utf8_lossy(&got).to_string();
        let copied: Vec<&str> = request
            .lines()
            .filter(|l| {
                ["Via:", "From:", "Call-ID:", "CSeq:", "Contact:"]
                    .iter()
                    .any(|h| l.starts_with(h))
            })
            .collect();
        let to = request
            .lines()
            .find(|l| l.starts_with("To:"))
            .unwrap_or("To: <sip:x@x>");
        let response = format!(
            "SIP/2.0 200 OK\r\n{}\r\n{to};tag=reg1\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
            copied.join("\r\n")
        );
        tls.write_all(response.as_bytes()).unwrap();
        tls.flush().unwrap();
        let presented = tls.conn.peer_certificates().is_some_and(|c| !c.is_empty());
        // Held open a moment so the 200 is read before the close.
        std::thread::sleep(Duration::from_millis(500));
        (request, presented)
    })
}

#[test]
fn a_udp_phone_registers_with_a_tls_registrar_that_requires_the_gateways_certificate() {
    let t = Topology::new(98);
    let certs = t.dir.join("certs");
    let proxy_at = format!("{}:5061", t.proxy());
    // The gateway's outside certificate and the registrar's, from one test CA.
    for (name, ip) in [
        ("gw-wan.sipward.test", t.gw_wan()),
        ("proxy.sipward.test", t.proxy()),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sipward"))
            .args(["cert", "--name", name, "--ip", &ip, "--out"])
            .arg(&certs)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let wan = format!("networks = [\"127.{}.1.0/24\"]\n", t.n);
    let tls = format!(
        "tls = {{ certificate = \"{c}/gw-wan.sipward.test.crt\", private_key = \"{c}/gw-wan.sipward.test.key\", ca = \"{c}/ca.crt\" }}\n",
        c = certs.display()
    );
    let proxy_object = format!("name = \"proxy\"\nhost = \"{}:5060\"\n", t.proxy());
    let text = t
        .config()
        .replacen(&wan, &format!("{wan}{tls}"), 1)
        .replacen(
            &proxy_object,
            &format!("name = \"proxy\"\nhost = \"{proxy_at}\"\ntransport = \"tls\"\nserver_name = \"proxy.sipward.test\"\n"),
            1,
        );
    let registrar = tls_registrar(&t, &proxy_at);
    let _gw = t.start_gateway_text(&text);
    let phone = t.play(
        "phone_register_plain.xml",
        Peer::Phone(0),
        Some(&t.gw_lan_sip()),
        &["-s", "alice"],
    );
    phone.wait_ok("UDP phone registering through to a TLS registrar");
    let (request, presented) = registrar.join().unwrap();
    assert!(
        presented,
        "the gateway presented its certificate (mutual TLS)"
    );
    assert!(request.starts_with("REGISTER "), "{request}");
    assert!(
        request.contains("SIP/2.0/TLS "),
        "the outside leg's Via says TLS: {request}"
    );
    assert!(
        !request.contains(&t.inside_prefix()),
        "inside address leaked: {request}"
    );
}
