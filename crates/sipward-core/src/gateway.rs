//! The gateway state machine: classify each datagram by zone and rule, translate it
//! between inside and outside, remember what the way back needs, and run the timers.
//!
//! Topology hiding (inside towards outside): the phone's Via fields are replaced by one
//! gateway Via and restored on responses; the Call-ID of an inside-originated call is
//! replaced by a keyed hash; every SIP URI naming an inside host (Request-URI, From, To,
//! Contact) is rewritten to the gateway's outside address (or, where the phone addressed
//! the gateway itself, the proxy); Contacts carry a token (`swc`) that routes inbound
//! requests back to the right phone; the SDP goes through the [`MediaTable`], which points
//! it at the media relay.
//!
//! The gateway is one struct; its methods live by concern:
//!
//! | module | concern |
//! |---|---|
//! | `route` | a message enters: source check, parse, zone of its [`Flow`], rule, path |
//! | `limits` | rates, filters, admission, table shares and eviction |
//! | `outbound` | inside to outside: a phone's request and the responses to it |
//! | `inbound` | outside to inside: a request for a phone and its responses |
//! | `rewrite` | header edits both directions share (Contacts, anchor, Vias, Expires) |
//! | `media_seam` | SDP through the media table |
//! | `transaction` | retransmissions, the gateway's own answers, timeouts per method |
//! | `dialogs` | dialog state, call events, the gateway's own BYEs |
//! | `cancelling`, `leaks` | hop-by-hop CANCEL; inside addresses the paths do not rewrite |
//! | `peers` | OPTIONS pings to next hops configured for them |
//! | `seam` | state records for a store, the snapshot, the restore |
//! | `timers` | the sweep and the shutdown |
//! | `emit` | a message leaves: [`Transmit`] on a flow, counters |
//!
//! A new way for messages to arrive (a transport, interception) is a [`Flow`]: it enters
//! through `route` and leaves through `emit`; the paths only pass flows along.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipward_proto::{
    build_answer, parse_datagram, Datagram, Edits, HeaderName, Message, MethodKind, NameAddr, Uri,
};

use crate::cancel::{Cancels, Due, Toward};
use crate::config::{Action, Config, Rule, ZoneId};
use crate::flow::{ConnectionId, Flow, Transport};
use crate::hide::{Hider, BRANCH_PREFIX};
use crate::hiding::Scanner;
use crate::retransmit::{Due as RetransmitDue, Kind as RetransmitKind, Retransmits};

mod cancelling;
mod dialogs;
mod emit;
mod inbound;
mod leaks;
mod limits;
mod media_seam;
mod outbound;
mod peers;
mod rewrite;
mod route;
mod seam;
mod timers;
mod transaction;

use crate::media::{MediaCommand, MediaError, MediaTable, SdpPassage, Side};
use crate::protect::{BanView, Class, EventKind, Guard, SecurityEvent, Verdict};
use crate::state::{
    has_tag, Binding, BindingView, Changed, Claimant, ClientTx, Completed, Dialog, DialogKey,
    DialogView, Echo, Refusal, RegisterInfo, Room, ServerTx, SharePolicy, Tables, Victim,
};
pub use emit::{Counters, Traffic, Transmit};
use emit::{Direction, DIVERTED_DESTINATIONS};
pub use peers::PeerView;
use rewrite::*;
use route::arrived_inside;
use transaction::*;

/// How long a transaction is kept after its final response, to route retransmissions
/// (64*T1, RFC 3261 section 17).
const LINGER: Duration = Duration::from_secs(32);
/// How long a non-INVITE transaction waits for its final response: Timer F, 64*T1
/// (RFC 3261 17.1.2.2). Its sender gives up then too; holding the entry for the whole
/// request-response timeout would only let an unanswered flood keep the table.
const TIMER_F: Duration = Duration::from_secs(32);
/// How often the timers are swept.
const SWEEP: Duration = Duration::from_secs(1);
/// Contact URI parameter that carries the gateway's routing token.
const TOKEN_PARAM: &str = "swc";

