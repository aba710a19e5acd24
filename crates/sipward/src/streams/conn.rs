//! One task per stream connection: the TLS handshake (for a TLS listener), the framer,
//! CRLF pongs to keepalive pings, complete messages handed to the driver, and writes from
//! a queue bounded in bytes. The [`Hub`] is what the driver, the tasks and the reaper
//! share: the connection table and the [`StreamLimits`]; the reaper closes what the
//! limits' deadlines say.
//!
//! Sends are accounted when queued (in [`Hub::send`]), so a peer that stops reading
//! costs at most `send_queue` bytes before its connection is closed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sipward_core::{ConnectionId, Flow, Transport};
use sipward_proto::framing::{Frame, StreamFault, StreamFramer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::limits::{CloseReason, ConnectionView, Origin, Refuse, StreamLimits, Usage};
use super::tls::TlsHolder;

/// Bytes read at a time while messages are arriving. Allocated when a read fills the
/// small buffer below and freed once no message is under way, so an idle connection
/// holds none.
const READ_CHUNK: usize = 1024;

/// Bytes read at a time while the connection is idle, in the task itself: enough for a
/// keepalive, and the first read of a message that then switches to [`READ_CHUNK`].
const IDLE_READ: usize = 64;

/// What the driver hears from the connections.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConnEvent {
    /// A complete message, with the flow to answer on.
    Message { flow: Flow, bytes: Vec<u8> },
    /// The connection is gone (its id is `flow.connection`). `unsent`: messages queued
    /// before it was ever established (a connection the gateway opened that failed),
    /// for the core to answer their senders.
    Closed {
        flow: Flow,
        reason: CloseReason,
        unsent: Vec<Vec<u8>>,
    },
}

/// What the driver tells a connection task.
#[derive(Debug)]
enum Command {
    Send(Vec<u8>),
    Close(CloseReason),
}

/// Per-connection figures for `/api/v1/connections`.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub messages_in: AtomicU64,
    /// Queued and not yet written.
    pub queued: AtomicUsize,
}

struct Handle {
    flow: Flow,
    commands: Arc<Mailbox>,
    stats: Arc<ConnStats>,
}

/// The driver's commands to one connection task. Lighter than an unbounded channel
/// (which allocates a block of slots per channel): an empty queue holds no allocation,
/// which matters with thousands of idle connections. Bounded by the send queue limit.
#[derive(Default)]
struct Mailbox {
    queue: Mutex<VecDeque<Command>>,
    ready: tokio::sync::Notify,
}

impl Mailbox {
    fn send(&self, command: Command) {
        lock(&self.queue).push_back(command);
        // Stores a permit when the task is not waiting: no command is missed.
        self.ready.notify_one();
    }

    async fn recv(&self) -> Command {
        loop {
            if let Some(command) = lock(&self.queue).pop_front() {
                return command;
            }
            self.ready.notified().await;
        }
    }
}

/// One row of `/api/v1/connections`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConnectionRow {
    pub flow: Flow,
    pub view: Option<ConnectionView>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub messages_in: u64,
    pub queued: usize,
}

/// The connection table and the limits, shared by the driver, the tasks and the reaper.
pub(crate) struct Hub {
    limits: Mutex<StreamLimits>,
    table: Mutex<HashMap<ConnectionId, Handle>>,
    next_id: AtomicU64,
    events: mpsc::Sender<ConnEvent>,
    max_message_len: usize,
    /// Names the gateway in the Warning of a 400 or 513 answer.
    agent: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing holding these locks can leave them half-updated: a poisoned one is usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    pub(crate) fn new(
        limits: StreamLimits,
        events: mpsc::Sender<ConnEvent>,
        max_message_len: usize,
        agent: &str,
    ) -> Arc<Self> {
        Arc::new(Self {
            limits: Mutex::new(limits),
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            events,
            max_message_len,
            agent: agent.to_string(),
        })
    }

