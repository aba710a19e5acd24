//! The limits a stream peer is held to (`[transport]`), as a pure state machine on time
//! passed in: which connections are admitted, and when each must be closed. The driver
//! asks [`StreamLimits::admit`] before it spends anything on a new connection (before
//! the TLS handshake), tells it what happens on each connection, sleeps until
//! [`StreamLimits::next_deadline`] and closes what [`StreamLimits::on_timeout`] returns.
//!
//! Every refusal and close is counted by reason for `/metrics` and events.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Deserialize;
use sipward_core::ConnectionId;

/// `[transport]`: every key optional; times in seconds (fractions allowed).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct TransportSettings {
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub new_connections_per_second: Option<f64>,
    pub new_connections_burst: Option<f64>,
    pub ban_time: Option<f64>,
    pub max_handshakes: Option<usize>,
    pub tls_handshake_timeout: Option<f64>,
    pub first_message_timeout: Option<f64>,
    pub message_timeout: Option<f64>,
    pub idle_timeout: Option<f64>,
    pub send_queue: Option<usize>,
    pub send_timeout: Option<f64>,
    pub connect_timeout: Option<f64>,
    pub max_pings_per_second: Option<u32>,
    pub keepalive_interval: Option<f64>,
    pub keepalive_timeout: Option<f64>,
    /// The path MTU toward UDP next hops: requests over `udp_mtu - 200` bytes go over
    /// TCP where the next hop takes it (RFC 3261 18.1.1; default 1500).
    pub udp_mtu: Option<usize>,
}

/// The limits in force.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LimitSettings {
    pub max_connections: usize,
    pub max_connections_per_source: usize,
    /// Sources free of the per-source cap and rate (load balancers, the proxy).
    pub exempt: Vec<IpNet>,
    pub new_connections_per_second: f64,
    pub new_connections_burst: f64,
    /// How long a source that exceeded its connection rate is refused.
    pub ban_time: Duration,
    pub max_handshakes: usize,
    pub tls_handshake_timeout: Duration,
    pub first_message_timeout: Duration,
    /// From a message's first byte to its last (slowloris).
    pub message_timeout: Duration,
    pub idle_timeout: Duration,
    /// Bytes waiting to be written to one connection.
    pub send_queue: usize,
    /// How long queued bytes may wait for the peer to read them.
    pub send_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_pings_per_second: u32,
    /// The gateway pings the connections it opened that carry a registration or a call
    /// this often (with jitter, RFC 5626 4.4.1) ...
    pub keepalive_interval: Duration,
    /// ... and closes one whose pong does not come in this long.
    pub keepalive_timeout: Duration,
}

