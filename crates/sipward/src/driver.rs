//! The tokio UDP driver around the pure core: one socket per interface, one task that
//! owns the [`Gateway`], the clock read here and nowhere else. Media commands the core
//! emits go to the relay thread ([`RelayHandle`]); security events are written as JSON
//! lines; admin API queries are answered between datagrams.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;
use sipward_core::{Config, Flow, Gateway, SecurityEvent};
use sipward_relay::RelayHandle;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::admin::{self, AdminRequest, Latency, RunInfo};
use crate::export::{Hep, Syslog};

/// Largest UDP datagram read; anything longer is truncated by the kernel and then
/// refused by the size limit.
const RECV_BUFFER: usize = 65_535;
/// What the binary needs besides the core's configuration.
pub(crate) struct Settings {
    /// "-" for standard output, a path, or None.
    pub(crate) events: Option<String>,
    /// The admin API, when configured.
    pub(crate) admin: Option<admin::AdminSettings>,
    /// What `check` and the start print as warnings (`file:line: warning: ...`).
    pub(crate) warnings: Vec<String>,
    pub(crate) config_digest: String,
    /// The configuration file, re-read on SIGHUP or `POST /api/v1/reload` (None: the
    /// embedded default).
    pub(crate) path: Option<std::path::PathBuf>,
    pub(crate) collectors: Collectors,
    /// `file:line` of each interface's address, in zone order.
    pub(crate) interface_lines: Vec<String>,
    /// Where the media relay thread runs.
    pub(crate) relay: sipward_relay::RelayOptions,
    /// TCP and TLS listeners, certificates and limits.
    pub(crate) streams: crate::streams::StreamSettings,
    /// Transparent mode, when an interface intercepts.
    pub(crate) transparent: Option<crate::config::TransparentSettings>,
    /// The restart journal's directory (`[state] dir`).
    pub(crate) journal: Option<std::path::PathBuf>,
    /// The Redis store and this node's role (`[state] store`, `[ha]`).
    pub(crate) ha: Option<crate::config::HaSettings>,
}

/// Where copies of events and messages go.
pub(crate) struct Collectors {
    /// Syslog collector (RFC 5424 over UDP).
    pub(crate) syslog: Option<SocketAddr>,
    /// HEP v3 collector and the capture agent id.
    pub(crate) hep: Option<(SocketAddr, u32)>,
}

struct Received {
    flow: Flow,
    data: Vec<u8>,
}

/// Descriptors kept for what is not media: the signalling and event sockets, the admin
/// API's connections, the runtime's own.
const NON_MEDIA_FILES: u64 = 256;
/// Media streams a call is assumed to have (audio and video) for the file budget.
const STREAMS_PER_CALL: u64 = 2;
/// Sockets of a media stream: RTP and RTCP on each side.
const SOCKETS_PER_STREAM: u64 = 4;

/// The open files `config` can need at its caps: per call its media sockets (bounded by
/// the smallest port pool, when that is smaller), transparent mode's sockets and the rest.
pub(crate) fn files_needed(config: &Config) -> u64 {
    let smallest_pool = config
        .zones
        .iter()
        .filter_map(|z| z.media_ports)
        .map(|(low, high)| u64::from(high.saturating_sub(low)).saturating_add(1) / 2)
        .min();
    let streams = match smallest_pool {
        // Without a pool nothing is relayed.
        None => 0,
        Some(pairs) => (config.alg.max_dialogs as u64)
            .saturating_mul(STREAMS_PER_CALL)
            .min(pairs),
    };
    streams
        .saturating_mul(SOCKETS_PER_STREAM)
        .saturating_add(other_files(config))
}

/// The files that are not media: [`NON_MEDIA_FILES`], and in transparent mode its
/// listeners and the cache of sockets that answer as proxy addresses.
fn other_files(config: &Config) -> u64 {
    if config.zones.iter().any(|z| z.intercept) {
        NON_MEDIA_FILES + crate::transparent::SEND_SOCKETS as u64 + 2
    } else {
        NON_MEDIA_FILES
    }
}

/// A warning when `limit` open files cannot hold what `config` can need.
pub(crate) fn file_limit_warning(config: &Config, limit: u64) -> Option<String> {
    let needed = files_needed(config);
    (needed > limit).then(|| {
        format!(
            "warning: the open-file limit ({limit}) is below the {needed} that max_dialogs = {} \
             can need ({SOCKETS_PER_STREAM} sockets per media stream, {STREAMS_PER_CALL} streams \
             per call, {} for the rest): calls past it get 503; raise it \
             (LimitNOFILE=, ulimit -n) or lower max_dialogs",
            config.alg.max_dialogs,
            other_files(config)
        )
    })
}

