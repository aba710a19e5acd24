//! Shared harness of the end-to-end tests: the real `sipward run` binary between SIPp
//! phones (inside) and SIPp peers (outside) on a private loopback topology per test.

#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// A child process killed when the test ends, whatever the outcome.
pub(crate) struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Waits for the process to end and asserts it succeeded.
    pub(crate) fn wait_ok(mut self, name: &str) {
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
pub(crate) struct Topology {
    pub(crate) n: u8,
    pub(crate) dir: PathBuf,
}

impl Topology {
    pub(crate) fn new(n: u8) -> Self {
        let dir = std::env::temp_dir().join(format!("sipward-e2e-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Topology { n, dir }
    }
    pub(crate) fn gw_lan(&self) -> String {
        format!("127.{}.0.1", self.n)
    }
    pub(crate) fn gw_wan(&self) -> String {
        format!("127.{}.1.1", self.n)
    }
    pub(crate) fn phone(&self, i: u8) -> String {
        format!("127.{}.0.{}", self.n, 20 + i)
    }
    pub(crate) fn proxy(&self) -> String {
        format!("127.{}.1.10", self.n)
    }
    pub(crate) fn inside_prefix(&self) -> String {
        format!("127.{}.0.", self.n)
    }

    pub(crate) fn config(&self) -> String {
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

    pub(crate) fn start_gateway(&self) -> Guard {
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

    pub(crate) fn sipp(&self, args: &[&str]) -> Guard {
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
    pub(crate) fn assert_no_inside_address_in(&self, log: &str) {
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

pub(crate) fn scenario(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(name)
        .display()
        .to_string()
}

