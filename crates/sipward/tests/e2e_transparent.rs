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

/// The addresses of one family: office network, the rule's phones, gateway inside and
/// WAN addresses, the proxy, the phone, the phone no rule admits.
struct Family {
    office: &'static str,
    phones: &'static str,
    gw_inside: &'static str,
    gw_wan: &'static str,
    wan: &'static str,
    proxy: &'static str,
    phone: &'static str,
    stranger: &'static str,
    /// A phone that uses the gateway's inside address as its proxy (explicit mode).
    explicit: &'static str,
    /// An address no rule names: SIP to it is routed, not diverted.
    elsewhere: &'static str,
}

const V4: Family = Family {
    office: "10.10.0.0/24",
    phones: "10.10.0.0/25",
    gw_inside: "10.10.0.1",
    gw_wan: "198.51.100.1",
    wan: "198.51.100.0/24",
    proxy: "198.51.100.10",
    phone: "10.10.0.10",
    stranger: "10.10.0.200",
    explicit: "10.10.0.11",
    elsewhere: "198.51.100.99",
};

const V6: Family = Family {
    office: "fd00:10::/64",
    phones: "fd00:10::/120",
    gw_inside: "fd00:10::1",
    gw_wan: "2001:db8::1",
    wan: "2001:db8::/64",
    proxy: "2001:db8::10",
    phone: "fd00:10::10",
    stranger: "fd00:10::200",
    explicit: "fd00:10::11",
    elsewhere: "2001:db8::99",
};