/// Raises the soft open-file limit to the hard one (every media stream holds four
/// sockets; the usual soft default of 1024 is 250 streams) and warns when even that is
/// short of what the configuration can need.
fn raise_file_limit(config: &Config) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open-file limit");
            if let Some(warning) = file_limit_warning(config, limit) {
                say(&mut std::io::stderr(), &format!("sipward: {warning}"));
            }
        }
        Err(e) => say(
            &mut std::io::stderr(),
            &format!("sipward: warning: cannot raise the open-file limit: {e}"),
        ),
    }
}

/// Binds every interface and runs the gateway until ctrl-c.
pub(crate) async fn run(config: Config, settings: Settings) -> Result<()> {
    raise_file_limit(&config);
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        if let Some(w) = settings
            .streams
            .file_limit_warning(files_needed(&config), soft)
        {
            say(&mut std::io::stderr(), &format!("sipward: {w}"));
        }
    }
    let standby_at_start = settings.ha.as_ref().is_some_and(|h| h.standby);
    // In a pair the addresses are virtual: bound before they move here (IP_FREEBIND).
    let freebind = settings.ha.is_some();
    let mut sockets: Vec<(SocketAddr, Arc<UdpSocket>)> = Vec::new();
    let mut deferred: Vec<SocketAddr> = Vec::new();
    for (i, zone) in config.zones.iter().enumerate() {
        let at = settings.interface_lines.get(i).map_or("", String::as_str);
        let bound = bind_signalling(zone.address, freebind);
        if let (true, Err(e)) = (standby_at_start, &bound) {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                // The active node holds it on this host: bound at promotion.
                say(
                    &mut std::io::stdout(),
                    &format!(
                        "sipward: standby: {} ({}) is in use here: bound at promotion",
                        zone.address, zone.name
                    ),
                );
                deferred.push(zone.address);
                continue;
            }
        }
        let socket = bound.with_context(|| {
            format!(
                "{at}: interface {:?}: cannot bind {}",
                zone.name, zone.address
            )
        })?;
        say(
            &mut std::io::stdout(),
            &format!(
                "sipward: listening on {} ({}, {})",
                zone.address,
                zone.name,
                if zone.inside { "inside" } else { "outside" }
            ),
        );
        sockets.push((zone.address, Arc::new(socket)));
    }
    let (tx, mut rx) = mpsc::channel::<Received>(4096);
    for (local, socket) in &sockets {
        spawn_receiver(*local, socket.clone(), tx.clone());
    }
    // Transparent mode: the listener(s) the router diverts to, and, when sipward manages
    // the firewall, the rules (removed again when `_firewall` is dropped, at stop or on
    // a failed start).
    let mut _firewall = None;
    if let Some(t) = &settings.transparent {
        if !crate::firewall::has_net_admin() {
            anyhow::bail!("{}", crate::firewall::NEEDS_NET_ADMIN);
        }
        for ipv6 in crate::firewall::listener_families(&config) {
            let socket = crate::transparent::bind_listener(t.listen_port, ipv6).map_err(|e| {
                if crate::transparent::is_permission(&e) {
                    anyhow::anyhow!("{}", crate::firewall::NEEDS_NET_ADMIN)
                } else {
                    anyhow::anyhow!(
                        "[transparent] listen_port {}: cannot open the transparent listener ({}): {e}",
                        t.listen_port,
                        if ipv6 { "IPv6" } else { "IPv4" }
                    )
                }
            })?;
            say(
                &mut std::io::stdout(),
                &format!(
                    "sipward: transparent listener on {} port {} (diverted SIP)",
                    if ipv6 { "[::]" } else { "0.0.0.0" },
                    t.listen_port
                ),
            );
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; RECV_BUFFER];
                loop {
                    match crate::transparent::recv_diverted(&socket, &mut buf).await {
                        Ok(d) => {
                            let data = buf.get(..d.len).unwrap_or_default().to_vec();
                            let flow = Flow::intercepted_udp(d.original_destination, d.remote);
                            if tx.send(Received { flow, data }).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::warn!("transparent receive failed: {e}"),
                    }
                }
            });
        }
        if t.manage_firewall {
            let (installed, warnings) = crate::firewall::install(&config, t)?;
            for w in warnings {
                say(&mut std::io::stderr(), &format!("sipward: {w}"));
            }
            say(
                &mut std::io::stdout(),
                &format!(
                    "sipward: firewall rules installed (table inet {}, fwmark {:#x} lookup {})",
                    crate::firewall::TABLE,
                    t.mark,
                    t.route_table
                ),
            );
            _firewall = Some(installed);
        }
    }
    let mut senders = crate::transparent::Senders::new(crate::transparent::SEND_SOCKETS);
    // A standby binds what it could not at start when promoted, and needs a sender then.
    let late_tx = settings.ha.as_ref().map(|_| tx.clone());
    drop(tx);

    let info = RunInfo {
        started: Instant::now(),
        started_wall: SystemTime::now(),
        listeners: config
            .zones
            .iter()
            .map(|z| (z.name.clone(), z.address, z.inside))
            .collect(),
        config_digest: settings.config_digest.clone(),
        transparent: settings.transparent.clone(),
        senders: senders.stats(),
    };
    let (admin_tx, mut admin_rx) = mpsc::channel::<AdminRequest>(64);
    // What a reload cannot change (the admin server and the event log are set up once).
    let running = Fixed {
        admin: settings.admin.clone(),
        events: settings.events.clone(),
        transparent: settings.transparent.clone(),
        journal: settings.journal.clone(),
        ha: settings.ha.clone(),
    };
    let _admin = match settings.admin {
        Some(admin) => Some(admin::serve(admin, admin_tx).await?),
        None => {
            drop(admin_tx);
            None
        }
    };
    let mut latency = Latency::default();
    let mut events = EventLog::open(settings.events.as_deref())?;
    if let Some(target) = settings.collectors.syslog {
        events.syslog = Some(Syslog::new(target).context("syslog collector")?);
    }
    let mut hep = match settings.collectors.hep {
        Some((target, id)) => Some(Hep::new(target, id).context("HEP collector")?),
        None => None,
    };

    let mut streams = crate::streams::runtime::StreamRuntime::start(
        settings
            .streams
            .setup(config.alg.limits.max_message_len, &config.agent),
    )
    .await?;
    for (local, transport) in streams.listeners() {
        say(
            &mut std::io::stdout(),
            &format!("sipward: listening on {local} ({})", transport.via_token()),
        );
    }
    let mut gateway = Gateway::new(config);
    // The active/standby part (`[ha]`): the standby's follower, the sockets it binds at
    // promotion.
    let mut pair = Pair {
        follower: None,
        deferred,
        late_tx,
    };
    let relay = RelayHandle::spawn_with_options(settings.relay.clone())
        .context("cannot start the media relay")?;
    tracing::info!(engine = ?relay.engine(), "media relay started");
    // Media sockets are bound as ports are handed out, so a call whose sockets cannot
    // open is refused with 503 rather than connected without audio.
    gateway.set_port_reserver(Box::new(relay.reservations()));
    let mut journal = match &settings.journal {
        Some(dir) => Some(crate::journal::Journal::start(dir, &mut gateway, &relay)?),
        None => None,
    };
    let mut store = match &settings.ha {
        Some(ha) if ha.standby => {
            pair.follower = Some(
                crate::ha::Follower::spawn(ha.store.clone(), gateway.secret_id())
                    .context("cannot start the standby's follower")?,
            );
            say(
                &mut std::io::stdout(),
                &format!(
                    "sipward: standby (group {}): following the Redis store {}; nothing is sent until promoted",
                    ha.store.group,
                    ha.store.shown()
                ),
            );
            Some(crate::redis_store::RedisStore::spawn(
                ha.store.clone(),
                gateway.secret_id(),
                true,
            )?)
        }
        Some(ha) => Some(start_store(ha, journal.is_some(), &mut gateway, &relay)?),
        None => None,
    };
    if pair.follower.is_none() && (journal.is_some() || store.is_some()) {
        gateway.enable_state_records();
        take_state(&mut gateway, &mut journal, &mut store);
    }
    say(&mut std::io::stdout(), "sipward: ready");
    // `SIPWARD_FAULT=panic`: a panic in the driver task once ready, to check that the
    // panic policy (one line, abort) and the service manager's restart do their part.
    if std::env::var_os("SIPWARD_FAULT").is_some_and(|v| v == "panic") {
        #[allow(clippy::panic)]
        {
            panic!("fault injected by SIPWARD_FAULT=panic");
        }
    }
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot watch SIGHUP")?;
    // SIGTERM (a service manager's stop) ends calls as SIGINT does, rather than killing
    // the process with calls up and no record of them.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut info = info;
    let mut stopping = false;
    loop {
        let standby = pair.follower.is_some();
        // A standby runs no timers: the active node's are the ones that fire.
        let deadline = if standby {
            None
        } else {
            gateway.poll_timeout()
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        // A snapshot a store's full channel refused is retried even when idle.
        let behind = journal.as_ref().is_some_and(|j| j.feed.behind())
            || store.as_ref().is_some_and(|s| s.feed.behind());
        let journal_retry = async {
            if behind {
                tokio::time::sleep(crate::journal::RETRY_EVERY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        // Fencing: an active node wakes each second to see whether another was promoted.
        let fence_check = async {
            if settings.ha.is_some() && !standby {
                tokio::time::sleep(FENCE_CHECK_EVERY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            received = rx.recv() => {
                let Some(r) = received else { break };
                if standby {
                    // Passive: what reaches a standby is the active's (or nobody's).
                    continue;
                }
                if let Some(h) = hep.as_mut() {
                    h.send(r.flow.remote, r.flow.local, &r.data);
                }
                let started = Instant::now();
                gateway.handle_message(started, r.flow, &r.data);
                latency.record(started.elapsed());
            }
            Some(event) = streams.next_event() => {
                let message = matches!(event, crate::streams::conn::ConnEvent::Message { .. });
                if message && pair.follower.is_some() {
                    // A standby answers nothing: the active node's state is in the store.
                    continue;
                }
                if let crate::streams::conn::ConnEvent::Message { flow, bytes } = &event {
                    if let Some(h) = hep.as_mut() {
                        h.send(flow.remote, flow.local, bytes);
                    }
                }
                let started = Instant::now();
                streams.feed(&mut gateway, event, started);
                latency.record(started.elapsed());
            }
            () = sleep => gateway.handle_timeout(Instant::now()),
            () = journal_retry => {}
            () = fence_check => {}
            Some(request) = admin_rx.recv() => {
                info.senders = senders.stats();
                let answer = match request.query {
                    admin::Query::Reload => match reload(&mut gateway, settings.path.as_deref(), &mut info, &running, (&streams, &settings.streams)) {
                        Ok((digest, restart)) if restart.is_empty() => admin::Answer::Json(serde_json::json!({"reloaded": true, "config_digest": digest})),
                        Ok((digest, restart)) => admin::Answer::Json(serde_json::json!({"reloaded": true, "config_digest": digest, "restart_needed": restart})),
                        Err(e) => admin::Answer::BadRequest(e),
                    },
                    admin::Query::Connections => admin::Answer::Json(streams.connections_json()),
                    admin::Query::Ha => admin::Answer::Json(ha_status(&pair, store.as_ref())),
                    admin::Query::Promote => match promote(&mut pair, &mut gateway, &relay, &mut journal, &mut store, &mut sockets) {
                        Ok(answer) => admin::Answer::Json(answer),
                        Err(e) => admin::Answer::BadRequest(e),
                    },
                    query => {
                        let metrics = matches!(query, admin::Query::Metrics);
                        let mut answer = admin::answer(&mut gateway, &info, &latency, query, Instant::now());
                        if let (true, admin::Answer::Text(text)) = (metrics, &mut answer) {
                            text.push_str(&streams.metrics());
                            if let Some(s) = store.as_ref() {
                                text.push_str(&s.status.metrics(pair.follower.is_none()));
                            }
                        }
                        answer
                    }
                };
                let _ = request.reply.send(answer);
            }
            Some(()) = hangup.recv() => {
                if let Err(e) = reload(&mut gateway, settings.path.as_deref(), &mut info, &running, (&streams, &settings.streams)) {
                    say(&mut std::io::stderr(), &format!("sipward: {e}"));
                }
            }
            _ = &mut shutdown => stopping = true,
            Some(()) = terminate.recv() => stopping = true,
        }
        match (&journal, &store, stopping) {
            // With a journal the calls survive the stop: no BYE, the next start restores them.
            (Some(j), _, true) => say(
                &mut std::io::stdout(),
                &format!(
                    "sipward: shutting down: calls kept in the journal at {}",
                    j.dir().display()
                ),
            ),
            (None, Some(s), true) => say(
                &mut std::io::stdout(),
                &format!(
                    "sipward: shutting down: calls kept in the Redis store {}",
                    s.settings.shown()
                ),
            ),
            (None, None, true) => {
                let calls = gateway.shutdown(Instant::now());
                say(
                    &mut std::io::stdout(),
                    &format!("sipward: shutting down: {calls} call(s) in progress ended"),
                );
            }
            _ => {}
        }
        if pair.follower.is_none() && store.as_ref().is_some_and(|s| s.status.fenced()) {
            demote(&mut pair, &mut gateway, &relay, store.as_ref());
        }
        if pair.follower.is_some() {
            // A standby sends nothing (what an admin action here queues is the active's
            // to send); it makes no records, state comes to it from the store.
            while gateway.poll_transmit().is_some() {}
            while gateway.poll_state(Instant::now()).is_some() {}
        }
        take_state(&mut gateway, &mut journal, &mut store);
        relay.apply(std::iter::from_fn(|| gateway.poll_media()));
        events.write_all(std::iter::from_fn(|| gateway.poll_event()));
        events.write_all(streams.drain_events().into_iter());
        while let Some(t) = gateway.poll_transmit() {
            if let Some(h) = hep.as_mut() {
                h.send(t.local, t.remote, &t.payload);
            }
            if t.transport != sipward_core::Transport::Udp {
                if !streams.transmit(&t) {
                    // Answered by the core (503, 430), whose answers this loop sends.
                    gateway.handle_undeliverable(Instant::now(), t.flow(), &t.payload);
                }
                continue;
            }
            if t.intercepted {
                senders.send(t.local, t.remote, &t.payload).await;
            } else if let Some((_, socket)) = sockets.iter().find(|(a, _)| *a == t.local) {
                if let Err(e) = socket.send_to(&t.payload, t.remote).await {
                    tracing::warn!(remote = %t.remote, "send failed: {e}");
                }
            }
        }
        streams.refresh_usage(|id| gateway.connection_use(id));
        if stopping {
            // The BYEs are out (UDP sends complete at once) and the events written:
            // the far ends' 200s are not awaited, as nothing would be done with them.
            // The journal writes what is queued and syncs it to disk.
            if let Some(j) = journal.as_mut() {
                j.close();
            }
            if let Some(s) = store.as_mut() {
                s.close();
            }
            // Stream connections write what is queued (the BYEs) and close, briefly.
            streams
                .close_all(std::time::Duration::from_millis(500))
                .await;
            break;
        }
    }
    Ok(())
}

/// Hands the core's new state records to the journal and the store (one drain of the
/// core's queue for both).
fn take_state(
    gateway: &mut Gateway,
    journal: &mut Option<crate::journal::Journal>,
    store: &mut Option<crate::redis_store::RedisStore>,
) {
    if journal.is_none() && store.is_none() {
        // No store: nothing to take, and no allocation on the packet path.
        return;
    }
    let mut feeds: Vec<&mut crate::store::Feed> = Vec::with_capacity(2);
    if let Some(j) = journal.as_mut() {
        feeds.push(&mut j.feed);
    }
    if let Some(s) = store.as_mut() {
        feeds.push(&mut s.feed);
    }
    if !feeds.is_empty() {
        crate::store::take(gateway, Instant::now(), &mut feeds);
    }
}

/// How often an active node of a pair wakes to check the store's epoch (the writer
/// reads it with each batch, and each second when idle).
const FENCE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The active/standby part of the driver's state.
struct Pair {
    /// Set while standby: the thread following the store.
    follower: Option<crate::ha::Follower>,
    /// Addresses a standby could not bind at start (the active holds them on this host).
    deferred: Vec<SocketAddr>,
    /// Feeds the receivers of sockets bound after start.
    late_tx: Option<mpsc::Sender<Received>>,
}

fn spawn_receiver(local: SocketAddr, socket: Arc<UdpSocket>, tx: mpsc::Sender<Received>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, remote)) => {
                    let data = buf.get(..n).unwrap_or_default().to_vec();
                    let flow = Flow::udp(local, remote);
                    if tx.send(Received { flow, data }).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(%local, "receive failed: {e}"),
            }
        }
    });
}

