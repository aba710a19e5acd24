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
