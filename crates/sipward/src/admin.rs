//! The admin surface: a versioned JSON API under `/api/v1/`, Prometheus metrics at
//! `/metrics` and the live dashboard at `/dashboard`, served by axum on loopback and
//! guarded by a bearer token (the dashboard page itself carries no data).
//!
//! The gateway lives in the driver's task, unshared: handlers send a [`Query`] over a
//! channel and the driver answers between datagrams with [`answer`], so every reply is a
//! consistent snapshot and the core needs no locks.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use sipward_core::{BanView, Gateway, StreamView};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// What a handler asks the driver.
#[derive(Debug)]
pub(crate) enum Query {
    Status,
    Registrations,
    Calls,
    Transactions,
    Counters,
    Blacklist,
    Ban {
        source: IpAddr,
        seconds: Option<u64>,
        reason: String,
    },
    Unban(IpAddr),
    Metrics,
    /// Re-read the configuration file (the driver handles it).
    Reload,
    /// The TCP and TLS connections (the driver's stream side answers).
    Connections,
    /// The next hops pinged with OPTIONS and how they answer.
    Peers,
    /// The node's role, epoch and store (the driver handles it).
    Ha,
    /// Make a standby active (the driver handles it).
    Promote,
}

/// The driver's reply.
pub(crate) enum Answer {
    Json(Value),
    Created(Value),
    NotFound(String),
    BadRequest(String),
    Text(String),
}

pub(crate) struct AdminRequest {
    pub(crate) query: Query,
    pub(crate) reply: oneshot::Sender<Answer>,
}

/// Facts about this run the API reports.
pub(crate) struct RunInfo {
    pub(crate) started: Instant,
    pub(crate) started_wall: SystemTime,
    pub(crate) listeners: Vec<(String, SocketAddr, bool)>,
    pub(crate) config_digest: String,
    /// Transparent mode's settings, when an interface intercepts.
    pub(crate) transparent: Option<crate::config::TransparentSettings>,
    /// The sockets answering as proxy addresses (transparent mode).
    pub(crate) senders: crate::transparent::SenderStats,
}

/// Processing time per datagram, for the metrics histogram.
pub(crate) struct Latency {
    /// Upper bounds in seconds.
    bounds: [f64; 10],
    counts: [u64; 10],
    sum: f64,
    count: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            bounds: [
                5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3,
            ],
            counts: [0; 10],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Latency {
    pub(crate) fn record(&mut self, took: Duration) {
        let secs = took.as_secs_f64();
        self.sum += secs;
        self.count += 1;
        for (bound, count) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if secs <= *bound {
                *count += 1;
            }
        }
    }
}

fn seconds_until(at: Instant, now: Instant) -> u64 {
    at.saturating_duration_since(now).as_secs()
}

fn stream_json(s: &StreamView, now: Instant) -> Value {
    let peer = |p: Option<sipward_core::Peer>| {
        p.map(|p| {
            json!({
                "rtp": p.rtp.map(|a| a.to_string()),
                "rtcp": p.rtcp.map(|a| a.to_string()),
                "latch": p.latch,
            })
        })
    };
    json!({
        "id": s.id,
        "index": s.index,
        "inside_address": s.local[0].to_string(),
        "outside_address": s.local[1].to_string(),
        "inside_party": peer(s.peers[0]),
        "outside_party": peer(s.peers[1]),
        "held": s.held,
        "packets_from_inside": s.counters.packets[0],
        "packets_from_outside": s.counters.packets[1],
        "bytes_from_inside": s.counters.bytes[0],
        "bytes_from_outside": s.counters.bytes[1],
        "dropped": s.counters.dropped,
        "idle_seconds": s.counters.last_activity.map(|t| now.saturating_duration_since(t).as_secs()),
    })
}

