//! Restarting from the journal (`[state] dir`): what a `kill -9` or a graceful stop
//! leaves behind is restored by the next `sipward run` with the same configuration.
//! Bindings (an inbound call reaches the registered phone), established calls (the
//! phone's BYE reaches the far end over the restored route, and RTP flows again on the
//! same relay ports) and operator bans (with their remaining time) survive; a journal
//! written under another secret is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{count, logged, output_within, Capture, Guard, Peer, Topology, ADMIN_TOKEN};
use serde_json::Value;

/// The topology's configuration with a journal and a secret file in its directory.
fn journaled(t: &Topology, secret: &str) -> String {
    format!(
        "{}\n[state]\ndir = {:?}\nsecret_file = {:?}\n",
        t.config(),
        t.dir.join("journal").display().to_string(),
        t.dir.join(secret).display().to_string()
    )
}

/// Starts the gateway (output in gateway.out) and returns it with what it printed up
/// to `sipward: ready`.
fn start(t: &Topology, text: &str) -> (Guard, String) {
    let gateway = t.start_gateway_to_file(text);
    let out = std::fs::read_to_string(t.dir.join("gateway.out")).unwrap();
    (gateway, out)
}

/// The restored line of a start.
fn restored_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("sipward: restored "))
        .unwrap_or_else(|| panic!("no restored line in: {out}"))
}

/// An outbound call from phone 1 (RTP from port 18000, tone.ulaw of 12 s, BYE `hold_ms`
/// after the answer) to a SIPp far end on the proxy address echoing RTP on port 16000,
/// whose messages are logged to far_messages.log. Returns (caller, far end) once the
/// far end has answered.
fn call_with_media(t: &Topology, hold_ms: u32) -> (Guard, Guard) {
    t.tone(12);
    let proxy_ip = t.proxy();
    let mut far_args = vec!["-sn", "uas", "-i", &proxy_ip, "-p", "5060", "-m", "1"];
    far_args.extend(["-rtp_echo", "-mi", &proxy_ip, "-mp", "16000"]);
    far_args.extend(logged("far_messages.log"));
    let far = t.sipp(&far_args);
    std::thread::sleep(Duration::from_millis(200));
    let phone_ip = t.phone(1);
    let hold = hold_ms.to_string();
    let caller = t.play(
        "phone_call_rtp.xml",
        Peer::Phone(1),
        Some(&t.gw_lan_sip()),
        &["-s", "bob", "-mi", &phone_ip, "-mp", "18000", "-d", &hold],
    );
    let log = t.read_when("far_messages.log", |l| l.contains("ACK sip:"));
    assert!(log.contains("ACK sip:"), "the call was not answered: {log}");
    (caller, far)
}

/// RTP both ways between phone 1 and the far end through the relay's first pairs
/// (port 30000 inside and outside), as seen by tcpdump `cap` for `window` more.
fn rtp_through_relay(t: &Topology, cap: Capture, window: Duration) -> (usize, usize) {
    std::thread::sleep(window);
    let p = cap.stop();
    let phone = format!("{}:18000", t.phone(1));
    let far = format!("{}:16000", t.proxy());
    let (lan, wan) = (
        format!("{}:30000", t.gw_lan()),
        format!("{}:30000", t.gw_wan()),
    );
    let out = count(&p, &phone, &lan).min(count(&p, &wan, &far));
    let back = count(&p, &far, &wan).min(count(&p, &lan, &phone));
    (out, back)
}

