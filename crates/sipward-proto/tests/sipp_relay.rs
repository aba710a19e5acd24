//! Real SIP software through the wire layer: SIPp's built-in UAC calls SIPp's built-in
//! UAS through a small UDP relay that parses every datagram with `parse_datagram`,
//! rewrites it through the edit layer (adding a header, which SIPp ignores, and fixing
//! Content-Length) and forwards the result. SIPp runs in its default strict mode, so a
//! message our rewrite corrupted, lost or reordered fails the call.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
// The relay is test harness, not the pure crate: it may use sockets and clocks.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sipward_proto::{parse_datagram, Datagram, Edits, Limits};

const CALLS: usize = 20;

fn free_udp_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    rejected: AtomicUsize,
    rewritten_bytes_differ: AtomicUsize,
}

#[test]
fn sipp_calls_pass_through_parse_and_rewrite() {
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    relay
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let uas_port = free_udp_port("127.0.0.1");
    let uac_port = free_udp_port("127.0.0.1");
    let uas_addr: SocketAddr = format!("127.0.0.1:{uas_port}").parse().unwrap();

    let uas = KillOnDrop(
        Command::new("sipp")
            .args(["-sn", "uas", "-i", "127.0.0.1", "-p", &uas_port.to_string()])
            .args(["-m", &CALLS.to_string(), "-nostdin", "-timeout", "60s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (scripts/install-deps.sh installs Debian's sip-tester)"),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let relay_thread = {
        let stop = stop.clone();
        let counts = counts.clone();
        let uac_addr: SocketAddr = format!("127.0.0.1:{uac_port}").parse().unwrap();
        thread::spawn(move || {
            let limits = Limits::default();
            let mut buf = vec![0u8; 65536];
            let mut edits = Edits::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = relay.recv_from(&mut buf) else {
                    continue;
                };
                let datagram = &buf[..n];
                let out = match parse_datagram(datagram, &limits) {
                    Ok(Datagram::Message(msg)) => {
                        counts.accepted.fetch_add(1, Ordering::Relaxed);
                        edits.clear();
                        edits
                            .append_field(&msg, "X-Sipward-Relay", b"seen")
                            .unwrap();
                        let out = msg.rewrite(&edits).unwrap();
                        // Everything but the added field is byte-exact.
                        let added = b"X-Sipward-Relay: seen\r\n";
                        if out.len() != msg.as_bytes().len() + added.len() {
                            counts
                                .rewritten_bytes_differ
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        out
                    }
                    Ok(Datagram::Keepalive | Datagram::StunBinding(_)) => datagram.to_vec(),
                    Err(r) => {
                        eprintln!(
                            "rejected from {from}: {}\n{}",
                            r.defect,
                            String::from_utf8_lossy(datagram)
                        );
                        counts.rejected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                let to = if from == uac_addr { uas_addr } else { uac_addr };
                relay.send_to(&out, to).unwrap();
            }
        })
    };

    thread::sleep(Duration::from_millis(300));
    let uac = Command::new("sipp")
        .args([
            "-sn",
            "uac",
            &relay_addr.to_string(),
            "-i",
            "127.0.0.1",
            "-p",
            &uac_port.to_string(),
        ])
        .args([
            "-m",
            &CALLS.to_string(),
            "-r",
            "10",
            "-nostdin",
            "-timeout",
            "60s",
            "-timeout_error",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let uac_out = uac.wait_with_output().unwrap();
    stop.store(true, Ordering::Relaxed);
    relay_thread.join().unwrap();
    drop(uas);

    assert!(
        uac_out.status.success(),
        "SIPp UAC failed ({:?}) after {:?}: {}",
        uac_out.status,
        started.elapsed(),
        String::from_utf8_lossy(&uac_out.stderr)
    );
    // Each call: INVITE, 180, 200, ACK, BYE, 200 = 6 datagrams (the built-in UAS sends no 100).
    let accepted = counts.accepted.load(Ordering::Relaxed);
    assert!(accepted >= CALLS * 6, "only {accepted} datagrams relayed");
    assert_eq!(
        counts.rejected.load(Ordering::Relaxed),
        0,
        "SIPp traffic was rejected"
    );
    assert_eq!(counts.rewritten_bytes_differ.load(Ordering::Relaxed), 0);
}
