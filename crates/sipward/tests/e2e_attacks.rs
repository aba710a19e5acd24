//! Attacks through `sipward run` with SIPVicious, against Kamailio as the outside
//! registrar (digest, every password "secret", qop=auth so that svcrack can succeed):
//! password cracking stopped after the configured failures while the real phone still
//! registers; svmap and svwar dropped as scanners.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Guard, Peer, Topology, ALICE_DIGEST};

/// The attacker: an inside host. SIPVicious 0.3.3 sends from the wildcard address
/// whatever `-b` says, so on loopback it is 127.0.0.1, admitted by an extra nat rule.
fn attacker(_t: &Topology) -> String {
    "127.0.0.1".into()
}

/// Configuration tail: the attacker's address may use the gateway like a phone.
const ATTACKER_RULE: &str = "[[address]]\nname = \"attacker\"\nhost = \"127.0.0.1\"\n\
    [[rule]]\naction = \"nat\"\nfrom = \"lan\"\nsource = \"attacker\"\nto = \"wan\"\n\
    destination = \"proxy\"\nservice = \"sip\"\n";

/// Starts a SIPVicious tool from the attacker's address against the gateway's inside
/// address, bounded in time.
fn spawn_sipvicious(t: &Topology, tool: &str, args: &[&str]) -> Guard {
    Guard::spawn(
        Command::new("timeout")
            .arg("60")
            .arg(tool)
            .args(args)
            .current_dir(&t.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .expect("sipvicious is installed (scripts/install-deps.sh installs it)")
}

fn sipvicious(t: &Topology, tool: &str, args: &[&str]) -> Output {
    spawn_sipvicious(t, tool, args).wait_output()
}

/// A 12-word dictionary with the right password 10th.
fn dictionary(t: &Topology) -> String {
    let words = [
        "123456", "password", "alice", "qwerty", "letmein", "000000", "admin", "welcome", "monkey",
        "secret", "dragon", "sunshine",
    ];
    let path = t.dir.join("dict.txt");
    std::fs::write(&path, words.join("\n") + "\n").unwrap();
    path.display().to_string()
}

fn start_crack(t: &Topology) -> Guard {
    let dict = dictionary(t);
    let lan = t.gw_lan();
    let args = [
        "-u", "alice", "-d", &dict, "-p", "5060", "-P", "5077", "-t", "0.5", &lan,
    ];
    spawn_sipvicious(t, "svcrack", &args)
}

/// Waits for svcrack and returns what it printed.
fn report(attack: Guard) -> String {
    let out = attack.wait_output();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// svcrack's REGISTERs with credentials that reached Kamailio from the gateway (its
/// User-Agent tells them from the phone's).
fn attempts_at_registrar(t: &Topology) -> usize {
    let log = std::fs::read_to_string(t.dir.join("kamailio.log")).unwrap_or_default();
    log.split("sipward-test received from")
        .filter(|m| {
            m.contains("REGISTER sip:")
                && m.contains("Authorization: Digest")
                && m.contains("friendly-scanner")
        })
        .count()
}

#[test]
fn svcrack_is_cut_off_after_five_failures_and_the_phone_still_registers() {
    // Control: without the failure limit svcrack finds the password through the gateway.
    let control = Topology::new(61);
    let _k = control.start_kamailio();
    let gw = control.start_gateway_full(
        "",
        &format!(
            "{ATTACKER_RULE}[protection]\nscanner_filter = \"off\"\nmax_register_failures = 1000\n"
        ),
    );
    let found = report(start_crack(&control));
    assert!(
        found.contains("secret"),
        "control run: svcrack should crack the password through an unprotected gateway:\n{found}"
    );
    drop(gw);

    // Protected (defaults, with the scanner filter off so that the failure counting is
    // what stops it).
    let t = Topology::new(62);
    let _k = t.start_kamailio();
    let _gw = t.start_gateway_full(
        "",
        &format!("{ATTACKER_RULE}[protection]\nscanner_filter = \"off\"\n"),
    );
    let mut attack = start_crack(&t);
    // The real phone, from its own address, registers as alice during the attack.
    std::thread::sleep(Duration::from_millis(1000));
    let phone = t.play(
        "phone_register_as.xml",
        Peer::Phone(0),
        Some(&t.gw_lan_sip()),
        &[&["-key", "user", "alice"][..], &ALICE_DIGEST[..]].concat(),
    );
    phone.wait_ok("the legitimate phone's registration");
    assert!(
        attack.try_wait().unwrap().is_none(),
        "svcrack had already given up when the phone registered"
    );
    let found = report(attack);
    assert!(
        !found.contains("| secret"),
        "svcrack found the password through the protected gateway:\n{found}"
    );
    let attempts = attempts_at_registrar(&t);
    assert!(
        (1..=5).contains(&attempts),
        "{attempts} REGISTERs with credentials from the attacker reached the registrar (at most 5)"
    );
    let events = t.read_when("events.jsonl", |e| e.contains("\"kind\":\"banned\""));
    let ban = events
        .lines()
        .find(|l| l.contains("\"kind\":\"banned\""))
        .unwrap_or_else(|| panic!("no ban in the event log:\n{events}"));
    assert!(
        ban.contains(&format!("\"source\":\"{}\"", attacker(&t))),
        "{ban}"
    );
    assert!(ban.contains("\"user\":\"alice\""), "{ban}");
    // The blacklist, as the operator sees it.
    let list = t.admin(&["blacklist", "--json", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains(&attacker(&t)), "{list}");
    let removed = t.admin(&["blacklist", "remove", &attacker(&t)]);
    assert!(removed.status.success(), "{removed:?}");
    std::thread::sleep(Duration::from_millis(100));
    let events = std::fs::read_to_string(t.dir.join("events.jsonl")).unwrap();
    assert!(events.contains("\"kind\":\"unbanned\""), "{events}");
}

#[test]
fn svmap_and_svwar_are_dropped_as_scanners() {
    let t = Topology::new(63);
    let _k = t.start_kamailio();
    let _gw = t.start_gateway_full("", ATTACKER_RULE);
    let map = sipvicious(&t, "svmap", &["-p", "5060", "-P", "5078", &t.gw_lan()]);
    let map = String::from_utf8_lossy(&map.stdout).into_owned();
    assert!(
        !map.contains("kamailio") && !map.contains("sipward"),
        "svmap identified something: {map}"
    );
    let war = sipvicious(
        &t,
        "svwar",
        &[
            "-e",
            "100-110",
            "-m",
            "INVITE",
            "-p",
            "5060",
            "-P",
            "5079",
            &t.gw_lan(),
        ],
    );
    let war = String::from_utf8_lossy(&war.stdout).into_owned();
    assert!(!war.contains("| 10"), "svwar found extensions: {war}");
    let log = std::fs::read_to_string(t.dir.join("kamailio.log")).unwrap_or_default();
    assert!(
        !log.contains("friendly-scanner"),
        "a scanner's request reached the proxy"
    );
    let events = t.read_when("events.jsonl", |e| e.contains("friendly-scanner"));
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"kind\":\"banned\"") && l.contains("friendly-scanner")),
        "{events}"
    );
}
