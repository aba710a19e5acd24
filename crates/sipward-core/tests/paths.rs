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

// ---- defect 18: inside addresses in every header and body ----

const PHONE2: &str = "10.0.0.21:5062";

/// An outbound call from the phone, answered and acknowledged; returns the INVITE as
/// forwarded (hidden Call-ID, tags).
fn established_call(net: &mut Net, call: &str) -> String {
    let fwd = text(&net.phone_sends(&invite(call, &format!("z9hG4bK{call}"))));
    net.proxy_sends(&response_to(
        &fwd,
        "200 OK",
        &format!("b-{call}"),
        "Contact: <sip:bob@198.51.100.7>\r\n",
    ));
    net.phone_sends(&format!("ACK sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKack{call}\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-{call}\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b-{call}\r\nCall-ID: {call}@10.0.0.20\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"));
    fwd
}

/// An in-dialog request of the phone in `call` with `extra` headers and a body.
fn in_call(call: &str, method: &str, cseq: u32, extra: &str, ctype: &str, body: &str) -> String {
    let ct = if body.is_empty() {
        String::new()
    } else {
        format!("Content-Type: {ctype}\r\n")
    };
    format!("{method} sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bK{method}{cseq}{call}\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-{call}\r\nTo: bob <sip:bob@10.0.0.1:5060>;tag=b-{call}\r\nCall-ID: {call}@10.0.0.20\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@10.0.0.20:5062>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}", body.len())
}

