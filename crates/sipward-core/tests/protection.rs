//! Attack protection on virtual time: registration failures per user and source, bans
//! and their expiry, flood limits, admission control, filters, events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use sipward_core::{AlgOptions, EventKind, Gateway, ProtectionOptions, SecurityEvent};

const OTHER_PHONE: &str = "10.0.0.21:5062";

/// A gateway with protection options `p` (and room for many calls per user).
fn net_with(p: ProtectionOptions) -> Net {
    let mut cfg = config(AlgOptions {
        max_sessions_per_id: 1000,
        ..AlgOptions::default()
    });
    cfg.protection = p;
    Net {
        gw: Gateway::new(cfg),
        now: Instant::now(),
    }
}

fn ip(s: &str) -> IpAddr {
    addr(s).ip()
}

fn events(net: &mut Net) -> Vec<SecurityEvent> {
    std::iter::from_fn(|| net.gw.poll_event()).collect()
}

/// A REGISTER for alice from `from` with (wrong) credentials, CSeq `n`.
fn register_with_credentials(from: &str, n: u32) -> String {
    let host = from.split(':').next().unwrap();
    format!(
        "REGISTER sip:biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKcrack{n}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@biloxi.example.com>;tag=x{n}\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: crack-{n}@{host}\r\nCSeq: {n} REGISTER\r\nContact: <sip:alice@{from}>\r\nAuthorization: Digest username=\"alice\", realm=\"biloxi.example.com\", nonce=\"abc\", uri=\"sip:biloxi.example.com\", response=\"0123456789abcdef0123456789abcdef\"\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The registrar refuses what the gateway forwarded.
fn refuse(net: &mut Net, forwarded: &str) -> Vec<sipward_core::Transmit> {
    let answer = format!(
        "SIP/2.0 401 Unauthorized\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=srv\r\nCall-ID: {}\r\nCSeq: {}\r\nWWW-Authenticate: Digest realm=\"biloxi.example.com\", nonce=\"n2\"\r\nContent-Length: 0\r\n\r\n",
        header(forwarded, "Via").unwrap(),
        header(forwarded, "From").unwrap(),
        header(forwarded, "To").unwrap(),
        header(forwarded, "Call-ID").unwrap(),
        header(forwarded, "CSeq").unwrap(),
    );
    net.deliver(WAN, PROXY, &answer)
}

#[test]
fn failed_registrations_ban_the_source_but_not_the_user() {
    let mut net = Net::new(AlgOptions::default());
    // The first challenge (no credentials) is not a failure.
    let fwd = text(&net.phone_sends(&register(1, 3600)));
    refuse(&mut net, &fwd);
    for n in 1..=5 {
        let out = net.deliver(LAN, PHONE, &register_with_credentials(PHONE, n));
        assert_eq!(out.len(), 1, "attempt {n} reaches the registrar");
        refuse(&mut net, &text(&out[0]));
    }
    // The sixth goes nowhere, unanswered: the source is banned.
    assert!(net
        .deliver(LAN, PHONE, &register_with_credentials(PHONE, 6))
        .is_empty());
    let ev = events(&mut net);
    let failed = ev
        .iter()
        .filter(|e| e.kind == EventKind::RegisterFailed)
        .count();
    assert_eq!(failed, 5, "{ev:?}");
    let ban = ev.iter().find(|e| e.kind == EventKind::Banned).unwrap();
    assert_eq!(ban.source, ip(PHONE));
    assert_eq!(ban.user.as_deref(), Some("alice"));
    assert_eq!(net.gw.bans(net.now).len(), 1);

    // The same user from another address still gets through.
    let other = net.deliver(LAN, OTHER_PHONE, &register_with_credentials(OTHER_PHONE, 7));
    assert_eq!(other.len(), 1, "alice from elsewhere is not locked out");
    assert_eq!(other[0].remote, addr(PROXY));
}

#[test]
fn a_ban_expires_on_virtual_time_with_an_event() {
    let mut net = net_with(ProtectionOptions {
        ban_time: Duration::from_secs(60),
        ..ProtectionOptions::default()
    });
    net.gw.ban(ip(PHONE), None, "test", net.now);
    assert!(net
        .deliver(LAN, PHONE, &invite("b1", "z9hG4bKb1"))
        .is_empty());
    net.advance(Duration::from_secs(59));
    assert!(net
        .deliver(LAN, PHONE, &invite("b2", "z9hG4bKb2"))
        .is_empty());
    net.advance(Duration::from_secs(2));
    assert!(net.gw.bans(net.now).is_empty());
    let ev = events(&mut net);
    assert!(ev
        .iter()
        .any(|e| e.kind == EventKind::Unbanned && e.reason == "ban expired"));
    assert_eq!(net.deliver(LAN, PHONE, &invite("b3", "z9hG4bKb3")).len(), 1);
    assert_eq!(net.gw.counters().dropped_banned, 2);
}

#[test]
fn a_flood_from_one_source_bans_it_and_spares_the_others() {
    let mut net = net_with(ProtectionOptions {
        new_requests: sipward_core::Rate {
            per_second: 10.0,
            burst: 20.0,
        },
        ..ProtectionOptions::default()
    });
    let mut forwarded = 0;
    for i in 0..100 {
        let out = net.deliver(
            LAN,
            PHONE,
            &invite(&format!("f{i}"), &format!("z9hG4bKf{i}")),
        );
        forwarded += out.iter().filter(|t| t.remote == addr(PROXY)).count();
    }
    assert_eq!(forwarded, 20, "the burst passes, then the source is banned");
    assert_eq!(net.gw.bans(net.now)[0].source, ip(PHONE));
    assert!(net.gw.bans(net.now)[0].reason.starts_with("flood"));
    // Another phone is unaffected.
    let other = net.deliver(LAN, OTHER_PHONE, &invite("g1", "z9hG4bKg1"));
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].remote, addr(PROXY));
}

