//! The gateway core on virtual time: flows, topology hiding, timers and limits, without a
//! socket. A phone at 10.0.0.20, the gateway at 10.0.0.1 (lan) and 203.0.113.1 (wan),
//! the proxy at 203.0.113.10.

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
use sipward_core::AlgOptions;

#[test]
fn register_is_hidden_capped_and_bound() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.phone_sends(&register(1, 7200));
    assert_eq!(out.remote, addr(PROXY));
    assert_eq!(out.local, addr(WAN));
    let fwd = text(&out);
    assert!(
        fwd.contains("Via: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKsw"),
        "{fwd}"
    );
    assert!(
        fwd.contains("Contact: <sip:alice@203.0.113.1:5060;swc="),
        "{fwd}"
    );
    assert!(
        fwd.contains(";expires=3600"),
        "Expires is capped at the maximum registration time: {fwd}"
    );
    assert!(fwd.contains("Max-Forwards: 69"));
    let back = net.proxy_sends(&register_ok(&fwd, 3600));
    let back = text(&back);
    assert!(
        back.contains("Via: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKreg1;rport"),
        "{back}"
    );
    assert!(
        back.contains("Contact: <sip:alice@10.0.0.20:5062>;expires=3600"),
        "{back}"
    );
    assert!(back.contains("Call-ID: reg-1@10.0.0.20"), "{back}");
    let b = net.gw.bindings();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].aor, "alice@biloxi.example.com");
    assert_eq!(b[0].phone, addr(PHONE));
}

#[test]
fn ten_minute_registration_expires_on_virtual_time() {
    let mut net = Net::new(AlgOptions::default());
    registered(&mut net, 600);
    net.advance(Duration::from_secs(599));
    assert_eq!(net.gw.bindings().len(), 1);
    net.advance(Duration::from_secs(2));
    assert_eq!(net.gw.bindings().len(), 0);
    assert_eq!(net.gw.counters().bindings_expired, 1);
}

#[test]
fn unregister_removes_the_binding() {
    let mut net = Net::new(AlgOptions::default());
    registered(&mut net, 600);
    let out = net.phone_sends(&register(2, 0));
    let fwd = text(&out);
    // A registrar answers an unregister with no contacts.
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=x\r\nCall-ID: {}\r\nCSeq: 2 REGISTER\r\nContent-Length: 0\r\n\r\n",
        header(&fwd, "Via").unwrap(),
        header(&fwd, "From").unwrap(),
        header(&fwd, "To").unwrap(),
        header(&fwd, "Call-ID").unwrap()
    );
    net.proxy_sends(&ok);
    assert!(net.gw.bindings().is_empty());
}