/// `GET /api/v1/ha`: this node's role and epoch and how its store is doing.
fn ha_status(pair: &Pair, store: Option<&crate::redis_store::RedisStore>) -> serde_json::Value {
    use std::sync::atomic::Ordering;
    let Some(s) = store else {
        return serde_json::json!({"role": "single", "store": null});
    };
    let following = pair.follower.as_ref().map(crate::ha::Follower::json);
    serde_json::json!({
        "role": if following.is_some() { "standby" } else { "active" },
        "group": s.settings.group,
        "epoch": s.status.own_epoch.load(Ordering::Relaxed),
        "store_epoch": s.status.seen_epoch.load(Ordering::Relaxed),
        "lag_ms": following.as_ref().and_then(|f| f.get("lag_ms").cloned()).unwrap_or(serde_json::json!(0)),
        "following": following,
        "store": s.status.json(),
    })
}

/// `POST /api/v1/ha/promote`: a standby binds what it deferred, raises the store's
/// epoch (fencing the old active), restores the followed records with the CSeqs it
/// writes jumped ahead by 1000, arms its timers and writes as the active.
fn promote(
    pair: &mut Pair,
    gateway: &mut Gateway,
    relay: &RelayHandle,
    journal: &mut Option<crate::journal::Journal>,
    store: &mut Option<crate::redis_store::RedisStore>,
    sockets: &mut Vec<(SocketAddr, Arc<UdpSocket>)>,
) -> std::result::Result<serde_json::Value, String> {
    use std::sync::atomic::Ordering;
    let Some(s) = store.as_ref() else {
        return Err("no [state] store: nothing to promote from".into());
    };
    if pair.follower.is_none() {
        return Ok(serde_json::json!({
            "role": "active",
            "epoch": s.status.own_epoch.load(Ordering::Relaxed),
            "promoted": false,
        }));
    }
    while let Some(address) = pair.deferred.first().copied() {
        let socket = bind_signalling(address, true)
            .map_err(|e| format!("cannot bind {address}: {e}: still standby"))?;
        let socket = Arc::new(socket);
        if let Some(tx) = &pair.late_tx {
            spawn_receiver(address, socket.clone(), tx.clone());
        }
        sockets.push((address, socket));
        pair.deferred.remove(0);
        say(
            &mut std::io::stdout(),
            &format!("sipward: listening on {address}"),
        );
    }
    // Above any epoch seen, even if the store lost its data since it was read.
    let seen = pair
        .follower
        .as_ref()
        .map_or(0, crate::ha::Follower::epoch)
        .max(s.status.seen_epoch.load(Ordering::Relaxed));
    let meta = format!("sw:{}:meta", s.settings.group);
    let epoch = crate::redis_store::connect(&s.settings.url)
        .and_then(|mut con| {
            let raised: u64 = redis::cmd("HINCRBY")
                .arg(&meta)
                .arg("epoch")
                .arg(1)
                .query(&mut con)?;
            if raised > seen {
                return Ok(raised);
            }
            let above = seen + 1;
            redis::cmd("HSET")
                .arg(&meta)
                .arg("epoch")
                .arg(above)
                .query::<()>(&mut con)?;
            Ok(above)
        })
        .map_err(|e| {
            format!(
                "cannot raise the epoch in the Redis store {} ({e}): still standby",
                s.settings.shown()
            )
        })?;
    s.status.own_epoch.store(epoch, Ordering::Relaxed);
    s.status.seen_epoch.fetch_max(epoch, Ordering::Relaxed);
    let started = Instant::now();
    let records = pair
        .follower
        .take()
        .map(crate::ha::Follower::take)
        .unwrap_or_default();
    let report = gateway.restore_state(
        Instant::now(),
        crate::redis_store::with_ages(records),
        PROMOTION_CSEQ_JUMP,
    );
    relay.apply(std::iter::from_fn(|| gateway.poll_media()));
    gateway.enable_state_records();
    take_state(gateway, journal, store);
    say(
        &mut std::io::stdout(),
        &format!(
            "sipward: promoted to active (epoch {epoch}): restored {} binding(s), {} dialog(s) ({} stream(s)), {} ban(s) in {} ms ({} expired)",
            report.bindings,
            report.dialogs,
            report.streams,
            report.bans,
            started.elapsed().as_millis(),
            report.expired
        ),
    );
    Ok(serde_json::json!({
        "role": "active",
        "epoch": epoch,
        "promoted": true,
        "restored": {
            "bindings": report.bindings,
            "dialogs": report.dialogs,
            "streams": report.streams,
            "streams_lost": report.streams_lost,
            "bans": report.bans,
            "expired": report.expired,
        },
    }))
}

