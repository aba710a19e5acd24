//! Media relay benchmark: the same RTP load through sipward's relay and through
//! rtpengine (userspace forwarding, one worker thread), one after the other, and through
//! the floor (`floor.rs`), the least a userspace relay can do, to show what part of
//! every relay's cost is this machine's.
//!
//! The generator is one thread pinned to CPU 0; each relay (all its threads) is pinned
//! to CPU 1, so on a two-core machine neither shares a core with the generator.
//! For each stream count the generator opens the streams (sipward: relay commands, as
//! the core would send them; rtpengine: ng-protocol offer/answer), then
//! 1. capacity: sends 172-byte RTP packets round-robin over the streams from one socket
//!    at rising rates, in evenly spaced batches of 16 (`sendmmsg`), all streams
//!    delivering to one receiver socket; the highest rate forwarded with under 1% loss,
//!    and the relay's CPU time at that rate, give its packets per core-second;
//! 2. latency: on fresh streams, sends at half that rate one packet at a time, evenly
//!    spaced (independent 20 ms streams with spread phases), and times each packet from
//!    just before its send to the kernel's arrival timestamp on the receiver socket
//!    (SO_TIMESTAMPNS), after an untimed warm-up; a send the generator missed by more
//!    than 50 µs is skipped rather than burst; the same load sent straight to the
//!    receiver is the baseline subtracted;
//! 3. reports the relay's resident memory growth per stream.
//!
//! Usage: sipward-bench-media [seconds] [stream counts...]; prints a Markdown table.

use std::collections::HashMap;
use std::io::Write;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    recvmmsg, recvmsg, sendmmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders,
    SockaddrIn,
};

mod floor;

use hdrhistogram::Histogram;
use sipward_core::{LegSpec, MediaCommand, Peer, StreamCounters};
use sipward_relay::{Engine, RelayHandle, RelayOptions};

const PAYLOAD: usize = 172; // a 20 ms G.711 packet with its RTP header
/// Offered loads, packets per second, tried in turn.
const RATES: [u64; 13] = [
    10_000, 25_000, 50_000, 75_000, 100_000, 125_000, 150_000, 175_000, 200_000, 225_000, 250_000,
    300_000, 400_000,
];
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
    /// The relay thread's id (its CPU time is read from /proc/self/task/TID).
    tid: String,
    /// The relay's two addresses (inside, outside).
    addresses: [&'static str; 2],
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
                        local_rtp: SocketAddr::new(self.addresses[0].parse().unwrap(), port),
                        peers: vec![peer(sender)],
                        provisional: false,
                    },
                    LegSpec {
                        local_rtp: SocketAddr::new(self.addresses[1].parse().unwrap(), port),
                        peers: vec![peer(receiver)],
                        provisional: false,
                    },
                ],
                counters: Arc::new(StreamCounters::new(Instant::now())),
            });
            self.open.push(self.next_id);
            self.next_id += 1;
            ports.push(SocketAddr::new(self.addresses[0].parse().unwrap(), port));
        }
        self.relay.apply(cmds);
        // The relay binds four sockets per stream on its own thread: give it time.
        std::thread::sleep(Duration::from_millis(200 + n as u64));
        ports
    }
    fn close_all(&mut self) {
        let cmds: Vec<_> = self
            .open
            .drain(..)
            .map(|id| MediaCommand::Close { id })
            .collect();
        self.relay.apply(cmds);
        std::thread::sleep(Duration::from_millis(200));
    }
    fn cpu_seconds(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid))
            .map_or(0.0, |stat| cpu_of_stat(&stat))
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
    /// Stops (SIGSTOP) or resumes (SIGCONT) the whole rtpengine process.
    fn pause(&self, stopped: bool) {
        let signal = if stopped {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn start(realtime: bool) -> Rtpengine {
        let scheduling: &[String] = &if realtime {
            vec![
                "--scheduling=fifo".to_string(),
                format!("--priority={REALTIME_PRIORITY}"),
            ]
        } else {
            vec![]
        };
        let child = Command::new("rtpengine")
            .args(scheduling)
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
        control
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut r = Rtpengine {
            child,
            control,
            calls: Vec::new(),
            cookie: 0,
        };
        let started = Instant::now();
        while r.ng(&[("command", "ping")]).is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "rtpengine did not start"
            );
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
        self.control
            .send_to(msg.as_bytes(), "127.90.0.2:22222")
            .ok()?;
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
                .ng(&[
                    ("command", "offer"),
                    ("call-id", &call),
                    ("from-tag", "r"),
                    ("sdp", &offer),
                ])
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
            ports.push(SocketAddr::new(
                "127.90.0.2".parse().unwrap(),
                media_port(&reply),
            ));
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
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(100.0)
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

/// The ids of this process's threads named `name`.
fn thread_ids(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            (comm.trim() == name).then(|| dir.file_name()?.to_str().map(str::to_owned))?
        })
        .collect()
}