#[test]
fn counting_windows_refill_over_time() {
    let mut net = net_with(ProtectionOptions {
        new_requests: sipward_core::Rate {
            per_second: 10.0,
            burst: 10.0,
        },
        ..ProtectionOptions::default()
    });
    // Ten a second for a minute is within the limit.
    for i in 0..600 {
        let out = net.deliver(LAN, PHONE, &format!("OPTIONS sip:proxy@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKo{i}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.0.20>;tag=o{i}\r\nTo: <sip:proxy@10.0.0.1>\r\nCall-ID: o{i}@10.0.0.20\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"));
        assert_eq!(out.len(), 1, "request {i}");
        net.now += Duration::from_millis(100);
    }
    assert!(net.gw.bans(net.now).is_empty());
}

#[test]
fn admission_control_answers_503_to_new_calls_and_keeps_dialogs_going() {
    let mut net = net_with(ProtectionOptions {
        admission: sipward_core::Rate {
            per_second: 5.0,
            burst: 5.0,
        },
        ..ProtectionOptions::default()
    });
    // An established call.
    let fwd = text(&net.phone_sends(&invite("e1", "z9hG4bKe1")));
    net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
    ));
    for i in 0..4 {
        net.deliver(
            LAN,
            OTHER_PHONE,
            &invite(&format!("n{i}"), &format!("z9hG4bKn{i}")),
        );
    }
    // Over the limit: new INVITEs get 503 with Retry-After...
    let refused = net.deliver(LAN, OTHER_PHONE, &invite("n9", "z9hG4bKn9"));
    let t = text(&refused[0]);
    assert!(t.starts_with("SIP/2.0 503 Service Unavailable\r\n"), "{t}");
    assert!(t.contains("Retry-After: 5\r\n"), "{t}");
    // ...while the established call's BYE still goes through.
    let bye = net.phone_sends("BYE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbyee1\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-e1\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: e1@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(bye.remote, addr(PROXY));
    assert!(events(&mut net)
        .iter()
        .any(|e| e.kind == EventKind::Overload));
    // A second later there is room again.
    net.now += Duration::from_secs(1);
    let ok = net.deliver(LAN, OTHER_PHONE, &invite("n10", "z9hG4bKn10"));
    assert_eq!(ok[0].remote, addr(PROXY));
}

#[test]
fn scanners_are_dropped_and_banned() {
    let mut net = Net::new(AlgOptions::default());
    let scan = "OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKscan\r\nMax-Forwards: 70\r\nFrom: \"sipvicious\" <sip:100@1.1.1.1>;tag=s1\r\nTo: \"sipvicious\" <sip:100@1.1.1.1>\r\nCall-ID: scan@10.0.0.20\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n";
    assert!(net.deliver(LAN, PHONE, scan).is_empty());
    let ev = events(&mut net);
    assert!(ev
        .iter()
        .any(|e| e.kind == EventKind::Banned && e.reason.contains("friendly-scanner")));
    assert!(net
        .deliver(LAN, PHONE, &invite("s2", "z9hG4bKs2"))
        .is_empty());
}