#[test]
fn outbound_call_is_hidden_and_restored() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.phone_sends(&invite("c1", "z9hG4bKinv1"));
    let fwd = text(&out);
    assert!(
        fwd.starts_with("INVITE sip:bob@203.0.113.10:5060 SIP/2.0\r\n"),
        "{fwd}"
    );
    let hidden_call_id = header(&fwd, "Call-ID").unwrap().to_string();
    assert!(hidden_call_id.starts_with("sw"));
    let ringing = net.proxy_sends(&response_to(&fwd, "180 Ringing", "b1", ""));
    let ringing = text(&ringing);
    assert!(ringing.contains("Call-ID: c1@10.0.0.20\r\n"), "{ringing}");
    assert!(
        ringing.contains("From: alice <sip:alice@10.0.0.20:5062>;tag=a-c1\r\n"),
        "{ringing}"
    );
    assert!(
        ringing.contains("To: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\n"),
        "{ringing}"
    );
    assert!(
        ringing.contains("Via: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKinv1\r\n"),
        "{ringing}"
    );
    let ok = net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
    ));
    assert_eq!(ok.remote, addr(PHONE));
    assert_eq!(net.gw.dialogs().len(), 1);
    assert!(net.gw.dialogs()[0].confirmed);

    // ACK and BYE from the phone keep the hidden Call-ID.
    let ack = net.phone_sends("ACK sip:bob@203.0.113.50 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKack1\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-c1\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: c1@10.0.0.20\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    assert!(text(&ack).contains(&format!("Call-ID: {hidden_call_id}\r\n")));
    let bye = net.phone_sends("BYE sip:bob@203.0.113.50 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbye1\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-c1\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: c1@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
    let bye = text(&bye);
    net.proxy_sends(&response_to(&bye, "200 OK", "b1", ""));
    assert!(net.gw.dialogs().is_empty());
}

#[test]
fn bye_from_the_far_end_reaches_the_phone_in_its_own_terms() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("c2", "z9hG4bKinv2")));
    net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "b2",
        "Contact: <sip:bob@203.0.113.50>\r\n",
    ));
    let outside_from = header(&fwd, "From").unwrap();
    let outside_to = header(&fwd, "To").unwrap();
    let bye = format!(
        "BYE sip:alice@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKpbye\r\nVia: SIP/2.0/UDP 203.0.113.50;branch=z9hG4bKfar\r\nMax-Forwards: 69\r\nFrom: {outside_to};tag=b2\r\nTo: {outside_from}\r\nCall-ID: {}\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n",
        header(&fwd, "Call-ID").unwrap()
    );
    let to_phone = net.proxy_sends(&bye);
    assert_eq!(to_phone.remote, addr(PHONE));
    let t = text(&to_phone);
    assert!(t.contains("Call-ID: c2@10.0.0.20\r\n"), "{t}");
    assert!(
        t.contains("To: alice <sip:alice@10.0.0.20:5062>;tag=a-c2\r\n"),
        "{t}"
    );
    assert!(
        t.contains("From: bob <sip:bob@10.0.0.1:5060>;tag=b2\r\n"),
        "{t}"
    );
    assert!(t.starts_with("BYE sip:alice@10.0.0.20:5062 SIP/2.0"), "{t}");
    let ok = net.phone_sends(&format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: bob <sip:bob@10.0.0.1:5060>;tag=b2\r\nTo: alice <sip:alice@10.0.0.20:5062>;tag=a-c2\r\nCall-ID: c2@10.0.0.20\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n",
        header(&t, "Via").unwrap()
    ));
    assert_eq!(ok.remote, addr(PROXY));
    assert!(text(&ok).contains("Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKpbye\r\nVia: SIP/2.0/UDP 203.0.113.50;branch=z9hG4bKfar\r\n"));
    assert!(net.gw.dialogs().is_empty());
}

#[test]
fn inbound_call_reaches_the_registered_phone() {
    let mut net = Net::new(AlgOptions::default());
    let reg = registered(&mut net, 3600);
    let contact = header(&reg, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let inv = format!(
        "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKin1\r\nMax-Forwards: 69\r\nFrom: <sip:carol@example.net>;tag=c1\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: in-1@example.net\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@198.51.100.7>\r\nContent-Length: 0\r\n\r\n"
    );
    let to_phone = net.proxy_sends(&inv);
    assert_eq!(to_phone.remote, addr(PHONE));
    let t = text(&to_phone);
    assert!(
        t.starts_with("INVITE sip:alice@10.0.0.20:5062 SIP/2.0\r\n"),
        "{t}"
    );
    assert!(
        t.contains("Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKsw"),
        "{t}"
    );
    let ok = net.phone_sends(&format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: <sip:carol@example.net>;tag=c1\r\nTo: <sip:alice@biloxi.example.com>;tag=al\r\nCall-ID: in-1@example.net\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.20:5062>\r\nContent-Length: 0\r\n\r\n",
        header(&t, "Via").unwrap()
    ));
    assert_eq!(ok.remote, addr(PROXY));
    let ok = text(&ok);
    assert!(
        ok.contains("Contact: <sip:alice@203.0.113.1:5060;swc="),
        "{ok}"
    );
    assert!(
        ok.contains("Via: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKin1\r\n"),
        "{ok}"
    );
    assert_eq!(net.gw.dialogs().len(), 1);
}

#[test]
fn unknown_outside_target_gets_404_and_nothing_reaches_a_phone() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.deliver(WAN, PROXY, "INVITE sip:nobody@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKx\r\nFrom: <sip:x@example.net>;tag=1\r\nTo: <sip:nobody@203.0.113.1>\r\nCall-ID: u1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(out.len(), 1);
    assert!(text(&out[0]).starts_with("SIP/2.0 404 "));
    assert_eq!(out[0].remote, addr(PROXY));
}

