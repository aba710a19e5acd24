//! End-to-end: the real `sipward run` binary between SIPp phones (inside) and a SIPp
//! proxy/registrar (outside), on loopback addresses. SIPp runs in its default strict mode.
//! Every message the outside SIPp receives is logged (-trace_msg) and checked on the
//! bytes for inside addresses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when the test ends, whatever the outcome.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Waits for the process to end and asserts it succeeded.
    fn wait_ok(mut self, name: &str) {
        let started = Instant::now();
        let status = self.0.wait().unwrap();
        let mut stderr = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut stderr);
        }
        assert!(
            status.success(),
            "{name} failed with {status:?} after {:?}: {stderr}",
            started.elapsed()
        );
    }
}

/// One test's private loopback topology: inside 127.<n>.0.0/24, outside 127.<n>.1.0/24.
struct Topology {
    n: u8,
    dir: PathBuf,
}

impl Topology {
    fn new(n: u8) -> Self {
        let dir = std::env::temp_dir().join(format!("sipward-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Topology { n, dir }
    }
    fn gw_lan(&self) -> String {
        format!("127.{}.0.1", self.n)
    }
    fn gw_wan(&self) -> String {
        format!("127.{}.1.1", self.n)
    }
    fn phone(&self, i: u8) -> String {
        format!("127.{}.0.{}", self.n, 20 + i)
    }
    fn proxy(&self) -> String {
        format!("127.{}.1.10", self.n)
    }
    fn inside_prefix(&self) -> String {
        format!("127.{}.0.", self.n)
    }

    fn config(&self) -> String {
        format!(
            r#"
[gateway]
name = "sipward-e2e"
[[interface]]
name = "lan"
address = "{lan}"
networks = ["127.{n}.0.0/24"]
inside = true
[[interface]]
name = "wan"
address = "{wan}"
networks = ["127.{n}.1.0/24"]
[[address]]
name = "phones"
network = "127.{n}.0.0/24"
[[address]]
name = "proxy"
host = "{proxy}:5060"
[alg.sip]
[service.sip]
protocol = "udp"
port = 5060
alg = "sip"
[[rule]]
action = "nat"
from = "lan"
source = "phones"
to = "wan"
destination = "proxy"
service = "sip"
[[rule]]
action = "allow"
from = "wan"
source = "proxy"
to = "core"
service = "sip"
"#,
            lan = self.gw_lan(),
            wan = self.gw_wan(),
            proxy = self.proxy(),
            n = self.n
        )
    }

    fn start_gateway(&self) -> Guard {
        let cfg = self.dir.join("sipward.toml");
        std::fs::write(&cfg, self.config()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sipward"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut listening = 0;
        while listening < 2 {
            let line = lines
                .next()
                .expect("gateway exited before listening")
                .unwrap();
            if line.contains("listening on") {
                listening += 1;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Guard(child)
    }

    fn sipp(&self, args: &[&str]) -> Guard {
        Guard(
            Command::new("sipp")
                .args(args)
                .args(["-nostdin", "-timeout", "30s", "-timeout_error"])
                .current_dir(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("sipp is installed (scripts/install-deps.sh installs Debian's sip-tester)"),
        )
    }

    /// Checks every message logged by an outside SIPp for inside addresses.
    fn assert_no_inside_address_in(&self, log: &str) {
        let text = std::fs::read_to_string(self.dir.join(log)).unwrap();
        assert!(text.contains("SIP/2.0"), "empty message log {log}");
        let prefix = self.inside_prefix();
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains(&prefix),
                "{log}:{}: inside address leaked: {line}",
                i + 1
            );
        }
    }
}

fn scenario(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn outbound_calls_through_the_gateway() {
    let t = Topology::new(31);
    let _gw = t.start_gateway();
    let proxy = t.sipp(&[
        "-sn",
        "uas",
        "-i",
        &t.proxy(),
        "-p",
        "5060",
        "-m",
        "5",
        "-trace_msg",
        "-message_file",
        "proxy_messages.log",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    let phone = t.sipp(&[
        "-sn",
        "uac",
        &format!("{}:5060", t.gw_lan()),
        "-i",
        &t.phone(0),
        "-p",
        "5070",
        "-m",
        "5",
        "-r",
        "5",
        "-d",
        "200",
    ]);
    phone.wait_ok("phone (uac)");
    proxy.wait_ok("proxy (uas)");
    t.assert_no_inside_address_in("proxy_messages.log");
}

#[test]
fn register_with_digest_then_inbound_call() {
    let t = Topology::new(32);
    let _gw = t.start_gateway();
    let gw_lan = format!("{}:5060", t.gw_lan());
    let gw_wan = format!("{}:5060", t.gw_wan());

    // Registration: the registrar checks the digest; the gateway caps 7200 s to 3600 s
    // on the way out and the registrar's 7200 s grant to 3600 s on the way back.
    let registrar = t.sipp(&[
        "-sf",
        &scenario("proxy_registrar.xml"),
        "-i",
        &t.proxy(),
        "-p",
        "5060",
        "-m",
        "1",
        "-trace_msg",
        "-message_file",
        "registrar_messages.log",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    let phone = t.sipp(&[
        "-sf",
        &scenario("phone_register.xml"),
        &gw_lan,
        "-i",
        &t.phone(0),
        "-p",
        "5070",
        "-m",
        "1",
        "-au",
        "alice",
        "-ap",
        "secret",
        "-auth_uri",
        "sip:sipward.test",
    ]);
    phone.wait_ok("phone registration");
    registrar.wait_ok("registrar");
    t.assert_no_inside_address_in("registrar_messages.log");
    let asked = std::fs::read_to_string(t.dir.join("asked.txt")).unwrap();
    assert_eq!(asked.trim(), "3600", "the registrar saw the capped expiry");
    let contact = std::fs::read_to_string(t.dir.join("contact.txt")).unwrap();
    assert!(
        contact.contains(&format!("sip:alice@{gw_wan};swc=")),
        "{contact}"
    );

    // Inbound call to the registered phone, hung up by the caller.
    let answerer = t.sipp(&["-sn", "uas", "-i", &t.phone(0), "-p", "5070", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(200));
    let caller = t.sipp(&[
        "-sf",
        &scenario("proxy_call.xml"),
        &gw_wan,
        "-i",
        &t.proxy(),
        "-p",
        "5060",
        "-m",
        "1",
        "-inf",
        "contact.csv",
        "-trace_msg",
        "-message_file",
        "caller_messages.log",
    ]);
    caller.wait_ok("caller");
    answerer.wait_ok("phone (answering)");
    t.assert_no_inside_address_in("caller_messages.log");
}
