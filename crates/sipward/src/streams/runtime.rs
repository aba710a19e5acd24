//! The stream side of the driver: a TCP listener per `tcp`/`tls` service on each
//! interface, the connections the gateway opens (reused per zone, peer and transport,
//! RFC 5923's spirit without `alias`), and the glue to the core: messages and connection
//! ends become [`Gateway`] inputs, the core's stream [`Transmit`]s go to their
//! connection or open one.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use sipward_core::{
    ConnectionId, ConnectionUse, EventKind, Gateway, SecurityEvent, Transmit, Transport,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::conn::{ConnEvent, Hub};
use super::limits::{CloseReason, LimitSettings, Origin, Refuse, StreamLimits, Usage};
use super::tls::{server_name, TlsHolder};

/// Events waiting for the driver's log, at most; a flood's beyond are counted only.
const MAX_PENDING_EVENTS: usize = 1024;
/// Messages and closes queued from the connection tasks to the driver.
const EVENT_QUEUE: usize = 4096;

/// A stream listener to open.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSpec {
    /// The interface's address and the service's port.
    pub local: SocketAddr,
    pub transport: Transport,
}

/// What the stream side needs at start.
pub(crate) struct StreamSetup {
    pub listeners: Vec<ListenerSpec>,
    /// Each interface's TLS, by its address: the listener's certificate and the client
    /// configuration for connections the gateway opens from there.
    pub tls: HashMap<IpAddr, Arc<TlsHolder>>,
    /// The name a peer's certificate must carry (address objects' `server_name`); the
    /// peer's IP address otherwise (an IP SAN).
    pub server_names: HashMap<SocketAddr, String>,
    pub limits: LimitSettings,
    pub max_message_len: usize,
    pub agent: String,
}

/// Security events from the stream side, waiting for the driver.
#[derive(Default)]
struct PendingEvents {
    events: VecDeque<SecurityEvent>,
    dropped: u64,
}

/// The running stream side.
pub(crate) struct StreamRuntime {
    hub: Arc<Hub>,
    events: mpsc::Receiver<ConnEvent>,
    listeners: Vec<(SocketAddr, Transport)>,
    tls: HashMap<IpAddr, Arc<TlsHolder>>,
    server_names: HashMap<SocketAddr, String>,
    /// Connections the gateway opened, by (own address, peer, transport).
    pool: HashMap<(IpAddr, SocketAddr, Transport), ConnectionId>,
    security: Arc<Mutex<PendingEvents>>,
    /// Connections a message crossed since the core was last asked what keeps them
    /// wanted (a binding or a dialog may have begun or ended with it).
    touched: Vec<ConnectionId>,
}

fn push_event(pending: &Mutex<PendingEvents>, kind: EventKind, source: IpAddr, reason: String) {
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    if p.events.len() >= MAX_PENDING_EVENTS {
        p.dropped += 1;
        return;
    }
    p.events.push_back(SecurityEvent {
        at: Instant::now(),
        kind,
        source,
        user: None,
        method: None,
        reason,
    });
}

