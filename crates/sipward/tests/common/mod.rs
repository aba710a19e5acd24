//! Shared harness of the end-to-end tests: the real `sipward run` binary between SIPp
//! phones (inside) and SIPp peers (outside) on a private loopback topology per test.

#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// Starts `cmd` as the leader of a process group of its own, so that it and everything
/// it forks (Kamailio's workers, Chromium's helpers, `timeout`'s child) can be stopped
/// together: killing the leader alone leaves its children orphaned and running.
pub(crate) fn spawn_group(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0).spawn()
}

/// Sends `signal` (e.g. "-KILL") to the process group `pgid`; a group already gone is fine.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `cmd` (in a group of its own) to its end and collects its output, like
/// `Command::output`, but kills the whole group once `limit` has passed, so that a hung
/// tool fails the test instead of hanging the suite.
pub(crate) fn output_within(
    cmd: &mut Command,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    let mut child = spawn_group(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            signal_group(child.id(), "-KILL");
            break child.wait()?;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // Helpers the tool left behind in its group would keep the pipes open.
    signal_group(child.id(), "-KILL");
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// A child process (leading a process group, see `spawn_group`) whose whole group is
/// killed when the test ends, whatever the outcome.
pub(crate) struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        // The group first: once the leader is reaped its id may be reused.
        signal_group(self.0.id(), "-KILL");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl From<Child> for Guard {
    fn from(child: Child) -> Self {
        Guard(child)
    }
}

impl Guard {
    /// Starts `cmd` in a process group of its own, guarded.
    pub(crate) fn spawn(cmd: &mut Command) -> std::io::Result<Guard> {
        spawn_group(cmd).map(Guard)
    }

    /// Its standard output and error pipes (once; None when not piped).
    pub(crate) fn take_pipes(
        &mut self,
    ) -> (
        Option<std::process::ChildStdout>,
        Option<std::process::ChildStderr>,
    ) {
        (self.0.stdout.take(), self.0.stderr.take())
    }

    /// Waits for the process to end; its exit status.
    pub(crate) fn wait_exit(mut self) -> std::process::ExitStatus {
        self.0.wait().unwrap()
    }

    /// The process id (also its process group's).
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }

    /// Its exit status if it has ended, without waiting.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.try_wait()
    }

    /// Waits (up to 20 s) for the process to end on its own.
    pub(crate) fn wait_ended(&mut self) {
        let started = Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(20) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("process did not end in 20 s");
    }

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

    /// Waits for the process to end and returns everything it wrote to its piped
    /// standard output and error.
    pub(crate) fn wait_output(mut self) -> std::process::Output {
        let out = drain(self.0.stdout.take());
        let err = drain(self.0.stderr.take());
        let status = self.0.wait().unwrap();
        std::process::Output {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    }
}

/// Reads a child's pipe to its end on a thread of its own (two pipes read one after the
/// other can deadlock when the child fills the second).
fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// A daemon (leading a process group) stopped with SIGTERM, so that it can stop the
/// processes it forked; after 5 s, or if any of its group outlives it, the whole group
/// gets SIGKILL.
pub(crate) struct Terminated(Child);
impl Drop for Terminated {
    fn drop(&mut self) {
        signal_group(self.0.id(), "-TERM");
        let started = Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        signal_group(self.0.id(), "-KILL");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Terminated {
    /// Starts `cmd` in a process group of its own, stopped with SIGTERM at drop.
    pub(crate) fn spawn(cmd: &mut Command) -> std::io::Result<Terminated> {
        spawn_group(cmd).map(Terminated)
    }

    /// The process id (also its process group's).
    pub(crate) fn id(&self) -> u32 {
        self.0.id()
    }
}

/// Where a SIPp peer stands: inside phone number N (port 5070) or the outside proxy (5060).
#[derive(Clone, Copy)]
pub(crate) enum Peer {
    Phone(u8),
    Proxy,
}

/// SIPp arguments that log every message sent and received to `file`.
pub(crate) fn logged(file: &str) -> [&str; 3] {
    ["-trace_msg", "-message_file", file]
}

/// SIPp arguments answering a digest challenge as alice (the registrars' password is
/// "secret" for everyone).
pub(crate) const ALICE_DIGEST: [&str; 6] = [
    "-au",
    "alice",
    "-ap",
    "secret",
    "-auth_uri",
    "sip:sipward.test",
];

/// The admin API token of every test gateway.
pub(crate) const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";

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
events = "{events}"
[admin]
listen = "{lan}:8080"
token = "{token}"
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
            n = self.n,
            events = self.dir.join("events.jsonl").display(),
            token = ADMIN_TOKEN,
        )
    }

    pub(crate) fn start_gateway(&self) -> Guard {
        self.start_gateway_with("")
    }

    /// Starts the gateway with `alg_options` (TOML lines) added to its ALG object.
    pub(crate) fn start_gateway_with(&self, alg_options: &str) -> Guard {
        self.start_gateway_full(alg_options, "")
    }

    /// Starts the gateway with `alg_options` in its ALG object and `tail` (whole TOML
    /// tables, such as `[protection]`) at the end of the file.
    pub(crate) fn start_gateway_full(&self, alg_options: &str, tail: &str) -> Guard {
        let text = self
            .config()
            .replace("[alg.sip]\n", &format!("[alg.sip]\n{alg_options}\n"))
            + tail;
        self.start_gateway_text(&text)
    }

    /// Starts the gateway on the configuration `text` (written to sipward.toml).
    pub(crate) fn start_gateway_text(&self, text: &str) -> Guard {
        self.start_gateway_under(&[], text)
    }

    /// Starts the gateway on the configuration `text` through `wrapper` (a command that
    /// runs its arguments, such as `prlimit --nofile=64:64`; empty for none) and waits
    /// until it is ready.
    pub(crate) fn start_gateway_under(&self, wrapper: &[&str], text: &str) -> Guard {
        let cfg = self.dir.join("sipward.toml");
        std::fs::write(&cfg, text).unwrap();
        let gateway = env!("CARGO_BIN_EXE_sipward");
        let (program, args) = wrapper.split_first().unwrap_or((&gateway, &[]));
        let mut command = Command::new(program);
        command.args(args);
        if !wrapper.is_empty() {
            command.arg(gateway);
        }
        let mut child = spawn_group(
            command
                .args(["run", "--config", cfg.to_str().unwrap()])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )
        .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Guarded before waiting, so that a gateway hanging before it is ready is killed.
        let guard = Guard(child);
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = lines
                .next()
                .expect("gateway exited before it was ready")
                .unwrap();
            if line == "sipward: ready" {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        guard
    }

    pub(crate) fn sipp(&self, args: &[&str]) -> Guard {
        self.sipp_under(&[], args)
    }

    /// SIPp with `args` through `wrapper` (a command that runs its arguments, such as
    /// `ip netns exec NAME`; empty for none).
    pub(crate) fn sipp_under(&self, wrapper: &[&str], args: &[&str]) -> Guard {
        let (program, prefix) = wrapper.split_first().unwrap_or((&"sipp", &[]));
        let mut command = Command::new(program);
        command.args(prefix);
        if !wrapper.is_empty() {
            command.arg("sipp");
        }
        Guard::spawn(
            command
                .args(args)
                .args(["-nostdin", "-timeout", "30s", "-timeout_error"])
                .current_dir(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .expect("sipp is installed (scripts/install-deps.sh installs Debian's sip-tester)")
    }

    /// Starts Kamailio (tests/kamailio/proxy.cfg) on the proxy address, its log (every
    /// datagram it received, whole) in `kamailio.log`, and waits until it answers.
    pub(crate) fn start_kamailio(&self) -> Terminated {
        let cfg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/kamailio/proxy.cfg");
        let log = std::fs::File::create(self.dir.join("kamailio.log")).unwrap();
        let guard = Terminated::spawn(
            Command::new("kamailio")
                .arg("-f")
                .arg(&cfg)
                .args(["-l", &format!("udp:{}:5060", self.proxy())])
                .arg("-P")
                .arg(self.dir.join("kamailio.pid"))
                .arg("-Y")
                .arg(&self.dir)
                .arg("-w")
                .arg(&self.dir)
                .args(["-DD", "-E", "-m", "64", "-M", "8"])
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("kamailio is installed (scripts/install-deps.sh installs it)");
        let probe = std::net::UdpSocket::bind(format!("{}:0", self.proxy())).unwrap();
        probe
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let options = format!(
            "OPTIONS sip:probe@{p}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe\r\n\
             From: <sip:probe@{p}>;tag=1\r\nTo: <sip:probe@{p}>\r\nCall-ID: probe\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            p = self.proxy(),
            local = probe.local_addr().unwrap()
        );
        let started = Instant::now();
        let mut buf = [0u8; 2048];
        loop {
            let _ = probe.send_to(options.as_bytes(), format!("{}:5060", self.proxy()));
            if probe.recv_from(&mut buf).is_ok() {
                return guard;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "kamailio did not answer; see {}",
                self.dir.join("kamailio.log").display()
            );
        }
    }

    /// Plays one call of the scenario `xml` (tests/sipp) with SIPp standing at `at`,
    /// towards `target` (None: wait for the other side), with `extra` arguments.
    pub(crate) fn play(&self, xml: &str, at: Peer, target: Option<&str>, extra: &[&str]) -> Guard {
        let (ip, port) = match at {
            Peer::Phone(i) => (self.phone(i), "5070"),
            Peer::Proxy => (self.proxy(), "5060"),
        };
        let file = scenario(xml);
        let mut args: Vec<&str> = vec!["-sf", &file];
        args.extend(target);
        args.extend(["-i", &ip, "-p", port, "-m", "1"]);
        args.extend(extra);
        self.sipp(&args)
    }

    /// The gateway's inside (phones' outbound proxy) and outside SIP addresses.
    pub(crate) fn gw_lan_sip(&self) -> String {
        format!("{}:5060", self.gw_lan())
    }
    pub(crate) fn gw_wan_sip(&self) -> String {
        format!("{}:5060", self.gw_wan())
    }

    /// Reads a file a peer writes, waiting up to five seconds until `ready` holds.
    pub(crate) fn read_when(&self, name: &str, ready: impl Fn(&str) -> bool) -> String {
        let path = self.dir.join(name);
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if ready(&text) || started.elapsed() > std::time::Duration::from_secs(5) {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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

/// One UDP datagram seen on the loopback interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packet {
    pub(crate) src: std::net::SocketAddr,
    pub(crate) dst: std::net::SocketAddr,
    pub(crate) len: usize,
}

/// A tcpdump capture of a topology's media: every UDP datagram between its addresses
/// except SIP (ports 5060-5099). An observer outside sipward, so that what the relay
/// forwarded is counted by someone other than the relay.
pub(crate) struct Capture {
    child: Terminated,
    file: PathBuf,
}

impl Topology {
    pub(crate) fn capture(&self) -> Capture {
        self.capture_under(
            &[],
            &format!(
                "udp and net 127.{}.0.0/16 and not portrange 5060-5099",
                self.n
            ),
        )
    }

    /// A capture on `lo` of what `filter` (tcpdump's syntax) matches, tcpdump started
    /// through `wrapper` (such as `ip netns exec NAME`; empty for none).
    pub(crate) fn capture_under(&self, wrapper: &[&str], filter: &str) -> Capture {
        let file = self.dir.join("media.pcap");
        let (program, prefix) = wrapper.split_first().unwrap_or((&"tcpdump", &[]));
        let mut command = Command::new(program);
        command.args(prefix);
        if !wrapper.is_empty() {
            command.arg("tcpdump");
        }
        let mut child = spawn_group(
            command
                .args(["-i", "lo", "-nn", "-U", "-B", "16384", "-w"])
                .arg(&file)
                .arg(filter)
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        )
        .expect("tcpdump is installed (scripts/install-deps.sh installs it)");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .expect("tcpdump exited before listening")
                .unwrap();
            if line.contains("listening on") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Capture {
            child: Terminated(child),
            file,
        }
    }
}

impl Capture {
    /// Stops the capture and returns the datagrams, in order.
    pub(crate) fn stop(self) -> Vec<Packet> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(self.child);
        let out = Command::new("tcpdump")
            .args(["-r"])
            .arg(&self.file)
            .args(["-nn", "-q"])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let addr = |s: &str| -> std::net::SocketAddr {
            let s = s.trim_end_matches(':');
            let (ip, port) = s.rsplit_once('.').unwrap();
            std::net::SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap())
        };
        text.lines()
            .filter_map(|l| {
                // "12:00:00.000000 IP 127.0.1.10.18000 > 127.0.1.1.30000: UDP, length 172",
                // "IP6 fd00::20.18000 > fd00::1.30000: ..." for IPv6.
                let f: Vec<&str> = l.split_whitespace().collect();
                let ip = matches!(f.get(1), Some(&"IP" | &"IP6"));
                (ip && f.get(3) == Some(&">")).then(|| Packet {
                    src: addr(f[2]),
                    dst: addr(f[4]),
                    len: f.last().and_then(|n| n.parse().ok()).unwrap_or(0),
                })
            })
            .collect()
    }
}

/// Datagrams from `src` to `dst` (either may be an IP with port 0 for any port). The
/// relay sends a burst to one party as one GSO train (UDP_SEGMENT), which loopback
/// delivers as separate datagrams but tcpdump sees as one packet of their summed length:
/// a packet that is a whole multiple of the flow's usual length counts that many times.
pub(crate) fn count(packets: &[Packet], src: &str, dst: &str) -> usize {
    let matches = |a: std::net::SocketAddr, want: &str| {
        let want: std::net::SocketAddr = want.parse().unwrap();
        a.ip() == want.ip() && (want.port() == 0 || a.port() == want.port())
    };
    let flow: Vec<usize> = packets
        .iter()
        .filter(|p| matches(p.src, src) && matches(p.dst, dst))
        .map(|p| p.len)
        .collect();
    let mut lengths: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
    for &len in &flow {
        *lengths.entry(len).or_default() += 1;
    }
    let usual = lengths
        .iter()
        .max_by_key(|&(len, n)| (*n, std::cmp::Reverse(*len)))
        .map_or(0, |(len, _)| *len);
    flow.iter()
        .map(|&len| {
            if usual > 0 && len > usual && len % usual == 0 {
                len / usual
            } else {
                1
            }
        })
        .sum()
}

impl Topology {
    /// Registers inside phone 0 as alice (digest: alice/secret) through the gateway with
    /// the SIPp registrar on the proxy address; the registrar writes the bound contact
    /// (the gateway's address and token) to `contact.csv` for a later inbound call.
    pub(crate) fn register_alice(&self) {
        let registrar = self.play(
            "proxy_registrar.xml",
            Peer::Proxy,
            None,
            &logged("registrar_messages.log"),
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
        let phone = self.play(
            "phone_register.xml",
            Peer::Phone(0),
            Some(&self.gw_lan_sip()),
            &ALICE_DIGEST,
        );
        phone.wait_ok("phone registration");
        registrar.wait_ok("registrar");
        self.assert_no_inside_address_in("registrar_messages.log");
    }

    /// Writes `tone.ulaw` (raw 8 kHz u-law, 440 Hz) of `seconds` into the test's
    /// directory, where SIPp's `rtp_stream` finds it.
    pub(crate) fn tone(&self, seconds: u32) {
        let status = Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-e", "u-law", "-t", "raw"])
            .arg(self.dir.join("tone.ulaw"))
            .args(["synth", &seconds.to_string(), "sine", "440"])
            .status()
            .expect("sox is installed (scripts/install-deps.sh installs it)");
        assert!(status.success());
    }
}

impl Topology {
    /// The gateway's admin API base URL.
    pub(crate) fn api(&self) -> String {
        format!("http://{}:8080", self.gw_lan())
    }

    /// Runs a `sipward` admin command (status, calls, registrations, blacklist ...)
    /// against this topology's gateway; its standard output.
    pub(crate) fn admin(&self, args: &[&str]) -> std::process::Output {
        let api = self.api();
        let (command, rest) = args.split_first().unwrap();
        output_within(
            Command::new(env!("CARGO_BIN_EXE_sipward"))
                .arg(command)
                .args(["--api", &api, "--token", ADMIN_TOKEN])
                .args(rest),
            std::time::Duration::from_secs(30),
        )
        .unwrap()
    }
}

impl Topology {
    /// An outbound call with media through the gateway: a SIPp far end on the proxy
    /// address echoing RTP (media port 16000, `far_extra` arguments added), and phone 0
    /// streaming tone.ulaw (written here, 2 s) from port 18000, hanging up `hold_ms`
    /// after the answer. Returns (caller, far end).
    pub(crate) fn media_call(&self, hold_ms: u32, far_extra: &[&str]) -> (Guard, Guard) {
        self.tone(2);
        let proxy_ip = self.proxy();
        let mut far_args = vec!["-sn", "uas", "-i", &proxy_ip, "-p", "5060", "-m", "1"];
        far_args.extend(["-rtp_echo", "-mi", &proxy_ip, "-mp", "16000"]);
        far_args.extend(far_extra);
        let far = self.sipp(&far_args);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let phone_ip = self.phone(0);
        let hold = hold_ms.to_string();
        let caller = self.play(
            "phone_call_rtp.xml",
            Peer::Phone(0),
            Some(&self.gw_lan_sip()),
            &["-s", "bob", "-mi", &phone_ip, "-mp", "18000", "-d", &hold],
        );
        (caller, far)
    }
}

impl Topology {
    /// Starts the gateway on `text` with its standard output going to `gateway.out` in
    /// the test's directory (read it with [`Topology::read_when`]), once it is ready.
    pub(crate) fn start_gateway_to_file(&self, text: &str) -> Guard {
        let cfg = self.dir.join("sipward.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = std::fs::File::create(self.dir.join("gateway.out")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sipward"))
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(out)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let guard = Guard(child);
        let text = self.read_when("gateway.out", |t| t.contains("sipward: ready\n"));
        assert!(
            text.contains("sipward: ready\n"),
            "gateway not ready: {text}"
        );
        guard
    }
}

/// Three network namespaces for transparent mode, dual stack: `office` (phones,
/// 10.10.0.0/24 and fd00:10::/64), `gw` (the router: 10.10.0.1 and 198.51.100.1,
/// fd00:10::1 and 2001:db8::1, forwarding on) and `net` (the proxy, 198.51.100.10 and
/// 2001:db8::10), joined by veth pairs; deleted when dropped (declare it before the
/// processes that run in it, so that they are stopped first).
pub(crate) struct Netns {
    prefix: String,
}

impl Netns {
    pub(crate) fn new(tag: &str) -> Self {
        let netns = Netns {
            prefix: format!("swtest-{}-{tag}", std::process::id()),
        };
        let (office, gw, net) = (netns.name("office"), netns.name("gw"), netns.name("net"));
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ns in [&office, &gw, &net] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "link", "add", "o0", "netns", &office, "type", "veth", "peer", "name", "g0", "netns",
            &gw,
        ]);
        ip(&[
            "link", "add", "w0", "netns", &gw, "type", "veth", "peer", "name", "n0", "netns", &net,
        ]);
        for (ns, dev, addr) in [
            (&office, "o0", "10.10.0.10/24"),
            (&office, "o0", "10.10.0.200/24"),
            (&office, "o0", "10.10.0.11/24"),
            (&gw, "g0", "10.10.0.1/24"),
            (&gw, "w0", "198.51.100.1/24"),
            (&net, "n0", "198.51.100.10/24"),
            (&office, "o0", "fd00:10::10/64"),
            (&office, "o0", "fd00:10::200/64"),
            (&office, "o0", "fd00:10::11/64"),
            (&gw, "g0", "fd00:10::1/64"),
            (&gw, "w0", "2001:db8::1/64"),
            (&net, "n0", "2001:db8::10/64"),
        ] {
            // No duplicate address detection: the addresses are usable at once.
            let nodad: &[&str] = if addr.contains(':') { &["nodad"] } else { &[] };
            ip(&[&["-n", ns, "addr", "add", addr, "dev", dev], nodad].concat());
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&["-n", &office, "route", "add", "default", "via", "10.10.0.1"]);
        ip(&[
            "-n",
            &office,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:10::1",
        ]);
        let out = netns
            .exec("gw")
            .args([
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        netns
    }

    /// The full name of the namespace `ns` ("office", "gw" or "net").
    pub(crate) fn name(&self, ns: &str) -> String {
        format!("{}-{ns}", self.prefix)
    }

    /// A command that runs in namespace `ns`; add the program and its arguments.
    pub(crate) fn exec(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name(ns)]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in ["office", "gw", "net"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(ns)])
                .status();
        }
    }
}