#[test]
fn log_only_filters_report_and_let_through() {
    let mut net = net_with(ProtectionOptions {
        scanner_filter: sipward_core::FilterMode::LogOnly,
        ..ProtectionOptions::default()
    });
    let scan = "OPTIONS sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKscan\r\nMax-Forwards: 70\r\nFrom: <sip:100@10.0.0.20>;tag=s1\r\nTo: <sip:100@10.0.0.1>\r\nCall-ID: scan@10.0.0.20\r\nCSeq: 1 OPTIONS\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(net.deliver(LAN, PHONE, scan).len(), 1);
    let ev = events(&mut net);
    assert!(ev
        .iter()
        .any(|e| e.kind == EventKind::Rejected && e.reason.contains("log only")));
    assert!(net.gw.bans(net.now).is_empty());
}

#[test]
fn unknown_methods_are_dropped() {
    let mut net = Net::new(AlgOptions::default());
    let odd = "FOO sip:100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKfoo\r\nMax-Forwards: 70\r\nFrom: <sip:a@10.0.0.20>;tag=f\r\nTo: <sip:100@10.0.0.1>\r\nCall-ID: foo@10.0.0.20\r\nCSeq: 1 FOO\r\nContent-Length: 0\r\n\r\n";
    assert!(net.deliver(LAN, PHONE, odd).is_empty());
    assert!(events(&mut net)
        .iter()
        .any(|e| e.kind == EventKind::Rejected && e.method.as_deref() == Some("FOO")));
}

#[test]
fn denied_networks_are_dropped_before_parsing() {
    let mut net = net_with(ProtectionOptions {
        deny: vec!["10.0.0.20/32".parse().unwrap()],
        ..ProtectionOptions::default()
    });
    assert!(net.deliver(LAN, PHONE, "garbage").is_empty());
    assert_eq!(
        net.deliver(LAN, OTHER_PHONE, &invite("d1", "z9hG4bKd1"))
            .len(),
        1
    );
}

#[test]
fn many_users_failing_from_one_source_ban_it() {
    let mut net = net_with(ProtectionOptions {
        max_failed_users_per_source: 3,
        ..ProtectionOptions::default()
    });
    for (n, user) in ["u1", "u2", "u3"].iter().enumerate() {
        let msg = register_with_credentials(PHONE, n as u32 + 1)
            .replace("username=\"alice\"", &format!("username=\"{user}\""));
        let out = net.deliver(LAN, PHONE, &msg);
        assert_eq!(out.len(), 1);
        refuse(&mut net, &text(&out[0]));
    }
    let bans = net.gw.bans(net.now);
    assert_eq!(bans.len(), 1);
    assert!(bans[0].reason.contains("3 users"), "{:?}", bans[0]);
}

#[test]
fn a_binding_taken_over_from_another_address_is_reported() {
    let mut net = Net::new(AlgOptions::default());
    registered(&mut net, 3600);
    let other = register(2, 3600)
        .replace("10.0.0.20:5062", OTHER_PHONE)
        .replace("reg-1@10.0.0.20", "reg-2@10.0.0.21");
    let fwd = text(&net.deliver(LAN, OTHER_PHONE, &other)[0]);
    net.proxy_sends(&register_ok(&fwd, 3600));
    let ev = events(&mut net);
    let hijack = ev
        .iter()
        .find(|e| e.kind == EventKind::HijackSuspected)
        .unwrap();
    assert_eq!(hijack.source, ip(OTHER_PHONE));
    assert!(hijack.reason.contains("10.0.0.20"), "{hijack:?}");
}

#[test]
fn the_source_table_stays_bounded_under_a_spoofed_flood() {
    let mut net = net_with(ProtectionOptions {
        max_tracked_sources: 1000,
        ..ProtectionOptions::default()
    });
    for i in 0..5000u32 {
        let src = format!("10.0.{}.{}:5062", (i / 250) % 250, i % 250 + 1);
        net.deliver(
            LAN,
            &src,
            &invite(&format!("sp{i}"), &format!("z9hG4bKsp{i}")),
        );
    }
    assert!(net.gw.tracked_sources() <= 1000);
}