#[test]
fn rule_set_drops_what_it_does_not_allow() {
    let mut net = Net::new(AlgOptions::default());
    // From an outside address that is not the proxy: no rule, dropped.
    let out = net.deliver(WAN, "198.51.100.66:5060", "OPTIONS sip:x@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.66;branch=z9hG4bKx\r\nFrom: <sip:x@example.net>;tag=1\r\nTo: <sip:x@203.0.113.1>\r\nCall-ID: r1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    assert!(out.is_empty());
    assert_eq!(net.gw.counters().dropped_no_rule, 1);
    // A response nobody asked for: dropped.
    let out = net.deliver(WAN, PROXY, "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKswdeadbeef\r\nFrom: <sip:x@example.net>;tag=1\r\nTo: <sip:x@203.0.113.1>;tag=2\r\nCall-ID: r2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    assert!(out.is_empty());
    assert_eq!(net.gw.counters().stray_responses, 1);
}

#[test]
fn malformed_requests_are_answered_not_forwarded() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.deliver(LAN, PHONE, "OPTIONS sip:x@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKm\r\nFrom: <sip:x@10.0.0.20>;tag=1\r\nFrom: <sip:y@10.0.0.20>;tag=2\r\nTo: <sip:x@10.0.0.1>\r\nCall-ID: m1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].remote, addr(PHONE));
    assert!(text(&out[0]).starts_with("SIP/2.0 400 Bad Request\r\n"));
    assert_eq!(net.gw.counters().answered_malformed, 1);
}

#[test]
fn request_response_timeout_answers_408() {
    let mut net = Net::new(AlgOptions::default());
    net.phone_sends(&invite("c3", "z9hG4bKinv3"));
    assert!(net.advance(Duration::from_secs(179)).is_empty());
    let out = net.advance(Duration::from_secs(2));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].remote, addr(PHONE));
    let t = text(&out[0]);
    assert!(t.starts_with("SIP/2.0 408 Request Timeout\r\n"), "{t}");
    assert!(t.contains("Call-ID: c3@10.0.0.20\r\n"));
    assert!(net.gw.dialogs().is_empty());
    assert_eq!(net.gw.transactions(), 0);
}

#[test]
fn signal_timeout_ends_the_call_both_ways() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("c4", "z9hG4bKinv4")));
    net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "b4",
        "Contact: <sip:bob@203.0.113.50>\r\nRecord-Route: <sip:203.0.113.10;lr>\r\n",
    ));
    assert!(net.advance(Duration::from_secs(43_199)).is_empty());
    let out = net.advance(Duration::from_secs(2));
    assert_eq!(out.len(), 2, "{out:?}");
    let to_phone = out.iter().find(|t| t.remote == addr(PHONE)).unwrap();
    let to_far = out.iter().find(|t| t.remote == addr(PROXY)).unwrap();
    let p = text(to_phone);
    let f = text(to_far);
    assert!(
        p.starts_with("BYE sip:alice@10.0.0.20:5062 SIP/2.0\r\n"),
        "{p}"
    );
    assert!(p.contains("Call-ID: c4@10.0.0.20\r\n"));
    assert!(f.starts_with("BYE sip:bob@203.0.113.50 SIP/2.0\r\n"), "{f}");
    assert!(f.contains("Route: <sip:203.0.113.10;lr>\r\n"), "{f}");
    assert!(net.gw.dialogs().is_empty());
    assert_eq!(net.gw.counters().dialogs_expired, 1);
}

#[test]
fn max_sessions_per_id_is_enforced() {
    let mut net = Net::new(AlgOptions {
        max_sessions_per_id: 2,
        ..AlgOptions::default()
    });
    net.phone_sends(&invite("s1", "z9hG4bKs1"));
    net.phone_sends(&invite("s2", "z9hG4bKs2"));
    let out = net.phone_sends(&invite("s3", "z9hG4bKs3"));
    assert_eq!(out.remote, addr(PHONE));
    let t = text(&out);
    assert!(t.starts_with("SIP/2.0 403 Forbidden\r\n"), "{t}");
    assert!(
        t.contains("Warning: 399 sipward.test \"maximum sessions per user reached\""),
        "{t}"
    );
    assert_eq!(net.gw.counters().session_limit, 1);
}

