//! Issue 17 on virtual time: operator-chosen durations never overflow, every bounded
//! table reports its fill and capacity, and a shutdown ends calls on the record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)] // tests take one real Instant as the epoch

mod common;

use std::time::Duration;

use common::*;
use sipward_core::{AlgOptions, EventKind};

#[test]
fn the_longest_ban_saturates_instead_of_overflowing() {
    let mut net = Net::new(AlgOptions::default());
    let now = net.now;
    net.gw
        .ban("192.0.2.18".parse().unwrap(), Some(Duration::MAX), "x", now);
    net.gw.ban(
        "192.0.2.19".parse().unwrap(),
        Some(Duration::from_secs(i64::MAX as u64)),
        "x",
        now,
    );
    let bans = net.gw.bans(now);
    assert_eq!(bans.len(), 2);
    assert!(bans
        .iter()
        .all(|b| b.expires > now + Duration::from_secs(86_400 * 365 * 50)));
    // Extending a ban by another huge one saturates again.
    net.gw
        .ban("192.0.2.18".parse().unwrap(), Some(Duration::MAX), "x", now);
    net.advance(Duration::from_secs(3600));
    assert_eq!(net.gw.bans(net.now).len(), 2);
    assert_eq!(
        sipward_core::protect::later(now, Duration::MAX),
        sipward_core::protect::later(now, Duration::MAX)
    );
}

#[test]
fn every_bounded_table_reports_fill_and_capacity() {
    let mut net = Net::new(AlgOptions {
        max_dialogs: 7,
        ..AlgOptions::default()
    });
    net.phone_sends(&invite("t1", "z9hG4bKt1"));
    let usage = net.gw.table_usage();
    let find = |name: &str| {
        usage
            .iter()
            .find(|t| t.table == name)
            .unwrap_or_else(|| panic!("{name} missing: {usage:?}"))
    };
    assert_eq!(find("dialogs").entries, 1);
    assert_eq!(find("dialogs").capacity, 7);
    assert_eq!(find("transactions").entries, 1);
    assert_eq!(find("tracked_sources").entries, 1);
    assert_eq!(find("tracked_sources").entries, net.gw.tracked_sources());
    for name in [
        "registrations",
        "completed_client_transactions",
        "completed_server_transactions",
        "failure_records",
        "bans",
    ] {
        assert!(find(name).capacity > 0, "{name}");
    }
}

#[test]
fn shutdown_ends_calls_with_byes_and_events() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("sd1", "z9hG4bKsd1")));
    net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
    ));
    // A second call, still ringing.
    net.phone_sends(&invite("sd2", "z9hG4bKsd2"));
    while net.gw.poll_event().is_some() {}
    let now = net.now;
    assert_eq!(net.gw.shutdown(now), 2);
    let mut out = net.drain();
    // The ringing call's INVITE is answered 503 (no provisional came: no CANCEL).
    let refused = out.iter().position(|t| text(t).starts_with("SIP/2.0 503 "));
    let refused = out.remove(refused.expect("no 503 for the ringing call"));
    assert_eq!(refused.remote, addr(PHONE));
    assert!(text(&refused).contains("gateway shutdown"));
    assert_eq!(
        out.len(),
        2,
        "a BYE each way for the confirmed call: {out:?}"
    );
    for t in &out {
        let m = text(t);
        assert!(m.starts_with("BYE "), "{m}");
        assert!(
            m.contains("Reason: SIP;cause=503;text=\"gateway shutdown\"\r\n"),
            "{m}"
        );
    }
    let ended: Vec<_> = std::iter::from_fn(|| net.gw.poll_event())
        .filter(|e| e.kind == EventKind::CallEnded)
        .collect();
    assert_eq!(ended.len(), 2);
    assert!(
        ended.iter().all(|e| e.reason.ends_with(": shutdown")),
        "{ended:?}"
    );
    assert!(net.gw.dialogs().is_empty());
}

/// Timers armed at the last instant the clock can hold (`handle_timeout` and datagrams
/// with a `now` that far ahead): the sweep, a CANCEL's retransmission and give-up,
/// bindings and transactions saturate instead of panicking on `Instant + Duration`.
#[test]
fn timers_at_the_end_of_the_clock_saturate_instead_of_overflowing() {
    let mut net = Net::with_media(AlgOptions::default(), 4);
    // The last instant representable, found by halving the step.
    let mut end = net.now;
    let mut step = Duration::from_secs(u64::MAX);
    while step > Duration::from_nanos(1) {
        if let Some(later) = end.checked_add(step) {
            end = later;
        } else {
            step /= 2;
        }
    }
    net.now = end - Duration::from_millis(100);
    registered(&mut net, 3600);
    let fwd = text(&net.phone_sends(&invite("far", "z9hG4bKfar")));
    net.deliver(WAN, PROXY, &response_to(&fwd, "180 Ringing", "b-far", ""));
    let cancel = "CANCEL sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKfar\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-far\r\nTo: bob <sip:bob@10.0.0.1:5060>\r\nCall-ID: far@10.0.0.20\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    let out = net.deliver(LAN, PHONE, cancel);
    assert!(
        out.iter().any(|t| text(t).starts_with("CANCEL ")),
        "the gateway's own CANCEL did not go out: {out:?}"
    );
    for now in [end - Duration::from_millis(50), end] {
        net.now = now;
        net.gw.handle_timeout(now);
        net.drain();
    }
    assert!(net
        .gw
        .poll_timeout()
        .is_some_and(|t| t >= net.now - Duration::from_secs(1)));
}