/// A step the relay kept up with: when the load stopped it held (forwarded afterwards)
/// at most this much of the offered traffic, besides the last batch. A relay that falls
/// behind can still pass on loss alone, its backlog absorbed by socket buffers (one per
/// stream) and forwarded within the 300 ms the generator waits; for media that is not
/// forwarding but delay.
const KEPT_UP_MS: f64 = 2.0;

/// Steal time on the relays' CPU that sends a latency run to be done again.
const STOLEN_RERUN_MS: u64 = 20;

/// The time the hypervisor ran something else on `cpu` so far (steal, /proc/stat), ms.
fn stolen_ms(cpu: usize) -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{cpu} ")))
        .unwrap();
    let steal: u64 = line.split_whitespace().nth(8).unwrap().parse().unwrap();
    steal * 1000 / ticks_per_second() as u64
}

fn pin(id: u32, cpus: &str, all_threads: bool) {
    let mut cmd = Command::new("taskset");
    if all_threads {
        cmd.arg("-a");
    }
    let status = cmd
        .args(["-p", "-c", cpus, &id.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux)");
    assert!(status.success(), "taskset failed");
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
    /// Datagrams the relay delivered that the receiving socket had no room for (the
    /// generator, busy sending, fell behind reading): forwarded, but not received.
    receiver_dropped: u64,
    /// How long the sending took (the rate actually offered is `sent / send_secs`).
    send_secs: f64,
    /// Datagrams that reached the receiver after the last send: what the relay still
    /// held (queued) when the load stopped.
    after_end: u64,
    latency: Histogram<u64>,
}

/// How the generator offers its packets.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Pacing {
    /// One packet at a time, evenly spaced, each timed: for latency.
    Even,
    /// `THROUGHPUT_BATCH` packets per `sendmmsg` (to as many streams), batches evenly
    /// spaced: for capacity, so that the one generator thread can offer more than a
    /// relay core forwards. Arrivals are drained with `recvmmsg` and only counted.
    Batched,
}

const THROUGHPUT_BATCH: usize = 16;
/// SCHED_FIFO priority of both relays (RT=0: normal scheduling): sipward's
/// `[relay] realtime_priority`, rtpengine's `--scheduling=fifo --priority`.
const REALTIME_PRIORITY: u8 = 10;
/// How late the evenly spaced generator may send a packet before it skips it.
const MAX_LATE: Duration = Duration::from_micros(50);
/// The start of a latency run that is not timed.
const WARM_UP: Duration = Duration::from_millis(250);

