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

use common::{scenario, Topology};

/// Runs one outbound flow: `proxy_xml` on the outside proxy's address, `phone_xml` on
/// the first inside phone with the gateway's inside address as its outbound proxy.
fn outbound_flow(n: u8, phone_xml: &str, proxy_xml: &str) -> Topology {
    let t = Topology::new(n);
    let _gw = t.start_gateway();
    let proxy = t.sipp(&[
        "-sf",
        &scenario(proxy_xml),
        "-i",
        &t.proxy(),
        "-p",
        "5060",
        "-m",
        "1",
        "-trace_msg",
        "-message_file",
        "proxy_messages.log",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    let phone = t.sipp(&[
        "-sf",
        &scenario(phone_xml),
        &format!("{}:5060", t.gw_lan()),
        "-i",
        &t.phone(0),
        "-p",
        "5070",
        "-m",
        "1",
        "-trace_msg",
        "-message_file",
        "phone_messages.log",
    ]);
    phone.wait_ok(phone_xml);
    proxy.wait_ok(proxy_xml);
    t.assert_no_inside_address_in("proxy_messages.log");
    t
}

#[test]
fn early_media_then_answer_then_hold_and_resume_then_caller_hangs_up() {
    outbound_flow(41, "phone_early_media_hold.xml", "proxy_early_media_hold.xml");
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