fn ban_json(b: &BanView, now: Instant) -> Value {
    json!({
        "source": b.source.to_string(),
        "reason": b.reason,
        "user": b.user,
        "first_seen": crate::driver::wall_clock(b.first_seen),
        "last_seen": crate::driver::wall_clock(b.last_seen),
        "expires_in": seconds_until(b.expires, now),
        "hits": b.hits,
    })
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Transparent mode in `/api/v1/status`: the settings and what was diverted (`null`
/// when no interface intercepts).
fn transparent_status(gateway: &Gateway, info: &RunInfo) -> Value {
    let Some(t) = &info.transparent else {
        return Value::Null;
    };
    let traffic = gateway.traffic();
    json!({
        "listen_port": t.listen_port,
        "mark": t.mark,
        "route_table": t.route_table,
        "manage_firewall": t.manage_firewall,
        "diverted": traffic.diverted,
        "diverted_to": traffic
            .diverted_to
            .iter()
            .map(|(d, n)| (d.to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>(),
        "diverted_to_other": traffic.diverted_to_other,
        "diverted_unmatched": traffic.diverted_unmatched,
        "send_sockets": {
            "open": info.senders.open,
            "opened": info.senders.opened,
            "evicted": info.senders.evicted,
            "send_failures": info.senders.send_failures,
        },
    })
}

/// Answers one query from the gateway's state at `now`.
pub(crate) fn answer(
    gateway: &mut Gateway,
    info: &RunInfo,
    latency: &Latency,
    query: Query,
    now: Instant,
) -> Answer {
    match query {
        Query::Status => Answer::Json(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started": time::OffsetDateTime::from(info.started_wall)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "uptime_seconds": now.saturating_duration_since(info.started).as_secs(),
            "listeners": info.listeners.iter().map(|(name, addr, inside)| json!({
                "interface": name, "address": addr.to_string(), "inside": inside,
            })).collect::<Vec<_>>(),
            "config_digest": info.config_digest,
            "registrations": gateway.registration_count(),
            "calls": gateway.call_count(),
            "transactions": gateway.transactions(),
            "media_streams": gateway.media().stream_count(),
            "bans": gateway.bans(now).len(),
            "tables": tables(gateway).into_iter().map(|t| {
                let mut v = json!({"table": t.table, "entries": t.entries, "capacity": t.capacity});
                if let (Some(address), Some(obj)) = (t.address, v.as_object_mut()) {
                    obj.insert("address".into(), json!(address.to_string()));
                }
                v
            }).collect::<Vec<_>>(),
            "transparent": transparent_status(gateway, info),
        })),
        Query::Registrations => Answer::Json(Value::Array(
            gateway
                .bindings()
                .iter()
                .map(|b| {
                    json!({
                        "aor": b.aor,
                        "phone": b.phone.to_string(),
                        "registrar": b.registrar.to_string(),
                        "intercepted": b.intercepted,
                        "inside_contact": b.inside_contact,
                        "outside_contact": b.outside_contact,
                        "expires_in": seconds_until(b.expires_at, now),
                    })
                })
                .collect(),
        )),
        Query::Calls => Answer::Json(Value::Array(
            gateway
                .dialogs()
                .iter()
                .map(|d| {
                    json!({
                        "call_id": d.outside_call_id,
                        "inside_call_id": d.inside_call_id,
                        "kind": if d.session { "call" } else { "subscription" },
                        "direction": if d.outbound { "outbound" } else { "inbound" },
                        "aor": d.aor,
                        "phone": d.phone.to_string(),
                        "state": if d.confirmed { "confirmed" } else { "early" },
                        "age_seconds": now.saturating_duration_since(d.created).as_secs(),
                        "streams": d.streams.iter().map(|s| stream_json(s, now)).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )),
        Query::Transactions => Answer::Json(json!({ "count": gateway.transactions() })),
        Query::Peers => Answer::Json(json!(gateway
            .peers()
            .iter()
            .map(|p| json!({
                "rule": p.rule,
                "peer": p.peer.to_string(),
                "transport": p.transport.via_token().to_ascii_lowercase(),
                "up": p.up,
                "pings_sent": p.pings_sent,
                "last_status": p.last_answer.map(|(_, status)| status),
                "last_answer_seconds_ago": p
                    .last_answer
                    .map(|(at, _)| now.saturating_duration_since(at).as_secs()),
            }))
            .collect::<Vec<_>>())),
        Query::Counters => {
            let c = gateway.counters().fields();
            let t = gateway.traffic();
            let classes = |a: &[u64; 6]| {
                json!({"1xx": a[0], "2xx": a[1], "3xx": a[2], "4xx": a[3], "5xx": a[4], "6xx": a[5]})
            };
            Answer::Json(json!({
                "events": c.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "requests_in": t.requests_in,
                "requests_out": t.requests_out,
                "responses_in": classes(&t.responses_in),
                "responses_out": classes(&t.responses_out),
                "malformed": t.malformed,
                "media_refused": gateway.media().refused(),
                "media_ports_skipped": gateway.media().ports_skipped(),
            }))
        }
        Query::Blacklist => Answer::Json(Value::Array(
            gateway.bans(now).iter().map(|b| ban_json(b, now)).collect(),
        )),
        Query::Ban {
            source,
            seconds,
            reason,
        } => {
            // The gateway bans a mapped IPv6 address as the IPv4 one.
            let source = source.to_canonical();
            gateway.ban(source, seconds.map(Duration::from_secs), &reason, now);
            let entry = gateway.bans(now).into_iter().find(|b| b.source == source);
            Answer::Created(entry.map_or(Value::Null, |b| ban_json(&b, now)))
        }
        Query::Unban(source) => {
            let source = source.to_canonical();
            if gateway.unban(source, now) {
                Answer::Json(json!({ "removed": source.to_string() }))
            } else {
                Answer::NotFound(format!("{source} is not blacklisted"))
            }
        }
        Query::Metrics => Answer::Text(metrics(gateway, info, latency, now)),
        Query::Reload | Query::Connections | Query::Ha | Query::Promote => {
            Answer::BadRequest("answered by the driver".into())
        }
    }
}

/// A bounded table's fill and capacity; media port pools carry their address.
struct Table {
    table: &'static str,
    address: Option<IpAddr>,
    entries: usize,
    capacity: usize,
}

/// Every bounded table of the gateway, media port pools (pairs) included.
fn tables(gateway: &Gateway) -> Vec<Table> {
    let mut out: Vec<Table> = gateway
        .table_usage()
        .into_iter()
        .map(|t| Table {
            table: t.table,
            address: None,
            entries: t.entries,
            capacity: t.capacity,
        })
        .collect();
    for (ip, used, size) in gateway.media().pool_usage() {
        out.push(Table {
            table: "media_ports",
            address: Some(ip),
            entries: used,
            capacity: size,
        });
    }
    out
}

/// Builds the Prometheus text exposition: each family's HELP and TYPE, then its samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
}

/// The Prometheus metrics, written from the core's own counters (a registry of atomics
/// would only copy them).
fn metrics(gateway: &Gateway, info: &RunInfo, latency: &Latency, now: Instant) -> String {
    let mut e = Exposition(String::new());
    let t = gateway.traffic();
    let n = "sipward_diverted_total";
    e.family(
        n,
        "counter",
        "Datagrams the router diverted to sipward (transparent mode), by the rule that admitted them.",
    );
    for (rule, v) in &t.diverted {
        e.sample(n, &format!("rule=\"{}\"", label_value(rule)), v);
    }
    let n = "sipward_diverted_destination_total";
    e.family(
        n,
        "counter",
        "Admitted diverted datagrams by original destination (the first 256 destinations).",
    );
    for (destination, v) in &t.diverted_to {
        e.sample(n, &format!("destination=\"{destination}\""), v);
    }
    let n = "sipward_diverted_destination_other_total";
    e.family(
        n,
        "counter",
        "Admitted diverted datagrams to destinations past the first 256.",
    );
    e.sample(n, "", t.diverted_to_other);
    let n = "sipward_diverted_unmatched_total";
    e.family(n, "counter", "Diverted datagrams no rule admits (dropped).");
    e.sample(n, "", t.diverted_unmatched);
    let senders = info.senders;
    let n = "sipward_transparent_send_sockets";
    e.family(
        n,
        "gauge",
        "Open sockets that answer phones as the proxy address they sent to.",
    );
    e.sample(n, "", senders.open);
    for (n, help, v) in [
        (
            "sipward_transparent_send_sockets_opened_total",
            "Sockets opened to answer as a proxy address.",
            senders.opened,
        ),
        (
            "sipward_transparent_send_sockets_evicted_total",
            "Sockets closed because the cache was full (least recently used first).",
            senders.evicted,
        ),
        (
            "sipward_transparent_send_failures_total",
            "Datagrams that could not be sent as a proxy address.",
            senders.send_failures,
        ),
    ] {
        e.family(n, "counter", help);
        e.sample(n, "", v);
    }
    let n = "sipward_requests_total";
    e.family(n, "counter", "SIP requests by direction and method.");
    for (dir, map) in [("in", &t.requests_in), ("out", &t.requests_out)] {
        for (method, v) in map {
            e.sample(n, &format!("direction=\"{dir}\",method=\"{method}\""), v);
        }
    }
    let n = "sipward_responses_total";
    e.family(n, "counter", "SIP responses by direction and class.");
    for (dir, classes) in [("in", &t.responses_in), ("out", &t.responses_out)] {
        for (i, v) in classes.iter().enumerate() {
            e.sample(n, &format!("direction=\"{dir}\",class=\"{}xx\"", i + 1), v);
        }
    }
    let n = "sipward_events_total";
    e.family(n, "counter", "Gateway events and rejections by reason.");
    for (reason, v) in gateway.counters().fields() {
        e.sample(n, &format!("reason=\"{reason}\""), v);
    }
    let n = "sipward_malformed_total";
    e.family(n, "counter", "Malformed datagrams by defect.");
    for (defect, v) in &t.malformed {
        e.sample(n, &format!("defect=\"{defect}\""), v);
    }
    let dialogs = gateway.dialogs();
    let calls = dialogs.iter().filter(|d| d.session).count();
    for (name, help, v) in [
        (
            "sipward_registrations",
            "Registration bindings.",
            gateway.registration_count(),
        ),
        (
            "sipward_calls",
            "Calls (INVITE dialogs), early or confirmed.",
            calls,
        ),
        (
            "sipward_subscriptions",
            "Subscription dialogs.",
            dialogs.len() - calls,
        ),
        (
            "sipward_transactions",
            "Transactions in progress or lingering.",
            gateway.transactions(),
        ),
        (
            "sipward_media_streams",
            "Relayed media streams.",
            gateway.media().stream_count(),
        ),
        (
            "sipward_bans",
            "Blacklisted sources.",
            gateway.bans(now).len(),
        ),
    ] {
        e.family(name, "gauge", help);
        e.sample(name, "", v);
    }
    let (mut packets, mut bytes, mut dropped) = ([0u64; 2], [0u64; 2], 0u64);
    for s in dialogs.iter().flat_map(|d| &d.streams) {
        let c = &s.counters;
        packets = [packets[0] + c.packets[0], packets[1] + c.packets[1]];
        bytes = [bytes[0] + c.bytes[0], bytes[1] + c.bytes[1]];
        dropped += s.counters.dropped;
    }
    for (name, help, v) in [
        (
            "sipward_media_packets",
            "Packets relayed by the open streams, by the side they came from.",
            packets,
        ),
        (
            "sipward_media_bytes",
            "Bytes relayed by the open streams, by the side they came from.",
            bytes,
        ),
    ] {
        e.family(name, "gauge", help);
        e.sample(name, "from=\"inside\"", v[0]);
        e.sample(name, "from=\"outside\"", v[1]);
    }
    let n = "sipward_media_dropped";
    e.family(
        n,
        "gauge",
        "Packets the open streams refused (wrong source, nowhere to go).",
    );
    e.sample(n, "", dropped);
    let pools = gateway.media().pool_usage();
    let n = "sipward_media_ports_in_use";
    e.family(n, "gauge", "Port pairs allocated, per gateway address.");
    for (ip, used, _) in &pools {
        e.sample(n, &format!("address=\"{ip}\""), used);
    }
    let n = "sipward_media_ports_total";
    e.family(n, "gauge", "Port pairs in the pool, per gateway address.");
    for (ip, _, size) in &pools {
        e.sample(n, &format!("address=\"{ip}\""), size);
    }
    for (name, help, v) in [
        (
            "sipward_media_refused_total",
            "Calls refused with 503 because their media could not be set up (no free port pair, sockets that cannot open).",
            gateway.media().refused(),
        ),
        (
            "sipward_media_ports_skipped_total",
            "Port pairs skipped because another socket held one of their ports.",
            gateway.media().ports_skipped(),
        ),
    ] {
        e.family(name, "counter", help);
        e.sample(name, "", v);
    }
    for (n, help, capacity) in [
        (
            "sipward_table_entries",
            "Entries in each bounded table (media_ports: pairs per address).",
            false,
        ),
        (
            "sipward_table_capacity",
            "The most entries each bounded table holds.",
            true,
        ),
    ] {
        e.family(n, "gauge", help);
        for t in tables(gateway) {
            let labels = match t.address {
                Some(a) => format!("table=\"{}\",address=\"{a}\"", t.table),
                None => format!("table=\"{}\"", t.table),
            };
            e.sample(n, &labels, if capacity { t.capacity } else { t.entries });
        }
    }
    let n = "sipward_processing_seconds";
    e.family(n, "histogram", "Time the core took per received datagram.");
    let bucket = format!("{n}_bucket");
    for (bound, count) in latency.bounds.iter().zip(latency.counts.iter()) {
        e.sample(&bucket, &format!("le=\"{bound}\""), count);
    }
    e.sample(&bucket, "le=\"+Inf\"", latency.count);
    e.sample(&format!("{n}_sum"), "", latency.sum);
    e.sample(&format!("{n}_count"), "", latency.count);
    e.0
}

#[derive(Clone)]
struct AppState {
    requests: mpsc::Sender<AdminRequest>,
    token: Arc<str>,
}

/// Where and how the admin surface listens (`[admin]`).
#[derive(Debug, Clone)]
pub(crate) struct AdminSettings {
    pub(crate) listen: SocketAddr,
    /// `file:line` of `listen`, for a bind that fails.
    pub(crate) listen_at: String,
    pub(crate) token: String,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub(crate) max_connections: usize,
    /// How long a connection may take to send a request's head, counted from its
    /// opening or its previous response: this closes idle keep-alive connections and
    /// half-sent requests alike.
    pub(crate) request_timeout: Duration,
}

/// The admin routes, guarded by the token; queries go to `requests`.
pub(crate) fn router(token: &str, requests: mpsc::Sender<AdminRequest>) -> Router {
    let state = AppState {
        requests,
        token: token.into(),
    };
    Router::new()
        .route(
            "/api/v1/status",
            get(|s: State<AppState>| ask(s, Query::Status)),
        )
        .route(
            "/api/v1/registrations",
            get(|s: State<AppState>| ask(s, Query::Registrations)),
        )
        .route(
            "/api/v1/calls",
            get(|s: State<AppState>| ask(s, Query::Calls)),
        )
        .route(
            "/api/v1/connections",
            get(|s: State<AppState>| ask(s, Query::Connections)),
        )
        .route(
            "/api/v1/transactions",
            get(|s: State<AppState>| ask(s, Query::Transactions)),
        )
        .route(
            "/api/v1/peers",
            get(|s: State<AppState>| ask(s, Query::Peers)),
        )
        .route(
            "/api/v1/counters",
            get(|s: State<AppState>| ask(s, Query::Counters)),
        )
        .route(
            "/api/v1/blacklist",
            get(|s: State<AppState>| ask(s, Query::Blacklist)).post(add_ban),
        )
        .route("/api/v1/blacklist/{source}", delete(remove_ban))
        .route(
            "/api/v1/reload",
            post(|s: State<AppState>| ask(s, Query::Reload)),
        )
        .route("/api/v1/ha", get(|s: State<AppState>| ask(s, Query::Ha)))
        .route(
            "/api/v1/ha/promote",
            post(|s: State<AppState>| ask(s, Query::Promote)),
        )
        .route("/metrics", get(|s: State<AppState>| ask(s, Query::Metrics)))
        // The API's bodies are a few hundred bytes; axum's 2 MB default, times the
        // connection cap, would be memory for nothing.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/dashboard", get(|| async { Html(DASHBOARD) }))
        .route("/", get(|| async { Html(DASHBOARD) }))
        .with_state(state)
}

/// Serves the admin surface until the driver stops. Connections are served by hyper
/// directly (axum's `serve` has neither a connection cap nor a header timeout): an
/// unbounded number of idle or half-sent connections would take the process's file
/// descriptors, which the media relay needs too. Past the cap, the oldest connection
/// not serving a request makes room for the new one.
pub(crate) async fn serve(
    settings: AdminSettings,
    requests: mpsc::Sender<AdminRequest>,
) -> Result<JoinHandle<()>> {
    let api = router(&settings.token, requests);
    let listen = settings.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "{}: [admin] listen: cannot bind {listen}",
                settings.listen_at
            )
        })?;
    crate::driver::say(
        &mut std::io::stdout(),
        &format!("sipward: admin API on http://{listen}/api/v1/ (dashboard /dashboard)"),
    );
    let connections = Connections::default();
    Ok(tokio::spawn(async move {
        let mut next_id = 0u64;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most likely: wait rather than spin.
                    tracing::warn!("admin API: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if !connections.make_room(settings.max_connections).await {
                // Every slot is serving a request: this one is closed at once.
                drop(stream);
                continue;
            }
            next_id = next_id.wrapping_add(1);
            let id = next_id;
            let busy = Arc::new(AtomicUsize::new(0));
            let service = {
                let (api, busy) = (api.clone(), busy.clone());
                let timeout = settings.request_timeout;
                hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                    let (mut api, busy) = (api.clone(), busy.clone());
                    async move {
                        // The body is read here, within the request timeout, before the
                        // connection counts as busy: the header timeout ends once the
                        // head is in, and a body sent a byte at a time would otherwise
                        // hold a slot that nothing may evict for as long as the client
                        // likes. While its body arrives a connection can make room for
                        // another, like an idle one.
                        let (parts, body) = request.into_parts();
                        let body = match tokio::time::timeout(
                            timeout,
                            Limited::new(body, MAX_BODY_BYTES).collect(),
                        )
                        .await
                        {
                            Ok(Ok(body)) => axum::body::Body::from(body.to_bytes()),
                            Ok(Err(e)) if e.is::<LengthLimitError>() => {
                                return Ok(closing(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    "the request body is too large",
                                ))
                            }
                            // The client broke off its body: nobody reads the answer.
                            Ok(Err(_)) => {
                                return Ok(closing(
                                    StatusCode::BAD_REQUEST,
                                    "the request body could not be read",
                                ))
                            }
                            Err(_) => {
                                return Ok(closing(
                                    StatusCode::REQUEST_TIMEOUT,
                                    "the request body did not arrive in time",
                                ))
                            }
                        };
                        busy.fetch_add(1, Ordering::Relaxed);
                        // The router is always ready (axum documents it).
                        let response = tower_service::Service::call(
                            &mut api,
                            Request::from_parts(parts, body),
                        )
                        .await;
                        busy.fetch_sub(1, Ordering::Relaxed);
                        response
                    }
                })
            };
            let timeout = settings.request_timeout;
            let done = connections.clone();
            let task = tokio::spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeout);
                let io = hyper_util::rt::TokioIo::new(stream);
                // Errors here are a client's (timeouts, resets): nothing to report.
                let _ = builder.serve_connection(io, service).await;
                done.forget(id);
            });
            connections.add(id, task, busy);
        }
    }))
}