/// Sends round-robin to `targets` at `rate` packets/s for `secs`, each packet at its own
/// time (evenly spaced, as independent 20 ms RTP streams with spread phases are), and
/// counts what comes back to `receiver`. One thread, pinned to its own CPU, that never
/// sleeps: waiting is spent draining the receiver. A packet's latency is from just before
/// its `send_to` to the kernel's arrival timestamp on the receiver socket
/// (SO_TIMESTAMPNS), so when the generator gets round to reading it does not count.
fn load(
    sender: &UdpSocket,
    receiver: &UdpSocket,
    targets: &[SocketAddr],
    secs: f64,
    rate: f64,
    pacing: Pacing,
) -> Load {
    receiver.set_nonblocking(true).unwrap();
    setsockopt(receiver, sockopt::ReceiveTimestampns, &true).unwrap();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    // An RTP header (version 2, PCMU, sequence, timestamp, SSRC), then the send time.
    let mut buf = [0u8; PAYLOAD];
    buf[0] = 0x80;
    buf[8..12].copy_from_slice(&0x5157_4152u32.to_be_bytes());
    let mut rbuf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    let (mut sent, mut received) = (0u64, 0u64);
    // Packets sent in the first WARM_UP are forwarded and counted but not timed: the
    // first packets on fresh ports take the kernel's and the relay's cold paths.
    let timed_from = wall_clock_ns() + WARM_UP.as_nanos() as u64;
    let mut drain = |received: &mut u64, latency: &mut Histogram<u64>| loop {
        let mut iov = [IoSliceMut::new(&mut rbuf)];
        let Ok(msg) = recvmsg::<SockaddrIn>(
            receiver.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT,
        ) else {
            return;
        };
        let arrived = msg.cmsgs().ok().and_then(|mut c| {
            c.find_map(|m| match m {
                ControlMessageOwned::ScmTimestampns(t) => {
                    Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
                }
                _ => None,
            })
        });
        let n = msg.bytes;
        if n >= 20 {
            *received += 1;
            let at = u64::from_le_bytes(rbuf[12..20].try_into().unwrap());
            let arrived = arrived.expect("SO_TIMESTAMPNS gives every datagram a time");
            let us = (arrived.saturating_sub(at) / 1000).max(1);
            if at >= timed_from {
                let _ = latency.record(us);
            }
            if us > 300 && std::env::var("TAILS").is_ok() {
                eprintln!("tail {us} us, sent at {}", at % 100_000_000_000 / 1000);
            }
        }
    };
    let started = Instant::now();
    let total = (secs * rate) as u64;
    if pacing == Pacing::Batched {
        let dropped_before = socket_drops(receiver);
        let (sent, received) = blast(sender, receiver, targets, total, rate);
        let send_secs = started.elapsed().as_secs_f64();
        let after_end = settle_count(receiver);
        return Load {
            sent,
            received: received + after_end,
            receiver_dropped: socket_drops(receiver) - dropped_before,
            send_secs,
            after_end,
            latency,
        };
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut i = 0usize;
    let (mut slot, mut skipped) = (0u64, 0u64);
    let dropped_before = socket_drops(receiver);
    while slot < total {
        let due = started + interval.mul_f64(slot as f64);
        while Instant::now() < due {
            drain(&mut received, &mut latency);
        }
        // A send the generator missed by more than MAX_LATE (it was descheduled) is
        // skipped, not made up for in a burst: independent sources do not bunch up
        // because one machine stalled, and the burst would queue at the relay.
        if Instant::now() - due > MAX_LATE {
            skipped += 1;
            slot += 1;
            continue;
        }
        buf[2..4].copy_from_slice(&(sent as u16).to_be_bytes());
        buf[4..8].copy_from_slice(&((sent as u32).wrapping_mul(160)).to_be_bytes());
        buf[12..20].copy_from_slice(&wall_clock_ns().to_le_bytes());
        // A full socket buffer counts as a packet sent and lost.
        let _ = sender.send_to(&buf, targets[i]);
        sent += 1;
        slot += 1;
        i = (i + 1) % targets.len();
    }
    let send_secs = started.elapsed().as_secs_f64();
    if skipped > 0 {
        eprintln!("  generator: {skipped} of {total} sends skipped (over {MAX_LATE:?} late)");
    }
    // Stragglers.
    let received_by_end = received;
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        drain(&mut received, &mut latency);
    }
    Load {
        sent,
        received,
        receiver_dropped: socket_drops(receiver) - dropped_before,
        send_secs,
        after_end: received - received_by_end,
        latency,
    }
}

/// The kernel's count of datagrams `socket` dropped for want of buffer room (the last
/// column of /proc/net/udp, found by the socket's inode).
fn socket_drops(socket: &UdpSocket) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(format!("/proc/self/fd/{}", socket.as_raw_fd()))
        .unwrap()
        .ino()
        .to_string();
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(9) == Some(&inode.as_str()))
        .and_then(|f| f.last()?.parse().ok())
        .expect("the receiver is in /proc/net/udp")
}

