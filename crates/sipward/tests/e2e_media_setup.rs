//! Media set-up through `sipward run`, with a phone and a far end written here (plain UDP
//! sockets speaking just enough SIP), so that the test controls exactly when and from
//! where each side sends RTP: a far end that streams at once after its 200 OK, parties
//! that send from other ports than their SDP names (asymmetric RTP, RFC 4961), a media
//! port held by another program, and a gateway out of file descriptors.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Topology;

/// A socket bound on `ip` (any port) that gives up reading after `timeout`.
fn socket(ip: &str, timeout: Duration) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// The next SIP message on `s` that `wanted` accepts (others, such as 100 Trying, are
/// skipped), with its source; None after five seconds.
fn receive_sip(s: &UdpSocket, wanted: impl Fn(&str) -> bool) -> Option<(String, SocketAddr)> {
    let started = Instant::now();
    let mut buf = [0u8; 8192];
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if wanted(&text) {
                return Some((text, from));
            }
        }
    }
    None
}

/// The header lines of `msg` whose name is `name` (full form, as the gateway and this
/// file write them).
fn headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
        .collect()
}

/// Where the SDP of `msg` says to send RTP.
fn sdp_rtp(msg: &str) -> SocketAddr {
    let body = msg.split("\r\n\r\n").nth(1).unwrap();
    let ip = body
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap()
        .trim();
    let port = body
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .unwrap();
    format!("{ip}:{port}").parse().unwrap()
}

fn sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
}

/// An RTP packet (PCMU) with sequence number `seq`; the payload's first byte repeats
/// the sequence's low byte so that a receiver can tell packets apart.
fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(seq as u8, 160));
    p
}

/// Datagrams `s` receives until it has been quiet for `quiet`.
fn drain(s: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

/// The two SIP ends of the test: a phone inside (port 5070) and the far end on the
/// proxy's address (5060, where the rule set lets the outside in).
struct Ends {
    phone: UdpSocket,
    far: UdpSocket,
    phone_ip: String,
    far_ip: String,
    gateway: String,
}

/// How a call went, seen from its ends.
enum Outcome {
    /// The gateway refused the INVITE; its response.
    Refused(String),
    /// Answered: the relay's inside and outside RTP addresses.
    Answered {
        relay_inside: SocketAddr,
        relay_outside: SocketAddr,
    },
}

impl Ends {
    fn new(t: &Topology) -> Self {
        let phone = UdpSocket::bind(format!("{}:5070", t.phone(0))).unwrap();
        let far = UdpSocket::bind(format!("{}:5060", t.proxy())).unwrap();
        for s in [&phone, &far] {
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        }
        Ends {
            phone,
            far,
            phone_ip: t.phone(0),
            far_ip: t.proxy(),
            gateway: t.gw_lan_sip(),
        }
    }

    /// Places call `n`: the phone offers `phone_media` (its SDP port); the far end
    /// answers with `far_media` and, as soon as its 200 OK is sent, sends `burst` RTP
    /// packets from `far_sender` to the relay (no pause before the first). The phone
    /// acknowledges the answer.
    fn call(
        &self,
        n: u32,
        phone_media: u16,
        far_media: u16,
        far_sender: &UdpSocket,
        burst: u16,
    ) -> Outcome {
        let call_id = format!("media-setup-{n}-{}", std::process::id());
        let body = sdp(&self.phone_ip, phone_media);
        let invite = format!(
            "INVITE sip:bob@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:5070;branch=z9hG4bKms{n};rport\r\n\
             From: <sip:caller{n}@sipward.test>;tag=a{n}\r\nTo: <sip:bob@sipward.test>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{ip}:5070>\r\n\
             Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{body}",
            gw = self.gateway,
            ip = self.phone_ip,
            len = body.len(),
        );
        self.phone
            .send_to(invite.as_bytes(), &self.gateway)
            .unwrap();

        // Either the far end gets the INVITE, or the phone hears a refusal.
        let started = Instant::now();
        let mut buf = [0u8; 8192];
        let (offer, gateway_wan) = loop {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "call {n}: neither forwarded nor answered"
            );
            if let Ok((len, from)) = self.far.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if text.starts_with("INVITE ") {
                    break (text, from);
                }
            }
            if let Ok((len, _)) = self.phone.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if text.starts_with("SIP/2.0 ") && !text.starts_with("SIP/2.0 1") {
                    return Outcome::Refused(text);
                }
            }
        };
        let relay_outside = sdp_rtp(&offer);
        let answer_body = sdp(&self.far_ip, far_media);
        let mut ok = String::from("SIP/2.0 200 OK\r\n");
        for name in ["Via", "From", "Call-ID", "CSeq"] {
            for line in headers(&offer, name) {
                ok.push_str(line);
                ok.push_str("\r\n");
            }
        }
        let to = headers(&offer, "To")[0];
        ok.push_str(&format!(
            "{to};tag=b{n}\r\nContact: <sip:bob@{far}:5060>\r\nContent-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{answer_body}",
            far = self.far_ip,
            len = answer_body.len(),
        ));
        self.far.send_to(ok.as_bytes(), gateway_wan).unwrap();
        for seq in 0..burst {
            far_sender
                .send_to(&rtp(seq, 0xfa00 + n), relay_outside)
                .unwrap();
        }

        let (answer, _) = receive_sip(&self.phone, |m| m.starts_with("SIP/2.0 200 "))
            .expect("the phone gets the 200 OK");
        let relay_inside = sdp_rtp(&answer);
        let contact = headers(&answer, "Contact")[0];
        let target = contact
            .split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .map(|(uri, _)| uri)
            .unwrap();
        let to = headers(&answer, "To")[0];
        let ack = format!(
            "ACK {target} SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:5070;branch=z9hG4bKmsack{n};rport\r\n\
             From: <sip:caller{n}@sipward.test>;tag=a{n}\r\n{to}\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            ip = self.phone_ip,
        );
        self.phone.send_to(ack.as_bytes(), &self.gateway).unwrap();
        receive_sip(&self.far, |m| m.starts_with("ACK ")).expect("the far end gets the ACK");
        Outcome::Answered {
            relay_inside,
            relay_outside,
        }
    }
}

