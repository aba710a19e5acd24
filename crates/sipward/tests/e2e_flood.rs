//! A flood through `sipward run` while a phone places calls: sipsak sends INVITE,
//! REGISTER and OPTIONS floods (together well over 50,000 requests per second) from an
//! attacking inside address while SIPp places 100 calls from a phone. At least 99 calls
//! must complete, the attacker must be banned, and the gateway's memory must stay small.
//! (`bench/flood/run.sh` is the longer version that reports the figures.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Topology;

/// The attacker is 127.0.0.1 (sipsak sends from the wildcard address), admitted like a
/// phone by an extra nat rule; the scanner filter is off so that the flood limits are
/// what stops it.
const TAIL: &str = "[[address]]\nname = \"attacker\"\nhost = \"127.0.0.1\"\n\
    [[rule]]\naction = \"nat\"\nfrom = \"lan\"\nsource = \"attacker\"\nto = \"wan\"\n\
    destination = \"proxy\"\nservice = \"sip\"\n[protection]\nscanner_filter = \"off\"\n";

fn request(method: &str, target: &str, port: u16) -> String {
    format!(
        "{method} sip:bob@{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKflood{port}\r\n\
         From: <sip:mallory@{target}>;tag=f{port}\r\nTo: <sip:bob@{target}>\r\nCall-ID: flood{port}@127.0.0.1\r\n\
         CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContact: <sip:mallory@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn legitimate_calls_complete_through_a_flood_and_the_flooder_is_banned() {
    let t = Topology::new(64);
    // The phone is a call generator: calls SIPp abandons under the flood (a lost
    // message, strict mode) stay open on the gateway, so allow it many.
    let gw = t.start_gateway_full("max_sessions_per_id = 1000", TAIL);
    let gw_pid = gw.id();
    let proxy_ip = t.proxy();
    let far = t.sipp(&["-sn", "uas", "-i", &proxy_ip, "-p", "5060"]);
    std::thread::sleep(Duration::from_millis(200));
    let phone_ip = t.phone(0);
    let lan_sip = t.gw_lan_sip();
    let calls = t.sipp(&[
        "-sn",
        "uac",
        &lan_sip,
        "-i",
        &phone_ip,
        "-p",
        "5070",
        "-s",
        "bob",
        "-m",
        "100",
        "-r",
        "10",
        "-trace_stat",
        "-stf",
        "calls.csv",
        "-fd",
        "1",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = rss_kib(gw_pid);
    let floods: Vec<_> = [("INVITE", 5091u16), ("REGISTER", 5092), ("OPTIONS", 5093)]
        .iter()
        .map(|(method, port)| {
            let file = t.dir.join(format!("{method}.txt"));
            std::fs::write(&file, request(method, &t.gw_lan(), *port)).unwrap();
            common::Guard::spawn(
                Command::new("sipsak")
                    .args(["-F", "-e", "200000", "-L", "-l", &port.to_string(), "-f"])
                    .arg(&file)
                    .args(["-s", &format!("sip:bob@{}", t.gw_lan())])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null()),
            )
            .expect("sipsak is installed (scripts/install-deps.sh installs it)")
        })
        .collect();
    let mut rate = 0.0;
    for f in floods {
        let out = f.wait_output();
        let text = String::from_utf8_lossy(&out.stdout);
        rate += text
            .lines()
            .find_map(|l| l.strip_prefix("we sent "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    let rss_peak = rss_kib(gw_pid);
    // SIPp's exit status also counts retransmissions it did not expect; the call
    // statistics are what matters.
    let _ = calls.wait_exit();
    drop(far);
    assert!(
        rate >= 50_000.0,
        "the flood reached only {rate:.0} requests/s"
    );
    let stats = std::fs::read_to_string(t.dir.join("calls.csv")).unwrap();
    let header: Vec<&str> = stats.lines().next().unwrap().split(';').collect();
    let last: Vec<&str> = stats.lines().last().unwrap().split(';').collect();
    let column = |name: &str| -> u64 {
        let i = header.iter().position(|h| *h == name).unwrap();
        last[i].parse().unwrap()
    };
    let (ok, failed) = (column("SuccessfulCall(C)"), column("FailedCall(C)"));
    eprintln!(
        "flood {rate:.0} requests/s; calls {ok} ok, {failed} failed; gateway RSS {rss_before} -> {rss_peak} KiB"
    );
    assert!(
        ok >= 99 && failed <= 1,
        "{ok} calls completed, {failed} failed"
    );
    let list = t.admin(&["blacklist", "--json", "list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("\"source\": \"127.0.0.1\"") && list.contains("flood"),
        "the flooder is not banned for flooding: {list}"
    );
    assert!(
        rss_peak < rss_before + 16 * 1024,
        "memory grew from {rss_before} KiB to {rss_peak} KiB during the flood"
    );
}