/// `ip:port` as SIP and the socket APIs write it.
fn at(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

fn config(dir: &std::path::Path, f: &Family) -> std::path::PathBuf {
    let Family {
        office,
        phones,
        gw_inside,
        gw_wan,
        wan,
        proxy,
        ..
    } = f;
    let text = format!(
        r#"
[gateway]
events = "off"
[admin]
listen = "127.0.0.1:8080"
token = "{TOKEN}"
[[interface]]
name = "office"
address = "{gw_inside}"
networks = ["{office}"]
inside = true
intercept = true
[[interface]]
name = "wan"
address = "{gw_wan}"
networks = ["{wan}"]
[[address]]
name = "phones"
network = "{phones}"
[[address]]
name = "proxy"
host = "{proxy}"
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

/// The proxy at `argv[1]`:5060: answers REGISTERs with 200, then sends an INVITE for
/// the registered contact to the gateway's WAN address `argv[2]`. Prints `REGISTER
/// <from> <text>` and `GOT <from> <first line>` per datagram (text with \r\n as |).
const PROXY: &str = r#"
import socket, sys
me, gw = sys.argv[1], sys.argv[2]
six = ":" in me
def at(ip, port):
    return ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port)
s = socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((me, 5060))
s.settimeout(4)
calls = 0
while True:
    try:
        d, a = s.recvfrom(65535)
    except socket.timeout:
        break
    t = d.decode(errors="replace")
    src = at(a[0], a[1])
    if t.startswith("REGISTER"):
        print("REGISTER", src, t.replace("\r\n", "|"), flush=True)
        keep = ("via", "from", "to", "call-id", "cseq", "contact")
        hs = [l for l in t.split("\r\n")[1:] if l.split(":")[0].lower() in keep]
        s.sendto(("SIP/2.0 200 OK\r\n" + "\r\n".join(hs) + "\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").encode(), a)
        contact = [l for l in hs if l.lower().startswith("contact")][0]
        uri = contact.split("<", 1)[1].split(">", 1)[0]
        here = at(me, 5060)
        # One call per registration: its own branch, tag and Call-ID.
        calls += 1
        n = str(calls)
        invite = ("INVITE " + uri + " SIP/2.0\r\nVia: SIP/2.0/UDP " + here + ";branch=z9hG4bKinv" + n + "\r\n"
                  "Max-Forwards: 70\r\nFrom: <sip:bob@" + here + ">;tag=b" + n + "\r\nTo: <sip:alice@" + here + ">\r\n"
                  "Call-ID: inv" + n + "@proxy\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@" + here + ">\r\n"
                  "Content-Length: 0\r\n\r\n")
        s.sendto(invite.encode(), (gw, 5060))
    else:
        print("GOT", src, t.split("\r\n")[0], flush=True)
"#;

/// A phone at `argv[1]`:5060 that registers with the proxy's address `argv[2]` and
/// prints `GOT <from> <first line>` for what it receives (answering an INVITE with 180).
const PHONE: &str = r#"
import socket, sys
me, proxy = sys.argv[1], sys.argv[2]
def at(ip, port):
    return ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port)
s = socket.socket(socket.AF_INET6 if ":" in me else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((me, 5060))
s.settimeout(2)
p = at(proxy, 5060)
tag = me.replace(":", "x").replace(".", "-")
m = ("REGISTER sip:" + p + " SIP/2.0\r\nVia: SIP/2.0/UDP " + at(me, 5060) + ";branch=z9hG4bKreg" + tag + ";rport\r\n"
     "Max-Forwards: 70\r\nFrom: <sip:alice@" + p + ">;tag=a1\r\nTo: <sip:alice@" + p + ">\r\n"
     "Call-ID: reg1@" + tag + "\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@" + at(me, 5060) + ">\r\nExpires: 600\r\n"
     "Content-Length: 0\r\n\r\n")
# Like a phone's Timer E: the REGISTER is sent again until its answer comes (a first
# datagram can be lost while the router still resolves its neighbours).
registered = False
for _ in range(8):
    s.sendto(m.encode(), (proxy, 5060))
    s.settimeout(0.5)
    try:
        d, a = s.recvfrom(65535)
    except socket.timeout:
        continue
    t = d.decode(errors="replace")
    print("GOT", at(a[0], a[1]), t.split("\r\n")[0], flush=True)
    if t.startswith("SIP/2.0 200"):
        registered = True
        break
s.settimeout(2)
while registered:
    try:
        d, a = s.recvfrom(65535)
    except socket.timeout:
        break
    t = d.decode(errors="replace")
    print("GOT", at(a[0], a[1]), t.split("\r\n")[0], flush=True)
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

/// A phone of family `f` registers with the proxy's address and rings from it; a phone
/// no rule admits is unanswered and counted; the rules go at SIGTERM.
fn register_and_ring(tag: &str, f: &Family) {
    let netns = Netns::new(tag);
    let dir = temp_dir(tag);
    let (mut gateway, lines) = start(&netns, &[], &config(&dir, f));
    let started = until(&lines, "sipward: ready");
    assert!(
        started
            .iter()
            .any(|l| l.contains("firewall rules installed")),
        "{started:?}"
    );
    let table = in_gw(&netns, &["nft", "list", "table", "inet", "sipward"]);
    assert!(table.contains(&format!("{} . 5080", f.proxy)), "{table}");
    let family = if f.proxy.contains(':') { "-6" } else { "-4" };
    assert!(in_gw(&netns, &["ip", family, "rule"]).contains("fwmark 0x5157 lookup 100"));

    let proxy = python(&netns, "net", PROXY, &[f.proxy, f.gw_wan]);
    std::thread::sleep(Duration::from_millis(200));
    let phone = python(&netns, "office", PHONE, &[f.phone, f.proxy]);
    // The stranger is in the office but not in the rule's source.
    let stranger = python(&netns, "office", PHONE, &[f.stranger, f.proxy]);
    // Side by side, a phone configured with the gateway as its outbound proxy.
    let explicit = python(&netns, "office", PHONE, &[f.explicit, f.gw_inside]);
    let phone = String::from_utf8_lossy(&phone.wait_output().stdout).into_owned();
    let stranger = String::from_utf8_lossy(&stranger.wait_output().stdout).into_owned();
    let explicit = String::from_utf8_lossy(&explicit.wait_output().stdout).into_owned();
    let from_gateway = format!("GOT {} ", at(f.gw_inside, 5060));
    assert!(
        explicit.contains(&format!("{from_gateway}SIP/2.0 200 OK")),
        "{explicit}"
    );
    assert!(
        explicit.contains(&format!(
            "{from_gateway}INVITE sip:alice@{}",
            at(f.explicit, 5060)
        )),
        "{explicit}"
    );

    // The phone hears only the proxy's address: the 200 and the inbound INVITE.
    let from_proxy = format!("GOT {} ", at(f.proxy, 5060));
    assert!(
        phone.contains(&format!("{from_proxy}SIP/2.0 200 OK")),
        "{phone}"
    );
    assert!(
        phone.contains(&format!(
            "{from_proxy}INVITE sip:alice@{}",
            at(f.phone, 5060)
        )),
        "{phone}"
    );
    assert!(phone.lines().all(|l| l.starts_with(&from_proxy)), "{phone}");
    assert!(stranger.is_empty(), "{stranger}");
    // SIP to an address in no rule is not diverted (nobody answers; counted nowhere).
    let elsewhere = python(&netns, "office", PHONE, &[f.stranger, f.elsewhere]);
    let elsewhere = String::from_utf8_lossy(&elsewhere.wait_output().stdout).into_owned();
    assert!(elsewhere.is_empty(), "{elsewhere}");

    let registrations = api(&netns, "/api/v1/registrations");
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
    let wan = at(f.gw_wan, 5060);
    let registers: Vec<&str> = proxy
        .lines()
        .filter(|l| l.starts_with("REGISTER"))
        .collect();
    assert_eq!(registers.len(), 2, "{proxy}");
    assert!(
        registers
            .iter()
            .all(|r| r.starts_with(&format!("REGISTER {wan} "))),
        "{proxy}"
    );
    let office_prefix = f.phone.rsplit_once(['.', ':']).unwrap().0;
    assert!(!proxy.contains(office_prefix), "{proxy}");
    assert_eq!(
        proxy
            .matches(&format!("GOT {wan} SIP/2.0 180 Ringing"))
            .count(),
        2,
        "{proxy}"
    );

    let registrar = at(f.proxy, 5060);
    assert!(
        registrations.contains(&format!("\"registrar\":\"{registrar}\""))
            && registrations.contains("\"intercepted\":true")
            && registrations.contains("\"intercepted\":false"),
        "{registrations}"
    );
    // A phone repeats its REGISTER until answered (Timer E): every copy is counted.
    let counted = |text: &str, key: &str| -> u64 {
        text.split(key)
            .nth(1)
            .and_then(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .unwrap_or(0)
    };
    // The REGISTER (perhaps repeated) and the 180.
    assert!(
        counted(&metrics, "\nsipward_diverted_total{rule=\"to-proxy\"} ") >= 2,
        "{metrics}"
    );
    assert!(
        counted(
            &metrics,
            &format!("\nsipward_diverted_destination_total{{destination=\"{registrar}\"}} ")
        ) >= 2,
        "{metrics}"
    );
    assert!(
        counted(&metrics, "\nsipward_diverted_unmatched_total ") >= 1,
        "{metrics}"
    );
    assert!(
        metrics.contains("sipward_transparent_send_sockets 1"),
        "{metrics}"
    );
    assert!(counted(&status, "\"diverted_unmatched\":") >= 1, "{status}");

    let tables = in_gw(&netns, &["nft", "list", "tables"]);
    assert!(!tables.contains("sipward"), "{tables}");
    let rules = in_gw(&netns, &["ip", family, "rule"]);
    assert!(!rules.contains("fwmark"), "{rules}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_phone_registers_with_the_proxy_address_and_rings_from_it() {
    register_and_ring("reg4", &V4);
}

#[test]
fn an_ipv6_phone_registers_with_the_proxy_address_and_rings_from_it() {
    register_and_ring("reg6", &V6);
}

#[test]
fn without_cap_net_admin_the_start_fails_with_the_reason() {
    let netns = Netns::new("cap");
    let dir = temp_dir("cap");
    let config = config(&dir, &V4);
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

#[test]
fn a_missing_nft_is_named_and_a_kernel_sip_helper_is_warned_about() {
    let netns = Netns::new("tools");
    let dir = temp_dir("tools");
    let config = config(&dir, &V4);
    // No `nft` in PATH: the start fails naming it, and leaves no routing behind.
    let out = netns
        .exec("gw")
        .args(["env", "PATH=/nonexistent"])
        .arg(env!("CARGO_BIN_EXE_sipward"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "sipward: [transparent] manage_firewall = true needs the `nft` command (nftables): not found in PATH"
        ),
        "{stderr}"
    );
    assert!(!in_gw(&netns, &["ip", "rule"]).contains("fwmark"));

    // The kernel's SIP helper declared in the ruleset: a warning before `ready`.
    let helper = netns
        .exec("gw")
        .args(["sh", "-c"])
        .arg("nft add table inet alg && nft add ct helper inet alg sip5060 '{ type \"sip\" protocol udp; }'")
        .status()
        .unwrap();
    assert!(helper.success());
    let (_gateway, lines) = start(&netns, &[], &config);
    // Standard output and error are read by two threads: the warning is awaited itself.
    let started = until(&lines, "ct helper");
    assert!(
        started.last().unwrap().starts_with(
            "sipward: warning: the nftables ruleset has a `ct helper` of type \"sip\""
        ),
        "{started:?}"
    );
    if !started.iter().any(|l| l == "sipward: ready") {
        until(&lines, "sipward: ready");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_start_that_fails_after_installing_removes_the_rules() {
    let netns = Netns::new("late");
    let dir = temp_dir("late");
    let config = config(&dir, &V4);
    // The admin API's port is taken: the start fails after the rules went in.
    let mut holder = python(
        &netns,
        "gw",
        "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 8080))\ns.listen()\nprint('held', flush=True)\ntime.sleep(30)",
        &[],
    );
    let (out, _) = holder.take_pipes();
    let mut held = String::new();
    BufReader::new(out.unwrap()).read_line(&mut held).unwrap();
    assert_eq!(held.trim(), "held");
    let out = netns
        .exec("gw")
        .arg(env!("CARGO_BIN_EXE_sipward"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stdout.contains("firewall rules installed"), "{stdout}");
    assert!(!stdout.contains("sipward: ready"), "{stdout}");
    assert!(!in_gw(&netns, &["nft", "list", "tables"]).contains("sipward"));
    assert!(!in_gw(&netns, &["ip", "rule"]).contains("fwmark"));
    let _ = std::fs::remove_dir_all(&dir);
}