/// An error answer after which the connection is closed, so that the rest of a body
/// that was refused is never waited for.
fn closing(status: StatusCode, error: &str) -> Response {
    (
        status,
        [(header::CONNECTION, "close")],
        Json(json!({ "error": error })),
    )
        .into_response()
}

/// The admin server's open connections, oldest first, each with its count of requests
/// in progress.
#[derive(Clone, Default)]
struct Connections(Arc<Mutex<VecDeque<OpenConnection>>>);

/// An open admin connection: its id, its task, and its requests in progress.
type OpenConnection = (u64, JoinHandle<()>, Arc<AtomicUsize>);

impl Connections {
    /// Makes room for one more connection under `cap`: the oldest connection that is
    /// not serving a request (idle, or still sending its request head) is closed. So a
    /// crowd of idle connections never keeps a real request out; false when every
    /// slot is busy with a request.
    async fn make_room(&self, cap: usize) -> bool {
        let victim = {
            let Ok(mut open) = self.0.lock() else {
                return false;
            };
            if open.len() < cap {
                return true;
            }
            let Some(victim) = open
                .iter()
                .position(|(_, _, busy)| busy.load(Ordering::Relaxed) == 0)
            else {
                return false;
            };
            open.remove(victim)
        };
        if let Some((_, task, _)) = victim {
            task.abort();
            // Awaited so that its socket is closed before another is accepted: the
            // cap holds for descriptors, not only for tasks.
            let _ = task.await;
        }
        true
    }