/// Binds a stream listener: address reuse (a restart while old connections linger in
/// TIME_WAIT), IPv6 only on an IPv6 address.
fn bind_listener(local: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl StreamRuntime {
    /// Binds every listener and starts accepting and the limits' reaper.
    pub(crate) async fn start(setup: StreamSetup) -> Result<Self> {
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let hub = Hub::new(
            StreamLimits::new(setup.limits),
            tx,
            setup.max_message_len,
            &setup.agent,
        );
        let security = Arc::new(Mutex::new(PendingEvents::default()));
        let mut listeners = Vec::new();
        for spec in &setup.listeners {
            let tls = match spec.transport {
                Transport::Tls => {
                    Some(setup.tls.get(&spec.local.ip()).cloned().with_context(|| {
                        format!(
                            "{}: a tls service needs the interface's `tls` table",
                            spec.local
                        )
                    })?)
                }
                _ => None,
            };
            let listener = bind_listener(spec.local).with_context(|| {
                format!(
                    "cannot listen on {} ({})",
                    spec.local,
                    spec.transport.via_token()
                )
            })?;
            let local = listener.local_addr().unwrap_or(spec.local);
            listeners.push((local, spec.transport));
            let hub = hub.clone();
            let security = security.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, remote)) => {
                            if let Err(refused) = hub.accept(stream, remote, local, tls.clone()) {
                                // Refused sockets are dropped at once: closed before TLS.
                                if refused != Refuse::Banned {
                                    let kind = if refused == Refuse::Rate {
                                        EventKind::Banned
                                    } else {
                                        EventKind::Overload
                                    };
                                    push_event(
                                        &security,
                                        kind,
                                        remote.ip(),
                                        format!("stream connection refused: {}", refused.name()),
                                    );
                                }
                            }
                        }
                        Err(e) => {
                            // Out of descriptors, most likely: let some close first.
                            tracing::warn!(%local, "accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        tokio::spawn(hub.clone().reaper());
        Ok(Self {
            hub,
            events,
            listeners,
            tls: setup.tls,
            server_names: setup.server_names,
            pool: HashMap::new(),
            security,
            touched: Vec::new(),
        })
    }

    /// The listeners' addresses (the port the kernel chose for a port 0).
    pub(crate) fn listeners(&self) -> &[(SocketAddr, Transport)] {
        &self.listeners
    }

    /// New `[transport]` limits from a reload.
    pub(crate) fn set_limits(&self, limits: LimitSettings) {
        self.hub.limits().set_settings(limits, Instant::now());
    }

    /// The next message or close from a connection (a close leaves the pool and, for
    /// a limit or a misbehaving peer, raises a security event).
    pub(crate) async fn next_event(&mut self) -> Option<ConnEvent> {
        let event = self.events.recv().await?;
        if let ConnEvent::Message { flow, .. } = &event {
            if let Some(id) = flow.connection {
                self.touch(id);
            }
        }
        if let ConnEvent::Closed { flow, reason, .. } = &event {
            self.pool.retain(|_, id| Some(*id) != flow.connection);
            if reason.is_violation() {
                push_event(
                    &self.security,
                    EventKind::Rejected,
                    flow.remote.ip(),
                    format!("stream connection closed: {}", reason.name()),
                );
            }
        }
        Some(event)
    }

    /// Gives an event to the core: a message as input, a close as a connection event
    /// (and what was never sent on a connection the gateway failed to open as
    /// undeliverable, so its senders are answered).
    pub(crate) fn feed(&self, gateway: &mut Gateway, event: ConnEvent, now: Instant) {
        match event {
            ConnEvent::Message { flow, bytes } => gateway.handle_message(now, flow, &bytes),
            ConnEvent::Closed { flow, unsent, .. } => {
                for payload in unsent {
                    gateway.handle_undeliverable(now, flow, &payload);
                }
                if let Some(id) = flow.connection {
                    gateway.handle_connection_closed(now, id);
                }
            }
        }
    }

    /// Sends a stream transmit: on its connection, or on the gateway's connection to
    /// `remote` (opened now if there is none). `false`: it cannot go (no connection by
    /// that id, a full queue, no TLS client configuration, the limits): the driver
    /// tells the core it was undeliverable.
    pub(crate) fn transmit(&mut self, t: &Transmit) -> bool {
        if t.transport == Transport::Udp {
            return false;
        }
        if let Some(id) = t.connection {
            self.touch(id);
            return self.hub.send(id, t.payload.clone());
        }
        let key = (t.local.ip(), t.remote, t.transport);
        if let Some(&id) = self.pool.get(&key) {
            if self.hub.send(id, t.payload.clone()) {
                self.touch(id);
                return true;
            }
            self.pool.remove(&key);
        }
        let tls = match t.transport {
            Transport::Tls => {
                let Some(client) = self
                    .tls
                    .get(&t.local.ip())
                    .and_then(|h| h.current().client.clone())
                else {
                    tracing::warn!(local = %t.local, "no TLS client configuration (the interface's tls.ca) to reach {}", t.remote);
                    return false;
                };
                let name = self
                    .server_names
                    .get(&t.remote)
                    .cloned()
                    .unwrap_or_else(|| t.remote.ip().to_string());
                match server_name(&name) {
                    Ok(name) => Some((client, name)),
                    Err(e) => {
                        tracing::warn!("{e}");
                        return false;
                    }
                }
            }
            _ => None,
        };
        match self.hub.connect(t.local, t.remote, tls, t.payload.clone()) {
            Ok(id) => {
                self.pool.insert(key, id);
                self.touch(id);
                true
            }
            Err(_) => false,
        }
    }

    fn touch(&mut self, id: ConnectionId) {
        if !self.touched.contains(&id) {
            self.touched.push(id);
        }
    }

    /// Asks the core what keeps each connection a message crossed wanted past its idle
    /// timeout (a binding until it expires and a grace, a dialog while it lasts) and
    /// tells the limits. Called once the core has handled what came and sent what it
    /// had: only then do its tables show the binding or dialog a message made or ended.
    /// `use_of` is the core's answer (`Gateway::connection_use`).
    pub(crate) fn refresh_usage(&mut self, use_of: impl Fn(ConnectionId) -> Option<ConnectionUse>) {
        if self.touched.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut limits = self.hub.limits();
        for id in self.touched.drain(..) {
            let usage = match use_of(id) {
                Some(ConnectionUse::Dialog) => Usage::Dialog,
                Some(ConnectionUse::Binding { until }) => Usage::Binding(until),
                None => Usage::None,
            };
            limits.set_usage(now, id, usage);
        }
    }

    /// Stream security events for the event log.
    pub(crate) fn drain_events(&self) -> Vec<SecurityEvent> {
        let mut p = self.security.lock().unwrap_or_else(|e| e.into_inner());
        p.events.drain(..).collect()
    }

    /// `/api/v1/connections`.
    pub(crate) fn connections_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .hub
            .rows()
            .into_iter()
            .map(|r| {
                let (direction, phase, age, usage) = match &r.view {
                    Some(v) => (
                        match v.origin {
                            Origin::Inbound { .. } => "in",
                            Origin::Outbound { .. } => "out",
                        },
                        v.phase.name(),
                        v.age.as_secs_f64(),
                        v.usage.name().to_string(),
                    ),
                    None => ("?", "closing", 0.0, String::new()),
                };
                serde_json::json!({
                    "id": r.flow.connection.map(|c| c.0),
                    "transport": r.flow.transport.via_token().to_lowercase(),
                    "local": r.flow.local.to_string(),
                    "remote": r.flow.remote.to_string(),
                    "direction": direction,
                    "state": phase,
                    "age_seconds": (age * 10.0).round() / 10.0,
                    "usage": usage,
                    "bytes_in": r.bytes_in,
                    "bytes_out": r.bytes_out,
                    "messages_in": r.messages_in,
                    "queued_bytes": r.queued,
                })
            })
            .collect();
        let limits = self.hub.limits();
        serde_json::json!({
            "open": limits.open_connections(),
            "handshakes": limits.handshakes_in_progress(),
            "max_connections": limits.settings().max_connections,
            "connections": rows,
        })
    }

    /// Prometheus lines for `/metrics`.
    pub(crate) fn metrics(&self) -> String {
        use std::fmt::Write;
        let limits = self.hub.limits();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP sipward_stream_connections Open TCP/TLS connections.\n# TYPE sipward_stream_connections gauge");
        let _ = writeln!(
            out,
            "sipward_stream_connections {}",
            limits.open_connections()
        );
        let _ = writeln!(
            out,
            "sipward_stream_connections_max {}",
            limits.settings().max_connections
        );
        let _ = writeln!(out, "# HELP sipward_stream_handshakes TLS handshakes under way.\n# TYPE sipward_stream_handshakes gauge");
        let _ = writeln!(
            out,
            "sipward_stream_handshakes {}",
            limits.handshakes_in_progress()
        );
        let _ = writeln!(out, "# HELP sipward_stream_refused_total Connections refused before any handshake, by limit.\n# TYPE sipward_stream_refused_total counter");
        for (reason, n) in limits.refused_counts() {
            let _ = writeln!(
                out,
                "sipward_stream_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP sipward_stream_closed_total Connections closed, by reason.\n# TYPE sipward_stream_closed_total counter");
        for (reason, n) in limits.closed_counts() {
            let _ = writeln!(
                out,
                "sipward_stream_closed_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let dropped = self.security.lock().map(|p| p.dropped).unwrap_or(0);
        let _ = writeln!(out, "sipward_stream_events_dropped_total {dropped}");
        out
    }

    /// Closes every connection (shutdown): each writes what it has queued first. Waits
    /// up to `grace` for them to finish.
    pub(crate) async fn close_all(&self, grace: std::time::Duration) {
        for row in self.hub.rows() {
            if let Some(id) = row.flow.connection {
                self.hub.close(id, CloseReason::Local);
            }
        }
        let until = Instant::now() + grace;
        while !self.hub.rows().is_empty() && Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The open connection to `remote` the gateway would reuse, if any.
    #[cfg(test)]
    pub(crate) fn pooled(
        &self,
        local: IpAddr,
        remote: SocketAddr,
        transport: Transport,
    ) -> Option<ConnectionId> {
        self.pool.get(&(local, remote, transport)).copied()
    }
}

#[cfg(test)]
mod tests;
