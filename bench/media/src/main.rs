//! Media relay benchmark: the same RTP load through sipward's relay and through
//! rtpengine (userspace forwarding, one worker thread), one after the other.
//!
//! For each stream count the generator opens the streams (sipward: relay commands, as
//! the core would send them; rtpengine: ng-protocol offer/answer), then
//! 1. sends 172-byte RTP packets round-robin over the streams from one socket, paced in
//!    100 µs bursts, at rising rates, all streams delivering to one receiver socket; the
//!    highest rate forwarded with under 1% loss, and the relay's CPU time at that rate,
//!    give its packets per core-second;
//! 2. sends at half that rate on fresh streams and measures the latency each packet
//!    took (send time in the payload), minus that of the same load sent directly;
//! 3. reports the relay's resident memory growth per stream.
//!
//! The generator is one thread, so that on a two-core machine the relay has the other.
//!
//! Usage: sipward-bench-media [seconds] [stream counts...]; prints a Markdown table.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use sipward_core::{LegSpec, MediaCommand, Peer, StreamCounters};
use sipward_relay::RelayHandle;

const PAYLOAD: usize = 172; // a 20 ms G.711 packet with its RTP header
/// Offered loads, packets per second, tried in turn.
const RATES: [u64; 9] = [10_000, 25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 200_000, 250_000];
const SENDER: &str = "127.90.0.10:0";
const RECEIVER: &str = "127.90.1.10:0";

/// A relay under test: where each stream's inside port is, and how busy it is.
trait Relay {
    fn name(&self) -> &'static str;
    /// Opens `n` streams from `sender` to `receiver`; returns the ports to send to.
    fn open(&mut self, n: usize, sender: SocketAddr, receiver: SocketAddr) -> Vec<SocketAddr>;
    fn close_all(&mut self);
    /// CPU seconds the relay has used so far.
    fn cpu_seconds(&self) -> f64;
    fn rss_bytes(&self) -> u64;
}

struct Sipward {
    name: &'static str,
    relay: RelayHandle,
    next_id: u64,
    open: Vec<u64>,
    next_port: u16,
}

impl Relay for Sipward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn open(&mut self, n: usize, sender: SocketAddr, receiver: SocketAddr) -> Vec<SocketAddr> {
        let mut ports = Vec::new();
        let mut cmds = Vec::new();
        for _ in 0..n {
            let port = self.next_port;
            self.next_port += 2;
            let peer = |a: SocketAddr| Peer {
                rtp: Some(a),
                rtcp: Some(SocketAddr::new(a.ip(), a.port() + 1)),
                latch: false,
            };
            cmds.push(MediaCommand::Set {
                id: self.next_id,
                legs: [
                    LegSpec {
                        local_rtp: SocketAddr::new("127.90.0.1".parse().unwrap(), port),
                        peers: vec![peer(sender)],
                    },
                    LegSpec {
                        local_rtp: SocketAddr::new("127.90.1.1".parse().unwrap(), port),
                        peers: vec![peer(receiver)],
                    },
                ],
                counters: Arc::new(StreamCounters::new(Instant::now())),
            });
            self.open.push(self.next_id);
            self.next_id += 1;
            ports.push(SocketAddr::new("127.90.0.1".parse().unwrap(), port));
        }
        self.relay.apply(cmds);
        // The relay binds four sockets per stream on its own thread: give it time.
        std::thread::sleep(Duration::from_millis(200 + n as u64));
        ports
    }
    fn close_all(&mut self) {
        let cmds: Vec<_> = self.open.drain(..).map(|id| MediaCommand::Close { id }).collect();
        self.relay.apply(cmds);
        std::thread::sleep(Duration::from_millis(200));
    }
    fn cpu_seconds(&self) -> f64 {
        thread_cpu_seconds("sipward-relay").unwrap_or(0.0)
    }
    fn rss_bytes(&self) -> u64 {
        rss_of("self")
    }
}

struct Rtpengine {
    child: Child,
    control: UdpSocket,
    calls: Vec<String>,
    cookie: u64,
}