    fn add(&self, id: u64, task: JoinHandle<()>, busy: Arc<AtomicUsize>) {
        if let Ok(mut open) = self.0.lock() {
            open.push_back((id, task, busy));
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut open) = self.0.lock() {
            open.retain(|(i, _, _)| *i != id);
        }
    }
}

/// Bearer-token check; the token is compared in constant time and never logged.
async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    // RFC 9110 section 11.1: the scheme is case-insensitive ("bearer" is as good).
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start_matches(' '))
        .unwrap_or_default();
    if constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"sipward\"")],
            Json(json!({"error": "a valid bearer token is required"})),
        )
            .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn ask(State(state): State<AppState>, query: Query) -> Response {
    let (reply, wait) = oneshot::channel();
    if state
        .requests
        .send(AdminRequest { query, reply })
        .await
        .is_err()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "gateway stopped").into_response();
    }
    match wait.await {
        Ok(Answer::Json(v)) => Json(v).into_response(),
        Ok(Answer::Created(v)) => (StatusCode::CREATED, Json(v)).into_response(),
        Ok(Answer::NotFound(why)) => {
            (StatusCode::NOT_FOUND, Json(json!({"error": why}))).into_response()
        }
        Ok(Answer::BadRequest(why)) => {
            (StatusCode::BAD_REQUEST, Json(json!({"error": why}))).into_response()
        }
        Ok(Answer::Text(t)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "gateway stopped").into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    source: IpAddr,
    seconds: Option<u64>,
    reason: Option<String>,
}

