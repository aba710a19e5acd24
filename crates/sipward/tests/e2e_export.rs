//! Event and message export of `sipward run`: call events reach a syslog collector as
//! RFC 5424 messages, and every SIP datagram in and out reaches a HEP v3 collector.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::Topology;

/// Everything a collector socket receives until `quiet` passes without a datagram.
fn collect(s: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let started = Instant::now();
    while let Ok(n) = s.recv(&mut buf) {
        out.push(buf[..n].to_vec());
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    out
}

/// The chunks of a HEP v3 packet, by type.
fn hep_chunks(p: &[u8]) -> Vec<(u16, Vec<u8>)> {
    assert_eq!(&p[..4], b"HEP3", "not HEP v3");
    let total = u16::from_be_bytes([p[4], p[5]]) as usize;
    assert_eq!(total, p.len());
    let mut i = 6;
    let mut out = Vec::new();
    while i + 6 <= p.len() {
        let kind = u16::from_be_bytes([p[i + 2], p[i + 3]]);
        let len = u16::from_be_bytes([p[i + 4], p[i + 5]]) as usize;
        out.push((kind, p[i + 6..i + len].to_vec()));
        i += len;
    }
    assert_eq!(i, p.len(), "chunks do not add up");
    out
}

#[test]
fn calls_reach_syslog_and_every_sip_datagram_reaches_hep() {
    let t = Topology::new(73);
    let collector_ip = format!("127.{}.1.50", t.n);
    let syslog = UdpSocket::bind(format!("{collector_ip}:5514")).unwrap();
    let hep = UdpSocket::bind(format!("{collector_ip}:9060")).unwrap();
    let config = t.config().replace(
        "[gateway]\n",
        &format!("[gateway]\nsyslog = \"{collector_ip}:5514\"\nhep = \"{collector_ip}:9060\"\nhep_id = 73\n"),
    );
    let _gw = t.start_gateway_text(&config);
    let proxy_ip = t.proxy();
    let far = t.sipp(&["-sn", "uas", "-i", &proxy_ip, "-p", "5060", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let phone_ip = t.phone(0);
    let lan = t.gw_lan_sip();
    let phone = t.sipp(&[
        "-sn", "uac", &lan, "-i", &phone_ip, "-p", "5070", "-s", "bob", "-m", "1",
    ]);
    phone.wait_ok("phone");
    far.wait_ok("far end");

    let logs: Vec<String> = collect(&syslog, Duration::from_millis(500))
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    for kind in ["call_started", "call_answered", "call_ended"] {
        let line = logs
            .iter()
            .find(|l| l.contains(" sipward ") && l.contains(&format!(" {kind} - ")))
            .unwrap_or_else(|| panic!("no {kind} in syslog: {logs:?}"));
        // <PRI>1 TIMESTAMP HOST APP PROCID MSGID - MSG, local0.notice = 133
        assert!(line.starts_with("<133>1 "), "{line}");
        assert!(line.contains("\"kind\":\"call_"), "{line}");
    }

    // The uac's call is INVITE, 100, 180, 200, ACK, BYE, 200 on each side of the
    // gateway: every one of them, in and out, is in HEP.
    let packets = collect(&hep, Duration::from_millis(500));
    let mut seen = Vec::new();
    for p in &packets {
        let chunks = hep_chunks(p);
        let get = |k: u16| {
            chunks
                .iter()
                .find(|c| c.0 == k)
                .map(|c| c.1.clone())
                .unwrap()
        };
        assert_eq!(get(11), [1], "payload type SIP");
        assert_eq!(get(12), 73u32.to_be_bytes());
        let payload = String::from_utf8(get(15)).unwrap();
        let first = payload.lines().next().unwrap().to_string();
        let src = std::net::Ipv4Addr::from(<[u8; 4]>::try_from(get(3)).unwrap());
        seen.push((src.to_string(), first));
    }
    let from = |ip: &str, start: &str| {
        seen.iter()
            .filter(|(s, l)| s == ip && l.starts_with(start))
            .count()
    };
    assert_eq!(from(&phone_ip, "INVITE "), 1, "{seen:?}");
    assert_eq!(from(&t.gw_wan(), "INVITE "), 1, "{seen:?}");
    assert_eq!(
        from(&proxy_ip, "SIP/2.0 200"),
        2,
        "200 to INVITE and to BYE: {seen:?}"
    );
    assert_eq!(from(&t.gw_lan(), "SIP/2.0 200"), 2, "{seen:?}");
    assert_eq!(from(&phone_ip, "BYE "), 1);
    assert_eq!(from(&t.gw_wan(), "BYE "), 1);
}
