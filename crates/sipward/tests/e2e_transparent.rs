//! Transparent mode end to end, in network namespaces made by the test (office, gw,
//! net): a phone configured with the proxy's address (198.51.100.10:5060) and no
//! outbound proxy registers through the router running `sipward run` with
//! `manage_firewall = true`; the proxy sees only the gateway's WAN address, the phone
//! only the proxy's; an inbound INVITE reaches the phone from the proxy's address; a
//! phone no rule admits is not answered and is counted; the rules go at stop; without
//! CAP_NET_ADMIN the start fails with the exact reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Guard, Netns};

const TOKEN: &str = "transparent-admin-token-0123";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        r#"
[gateway]
events = "off"
[admin]
listen = "127.0.0.1:8080"
token = "{TOKEN}"
[[interface]]
name = "office"
address = "10.10.0.1"
networks = ["10.10.0.0/24"]
inside = true
intercept = true
[[interface]]
name = "wan"
address = "198.51.100.1"
networks = ["198.51.100.0/24"]
[[address]]
name = "phones"
network = "10.10.0.0/25"
[[address]]
name = "proxy"
host = "198.51.100.10"
[alg.sip]
[service.sip]
protocol = "udp"
port = [5060, 5080]
alg = "sip"
[transparent]
manage_firewall = true
[[rule]]
name = "to-proxy"
action = "nat"
from = "office"
source = "phones"
to = "wan"
destination = "proxy"
service = "sip"
[[rule]]
name = "proxy-in"
action = "allow"
from = "wan"
source = "proxy"
to = "core"
service = "sip"
"#
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("gw.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("sipward-transparent-{}-{tag}", std::process::id()))
}

/// Starts sipward in the gw namespace (through `wrapper`, if any); its standard output
/// lines arrive on the channel.
fn start(
    netns: &Netns,
    wrapper: &[&str],
    config: &std::path::Path,
) -> (Guard, mpsc::Receiver<String>) {
    let mut cmd = netns.exec("gw");
    cmd.args(wrapper)
        .arg(env!("CARGO_BIN_EXE_sipward"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = Guard::spawn(&mut cmd).unwrap();
    let (tx, rx) = mpsc::channel();
    let forward = |stream: Box<dyn std::io::Read + Send>, tx: mpsc::Sender<String>| {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    };
    let (stdout, stderr) = guard.take_pipes();
    if let Some(out) = stdout {
        forward(Box::new(out), tx.clone());
    }
    if let Some(err) = stderr {
        forward(Box::new(err), tx);
    }
    (guard, rx)
}

/// Lines until one contains `what` (within 10 s): all of them.
fn until(rx: &mpsc::Receiver<String>, what: &str) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        let done = line.contains(what);
        seen.push(line);
        if done {
            return seen;
        }
    }
    panic!("no line with {what:?}: {seen:?}");
}

/// The proxy at 198.51.100.10:5060: answers REGISTERs with 200, then sends an INVITE
/// for the registered contact to the gateway's WAN address. Prints `REGISTER <from>
/// <text>` and `GOT <from> <first line>` per datagram (text with \r\n as |).
const PROXY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.10", 5060))
s.settimeout(4)
while True:
    try:
        d, a = s.recvfrom(65535)
    except socket.timeout:
        break
    t = d.decode(errors="replace")
    src = "%s:%d" % a
    if t.startswith("REGISTER"):
        print("REGISTER", src, t.replace("\r\n", "|"), flush=True)
        keep = ("via", "from", "to", "call-id", "cseq", "contact")
        hs = [l for l in t.split("\r\n")[1:] if l.split(":")[0].lower() in keep]
        s.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(hs) + "\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").encode(), a)
        contact = [l for l in hs if l.lower().startswith("contact")][0]
        uri = contact.split("<", 1)[1].split(">", 1)[0]
        invite = ("INVITE " + uri + " SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bKinv1\r\n"
                  "Max-Forwards: 70\r\nFrom: <sip:bob@198.51.100.10>;tag=b1\r\nTo: <sip:alice@198.51.100.10>\r\n"
                  "Call-ID: inv1@198.51.100.10\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@198.51.100.10:5060>\r\n"
                  "Content-Length: 0\r\n\r\n")
        s.sendto(invite.encode(), ("198.51.100.1", 5060))
    else:
        print("GOT", src, t.split("\r\n")[0], flush=True)
"#;

/// A phone at `sys.argv[1]`:5060 that registers with the proxy's address and prints
/// `GOT <from> <first line>` for what it receives (answering an INVITE with 180).
const PHONE: &str = r#"
import socket, sys
me = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((me, 5060))
s.settimeout(2)
m = ("REGISTER sip:198.51.100.10 SIP/2.0\r\nVia: SIP/2.0/UDP %s:5060;branch=z9hG4bKreg1;rport\r\n"
     "Max-Forwards: 70\r\nFrom: <sip:alice@198.51.100.10>;tag=a1\r\nTo: <sip:alice@198.51.100.10>\r\n"
     "Call-ID: reg1@%s\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@%s:5060>\r\nExpires: 600\r\n"
     "Content-Length: 0\r\n\r\n") % (me, me, me)
