//! Topology hiding end to end (issue 17 #18, #19, #20): a phone writing its address in
//! identity and diversion headers, an ICE candidate, a REFER, a sipfrag NOTIFY and a
//! presence NOTIFY; a redirect to another host; CANCEL against an odd far end. SIPp in
//! its default strict mode on both sides; every datagram the outside peer received is
//! checked on the bytes for inside addresses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{logged, Peer, Topology};

fn flow(n: u8, phone_xml: &str, proxy_xml: &str) -> Topology {
    let t = Topology::new(n);
    let _gw = t.start_gateway();
    let proxy = t.play(proxy_xml, Peer::Proxy, None, &logged("proxy_messages.log"));
    std::thread::sleep(Duration::from_millis(200));
    let phone = t.play(
        phone_xml,
        Peer::Phone(0),
        Some(&t.gw_lan_sip()),
        &logged("phone_messages.log"),
    );
    phone.wait_ok(phone_xml);
    proxy.wait_ok(proxy_xml);
    t.assert_no_inside_address_in("proxy_messages.log");
    t
}

#[test]
fn identity_diversion_refer_sipfrag_and_presence_leave_no_inside_byte() {
    let t = flow(81, "phone_hidden_headers.xml", "proxy_hidden_headers.xml");
    let log = std::fs::read_to_string(t.dir.join("proxy_messages.log")).unwrap();
    for what in [
        "P-Asserted-Identity:",
        "P-Preferred-Identity:",
        "Diversion:",
        "History-Info:",
        "Referred-By:",
        "application/pidf+xml",
        "message/sipfrag",
    ] {
        assert!(
            log.contains(what),
            "{what} did not reach the far end:\n{log}"
        );
    }
    assert!(!log.contains("a=candidate"), "{log}");
}

#[test]
fn a_redirect_to_another_host_reaches_the_phone_intact() {
    flow(82, "phone_redirected.xml", "proxy_redirect.xml");
}

#[test]
fn a_487_with_the_cancels_cseq_does_not_break_the_phones_transaction() {
    let t = flow(83, "phone_cancel.xml", "proxy_cancel_odd.xml");
    let phone_log = std::fs::read_to_string(t.dir.join("phone_messages.log")).unwrap();
    assert!(phone_log.contains("SIP/2.0 487"), "{phone_log}");
}

/// Registers phone 0 (alice), then plays `phone_xml` on it (towards the gateway's inside
/// address) and `proxy_xml` as the outside peer calling in by the registered token.
fn inbound_flow(n: u8, phone_xml: &str, proxy_xml: &str) -> Topology {
    let t = Topology::new(n);
    let _gw = t.start_gateway();
    t.register_alice();
    let phone = t.play(phone_xml, Peer::Phone(0), Some(&t.gw_lan_sip()), &[]);
    std::thread::sleep(Duration::from_millis(200));
    let mut args = vec!["-inf", "contact.csv"];
    args.extend(logged("proxy_messages.log"));
    let proxy = t.play(proxy_xml, Peer::Proxy, Some(&t.gw_wan_sip()), &args);
    proxy.wait_ok(proxy_xml);
    phone.wait_ok(phone_xml);
    t.assert_no_inside_address_in("proxy_messages.log");
    t
}

#[test]
fn a_presence_notify_of_a_registered_phone_names_the_gateway() {
    inbound_flow(84, "phone_presence.xml", "proxy_subscribe.xml");
}

#[test]
fn a_cancel_from_outside_is_answered_here_and_the_phone_gets_the_gateways() {
    inbound_flow(
        85,
        "phone_cancelled_inbound.xml",
        "proxy_cancel_inbound.xml",
    );
}