/// The batched sender: `total` packets in `sendmmsg` batches at `rate`; what arrived
/// meanwhile is counted. Returns (sent, received).
fn blast(
    sender: &UdpSocket,
    receiver: &UdpSocket,
    targets: &[SocketAddr],
    total: u64,
    rate: f64,
) -> (u64, u64) {
    let mut packet = [0u8; PAYLOAD];
    packet[0] = 0x80;
    packet[8..12].copy_from_slice(&0x5157_4152u32.to_be_bytes());
    let addrs: Vec<SockaddrIn> = targets
        .iter()
        .map(|t| match t {
            SocketAddr::V4(v4) => SockaddrIn::from(*v4),
            SocketAddr::V6(_) => panic!("the benchmark runs on IPv4 loopback"),
        })
        .collect();
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(THROUGHPUT_BATCH, None);
    let mut counter = Counter::new();
    let interval = Duration::from_secs_f64(THROUGHPUT_BATCH as f64 / rate);
    let started = Instant::now();
    let (mut sent, mut received, mut next_target, mut batch_no) = (0u64, 0u64, 0usize, 0u32);
    while sent < total {
        let due = started + interval * batch_no;
        while Instant::now() < due {
            received += counter.drain(receiver);
        }
        batch_no += 1;
        let n = (total - sent).min(THROUGHPUT_BATCH as u64) as usize;
        let slices: Vec<[IoSlice<'_>; 1]> = (0..n).map(|_| [IoSlice::new(&packet)]).collect();
        let batch_addrs: Vec<Option<SockaddrIn>> = (0..n)
            .map(|k| Some(addrs[(next_target + k) % addrs.len()]))
            .collect();
        next_target = (next_target + n) % addrs.len();
        // Whatever the kernel did not take counts as sent and lost.
        let _ = sendmmsg(
            sender.as_raw_fd(),
            &mut headers,
            &slices,
            &batch_addrs,
            [],
            MsgFlags::empty(),
        );
        sent += n as u64;
    }
    (sent, received)
}

/// Counts arrivals with `recvmmsg`, THROUGHPUT_BATCH at a time.
struct Counter {
    headers: MultiHeaders<SockaddrIn>,
    buffers: Vec<[u8; 256]>,
}

impl Counter {
    fn new() -> Self {
        Counter {
            headers: MultiHeaders::preallocate(THROUGHPUT_BATCH, None),
            buffers: vec![[0u8; 256]; THROUGHPUT_BATCH],
        }
    }

    /// Reads until the socket is empty; how many datagrams came.
    fn drain(&mut self, receiver: &UdpSocket) -> u64 {
        let mut total = 0;
        loop {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
                .buffers
                .iter_mut()
                .map(|b| [IoSliceMut::new(b)])
                .collect();
            match recvmmsg(
                receiver.as_raw_fd(),
                &mut self.headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(results) => {
                    let n = results.count() as u64;
                    total += n;
                    if n < THROUGHPUT_BATCH as u64 {
                        return total;
                    }
                }
                Err(_) => return total,
            }
        }
    }
}

/// What is still arriving in the 300 ms after the last send.
/// Waits until the relay has used no CPU for 100 ms (at most 20 s): what an overloaded
/// step left queued must not be forwarded during the next measurement.
fn wait_idle(relay: &dyn Relay) {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let before = relay.cpu_seconds();
        std::thread::sleep(Duration::from_millis(100));
        if relay.cpu_seconds() - before < 0.002 || Instant::now() > until {
            return;
        }
    }
}

fn settle_count(receiver: &UdpSocket) -> u64 {
    let mut counter = Counter::new();
    let settle = Instant::now() + Duration::from_millis(300);
    let mut n = 0;
    while Instant::now() < settle {
        n += counter.drain(receiver);
    }
    n
}

/// CLOCK_REALTIME in nanoseconds: the clock of the kernel's receive timestamps.
fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Row {
    relay: &'static str,
    streams: usize,
    forwarded: u64,
    secs: f64,
    cpu: f64,
    p50: Option<u64>,
    p99: Option<u64>,
    mem_per_stream: Option<f64>,
    /// Relay CPU per forwarded packet at the fixed 50,000 packets/s step (µs).
    cost_at_50k: Option<f64>,
    /// The evenly spaced sweep's highest rate: (forwarded per second, relay cores).
    even: Option<(f64, f64)>,
    /// Each sweep's (batched, evenly spaced) highest rate the relay kept up with.
    kept_up: [Option<(f64, f64)>; 2],
    /// The rate latency was measured at.
    latency_rate: f64,
    /// Time the host took CPU 1 (the relays') away during the latency run (ms).
    stolen: u64,
    /// Latency runs done again for the host's steal: (ms stolen, raw p99 µs).
    discarded: Vec<(u64, u64)>,
}

/// A capacity sweep's outcome.
struct Capacity {
    /// The highest step passed: (sent, forwarded, seconds, relay CPU seconds).
    best: Option<(u64, u64, f64, f64)>,
    /// The highest step passed in which the relay also kept up (`KEPT_UP_MS`).
    best_kept_up: Option<(u64, u64, f64, f64)>,
    /// Relay CPU per forwarded packet at the 50,000 packets/s step (µs).
    cost_at_50k: Option<f64>,
}