/// The largest request body the API reads.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The longest ban the API takes (a year), the same bound as `[protection] ban_time`.
pub(crate) const MAX_BAN_SECONDS: u64 = 365 * 86_400;
/// The longest ban reason the API takes, in bytes: a reason is a note for the operator
/// shown in tables and events, not a store.
pub(crate) const MAX_REASON_BYTES: usize = 200;

/// Why a ban request cannot be taken, naming the field and its allowed range; `None`
/// when it can. Shared with the CLI, which refuses the same values before any request.
pub(crate) fn ban_refusal(seconds: Option<u64>, reason: Option<&str>) -> Option<String> {
    if let Some(s) = seconds {
        if !(1..=MAX_BAN_SECONDS).contains(&s) {
            return Some(format!(
                "seconds: {s} is out of range, expected 1 to {MAX_BAN_SECONDS} (a year)"
            ));
        }
    }
    if let Some(r) = reason {
        if r.len() > MAX_REASON_BYTES {
            return Some(format!(
                "reason: {} bytes, at most {MAX_REASON_BYTES}",
                r.len()
            ));
        }
        if r.chars().any(char::is_control) {
            return Some("reason: control characters are not allowed".into());
        }
    }
    None
}

fn error(status: StatusCode, why: impl Into<String>) -> Response {
    (status, Json(json!({"error": why.into()}))).into_response()
}