/// RTP both ways on an answered call: `phone_sender` sends to the relay's inside
/// address, and what arrives at `far_receiver` and (from the far end's `far_sender`)
/// at `phone_receiver` is counted. Returns (to the far end, to the phone).
fn exchange(
    relay: (SocketAddr, SocketAddr),
    phone_sender: &UdpSocket,
    far_sender: &UdpSocket,
    phone_receiver: &UdpSocket,
    far_receiver: &UdpSocket,
) -> (usize, usize) {
    let (relay_inside, relay_outside) = relay;
    for seq in 100..110u16 {
        phone_sender.send_to(&rtp(seq, 1), relay_inside).unwrap();
        far_sender.send_to(&rtp(seq, 2), relay_outside).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let to_far = drain(far_receiver, Duration::from_millis(300)).len();
    let to_phone = drain(phone_receiver, Duration::from_millis(300)).len();
    (to_far, to_phone)
}

#[test]
fn a_far_end_streaming_right_after_its_200_loses_no_packet() {
    let t = Topology::new(81);
    let _gw = t.start_gateway();
    let ends = Ends::new(&t);
    let mut lost = Vec::new();
    for n in 0..20u32 {
        let phone_media = socket(&t.phone(0), Duration::from_millis(200));
        let far_media = socket(&t.proxy(), Duration::from_millis(200));
        let phone_port = phone_media.local_addr().unwrap().port();
        let far_port = far_media.local_addr().unwrap().port();
        let outcome = ends.call(n, phone_port, far_port, &far_media, 5);
        assert!(
            matches!(outcome, Outcome::Answered { .. }),
            "call {n} answered"
        );
        let got = drain(&phone_media, Duration::from_millis(500));
        let seqs: Vec<u8> = got.iter().map(|p| p[12]).collect();
        if seqs != [0, 1, 2, 3, 4] {
            lost.push((n, seqs));
        }
    }
    assert!(
        lost.is_empty(),
        "calls whose first packets (sent at once after the 200) did not all reach the phone, with what did: {lost:?}"
    );
}

#[test]
fn latching_any_relays_asymmetric_rtp_both_ways() {
    let t = Topology::new(82);
    let _gw = t.start_gateway_with("media_latching = \"any\"");
    let ends = Ends::new(&t);
    // An ordinary call first: each party sends from its SDP port.
    let phone_media = socket(&t.phone(0), Duration::from_millis(200));
    let far_media = socket(&t.proxy(), Duration::from_millis(200));
    let Outcome::Answered {
        relay_inside,
        relay_outside,
    } = ends.call(
        1,
        phone_media.local_addr().unwrap().port(),
        far_media.local_addr().unwrap().port(),
        &far_media,
        0,
    )
    else {
        panic!("the call is refused")
    };
    let (to_far, to_phone) = exchange(
        (relay_inside, relay_outside),
        &phone_media,
        &far_media,
        &phone_media,
        &far_media,
    );
    assert_eq!(
        (to_far, to_phone),
        (10, 10),
        "ordinary call with latching \"any\""
    );

    // Asymmetric RTP: each party sends from another port than its SDP names and gets
    // the other's media where it sends from (the SDP ports stay silent).
    let (phone_sdp, far_sdp) = (
        socket(&t.phone(0), Duration::from_millis(200)),
        socket(&t.proxy(), Duration::from_millis(200)),
    );
    let (phone_sends, far_sends) = (
        socket(&t.phone(0), Duration::from_millis(200)),
        socket(&t.proxy(), Duration::from_millis(200)),
    );
    let Outcome::Answered {
        relay_inside,
        relay_outside,
    } = ends.call(
        2,
        phone_sdp.local_addr().unwrap().port(),
        far_sdp.local_addr().unwrap().port(),
        &far_sends,
        0,
    )
    else {
        panic!("the call is refused")
    };
    // Each side's first packet latches it.
    phone_sends.send_to(&rtp(1, 1), relay_inside).unwrap();
    far_sends.send_to(&rtp(1, 2), relay_outside).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drain(&phone_sdp, Duration::from_millis(50));
    drain(&far_sdp, Duration::from_millis(50));
    drain(&phone_sends, Duration::from_millis(50));
    drain(&far_sends, Duration::from_millis(50));
    let (to_far, to_phone) = exchange(
        (relay_inside, relay_outside),
        &phone_sends,
        &far_sends,
        &phone_sends,
        &far_sends,
    );
    assert_eq!(
        (to_far, to_phone),
        (10, 10),
        "asymmetric call with latching \"any\""
    );
    assert!(drain(&phone_sdp, Duration::from_millis(100)).is_empty());
    assert!(drain(&far_sdp, Duration::from_millis(100)).is_empty());
}

#[test]
fn a_media_port_held_by_another_program_is_skipped() {
    let t = Topology::new(83);
    // Another program holds the first RTCP port of the outside pool before the
    // gateway starts, and the first RTP port of the inside one after.
    let squatter_out = UdpSocket::bind(format!("{}:30001", t.gw_wan())).unwrap();
    let _gw = t.start_gateway();
    let squatter_in = UdpSocket::bind(format!("{}:30000", t.gw_lan())).unwrap();
    let ends = Ends::new(&t);
    let phone_media = socket(&t.phone(0), Duration::from_millis(200));
    let far_media = socket(&t.proxy(), Duration::from_millis(200));
    let Outcome::Answered {
        relay_inside,
        relay_outside,
    } = ends.call(
        1,
        phone_media.local_addr().unwrap().port(),
        far_media.local_addr().unwrap().port(),
        &far_media,
        0,
    )
    else {
        panic!("the call is refused")
    };
    assert_ne!(
        relay_inside.port(),
        30000,
        "the held inside port is skipped"
    );
    assert_ne!(
        relay_outside.port(),
        30000,
        "the pair with a held port is skipped"
    );
    let (to_far, to_phone) = exchange(
        (relay_inside, relay_outside),
        &phone_media,
        &far_media,
        &phone_media,
        &far_media,
    );
    assert_eq!((to_far, to_phone), (10, 10));
    for s in [&squatter_in, &squatter_out] {
        assert!(drain(s, Duration::from_millis(50)).is_empty());
    }
}

#[test]
fn out_of_file_descriptors_new_calls_get_503_not_dead_media() {
    let t = Topology::new(84);
    let config = t.config();
    let _gw = t.start_gateway_under(&["prlimit", "--nofile=64:64"], &config);
    let ends = Ends::new(&t);
    let (mut answered, mut refused) = (0, 0);
    for n in 0..30u32 {
        let phone_media = socket(&t.phone(0), Duration::from_millis(200));
        let far_media = socket(&t.proxy(), Duration::from_millis(200));
        match ends.call(
            n,
            phone_media.local_addr().unwrap().port(),
            far_media.local_addr().unwrap().port(),
            &far_media,
            0,
        ) {
            Outcome::Refused(response) => {
                assert!(response.starts_with("SIP/2.0 503 "), "{response}");
                assert!(
                    response.contains("media sockets cannot be opened"),
                    "{response}"
                );
                refused += 1;
            }
            Outcome::Answered {
                relay_inside,
                relay_outside,
            } => {
                // An answered call has media both ways.
                let (to_far, to_phone) = exchange(
                    (relay_inside, relay_outside),
                    &phone_media,
                    &far_media,
                    &phone_media,
                    &far_media,
                );
                assert_eq!((to_far, to_phone), (10, 10), "call {n} was answered");
                answered += 1;
            }
        }
    }
    eprintln!("at 64 file descriptors: {answered} calls answered with media, {refused} refused");
    assert!(answered > 0, "some calls fit");
    assert!(refused > 0, "64 descriptors cannot hold 30 calls' media");
    // Each refusal is in the event log.
    let events = t.read_when("events.jsonl", |text| {
        text.matches("media sockets cannot be opened").count() >= refused
    });
    let logged = events
        .lines()
        .filter(|l| l.contains("\"overload\"") && l.contains("media sockets cannot be opened"))
        .count();
    assert_eq!(logged, refused, "{events}");
}

/// `sipward check` under `prlimit --nofile=<limit>` on `config`: its standard error.
fn check_under_file_limit(t: &Topology, limit: u32, config: &str) -> String {
    let path = t.dir.join("check.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new("prlimit")
        .arg(format!("--nofile={limit}:{limit}"))
        .arg(env!("CARGO_BIN_EXE_sipward"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_warns_when_the_file_limit_cannot_hold_max_dialogs() {
    let t = Topology::new(85);
    // 10,000 dialogs (default) over a 5,000-pair pool: 20,000 media sockets.
    let warning = check_under_file_limit(&t, 1024, &t.config());
    assert!(
        warning.contains("open-file limit (1024) is below the 20256"),
        "{warning}"
    );
    // 100 calls, two streams each: 800 media sockets, and the rest, fit in 1,100.
    let small = t
        .config()
        .replace("[alg.sip]\n", "[alg.sip]\nmax_dialogs = 100\n");
    let quiet = check_under_file_limit(&t, 1100, &small);
    assert!(!quiet.contains("open-file limit"), "{quiet}");
}