/// Offers `pacing` load at rising rates until a step fails, then two halvings between
/// the last rate passed and the first failed (the steps are 25k apart up there, which
/// alone would make the ratio of two relays coarse). A step passes when under 1 % of
/// what was offered was lost and the generator offered at least 90 % of the rate (on
/// this VM its CPU stalls for over 50 µs tens of times a second, and an evenly spaced
/// send that late is skipped: a few percent are skipped at any rate).
fn capacity(
    relay: &dyn Relay,
    streams: usize,
    sender: &UdpSocket,
    receiver: &UdpSocket,
    targets: &[SocketAddr],
    secs: f64,
    pacing: Pacing,
) -> Capacity {
    let step = |rate: u64| {
        eprintln!(
            "  {} {streams} streams, {pacing:?}: {rate} packets/s for {secs} s",
            relay.name()
        );
        let cpu0 = relay.cpu_seconds();
        let run = load(sender, receiver, targets, secs, rate as f64, pacing);
        let elapsed = run.send_secs;
        let cpu = relay.cpu_seconds() - cpu0;
        // What reached the receiving socket was forwarded, read in time or not: the
        // generator shares the machine and, near the relay's limit, is near its own.
        let forwarded = run.received + run.receiver_dropped;
        let loss = 1.0 - forwarded as f64 / run.sent.max(1) as f64;
        // The rate actually offered: a generator that fell behind (batched: it took
        // longer to send them; evenly spaced: it skipped the sends it was late for) did
        // not test this rate.
        let offered = run.sent as f64 / elapsed.max(secs);
        // What the relay still held when the load stopped, in ms of the offered rate, not
        // counting the last batch (still on its way at any rate).
        let held = run.after_end.saturating_sub(THROUGHPUT_BATCH as u64);
        let held_ms = held as f64 / offered.max(1.0) * 1000.0;
        eprintln!(
            "    offered {offered:.0}/s, forwarded {:.0}/s ({} of them not read in time), loss {:.2}%, relay {:.2} cores, held {held_ms:.2} ms at the end",
            forwarded as f64 / elapsed,
            run.receiver_dropped,
            100.0 * loss,
            cpu / elapsed
        );
        (loss <= 0.01 && offered >= 0.9 * rate as f64)
            .then_some(((run.sent, forwarded, elapsed, cpu), held_ms <= KEPT_UP_MS))
    };
    let mut best = None;
    let mut best_kept_up = None;
    let mut cost_at_50k = None;
    let mut failed_at = None;
    // On this VM a stall of the host (several ms, a few times a minute) can fail one
    // step by itself: a step that fails is run once more before the sweep ends there, and
    // while the kept-up count is going, a step not kept up with is tried up to three
    // times. The kept-up count ends at the first step the relay fell behind in three
    // times; the loss sweep goes on.
    let mut keeping_up = true;
    let mut step = |rate: u64| {
        let mut outcome = step(rate);
        let mut tries = 1;
        while outcome.is_none_or(|(_, kept_up)| keeping_up && !kept_up) && tries < 3 {
            tries += 1;
            outcome = match (outcome, step(rate)) {
                (Some(first), None) => Some(first),
                (_, again) => again,
            };
        }
        let (result, kept_up) = outcome?;
        if kept_up && keeping_up {
            best_kept_up = Some(result);
        }
        keeping_up &= kept_up;
        Some(result)
    };
    for rate in RATES {
        let Some(result) = step(rate) else {
            failed_at = Some(rate);
            break;
        };
        if rate == 50_000 && result.1 > 0 {
            cost_at_50k = Some(result.3 / result.1 as f64 * 1e6);
        }
        best = Some(result);
    }
    if let (Some(mut high), Some(mut good)) = (failed_at, best) {
        let mut low = good.0 as f64 / good.2.max(secs);
        for _ in 0..2 {
            let mid = ((low + high as f64) / 2.0) as u64;
            match step(mid) {
                Some(result) => {
                    low = mid as f64;
                    good = result;
                }
                None => high = mid,
            }
        }
        best = Some(good);
    }
    Capacity {
        best,
        best_kept_up,
        cost_at_50k,
    }
}

