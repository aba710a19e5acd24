//! The message paths on virtual time (issue 17): 481 for unknown dialogs, addresses in
//! every header and body hidden, 3xx targets kept, CANCEL answered hop by hop.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)] // tests take one real Instant as the epoch

mod common;

use common::*;
use sipward_core::AlgOptions;

// ---- defect 12: in-dialog requests for unknown dialogs get 481 ----

#[test]
fn in_dialog_request_from_outside_for_an_unknown_dialog_gets_481() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.deliver(WAN, PROXY, "BYE sip:alice@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKu481\r\nMax-Forwards: 70\r\nFrom: <sip:x@example.net>;tag=1\r\nTo: <sip:alice@203.0.113.1>;tag=2\r\nCall-ID: gone-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        text(&out[0]).starts_with("SIP/2.0 481 "),
        "{}",
        text(&out[0])
    );
    assert_eq!(out[0].remote, addr(PROXY));
}

#[test]
fn in_dialog_request_with_a_known_token_but_no_dialog_gets_481_not_the_phone() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = registered(&mut net, 3600);
    let contact = header(&fwd, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let out = net.deliver(WAN, PROXY, &format!("INFO {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKu482\r\nMax-Forwards: 70\r\nFrom: <sip:x@example.net>;tag=1\r\nTo: <sip:alice@203.0.113.1>;tag=2\r\nCall-ID: gone-2\r\nCSeq: 5 INFO\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        text(&out[0]).starts_with("SIP/2.0 481 "),
        "{}",
        text(&out[0])
    );
    assert_eq!(out[0].remote, addr(PROXY));
}

#[test]
fn out_of_dialog_request_for_an_unknown_user_keeps_404() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.deliver(WAN, PROXY, "OPTIONS sip:nobody@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKu404\r\nMax-Forwards: 70\r\nFrom: <sip:x@example.net>;tag=1\r\nTo: <sip:nobody@203.0.113.1>\r\nCall-ID: u404\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(out.len(), 1);
    assert!(text(&out[0]).starts_with("SIP/2.0 404 "));
}

#[test]
fn unmatched_cancel_from_outside_gets_481() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.deliver(WAN, PROXY, "CANCEL sip:nobody@203.0.113.1 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKnoinv\r\nMax-Forwards: 70\r\nFrom: <sip:x@example.net>;tag=1\r\nTo: <sip:nobody@203.0.113.1>\r\nCall-ID: u481c\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        text(&out[0]).starts_with("SIP/2.0 481 "),
        "{}",
        text(&out[0])
    );
}

#[test]
fn in_dialog_request_from_a_phone_for_an_unknown_dialog_gets_481() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.deliver(LAN, PHONE, "BYE sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKgone\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-x\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b-x\r\nCall-ID: gone@10.0.0.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].remote, addr(PHONE));
    assert!(
        text(&out[0]).starts_with("SIP/2.0 481 "),
        "{}",
        text(&out[0])
    );
}

// ---- defect 19: redirect targets reach the phone as the far end wrote them ----

#[test]
fn redirect_contact_reaches_the_phone_unchanged() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("r302", "z9hG4bKr302")));
    let back = net.proxy_sends(&response_to(
        &fwd,
        "302 Moved Temporarily",
        "m1",
        "Contact: <sip:voicemail@vm.example.net:5080;transport=UDP>\r\n",
    ));
    assert_eq!(back.remote, addr(PHONE));
    let back = text(&back);
    assert!(
        back.contains("Contact: <sip:voicemail@vm.example.net:5080;transport=UDP>\r\n"),
        "{back}"
    );
    assert!(net.gw.dialogs().is_empty());
}