#[test]
fn cancel_follows_its_invite() {
    let mut net = Net::new(AlgOptions::default());
    let inv = text(&net.phone_sends(&invite("c5", "z9hG4bKinv5")));
    net.proxy_sends(&response_to(&inv, "180 Ringing", "b5", ""));
    // The gateway answers the CANCEL itself and sends its own (RFC 3261 16.10).
    let out = net.deliver(LAN, PHONE, "CANCEL sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKinv5\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-c5\r\nTo: bob <sip:bob@10.0.0.1:5060>\r\nCall-ID: c5@10.0.0.20\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].remote, addr(PHONE));
    assert!(text(&out[0]).starts_with("SIP/2.0 200 OK\r\n"));
    let cancel = text(&out[1]);
    assert_eq!(out[1].remote, addr(PROXY));
    assert_eq!(
        branch_of(&cancel),
        branch_of(&inv),
        "CANCEL must carry its INVITE's branch"
    );
    assert_eq!(header(&cancel, "Call-ID"), header(&inv, "Call-ID"));
    let none = net.deliver(WAN, PROXY, &response_to(&cancel, "200 OK", "b5", ""));
    assert!(
        none.is_empty(),
        "the answer to the gateway's CANCEL is its own"
    );
    let term = net.proxy_sends(&response_to(&inv, "487 Request Terminated", "b5", ""));
    assert!(text(&term).starts_with("SIP/2.0 487"));
    assert!(net.gw.dialogs().is_empty());
}

#[test]
fn forked_responses_reach_the_phone_each_with_its_tag() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("fk", "z9hG4bKfork")));
    // Two branches of a forking proxy ring, the second answers.
    for tag in ["fork-a", "fork-b"] {
        let ringing = text(&net.proxy_sends(&response_to(&fwd, "180 Ringing", tag, "")));
        assert!(
            ringing.contains(&format!("To: bob <sip:bob@10.0.0.1:5060>;tag={tag}\r\n")),
            "{ringing}"
        );
        assert!(ringing.contains("Call-ID: fk@10.0.0.20\r\n"), "{ringing}");
    }
    let ok = text(&net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "fork-b",
        "Contact: <sip:bob@203.0.113.51>\r\n",
    )));
    assert!(ok.contains(";tag=fork-b\r\n"), "{ok}");
    let dialogs = net.gw.dialogs();
    assert_eq!(dialogs.len(), 1);
    assert!(dialogs[0].confirmed);
    // The phone's BYE goes to the branch that answered, under the hidden Call-ID.
    let bye = text(&net.phone_sends("BYE sip:bob@203.0.113.51 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKforkbye\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-fk\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=fork-b\r\nCall-ID: fk@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"));
    assert!(bye.contains(";tag=fork-b\r\n"), "{bye}");
    assert_eq!(
        header(&bye, "Call-ID"),
        header(&fwd, "Call-ID"),
        "hidden Call-ID kept"
    );
}