/// Added to a binding's expiry while a registration uses the connection (RFC 5626's
/// phones refresh just before expiry).
const BINDING_GRACE: Duration = Duration::from_secs(30);

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_source: 32,
            exempt: Vec::new(),
            new_connections_per_second: 10.0,
            new_connections_burst: 30.0,
            ban_time: Duration::from_secs(60),
            max_handshakes: 256,
            tls_handshake_timeout: Duration::from_secs(5),
            first_message_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            send_queue: 256 * 1024,
            send_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_pings_per_second: 10,
            keepalive_interval: Duration::from_secs(90),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl LimitSettings {
    /// The settings of a `[transport]` table over the defaults; `what` prefixes errors.
    pub(crate) fn from_table(t: &TransportSettings, exempt: Vec<IpNet>) -> Result<Self, String> {
        let d = Self::default();
        let seconds = |key: &str, v: Option<f64>, default: Duration| -> Result<Duration, String> {
            match v {
                None => Ok(default),
                Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => {
                    Ok(Duration::from_secs_f64(s))
                }
                Some(s) => Err(format!(
                    "transport {key} = {s}: must be over 0 and at most 86400 seconds"
                )),
            }
        };
        let count = |key: &str, v: Option<usize>, default: usize| -> Result<usize, String> {
            match v {
                None => Ok(default),
                Some(0) => Err(format!("transport {key} = 0: must be at least 1")),
                Some(n) => Ok(n),
            }
        };
        let rate = |key: &str, v: Option<f64>, default: f64| -> Result<f64, String> {
            match v {
                None => Ok(default),
                Some(r) if r.is_finite() && r > 0.0 => Ok(r),
                Some(r) => Err(format!("transport {key} = {r}: must be over 0")),
            }
        };
        let send_queue = count("send_queue", t.send_queue, d.send_queue)?;
        if send_queue < 4096 {
            return Err(format!("transport send_queue = {send_queue}: must be at least 4096 bytes (one large message)"));
        }
        let per_second = rate(
            "new_connections_per_second",
            t.new_connections_per_second,
            d.new_connections_per_second,
        )?;
        let burst = rate(
            "new_connections_burst",
            t.new_connections_burst,
            d.new_connections_burst.max(per_second),
        )?;
        if burst < 1.0 {
            return Err(format!(
                "transport new_connections_burst = {burst}: must be at least 1"
            ));
        }
        Ok(Self {
            max_connections: count("max_connections", t.max_connections, d.max_connections)?,
            max_connections_per_source: count(
                "max_connections_per_source",
                t.max_connections_per_source,
                d.max_connections_per_source,
            )?,
            exempt,
            new_connections_per_second: per_second,
            new_connections_burst: burst,
            ban_time: seconds("ban_time", t.ban_time, d.ban_time)?,
            max_handshakes: count("max_handshakes", t.max_handshakes, d.max_handshakes)?,
            tls_handshake_timeout: seconds(
                "tls_handshake_timeout",
                t.tls_handshake_timeout,
                d.tls_handshake_timeout,
            )?,
            first_message_timeout: seconds(
                "first_message_timeout",
                t.first_message_timeout,
                d.first_message_timeout,
            )?,
            message_timeout: seconds("message_timeout", t.message_timeout, d.message_timeout)?,
            idle_timeout: seconds("idle_timeout", t.idle_timeout, d.idle_timeout)?,
            send_queue,
            send_timeout: seconds("send_timeout", t.send_timeout, d.send_timeout)?,
            connect_timeout: seconds("connect_timeout", t.connect_timeout, d.connect_timeout)?,
            max_pings_per_second: match t.max_pings_per_second {
                Some(0) => {
                    return Err("transport max_pings_per_second = 0: must be at least 1".into())
                }
                Some(n) => n,
                None => d.max_pings_per_second,
            },
            keepalive_interval: seconds(
                "keepalive_interval",
                t.keepalive_interval,
                d.keepalive_interval,
            )?,
            keepalive_timeout: seconds(
                "keepalive_timeout",
                t.keepalive_timeout,
                d.keepalive_timeout,
            )?,
        })
    }
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refuse {
    /// `max_connections` are open.
    TotalCap,
    /// The source has `max_connections_per_source` open.
    SourceCap,
    /// The source opened connections faster than its rate and burst: now banned.
    Rate,
    /// The source is banned (it exceeded its rate earlier).
    Banned,
    /// `max_handshakes` TLS handshakes are under way.
    Handshakes,
    /// The table of sources is full of sources still remembered (a flood from many).
    Sources,
}

impl Refuse {
    pub(crate) const ALL: [Refuse; 6] = [
        Refuse::TotalCap,
        Refuse::SourceCap,
        Refuse::Rate,
        Refuse::Banned,
        Refuse::Handshakes,
        Refuse::Sources,
    ];

    /// The counter's and event's name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Refuse::TotalCap => "max_connections",
            Refuse::SourceCap => "max_connections_per_source",
            Refuse::Rate => "connection_rate",
            Refuse::Banned => "banned",
            Refuse::Handshakes => "max_handshakes",
            Refuse::Sources => "tracked_sources",
        }
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CloseReason {
    HandshakeTimeout,
    HandshakeFailed,
    FirstMessageTimeout,
    /// A message took longer than `message_timeout` from first byte to last.
    MessageTimeout,
    Idle,
    /// More queued than `send_queue`.
    SendQueueFull,
    /// Queued bytes not taken by the peer within `send_timeout`.
    SendTimeout,
    ConnectTimeout,
    ConnectFailed,
    PingStorm,
    /// The gateway's keepalive ping went unanswered.
    KeepaliveTimeout,
    /// The framer's verdict: a message without Content-Length (answered 400).
    MissingContentLength,
    /// The framer's verdict: a message over `max_message_len` (answered 513).
    TooLarge,
    /// Bytes that are not SIP.
    Garbage,
    /// The peer closed or reset it.
    PeerClosed,
    /// A write or read failed.
    IoError,
    /// The gateway no longer needs it (shutdown, the core's decision).
    Local,
}

impl CloseReason {
    pub(crate) const ALL: [CloseReason; 17] = [
        CloseReason::HandshakeTimeout,
        CloseReason::HandshakeFailed,
        CloseReason::FirstMessageTimeout,
        CloseReason::MessageTimeout,
        CloseReason::Idle,
        CloseReason::SendQueueFull,
        CloseReason::SendTimeout,
        CloseReason::ConnectTimeout,
        CloseReason::ConnectFailed,
        CloseReason::PingStorm,
        CloseReason::KeepaliveTimeout,
        CloseReason::MissingContentLength,
        CloseReason::TooLarge,
        CloseReason::Garbage,
        CloseReason::PeerClosed,
        CloseReason::IoError,
        CloseReason::Local,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            CloseReason::HandshakeTimeout => "tls_handshake_timeout",
            CloseReason::HandshakeFailed => "tls_handshake_failed",
            CloseReason::FirstMessageTimeout => "first_message_timeout",
            CloseReason::MessageTimeout => "message_timeout",
            CloseReason::Idle => "idle_timeout",
            CloseReason::SendQueueFull => "send_queue_full",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::PingStorm => "ping_storm",
            CloseReason::KeepaliveTimeout => "keepalive_timeout",
            CloseReason::MissingContentLength => "missing_content_length",
            CloseReason::TooLarge => "message_too_large",
            CloseReason::Garbage => "not_sip",
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::IoError => "io_error",
            CloseReason::Local => "local",
        }
    }

    /// A limit or a misbehaving peer (a security event), rather than an ordinary end.
    pub(crate) fn is_violation(self) -> bool {
        !matches!(
            self,
            CloseReason::PeerClosed
                | CloseReason::Local
                | CloseReason::Idle
                | CloseReason::ConnectFailed
        )
    }
}

