//! Datagrams at the edge of SIP through the whole gateway: keepalives, STUN, blank and
//! oversized datagrams, malformed text headers, repeated single headers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;
use sipward_core::{AlgOptions, EventKind};

fn deliver_bytes(net: &mut Net, local: &str, remote: &str, bytes: &[u8]) -> usize {
    net.gw
        .handle_datagram(net.now, addr(local), addr(remote), bytes);
    net.drain().len()
}

#[test]
fn blank_datagrams_get_no_reply_and_are_counted_malformed() {
    let mut net = Net::new(AlgOptions::default());
    // The sipvicious-style probes: only spaces, over and under the size limit.
    for (len, counted_as) in [(7000, "MessageTooLarge"), (100, "BlankDatagram")] {
        let before = net.gw.counters().dropped_malformed;
        assert_eq!(deliver_bytes(&mut net, WAN, PROXY, &vec![b' '; len]), 0);
        assert_eq!(net.gw.counters().dropped_malformed, before + 1, "{len}");
        assert_eq!(net.gw.traffic().malformed.get(counted_as), Some(&1));
    }
    assert_eq!(deliver_bytes(&mut net, LAN, PHONE, b"\r\n \r\n"), 0);
    assert_eq!(net.gw.counters().keepalives, 0);
}

#[test]
fn crlf_keepalives_over_udp_are_absorbed_without_a_reply() {
    let mut net = Net::new(AlgOptions::default());
    assert_eq!(deliver_bytes(&mut net, LAN, PHONE, b"\r\n\r\n"), 0);
    assert_eq!(deliver_bytes(&mut net, WAN, PROXY, b"\r\n"), 0);
    assert_eq!(net.gw.counters().keepalives, 2);
    // From a sender no rule admits: not a keepalive, dropped like its SIP would be.
    assert_eq!(
        deliver_bytes(&mut net, WAN, "198.51.100.7:5060", b"\r\n"),
        0
    );
    assert_eq!(net.gw.counters().keepalives, 2);
    assert_eq!(net.gw.counters().dropped_no_rule, 1);
    let traffic = net.gw.traffic();
    assert!(traffic.requests_out.is_empty() && traffic.requests_in.is_empty());
}

#[test]
fn stun_binding_requests_on_the_sip_port_are_answered() {
    let mut net = Net::new(AlgOptions::default());
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"txn-id-12345");
    net.gw
        .handle_datagram(net.now, addr(LAN), addr(PHONE), &request);
    let out = net.drain();
    assert_eq!(out.len(), 1);
    let answer = &out[0];
    assert_eq!((answer.local, answer.remote), (addr(LAN), addr(PHONE)));
    let p = &answer.payload;
    // Binding success, the same transaction, one XOR-MAPPED-ADDRESS, decoded by hand.
    assert_eq!(&p[..2], &[0x01, 0x01]);
    assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len() - 20);
    assert_eq!(&p[4..8], &[0x21, 0x12, 0xa4, 0x42]);
    assert_eq!(&p[8..20], b"txn-id-12345");
    assert_eq!(&p[20..22], &[0x00, 0x20]);
    assert_eq!(p[25], 1, "IPv4 family");
    let port = u16::from_be_bytes([p[26], p[27]]) ^ 0x2112;
    let ip: Vec<u8> = p[28..32]
        .iter()
        .zip([0x21, 0x12, 0xa4, 0x42])
        .map(|(a, k)| a ^ k)
        .collect();
    assert_eq!(port, addr(PHONE).port());
    assert_eq!(ip, [10, 0, 0, 20]);
    assert!(p.len() <= 2 * request.len() + 4);
    // Not a SIP request in either direction's figures.
    let traffic = net.gw.traffic();
    assert!(traffic.requests_out.is_empty() && traffic.requests_in.is_empty());

    // Anything else STUN-looking is dropped: a Binding response reflected at us, a
    // request with a bad length.
    let mut response = request.clone();
    response[..2].copy_from_slice(&[0x01, 0x01]);
    assert_eq!(deliver_bytes(&mut net, LAN, PHONE, &response), 0);
    let mut bad_length = request.clone();
    bad_length[3] = 8;
    assert_eq!(deliver_bytes(&mut net, LAN, PHONE, &bad_length), 0);
    // A sender no rule admits gets nothing.
    assert_eq!(
        deliver_bytes(&mut net, WAN, "198.51.100.7:5060", &request),
        0
    );
}