/// Parsed by hand rather than with axum's `Json` so that every refusal is JSON: 400 for
/// a body that is not JSON, 422 for JSON with a wrong or out-of-range field.
async fn add_ban(
    state: State<AppState>,
    body: std::result::Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), e.body_text()),
    };
    let b: BanRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a JSON object: {e}")),
    };
    if let Some(why) = ban_refusal(b.seconds, b.reason.as_deref()) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, why);
    }
    ask(
        state,
        Query::Ban {
            source: b.source,
            seconds: b.seconds,
            reason: b.reason.unwrap_or_else(|| "added by operator".into()),
        },
    )
    .await
}

async fn remove_ban(state: State<AppState>, Path(source): Path<String>) -> Response {
    match source.parse::<IpAddr>() {
        Ok(ip) => ask(state, Query::Unban(ip)).await,
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("{source:?} is not an IP address")})),
        )
            .into_response(),
    }
}

/// The live dashboard: one self-contained page (no external resources).
const DASHBOARD: &str = include_str!("dashboard.html");

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use proptest::prelude::*;
    use tower::ServiceExt;

    const TOKEN: &str = "test-token-0123456789";

    /// The admin router with a gateway (embedded default) answering its queries, as
    /// the driver does.
    fn admin() -> (tokio::runtime::Runtime, Router) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let core = crate::config::Config::parse(crate::config::EMBEDDED_DEFAULT, "e")
            .unwrap()
            .compile("e")
            .unwrap();
        let (tx, mut rx) = mpsc::channel::<AdminRequest>(8);
        rt.spawn(async move {
            let mut gateway = Gateway::new(core);
            let info = RunInfo {
                started: Instant::now(),
                started_wall: SystemTime::now(),
                listeners: Vec::new(),
                config_digest: "test".into(),
                transparent: None,
                senders: Default::default(),
            };
            // One datagram from a phone, so that a source is tracked.
            let lan = gateway.config().zones[0].address;
            gateway.handle_datagram(
                Instant::now(),
                lan,
                "127.0.1.20:5070".parse().unwrap(),
                b"OPTIONS sip:127.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.1.20:5070;branch=z9hG4bK1\r\n\
                  Max-Forwards: 70\r\nFrom: <sip:a@127.0.2.10>;tag=1\r\nTo: <sip:b@127.0.2.10>\r\n\
                  Call-ID: 1@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            );
            while let Some(r) = rx.recv().await {
                let a = answer(&mut gateway, &info, &Latency::default(), r.query, Instant::now());
                let _ = r.reply.send(a);
            }
        });
        (rt, router(TOKEN, tx))
    }

    fn call(
        rt: &tokio::runtime::Runtime,
        app: &Router,
        method: &str,
        path: &str,
        auth: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        rt.block_on(async {
            let response = app.clone().oneshot(request).await.unwrap();
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, bytes.to_vec())
        })
    }

    fn bearer() -> String {
        format!("Bearer {TOKEN}")
    }

    #[test]
    fn a_ban_out_of_range_is_422_naming_the_field_and_the_gateway_answers_on() {
        let (rt, app) = admin();
        for (body, field) in [
            (
                r#"{"source":"192.0.2.18","seconds":9223372036854775807}"#,
                "seconds",
            ),
            (r#"{"source":"192.0.2.18","seconds":0}"#, "seconds"),
            (r#"{"source":"192.0.2.18","seconds":-1}"#, "invalid value"),
            (
                r#"{"source":"192.0.2.18","seconds":99999999999999999999999}"#,
                "",
            ),
        ] {
            let (status, reply) = call(
                &rt,
                &app,
                "POST",
                "/api/v1/blacklist",
                &bearer(),
                body.into(),
            );
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            let v: Value = serde_json::from_slice(&reply).unwrap();
            let why = v["error"].as_str().unwrap();
            assert!(why.contains(field), "{body}: {why}");
        }
        let (status, reply) = call(
            &rt,
            &app,
            "POST",
            "/api/v1/blacklist",
            &bearer(),
            br#"{"source":"192.0.2.18","seconds":31536000}"#.to_vec(),
        );
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&reply)
        );
        let (status, _) = call(&rt, &app, "GET", "/api/v1/blacklist", &bearer(), Vec::new());
        assert_eq!(status, StatusCode::OK);
    }

    #[test]
    fn a_ban_reason_is_bounded_and_free_of_control_characters() {
        let (rt, app) = admin();
        let long = "x".repeat(MAX_REASON_BYTES + 1);
        for (reason, word) in [(long.as_str(), "at most 200"), ("a\u{1b}[2Jb", "control")] {
            let body = json!({"source": "192.0.2.7", "reason": reason}).to_string();
            let (status, reply) = call(
                &rt,
                &app,
                "POST",
                "/api/v1/blacklist",
                &bearer(),
                body.into(),
            );
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
            assert!(String::from_utf8_lossy(&reply).contains(word));
        }
        let body = json!({"source": "192.0.2.7", "reason": "x".repeat(MAX_REASON_BYTES)});
        let (status, _) = call(
            &rt,
            &app,
            "POST",
            "/api/v1/blacklist",
            &bearer(),
            body.to_string().into(),
        );
        assert_eq!(status, StatusCode::CREATED);
    }

    #[test]
    fn a_body_over_the_limit_is_413() {
        let (rt, app) = admin();
        let body = format!(
            r#"{{"source":"192.0.2.7","reason":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let (status, _) = call(
            &rt,
            &app,
            "POST",
            "/api/v1/blacklist",
            &bearer(),
            body.into(),
        );
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let (rt, app) = admin();
        for auth in [
            format!("bearer {TOKEN}"),
            format!("BEARER {TOKEN}"),
            bearer(),
        ] {
            let (status, _) = call(&rt, &app, "GET", "/api/v1/status", &auth, Vec::new());
            assert_eq!(status, StatusCode::OK, "{auth}");
        }
        for auth in [
            format!("Basic {TOKEN}"),
            TOKEN.to_string(),
            "bearer wrong".into(),
        ] {
            let (status, _) = call(&rt, &app, "GET", "/api/v1/status", &auth, Vec::new());
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth}");
        }
    }

    #[test]
    fn status_and_metrics_show_every_bounded_table_with_its_capacity() {
        let (rt, app) = admin();
        let (status, reply) = call(&rt, &app, "GET", "/api/v1/status", &bearer(), Vec::new());
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&reply).unwrap();
        let tables = v["tables"].as_array().unwrap();
        let find = |name: &str| {
            tables
                .iter()
                .find(|t| t["table"] == name)
                .unwrap_or_else(|| panic!("{name} missing: {v}"))
        };
        let sources = find("tracked_sources");
        assert_eq!(sources["entries"], 1, "{v}");
        assert_eq!(sources["capacity"], 100_000);
        assert_eq!(find("transactions")["entries"], 1);
        for name in [
            "registrations",
            "dialogs",
            "completed_client_transactions",
            "completed_server_transactions",
            "failure_records",
            "bans",
            "media_ports",
        ] {
            assert!(find(name)["capacity"].as_u64().unwrap() > 0, "{name}");
        }
        let (_, text) = call(&rt, &app, "GET", "/metrics", &bearer(), Vec::new());
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("sipward_table_entries{table=\"tracked_sources\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("sipward_table_capacity{table=\"tracked_sources\"} 100000\n"));
        assert!(
            text.contains("sipward_table_capacity{table=\"media_ports\",address=\"127.0.1.1\"}")
        );
    }

    /// Extreme and malformed values for each field of the ban request.
    fn field() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec![
                json!(0),
                json!(1),
                json!(-1),
                json!(i64::MIN),
                json!(i64::MAX),
                json!(u64::MAX),
                json!(1e300),
                json!(-0.5),
                json!(31_536_000),
                json!(31_536_001),
                json!(null),
                json!(true),
                json!(""),
                json!("192.0.2.1"),
                json!("::1"),
                json!("999.1.1.1"),
                json!("\u{1b}[31m"),
                json!([1, 2]),
                json!({"a": 1}),
                json!("x".repeat(5000)),
            ]),
            any::<i64>().prop_map(|v| json!(v)),
            any::<u64>().prop_map(|v| json!(v)),
            ".{0,300}".prop_map(|s: String| json!(s)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the body, a ban request is answered 201 or a 4xx with a JSON
        /// error, never a 5xx or a panic.
        #[test]
        fn ban_requests_with_extreme_values_get_201_or_a_4xx(
            source in field(),
            seconds in field(),
            reason in field(),
            extra in proptest::option::of(field()),
            raw in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        ) {
            let (rt, app) = admin();
            let body = match raw {
                Some(bytes) => bytes,
                None => {
                    let mut v = json!({"source": source, "seconds": seconds, "reason": reason});
                    if let (Some(x), Some(obj)) = (extra, v.as_object_mut()) {
                        obj.insert("extra".into(), x);
                    }
                    v.to_string().into_bytes()
                }
            };
            let (status, reply) = call(&rt, &app, "POST", "/api/v1/blacklist", &bearer(), body.clone());
            prop_assert!(
                status == StatusCode::CREATED || status.is_client_error(),
                "{} for {}", status, String::from_utf8_lossy(&body)
            );
            if status.is_client_error() {
                let v: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
                prop_assert!(v["error"].is_string(), "{}", String::from_utf8_lossy(&reply));
            }
            // Still serving.
            let (status, _) = call(&rt, &app, "GET", "/api/v1/status", &bearer(), Vec::new());
            prop_assert_eq!(status, StatusCode::OK);
        }
    }
}