    pub(crate) fn limits(&self) -> MutexGuard<'_, StreamLimits> {
        lock(&self.limits)
    }

    fn allocate_id(&self) -> ConnectionId {
        ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// An accepted TCP connection: admitted or refused (dropped at once, before any TLS),
    /// then served by its own task. `local` is the listener's address.
    pub(crate) fn accept(
        self: &Arc<Self>,
        stream: TcpStream,
        remote: SocketAddr,
        local: SocketAddr,
        tls: Option<Arc<TlsHolder>>,
    ) -> Result<ConnectionId, Refuse> {
        let id = self.allocate_id();
        self.limits()
            .admit(Instant::now(), id, remote.ip(), tls.is_some())?;
        let _ = stream.set_nodelay(true);
        let flow = stream_flow(tls.is_some(), local, remote, id);
        let (commands, stats) = self.register(flow);
        let hub = self.clone();
        tokio::spawn(async move {
            let (reason, unsent) = match tls {
                None => (hub.serve(flow, stream, commands, stats).await, Vec::new()),
                Some(holder) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(holder.current().server.clone());
                    let handshake = async move {
                        acceptor
                            .accept(stream)
                            .await
                            .map_err(|e| accept_close_reason(&e))
                    };
                    hub.handshake_then_serve(flow, handshake, commands, stats)
                        .await
                }
            };
            hub.finish(flow, reason, unsent).await;
        });
        Ok(id)
    }

    fn register(&self, flow: Flow) -> (Arc<Mailbox>, Arc<ConnStats>) {
        let commands = Arc::new(Mailbox::default());
        let stats = Arc::new(ConnStats::default());
        if let Some(id) = flow.connection {
            lock(&self.table).insert(
                id,
                Handle {
                    flow,
                    commands: commands.clone(),
                    stats: stats.clone(),
                },
            );
        }
        (commands, stats)
    }

    /// Waits for `handshake` (a TLS accept, or a connect and TLS handshake) while
    /// holding the sends that come meanwhile; what was never sent is returned with the
    /// reason when it fails.
    async fn handshake_then_serve<S, F>(
        &self,
        flow: Flow,
        handshake: F,
        commands: Arc<Mailbox>,
        stats: Arc<ConnStats>,
    ) -> (CloseReason, Vec<Vec<u8>>)
    where
        F: std::future::Future<Output = Result<S, CloseReason>>,
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let id = flow.connection.unwrap_or(ConnectionId(0));
        // Sends queued during the handshake wait for it.
        let mut early = Vec::new();
        // In a block of its own: the finished handshake's state (a whole TLS stream) is
        // then not kept in the task beside the stream it produced.
        let stream = {
            tokio::pin!(handshake);
            loop {
                tokio::select! {
                    done = &mut handshake => match done {
                        Ok(stream) => break stream,
                        Err(reason) => return (reason, early),
                    },
                    command = commands.recv() => match command {
                        Command::Send(bytes) => early.push(bytes),
                        Command::Close(reason) => return (reason, early),
                    },
                }
            }
        };
        self.limits().handshake_done(Instant::now(), id);
        self.run(flow, stream, commands, stats, early).await
    }

    async fn serve<S>(
        &self,
        flow: Flow,
        stream: S,
        commands: Arc<Mailbox>,
        stats: Arc<ConnStats>,
    ) -> CloseReason
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.run(flow, stream, commands, stats, Vec::new()).await.0
    }

    /// The connection's life after any handshake: until a verdict, a limit, the peer
    /// closing or the driver's close. With the reason, on a connection the gateway
    /// opened that closed before the peer sent anything, what was written on it: the
    /// peer refused it (a TLS server rejecting the client certificate says so only
    /// after the client's side of a TLS 1.3 handshake is done), so its requests are as
    /// undeliverable as if the connect had failed and their senders get an answer now.
    async fn run<S>(
        &self,
        flow: Flow,
        stream: S,
        commands: Arc<Mailbox>,
        stats: Arc<ConnStats>,
        early: Vec<Vec<u8>>,
    ) -> (CloseReason, Vec<Vec<u8>>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let id = flow.connection.unwrap_or(ConnectionId(0));
        // Bounded: a peer that answers nothing leaves no more than this many in memory.
        const UNANSWERED_KEPT: usize = 16;
        let mut unanswered: Vec<Vec<u8>> = Vec::new();
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut framer = StreamFramer::new(self.max_message_len);
        let mut queue: VecDeque<Vec<u8>> = early.into();
        // How much of the front buffer is already written.
        let mut written = 0usize;
        let mut small = [0u8; IDLE_READ];
        let mut big: Vec<u8> = Vec::new();
        let keepalive = self.keepalive(id);
        let opened_by_us = keepalive.is_some();
        let mut next_ping =
            keepalive.map(|(every, _)| tokio::time::Instant::now() + jittered(every, id));
        let mut pong_due: Option<tokio::time::Instant> = None;
        let reason = loop {
            let front = queue.front().and_then(|b| b.get(written..));
            let wake = pong_due.or(next_ping);
            let using_big = !big.is_empty();
            let room = if using_big { big.len() } else { IDLE_READ };
            tokio::select! {
                () = sleep_until_some(wake), if wake.is_some() => {
                    let now = tokio::time::Instant::now();
                    if pong_due.is_some_and(|due| due <= now) {
                        break CloseReason::KeepaliveTimeout;
                    }
                    if let Some((every, timeout)) = keepalive {
                        if self.carries_state(id) {
                            stats.queued.fetch_add(4, Ordering::Relaxed);
                            queue.push_back(b"\r\n\r\n".to_vec());
                            framer.expect_pong();
                            pong_due = Some(now + timeout);
                        }
                        next_ping = Some(now + jittered(every, id));
                    }
                }
                read = reader.read(if using_big { &mut big[..] } else { &mut small[..] }) => {
                    let n = match read {
                        Ok(0) => break CloseReason::PeerClosed,
                        Ok(n) => n,
                        Err(e) => break io_close_reason(&e),
                    };
                    stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    let data = if using_big { big.get(..n) } else { small.get(..n) };
                    match self.take(flow, &mut framer, data.unwrap_or_default(), &stats).await {
                        Ok((pongs, pong_seen)) => {
                            if n == room && !using_big {
                                big = vec![0u8; READ_CHUNK];
                            } else if using_big && n < room && framer.buffered() == 0 {
                                big = Vec::new();
                            }
                            if pong_seen {
                                pong_due = None;
                            }
                            for _ in 0..pongs {
                                stats.queued.fetch_add(2, Ordering::Relaxed);
                                queue.push_back(b"\r\n".to_vec());
                            }
                        }
                        Err((reason, answer)) => {
                            if let Some(answer) = answer {
                                queue.clear();
                                written = 0;
                                queue.push_back(answer);
                            }
                            break reason;
                        }
                    }
                }
                result = writer.write(front.unwrap_or_default()), if front.is_some() => {
                    match result {
                        Ok(0) => break CloseReason::IoError,
                        Err(e) => break io_close_reason(&e),
                        Ok(n) => {
                            stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                            written += n;
                            if queue.front().is_some_and(|b| written >= b.len()) {
                                let sent = queue.pop_front().unwrap_or_default();
                                let done = sent.len();
                                written = 0;
                                if opened_by_us
                                    && unanswered.len() < UNANSWERED_KEPT
                                    && stats.messages_in.load(Ordering::Relaxed) == 0
                                    && sent != b"\r\n\r\n"
                                {
                                    unanswered.push(sent);
                                }
                                let queued = release(&stats.queued, done);
                                let _ = self.limits().send_queued(Instant::now(), id, queued);
                            }
                        }
                    }
                }
                command = commands.recv() => match command {
                    Command::Send(bytes) => queue.push_back(bytes),
                    Command::Close(reason) => break reason,
                },
            }
        };
        // What is still queued goes out before the close, within a short bound: the last
        // answer (400/513) after a framing fault, or everything at the gateway's own close
        // (the BYEs of a shutdown). A peer that does not read it loses it.
        if matches!(
            reason,
            CloseReason::MissingContentLength | CloseReason::TooLarge | CloseReason::Local
        ) {
            let mut rest = Vec::new();
            for (i, bytes) in queue.iter().enumerate() {
                let from = if i == 0 { written } else { 0 };
                rest.extend_from_slice(bytes.get(from..).unwrap_or_default());
            }
            if !rest.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    writer.write_all(&rest).await?;
                    writer.flush().await
                })
                .await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
        let refused =
            stats.messages_in.load(Ordering::Relaxed) == 0 && reason != CloseReason::Local;
        if !refused {
            unanswered.clear();
        }
        (reason, unanswered)
    }

    /// Feeds read bytes to the framer: messages go to the driver, pings are counted and
    /// answered (how many pongs to queue), a fault ends the connection (with the answer
    /// to send first, if any).
    async fn take(
        &self,
        flow: Flow,
        framer: &mut StreamFramer,
        data: &[u8],
        stats: &ConnStats,
    ) -> Result<(usize, bool), (CloseReason, Option<Vec<u8>>)> {
        let id = flow.connection.unwrap_or(ConnectionId(0));
        let mut frames = Vec::new();
        framer.feed(data, |f| frames.push(f));
        let mut pongs = 0;
        let mut pong_seen = false;
        for frame in frames {
            let now = Instant::now();
            match frame {
                Frame::Message(message) => {
                    self.limits().message_complete(now, id);
                    stats.messages_in.fetch_add(1, Ordering::Relaxed);
                    // Waiting here when the driver is behind stops reading: TCP's own
                    // flow control then holds the peer back.
                    if self
                        .events
                        .send(ConnEvent::Message {
                            flow,
                            bytes: message.bytes,
                        })
                        .await
                        .is_err()
                    {
                        return Err((CloseReason::Local, None));
                    }
                }
                Frame::Ping => {
                    self.limits().ping(now, id).map_err(|r| (r, None))?;
                    pongs += 1;
                }
                Frame::Pong => pong_seen = true,
                Frame::Fault(fault) => {
                    let reason = match fault {
                        StreamFault::NotSip => CloseReason::Garbage,
                        StreamFault::MissingContentLength | StreamFault::BadContentLength => {
                            CloseReason::MissingContentLength
                        }
                        StreamFault::TooLarge => CloseReason::TooLarge,
                    };
                    return Err((reason, framer.answer(&self.agent)));
                }
            }
        }
        if framer.in_message() {
            self.limits().message_started(Instant::now(), id);
        }
        Ok((pongs, pong_seen))
    }

    /// The keepalive interval and pong timeout of a connection the gateway opened
    /// (None for an accepted one: its peer keeps its own NAT binding alive).
    fn keepalive(&self, id: ConnectionId) -> Option<(Duration, Duration)> {
        let limits = self.limits();
        let view = limits.view(Instant::now(), id)?;
        let settings = limits.settings();
        matches!(view.origin, Origin::Outbound { .. })
            .then_some((settings.keepalive_interval, settings.keepalive_timeout))
    }

    /// Whether a registration or a call uses the connection (only those are pinged).
    fn carries_state(&self, id: ConnectionId) -> bool {
        self.limits()
            .view(Instant::now(), id)
            .is_some_and(|v| v.usage != Usage::None)
    }

    /// The task ended: the table and the limits forget it (the reaper may have counted
    /// it already) and the driver hears of it.
    async fn finish(&self, flow: Flow, reason: CloseReason, unsent: Vec<Vec<u8>>) {
        if let Some(id) = flow.connection {
            lock(&self.table).remove(&id);
            self.limits().close(id, reason);
        }
        let _ = self
            .events
            .send(ConnEvent::Closed {
                flow,
                reason,
                unsent,
            })
            .await;
    }

    /// Opens a connection from the gateway's `local` address (its zone's; the port the
    /// kernel picks) to `remote`, TLS when `tls` gives the client configuration and the
    /// name the peer's certificate must carry. `first` is queued at once and sent when
    /// the connection is up. The connection is known under the returned id at once;
    /// failing, it ends with [`ConnEvent::Closed`] listing what was never sent.
    pub(crate) fn connect(
        self: &Arc<Self>,
        local: SocketAddr,
        remote: SocketAddr,
        tls: Option<(
            Arc<rustls::ClientConfig>,
            rustls_pki_types::ServerName<'static>,
        )>,
        first: Vec<u8>,
    ) -> Result<ConnectionId, Refuse> {
        let id = self.allocate_id();
        self.limits()
            .connecting(Instant::now(), id, remote.ip(), tls.is_some())?;
        let flow = stream_flow(tls.is_some(), local, remote, id);
        let (commands, stats) = self.register(flow);
        self.send(id, first);
        let hub = self.clone();
        tokio::spawn(async move {
            let establish = {
                let hub = hub.clone();
                async move {
                    let socket = match remote {
                        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
                    }
                    .map_err(|_| CloseReason::ConnectFailed)?;
                    socket
                        .bind(SocketAddr::new(local.ip(), 0))
                        .map_err(|_| CloseReason::ConnectFailed)?;
                    let stream = socket
                        .connect(remote)
                        .await
                        .map_err(|_| CloseReason::ConnectFailed)?;
                    let _ = stream.set_nodelay(true);
                    hub.limits().connected(Instant::now(), id);
                    let stream: Box<dyn Stream> = match tls {
                        None => Box::new(stream),
                        Some((config, name)) => Box::new(
                            tokio_rustls::TlsConnector::from(config)
                                .connect(name, stream)
                                .await
                                .map_err(|_| CloseReason::HandshakeFailed)?,
                        ),
                    };
                    Ok(stream)
                }
            };
            let (reason, unsent) = hub
                .handshake_then_serve(flow, establish, commands, stats)
                .await;
            hub.finish(flow, reason, unsent).await;
        });
        Ok(id)
    }

    /// Queues `bytes` on connection `id`. `false` if there is no such connection or the
    /// send queue overflowed (the connection is then being closed).
    pub(crate) fn send(&self, id: ConnectionId, bytes: Vec<u8>) -> bool {
        let table = lock(&self.table);
        let Some(handle) = table.get(&id) else {
            return false;
        };
        let queued = handle
            .stats
            .queued
            .fetch_add(bytes.len(), Ordering::Relaxed)
            + bytes.len();
        let commands = handle.commands.clone();
        drop(table);
        if let Err(reason) = self.limits().send_queued(Instant::now(), id, queued) {
            commands.send(Command::Close(reason));
            return false;
        }
        commands.send(Command::Send(bytes));
        true
    }

    /// Asks connection `id` to close.
    pub(crate) fn close(&self, id: ConnectionId, reason: CloseReason) {
        if let Some(handle) = lock(&self.table).get(&id) {
            handle.commands.send(Command::Close(reason));
        }
    }

    /// Closes what the limits' deadlines say is due; returns when to look again.
    pub(crate) fn reap(&self, now: Instant) -> Option<Instant> {
        let due = self.limits().on_timeout(now);
        if !due.is_empty() {
            let table = lock(&self.table);
            for (id, reason) in due {
                if let Some(handle) = table.get(&id) {
                    handle.commands.send(Command::Close(reason));
                }
            }
        }
        self.limits().next_deadline()
    }

    /// Runs [`Hub::reap`] for ever; looks at least every 250 ms, since new deadlines
    /// may come before the one it sleeps toward.
    pub(crate) async fn reaper(self: Arc<Self>) {
        loop {
            let now = Instant::now();
            let next = self.reap(now);
            let cap = now + Duration::from_millis(250);
            let wake = next.map_or(cap, |n| n.min(cap));
            tokio::time::sleep_until(tokio::time::Instant::from_std(wake)).await;
        }
    }

    /// The open connections, for the admin API.
    pub(crate) fn rows(&self) -> Vec<ConnectionRow> {
        let now = Instant::now();
        let handles: Vec<(Flow, Arc<ConnStats>)> = lock(&self.table)
            .values()
            .map(|h| (h.flow, h.stats.clone()))
            .collect();
        let limits = self.limits();
        let mut rows: Vec<ConnectionRow> = handles
            .into_iter()
            .map(|(flow, stats)| ConnectionRow {
                view: flow.connection.and_then(|id| limits.view(now, id)),
                flow,
                bytes_in: stats.bytes_in.load(Ordering::Relaxed),
                bytes_out: stats.bytes_out.load(Ordering::Relaxed),
                messages_in: stats.messages_in.load(Ordering::Relaxed),
                queued: stats.queued.load(Ordering::Relaxed),
            })
            .collect();
        rows.sort_by_key(|r| r.flow.connection);
        rows
    }
}