/// Quoted display names (svcrack's, and many phones') survive the round trip: the
/// registrar's challenge gets back to the sender with its From and To restored.
#[test]
fn responses_with_quoted_display_names_are_restored() {
    let mut net = net_with(ProtectionOptions {
        scanner_filter: sipward_core::FilterMode::Off,
        ..ProtectionOptions::default()
    });
    let reg = "REGISTER sip:10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bK-3176434753;rport\r\nMax-Forwards: 70\r\nTo: \"alice\" <sip:alice@10.0.0.1>\r\nFrom: \"alice\" <sip:alice@10.0.0.1>;tag=3206210844\r\nUser-Agent: friendly-scanner\r\nCall-ID: 1317460889\r\nContact: sip:123@1.1.1.1\r\nCSeq: 1 REGISTER\r\nAccept: application/sdp\r\nContent-Length: 0\r\n\r\n";
    let out = net.deliver(LAN, PHONE, reg);
    assert_eq!(out.len(), 1);
    let back = refuse(&mut net, &text(&out[0]));
    assert_eq!(back.len(), 1, "{:?}", net.gw.counters());
    assert_eq!(back[0].remote, addr(PHONE));
    let t = text(&back[0]);
    assert!(
        t.contains("From: \"alice\" <sip:alice@10.0.0.1>;tag=3206210844\r\n"),
        "{t}"
    );
}

/// A request outside any dialog (`method`: OPTIONS, SUBSCRIBE...) from `from`, number `n`.
fn new_request(method: &str, from: &str, n: u32) -> String {
    let host = from.split(':').next().unwrap();
    let event = if method == "SUBSCRIBE" {
        "Event: presence\r\nExpires: 600\r\nContact: <sip:x@".to_string() + from + ">\r\n"
    } else {
        String::new()
    };
    format!(
        "{method} sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKnew{n}\r\nMax-Forwards: 70\r\nFrom: <sip:x@{host}>;tag=t{n}\r\nTo: <sip:bob@10.0.0.1>\r\nCall-ID: new-{n}@{host}\r\nCSeq: 1 {method}\r\n{event}Content-Length: 0\r\n\r\n"
    )
}

fn status_of(t: &sipward_core::Transmit) -> String {
    text(t).lines().next().unwrap_or_default().to_string()
}

/// An established call of PHONE (dialog e1): the INVITE forwarded and answered 200.
fn established_call(net: &mut Net) {
    let fwd = text(&net.phone_sends(&invite("e1", "z9hG4bKe1")));
    net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
    ));
}

const BYE_E1: &str = "BYE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbyee1\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-e1\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: e1@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";

/// Issue 17, defect 4: twenty sources each send 100 OPTIONS (within their burst) to a
/// proxy that never answers, more than the transaction table holds. The table is not
/// theirs: the phone still registers, the established call's BYE goes through, the
/// refusals are 503 with `overload` events, and the table never passes its cap.
#[test]
fn many_sources_cannot_keep_the_transaction_table_from_phones_and_dialogs() {
    let mut cfg = config(AlgOptions {
        max_transactions: 1000,
        ..AlgOptions::default()
    });
    cfg.protection.table_share_floor = 8;
    let mut net = Net {
        gw: Gateway::new(cfg),
        now: Instant::now(),
    };
    established_call(&mut net);
    let (mut refused, mut evicted) = (0, 0);
    for source in 0..20u32 {
        let from = format!("10.0.0.{}:5062", 100 + source);
        for n in 0..100 {
            let out = net.deliver(LAN, &from, &new_request("OPTIONS", &from, source * 100 + n));
            // Forwarded (and perhaps another source's transaction ended to make room),
            // or answered 503.
            let answered: Vec<_> = out.iter().filter(|t| t.remote == addr(&from)).collect();
            for t in out
                .iter()
                .filter(|t| t.remote != addr(&from) && t.remote != addr(PROXY))
            {
                // Another source's transaction ended for room: its sender hears why.
                assert!(status_of(t).starts_with("SIP/2.0 503"), "{}", text(t));
                assert!(text(t).contains("fair share"), "{}", text(t));
                evicted += 1;
            }
            if let Some(t) = answered.first() {
                assert!(status_of(t).starts_with("SIP/2.0 503"), "{}", text(t));
                refused += 1;
            } else {
                assert!(out.iter().any(|t| t.remote == addr(PROXY)));
            }
        }
        assert!(net.gw.transactions() <= 1000);
        net.now += Duration::from_millis(50);
    }
    assert!(refused > 0, "the sources filled the table unhindered");
    assert!(evicted > 0, "the later sources found no room");
    assert!(net.gw.bans(net.now).is_empty(), "nobody flooded");
    // The phone registers...
    let reg = net.deliver(LAN, PHONE, &register(1, 3600));
    assert!(
        reg.iter().any(|t| t.remote == addr(PROXY)),
        "REGISTER not forwarded: {:?}",
        reg.iter().map(status_of).collect::<Vec<_>>()
    );
    // ...and the call in progress hangs up.
    let bye = net.deliver(LAN, PHONE, BYE_E1);
    assert!(
        bye.iter().any(|t| t.remote == addr(PROXY)),
        "BYE not forwarded: {:?}",
        bye.iter().map(status_of).collect::<Vec<_>>()
    );
    assert!(net.gw.transactions() <= 1000);
    let c = net.gw.counters();
    assert!(c.refused_share > 0 && c.evicted_transactions > 0, "{c:?}");
    assert!(events(&mut net)
        .iter()
        .any(|e| e.kind == EventKind::Overload && e.reason.contains("fair share")));
}