#[test]
fn stun_answers_are_rate_limited_per_source() {
    let mut net = Net::new(AlgOptions::default());
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"txn-id-12345");
    let answered: usize = (0..1000)
        .map(|_| deliver_bytes(&mut net, LAN, PHONE, &request))
        .sum();
    assert!(answered > 0 && answered < 1000, "{answered}");
}

/// The test INVITE with `extra` header lines (raw bytes) before its Content-Type.
fn invite_with(call: &str, extra: &[u8]) -> Vec<u8> {
    let text = invite(call, &format!("z9hG4bK{call}"));
    let at = text.find("Content-Type:").unwrap();
    let text = text.as_bytes();
    [&text[..at], extra, &text[at..]].concat()
}

/// What a phone's datagram brought: the one reply to the phone, nothing to the proxy.
fn answered_not_forwarded(net: &mut Net, datagram: &[u8]) -> String {
    net.gw
        .handle_datagram(net.now, addr(LAN), addr(PHONE), datagram);
    let out = net.drain();
    assert!(
        out.iter().all(|t| t.remote != addr(PROXY)),
        "forwarded: {out:?}"
    );
    assert_eq!(out.len(), 1, "{out:?}");
    String::from_utf8_lossy(&out[0].payload).into_owned()
}

#[test]
fn control_characters_and_bad_utf8_in_text_headers_get_400() {
    let mut net = Net::new(AlgOptions::default());
    for (n, (line, warning)) in [
        (&b"Subject: a\x00b\r\n"[..], "control character in Subject"),
        (b"Subject: \x01\r\n", "control character in Subject"),
        (
            b"User-Agent: x\x1b[31m\r\n",
            "control character in User-Agent",
        ),
        (b"User-Agent: x\x7f\r\n", "control character in User-Agent"),
        (b"User-Agent: \xff\xfe\r\n", "invalid UTF-8 in User-Agent"),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = answered_not_forwarded(&mut net, &invite_with(&format!("t{n}"), line));
        assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
        assert!(answer.contains(warning), "{warning}: {answer}");
    }
    // UTF-8 text is fine and goes on as written.
    let call = invite_with("ok", "Subject: R\u{e9}union\r\n".as_bytes());
    let out = net.deliver(LAN, PHONE, std::str::from_utf8(&call).unwrap());
    assert!(out.iter().any(|t| t.remote == addr(PROXY)
        && String::from_utf8_lossy(&t.payload).contains("Subject: R\u{e9}union\r\n")));
}

#[test]
fn a_second_user_agent_is_refused_and_a_scanner_behind_it_banned() {
    let mut net = Net::new(AlgOptions::default());
    let call = invite_with(
        "dup",
        b"User-Agent: Yealink SIP-T46S 66.86.0.15\r\nUser-Agent: friendly-scanner\r\n",
    );
    net.gw
        .handle_datagram(net.now, addr(LAN), addr(PHONE), &call);
    let out = net.drain();
    // Not forwarded, and not answered either: the scanner is banned, not told.
    assert!(out.is_empty(), "{out:?}");
    let events: Vec<_> = std::iter::from_fn(|| net.gw.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Banned && e.reason.contains("friendly-scanner")),
        "{events:?}"
    );
    assert!(net
        .deliver(LAN, PHONE, &invite("after", "z9hG4bKafter"))
        .is_empty());
}