fn subscribe(cseq: u32, expires: u32, to_tag: &str) -> String {
    format!(
        "SUBSCRIBE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKsub{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@biloxi.example.com>;tag=s1\r\nTo: <sip:bob@biloxi.example.com>{to_tag}\r\nCall-ID: sub-1@10.0.0.20\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:alice@10.0.0.20:5062>\r\nEvent: presence\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// RFC 6665: a subscription is a dialog; its NOTIFYs (even one that overtakes the 200)
/// reach the phone in the phone's own terms; a terminated NOTIFY ends it; it never
/// counts as a session.
#[test]
fn subscription_dialog_carries_notify_both_before_and_after_the_200() {
    let mut net = Net::new(AlgOptions {
        max_sessions_per_id: 1,
        ..AlgOptions::default()
    });
    let fwd = text(&net.phone_sends(&subscribe(1, 600, "")));
    assert!(
        fwd.starts_with("SUBSCRIBE sip:bob@biloxi.example.com SIP/2.0"),
        "{fwd}"
    );
    let hidden = header(&fwd, "Call-ID").unwrap().to_string();
    let contact = header(&fwd, "Contact").unwrap();
    let target = contact.trim_start_matches('<').split('>').next().unwrap();
    let notify = |cseq: u32, state: &str| {
        format!(
            "NOTIFY {target} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKntf{cseq}\r\nMax-Forwards: 69\r\nFrom: <sip:bob@biloxi.example.com>;tag=pres1\r\nTo: {}\r\nCall-ID: {hidden}\r\nCSeq: {cseq} NOTIFY\r\nContact: <sip:pres@203.0.113.10>\r\nEvent: presence\r\nSubscription-State: {state}\r\nContent-Length: 0\r\n\r\n",
            header(&fwd, "From").unwrap()
        )
    };
    // The first NOTIFY overtakes the 200.
    let first = net.proxy_sends(&notify(1, "active;expires=600"));
    assert_eq!(first.remote, addr(PHONE));
    let first = text(&first);
    assert!(
        first.starts_with("NOTIFY sip:alice@10.0.0.20:5062 SIP/2.0"),
        "{first}"
    );
    assert!(first.contains("Call-ID: sub-1@10.0.0.20\r\n"), "{first}");
    assert!(
        first.contains("To: <sip:alice@biloxi.example.com>;tag=s1\r\n"),
        "{first}"
    );
    net.proxy_sends(&response_to(&fwd, "200 OK", "pres1", "Expires: 600\r\n"));
    assert_eq!(net.gw.dialogs().len(), 1);
    // A subscription is not a session: the one allowed call still goes through.
    let call = net.phone_sends(&invite("s-call", "z9hG4bKscall"));
    assert_eq!(call.remote, addr(PROXY), "{}", text(&call));
    // The terminating NOTIFY ends the subscription dialog.
    let last = net.proxy_sends(&notify(2, "terminated;reason=timeout"));
    assert_eq!(last.remote, addr(PHONE));
    assert_eq!(net.gw.dialogs().len(), 1, "only the call is left");
}

/// The phone only ever talks to the gateway: the far end's Contact reaches it as the
/// gateway's inside address and its Record-Route not at all; the phone's in-dialog
/// requests leave for the real target along the real route set.
#[test]
fn outbound_dialog_is_anchored_at_the_gateway() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("a1", "z9hG4bKa1")));
    let ok = text(&net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50:5070;transport=udp>\r\nRecord-Route: <sip:203.0.113.11;lr>, <sip:203.0.113.10;lr>\r\n",
    )));
    assert!(ok.contains("Contact: <sip:bob@10.0.0.1:5060>\r\n"), "{ok}");
    assert!(!ok.contains("Record-Route"), "{ok}");
    // The phone, knowing no route set, sends its BYE straight to the Contact it got.
    let bye = text(&net.phone_sends("BYE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbyea1\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-a1\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: a1@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"));
    assert!(
        bye.starts_with("BYE sip:bob@203.0.113.50:5070;transport=udp SIP/2.0\r\n"),
        "{bye}"
    );
    assert!(
        bye.contains("Route: <sip:203.0.113.10;lr>, <sip:203.0.113.11;lr>\r\n"),
        "the route set is the Record-Route reversed: {bye}"
    );
}

#[test]
fn inbound_dialog_is_anchored_and_the_caller_keeps_its_route_set() {
    let mut net = Net::new(AlgOptions::default());
    let reg = registered(&mut net, 3600);
    let contact = header(&reg, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let inv = format!(
        "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKin2\r\nMax-Forwards: 69\r\nRecord-Route: <sip:203.0.113.10;lr>\r\nFrom: <sip:carol@example.net>;tag=c2\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: in-2@example.net\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@198.51.100.7>\r\nContent-Length: 0\r\n\r\n"
    );
    let t = text(&net.proxy_sends(&inv));
    assert!(t.contains("Contact: <sip:carol@10.0.0.1:5060>\r\n"), "{t}");
    assert!(!t.contains("Record-Route"), "{t}");
    let ok = text(&net.phone_sends(&format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: <sip:carol@example.net>;tag=c2\r\nTo: <sip:alice@biloxi.example.com>;tag=al\r\nCall-ID: in-2@example.net\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.0.0.20:5062>\r\nContent-Length: 0\r\n\r\n",
        header(&t, "Via").unwrap()
    )));
    assert!(
        ok.contains("Record-Route: <sip:203.0.113.10;lr>\r\n"),
        "the caller's route set comes back in the 200: {ok}"
    );
    // The phone hangs up towards the Contact it was given: the gateway.
    let bye = text(&net.phone_sends("BYE sip:carol@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbyein2\r\nMax-Forwards: 70\r\nFrom: <sip:alice@biloxi.example.com>;tag=al\r\nTo: <sip:carol@example.net>;tag=c2\r\nCall-ID: in-2@example.net\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"));
    assert!(
        bye.starts_with("BYE sip:carol@198.51.100.7 SIP/2.0\r\n"),
        "{bye}"
    );
    assert!(bye.contains("Route: <sip:203.0.113.10;lr>\r\n"), "{bye}");
}