#[test]
fn bindings_and_a_call_with_media_survive_kill_9() {
    let t = Topology::new(191);
    let config = journaled(&t, "secret");
    let (gateway, _) = start(&t, &config);
    t.register_alice();
    let cap = t.capture();
    let (caller, far) = call_with_media(&t, 9_000);
    let (out, back) = rtp_through_relay(&t, cap, Duration::from_millis(1_000));
    assert!(out > 0 && back > 0, "no RTP before the kill: {out} {back}");

    drop(gateway); // SIGKILL
    let (_gateway, started) = start(&t, &config);
    let line = restored_line(&started);
    assert!(
        line.starts_with("sipward: restored 1 binding, 1 dialog (1 stream), 0 bans from "),
        "{line}"
    );

    // The media of the restored call flows again through the same ports.
    let (out, back) = rtp_through_relay(&t, t.capture(), Duration::from_millis(1_000));
    assert!(
        out > 0 && back > 0,
        "no RTP after the restart: {out} {back}"
    );
    // The phone's BYE reaches the far end, which answers it: both SIPps end well.
    caller.wait_ok("caller (BYE after the restart)");
    far.wait_ok("far end");
    let far_log = std::fs::read_to_string(t.dir.join("far_messages.log")).unwrap();
    assert!(far_log.contains("BYE sip:"), "{far_log}");
    t.assert_no_inside_address_in("far_messages.log");

    // An inbound call to alice's binding, made before the kill, reaches her phone.
    let answerer = t.sipp(&["-sn", "uas", "-i", &t.phone(0), "-p", "5070", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let mut caller_args = vec!["-inf", "contact.csv"];
    caller_args.extend(logged("caller_messages.log"));
    let inbound = t.play(
        "proxy_call.xml",
        Peer::Proxy,
        Some(&t.gw_wan_sip()),
        &caller_args,
    );
    inbound.wait_ok("inbound caller");
    answerer.wait_ok("phone 0 (answering)");
    t.assert_no_inside_address_in("caller_messages.log");
}

fn blacklist(t: &Topology) -> Value {
    let body = ureq::get(&format!("{}/api/v1/blacklist", t.api()))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

#[test]
fn bans_survive_a_restart_with_their_remaining_time() {
    let t = Topology::new(192);
    let config = journaled(&t, "secret");
    let (gateway, _) = start(&t, &config);
    ureq::post(&format!("{}/api/v1/blacklist", t.api()))
        .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_json(serde_json::json!({"source": "192.0.2.66", "seconds": 60, "reason": "test"}))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    drop(gateway); // SIGKILL
    let (_gateway, started) = start(&t, &config);
    assert!(
        restored_line(&started).contains(", 1 ban from "),
        "{started}"
    );
    let list = blacklist(&t);
    let bans = list.as_array().unwrap();
    assert_eq!(bans.len(), 1, "{list}");
    assert_eq!(bans[0]["source"], "192.0.2.66");
    assert_eq!(bans[0]["reason"], "test");
    let left = bans[0]["expires_in"].as_u64().unwrap();
    assert!((50..=58).contains(&left), "{list}");
}

#[test]
fn a_journal_written_under_another_secret_is_refused() {
    let t = Topology::new(193);
    let (gateway, _) = start(&t, &journaled(&t, "secret"));
    drop(gateway);
    // Another secret file: a new secret is generated in it.
    let cfg = t.dir.join("other.toml");
    std::fs::write(&cfg, journaled(&t, "other-secret")).unwrap();
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_sipward"))
            .args(["run", "--config"])
            .arg(&cfg),
        Duration::from_secs(20),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("written under another hiding secret")
            && stderr.contains(&t.dir.join("journal").display().to_string())
            && stderr.contains("secret_file"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("sipward: ready"));
}

#[test]
fn a_graceful_stop_with_a_journal_keeps_the_call() {
    let t = Topology::new(194);
    let config = journaled(&t, "secret");
    let (mut gateway, _) = start(&t, &config);
    let (caller, far) = call_with_media(&t, 3_000);
    let stopped = Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    gateway.wait_ended();
    let out = std::fs::read_to_string(t.dir.join("gateway.out")).unwrap();
    assert!(out.contains("calls kept in the journal"), "{out}");
    let far_log = std::fs::read_to_string(t.dir.join("far_messages.log")).unwrap();
    assert!(
        !far_log.contains("BYE sip:"),
        "the stop sent a BYE: {far_log}"
    );

    let (_gateway, started) = start(&t, &config);
    assert!(
        restored_line(&started).contains(", 1 dialog (1 stream), "),
        "{started}"
    );
    caller.wait_ok("caller (BYE after the restart)");
    far.wait_ok("far end");
}