/// The room kept for dialogs: new requests from one source stop short of the cap, and
/// a BYE still finds room.
#[test]
fn requests_in_established_dialogs_keep_room_new_requests_cannot_take() {
    let mut cfg = config(AlgOptions {
        max_transactions: 100,
        ..AlgOptions::default()
    });
    cfg.protection.table_share_floor = 1000;
    let mut net = Net {
        gw: Gateway::new(cfg),
        now: Instant::now(),
    };
    established_call(&mut net);
    let from = "10.0.0.30:5062";
    let mut forwarded = 0;
    for n in 0..100 {
        let out = net.deliver(LAN, from, &new_request("OPTIONS", from, n));
        forwarded += out.iter().filter(|t| t.remote == addr(PROXY)).count();
    }
    // 10 % kept: 90 entries for new requests (the call's answered INVITE, kept only
    // for retransmissions, gave its place up).
    assert_eq!(forwarded, 90);
    assert_eq!(net.gw.transactions(), 90);
    let bye = net.phone_sends(BYE_E1);
    assert_eq!(bye.remote, addr(PROXY));
}

/// Non-INVITE transactions end at Timer F (32 s), not at the 180 s request-response
/// timeout: an unanswered OPTIONS is answered 408 and its entry freed; an INVITE waits.
#[test]
fn unanswered_non_invite_transactions_end_at_timer_f() {
    let mut net = Net::new(AlgOptions::default());
    net.phone_sends(&new_request("OPTIONS", PHONE, 1));
    net.phone_sends(&invite("ring", "z9hG4bKring"));
    assert_eq!(net.gw.transactions(), 2);
    let out = net.advance(Duration::from_secs(33));
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(status_of(&out[0]).starts_with("SIP/2.0 408"));
    assert!(text(&out[0]).contains("CSeq: 1 OPTIONS"));
    assert_eq!(net.gw.transactions(), 1, "the INVITE still rings");
}

/// Issue 17: admission counts every new request, not only INVITE and REGISTER.
#[test]
fn every_new_request_counts_in_admission() {
    let mut net = net_with(ProtectionOptions {
        admission: sipward_core::Rate {
            per_second: 5.0,
            burst: 5.0,
        },
        ..ProtectionOptions::default()
    });
    for (n, method) in ["OPTIONS", "MESSAGE", "SUBSCRIBE", "PUBLISH", "OPTIONS"]
        .iter()
        .enumerate()
    {
        let out = net.deliver(
            LAN,
            OTHER_PHONE,
            &new_request(method, OTHER_PHONE, n as u32),
        );
        assert_eq!(out[0].remote, addr(PROXY), "{method}");
    }
    let refused = net.deliver(LAN, OTHER_PHONE, &new_request("OPTIONS", OTHER_PHONE, 9));
    assert!(status_of(&refused[0]).starts_with("SIP/2.0 503"));
    assert_eq!(net.gw.counters().overloaded, 1);
}