/// `every`, less up to a fifth of it (spread by connection), so that the pings of
/// connections opened together do not stay together (RFC 5626 4.4.1).
fn jittered(every: Duration, id: ConnectionId) -> Duration {
    let spread = id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58; // 0..=63
    every.saturating_sub(every / 5 * u32::try_from(spread).unwrap_or(0) / 63)
}

/// Sleeps until `at` (for ever without one; the select branch is off then anyway).
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A plain or TLS byte stream, whichever a connection turned out to be.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A read or write error as a close reason: a peer that went away (a reset, or a TLS
/// peer closing without close_notify, as most phones do) is an ordinary end, not a fault.
fn io_close_reason(e: &std::io::Error) -> CloseReason {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::BrokenPipe => CloseReason::PeerClosed,
        _ => CloseReason::IoError,
    }
}

/// Why an inbound TLS handshake ended. A peer that resets or leaves during it (a health
/// check that connects and closes; a client that completes the handshake and drops before
/// the session tickets are written, as `openssl s_time` does) closed an ordinary
/// connection; only a TLS error (an alert, bytes that are not TLS, a refused
/// certificate) is a failed handshake and a security event.
fn accept_close_reason(e: &std::io::Error) -> CloseReason {
    match io_close_reason(e) {
        CloseReason::PeerClosed => CloseReason::PeerClosed,
        _ => CloseReason::HandshakeFailed,
    }
}

/// Takes `n` written bytes off a queued count; returns what is left.
fn release(queued: &AtomicUsize, n: usize) -> usize {
    let before = queued
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
            Some(q.saturating_sub(n))
        })
        .unwrap_or_else(|q| q);
    before.saturating_sub(n)
}

/// The flow of a stream connection, accepted or opened.
fn stream_flow(tls: bool, local: SocketAddr, remote: SocketAddr, id: ConnectionId) -> Flow {
    Flow {
        transport: if tls { Transport::Tls } else { Transport::Tcp },
        local,
        remote,
        connection: Some(id),
        intercepted: false,
    }
}

#[cfg(test)]
mod tests;