/// Closes every stream and opens `streams` new ones once the relay is idle.
fn fresh_streams(
    relay: &mut dyn Relay,
    streams: usize,
    sender: SocketAddr,
    receiver_addr: SocketAddr,
    receiver: &UdpSocket,
) -> Vec<SocketAddr> {
    wait_idle(relay);
    relay.close_all();
    let targets = relay.open(streams, sender, receiver_addr);
    wait_idle(relay);
    Counter::new().drain(receiver);
    targets
}

fn measure(
    relay: &mut dyn Relay,
    streams: usize,
    secs: f64,
    direct: &mut HashMap<u64, (u64, u64)>,
) -> Row {
    let sender = UdpSocket::bind(SENDER).unwrap();
    let receiver = UdpSocket::bind(RECEIVER).unwrap();
    // Room for what arrives while the generator is descheduled (the kernel caps it at
    // net.core.rmem_max).
    socket2::SockRef::from(&receiver)
        .set_recv_buffer_size(8 << 20)
        .unwrap();
    let (s_addr, r_addr) = (sender.local_addr().unwrap(), receiver.local_addr().unwrap());
    let rss_before = relay.rss_bytes();
    let targets = relay.open(streams, s_addr, r_addr);
    let rss_after = relay.rss_bytes();

    // 1. Throughput, twice: the highest rate forwarded with under 1% loss, with the
    // relay's CPU time at that rate, first for batches of 16 packets (sendmmsg) and then
    // for packets sent one at a time evenly spaced. The two differ: a batch wakes the
    // relay once for 16 packets. (A blast with no pacing is no use: rtpengine stops
    // reading a socket with more than 50 packets queued.)
    // SWEEP=0 skips both sweeps (with LAT_RATE, one fixed load: for profiling).
    let sweep = std::env::var("SWEEP").map_or(true, |v| v != "0");
    // The evenly spaced sweep runs on fresh streams: the overload that ended the first
    // may have left a relay stuck.
    let mut targets = targets;
    let [batched, even] = [Pacing::Batched, Pacing::Even].map(|pacing| {
        if pacing == Pacing::Even {
            targets = fresh_streams(relay, streams, s_addr, r_addr, &receiver);
        }
        sweep.then(|| capacity(relay, streams, &sender, &receiver, &targets, secs, pacing))
    });
    let (_, forwarded, elapsed, cpu) = batched
        .as_ref()
        .and_then(|c| c.best)
        .unwrap_or((0, 0, 1.0, 0.0));
    let cost_at_50k = batched.as_ref().and_then(|c| c.cost_at_50k);
    let even_best = even.as_ref().and_then(|c| c.best);
    let rate_and_cores = |c: &Option<Capacity>| {
        c.as_ref()
            .and_then(|c| c.best_kept_up)
            .map(|(_, fwd, secs, cpu)| (fwd as f64 / secs, cpu / secs))
    };
    let kept_up = [rate_and_cores(&batched), rate_and_cores(&even)];

    // 2. Latency at half the highest evenly spaced rate the relay kept up with (the same
    // kind of load: half the batched rate would load the relay far more than half; above
    // the kept-up rate it queues, and the run would time its queue), against the same
    // path without a relay.
    let targets = fresh_streams(relay, streams, s_addr, r_addr, &receiver);
    let half_even = even
        .as_ref()
        .and_then(|c| c.best_kept_up.or(c.best))
        .map(|(_, fwd, secs, _)| fwd as f64 / secs / 2.0);
    let rate = std::env::var("LAT_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .or(half_even)
        .unwrap_or(1000.0)
        .max(1000.0);
    eprintln!(
        "  {} {streams} streams: latency at {rate:.0} packets/s",
        relay.name()
    );
    // A run during which the host took CPU 1 away for 20 ms or more (steal time) measured
    // the host: it is run again, at most twice, and what it saw is reported.
    let mut discarded = Vec::new();
    let (timed, stolen, even_cpu) = loop {
        let cpu_before = relay.cpu_seconds();
        let stolen_before = stolen_ms(1);
        let timed = load(
            &sender,
            &receiver,
            &targets,
            secs.min(2.0),
            rate,
            Pacing::Even,
        );
        let stolen = stolen_ms(1) - stolen_before;
        let even_cpu = relay.cpu_seconds() - cpu_before;
        if stolen < STOLEN_RERUN_MS || discarded.len() == 2 {
            break (timed, stolen, even_cpu);
        }
        let p99 = timed.latency.value_at_quantile(0.99);
        eprintln!("  host stole {stolen} ms of CPU 1 (raw p99 {p99} µs): measuring again");
        discarded.push((stolen, p99));
    };
    let even_cost = even_cpu / timed.received.max(1) as f64 * 1e6;
    eprintln!(
        "  relay CPU {even_cpu:.3} s for {} sent, {} received",
        timed.sent, timed.received
    );
    let hist = timed.latency;
    let key = rate as u64 / 1000;
    let base = *direct.entry(key).or_insert_with(|| {
        let h = load(
            &sender,
            &receiver,
            &[r_addr],
            secs.min(2.0),
            rate,
            Pacing::Even,
        )
        .latency;
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    });
    eprintln!(
        "  raw p50/p90/p99 {} / {} / {}, direct p50/p99 {} / {}; relay CPU {even_cost:.2} us per packet",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.9),
        hist.value_at_quantile(0.99),
        base.0,
        base.1
    );
    relay.close_all();
    Row {
        relay: relay.name(),
        streams,
        forwarded,
        secs: elapsed,
        cpu,

        p50: (!hist.is_empty()).then(|| hist.value_at_quantile(0.5).saturating_sub(base.0)),
        p99: (!hist.is_empty()).then(|| hist.value_at_quantile(0.99).saturating_sub(base.1)),
        cost_at_50k,
        even: even_best.map(|(_, fwd, secs, cpu)| (fwd as f64 / secs, cpu / secs)),
        kept_up,
        latency_rate: rate,
        stolen,
        discarded,
        mem_per_stream: (streams >= 100)
            .then(|| rss_after.saturating_sub(rss_before) as f64 / streams as f64),
    }
}