/// The CSeqs a promoted node writes in its own in-dialog requests jump ahead by this
/// much: the failed node may have sent some the store never saw.
const PROMOTION_CSEQ_JUMP: u32 = 1000;

/// Another node was promoted (a higher epoch in the store): this one stops acting at
/// once: its calls are dropped here without a BYE (they are the new active's now),
/// their media ports closed, nothing sent, no timers, and it follows the store again.
fn demote(
    pair: &mut Pair,
    gateway: &mut Gateway,
    relay: &RelayHandle,
    store: Option<&crate::redis_store::RedisStore>,
) {
    use std::sync::atomic::Ordering;
    let Some(s) = store else { return };
    say(
        &mut std::io::stderr(),
        &format!(
            "sipward: the Redis store's epoch ({}) is above this node's ({}): another node was promoted; stepping down to standby",
            s.status.seen_epoch.load(Ordering::Relaxed),
            s.status.own_epoch.load(Ordering::Relaxed)
        ),
    );
    let now = Instant::now();
    gateway.shutdown(now);
    relay.apply(std::iter::from_fn(|| gateway.poll_media()));
    while gateway.poll_transmit().is_some() {}
    while gateway.poll_state(now).is_some() {}
    while gateway.poll_event().is_some() {}
    let config = gateway.config().clone();
    *gateway = Gateway::new(config);
    gateway.set_port_reserver(Box::new(relay.reservations()));
    match crate::ha::Follower::spawn(s.settings.clone(), gateway.secret_id()) {
        Ok(f) => pair.follower = Some(f),
        Err(e) => say(
            &mut std::io::stderr(),
            &format!("sipward: cannot start the standby's follower: {e}"),
        ),
    }
}

