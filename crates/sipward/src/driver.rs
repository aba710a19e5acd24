//! The tokio UDP driver around the pure core: one socket per interface, one task that
//! owns the [`Gateway`], the clock read here and nowhere else. Media commands the core
//! emits go to the relay thread ([`RelayHandle`]); security events are written as JSON
//! lines; the control socket serves blacklist commands.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;
use sipward_core::{Config, Gateway, SecurityEvent};
use sipward_relay::RelayHandle;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

/// Largest UDP datagram read; anything longer is truncated by the kernel and then
/// refused by the size limit.
const RECV_BUFFER: usize = 65_535;
/// Longest control command line.
const MAX_COMMAND: usize = 512;

/// What the binary needs besides the core's configuration.
pub(crate) struct Settings {
    /// "-" for standard output, a path, or None.
    pub(crate) events: Option<String>,
    pub(crate) control: Option<SocketAddr>,
}

struct Received {
    local: SocketAddr,
    remote: SocketAddr,
    data: Vec<u8>,
}

struct ControlRequest {
    line: String,
    reply: oneshot::Sender<String>,
}

/// Binds every interface and runs the gateway until ctrl-c.
pub(crate) async fn run(config: Config, settings: Settings) -> Result<()> {
    let mut sockets: Vec<(SocketAddr, Arc<UdpSocket>)> = Vec::new();
    for zone in &config.zones {
        let socket = UdpSocket::bind(zone.address)
            .await
            .with_context(|| format!("interface {}: cannot bind {}", zone.name, zone.address))?;
        println!(
            "sipward: listening on {} ({}, {})",
            zone.address,
            zone.name,
            if zone.inside { "inside" } else { "outside" }
        );
        sockets.push((zone.address, Arc::new(socket)));
    }
    let (tx, mut rx) = mpsc::channel::<Received>(4096);
    for (local, socket) in &sockets {
        let socket = socket.clone();
        let tx = tx.clone();
        let local = *local;
        tokio::spawn(async move {
            let mut buf = vec![0u8; RECV_BUFFER];
            loop {
                match socket.recv_from(&mut buf).await {
                    Ok((n, remote)) => {
                        let data = buf.get(..n).unwrap_or_default().to_vec();
                        if tx
                            .send(Received {
                                local,
                                remote,
                                data,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(%local, "receive failed: {e}"),
                }
            }
        });
    }
    drop(tx);

    let (control_tx, mut control_rx) = mpsc::channel::<ControlRequest>(16);
    if let Some(addr) = settings.control {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("control socket: cannot bind {addr}"))?;
        println!("sipward: control socket on {addr}");
        tokio::spawn(serve_control(listener, control_tx));
    } else {
        drop(control_tx);
    }
    let mut events = EventLog::open(settings.events.as_deref())?;

    let mut gateway = Gateway::new(config);
    let relay = RelayHandle::spawn().context("cannot start the media relay")?;
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let deadline = gateway.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = rx.recv() => {
                let Some(r) = received else { break };
                gateway.handle_datagram(Instant::now(), r.local, r.remote, &r.data);
            }
            () = sleep => gateway.handle_timeout(Instant::now()),
            Some(request) = control_rx.recv() => {
                let answer = control(&mut gateway, &request.line, Instant::now());
                let _ = request.reply.send(answer);
            }
            _ = &mut shutdown => {
                println!("sipward: shutting down");
                break;
            }
        }
        relay.apply(std::iter::from_fn(|| gateway.poll_media()));
        events.write_all(std::iter::from_fn(|| gateway.poll_event()));
        while let Some(t) = gateway.poll_transmit() {
            if let Some((_, socket)) = sockets.iter().find(|(a, _)| *a == t.local) {
                if let Err(e) = socket.send_to(&t.payload, t.remote).await {
                    tracing::warn!(remote = %t.remote, "send failed: {e}");
                }
            }
        }
    }
    Ok(())
}

/// Security events as JSON lines, with stable field names.
struct EventLog {
    sink: Option<Box<dyn Write + Send>>,
}

#[derive(Serialize)]
struct EventLine<'a> {
    time: String,
    kind: &'a str,
    source: IpAddr,
    user: Option<&'a str>,
    method: Option<&'a str>,
    reason: &'a str,
}

