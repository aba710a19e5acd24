//! End-to-end: the RFC 4475 torture messages the wire layer refuses, sent from an inside
//! phone's address to the running gateway. Each answerable one gets its status code back
//! on the wire, each unanswerable one gets silence, and none of them reaches the proxy.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use common::Topology;
use sipward_proto::{parse_datagram, Limits};

#[test]
fn refused_torture_messages_are_answered_or_dropped_and_never_forwarded() {
    let t = Topology::new(47);
    let _gw = t.start_gateway();
    let proxy = UdpSocket::bind(format!("{}:5060", t.proxy())).unwrap();
    let phone = UdpSocket::bind(format!("{}:5070", t.phone(0))).unwrap();
    let gw = format!("{}:5060", t.gw_lan());
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpora/rfc4475");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .expect("the RFC 4475 corpus is beside the checkout")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect();
    files.sort();
    let (mut answered, mut dropped) = (0, 0);
    let mut buf = [0u8; 65_535];
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let Err(rejection) = parse_datagram(&bytes, &Limits::default()) else {
            continue; // valid messages are the other tests' business
        };
        phone.send_to(&bytes, &gw).unwrap();
        match rejection.status {
            Some(code) => {
                phone
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let (n, from) = phone
                    .recv_from(&mut buf)
                    .unwrap_or_else(|e| panic!("{}: no answer ({e})", file.display()));
                assert_eq!(from.to_string(), gw);
                let answer = String::from_utf8_lossy(&buf[..n]);
                assert!(
                    answer.starts_with(&format!("SIP/2.0 {code} ")),
                    "{}: expected {code}, got:\n{answer}",
                    file.display()
                );
                assert!(answer.contains("\r\nWarning: 399 "), "{answer}");
                answered += 1;
            }
            None => {
                phone
                    .set_read_timeout(Some(Duration::from_millis(150)))
                    .unwrap();
                if let Ok((n, _)) = phone.recv_from(&mut buf) {
                    panic!(
                        "{}: should be dropped, got:\n{}",
                        file.display(),
                        String::from_utf8_lossy(&buf[..n])
                    );
                }
                dropped += 1;
            }
        }
    }
    assert!(
        answered >= 10 && dropped >= 3,
        "{answered} answered, {dropped} dropped"
    );
    proxy
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    if let Ok((n, _)) = proxy.recv_from(&mut buf) {
        panic!(
            "a refused message reached the proxy:\n{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

/// The gateway's counters (`GET /api/v1/counters`).
fn counters(t: &Topology) -> serde_json::Value {
    let body = ureq::get(&format!("{}/api/v1/counters", t.api()))
        .set("Authorization", &format!("Bearer {}", common::ADMIN_TOKEN))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

#[test]
fn blank_datagrams_and_keepalives_get_no_reply_and_stun_gets_the_mapped_address() {
    let t = Topology::new(48);
    let _gw = t.start_gateway();
    let phone = UdpSocket::bind(format!("{}:5070", t.phone(0))).unwrap();
    let gw = format!("{}:5060", t.gw_lan());
    // sipvicious-style blank probes over and under the size limit, then both keepalives.
    for datagram in [&[b' '; 7000][..], &[b' '; 100], b"\r\n\r\n", b"\r\n"] {
        phone.send_to(datagram, &gw).unwrap();
    }
    // Then a STUN Binding request: the first thing back must be its answer (a reply to
    // any datagram above would arrive before it).
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"e2e-txn-0001");
    phone.send_to(&request, &gw).unwrap();
    phone
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, from) = phone.recv_from(&mut buf).expect("a STUN answer");
    assert_eq!(from.to_string(), gw);
    let p = &buf[..n];
    assert_eq!(&p[..2], &[0x01, 0x01], "not a Binding success: {p:?}");
    assert_eq!(&p[8..20], b"e2e-txn-0001");
    assert_eq!(&p[20..22], &[0x00, 0x20], "XOR-MAPPED-ADDRESS first");
    let port = u16::from_be_bytes([p[26], p[27]]) ^ 0x2112;
    let ip: Vec<u8> = p[28..32]
        .iter()
        .zip([0x21, 0x12, 0xa4, 0x42])
        .map(|(a, k)| a ^ k)
        .collect();
    let seen = std::net::SocketAddr::from(([ip[0], ip[1], ip[2], ip[3]], port));
    assert_eq!(seen, phone.local_addr().unwrap());
    // Nothing else comes back.
    phone
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    if let Ok((n, _)) = phone.recv_from(&mut buf) {
        panic!("unexpected reply: {:?}", &buf[..n]);
    }
    let c = counters(&t);
    assert_eq!(c["malformed"]["MessageTooLarge"], 1, "{c}");
    assert_eq!(c["malformed"]["BlankDatagram"], 1, "{c}");
    assert_eq!(c["events"]["dropped_malformed"], 2, "{c}");
    assert_eq!(c["events"]["keepalives"], 3, "{c}");
    assert_eq!(c["requests_out"], serde_json::json!({}), "{c}");
}