#[test]
fn identity_and_diversion_headers_of_an_invite_are_hidden() {
    let mut net = Net::new(AlgOptions::default());
    let inv = invite("pai", "z9hG4bKpai").replace(
        "Contact: ",
        "P-Asserted-Identity: \"Alice\" <sip:alice@10.0.0.20:5062>, <tel:+15551234>\r\nP-Preferred-Identity: <sip:alice@10.0.0.20>\r\nRemote-Party-ID: \"10.0.0.20\" <sip:alice@10.0.0.20>;party=calling\r\nDiversion: <sip:bob@10.0.0.21:5062>;reason=unconditional\r\nHistory-Info: <sip:bob@10.0.0.21?Reason=SIP%3Bcause%3D302>;index=1\r\nCall-Info: <http://10.0.0.20/photo.jpg>;purpose=icon\r\nAlert-Info: <http://[::ffff:10.0.0.9]/ring.wav>\r\nReply-To: <sip:alice@10.0.0.20>\r\nP-Called-Party-ID: <sip:bob@10.0.0.1>\r\nRoute: <sip:10.0.0.5;lr>\r\nX-Private: where=10.0.0.20:5062\r\nContact: ",
    );
    // The harness asserts the bytes: no "10.0.0." and no ":5062" anywhere.
    let out = net.phone_sends(&inv);
    assert_eq!(out.remote, addr(PROXY));
    let out = text(&out);
    assert!(
        out.contains(
            "P-Asserted-Identity: \"Alice\" <sip:alice@203.0.113.1:5060>, <tel:+15551234>\r\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("Diversion: <sip:bob@203.0.113.1:5060>;reason=unconditional\r\n"),
        "{out}"
    );
    assert!(
        out.contains(
            "Remote-Party-ID: \"203.0.113.1\" <sip:alice@203.0.113.1:5060>;party=calling\r\n"
        ),
        "{out}"
    );
    assert_eq!(net.gw.counters().edit_failures, 0);
    assert!(
        !out.contains("Route:"),
        "an inside route entry is dropped: {out}"
    );
    assert_eq!(
        net.gw.counters().inside_address_leaks,
        0,
        "all hidden on the path"
    );
}

#[test]
fn a_refer_names_the_transfer_target_by_its_token_and_the_call_by_its_hidden_id() {
    let mut net = Net::new(AlgOptions::default());
    // The transfer target, a second inside phone, is registered.
    let reg = "REGISTER sip:biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.21:5062;branch=z9hG4bKreg2\r\nMax-Forwards: 70\r\nFrom: <sip:carol@biloxi.example.com>;tag=r2\r\nTo: <sip:carol@biloxi.example.com>\r\nCall-ID: reg-2@10.0.0.21\r\nCSeq: 1 REGISTER\r\nContact: <sip:carol@10.0.0.21:5062>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n";
    let fwd_reg = text(&net.deliver(LAN, PHONE2, reg)[0]);
    let ok = register_ok(&fwd_reg, 600);
    net.proxy_sends(&ok);
    let registered_contact = header(&fwd_reg, "Contact")
        .unwrap()
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let token = registered_contact.split("swc=").nth(1).unwrap().to_string();

    let inv = established_call(&mut net, "xfer");
    let hidden = header(&inv, "Call-ID").unwrap().to_string();
    let refer = in_call(
        "xfer",
        "REFER",
        2,
        "Refer-To: <sip:carol@10.0.0.21:5062?Replaces=xfer%4010.0.0.20%3Bto-tag%3Db-xfer%3Bfrom-tag%3Da-xfer>\r\nReferred-By: <sip:alice@10.0.0.20:5062>\r\n",
        "",
        "",
    );
    let out = text(&net.phone_sends(&refer));
    let refer_to = header(&out, "Refer-To").unwrap();
    assert!(
        refer_to.starts_with(&format!(
            "<sip:carol@203.0.113.1:5060;swc={token}?Replaces={hidden}%3Bto-tag"
        )),
        "{out}"
    );
    assert_eq!(
        header(&out, "Referred-By"),
        Some("<sip:alice@203.0.113.1:5060>")
    );

    // The transferee's INVITE comes back in by the token, replacing the hidden call:
    // the target phone gets the Call-ID it can match.
    let back = net.deliver(WAN, PROXY, &format!("INVITE sip:carol@203.0.113.1:5060;swc={token} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKrep1\r\nMax-Forwards: 70\r\nFrom: <sip:bob@example.net>;tag=t1\r\nTo: <sip:carol@biloxi.example.com>\r\nCall-ID: new-1\r\nCSeq: 1 INVITE\r\nReplaces: {hidden};to-tag=b-xfer;from-tag=a-xfer\r\nContact: <sip:bob@198.51.100.7>\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].remote, addr(PHONE2));
    let back = text(&back[0]);
    assert!(
        back.contains("Replaces: xfer@10.0.0.20;to-tag=b-xfer;from-tag=a-xfer\r\n"),
        "{back}"
    );
}

#[test]
fn notify_sipfrag_and_presence_bodies_are_hidden() {
    let mut net = Net::new(AlgOptions::default());
    established_call(&mut net, "frag");
    let frag = "SIP/2.0 200 OK\r\nContact: <sip:carol@10.0.0.21:5062>\r\nVia: SIP/2.0/UDP 10.0.0.20:5062\r\n";
    let notify = in_call(
        "frag",
        "NOTIFY",
        3,
        "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\n",
        "message/sipfrag;version=2.0",
        frag,
    );
    let out = text(&net.phone_sends(&notify));
    assert!(
        out.contains(
            "Contact: <sip:carol@203.0.113.1:5060>\r\nVia: SIP/2.0/UDP 203.0.113.1:5060\r\n"
        ),
        "{out}"
    );
    let len: usize = header(&out, "Content-Length").unwrap().parse().unwrap();
    assert_eq!(len, out.split("\r\n\r\n").nth(1).unwrap().len());

    let pidf = "<?xml version=\"1.0\"?>\r\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"sip:alice@10.0.0.20\">\r\n<tuple id=\"t1\"><status><basic>open</basic></status><contact priority=\"0.8\">sip:alice@10.0.0.20:5062</contact></tuple>\r\n</presence>\r\n";
    let publish = format!("PUBLISH sip:alice@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKpub1\r\nMax-Forwards: 70\r\nFrom: <sip:alice@biloxi.example.com>;tag=p1\r\nTo: <sip:alice@biloxi.example.com>\r\nCall-ID: pub-1@10.0.0.20\r\nCSeq: 1 PUBLISH\r\nEvent: presence\r\nContent-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{pidf}", pidf.len());
    let out = text(&net.phone_sends(&publish));
    assert!(
        out.contains("<contact priority=\"0.8\">sip:alice@203.0.113.1:5060</contact>"),
        "{out}"
    );
    assert!(out.contains("entity=\"sip:alice@203.0.113.1\">"), "{out}");
}

#[test]
fn inside_ice_candidates_are_dropped_and_other_sdp_addresses_hidden() {
    let mut net = Net::new(AlgOptions::default());
    let body = sdp(
        "10.0.0.20",
        40000,
        "a=candidate:1 1 UDP 2130706431 10.0.0.20 40000 typ host\r\na=candidate:2 1 UDP 1694498815 198.51.100.20 40000 typ srflx raddr 10.0.0.20 rport 40000\r\na=candidate:3 1 UDP 1694498815 198.51.100.20 40002 typ srflx\r\na=remote-candidates:1 10.0.0.30 5000\r\na=x-note:phone at 10.0.0.20\r\n",
    );
    let inv = invite("ice", "z9hG4bKice");
    let head = inv.split("Content-Length").next().unwrap();
    let inv = format!("{head}Content-Length: {}\r\n\r\n{body}", body.len());
    let out = text(&net.phone_sends(&inv));
    assert!(
        out.contains("a=candidate:3 1 UDP 1694498815 198.51.100.20 40002 typ srflx\r\n"),
        "{out}"
    );
    assert!(!out.contains("a=candidate:1 "), "{out}");
    assert!(!out.contains("a=remote-candidates"), "{out}");
    assert!(out.contains("a=x-note:phone at 203.0.113.1\r\n"), "{out}");
}

#[test]
fn a_phones_response_hides_identity_and_warning_agent() {
    let mut net = Net::new(AlgOptions::default());
    let reg = registered(&mut net, 3600);
    let got = inbound_invite(&mut net, &reg, "in-pai", "");
    let out = net.phone_sends(&phone_response(
        &got,
        "486 Busy Here",
        "p9",
        "P-Asserted-Identity: <sip:alice@10.0.0.20:5062>\r\nWarning: 399 10.0.0.20 \"busy on line 2\"\r\n",
    ));
    assert_eq!(out.remote, addr(PROXY));
    let out = text(&out);
    assert!(
        out.contains("Warning: 399 203.0.113.1 \"busy on line 2\"\r\n"),
        "{out}"
    );
}

#[test]
fn the_outgoing_scan_catches_what_no_rewrite_knew_and_counts_it() {
    let mut net = Net::new(AlgOptions::default());
    // A display name in From is quoted text the path leaves alone; the inside address
    // in it is caught by the last-line scan (default policy: rewrite).
    let inv = invite("scan", "z9hG4bKscan").replace(
        "From: alice <sip:alice@10.0.0.20:5062>",
        "From: \"alice 10.0.0.20\" <sip:alice@10.0.0.20:5062>",
    );
    let out = text(&net.phone_sends(&inv));
    assert!(
        out.contains("From: \"alice 203.0.113.1\" <sip:alice@203.0.113.1:5060>;tag=a-scan\r\n"),
        "{out}"
    );
    assert_eq!(net.gw.counters().inside_address_leaks, 1);
}

#[test]
fn the_refuse_policy_answers_the_phone_500_and_sends_nothing_out() {
    let mut net = Net::new(AlgOptions {
        leak_policy: sipward_core::LeakPolicy::Refuse,
        ..AlgOptions::default()
    });
    let inv = invite("refuse", "z9hG4bKrefuse").replace(
        "From: alice <sip:alice@10.0.0.20:5062>",
        "From: \"alice 10.0.0.20\" <sip:alice@10.0.0.20:5062>",
    );
    let out = net.deliver(LAN, PHONE, &inv);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].remote, addr(PHONE));
    assert!(text(&out[0]).starts_with("SIP/2.0 500 "));
    assert_eq!(net.gw.counters().inside_address_leaks, 1);
}

#[test]
fn the_remove_policy_drops_the_offending_field() {
    let mut net = Net::new(AlgOptions {
        leak_policy: sipward_core::LeakPolicy::Remove,
        ..AlgOptions::default()
    });
    let inv = invite("remove", "z9hG4bKremove")
        .replace("Contact: ", "Record-Route: <sip:10.0.0.5;lr>\r\nContact: ");
    // Record-Route is the path's business (it leaves a request's alone).
    let out = text(&net.phone_sends(&inv));
    assert!(!out.contains("Record-Route"), "{out}");
    assert!(
        out.contains("Contact: <sip:alice@203.0.113.1:5060;swc="),
        "{out}"
    );
    assert_eq!(net.gw.counters().inside_address_leaks, 1);
}

// ---- defect 20: CANCEL answered hop by hop ----

fn phone_cancel(call: &str) -> String {
    format!("CANCEL sip:bob@10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bK{call}\r\nMax-Forwards: 70\r\nFrom: alice <sip:alice@10.0.0.20:5062>;tag=a-{call}\r\nTo: bob <sip:bob@10.0.0.1:5060>\r\nCall-ID: {call}@10.0.0.20\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n")
}

/// A call from the phone, ringing, then cancelled: returns the INVITE as forwarded and
/// the gateway's own CANCEL.
fn cancelled_call(net: &mut Net, call: &str) -> (String, String) {
    let inv = text(&net.phone_sends(&invite(call, &format!("z9hG4bK{call}"))));
    net.proxy_sends(&response_to(&inv, "180 Ringing", &format!("b-{call}"), ""));
    let out = net.deliver(LAN, PHONE, &phone_cancel(call));
    assert_eq!(out.len(), 2, "{out:?}");
    let ok = text(&out[0]);
    assert_eq!(out[0].remote, addr(PHONE));
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
    assert!(ok.contains("CSeq: 1 CANCEL\r\n"), "{ok}");
    assert_eq!(out[1].remote, addr(PROXY));
    (inv, text(&out[1]))
}

#[test]
fn a_phones_cancel_is_answered_here_and_the_gateway_sends_its_own() {
    let mut net = Net::new(AlgOptions::default());
    let (inv, cancel) = cancelled_call(&mut net, "hc1");
    let request_uri = |m: &str| {
        m.lines()
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert!(cancel.starts_with("CANCEL "), "{cancel}");
    assert_eq!(request_uri(&cancel), request_uri(&inv));
    assert_eq!(branch_of(&cancel), branch_of(&inv));
    assert_eq!(header(&cancel, "CSeq"), Some("1 CANCEL"));
    assert_eq!(header(&cancel, "From"), header(&inv, "From"));
    assert_eq!(header(&cancel, "To"), header(&inv, "To"));
    assert_eq!(header(&cancel, "Call-ID"), header(&inv, "Call-ID"));
    // The far end's 200 to it is absorbed; the phone's CANCEL repeat gets 200 again
    // and no second CANCEL goes out.
    assert!(net
        .deliver(WAN, PROXY, &response_to(&cancel, "200 OK", "b-hc1", ""))
        .is_empty());
    let again = net.deliver(LAN, PHONE, &phone_cancel("hc1"));
    assert_eq!(again.len(), 1);
    assert!(text(&again[0]).starts_with("SIP/2.0 200 "));
    let term = text(&net.proxy_sends(&response_to(&inv, "487 Request Terminated", "b-hc1", "")));
    assert!(term.starts_with("SIP/2.0 487"), "{term}");
    assert!(term.contains("CSeq: 1 INVITE\r\n"), "{term}");
    // Nothing is retransmitted after the answer.
    assert!(net
        .advance(std::time::Duration::from_secs(40))
        .iter()
        .all(|t| !text(t).starts_with("CANCEL")));
}

#[test]
fn the_gateways_cancel_is_retransmitted_until_answered() {
    let mut net = Net::new(AlgOptions::default());
    let (_, cancel) = cancelled_call(&mut net, "hc2");
    let mut seen = Vec::new();
    for step in 1..=8 {
        for t in net.advance(std::time::Duration::from_millis(500)) {
            assert_eq!(text(&t), cancel, "a retransmission is the same CANCEL");
            seen.push(step * 500);
        }
    }
    // T1 doubling: at 0.5 s, 1.5 s, 3.5 s (then 7.5 s...).
    assert_eq!(seen, [500, 1500, 3500]);
    assert!(net
        .deliver(WAN, PROXY, &response_to(&cancel, "200 OK", "b-hc2", ""))
        .is_empty());
    let later = net.advance(std::time::Duration::from_secs(10));
    assert!(
        later.iter().all(|t| !text(t).starts_with("CANCEL")),
        "{later:?}"
    );
}

#[test]
fn a_far_end_that_never_answers_the_cancel_leaves_the_phone_a_487_at_64_t1() {
    let mut net = Net::new(AlgOptions::default());
    cancelled_call(&mut net, "hc3");
    let out = net.advance(std::time::Duration::from_secs(33));
    let to_phone: Vec<String> = out
        .iter()
        .filter(|t| t.remote == addr(PHONE))
        .map(text)
        .collect();
    assert_eq!(to_phone.len(), 1, "{to_phone:?}");
    assert!(to_phone[0].starts_with("SIP/2.0 487 "), "{}", to_phone[0]);
    assert!(
        to_phone[0].contains("CSeq: 1 INVITE\r\n"),
        "{}",
        to_phone[0]
    );
    assert!(to_phone[0].contains("Via: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKhc3\r\n"));
    assert!(net.gw.dialogs().is_empty());
}

#[test]
fn a_487_carrying_the_cancels_cseq_still_reaches_the_phone_as_the_invites() {
    let mut net = Net::new(AlgOptions::default());
    let (_, cancel) = cancelled_call(&mut net, "hc4");
    // An odd far end: its 487 bears the CANCEL's CSeq.
    let out = net.deliver(
        WAN,
        PROXY,
        &response_to(&cancel, "487 Request Terminated", "b-hc4", ""),
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let term = text(&out[0]);
    assert!(term.starts_with("SIP/2.0 487 "), "{term}");
    assert!(term.contains("CSeq: 1 INVITE\r\n"), "{term}");
}

#[test]
fn a_cancel_before_any_provisional_response_waits_for_one() {
    let mut net = Net::new(AlgOptions::default());
    let inv = text(&net.phone_sends(&invite("hc5", "z9hG4bKhc5")));
    let out = net.deliver(LAN, PHONE, &phone_cancel("hc5"));
    assert_eq!(out.len(), 1, "only the 200 to the phone: {out:?}");
    assert_eq!(out[0].remote, addr(PHONE));
    let out = net.deliver(
        WAN,
        PROXY,
        &response_to(&inv, "100 Trying", "", "").replace(";tag=\r\n", "\r\n"),
    );
    let cancels: Vec<_> = out
        .iter()
        .filter(|t| text(t).starts_with("CANCEL "))
        .collect();
    assert_eq!(cancels.len(), 1, "{out:?}");
    assert_eq!(cancels[0].remote, addr(PROXY));
}

#[test]
fn an_unmatched_cancel_from_a_phone_gets_481() {
    let mut net = Net::new(AlgOptions::default());
    let out = net.deliver(LAN, PHONE, &phone_cancel("nosuch"));
    assert_eq!(out.len(), 1);
    assert!(
        text(&out[0]).starts_with("SIP/2.0 481 "),
        "{}",
        text(&out[0])
    );
}

#[test]
fn a_cancel_from_outside_is_answered_here_and_the_phone_gets_the_gateways() {
    let mut net = Net::new(AlgOptions::default());
    let reg = registered(&mut net, 3600);
    let got = inbound_invite(&mut net, &reg, "oc1", "");
    net.phone_sends(&phone_response(&got, "180 Ringing", "p-oc1", ""));
    let contact = header(&reg, "Contact").unwrap();
    let uri = contact.split('>').next().unwrap().trim_start_matches('<');
    let out = net.deliver(WAN, PROXY, &format!("CANCEL {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKoc1\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.net>;tag=c-oc1\r\nTo: <sip:alice@example.net>\r\nCall-ID: oc1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].remote, addr(PROXY));
    assert!(text(&out[0]).starts_with("SIP/2.0 200 OK\r\n"));
    let cancel = text(&out[1]);
    assert_eq!(out[1].remote, addr(PHONE));
    assert!(
        cancel.starts_with("CANCEL sip:alice@10.0.0.20:5062 SIP/2.0\r\n"),
        "{cancel}"
    );
    assert_eq!(branch_of(&cancel), branch_of(&got));
    // The phone's 200 to it stays here; its 487 goes out with the INVITE's CSeq.
    assert!(net
        .deliver(LAN, PHONE, &phone_response(&cancel, "200 OK", "p-oc1", ""))
        .is_empty());
    let term = text(&net.phone_sends(&phone_response(&got, "487 Request Terminated", "p-oc1", "")));
    assert!(term.starts_with("SIP/2.0 487 "), "{term}");
    assert!(term.contains("CSeq: 1 INVITE\r\n"), "{term}");
    // The proxy's ACK for the 487 reaches the phone in the INVITE's transaction, with
    // the Request-URI the phone's INVITE had (RFC 3261 17.1.1.3), not the gateway's.
    let to = header(&term, "To").unwrap();
    let ack = net.deliver(WAN, PROXY, &format!("ACK {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKoc1\r\nMax-Forwards: 70\r\nFrom: <sip:carol@example.net>;tag=c-oc1\r\nTo: {to}\r\nCall-ID: oc1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"));
    assert_eq!(ack.len(), 1, "{ack:?}");
    assert_eq!(ack[0].remote, addr(PHONE));
    let ack = text(&ack[0]);
    assert!(
        ack.starts_with("ACK sip:alice@10.0.0.20:5062 SIP/2.0\r\n"),
        "{ack}"
    );
    assert_eq!(branch_of(&ack), branch_of(&got));
}

#[test]
fn an_attended_transfer_invite_names_the_replaced_call_by_its_hidden_id() {
    let mut net = Net::new(AlgOptions::default());
    let first = established_call(&mut net, "att1");
    let hidden = header(&first, "Call-ID").unwrap().to_string();
    let inv = invite("att2", "z9hG4bKatt2").replace(
        "Contact: ",
        "Replaces: att1@10.0.0.20;to-tag=b-att1;from-tag=a-att1\r\nJoin: att1@10.0.0.20;to-tag=b-att1;from-tag=a-att1\r\nIn-Reply-To: att1@10.0.0.20, other@example.net\r\nContact: ",
    );
    let out = text(&net.phone_sends(&inv));
    assert!(
        out.contains(&format!(
            "Replaces: {hidden};to-tag=b-att1;from-tag=a-att1\r\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("Join: {hidden};to-tag=b-att1;from-tag=a-att1\r\n")),
        "{out}"
    );
    assert!(
        out.contains(&format!("In-Reply-To: {hidden}, other@example.net\r\n")),
        "{out}"
    );
}

#[test]
fn a_phones_redirect_to_another_registered_phone_carries_that_phones_token() {
    let mut net = Net::new(AlgOptions::default());
    let reg = registered(&mut net, 3600);
    let reg2 = "REGISTER sip:biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.21:5062;branch=z9hG4bKreg3\r\nMax-Forwards: 70\r\nFrom: <sip:carol@biloxi.example.com>;tag=r3\r\nTo: <sip:carol@biloxi.example.com>\r\nCall-ID: reg-3@10.0.0.21\r\nCSeq: 1 REGISTER\r\nContact: <sip:carol@10.0.0.21:5062>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n";
    let fwd2 = text(&net.deliver(LAN, PHONE2, reg2)[0]);
    net.proxy_sends(&register_ok(&fwd2, 600));
    let carol_token = fwd2
        .split("swc=")
        .nth(1)
        .unwrap()
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let got = inbound_invite(&mut net, &reg, "in302b", "");
    let out = text(&net.phone_sends(&phone_response(
        &got,
        "302 Moved",
        "p2",
        "Contact: <sip:carol@10.0.0.21:5062>\r\n",
    )));
    assert!(
        out.contains(&format!(
            "Contact: <sip:carol@203.0.113.1:5060;swc={carol_token}>"
        )),
        "{out}"
    );
}

#[test]
fn a_response_reaches_the_phone_with_the_cseq_it_sent() {
    let mut net = Net::new(AlgOptions::default());
    let fwd = text(&net.phone_sends(&invite("cs1", "z9hG4bKcs1")));
    let odd =
        response_to(&fwd, "180 Ringing", "b-cs1", "").replace("CSeq: 1 INVITE", "CSeq: 9 INVITE");
    let back = text(&net.proxy_sends(&odd));
    assert!(back.contains("CSeq: 1 INVITE\r\n"), "{back}");
}

/// A REGISTER signed over the gateway's inside address (a phone configured with the
/// gateway's IP as its domain).
fn register_signed_inside() -> String {
    "REGISTER sip:10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.20:5062;branch=z9hG4bKrs1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:alice@10.0.0.1>;tag=rs1\r\nTo: <sip:alice@10.0.0.1>\r\nCall-ID: rs1@10.0.0.20\r\nCSeq: 2 REGISTER\r\nContact: <sip:alice@10.0.0.20:5062>\r\nAuthorization: Digest username=\"alice\", realm=\"example.net\", nonce=\"abc\", uri=\"sip:10.0.0.1\", response=\"0123456789abcdef0123456789abcdef\"\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n".to_string()
}

#[test]
fn credentials_signed_over_an_inside_address_go_out_untouched_by_default_and_are_counted() {
    let mut net = Net::new(AlgOptions::default());
    // Not through `deliver`: the harness would (rightly) fail on the inside bytes.
    net.gw.handle_datagram(
        net.now,
        addr(LAN),
        addr(PHONE),
        register_signed_inside().as_bytes(),
    );
    let sent: Vec<_> = std::iter::from_fn(|| net.gw.poll_transmit()).collect();
    assert_eq!(sent.len(), 1);
    let text = text(&sent[0]);
    assert!(text.contains("uri=\"sip:10.0.0.1\", response="), "{text}");
    assert_eq!(net.gw.counters().inside_address_leaks, 1);
}

#[test]
fn the_remove_policy_removes_credentials_signed_over_an_inside_address() {
    let mut net = Net::new(AlgOptions {
        leak_policy: sipward_core::LeakPolicy::Remove,
        ..AlgOptions::default()
    });
    let out = net.phone_sends(&register_signed_inside());
    assert!(!text(&out).contains("Authorization"), "{}", text(&out));
}

#[test]
fn a_refer_from_outside_names_the_replaced_call_by_the_phones_own_id() {
    let mut net = Net::new(AlgOptions::default());
    let inv = established_call(&mut net, "xin");
    let hidden = header(&inv, "Call-ID").unwrap().to_string();
    let refer = format!("REFER sip:alice@203.0.113.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.10;branch=z9hG4bKrefin\r\nMax-Forwards: 70\r\nFrom: bob <sip:bob@203.0.113.10:5060>;tag=b-xin\r\nTo: {};tag=a-xin\r\nCall-ID: {hidden}\r\nCSeq: 7 REFER\r\nContact: <sip:bob@198.51.100.7>\r\nRefer-To: <sip:dave@example.net?Replaces={hidden}%3Bto-tag%3Da-xin%3Bfrom-tag%3Db-xin>\r\nContent-Length: 0\r\n\r\n", header(&inv, "From").unwrap().split(";tag=").next().unwrap());
    let got = net.proxy_sends(&refer);
    assert_eq!(got.remote, addr(PHONE));
    let got = text(&got);
    assert!(
        got.contains("Refer-To: <sip:dave@example.net?Replaces=xin%4010.0.0.20%3Bto-tag%3Da-xin"),
        "{got}"
    );
}

#[test]
fn an_sdp_part_of_a_multipart_body_keeps_its_syntax_when_hidden() {
    let mut net = Net::new(AlgOptions::default());
    let body = "--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\no=- 1 1 IN IP4 10.0.0.20\r\ns=-\r\nc=IN IP4 10.0.0.20\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n--b1\r\nContent-Type: application/isup\r\n\r\nx\r\n--b1--\r\n";
    let inv = invite("mp", "z9hG4bKmp");
    let head = inv.split("Content-Type").next().unwrap();
    let inv = format!(
        "{head}Content-Type: multipart/mixed;boundary=b1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let out = text(&net.phone_sends(&inv));
    assert!(out.contains("c=IN IP4 203.0.113.1\r\n"), "{out}");
    assert!(out.contains("o=- 1 1 IN IP4 203.0.113.1\r\n"), "{out}");
}

#[test]
fn an_inside_address_as_a_request_uri_user_part_leaves_hidden_as_an_address_alone() {
    let mut net = Net::new(AlgOptions::default());
    // A phone dialling by address puts it in the user part, which no path rewrites.
    let inv = invite("ruser", "z9hG4bKruser").replace(
        "INVITE sip:bob@10.0.0.1:5060 ",
        "INVITE sip:10.0.0.20@10.0.0.1:5060;user=phone ",
    );
    let out = text(&net.phone_sends(&inv));
    // The address alone: `203.0.113.1:5060@` would read as a user and a password.
    assert!(
        out.starts_with("INVITE sip:203.0.113.1@203.0.113.10:5060;user=phone SIP/2.0\r\n"),
        "{out}"
    );
}

#[test]
fn a_request_that_cannot_be_hidden_is_answered_500_under_every_policy() {
    for policy in [
        sipward_core::LeakPolicy::Rewrite,
        sipward_core::LeakPolicy::Remove,
    ] {
        let mut net = Net::new(AlgOptions {
            leak_policy: policy,
            ..AlgOptions::default()
        });
        // Remove cannot take the Request-URI away: the phone hears so at once.
        let inv = invite("nohide", "z9hG4bKnohide").replace(
            "INVITE sip:bob@10.0.0.1:5060 ",
            "INVITE sip:10.0.0.20@10.0.0.1:5060 ",
        );
        let out = net.deliver(LAN, PHONE, &inv);
        if policy == sipward_core::LeakPolicy::Rewrite {
            assert_eq!(out[0].remote, addr(PROXY), "{policy:?}");
            continue;
        }
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].remote, addr(PHONE));
        assert!(text(&out[0]).starts_with("SIP/2.0 500 "), "{policy:?}");
    }
}

#[test]
fn a_phones_reason_phrase_naming_its_address_does_not_lose_the_response() {
    for (policy, phrase) in [
        (
            sipward_core::LeakPolicy::Rewrite,
            "SIP/2.0 486 Busy at 203.0.113.1\r\n",
        ),
        (sipward_core::LeakPolicy::Remove, "SIP/2.0 486 Busy at \r\n"),
    ] {
        let mut net = Net::new(AlgOptions {
            leak_policy: policy,
            ..AlgOptions::default()
        });
        let reg = registered(&mut net, 3600);
        let got = inbound_invite(&mut net, &reg, "in-reason", "");
        let out = net.phone_sends(&phone_response(&got, "486 Busy at 10.0.0.20", "p10", ""));
        assert_eq!(out.remote, addr(PROXY));
        assert!(text(&out).starts_with(phrase), "{}", text(&out));
    }
}

#[test]
fn ipv4_mapped_ipv6_forms_of_an_inside_address_are_hidden_whole() {
    let mut net = Net::new(AlgOptions::default());
    let inv = invite("mapped", "z9hG4bKmapped").replace(
        "Contact: ",
        "X-Peer: <sip:a@[::ffff:10.0.0.20]:5062>, <sip:b@[::ffff:a00:14]>, <sip:c@[0:0:0:0:0:FFFF:0A00:0014]>\r\nContact: ",
    );
    let out = text(&net.phone_sends(&inv));
    assert!(
        out.contains(
            "X-Peer: <sip:a@203.0.113.1:5060>, <sip:b@203.0.113.1:5060>, <sip:c@203.0.113.1:5060>\r\n"
        ),
        "{out}"
    );
}

#[test]
fn an_inside_address_with_extra_leading_zeros_after_other_digits_is_hidden() {
    // Found by the gateway fuzz target: "127.0127.0.1.20" held 127.0.1.20 for a
    // text search, but the scan allowed only three digits per octet in all.
    let mut net = Net::new(AlgOptions::default());
    let inv = invite("zeros", "z9hG4bKzeros").replace(
        "Contact: ",
        "History-Info: <sip:a@10.0010.0.0.20>\r\nContact: ",
    );
    let out = text(&net.phone_sends(&inv));
    assert!(!out.contains("0.0.20"), "{out}");
}

#[test]
fn inside_entries_of_a_phones_route_set_are_consumed_and_the_rest_kept() {
    let mut net = Net::new(AlgOptions::default());
    // Rewritten in place, the inside entry became the gateway's outside address: the
    // proxy would have routed the call back to the gateway.
    let inv = invite("rset", "z9hG4bKrset").replace(
        "Contact: ",
        "Route: <sip:10.0.0.99;lr>, <sip:edge.example.com;lr>\r\nContact: ",
    );
    let out = text(&net.phone_sends(&inv));
    assert!(
        out.contains("\r\nRoute: <sip:edge.example.com;lr>\r\n"),
        "{out}"
    );
}

#[test]
fn an_address_as_an_unquoted_display_name_is_replaced_by_an_address_alone() {
    let mut net = Net::new(AlgOptions::default());
    // Phones without a configured name write their address; with the gateway's port
    // added the display name held a colon and the proxy refused the call.
    let inv = invite("dname", "z9hG4bKdname")
        .replace(
            "From: alice <sip:alice@10.0.0.20:5062>",
            "From: 10.0.0.20 <sip:alice@10.0.0.20:5062>",
        )
        .replace(
            "Contact: ",
            "P-Asserted-Identity: Alice 10.0.0.20 <sip:alice@10.0.0.20>\r\nContact: ",
        );
    let out = text(&net.phone_sends(&inv));
    assert!(
        out.contains("\r\nFrom: 203.0.113.1 <sip:alice@203.0.113.1:5060>;tag=a-dname\r\n"),
        "{out}"
    );
    assert!(
        out.contains("\r\nP-Asserted-Identity: Alice 203.0.113.1 <sip:alice@203.0.113.1:5060>\r\n"),
        "{out}"
    );
    assert!(
        sipward_proto::parse_datagram(out.as_bytes(), &sipward_proto::Limits::default()).is_ok(),
        "{out}"
    );
}

#[test]
fn the_remove_policy_rewrites_what_a_message_cannot_lose() {
    let mut net = Net::new(AlgOptions {
        leak_policy: sipward_core::LeakPolicy::Remove,
        ..AlgOptions::default()
    });
    // Found by the gateway fuzz target: the From (quoted display name) and the
    // Contact (quoted instance) were removed and the INVITE went out without them.
    let inv = invite("rm-from", "z9hG4bKrmfrom")
        .replace(
            "From: alice <sip:alice@10.0.0.20:5062>",
            "From: \"Alice 10.0.0.20\" <sip:alice@10.0.0.20:5062>",
        )
        .replace(
            "Contact: <sip:alice@10.0.0.20:5062>",
            "Contact: <sip:alice@10.0.0.20:5062>;+sip.instance=\"<urn:uuid:10.0.0.20>\"",
        );
    let out = text(&net.phone_sends(&inv));
    assert!(
        out.contains(
            "\r\nFrom: \"Alice 203.0.113.1\" <sip:alice@203.0.113.1:5060>;tag=a-rm-from\r\n"
        ),
        "{out}"
    );
    assert!(
        out.contains("\r\nContact: <sip:alice@203.0.113.1:5060;swc="),
        "{out}"
    );
    assert!(
        sipward_proto::parse_datagram(out.as_bytes(), &sipward_proto::Limits::default()).is_ok(),
        "{out}"
    );
}