impl Rtpengine {
    fn start() -> Rtpengine {
        let child = Command::new("rtpengine")
            .args([
                "--interface=127.90.0.2",
                "--listen-ng=127.90.0.2:22222",
                "--foreground",
                "--table=-1",
                "--log-stderr",
                "--log-level=3",
                "--port-min=20000",
                "--port-max=29999",
                "--num-threads=1",
                "--delete-delay=0",
                // Forward from the first packet (the default waits 3 s to learn).
                "--endpoint-learning=immediate",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rtpengine is installed (scripts/install-deps.sh installs rtpengine-daemon)");
        let control = UdpSocket::bind("127.90.0.2:0").unwrap();
        control.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut r = Rtpengine {
            child,
            control,
            calls: Vec::new(),
            cookie: 0,
        };
        let started = Instant::now();
        while r.ng(&[("command", "ping")]).is_none() {
            assert!(started.elapsed() < Duration::from_secs(10), "rtpengine did not start");
        }
        r
    }

    /// One ng-protocol request (bencoded dictionary of strings); the reply's text.
    fn ng(&mut self, fields: &[(&str, &str)]) -> Option<String> {
        self.cookie += 1;
        let mut msg = format!("c{} d", self.cookie);
        let mut sorted = fields.to_vec();
        sorted.sort();
        for (k, v) in sorted {
            msg.push_str(&format!("{}:{}{}:{}", k.len(), k, v.len(), v));
        }
        msg.push('e');
        self.control.send_to(msg.as_bytes(), "127.90.0.2:22222").ok()?;
        let mut buf = vec![0u8; 65536];
        let n = self.control.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

fn sdp_for(a: SocketAddr) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n",
        ip = a.ip(),
        port = a.port()
    )
}

fn media_port(reply: &str) -> u16 {
    let at = reply.find("m=audio ").expect("an SDP in rtpengine's reply") + 8;
    reply[at..].split(' ').next().unwrap().parse().unwrap()
}

impl Relay for Rtpengine {
    fn name(&self) -> &'static str {
        "rtpengine"
    }
    fn open(&mut self, n: usize, sender: SocketAddr, receiver: SocketAddr) -> Vec<SocketAddr> {
        let mut ports = Vec::new();
        for i in 0..n {
            let call = format!("bench-{}-{i}", self.calls.len());
            // Offer from the receiver side, answer from the sender side: the offer's
            // reply (what the answerer gets) names the port the sender sends to.
            let offer = sdp_for(receiver);
            let reply = self
                .ng(&[("command", "offer"), ("call-id", &call), ("from-tag", "r"), ("sdp", &offer)])
                .expect("rtpengine offer");
            let answer = sdp_for(sender);
            self.ng(&[
                ("command", "answer"),
                ("call-id", &call),
                ("from-tag", "r"),
                ("to-tag", "s"),
                ("sdp", &answer),
            ])
            .expect("rtpengine answer");
            ports.push(SocketAddr::new("127.90.0.2".parse().unwrap(), media_port(&reply)));
            self.calls.push(call);
        }
        std::thread::sleep(Duration::from_millis(200));
        ports
    }
    fn close_all(&mut self) {
        for call in std::mem::take(&mut self.calls) {
            self.ng(&[("command", "delete"), ("call-id", &call)]);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(self.child.id())
    }
    fn rss_bytes(&self) -> u64 {
        rss_of(&self.child.id().to_string())
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

fn cpu_of_stat(stat: &str) -> f64 {
    // Fields after the ")" of the command name: utime is 14th, stime 15th overall.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / ticks_per_second()
}

fn process_cpu_seconds(pid: u32) -> f64 {
    cpu_of_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap())
}

fn thread_cpu_seconds(name: &str) -> Option<f64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() == name {
            return Some(cpu_of_stat(&std::fs::read_to_string(dir.join("stat")).ok()?));
        }
    }
    None
}

fn rss_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// What one load run saw.
struct Load {
    sent: u64,
    received: u64,
    latency: Histogram<u64>,
}

/// Sends round-robin to `targets` for `secs` and counts what comes back to `receiver`,
/// in one thread so that the other core is the relay's. `rate` None: as fast as the
/// thread goes (bursts of 32, then the receive queue is drained); Some: bursts every
/// 100 µs adding up to `rate` packets/s.
fn load(
    sender: &UdpSocket,
    receiver: &UdpSocket,
    targets: &[SocketAddr],
    secs: f64,
    rate: Option<f64>,
    epoch: Instant,
) -> Load {
    receiver.set_nonblocking(true).unwrap();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    // An RTP header (version 2, PCMU, sequence, timestamp, SSRC), then the send time.
    let mut buf = [0u8; PAYLOAD];
    buf[0] = 0x80;
    buf[8..12].copy_from_slice(&0x5157_4152u32.to_be_bytes());
    let mut rbuf = [0u8; 2048];
    let (mut sent, mut received) = (0u64, 0u64);
    let mut i = 0usize;
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let tick = Duration::from_micros(100);
    let mut next = started;
    let drain = |received: &mut u64, latency: &mut Histogram<u64>| {
        let mut rbuf = [0u8; 2048];
        while let Ok((n, _)) = receiver.recv_from(&mut rbuf) {
            if n >= 20 {
                *received += 1;
                let at = u64::from_le_bytes(rbuf[12..20].try_into().unwrap());
                let now = epoch.elapsed().as_nanos() as u64;
                let _ = latency.record((now.saturating_sub(at) / 1000).max(1));
            }
        }
    };
    while Instant::now() < end {
        let burst = match rate {
            None => 32,
            Some(r) => {
                let due = ((Instant::now() - started).as_secs_f64() * r) as u64;
                due.saturating_sub(sent)
            }
        };
        for _ in 0..burst {
            buf[2..4].copy_from_slice(&(sent as u16).to_be_bytes());
            buf[4..8].copy_from_slice(&((sent as u32).wrapping_mul(160)).to_be_bytes());
            buf[12..20].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
            if sender.send_to(&buf, targets[i]).is_ok() {
                sent += 1;
            }
            i = (i + 1) % targets.len();
        }
        drain(&mut received, &mut latency);
        if rate.is_some() {
            // Wait for the next burst in a blocking receive, so that each packet is
            // timed when it arrives, not when the generator next looks.
            next += tick;
            receiver.set_nonblocking(false).unwrap();
            loop {
                let now = Instant::now();
                if next <= now {
                    break;
                }
                receiver.set_read_timeout(Some(next - now)).unwrap();
                if let Ok((n, _)) = receiver.recv_from(&mut rbuf) {
                    if n >= 20 {
                        received += 1;
                        let at = u64::from_le_bytes(rbuf[12..20].try_into().unwrap());
                        let now = epoch.elapsed().as_nanos() as u64;
                        let _ = latency.record((now.saturating_sub(at) / 1000).max(1));
                    }
                }
            }
            receiver.set_nonblocking(true).unwrap();
        }
    }
    // Stragglers.
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        drain(&mut received, &mut latency);
        std::thread::sleep(Duration::from_millis(5));
    }
    Load {
        sent,
        received,
        latency,
    }
}