/// Issue 17, defect 5: a flood of new INVITEs from the proxy's address (exempt from
/// per-source limits, and spoofable) spends the outside admission budget only: the
/// phones' calls keep theirs.
#[test]
fn an_outside_flood_does_not_take_the_inside_admission_budget() {
    let rate = sipward_core::Rate {
        per_second: 5.0,
        burst: 5.0,
    };
    let mut net = net_with(ProtectionOptions {
        admission: rate,
        outside_admission: rate,
        exempt: vec!["203.0.113.10/32".parse().unwrap()],
        ..ProtectionOptions::default()
    });
    let flood = |n: u32| {
        format!(
            "INVITE sip:nobody@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKfl{n}\r\nMax-Forwards: 70\r\nFrom: <sip:x@203.0.113.10>;tag=f{n}\r\nTo: <sip:nobody@203.0.113.1>\r\nCall-ID: fl-{n}@203.0.113.10\r\nCSeq: 1 INVITE\r\nContact: <sip:x@203.0.113.10>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let mut overloaded = 0;
    for n in 0..50 {
        let out = net.deliver(WAN, PROXY, &flood(n));
        overloaded += out
            .iter()
            .filter(|t| status_of(t).starts_with("SIP/2.0 503"))
            .count();
    }
    assert_eq!(overloaded, 45, "the outside budget still binds the flood");
    for i in 0..5 {
        let out = net.deliver(
            LAN,
            OTHER_PHONE,
            &invite(&format!("in{i}"), &format!("z9hG4bKin{i}")),
        );
        assert_eq!(out[0].remote, addr(PROXY), "inside call {i} refused");
    }
    let c = net.gw.counters();
    assert_eq!((c.overloaded, c.overloaded_outside), (45, 45));
}

/// The outside sources together hold at most their share of a table, so inside
/// callers keep the rest; an outside flood is answered 503 with an event.
#[test]
fn outside_requests_hold_at_most_their_share_of_the_table() {
    let mut cfg = config(AlgOptions {
        max_transactions: 100,
        ..AlgOptions::default()
    });
    cfg.protection.exempt = vec!["203.0.113.10/32".parse().unwrap()];
    let mut net = Net {
        gw: Gateway::new(cfg),
        now: Instant::now(),
    };
    let fwd = registered(&mut net, 3600);
    let contact = header(&fwd, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let mut to_phone = 0;
    let mut refused = 0;
    for n in 0..60 {
        let req = format!(
            "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKo{n}\r\nMax-Forwards: 70\r\nFrom: <sip:x@203.0.113.10>;tag=o{n}\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: o-{n}@203.0.113.10\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        for t in net.deliver(WAN, PROXY, &req) {
            if t.remote == addr(PHONE) {
                to_phone += 1;
            } else if status_of(&t).starts_with("SIP/2.0 503") {
                refused += 1;
            }
        }
    }
    // Half of the 90 entries for new requests.
    assert_eq!((to_phone, refused), (45, 15));
    for n in 0..40 {
        let out = net.deliver(LAN, OTHER_PHONE, &new_request("OPTIONS", OTHER_PHONE, n));
        assert_eq!(out[0].remote, addr(PROXY), "inside request {n} refused");
    }
    assert!(events(&mut net)
        .iter()
        .any(|e| e.kind == EventKind::Overload && e.reason.contains("outside share")));
}

/// Sibling: subscriptions are dialogs too, bounded by the dialog table and its shares
/// (only INVITEs were checked).
#[test]
fn subscriptions_count_against_the_dialog_table() {
    let mut cfg = config(AlgOptions {
        max_dialogs: 40,
        ..AlgOptions::default()
    });
    cfg.protection.table_share_floor = 4;
    let mut net = Net {
        gw: Gateway::new(cfg),
        now: Instant::now(),
    };
    let mut created = 0;
    for n in 0..60 {
        let out = net.deliver(LAN, OTHER_PHONE, &new_request("SUBSCRIBE", OTHER_PHONE, n));
        created += out.iter().filter(|t| t.remote == addr(PROXY)).count();
    }
    assert_eq!(
        created, 36,
        "one source fills no more than the room for new dialogs"
    );
    // Another phone still gets its call through.
    let out = net.deliver(LAN, PHONE, &invite("c1", "z9hG4bKc1"));
    assert_eq!(out[0].remote, addr(PROXY));
}

/// Sibling: media ports. Each call holds a pair on each side and the pools are smaller
/// than the dialog table: one source placing calls that nobody answers must leave
/// ports for the other phones.
#[test]
fn one_source_cannot_take_every_media_port() {
    let mut net = Net::with_media(
        AlgOptions {
            max_sessions_per_id: 1000,
            ..AlgOptions::default()
        },
        20,
    );
    let mut cfg = net.gw.config().clone();
    cfg.protection.table_share_floor = 4;
    net.gw.reconfigure(cfg).unwrap();
    let mut placed = 0;
    for n in 0..30 {
        let out = net.deliver(
            LAN,
            OTHER_PHONE,
            &invite(&format!("h{n}"), &format!("z9hG4bKh{n}")),
        );
        placed += out.iter().filter(|t| t.remote == addr(PROXY)).count();
    }
    // 20 pairs, 10 % of them for newcomers.
    assert_eq!(placed, 18);
    let out = net.deliver(LAN, PHONE, &invite("mine", "z9hG4bKmine"));
    assert_eq!(out[0].remote, addr(PROXY), "{}", text(&out[0]));
    assert!(events(&mut net)
        .iter()
        .any(|e| e.kind == EventKind::Overload && e.reason.contains("media port")));
}

/// Sibling: the per-source table. Once full, sources seen earlier that have gone quiet
/// make room, so a later flooder is tracked (and banned) instead of going unlimited.
#[test]
fn a_full_source_table_makes_room_for_a_new_flooder() {
    let mut net = net_with(ProtectionOptions {
        max_tracked_sources: 10,
        ..ProtectionOptions::default()
    });
    for i in 0..10u32 {
        let from = format!("10.0.0.{}:5062", 100 + i);
        net.deliver(LAN, &from, &new_request("OPTIONS", &from, i));
    }
    assert_eq!(net.gw.tracked_sources(), 10);
    net.now += Duration::from_secs(10);
    let flooder = "10.0.0.200:5062";
    for n in 0..200 {
        net.deliver(LAN, flooder, &new_request("OPTIONS", flooder, 1000 + n));
    }
    assert!(
        net.gw.bans(net.now).iter().any(|b| b.source == ip(flooder)),
        "the flooder went unlimited"
    );
    assert!(net.gw.tracked_sources() <= 10);
}

/// The reserved room is for dialogs the gateway holds: requests with a made-up To-tag
/// are new requests, and cannot fill it ahead of a real BYE.
#[test]
fn a_forged_to_tag_does_not_open_the_reserved_room() {
    let mut cfg = config(AlgOptions {
        max_transactions: 100,
        ..AlgOptions::default()
    });
    cfg.protection.table_share_floor = 1000;
    let mut net = Net {
        gw: Gateway::new(cfg),
        now: Instant::now(),
    };
    established_call(&mut net);
    let from = "10.0.0.30:5062";
    for n in 0..100 {
        let forged = new_request("OPTIONS", from, n).replace(
            "To: <sip:bob@10.0.0.1>",
            &format!("To: <sip:bob@10.0.0.1>;tag=forged{n}"),
        );
        net.deliver(LAN, from, &forged);
    }
    assert!(net.gw.transactions() <= 90, "{}", net.gw.transactions());
    let bye = net.phone_sends(BYE_E1);
    assert_eq!(bye.remote, addr(PROXY));
}

/// A few sources, each within its own limits, drain the shared admission budget: a
/// quarter of it stays for light sources (those that sent little of late), so a phone
/// that sends one REGISTER still gets in.
#[test]
fn heavy_sources_draining_admission_leave_a_part_for_light_sources() {
    let mut net = net_with(ProtectionOptions {
        admission: sipward_core::Rate {
            per_second: 100.0,
            burst: 100.0,
        },
        ..ProtectionOptions::default()
    });
    let mut admitted = 0;
    for source in 0..4u32 {
        let from = format!("10.0.0.{}:5062", 100 + source);
        for n in 0..50 {
            let call = format!("h{source}x{n}");
            let out = net.deliver(LAN, &from, &invite(&call, &format!("z9hG4bK{call}")));
            admitted += out.iter().filter(|t| t.remote == addr(PROXY)).count();
        }
    }
    // Each source's first ten are light and may take any token; the rest stop at the
    // quarter kept: 50 + (10 + 15) + 10 + 10.
    assert_eq!(admitted, 95);
    assert!(net.gw.bans(net.now).is_empty());
    let reg = net.deliver(LAN, PHONE, &register(1, 3600));
    assert_eq!(reg[0].remote, addr(PROXY), "{}", text(&reg[0]));
}

/// A made-up To-tag does not pass a request off as in-dialog around admission.
#[test]
fn a_forged_to_tag_counts_in_admission() {
    let mut net = net_with(ProtectionOptions {
        admission: sipward_core::Rate {
            per_second: 5.0,
            burst: 5.0,
        },
        ..ProtectionOptions::default()
    });
    for n in 0..5 {
        let forged = new_request("OPTIONS", OTHER_PHONE, n).replace(
            "To: <sip:bob@10.0.0.1>",
            "To: <sip:bob@10.0.0.1>;tag=forged",
        );
        // No dialog of that tag: answered 481 here (RFC 3261 12.2.2), yet admitted
        // as what it is, a new request.
        let out = net.deliver(LAN, OTHER_PHONE, &forged);
        assert!(
            status_of(&out[0]).starts_with("SIP/2.0 481"),
            "{}",
            text(&out[0])
        );
    }
    let refused = net.deliver(LAN, OTHER_PHONE, &invite("late", "z9hG4bKlate"));
    assert!(
        status_of(&refused[0]).starts_with("SIP/2.0 503"),
        "{}",
        text(&refused[0])
    );
    // A real dialog's requests still go around admission.
    let mut net = net_with(ProtectionOptions {
        admission: sipward_core::Rate {
            per_second: 1.0,
            burst: 1.0,
        },
        ..ProtectionOptions::default()
    });
    established_call(&mut net);
    assert_eq!(net.phone_sends(BYE_E1).remote, addr(PROXY));
}

#[test]
fn a_full_registration_table_still_takes_refreshes_and_removals_of_held_bindings() {
    let mut net = Net::new(AlgOptions {
        max_registrations: 2,
        ..AlgOptions::default()
    });
    registered(&mut net, 3600);
    let other = |cseq: u32, expires: u32, ip: &str| {
        register(cseq, expires)
            .replace("10.0.0.20:5062", &format!("{ip}:5062"))
            .replace("reg-1@10.0.0.20", &format!("reg-{ip}"))
            .replace("sip:alice@", &format!("sip:u{}@", ip.replace('.', "")))
    };
    let fwd = text(&net.deliver(LAN, "10.0.0.21:5062", &other(1, 3600, "10.0.0.21"))[0]);
    net.proxy_sends(&register_ok(&fwd, 3600));
    assert_eq!(net.gw.registration_count(), 2);
    // A newcomer finds the table full.
    let refused = net.deliver(LAN, "10.0.0.22:5062", &other(1, 3600, "10.0.0.22"));
    assert!(status_of(&refused[0]).starts_with("SIP/2.0 503"));
    // The phones holding bindings refresh and remove theirs: nothing is added.
    let refresh = net.phone_sends(&register(2, 3600));
    assert_eq!(refresh.remote, addr(PROXY), "{}", text(&refresh));
    net.proxy_sends(&register_ok(&text(&refresh), 3600));
    let removal = net.deliver(LAN, "10.0.0.21:5062", &other(2, 0, "10.0.0.21"));
    assert_eq!(removal[0].remote, addr(PROXY), "{}", text(&removal[0]));
}

/// Issue 17, defects 4 and 5, a sibling: requests the rule set drops (outside strangers,
/// each from its own spoofed address and so within its own limits) went through
/// protection first, spent the outside admission budget and were answered 503; then
/// the proxy's own call to a phone was refused. Now they are dropped unanswered
/// before they cost any budget.
#[test]
fn requests_no_rule_admits_spend_no_admission_budget_and_get_no_answer() {
    let rate = sipward_core::Rate {
        per_second: 5.0,
        burst: 5.0,
    };
    let mut net = net_with(ProtectionOptions {
        outside_admission: rate,
        ..ProtectionOptions::default()
    });
    let fwd = registered(&mut net, 3600);
    let contact = header(&fwd, "Contact").unwrap();
    let target = contact.split('>').next().unwrap().trim_start_matches('<');
    let call = |from: &str, n: u32| {
        let host = from.split(':').next().unwrap();
        format!(
            "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKst{n}\r\nMax-Forwards: 70\r\nFrom: <sip:x@{host}>;tag=s{n}\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: st-{n}@{host}\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{from}>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for n in 0..50 {
        let stranger = format!("198.51.100.{}:5060", n + 1);
        let out = net.deliver(WAN, &stranger, &call(&stranger, n));
        assert!(out.is_empty(), "a stranger was answered: {out:?}");
    }
    let out = net.deliver(WAN, PROXY, &call(PROXY, 99));
    assert!(
        out.iter().any(|t| t.remote == addr(PHONE)),
        "the proxy's call did not reach the phone: {:?}",
        out.iter().map(status_of).collect::<Vec<_>>()
    );
    let c = net.gw.counters();
    assert_eq!((c.dropped_no_rule, c.overloaded), (50, 0));
}