/// Opens the Redis store: restores from it when there is no journal (an unreachable
/// store at start is said, and the gateway starts without that state, keeping the
/// store's keys for a later start), and starts its writer.
fn start_store(
    ha: &crate::config::HaSettings,
    have_journal: bool,
    gateway: &mut Gateway,
    relay: &RelayHandle,
) -> Result<crate::redis_store::RedisStore> {
    use crate::redis_store::RedisStore;
    let settings = &ha.store;
    let mut prune = true;
    if !have_journal {
        match RedisStore::restore(settings, gateway) {
            Ok(restored) => {
                let r = &restored.report;
                say(
                    &mut std::io::stdout(),
                    &format!(
                        "sipward: restored {} binding(s), {} dialog(s) ({} stream(s)), {} ban(s) from Redis store {} (group {}) in {} ms ({} expired, {} unreadable)",
                        r.bindings,
                        r.dialogs,
                        r.streams,
                        r.bans,
                        settings.shown(),
                        settings.group,
                        restored.took.as_millis(),
                        r.expired,
                        restored.unreadable
                    ),
                );
                relay.apply(std::iter::from_fn(|| gateway.poll_media()));
            }
            Err(e) if e.downcast_ref::<redis::RedisError>().is_some() => {
                say(
                    &mut std::io::stderr(),
                    &format!("sipward: warning: {e:#}: starting without its state (kept there)"),
                );
                prune = false;
            }
            Err(e) => return Err(e),
        }
    }
    RedisStore::spawn(settings.clone(), gateway.secret_id(), prune)
}