struct Row {
    relay: &'static str,
    streams: usize,
    sent: u64,
    forwarded: u64,
    secs: f64,
    cpu: f64,
    p50: Option<u64>,
    p99: Option<u64>,
    mem_per_stream: Option<f64>,
    /// Relay CPU per forwarded packet at the fixed 50,000 packets/s step (µs).
    cost_at_50k: Option<f64>,
}

fn measure(relay: &mut dyn Relay, streams: usize, secs: f64, direct: &mut HashMap<u64, (u64, u64)>) -> Row {
    let sender = UdpSocket::bind(SENDER).unwrap();
    let receiver = UdpSocket::bind(RECEIVER).unwrap();
    // The generator drains between bursts: give it room (net.core.rmem_max allows).
    socket2::SockRef::from(&receiver)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let (s_addr, r_addr) = (sender.local_addr().unwrap(), receiver.local_addr().unwrap());
    let rss_before = relay.rss_bytes();
    let targets = relay.open(streams, s_addr, r_addr);
    let rss_after = relay.rss_bytes();
    let epoch = Instant::now();

    // 1. Throughput: paced load at rising rates; the highest rate forwarded with under
    // 1% loss is the relay's, with the relay's CPU time at that rate. (A blast with no
    // pacing is no use: rtpengine stops reading a socket with more than 50 packets
    // queued.)
    let mut best: Option<(u64, u64, f64, f64)> = None; // sent, forwarded, secs, cpu
    let mut cost_at_50k = None;
    for rate in RATES {
        eprintln!("  {} {streams} streams: {rate} packets/s for {secs} s", relay.name());
        let cpu0 = relay.cpu_seconds();
        let t0 = Instant::now();
        let run = load(&sender, &receiver, &targets, secs, Some(rate as f64), epoch);
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu = relay.cpu_seconds() - cpu0;
        let loss = 1.0 - run.received as f64 / run.sent.max(1) as f64;
        let reached = run.sent as f64 >= 0.95 * rate as f64 * secs;
        eprintln!(
            "    sent {:.0}/s, forwarded {:.0}/s, loss {:.2}%, relay {:.2} cores",
            run.sent as f64 / elapsed,
            run.received as f64 / elapsed,
            100.0 * loss,
            cpu / elapsed
        );
        if loss > 0.01 || !reached {
            break;
        }
        if rate == 50_000 && run.received > 0 {
            cost_at_50k = Some(cpu / run.received as f64 * 1e6);
        }
        best = Some((run.sent, run.received, elapsed, cpu));
    }
    let (sent, forwarded, elapsed, cpu) = best.unwrap_or((0, 0, 1.0, 0.0));

    // 2. Latency at half the forwarded rate, against the same path without a relay, on
    // fresh streams (the overload that ended the sweep may have left a relay stuck).
    relay.close_all();
    let targets = relay.open(streams, s_addr, r_addr);
    let rate = (forwarded as f64 / elapsed / 2.0).max(1000.0);
    eprintln!("  {} {streams} streams: latency at {rate:.0} packets/s", relay.name());
    let hist = load(&sender, &receiver, &targets, secs.min(2.0), Some(rate), epoch).latency;
    let key = rate as u64 / 1000;
    let base = *direct.entry(key).or_insert_with(|| {
        let h = load(&sender, &receiver, &[r_addr], secs.min(2.0), Some(rate), epoch).latency;
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    });
    relay.close_all();
    Row {
        relay: relay.name(),
        streams,
        sent,
        forwarded,
        secs: elapsed,
        cpu,

        p50: (!hist.is_empty()).then(|| hist.value_at_quantile(0.5).saturating_sub(base.0)),
        p99: (!hist.is_empty()).then(|| hist.value_at_quantile(0.99).saturating_sub(base.1)),
        cost_at_50k,
        mem_per_stream: (streams >= 100)
            .then(|| rss_after.saturating_sub(rss_before) as f64 / streams as f64),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let counts: Vec<usize> = if args.len() > 1 {
        args[1..].iter().map(|a| a.parse().unwrap()).collect()
    } else {
        vec![1, 100, 2000]
    };
    let mut rows = Vec::new();
    let mut direct = HashMap::new();
    let mut sipward = Sipward {
        name: "sipward",
        // SIPWARD_SPIN_US overrides the relay's busy-poll window (0: always sleep).
        relay: match std::env::var("SIPWARD_SPIN_US").ok().and_then(|v| v.parse().ok()) {
            Some(us) => RelayHandle::spawn_with(Duration::from_micros(us)).unwrap(),
            None => RelayHandle::spawn().unwrap(),
        },
        next_id: 1,
        open: Vec::new(),
        next_port: 40000,
    };
    let mut rtpengine = Rtpengine::start();
    for &n in &counts {
        for relay in [&mut sipward as &mut dyn Relay, &mut rtpengine] {
            let row = measure(relay, n, secs, &mut direct);
            eprintln!(
                "  {} {n} streams: {:.0} forwarded/s, {:.0} per core-second",
                row.relay,
                row.forwarded as f64 / row.secs,
                row.forwarded as f64 / row.cpu.max(1e-9)
            );
            rows.push(row);
        }
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "| relay | streams | sent/s | forwarded/s | loss | relay CPU (cores) | forwarded per core-second | CPU µs per packet at 50k/s | added latency p50 / p99 (µs) | memory per stream |").unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|").unwrap();
    for r in &rows {
        let lat = match (r.p50, r.p99) {
            (Some(a), Some(b)) => format!("{a} / {b}"),
            _ => "-".into(),
        };
        let mem = r.mem_per_stream.map_or("-".into(), |m| format!("{:.0} B", m));
        let cost = r.cost_at_50k.map_or("-".into(), |c| format!("{c:.2}"));
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.0} | {:.2}% | {:.2} | {:.0} | {} | {} | {} |",
            r.relay,
            r.streams,
            r.sent as f64 / r.secs,
            r.forwarded as f64 / r.secs,
            100.0 * (1.0 - r.forwarded as f64 / r.sent.max(1) as f64),
            r.cpu / r.secs,
            r.forwarded as f64 / r.cpu.max(1e-9),
            cost,
            lat,
            mem
        )
        .unwrap();
    }
    writeln!(out).unwrap();
    for pair in rows.chunks(2) {
        if let [s, r] = pair {
            let per_core = |x: &Row| x.forwarded as f64 / x.cpu.max(1e-9);
            let cost = match (s.cost_at_50k, r.cost_at_50k) {
                (Some(a), Some(b)) => format!("{:.2}", b / a),
                _ => "-".into(),
            };
            writeln!(
                out,
                "- {} streams: sipward / rtpengine packets per core-second at each one's highest rate = {:.2}; at 50k/s = {cost}",
                s.streams,
                per_core(s) / per_core(r)
            )
            .unwrap();
        }
    }
}