#[test]
fn calls_are_logged_as_started_answered_and_ended() {
    use sipward_core::EventKind;
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("ev", "z9hG4bKev")));
    net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "b1",
        "Contact: <sip:bob@203.0.113.50>\r\n",
    ));
    let bye = text(&net.phone_sends("BYE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbyeev\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-ev\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: ev@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"));
    net.proxy_sends(&response_to(&bye, "200 OK", "b1", ""));
    let events: Vec<_> = std::iter::from_fn(|| net.gw.poll_event()).collect();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::CallStarted,
            EventKind::CallAnswered,
            EventKind::CallEnded
        ],
        "{events:?}"
    );
    assert!(
        events[2]
            .reason
            .contains("outbound call ev@10.0.0.20: hung up"),
        "{:?}",
        events[2]
    );
    assert_eq!(events[0].user.as_deref(), Some("alice@10.0.0.20"));
}

#[test]
fn retransmitted_invite_is_answered_by_the_gateway_not_relayed() {
    let mut net = Net::new(AlgOptions::default());
    let inv = invite("rt1", "z9hG4bKrt1");
    let fwd = text(&net.phone_sends(&inv));
    // No answer yet: the copy goes on, the proxy may not have had the first.
    let again = net.deliver(LAN, PHONE, &inv);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].remote, addr(PROXY));
    assert_eq!(
        text(&again[0]),
        fwd,
        "a retransmission is relayed byte-exact"
    );

    let ringing = text(&net.proxy_sends(&response_to(&fwd, "180 Ringing", "b1", "")));
    // Ringing came back: the gateway answers the copy with it and the proxy sees nothing.
    let again = net.deliver(LAN, PHONE, &inv);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].remote, addr(PHONE));
    assert_eq!(text(&again[0]), ringing);

    net.proxy_sends(&response_to(&fwd, "200 OK", "b1", ""));
    // Answered: the proxy retransmits its 200 itself, the copy is dropped (RFC 6026).
    assert!(net.deliver(LAN, PHONE, &inv).is_empty());
    assert_eq!(net.gw.counters().absorbed_retransmissions, 2);
}

#[test]
fn a_bye_whose_answer_was_lost_is_answered_again_by_the_gateway() {
    let mut net = Net::new(AlgOptions::default());
    let inv = invite("lost1", "z9hG4bKlost1");
    let fwd = text(&net.phone_sends(&inv));
    net.proxy_sends(&response_to(&fwd, "200 OK", "b1", ""));
    let bye = "BYE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKbye1\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-lost1\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b1\r\nCall-ID: lost1@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let bye_out = text(&net.phone_sends(bye));
    let ok = text(&net.proxy_sends(&response_to(&bye_out, "200 OK", "b1", "")));
    // The 200 was lost on its way to the phone, which sends the BYE again: the call is
    // gone at both ends, so only the gateway can answer it.
    let again = net.deliver(LAN, PHONE, bye);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].remote, addr(PHONE), "answered, not relayed");
    assert_eq!(text(&again[0]), ok, "the same final answer");
    assert_eq!(net.gw.counters().absorbed_retransmissions, 1);
    // Kept 64*T1 (RFC 3261 Timer J), then forgotten.
    net.advance(Duration::from_secs(33));
    let late = net.deliver(LAN, PHONE, bye);
    assert!(
        late.iter()
            .all(|t| t.remote != addr(PHONE) || !text(t).contains("200 OK")),
        "answered from a response kept past its time: {late:?}"
    );
}

#[test]
fn retransmitted_request_from_outside_gets_the_phones_last_answer() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = registered(&mut net, 600);
    let contact = header(&fwd, "Contact").unwrap();
    let target = contact
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let inv = format!(
        "INVITE {target} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10:5060;branch=z9hG4bKin1\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.org>;tag=c1\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: in1@example.org\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@203.0.113.10:5060>\r\nContent-Length: 0\r\n\r\n"
    );
    let to_phone = net.proxy_sends(&inv);
    assert_eq!(to_phone.remote, addr(PHONE));
    let busy = net.phone_sends(&response_to(&text(&to_phone), "486 Busy Here", "p1", ""));
    assert_eq!(busy.remote, addr(PROXY));
    let again = net.deliver(WAN, PROXY, &inv);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].remote, addr(PROXY));
    assert_eq!(
        text(&again[0]),
        text(&busy),
        "the final answer is sent again"
    );
}