/// Who opened a connection and whether it is TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Accepted from a peer.
    Inbound { tls: bool },
    /// Opened by the gateway.
    Outbound { tls: bool },
}

/// What keeps a connection wanted beyond its idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usage {
    None,
    /// A registration binding made over this connection expires then.
    Binding(Instant),
    /// A dialog's party is on this flow: no idle timeout.
    Dialog,
}

impl Usage {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Usage::None => "none",
            Usage::Binding(_) => "binding",
            Usage::Dialog => "dialog",
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Connecting,
    Handshaking,
    /// Up; no message complete yet (pings do not count).
    AwaitingFirstMessage,
    Open,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Handshaking => "handshaking",
            Phase::AwaitingFirstMessage => "awaiting_first_message",
            Phase::Open => "open",
        }
    }
}

#[derive(Debug, Clone)]
struct Connection {
    source: IpAddr,
    opened: Instant,
    origin: Origin,
    phase: Phase,
    /// When the current phase's deadline started (accept, connect, handshake end).
    phase_since: Instant,
    /// The first byte of an incomplete message arrived then.
    message_since: Option<Instant>,
    last_activity: Instant,
    usage: Usage,
    /// Bytes have waited in the send queue since then.
    send_pending_since: Option<Instant>,
    ping_window: Instant,
    pings_in_window: u32,
    /// Counted against the source's cap (inbound, not exempt).
    per_source: bool,
    /// The deadline as indexed in `deadlines`.
    deadline: Option<(Instant, CloseReason)>,
}

#[derive(Debug, Clone)]
struct Source {
    open: usize,
    tokens: f64,
    refilled: Instant,
    banned_until: Option<Instant>,
}

/// The admission state and every connection's deadlines.
#[derive(Debug)]
pub(crate) struct StreamLimits {
    settings: LimitSettings,
    connections: HashMap<ConnectionId, Connection>,
    deadlines: BTreeSet<(Instant, ConnectionId)>,
    sources: HashMap<IpAddr, Source>,
    handshakes: usize,
    refused: HashMap<Refuse, u64>,
    closed: HashMap<CloseReason, u64>,
}

/// What the admin API shows of one connection.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConnectionView {
    pub id: ConnectionId,
    pub source: IpAddr,
    pub origin: Origin,
    pub phase: Phase,
    pub age: Duration,
    pub usage: Usage,
}

impl StreamLimits {
    pub(crate) fn new(settings: LimitSettings) -> Self {
        Self {
            settings,
            connections: HashMap::new(),
            deadlines: BTreeSet::new(),
            sources: HashMap::new(),
            handshakes: 0,
            refused: HashMap::new(),
            closed: HashMap::new(),
        }
    }

    pub(crate) fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    /// New limits from a reload; open connections keep going under them.
    pub(crate) fn set_settings(&mut self, settings: LimitSettings, now: Instant) {
        self.settings = settings;
        let ids: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for id in ids {
            self.reschedule(id, now);
        }
    }