#[test]
fn contacts_of_other_non_dialog_responses_stay_where_the_far_end_said() {
    let mut net = Net::new(AlgOptions::default());
    let options = "OPTIONS sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKopt1\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=o1\r\nTo: bob <sip:bob@10.0.0.1:5060>\r\nCall-ID: opt1@10.0.0.20\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let fwd = text(&net.phone_sends(options));
    let back = text(&net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "o2",
        "Contact: <sip:bob@pbx.example.net:5070>, <sip:bob@198.51.100.7>\r\n",
    )));
    assert!(
        back.contains("Contact: <sip:bob@pbx.example.net:5070>, <sip:bob@198.51.100.7>\r\n"),
        "{back}"
    );
    let fwd = text(&net.phone_sends(&invite("r485", "z9hG4bKr485")));
    let back = text(&net.proxy_sends(&response_to(
        &fwd,
        "485 Ambiguous",
        "m2",
        "Contact: <sip:bob.smith@example.net>\r\n",
    )));
    assert!(
        back.contains("Contact: <sip:bob.smith@example.net>\r\n"),
        "{back}"
    );
}

#[test]
fn dialog_making_responses_are_still_anchored_at_the_gateway() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("r200", "z9hG4bKr200")));
    let back = text(&net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        "m3",
        "Contact: <sip:bob@198.51.100.7:5070>\r\n",
    )));
    assert!(
        back.contains("Contact: <sip:bob@10.0.0.1:5060>\r\n"),
        "{back}"
    );
}

/// An inbound INVITE to the registered phone; returns what reached the phone.
pub fn inbound_invite(net: &mut Net, reg_fwd: &str, call: &str, extra: &str) -> String {
    let contact = header(reg_fwd, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let out = net.proxy_sends(&format!("INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bK{call}\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.net>;tag=c-{call}\r\nTo: <sip:alice@example.net>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@198.51.100.9>\r\n{extra}Content-Length: 0\r\n\r\n"));
    assert_eq!(out.remote, addr(PHONE));
    text(&out)
}

/// The phone's response to `request` (as the phone got it), with `extra` lines.
pub fn phone_response(request: &str, status: &str, to_tag: &str, extra: &str) -> String {
    let vias: String = request
        .lines()
        .filter_map(|l| l.strip_prefix("Via: "))
        .map(|v| format!("Via: {v}\r\n"))
        .collect();
    format!(
        "SIP/2.0 {status}\r\n{vias}From: {}\r\nTo: {};tag={to_tag}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
        header(request, "From").unwrap(),
        header(request, "To").unwrap(),
        header(request, "Call-ID").unwrap(),
        header(request, "CSeq").unwrap(),
    )
}

#[test]
fn a_phones_redirect_keeps_outside_targets_and_hides_inside_ones() {
    let mut net = Net::new(AlgOptions::default());
    let reg = registered(&mut net, 3600);
    let got = inbound_invite(&mut net, &reg, "in302", "");
    let out = net.phone_sends(&phone_response(
        &got,
        "302 Moved",
        "p1",
        "Contact: <sip:alice@mobile.example.net>, <sip:alice@10.0.0.21:5060>\r\n",
    ));
    assert_eq!(out.remote, addr(PROXY));
    let out = text(&out);
    assert!(out.contains("<sip:alice@mobile.example.net>"), "{out}");
    assert!(out.contains("<sip:alice@203.0.113.1:5060;swc="), "{out}");
}

#[test]
fn contact_of_an_out_of_dialog_message_from_outside_is_not_anchored() {
    let mut net = Net::new(AlgOptions::default());
    let reg = registered(&mut net, 3600);
    let contact = header(&reg, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let got = text(&net.proxy_sends(&format!("MESSAGE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKmsg1\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.net>;tag=m1\r\nTo: <sip:alice@example.net>\r\nCall-ID: msg1\r\nCSeq: 1 MESSAGE\r\nContact: <sip:carol@chat.example.net>\r\nContent-Length: 0\r\n\r\n")));
    assert!(
        got.contains("Contact: <sip:carol@chat.example.net>\r\n"),
        "{got}"
    );
}