/// Socket buffers for the SIP sockets. Signalling arrives in bursts (a proxy relaying a
/// batch of responses, a phone's retransmissions): with the kernel's default (~200 KiB)
/// a burst that arrives while the gateway is busy is dropped and costs a retransmission
/// timer (0.5 s or more) for every message lost. The kernel caps these at
/// net.core.rmem_max / wmem_max.
const SIGNALLING_RECEIVE_BUFFER: usize = 8 << 20;
const SIGNALLING_SEND_BUFFER: usize = 4 << 20;

fn bind_signalling(address: SocketAddr, freebind: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Best effort: a smaller buffer than asked for still works.
    let _ = socket.set_recv_buffer_size(SIGNALLING_RECEIVE_BUFFER);
    let _ = socket.set_send_buffer_size(SIGNALLING_SEND_BUFFER);
    if address.is_ipv6() {
        // IPv6 only, whatever net.ipv6.bindv6only says: an interface is one family.
        socket.set_only_v6(true)?;
    }
    if freebind {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::IpFreebind, &true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// One status line, written without `println!`, which panics when the stream is a
/// closed pipe or a full disk: a gateway must not abort (or fail to start) over its log.
pub(crate) fn say(stream: &mut impl Write, line: &str) {
    let _ = writeln!(stream, "{line}");
    let _ = stream.flush();
}

/// The settings set up once at start, which a reload cannot change.
struct Fixed {
    admin: Option<admin::AdminSettings>,
    events: Option<String>,
    /// The listener and the firewall rules are set up once.
    transparent: Option<crate::config::TransparentSettings>,
    journal: Option<std::path::PathBuf>,
    ha: Option<crate::config::HaSettings>,
}

/// Re-reads the configuration and applies it to new traffic; on any error the running
/// configuration stays and the error (file, line, what) is returned. Also returned: the
/// sections whose changes wait for a restart (an operator rotating the admin token must
/// not believe the old one is gone).
fn reload(
    gateway: &mut Gateway,
    path: Option<&std::path::Path>,
    info: &mut RunInfo,
    running: &Fixed,
    (streams, running_streams): (
        &crate::streams::runtime::StreamRuntime,
        &crate::streams::StreamSettings,
    ),
) -> std::result::Result<(String, Vec<&'static str>), String> {
    let (config, settings) = crate::load_all(path)
        .map_err(|e| format!("reload refused, running configuration kept: {e:#}"))?;
    // Certificates rotate for new handshakes; open connections keep theirs.
    running_streams
        .reload_tls(&settings.streams)
        .map_err(|e| format!("reload refused, running configuration kept: {e:#}"))?;
    streams.set_limits(settings.streams.limits.clone());
    gateway
        .reconfigure(config)
        .map_err(|e| format!("reload refused, running configuration kept: {e}"))?;
    info.config_digest = settings.config_digest.clone();
    let mut restart = Vec::new();
    let admin = |a: &Option<admin::AdminSettings>| {
        a.as_ref().map(|a| {
            (
                a.listen,
                a.token.clone(),
                a.max_connections,
                a.request_timeout,
            )
        })
    };
    if admin(&settings.admin) != admin(&running.admin) {
        restart.push("[admin]");
    }
    if settings.events != running.events {
        restart.push("[gateway] events");
    }
    let listeners = |s: &crate::streams::StreamSettings| {
        s.listeners
            .iter()
            .map(|l| (l.local, l.transport))
            .collect::<Vec<_>>()
    };
    if listeners(&settings.streams) != listeners(running_streams) {
        restart.push("tcp/tls services");
    }
    if settings.transparent != running.transparent {
        restart.push("[transparent] (or which interfaces intercept)");
    }
    if settings.journal != running.journal {
        restart.push("[state] dir");
    }
    if settings.ha != running.ha {
        restart.push("[state] store and [ha]");
    }
    let note = if restart.is_empty() {
        String::new()
    } else {
        format!(
            "; {} changed: applied at the next restart",
            restart.join(" and ")
        )
    };
    say(
        &mut std::io::stdout(),
        &format!(
            "sipward: configuration reloaded ({}){note}",
            settings.config_digest
        ),
    );
    Ok((settings.config_digest, restart))
}

/// Security events as JSON lines, with stable field names.
struct EventLog {
    sink: Option<Box<dyn Write + Send>>,
    syslog: Option<Syslog>,
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
        Ok(Self { sink, syslog: None })
    }

    fn write_all(&mut self, events: impl Iterator<Item = SecurityEvent>) {
        if self.sink.is_none() && self.syslog.is_none() {
            // Nowhere to write (events = "off"): the queue is emptied, nothing formatted.
            events.for_each(drop);
            return;
        }
        let mut any = false;
        for e in events {
            any = true;
            let time = wall_clock(e.at);
            let line = EventLine {
                time: time.clone(),
                kind: e.kind.as_str(),
                source: e.source,
                user: e.user.as_deref(),
                method: e.method.as_deref(),
                reason: &e.reason,
            };
            let Ok(text) = serde_json::to_string(&line) else {
                continue;
            };
            if let Some(sink) = self.sink.as_mut() {
                let _ = writeln!(sink, "{text}");
            }
            if let Some(syslog) = &self.syslog {
                syslog.send(&e, &time, &text);
            }
        }
        if let (true, Some(sink)) = (any, self.sink.as_mut()) {
            let _ = sink.flush();
        }
    }
}

/// The wall-clock time of a core instant, RFC 3339 in UTC.
pub(crate) fn wall_clock(at: Instant) -> String {
    let age = Instant::now().saturating_duration_since(at);
    let when = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    time::OffsetDateTime::from(when)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod ipv6_tests {
    #![allow(clippy::unwrap_used)]

    #[tokio::test(flavor = "current_thread")]
    async fn an_ipv6_interface_socket_is_ipv6_only() {
        let socket = super::bind_signalling("[::1]:0".parse().unwrap(), false).unwrap();
        assert!(socket2::SockRef::from(&socket).only_v6().unwrap());
    }
}