/// The gateway core.
pub struct Gateway {
    config: Arc<Config>,
    hider: Hider,
    tables: Tables,
    out: VecDeque<Transmit>,
    counters: Counters,
    media: MediaTable,
    guard: Guard,
    traffic: Traffic,
    /// The time of the event being handled (for events raised deep inside); None
    /// before the first.
    now: Option<Instant>,
    next_sweep: Option<Instant>,
    /// The gateway's own CANCELs for the INVITEs it relays.
    cancels: Cancels,
    /// Its own retransmissions on UDP legs for senders on streams.
    retransmits: Retransmits,
    /// The state seam's bookkeeping (records for a store).
    seam: seam::Seam,
    /// OPTIONS pings to next hops, by rule name.
    pings: std::collections::HashMap<String, peers::PeerPing>,
    /// What the inside addresses look like in text (the outgoing scan).
    scanner: Scanner,
}

/// Facts about one datagram's arrival, passed down the handlers.
#[derive(Clone, Copy)]
struct Arrival {
    now: Instant,
    flow: Flow,
}

impl Gateway {
    pub fn new(config: Config) -> Self {
        let pools: Vec<_> = config
            .zones
            .iter()
            .filter_map(|z| z.media_ports.map(|(low, high)| (z.address.ip(), low, high)))
            .collect();
        let networks = config
            .zones
            .iter()
            .flat_map(|z| z.networks.clone())
            .collect();
        let media = MediaTable::new(&pools, config.alg.media_latching, networks)
            .with_bypass(config.alg.allow_media_bypass);
        let guard = Guard::new(config.protection.clone());
        let scanner = config.inside_scanner();
        Self {
            scanner,
            guard,
            traffic: Traffic::default(),
            now: None,
            hider: Hider::new(&config.secret),
            config: Arc::new(config),
            tables: Tables::default(),
            out: VecDeque::new(),
            counters: Counters::default(),
            media,
            next_sweep: None,
            cancels: Cancels::default(),
            retransmits: Retransmits::default(),
            pings: std::collections::HashMap::new(),
            seam: seam::Seam::default(),
        }
    }