#[test]
fn repeated_single_headers_get_400_naming_the_header() {
    let mut net = Net::new(AlgOptions::default());
    for (n, (lines, warning)) in [
        (
            &b"User-Agent: Yealink\r\nUser-Agent: Polycom\r\n"[..],
            "duplicate User-Agent header",
        ),
        (b"Subject: a\r\nSubject: b\r\n", "duplicate Subject header"),
        (b"Date: a\r\nDate: b\r\n", "duplicate Date header"),
        // Single by their grammar too (no comma list): each element after the gateway
        // could read a different one.
        (
            b"Reply-To: <sip:a@example.com>\r\nReply-To: <sip:b@example.com>\r\n",
            "duplicate Reply-To header",
        ),
        (
            b"Max-Breadth: 60\r\nMax-Breadth: 1\r\n",
            "duplicate Max-Breadth header",
        ),
        (b"Privacy: none\r\nPrivacy: id\r\n", "duplicate Privacy header"),
        (
            b"Join: a@b;to-tag=1;from-tag=2\r\nJoin: c@d;to-tag=3;from-tag=4\r\n",
            "duplicate Join header",
        ),
        (
            b"Session-ID: ab30317f1a784dc48ff824d0d3715d86\r\nSession-ID: 00000000000000000000000000000000\r\n",
            "duplicate Session-ID header",
        ),
        (
            b"Answer-Mode: Auto\r\nAnswer-Mode: Manual\r\n",
            "duplicate Answer-Mode header",
        ),
        (
            b"P-Charging-Vector: icid-value=1\r\nP-Charging-Vector: icid-value=2\r\n",
            "duplicate P-Charging-Vector header",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = answered_not_forwarded(&mut net, &invite_with(&format!("d{n}"), lines));
        assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
        assert!(answer.contains(warning), "{warning}: {answer}");
    }
}

#[test]
fn a_malformed_request_from_a_scanner_is_not_answered_but_banned() {
    let mut net = Net::new(AlgOptions::default());
    // A syntax error (bad CSeq) that would be answered 400, from a scanner.
    let scan = "OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKscan\r\nMax-Forwards: 70\r\nFrom: <sip:100@10.0.0.20>;tag=s1\r\nTo: <sip:100@10.0.0.1>\r\nCall-ID: scan@10.0.0.20\r\nCSeq: x OPTIONS\r\nUser-Agent: sipvicious\r\nContent-Length: 0\r\n\r\n";
    assert!(net.deliver(LAN, PHONE, scan).is_empty());
    assert!(std::iter::from_fn(|| net.gw.poll_event()).any(|e| e.kind == EventKind::Banned));
    assert_eq!(net.gw.counters().answered_malformed, 0);
}

#[test]
fn reordered_session_lines_and_an_empty_session_name_pass_through() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    // o= after s= (issue 17), s= empty (RFC 5118 section 4.8), c= before t=.
    let body = "v=0\r\ns=\r\no=- 1 1 IN IP4 10.0.0.20\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
    let plain = invite("sdp-order", "z9hG4bKsdporder");
    let at = plain.find("\r\n\r\n").unwrap() + 4;
    let head = plain[..at].replace(
        &format!("Content-Length: {}", plain.len() - at),
        &format!("Content-Length: {}", body.len()),
    );
    let forwarded = net.phone_sends(&format!("{head}{body}"));
    assert_eq!(forwarded.remote, addr(PROXY));
    let out = text(&forwarded);
    let sent_body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    // The same lines in the same order; only the addresses and the port are the relay's.
    assert!(
        sent_body.starts_with("v=0\r\ns=\r\no=- 1 1 IN IP4 203.0.113.1\r\nc=IN IP4 203.0.113.1\r\nt=0 0\r\nm=audio 31000 RTP/AVP 0\r\n"),
        "{sent_body}"
    );
}

#[test]
fn crlfs_before_a_message_are_not_forwarded() {
    let mut net = Net::new(AlgOptions::default());
    let inv = format!("\r\n\r\n{}", invite("lead", "z9hG4bKlead"));
    let out = text(&net.phone_sends(&inv));
    assert!(
        out.starts_with("INVITE sip:bob@203.0.113.10:5060 SIP/2.0\r\n"),
        "{out:?}"
    );
    let back = text(&net.proxy_sends(&format!(
        "\r\n{}",
        response_to(&out, "180 Ringing", "far", "")
    )));
    assert!(back.starts_with("SIP/2.0 180 Ringing\r\n"), "{back:?}");
}