/// An operator's ban of `::ffff:192.0.2.18` was stored as an IPv6 source and never
/// matched the IPv4 datagrams of 192.0.2.18: the ban was listed but did nothing.
#[test]
fn a_ban_of_an_ipv4_mapped_address_bans_the_ipv4_source() {
    let mut net = Net::new(AlgOptions::default());
    let now = net.now;
    net.gw
        .ban("::ffff:203.0.113.10".parse().unwrap(), None, "mapped", now);
    let bans = net.gw.bans(now);
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].source.to_string(), "203.0.113.10");
    let options = "OPTIONS sip:x@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKmap\r\nMax-Forwards: 70\r\nFrom: <sip:p@203.0.113.10>;tag=m\r\nTo: <sip:x@203.0.113.1>\r\nCall-ID: map@203.0.113.10\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    assert!(net.deliver(WAN, PROXY, options).is_empty());
    assert_eq!(net.gw.counters().dropped_banned, 1);
    assert!(net
        .gw
        .unban("::ffff:203.0.113.10".parse().unwrap(), net.now));
    assert!(net.gw.bans(net.now).is_empty());
}

/// A full ban table made room by dropping the ban ending soonest, whoever set it: a
/// flood of spoofed scanner datagrams (each source banned for the hour) pushed out an
/// operator's ten-minute ban. Automatic bans now make room first.
#[test]
fn automatic_bans_do_not_push_out_an_operators_ban() {
    let mut cfg = config(AlgOptions::default());
    cfg.protection.max_bans = 3;
    let mut net = Net {
        gw: sipward_core::Gateway::new(cfg),
        now: std::time::Instant::now(),
    };
    let fraud: std::net::IpAddr = "10.0.0.99".parse().unwrap();
    let now = net.now;
    net.gw
        .ban(fraud, Some(Duration::from_secs(600)), "fraud report", now);
    for i in 0..10 {
        let from = format!("10.0.0.{}:5062", 30 + i);
        let scan = format!("OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKscan{i}\r\nMax-Forwards: 70\r\nFrom: <sip:100@10.0.0.1>;tag=s{i}\r\nTo: <sip:100@10.0.0.1>\r\nCall-ID: scan{i}@x\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n");
        net.deliver(LAN, &from, &scan);
    }
    let bans = net.gw.bans(net.now);
    assert_eq!(bans.len(), 3);
    assert!(
        bans.iter().any(|b| b.source == fraud && b.by_operator),
        "the operator's ban was pushed out: {bans:?}"
    );
}

/// At shutdown a call still ringing, either way, was left to the endpoints' timers
/// (minutes of ringing with nobody to relay the answer): the INVITE's sender gets 503
/// and the ringing side a CANCEL.
#[test]
fn shutdown_refuses_ringing_calls_and_cancels_the_ringing_side() {
    let mut net = Net::new(AlgOptions::default());
    let contact = registered(&mut net, 3600);
    // Outbound, ringing at the far end.
    let fwd = text(&net.phone_sends(&invite("ring-out", "z9hG4bKro")));
    net.deliver(WAN, PROXY, &response_to(&fwd, "180 Ringing", "far", ""));
    // Inbound, ringing at the phone.
    let target = header(&contact, "Contact")
        .unwrap()
        .split('>')
        .next()
        .unwrap()
        .trim_start_matches('<')
        .to_string();
    let inbound = format!(
        "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKri\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.com>;tag=c1\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: ring-in@203.0.113.10\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@203.0.113.10>\r\nContent-Length: 0\r\n\r\n"
    );
    let to_phone = net.deliver(WAN, PROXY, &inbound);
    let to_phone = to_phone
        .iter()
        .find(|t| t.remote == addr(PHONE))
        .map(text)
        .expect("the inbound INVITE reached the phone");
    net.deliver(LAN, PHONE, &response_to(&to_phone, "180 Ringing", "ph", ""));
    net.drain();
    let now = net.now;
    net.gw.shutdown(now);
    let out: Vec<(std::net::SocketAddr, String)> =
        net.drain().iter().map(|t| (t.remote, text(t))).collect();
    let sent = |to: &str, start: &str| {
        out.iter()
            .filter(|(r, m)| *r == addr(to) && m.starts_with(start))
            .count()
    };
    assert_eq!(sent(PHONE, "SIP/2.0 503 "), 1, "{out:#?}");
    assert_eq!(sent(PROXY, "CANCEL "), 1, "{out:#?}");
    assert_eq!(sent(PROXY, "SIP/2.0 503 "), 1, "{out:#?}");
    assert_eq!(sent(PHONE, "CANCEL "), 1, "{out:#?}");
    assert!(out
        .iter()
        .filter(|(_, m)| m.starts_with("SIP/2.0 503 "))
        .all(|(_, m)| m.contains("gateway shutdown")));
}