/// Table cells for a (packets/s, relay cores) pair: the rate, the cores and their ratio.
fn rate_cores_cells(rate_and_cores: Option<(f64, f64)>) -> String {
    rate_and_cores.map_or("- | - | -".into(), |(rate, cores)| {
        format!("{rate:.0} | {cores:.2} | {:.0}", rate / cores.max(1e-9))
    })
}

/// Packets per core-second of `a` over those of `b`, each a (packets/s, cores) pair.
fn per_core_ratio(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> String {
    match (a, b) {
        (Some((a, ac)), Some((b, bc))) => format!("{:.2}", (a / ac) / (b / bc)),
        _ => "-".into(),
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
    // PIN=0: no CPU pinning; RT=0: normal scheduling for both relays.
    let pinned = std::env::var("PIN").map_or(true, |v| v != "0");
    let realtime = std::env::var("RT").map_or(true, |v| v != "0");
    // SIPWARD_ENGINE=epoll (or io_uring) for A/B runs; default: auto.
    let engine = match std::env::var("SIPWARD_ENGINE").as_deref() {
        Ok("epoll") => Engine::Epoll,
        Ok("io_uring") => Engine::IoUring,
        _ => Engine::Auto,
    };
    let start_sipward = |name, spin_us, addresses| {
        let before = thread_ids("sipward-relay");
        let relay = RelayHandle::spawn_with_options(RelayOptions {
            spin: Duration::from_micros(spin_us),
            cpu: pinned.then_some(1),
            realtime_priority: realtime.then_some(REALTIME_PRIORITY),
            engine,
        })
        .expect("placing sipward's relay (real-time priority needs CAP_SYS_NICE)");
        let tid = thread_ids("sipward-relay")
            .into_iter()
            .find(|t| !before.contains(t))
            .expect("the new relay thread");
        Sipward {
            name,
            relay,
            tid,
            addresses,
            next_id: 1,
            open: Vec::new(),
            next_port: 40000,
        }
    };
    // sipward as configured by default (the relay sleeps when it has nothing to do), and
    // with `[relay] busy_poll_us` (SIPWARD_POLL_US, default 100).
    let poll_us = std::env::var("SIPWARD_POLL_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let mut sipward = start_sipward("sipward", 0, ["127.90.0.1", "127.90.1.1"]);
    let mut polling = start_sipward("sipward-poll", poll_us, ["127.90.3.1", "127.90.4.1"]);
    println!(
        "sipward's relay engine: {:?}; sipward-poll: the same with busy_poll_us = {poll_us}\n",
        sipward.relay.engine()
    );
    let mut floor = floor::Floor::new(pinned, realtime);
    let mut rtpengine = Rtpengine::start(realtime);
    if pinned {
        // The generator on CPU 0; rtpengine, every thread of it, on CPU 1 (sipward's
        // relay placed itself there through its own options).
        pin(std::process::id(), "0", false);
        pin(rtpengine.child.id(), "1", true);
    }
    for &n in &counts {
        // RELAYS=sipward (or rtpengine) measures one alone, for experiments.
        let only = std::env::var("RELAYS").unwrap_or_default();
        for which in 0..4 {
            // rtpengine's own threads (timers, housekeeping) wake on CPU 1 at the same
            // real-time priority even with no calls: it is stopped while sipward is
            // measured (perf: 4.5 % of CPU 1 otherwise). sipward's idle relays only
            // wake for their 50 ms tick.
            rtpengine.pause(which < 3);
            let relay: &mut dyn Relay = match which {
                0 => &mut sipward,
                1 => &mut polling,
                2 => &mut floor,
                _ => &mut rtpengine,
            };
            if !only.is_empty() && !only.split(',').any(|r| r == relay.name()) {
                continue;
            }
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
    writeln!(out, "| relay | streams | batched: forwarded/s | relay cores | per core-second | CPU µs per packet at 50k/s | evenly spaced: forwarded/s | relay cores | per core-second | latency measured at (packets/s) | added latency p50 / p99 (µs) | CPU 1 stolen by the host meanwhile | memory per stream |").unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|").unwrap();
    for r in &rows {
        let lat = match (r.p50, r.p99) {
            (Some(a), Some(b)) => format!("{a} / {b}"),
            _ => "-".into(),
        };
        let stolen = std::iter::once(format!("{} ms", r.stolen))
            .chain(
                r.discarded
                    .iter()
                    .map(|(ms, p99)| format!("(run again after {ms} ms stolen, raw p99 {p99} µs)")),
            )
            .collect::<Vec<_>>()
            .join(" ");
        let mem = r
            .mem_per_stream
            .map_or("-".into(), |m| format!("{:.0} B", m));
        let cost = r.cost_at_50k.map_or("-".into(), |c| format!("{c:.2}"));
        let even = rate_cores_cells(r.even);
        writeln!(
            out,
            "| {} | {} | {:.0} | {:.2} | {:.0} | {} | {} | {:.0} | {} | {} | {} |",
            r.relay,
            r.streams,
            r.forwarded as f64 / r.secs,
            r.cpu / r.secs,
            r.forwarded as f64 / r.cpu.max(1e-9),
            cost,
            even,
            r.latency_rate,
            lat,
            stolen,
            mem
        )
        .unwrap();
    }
    writeln!(out).unwrap();
    writeln!(
        out,
        "The same sweeps, counting only steps the relay kept up with (it held at most {KEPT_UP_MS} ms of the offered traffic when the load stopped):\n"
    )
    .unwrap();
    writeln!(out, "| relay | streams | batched, kept up: forwarded/s | relay cores | per core-second | evenly spaced, kept up: forwarded/s | relay cores | per core-second |").unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|---|").unwrap();
    for r in &rows {
        writeln!(
            out,
            "| {} | {} | {} | {} |",
            r.relay,
            r.streams,
            rate_cores_cells(r.kept_up[0]),
            rate_cores_cells(r.kept_up[1])
        )
        .unwrap();
    }
    writeln!(out).unwrap();
    for rtp in rows.iter().filter(|r| r.relay == "rtpengine") {
        let per_core = |x: &Row| x.forwarded as f64 / x.cpu.max(1e-9);
        for s in rows
            .iter()
            .filter(|r| r.streams == rtp.streams && r.relay != "rtpengine")
        {
            let cost = match (s.cost_at_50k, rtp.cost_at_50k) {
                (Some(a), Some(b)) => format!("{:.2}", b / a),
                _ => "-".into(),
            };
            let even = per_core_ratio(s.even, rtp.even);
            let kept = |i: usize| per_core_ratio(s.kept_up[i], rtp.kept_up[i]);
            writeln!(
                out,
                "- {} streams: {} / rtpengine packets per core-second at each one's highest rate: batched {:.2}, evenly spaced {even}; kept up: batched {}, evenly spaced {}; at 50k/s batched {cost}",
                s.streams,
                s.relay,
                per_core(s) / per_core(rtp),
                kept(0),
                kept(1)
            )
            .unwrap();
        }
    }
}
