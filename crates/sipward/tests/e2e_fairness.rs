//! Issue 17, defects 4 and 5, end to end against SIPp calls.
//!
//! - Many sources: 200 inside addresses each send 100 OPTIONS (within their per-source
//!   burst and rate) towards a proxy that never answers OPTIONS, more than the
//!   gateway's 20,000-entry transaction table holds. Calls established before the flood
//!   must still hang up (their BYEs), a phone must still register, and at least 99 of
//!   100 calls placed while the table is full must complete.
//! - Proxy-address flood: raw INVITEs at 3,000/s from the proxy's address (exempt from
//!   per-source limits by default, and spoofable) while a phone registers and places
//!   100 calls: at least 99 complete.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{scenario, Guard, Topology};

/// The outside proxy: answers REGISTERs and calls, never OPTIONS. Started outside the
/// harness's 30 s SIPp timeout, as it serves the whole test.
fn start_far_end(t: &Topology) -> Guard {
    let proxy = t.proxy();
    let guard = Guard::from(
        Command::new("sipp")
            .args(["-sf", &scenario("proxy_mute_options.xml")])
            .args(["-i", &proxy, "-p", "5060", "-nostdin", "-timeout", "120s"])
            .args(["-mi", &proxy, "-mp", "16000"])
            .current_dir(&t.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed"),
    );
    std::thread::sleep(Duration::from_millis(300));
    guard
}

/// Places `calls` calls from phone `i` at `rate` per second, each held `hold_ms`;
/// the SIPp process (its statistics go to `stats`).
fn place_calls(t: &Topology, i: u8, calls: u32, rate: u32, hold_ms: u32, stats: &str) -> Guard {
    let phone = t.phone(i);
    let lan = t.gw_lan_sip();
    let (calls, rate, hold) = (calls.to_string(), rate.to_string(), hold_ms.to_string());
    t.sipp(&[
        "-sn",
        "uac",
        &lan,
        "-i",
        &phone,
        "-p",
        "5070",
        "-s",
        "bob",
        "-m",
        &calls,
        "-r",
        &rate,
        "-d",
        &hold,
        "-trace_stat",
        "-stf",
        stats,
        "-fd",
        "1",
    ])
}

/// (successful, failed) calls from a SIPp statistics file.
fn call_stats(t: &Topology, stats: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(t.dir.join(stats)).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(';').collect();
    let last: Vec<&str> = text.lines().last().unwrap().split(';').collect();
    let column = |name: &str| -> u64 {
        let i = header.iter().position(|h| *h == name).unwrap();
        last[i].parse().unwrap()
    };
    (column("SuccessfulCall(C)"), column("FailedCall(C)"))
}

/// Registers phone `i` (user `user`) through the gateway; whether the registrar's 200
/// came back.
fn registers(t: &Topology, i: u8, user: &str) -> bool {
    let phone = t.phone(i);
    let lan = t.gw_lan_sip();
    t.sipp(&[
        "-sf",
        &scenario("phone_register_plain.xml"),
        &lan,
        "-i",
        &phone,
        "-p",
        "5071",
        "-s",
        user,
        "-m",
        "1",
    ])
    .wait_exit()
    .success()
}

fn events(t: &Topology) -> String {
    std::fs::read_to_string(t.dir.join("events.jsonl")).unwrap_or_default()
}

#[test]
fn two_hundred_sources_filling_the_transaction_table_leave_room_for_phones_and_byes() {
    let t = Topology::new(81);
    // A call generator is one user: allow it many calls at once.
    let _gw = t.start_gateway_with("max_sessions_per_id = 1000");
    let _far = start_far_end(&t);
    // Calls up before the flood, hanging up after it: their BYEs meet a full table.
    let long_calls = place_calls(&t, 1, 5, 10, 16_000, "long.csv");
    std::thread::sleep(Duration::from_millis(1000));

    let gw = t.gw_lan_sip();
    let sources: Vec<UdpSocket> = (0..200u16)
        .map(|i| UdpSocket::bind(format!("127.81.0.{}:0", 30 + i)).unwrap())
        .collect();
    let started = Instant::now();
    // 100 rounds of one OPTIONS per source, 1,800 a second in all: each source sends 9
    // a second, within its limits (20 a second, burst 100).
    for round in 0..100u32 {
        for (i, s) in sources.iter().enumerate() {
            let local = s.local_addr().unwrap();
            let msg = format!(
                "OPTIONS sip:bob@{gw} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKms{i}x{round}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:src{i}@{local}>;tag=m{i}x{round}\r\nTo: <sip:bob@{gw}>\r\n\
                 Call-ID: ms{i}x{round}@{local}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            );
            s.send_to(msg.as_bytes(), &gw).unwrap();
        }
        let due = started + Duration::from_millis(111 * u64::from(round + 1));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    let flood_time = started.elapsed();

    // The table is now as full as the sources could make it, and stays so until their
    // transactions time out: a phone registers and calls.
    let registered = registers(&t, 2, "carol");
    let calls = place_calls(&t, 0, 100, 10, 200, "calls.csv");
    let _ = calls.wait_exit();
    let _ = long_calls.wait_exit();
    let during = started.elapsed();
    let (ok, failed) = call_stats(&t, "calls.csv");
    let (long_ok, long_failed) = call_stats(&t, "long.csv");
    eprintln!(
        "flood of 20,000 OPTIONS from 200 sources in {flood_time:?}; phone registered: {registered}; \
         calls {ok} ok, {failed} failed; calls across the flood {long_ok} ok, {long_failed} failed; \
         all done {during:?} after the flood began"
    );
    assert!(registered, "the phone could not register");
    assert_eq!(
        (long_ok, long_failed),
        (5, 0),
        "calls established before the flood could not hang up"
    );
    assert!(
        ok >= 99 && failed <= 1,
        "{ok} calls completed, {failed} failed"
    );
    let events = events(&t);
    assert!(
        events.contains("\"kind\":\"overload\"") && events.contains("fair share"),
        "no overload event when the table refused the sources"
    );
    assert!(
        !events.contains("\"kind\":\"banned\""),
        "a source within its limits was banned"
    );
}

#[test]
fn an_invite_flood_from_the_proxy_address_does_not_starve_inside_calls() {
    let t = Topology::new(82);
    // The proxy's address is admitted from any port (a rule many sites write: a proxy
    // sends from several ports), so the flood below, from another port of that address,
    // meets admission as the proxy's own traffic would, exempt from per-source limits.
    let _gw = t.start_gateway_full(
        "max_sessions_per_id = 1000",
        &format!(
            "[[address]]\nname = \"proxy-any-port\"\nhost = \"{}\"\n\
             [[rule]]\naction = \"allow\"\nfrom = \"wan\"\nsource = \"proxy-any-port\"\n\
             to = \"core\"\nservice = \"sip\"\n",
            t.proxy()
        ),
    );
    let _far = start_far_end(&t);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = {
        let stop = stop.clone();
        let (proxy, wan) = (t.proxy(), t.gw_wan_sip());
        std::thread::spawn(move || {
            // The proxy's own address (another port than its SIP one): exempt from the
            // per-source limits, like the proxy itself.
            let s = UdpSocket::bind(format!("{proxy}:0")).unwrap();
            let local = s.local_addr().unwrap();
            let started = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // 30 every 10 ms: 3,000 a second.
                for _ in 0..30 {
                    let msg = format!(
                        "INVITE sip:victim{n}@{wan} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKpf{n}\r\n\
                         Max-Forwards: 70\r\nFrom: <sip:flood@{proxy}>;tag=pf{n}\r\nTo: <sip:victim{n}@{wan}>\r\n\
                         Call-ID: pf{n}@{proxy}\r\nCSeq: 1 INVITE\r\nContact: <sip:flood@{local}>\r\nContent-Length: 0\r\n\r\n"
                    );
                    let _ = s.send_to(msg.as_bytes(), &wan);
                    n += 1;
                }
                let due = started + Duration::from_millis(10 * (n / 30));
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            (n, started.elapsed())
        })
    };
    // Long enough for the flood to have spent any budget it shares with the phones.
    std::thread::sleep(Duration::from_secs(3));
    let registered = registers(&t, 1, "carol");
    let calls = place_calls(&t, 0, 100, 10, 200, "calls.csv");
    let _ = calls.wait_exit();
    stop.store(true, Ordering::Relaxed);
    let (n, took) = sent.join().unwrap();
    let rate = n as f64 / took.as_secs_f64();
    let (ok, failed) = call_stats(&t, "calls.csv");
    eprintln!(
        "proxy-address flood {rate:.0} INVITEs/s ({n} in {took:?}); phone registered: {registered}; \
         calls {ok} ok, {failed} failed"
    );
    assert!(rate >= 2_500.0, "the flood reached only {rate:.0}/s");
    // The flood met the outside admission budget (it was not dropped by the rule set
    // before), and only that budget.
    let counters: serde_json::Value = ureq::get(&format!("{}/api/v1/counters", t.api()))
        .set("Authorization", &format!("Bearer {}", common::ADMIN_TOKEN))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let overloaded_outside = counters["events"]["overloaded_outside"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        overloaded_outside > 1_000,
        "the flood was not refused by the outside budget: {counters}"
    );
    assert!(registered, "the phone could not register");
    assert!(
        ok >= 99 && failed <= 1,
        "{ok} calls completed, {failed} failed"
    );
}