    /// Most sources remembered at once: enough for every connection and the recent
    /// flooders, bounded whatever the number of addresses a flood comes from.
    fn max_sources(&self) -> usize {
        self.settings.max_connections.saturating_mul(4).max(65_536)
    }

    fn is_exempt(&self, source: IpAddr) -> bool {
        self.settings.exempt.iter().any(|n| n.contains(&source))
    }

    /// A connection from `source` asks to be accepted (before any handshake). Admitted,
    /// it is tracked under `id` from `now`.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        id: ConnectionId,
        source: IpAddr,
        tls: bool,
    ) -> Result<(), Refuse> {
        let verdict = self.check_admission(now, source, tls);
        if let Err(reason) = verdict {
            *self.refused.entry(reason).or_insert(0) += 1;
            return Err(reason);
        }
        let per_source = !self.is_exempt(source);
        if per_source {
            if let Some(s) = self.sources.get_mut(&source) {
                s.open += 1;
            }
        }
        let phase = if tls {
            self.handshakes += 1;
            Phase::Handshaking
        } else {
            Phase::AwaitingFirstMessage
        };
        self.insert(now, id, source, Origin::Inbound { tls }, phase, per_source);
        Ok(())
    }

    fn check_admission(&mut self, now: Instant, source: IpAddr, tls: bool) -> Result<(), Refuse> {
        if self.connections.len() >= self.settings.max_connections {
            return Err(Refuse::TotalCap);
        }
        if tls && self.handshakes >= self.settings.max_handshakes {
            return Err(Refuse::Handshakes);
        }
        if self.is_exempt(source) {
            return Ok(());
        }
        if !self.sources.contains_key(&source) {
            if self.sources.len() >= self.max_sources() {
                self.forget_quiet_sources(now);
            }
            if self.sources.len() >= self.max_sources() {
                return Err(Refuse::Sources);
            }
            self.sources.insert(
                source,
                Source {
                    open: 0,
                    tokens: self.settings.new_connections_burst,
                    refilled: now,
                    banned_until: None,
                },
            );
        }
        let settings = &self.settings;
        let Some(s) = self.sources.get_mut(&source) else {
            return Err(Refuse::Sources);
        };
        if let Some(until) = s.banned_until {
            if now < until {
                return Err(Refuse::Banned);
            }
            s.banned_until = None;
        }
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * settings.new_connections_per_second)
            .min(settings.new_connections_burst);
        s.refilled = now;
        if s.tokens < 1.0 {
            s.banned_until = Some(now + settings.ban_time);
            return Err(Refuse::Rate);
        }
        // Every attempt is charged, refused or not: a source that keeps its cap full
        // and goes on connecting is a flood too.
        s.tokens -= 1.0;
        if s.open >= settings.max_connections_per_source {
            return Err(Refuse::SourceCap);
        }
        Ok(())
    }

    /// Drops sources with nothing open, no ban and a bucket full again: they would be
    /// recreated exactly as they are.
    fn forget_quiet_sources(&mut self, now: Instant) {
        let settings = &self.settings;
        self.sources.retain(|_, s| {
            let tokens = s.tokens
                + now.saturating_duration_since(s.refilled).as_secs_f64()
                    * settings.new_connections_per_second;
            s.open > 0
                || s.banned_until.is_some_and(|u| now < u)
                || tokens < settings.new_connections_burst
        });
    }

    /// The gateway starts opening a connection to `remote` (not subject to the
    /// per-source limits; still counted in `max_connections`).
    pub(crate) fn connecting(
        &mut self,
        now: Instant,
        id: ConnectionId,
        remote: IpAddr,
        tls: bool,
    ) -> Result<(), Refuse> {
        if self.connections.len() >= self.settings.max_connections {
            *self.refused.entry(Refuse::TotalCap).or_insert(0) += 1;
            return Err(Refuse::TotalCap);
        }
        self.insert(
            now,
            id,
            remote,
            Origin::Outbound { tls },
            Phase::Connecting,
            false,
        );
        Ok(())
    }

    /// An outgoing connection is established: a TLS one now handshakes.
    pub(crate) fn connected(&mut self, now: Instant, id: ConnectionId) {
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        if c.phase != Phase::Connecting {
            return;
        }
        c.phase_since = now;
        c.last_activity = now;
        // The gateway's own connection carries what it sends next: no first-message wait.
        c.phase = if matches!(c.origin, Origin::Outbound { tls: true }) {
            self.handshakes += 1;
            Phase::Handshaking
        } else {
            Phase::Open
        };
        self.reschedule(id, now);
    }

    /// The TLS handshake finished.
    pub(crate) fn handshake_done(&mut self, now: Instant, id: ConnectionId) {
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        if c.phase != Phase::Handshaking {
            return;
        }
        self.handshakes = self.handshakes.saturating_sub(1);
        c.phase_since = now;
        c.last_activity = now;
        c.phase = match c.origin {
            Origin::Inbound { .. } => Phase::AwaitingFirstMessage,
            Origin::Outbound { .. } => Phase::Open,
        };
        self.reschedule(id, now);
    }

    fn insert(
        &mut self,
        now: Instant,
        id: ConnectionId,
        source: IpAddr,
        origin: Origin,
        phase: Phase,
        per_source: bool,
    ) {
        if self.connections.contains_key(&id) {
            self.forget(id);
        }
        self.connections.insert(
            id,
            Connection {
                source,
                opened: now,
                origin,
                phase,
                phase_since: now,
                message_since: None,
                last_activity: now,
                usage: Usage::None,
                send_pending_since: None,
                ping_window: now,
                pings_in_window: 0,
                per_source,
                deadline: None,
            },
        );
        self.reschedule(id, now);
    }

    /// Bytes of a message arrived but it is not complete: its clock starts (once).
    pub(crate) fn message_started(&mut self, now: Instant, id: ConnectionId) {
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        if c.message_since.is_none() {
            c.message_since = Some(now);
            self.reschedule(id, now);
        }
    }

    /// A whole message arrived.
    pub(crate) fn message_complete(&mut self, now: Instant, id: ConnectionId) {
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        c.message_since = None;
        c.last_activity = now;
        if c.phase == Phase::AwaitingFirstMessage {
            c.phase = Phase::Open;
        }
        self.reschedule(id, now);
    }

    /// A CRLFCRLF keepalive arrived: it keeps the connection from idling, does not count
    /// as the first message, and too many in a second close it.
    pub(crate) fn ping(&mut self, now: Instant, id: ConnectionId) -> Result<(), CloseReason> {
        let max = self.settings.max_pings_per_second;
        let Some(c) = self.connections.get_mut(&id) else {
            return Ok(());
        };
        if now.saturating_duration_since(c.ping_window) >= Duration::from_secs(1) {
            c.ping_window = now;
            c.pings_in_window = 0;
        }
        c.pings_in_window += 1;
        if c.pings_in_window > max {
            self.close(id, CloseReason::PingStorm);
            return Err(CloseReason::PingStorm);
        }
        c.last_activity = now;
        self.reschedule(id, now);
        Ok(())
    }

    /// The send queue now holds `queued` bytes. Over `send_queue` the connection is
    /// closed; while anything is queued, `send_timeout` runs from when it first was.
    pub(crate) fn send_queued(
        &mut self,
        now: Instant,
        id: ConnectionId,
        queued: usize,
    ) -> Result<(), CloseReason> {
        let limit = self.settings.send_queue;
        let Some(c) = self.connections.get_mut(&id) else {
            return Ok(());
        };
        if queued > limit {
            self.close(id, CloseReason::SendQueueFull);
            return Err(CloseReason::SendQueueFull);
        }
        let pending = queued > 0;
        if pending != c.send_pending_since.is_some() {
            c.send_pending_since = pending.then_some(now);
            self.reschedule(id, now);
        }
        Ok(())
    }

    /// What the core knows keeps this connection in use.
    pub(crate) fn set_usage(&mut self, now: Instant, id: ConnectionId, usage: Usage) {
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        if c.usage != usage {
            c.usage = usage;
            self.reschedule(id, now);
        }
    }

    /// The connection ended for `reason`: counted and forgotten.
    pub(crate) fn close(&mut self, id: ConnectionId, reason: CloseReason) -> bool {
        if self.forget(id) {
            *self.closed.entry(reason).or_insert(0) += 1;
            true
        } else {
            false
        }
    }

    fn forget(&mut self, id: ConnectionId) -> bool {
        let Some(c) = self.connections.remove(&id) else {
            return false;
        };
        if let Some((at, _)) = c.deadline {
            self.deadlines.remove(&(at, id));
        }
        if c.phase == Phase::Handshaking {
            self.handshakes = self.handshakes.saturating_sub(1);
        }
        if c.per_source {
            if let Some(s) = self.sources.get_mut(&c.source) {
                s.open = s.open.saturating_sub(1);
            }
        }
        true
    }

    /// The earliest time a connection must be closed, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Closes (forgets and counts) every connection whose deadline has come.
    pub(crate) fn on_timeout(&mut self, now: Instant) -> Vec<(ConnectionId, CloseReason)> {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let reason = self
                .connections
                .get(&id)
                .and_then(|c| c.deadline)
                .map(|(_, r)| r);
            if let Some(reason) = reason {
                if let Some(c) = self.connections.get_mut(&id) {
                    c.deadline = None;
                }
                self.close(id, reason);
                due.push((id, reason));
            }
        }
        due
    }

    fn reschedule(&mut self, id: ConnectionId, _now: Instant) {
        let settings = &self.settings;
        let Some(c) = self.connections.get_mut(&id) else {
            return;
        };
        let mut earliest: Option<(Instant, CloseReason)> = None;
        let mut consider = |at: Instant, reason: CloseReason| {
            if earliest.is_none_or(|(e, _)| at < e) {
                earliest = Some((at, reason));
            }
        };
        match c.phase {
            Phase::Connecting => consider(
                c.phase_since + settings.connect_timeout,
                CloseReason::ConnectTimeout,
            ),
            Phase::Handshaking => consider(
                c.phase_since + settings.tls_handshake_timeout,
                CloseReason::HandshakeTimeout,
            ),
            Phase::AwaitingFirstMessage => consider(
                c.phase_since + settings.first_message_timeout,
                CloseReason::FirstMessageTimeout,
            ),
            Phase::Open => {}
        }
        if let Some(since) = c.message_since {
            consider(
                since + settings.message_timeout,
                CloseReason::MessageTimeout,
            );
        }
        if let Some(since) = c.send_pending_since {
            consider(since + settings.send_timeout, CloseReason::SendTimeout);
        }
        if matches!(c.phase, Phase::Open | Phase::AwaitingFirstMessage) {
            let idle = match c.usage {
                Usage::None => Some(c.last_activity + settings.idle_timeout),
                Usage::Binding(until) => {
                    Some((c.last_activity + settings.idle_timeout).max(until + BINDING_GRACE))
                }
                Usage::Dialog => None,
            };
            if let Some(at) = idle {
                consider(at, CloseReason::Idle);
            }
        }
        if c.deadline != earliest {
            if let Some((at, _)) = c.deadline {
                self.deadlines.remove(&(at, id));
            }
            if let Some((at, _)) = earliest {
                self.deadlines.insert((at, id));
            }
            c.deadline = earliest;
        }
    }

    /// Connections open now (all phases).
    pub(crate) fn open_connections(&self) -> usize {
        self.connections.len()
    }

    pub(crate) fn handshakes_in_progress(&self) -> usize {
        self.handshakes
    }

    /// Open connections from one source that count against its cap.
    #[cfg(test)]
    pub(crate) fn open_from(&self, source: IpAddr) -> usize {
        self.sources.get(&source).map_or(0, |s| s.open)
    }

    #[cfg(test)]
    pub(crate) fn is_banned(&self, now: Instant, source: IpAddr) -> bool {
        self.sources
            .get(&source)
            .and_then(|s| s.banned_until)
            .is_some_and(|u| now < u)
    }

    pub(crate) fn view(&self, now: Instant, id: ConnectionId) -> Option<ConnectionView> {
        self.connections.get(&id).map(|c| ConnectionView {
            id,
            source: c.source,
            origin: c.origin,
            phase: c.phase,
            age: now.saturating_duration_since(c.opened),
            usage: c.usage,
        })
    }

    /// Refusals so far, by reason, every reason listed.
    pub(crate) fn refused_counts(&self) -> Vec<(&'static str, u64)> {
        Refuse::ALL
            .iter()
            .map(|r| (r.name(), self.refused.get(r).copied().unwrap_or(0)))
            .collect()
    }

    /// Closes so far, by reason, every reason listed.
    pub(crate) fn closed_counts(&self) -> Vec<(&'static str, u64)> {
        CloseReason::ALL
            .iter()
            .map(|r| (r.name(), self.closed.get(r).copied().unwrap_or(0)))
            .collect()
    }

    #[cfg(test)]
    pub(crate) fn refused(&self, reason: Refuse) -> u64 {
        self.refused.get(&reason).copied().unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn closed(&self, reason: CloseReason) -> u64 {
        self.closed.get(&reason).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
