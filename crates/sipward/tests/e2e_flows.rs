//! End-to-end call flows through `sipward run`, each between an inside SIPp phone and an
//! outside SIPp proxy playing the far end, on its own loopback topology. SIPp runs in its
//! default strict mode: a lost, duplicated or reordered message fails the flow. Every
//! datagram the outside SIPp receives is checked on the bytes for inside addresses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{logged, Peer, Topology, ALICE_DIGEST};

/// Runs one outbound flow: `proxy_xml` on the outside proxy's address, `phone_xml` on
/// the first inside phone with the gateway's inside address as its outbound proxy.
fn outbound_flow(n: u8, phone_xml: &str, proxy_xml: &str) -> Topology {
    let t = Topology::new(n);
    let _gw = t.start_gateway();
    let proxy = t.play(proxy_xml, Peer::Proxy, None, &logged("proxy_messages.log"));
    std::thread::sleep(Duration::from_millis(200));
    let phone = t.play(phone_xml, Peer::Phone(0), Some(&t.gw_lan_sip()), &[]);
    phone.wait_ok(phone_xml);
    proxy.wait_ok(proxy_xml);
    t.assert_no_inside_address_in("proxy_messages.log");
    t
}

#[test]
fn early_media_then_answer_then_hold_and_resume_then_caller_hangs_up() {
    outbound_flow(
        41,
        "phone_early_media_hold.xml",
        "proxy_early_media_hold.xml",
    );
}

#[test]
fn ringing_call_cancelled_by_the_caller() {
    outbound_flow(42, "phone_cancel.xml", "proxy_cancel.xml");
}

#[test]
fn call_rejected_busy() {
    outbound_flow(43, "phone_rejected.xml", "proxy_busy.xml");
}

#[test]
fn callee_outside_hangs_up() {
    outbound_flow(44, "phone_callee_hangs_up.xml", "proxy_answer_then_bye.xml");
}

/// Register, re-register and unregister with digest authentication; then a call to the
/// released contact is refused by the gateway (404), not routed to the phone.
#[test]
fn register_reregister_unregister() {
    let t = Topology::new(45);
    let _gw = t.start_gateway();
    let mut registrar_args = logged("registrar_messages.log").to_vec();
    registrar_args.push("-trace_err");
    let registrar = t.play(
        "proxy_registrar_cycle.xml",
        Peer::Proxy,
        None,
        &registrar_args,
    );
    std::thread::sleep(Duration::from_millis(200));
    let phone = t.play(
        "phone_register_cycle.xml",
        Peer::Phone(0),
        Some(&t.gw_lan_sip()),
        &ALICE_DIGEST,
    );
    phone.wait_ok("phone register cycle");
    registrar.wait_ok("registrar");
    t.assert_no_inside_address_in("registrar_messages.log");

    // The registrar saw one stable outside contact for all three rounds, and the last
    // round asked for expiry 0.
    // SIPp's <exec> runs the shell asynchronously: give the last line a moment.
    let bindings = t.read_when("bindings.txt", |s| s.lines().count() >= 3);
    let rounds: Vec<(&str, &str)> = bindings
        .lines()
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    assert_eq!(rounds.len(), 3, "{bindings}");
    let wan = format!("sip:alice@{}:5060;swc=", t.gw_wan());
    assert!(rounds[0].0.starts_with(&wan), "{bindings}");
    assert!(rounds.iter().all(|r| r.0 == rounds[0].0), "{bindings}");
    let expiries: Vec<&str> = rounds.iter().map(|r| r.1).collect();
    assert_eq!(expiries, ["600", "600", "0"]);

    // The binding is gone: the gateway answers 404 and no phone is listening anyway.
    let caller = t.play(
        "proxy_call_unbound.xml",
        Peer::Proxy,
        Some(&t.gw_wan_sip()),
        &["-inf", "contact.csv"],
    );
    caller.wait_ok("caller to released contact");
}

/// The brief's second scenario, against Kamailio as the outside proxy and registrar:
/// two inside phones register through the gateway (digest), and one calls the other;
/// the call leaves through the gateway, Kamailio looks up the callee's binding (the
/// gateway's outside contact) and sends it back in; ACK and BYE follow Kamailio's
/// Record-Route. Kamailio logs every datagram it receives; none may hold an inside address.
#[test]
fn same_network_call_through_kamailio() {
    let t = Topology::new(46);
    let _gw = t.start_gateway();
    let _kamailio = t.start_kamailio();
    let gw_lan = t.gw_lan_sip();
    for (i, user) in [(0, "alice"), (1, "bob")] {
        // The digest covers the Request-URI: a phone signs sip:sipward.test (SIPp would
        // otherwise sign the gateway's inside address, which the gateway must not
        // rewrite inside credentials).
        let args = ["-key", "user", user, "-au", user, "-ap", "secret"];
        let mut args = args.to_vec();
        args.extend(["-auth_uri", "sip:sipward.test"]);
        t.play(
            "phone_register_as.xml",
            Peer::Phone(i),
            Some(&gw_lan),
            &args,
        )
        .wait_ok(&format!("{user} registration"));
    }
    let bob = t.play("phone_answer.xml", Peer::Phone(1), None, &["-s", "bob"]);
    std::thread::sleep(Duration::from_millis(200));
    let alice = t.play(
        "phone_call_via_proxy.xml",
        Peer::Phone(0),
        Some(&gw_lan),
        &["-s", "bob"],
    );
    alice.wait_ok("alice calling bob");
    bob.wait_ok("bob answering");
    let log = t.read_when("kamailio.log", |s| s.contains("BYE sip:"));
    assert!(log.contains("INVITE sip:bob@sipward.test"), "{log}");
    assert!(log.contains("BYE sip:"), "{log}");
    t.assert_no_inside_address_in("kamailio.log");
}
