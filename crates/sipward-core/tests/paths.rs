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