impl EventLog {
    fn open(target: Option<&str>) -> Result<Self> {
        let sink: Option<Box<dyn Write + Send>> = match target {
            None => None,
            Some("-") => Some(Box::new(std::io::stdout())),
            Some(path) => Some(Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("security event log {path}"))?,
            )),
        };
        Ok(Self { sink })
    }

    fn write_all(&mut self, events: impl Iterator<Item = SecurityEvent>) {
        let Some(sink) = self.sink.as_mut() else {
            events.for_each(drop);
            return;
        };
        let mut any = false;
        for e in events {
            any = true;
            let line = EventLine {
                time: wall_clock(e.at),
                kind: e.kind.as_str(),
                source: e.source,
                user: e.user.as_deref(),
                method: e.method.as_deref(),
                reason: &e.reason,
            };
            if let Ok(text) = serde_json::to_string(&line) {
                let _ = writeln!(sink, "{text}");
            }
        }
        if any {
            let _ = sink.flush();
        }
    }
}

/// The wall-clock time of a core instant, RFC 3339 in UTC.
fn wall_clock(at: Instant) -> String {
    let age = Instant::now().saturating_duration_since(at);
    let when = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    time::OffsetDateTime::from(when)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Accepts control connections: one command line each, one reply.
async fn serve_control(listener: TcpListener, requests: mpsc::Sender<ControlRequest>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(MAX_COMMAND as u64);
            let answer = match reader.read_line(&mut line).await {
                Ok(_) => {
                    let (reply, wait) = oneshot::channel();
                    if requests.send(ControlRequest { line, reply }).await.is_err() {
                        return;
                    }
                    wait.await
                        .unwrap_or_else(|_| "error: gateway stopped\n".into())
                }
                Err(e) => format!("error: {e}\n"),
            };
            if let Err(e) = write.write_all(answer.as_bytes()).await {
                tracing::debug!(%peer, "control reply: {e}");
            }
        });
    }
}

/// Runs one control command against the gateway.
fn control(gateway: &mut Gateway, line: &str, now: Instant) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["blacklist", "list"] => {
            let mut out = String::new();
            for b in gateway.bans(now) {
                let line = serde_json::json!({
                    "source": b.source,
                    "reason": b.reason,
                    "user": b.user,
                    "first_seen": wall_clock(b.first_seen),
                    "last_seen": wall_clock(b.last_seen),
                    "expires_in": b.expires.saturating_duration_since(now).as_secs(),
                    "hits": b.hits,
                });
                out.push_str(&line.to_string());
                out.push('\n');
            }
            out
        }
        ["blacklist", "add", ip, rest @ ..] => {
            let Ok(ip) = ip.parse::<IpAddr>() else {
                return format!("error: {ip:?} is not an IP address\n");
            };
            let (seconds, reason) = match rest.split_first() {
                Some((s, r)) if s.parse::<u64>().is_ok() => (s.parse::<u64>().ok(), r.join(" ")),
                _ => (None, rest.join(" ")),
            };
            let reason = if reason.is_empty() {
                "added by operator".to_string()
            } else {
                reason
            };
            gateway.ban(ip, seconds.map(Duration::from_secs), &reason, now);
            format!("ok: {ip} blacklisted\n")
        }
        ["status"] => {
            let dialogs = gateway.dialogs();
            let mut out = format!(
                "dialogs {} bindings {} transactions {} media streams {}\n{:?}\n",
                dialogs.len(),
                gateway.bindings().len(),
                gateway.transactions(),
                gateway.media().stream_count(),
                gateway.counters()
            );
            for d in dialogs {
                out.push_str(&format!("{d:?}\n"));
            }
            out
        }
        ["blacklist", "remove", ip] => match ip.parse::<IpAddr>() {
            Ok(ip) if gateway.unban(ip, now) => format!("ok: {ip} removed\n"),
            Ok(ip) => format!("error: {ip} is not blacklisted\n"),
            Err(_) => format!("error: {ip:?} is not an IP address\n"),
        },
        _ => "error: commands: status | blacklist list | blacklist add IP [SECONDS] [REASON] | blacklist remove IP\n".into(),
    }
}