s.sendto(m.encode(), ("198.51.100.10", 5060))
while True:
    try:
        d, a = s.recvfrom(65535)
    except socket.timeout:
        break
    t = d.decode(errors="replace")
    print("GOT", "%s:%d" % a, t.split("\r\n")[0], flush=True)
    if t.startswith("INVITE"):
        hs = [l for l in t.split("\r\n")[1:] if l.split(":")[0].lower() in ("via", "from", "to", "call-id", "cseq")]
        s.sendto(("SIP/2.0 180 Ringing\r\n" + "\r\n".join(hs) + "\r\nContent-Length: 0\r\n\r\n").encode(), a)
"#;

fn python(netns: &Netns, ns: &str, script: &str, args: &[&str]) -> Guard {
    let mut cmd = netns.exec(ns);
    cmd.args(["python3", "-c", script])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Guard::spawn(&mut cmd).unwrap()
}

fn in_gw(netns: &Netns, args: &[&str]) -> String {
    let out = netns.exec("gw").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn api(netns: &Netns, path: &str) -> String {
    in_gw(
        netns,
        &[
            "curl",
            "-s",
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            &format!("http://127.0.0.1:8080{path}"),
        ],
    )
}

#[test]
fn a_phone_registers_with_the_proxy_address_and_rings_from_it() {
    let netns = Netns::new("reg");
    let dir = temp_dir("reg");
    let (mut gateway, lines) = start(&netns, &[], &config(&dir));
    let started = until(&lines, "sipward: ready");
    assert!(
        started
            .iter()
            .any(|l| l.contains("firewall rules installed")),
        "{started:?}"
    );
    let table = in_gw(&netns, &["nft", "list", "table", "inet", "sipward"]);
    assert!(table.contains("198.51.100.10 . 5080"), "{table}");
    assert!(in_gw(&netns, &["ip", "rule"]).contains("fwmark 0x5157 lookup 100"));

    let proxy = python(&netns, "net", PROXY, &[]);
    std::thread::sleep(Duration::from_millis(200));
    let phone = python(&netns, "office", PHONE, &["10.10.0.10"]);
    // 10.10.0.200 is in the office but not in the rule's source (10.10.0.0/25).
    let stranger = python(&netns, "office", PHONE, &["10.10.0.200"]);
    let phone = String::from_utf8_lossy(&phone.wait_output().stdout).into_owned();
    let stranger = String::from_utf8_lossy(&stranger.wait_output().stdout).into_owned();

    // The phone hears only the proxy's address: the 200 and the inbound INVITE.
    assert!(
        phone.contains("GOT 198.51.100.10:5060 SIP/2.0 200 OK"),
        "{phone}"
    );
    assert!(
        phone.contains("GOT 198.51.100.10:5060 INVITE sip:alice@10.10.0.10:5060"),
        "{phone}"
    );
    assert!(
        phone
            .lines()
            .all(|l| l.starts_with("GOT 198.51.100.10:5060 ")),
        "{phone}"
    );
    assert!(stranger.is_empty(), "{stranger}");

    let api_registrations = api(&netns, "/api/v1/registrations");
    let metrics = api(&netns, "/metrics");
    let status = api(&netns, "/api/v1/status");

    // Stopped with SIGTERM: the rules go with it.
    Command::new("kill")
        .args(["-TERM", &gateway.id().to_string()])
        .status()
        .unwrap();
    gateway.wait_ended();
    let proxy = String::from_utf8_lossy(&proxy.wait_output().stdout).into_owned();

    // The proxy sees the gateway's WAN address and no office address in any byte;
    // the phone's 180 reaches it.
    let registers: Vec<&str> = proxy
        .lines()
        .filter(|l| l.starts_with("REGISTER"))
        .collect();
    assert_eq!(registers.len(), 1, "{proxy}");
    assert!(
        registers[0].starts_with("REGISTER 198.51.100.1:5060 "),
        "{proxy}"
    );
    assert!(!proxy.contains("10.10.0."), "{proxy}");
    assert!(
        proxy.contains("GOT 198.51.100.1:5060 SIP/2.0 180 Ringing"),
        "{proxy}"
    );

    assert!(
        api_registrations.contains("\"registrar\":\"198.51.100.10:5060\"")
            && api_registrations.contains("\"intercepted\":true"),
        "{api_registrations}"
    );
    assert!(
        metrics.contains("sipward_diverted_total{rule=\"to-proxy\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("sipward_diverted_destination_total{destination=\"198.51.100.10:5060\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sipward_diverted_unmatched_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sipward_transparent_send_sockets 1"),
        "{metrics}"
    );
    assert!(status.contains("\"diverted_unmatched\":1"), "{status}");

    let tables = in_gw(&netns, &["nft", "list", "tables"]);
    assert!(!tables.contains("sipward"), "{tables}");
    let rules = in_gw(&netns, &["ip", "rule"]);
    assert!(!rules.contains("fwmark"), "{rules}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_cap_net_admin_the_start_fails_with_the_reason() {
    let netns = Netns::new("cap");
    let dir = temp_dir("cap");
    let config = config(&dir);
    let out = netns
        .exec("gw")
        .args(["capsh", "--drop=cap_net_admin", "--", "-c"])
        .arg(format!(
            "exec {} run --config {}",
            env!("CARGO_BIN_EXE_sipward"),
            config.display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("sipward: transparent mode needs CAP_NET_ADMIN"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ready"));
    assert!(!in_gw(&netns, &["nft", "list", "tables"]).contains("sipward"));
    let _ = std::fs::remove_dir_all(&dir);
}