    /// Applies a new configuration to new traffic (a reload) without dropping
    /// registrations, dialogs, media or bans. Interfaces and media port ranges must stay
    /// as they are (sockets are bound to them): otherwise the reload is refused with the
    /// reason. The hashing secret stays the running one, so hidden names in established
    /// dialogs keep their meaning.
    pub fn reconfigure(&mut self, mut config: Config) -> Result<(), String> {
        let same_zones = config.zones.len() == self.config.zones.len()
            && config.zones.iter().zip(&self.config.zones).all(|(a, b)| {
                a.name == b.name && a.address == b.address && a.media_ports == b.media_ports
            });
        if !same_zones {
            return Err(
                "interfaces, their addresses or media ports changed: restart sipward to apply"
                    .into(),
            );
        }
        config.secret = self.config.secret;
        self.scanner = config.inside_scanner();
        self.guard.set_options(config.protection.clone());
        self.media
            .set_options(config.alg.media_latching, config.alg.allow_media_bypass);
        self.config = Arc::new(config);
        Ok(())
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn media(&self) -> &MediaTable {
        &self.media
    }

    /// Messages in and out by method and response class, malformed input by defect.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// The next security event for the log.
    pub fn poll_event(&mut self) -> Option<SecurityEvent> {
        self.guard.poll_event()
    }

    /// The blacklist as it stands at `now`.
    pub fn bans(&self, now: Instant) -> Vec<BanView> {
        self.guard.bans(now)
    }

    /// Bans `source` by hand (the operator); `duration` None: the configured ban time.
    /// An IPv4-mapped IPv6 address (`::ffff:192.0.2.5`) bans the IPv4 source: datagrams
    /// arrive from that, and the mapped form would never match one.
    pub fn ban(&mut self, source: IpAddr, duration: Option<Duration>, reason: &str, now: Instant) {
        let source = source.to_canonical();
        self.guard.ban(source, None, None, reason, now, duration);
        self.guard.mark_by_operator(source);
        self.arm(now);
    }

    /// Lifts a ban by hand; false when there was none.
    pub fn unban(&mut self, source: IpAddr, now: Instant) -> bool {
        self.guard
            .unban(source.to_canonical(), now, "removed by operator")
    }

    /// Sources the protection currently tracks (bounded).
    pub fn tracked_sources(&self) -> usize {
        self.guard.tracked_sources()
    }

    /// Opens media sockets as ports are handed out (the driver's binds them; see
    /// [`crate::PortReserver`]), so that a call whose media cannot open is refused with 503.
    pub fn set_port_reserver(&mut self, reserver: Box<dyn crate::media::PortReserver>) {
        self.media.set_reserver(reserver);
    }

    /// Every bounded table's fill and capacity, for the admin surface (media port
    /// pools are in [`MediaTable::pool_usage`]).
    pub fn table_usage(&self) -> Vec<TableUsage> {
        let alg = &self.config.alg;
        let completed = crate::state::MAX_COMPLETED;
        let mut out = vec![
            TableUsage::new(
                "registrations",
                self.tables.bindings().len(),
                alg.max_registrations,
            ),
            TableUsage::new("dialogs", self.tables.dialogs.len(), alg.max_dialogs),
            TableUsage::new(
                "transactions",
                self.tables.transactions(),
                alg.max_transactions,
            ),
            TableUsage::new(
                "completed_client_transactions",
                self.tables.completed_client.len(),
                completed,
            ),
            TableUsage::new(
                "completed_server_transactions",
                self.tables.completed_server.len(),
                completed,
            ),
        ];
        for (table, entries, capacity) in self.guard.table_usage() {
            out.push(TableUsage::new(table, entries, capacity));
        }
        out
    }

    /// The next instruction for the media relay; drain after every call, like
    /// [`Gateway::poll_transmit`].
    pub fn poll_media(&mut self) -> Option<MediaCommand> {
        self.media.poll_command()
    }

    /// How many calls (INVITE dialogs, early or confirmed) are held.
    pub fn call_count(&self) -> usize {
        self.tables.dialogs.values().filter(|d| d.session).count()
    }

    /// How many registration bindings are held.
    pub fn registration_count(&self) -> usize {
        self.tables.bindings().len()
    }

    /// Registration bindings, for inspection.
    pub fn bindings(&self) -> Vec<BindingView> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.tables
            .bindings()
            .values()
            .map(|b| BindingView {
                aor: text(&b.aor),
                phone: b.phone.remote,
                registrar: b.registrar,
                intercepted: b.phone.intercepted,
                inside_contact: text(&b.inside_contact),
                outside_contact: text(&b.outside_contact),
                expires_at: b.expires_at,
            })
            .collect()
    }

    /// Dialogs (calls), early and confirmed.
    pub fn dialogs(&self) -> Vec<DialogView> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.tables
            .dialogs
            .values()
            .map(|d| DialogView {
                inside_call_id: text(&d.inside_call_id),
                outside_call_id: text(&d.outside_call_id),
                aor: text(&d.aor),
                phone: d.phone.remote,
                confirmed: d.confirmed,
                created: d.created,
                session: d.session,
                outbound: d.originated_inside,
                streams: self.media.streams(&d.key().media_id()),
            })
            .collect()
    }

    /// Transactions in progress or lingering.
    pub fn transactions(&self) -> usize {
        self.tables.transactions()
    }

    /// The next datagram to send, if any. Poll after every `handle_*` call until `None`.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When [`Gateway::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.next_sweep,
            self.cancels.next_due(),
            self.retransmits.next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- inside to outside ----

    // ---- outside to inside ----

    // ---- timers ----
}

/// One bounded table's fill and capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableUsage {
    pub table: &'static str,
    pub entries: usize,
    pub capacity: usize,
}

impl TableUsage {
    fn new(table: &'static str, entries: usize, capacity: usize) -> Self {
        Self {
            table,
            entries,
            capacity,
        }
    }
}
