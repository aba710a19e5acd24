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

mod cancelling;
mod leaks;
use crate::media::{MediaCommand, MediaError, MediaTable, SdpPassage, Side};
use crate::protect::{BanView, Class, EventKind, Guard, SecurityEvent, Verdict};
use crate::state::{
    has_tag, Binding, BindingView, Claimant, ClientTx, Completed, Dialog, DialogKey, DialogView,
    Echo, Refusal, RegisterInfo, Room, ServerTx, SharePolicy, Tables, Victim,
};

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

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The address to send from: the gateway's own (and so its socket), or for an
    /// intercepted flow the address the phone believes it talks to.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub payload: Vec<u8>,
    pub transport: Transport,
    /// The stream connection to send on (None: UDP, or open one to `remote`).
    pub connection: Option<ConnectionId>,
    /// Sent from an address that is not the gateway's (see [`Flow::intercepted`]).
    pub intercepted: bool,
}

impl Transmit {
    /// The flow this message leaves on.
    pub fn flow(&self) -> Flow {
        Flow {
            transport: self.transport,
            local: self.local,
            remote: self.remote,
            connection: self.connection,
            intercepted: self.intercepted,
        }
    }

    fn on(flow: Flow, payload: Vec<u8>) -> Self {
        Self {
            local: flow.local,
            remote: flow.remote,
            payload,
            transport: flow.transport,
            connection: flow.connection,
            intercepted: flow.intercepted,
        }
    }
}

/// Event counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub received: u64,
    pub forwarded: u64,
    pub answered_malformed: u64,
    pub dropped_malformed: u64,
    /// CRLF keepalives absorbed and STUN Binding requests answered, from admitted senders.
    pub keepalives: u64,
    pub dropped_no_rule: u64,
    pub dropped_by_rule: u64,
    pub rejected_by_rule: u64,
    pub stray_responses: u64,
    /// Retransmitted requests answered from the transaction or absorbed, not relayed.
    pub absorbed_retransmissions: u64,
    pub unknown_target: u64,
    pub session_limit: u64,
    pub state_full: u64,
    pub timeouts: u64,
    pub dialogs_expired: u64,
    pub bindings_expired: u64,
    pub edit_failures: u64,
    /// Dropped by protection: banned sources, floods, filters; answered 503 for overload.
    pub dropped_banned: u64,
    pub dropped_flood: u64,
    pub dropped_filtered: u64,
    pub overloaded: u64,
    /// Of `overloaded`: new requests from outside zones (their own admission budget).
    pub overloaded_outside: u64,
    /// Of `state_full`: refused because the source was over its fair share of a table,
    /// or the outside sources over theirs.
    pub refused_share: u64,
    /// Transactions ended early (503) to give a source under its fair share the room
    /// that one over its share held.
    pub evicted_transactions: u64,
    /// Calls ended because their media went idle (data-channel timeout).
    pub media_timeouts: u64,
    /// Outgoing outside datagrams the last-line scan found inside addresses in (then
    /// rewritten, trimmed or refused per `leak_policy`).
    pub inside_address_leaks: u64,
}

impl Counters {
    /// Every counter by a stable name (the admin API's and the metrics' keys).
    pub fn fields(&self) -> [(&'static str, u64); 26] {
        [
            ("received", self.received),
            ("forwarded", self.forwarded),
            ("answered_malformed", self.answered_malformed),
            ("dropped_malformed", self.dropped_malformed),
            ("keepalives", self.keepalives),
            ("dropped_no_rule", self.dropped_no_rule),
            ("dropped_by_rule", self.dropped_by_rule),
            ("rejected_by_rule", self.rejected_by_rule),
            ("stray_responses", self.stray_responses),
            ("absorbed_retransmissions", self.absorbed_retransmissions),
            ("unknown_target", self.unknown_target),
            ("session_limit", self.session_limit),
            ("state_full", self.state_full),
            ("timeouts", self.timeouts),
            ("dialogs_expired", self.dialogs_expired),
            ("bindings_expired", self.bindings_expired),
            ("edit_failures", self.edit_failures),
            ("dropped_banned", self.dropped_banned),
            ("dropped_flood", self.dropped_flood),
            ("dropped_filtered", self.dropped_filtered),
            ("overloaded", self.overloaded),
            ("overloaded_outside", self.overloaded_outside),
            ("refused_share", self.refused_share),
            ("evicted_transactions", self.evicted_transactions),
            ("media_timeouts", self.media_timeouts),
            ("inside_address_leaks", self.inside_address_leaks),
        ]
    }
}

/// Which way a message went.
#[derive(Clone, Copy)]
enum Direction {
    In,
    Out,
}

/// Original destinations counted one by one in [`Traffic::diverted_to`]; the rest are
/// summed in `diverted_to_other` (a rule to `any` must not grow the map without bound).
const DIVERTED_DESTINATIONS: usize = 256;

/// Message counts for the operator: requests by method and responses by class (1xx..6xx),
/// each way, and malformed datagrams by defect. Keys are bounded: known methods, "other".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    pub requests_in: std::collections::BTreeMap<String, u64>,
    pub requests_out: std::collections::BTreeMap<String, u64>,
    /// Index 0 is 1xx ... index 5 is 6xx.
    pub responses_in: [u64; 6],
    pub responses_out: [u64; 6],
    pub malformed: std::collections::BTreeMap<String, u64>,
    /// Intercepted (transparent mode) messages by the rule that admitted them, and by
    /// their original destination.
    pub diverted: std::collections::BTreeMap<String, u64>,
    pub diverted_to: std::collections::BTreeMap<SocketAddr, u64>,
    pub diverted_to_other: u64,
    /// Intercepted messages no rule admits (dropped).
    pub diverted_unmatched: u64,
}

impl Traffic {
    fn count(&mut self, flow: Direction, payload: &[u8]) {
        if let Some(rest) = payload.strip_prefix(b"SIP/2.0 ") {
            let class = rest.first().map_or(0, |d| d.wrapping_sub(b'1') as usize);
            let classes = match flow {
                Direction::In => &mut self.responses_in,
                Direction::Out => &mut self.responses_out,
            };
            if let Some(c) = classes.get_mut(class) {
                *c += 1;
            }
            return;
        }
        let token = payload.split(|&b| b == b' ').next().unwrap_or_default();
        let name = match MethodKind::from_bytes(token) {
            MethodKind::Other => "OTHER",
            _ => std::str::from_utf8(token).unwrap_or("OTHER"),
        };
        let map = match flow {
            Direction::In => &mut self.requests_in,
            Direction::Out => &mut self.requests_out,
        };
        match map.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                map.insert(name.to_string(), 1);
            }
        }
    }
}

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
        match (self.next_sweep, self.cancels.next_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends a datagram; one leaving by an outside interface passes the last-line scan
    /// first (false: it was refused).
    fn send(&mut self, local: SocketAddr, remote: SocketAddr, payload: Vec<u8>) -> bool {
        self.send_on(Flow::udp(local, remote), payload)
    }

    /// Sends on `flow` (a phone's, kept in the tables, or the outside leg's).
    fn send_on(&mut self, flow: Flow, payload: Vec<u8>) -> bool {
        let payload = if flow.intercepted {
            // Toward an intercepted phone, so inside: nothing to scan.
            Some(payload)
        } else {
            self.outgoing(flow.local, payload)
        };
        match payload {
            Some(payload) => {
                self.push_on(flow, payload);
                true
            }
            None => false,
        }
    }

    fn push(&mut self, local: SocketAddr, remote: SocketAddr, payload: Vec<u8>) {
        self.push_on(Flow::udp(local, remote), payload);
    }

    fn push_on(&mut self, flow: Flow, payload: Vec<u8>) {
        self.traffic.count(Direction::Out, &payload);
        self.out.push_back(Transmit::on(flow, payload));
    }

    fn arm(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(crate::protect::later(now, SWEEP));
        }
    }

    /// Feeds one UDP datagram received on the gateway's own address `local`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
    ) {
        self.handle_message(now, Flow::udp(local, remote), data);
    }

    /// Feeds one received message (a datagram, an intercepted datagram, a message
    /// framed from a stream) to the gateway.
    pub fn handle_message(&mut self, now: Instant, flow: Flow, data: &[u8]) {
        self.counters.received += 1;
        self.now = Some(now);
        let remote = flow.remote;
        if !self.guard.admit_source(remote.ip(), now) {
            self.counters.dropped_banned += 1;
            return;
        }
        let config = self.config.clone();
        let Some(zone) = config.zone_of_flow(&flow) else {
            self.counters.dropped_no_rule += 1;
            return;
        };
        if flow.intercepted && !self.count_diverted(&config, zone, &flow) {
            return;
        }
        let at = Arrival { now, flow };
        match parse_datagram(data, &config.alg.limits) {
            Err(rejection) => {
                // Malformed input counts against the sender's new-request limit, so a
                // stream of garbage gets it banned like any other flood.
                if !self
                    .guard
                    .within_rate(remote.ip(), Class::NewRequest, "malformed", now)
                {
                    self.counters.dropped_flood += 1;
                    self.arm(now);
                    return;
                }
                *self
                    .traffic
                    .malformed
                    .entry(format!("{:?}", rejection.defect.kind))
                    .or_default() += 1;
                // A scanner does not get past the scanner filter (and an answer) by
                // malforming its request: every User-Agent the answer's lenient scan
                // finds is screened as a parsed request's would be.
                if rejection.status.is_some() {
                    let source = remote.ip();
                    let scanner =
                        sipward_proto::lenient_user_agents(data)
                            .into_iter()
                            .any(|agent| {
                                !self.guard.filter_request(
                                    source,
                                    "malformed",
                                    true,
                                    Some(agent),
                                    now,
                                )
                            });
                    if scanner {
                        self.counters.dropped_filtered += 1;
                        self.arm(now);
                        return;
                    }
                }
                let reason = format!("malformed: {}", rejection.defect);
                self.guard.rejected(remote.ip(), None, &reason, now);
                match build_answer(data, &rejection, &config.agent) {
                    Some(answer) => {
                        self.counters.answered_malformed += 1;
                        self.send_on(flow, answer);
                    }
                    None => self.counters.dropped_malformed += 1,
                }
                self.arm(now);
            }
            Ok(Datagram::Keepalive) => {
                // Absorbed without a reply: over UDP RFC 5626's keepalive is STUN (below),
                // and a CRLF sent back confuses clients that never asked for one.
                if config.match_rule(zone, &flow).is_some() {
                    self.counters.keepalives += 1;
                } else {
                    self.counters.dropped_no_rule += 1;
                }
            }
            Ok(Datagram::StunBinding(request)) => {
                // RFC 5626 section 4.4.2: answer the Binding request on the SIP port,
                // for senders the rule set admits and within the sender's rate (the
                // answer is at most about twice the request, so no amplifier).
                if config.match_rule(zone, &flow).is_none() {
                    self.counters.dropped_no_rule += 1;
                    return;
                }
                if !self
                    .guard
                    .within_rate(remote.ip(), Class::DialogRequest, "STUN", now)
                {
                    self.counters.dropped_flood += 1;
                    self.arm(now);
                    return;
                }
                self.counters.keepalives += 1;
                // Not a SIP message: sent without counting it in the traffic figures.
                let answer = sipward_proto::stun::binding_success(&request, remote);
                self.out.push_back(Transmit::on(flow, answer));
            }
            Ok(Datagram::Message(msg)) => {
                self.traffic.count(Direction::In, data);
                // A request the rule set drops is dropped before protection: it must
                // not spend an admission budget (strangers on the outside would take
                // the proxy's, spoofed sources each under their own limits) nor be
                // answered 503 by a gateway whose rules say nothing goes back to it.
                if msg.is_request() && self.dropped_by_rules(&config, zone, at, &msg) {
                    self.arm(now);
                    return;
                }
                if !self.screen(&config, at, &msg) {
                    self.arm(now);
                    return;
                }
                let inside = config.zone(zone).is_some_and(|z| z.inside);
                match (inside, msg.is_request()) {
                    (true, true) => self.request_from_inside(&config, zone, at, &msg),
                    (true, false) => self.response_from_inside(&config, at, &msg),
                    (false, true) => self.request_from_outside(&config, zone, at, &msg),
                    (false, false) => self.response_from_outside(&config, at, &msg),
                }
                self.arm(now);
            }
        }
    }

    /// Counts an intercepted message by its rule and original destination; false when no
    /// rule admits it (dropped and counted: the rule set's default).
    fn count_diverted(&mut self, config: &Config, zone: ZoneId, flow: &Flow) -> bool {
        let Some(rule) = config.match_rule(zone, flow) else {
            self.traffic.diverted_unmatched += 1;
            self.counters.dropped_no_rule += 1;
            return false;
        };
        let by_rule = &mut self.traffic.diverted;
        match by_rule.get_mut(&rule.name) {
            Some(n) => *n += 1,
            None => {
                by_rule.insert(rule.name.clone(), 1);
            }
        }
        let by_destination = &mut self.traffic.diverted_to;
        if let Some(n) = by_destination.get_mut(&flow.local) {
            *n += 1;
        } else if by_destination.len() < DIVERTED_DESTINATIONS {
            by_destination.insert(flow.local, 1);
        } else {
            self.traffic.diverted_to_other += 1;
        }
        true
    }

    /// Protection on a parsed message: per-source rate, filters, admission, registration
    /// failures. False: it goes no further (dropped or answered here).
    fn screen(&mut self, config: &Config, at: Arrival, msg: &Message<'_>) -> bool {
        let source = at.flow.remote.ip();
        let Some(method) = msg.method() else {
            if !self
                .guard
                .within_rate(source, Class::Response, "response", at.now)
            {
                self.counters.dropped_flood += 1;
                return false;
            }
            return true;
        };
        let kind = method.kind();
        // Borrowed, not copied: this runs for every request.
        let name = std::str::from_utf8(method.as_bytes()).unwrap_or("?");
        // A To-tag makes a request part of a dialog only if the gateway holds one by
        // its Call-ID: anyone can write a tag, and such a request must not pass as
        // in-dialog around the new-request limits and admission.
        let in_dialog = (msg.to().and_then(|t| t.tag()).is_some()
            && self.holds_dialog(config, at, msg.call_id()))
            || matches!(kind, MethodKind::Ack | MethodKind::Cancel);
        let class = if in_dialog {
            Class::DialogRequest
        } else {
            Class::NewRequest
        };
        if !self.guard.within_rate(source, class, name, at.now) {
            self.counters.dropped_flood += 1;
            return false;
        }
        let known = kind != MethodKind::Other;
        if !self
            .guard
            .filter_request(source, name, known, msg.user_agent(), at.now)
        {
            self.counters.dropped_filtered += 1;
            return false;
        }
        if kind == MethodKind::Register {
            let user = register_user(msg);
            if !self.guard.may_register(source, &user, at.now) {
                self.counters.dropped_filtered += 1;
                return false;
            }
        }
        // Every new request takes a transaction and work upstream, whatever its method
        // (OPTIONS, SUBSCRIBE, MESSAGE, PUBLISH...): all count, each direction on its own.
        if !in_dialog {
            let outside = !arrived_inside(config, at);
            if let Verdict::Overloaded { retry_after } =
                self.guard.admit_new(source, name, outside, at.now)
            {
                self.counters.overloaded += 1;
                if outside {
                    self.counters.overloaded_outside += 1;
                }
                let tag = self.hider.token(&[msg.call_id(), b"answer"]);
                let mut payload = Echo::of(msg).response(
                    503,
                    "Service Unavailable",
                    &config.agent,
                    Some("overloaded"),
                    &tag,
                );
                let end = b"Content-Length: 0\r\n\r\n";
                if payload.ends_with(end) {
                    let at_len = payload.len() - end.len();
                    let header = format!("Retry-After: {retry_after}\r\n");
                    payload.splice(at_len..at_len, header.into_bytes());
                }
                self.send_on(at.flow, payload);
                return false;
            }
        }
        true
    }

    /// The bounds on what a request would add: transactions, calls per user (answered
    /// `busy`: 403 going out, 486 coming in), dialogs, registrations, each table shared
    /// fairly among sources (`Holders::room`). When one is reached the request is
    /// answered here (503 with an `overload` event) and false returned.
    #[allow(clippy::too_many_arguments)]
    fn within_state_limits(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        method: MethodKind,
        initial: bool,
        aor: &[u8],
        busy: (u16, &str),
    ) -> bool {
        let alg = &config.alg;
        let p = &config.protection;
        let policy = SharePolicy {
            reserve: p.table_reserve,
            floor: p.table_share_floor,
            outside_share: p.outside_table_share,
        };
        let source = at.flow.remote.ip();
        let outside = !arrived_inside(config, at);
        // The reserved room is for dialogs the gateway holds: a To-tag alone (anyone can
        // write one) does not make a request part of one. A CANCEL ends a pending
        // INVITE, whose dialog is held from the start: room for it like for a BYE.
        let held = self.holds_dialog(config, at, msg.call_id());
        let claim = Claimant {
            source,
            outside,
            exempt: self.guard.is_exempt(source),
            in_dialog: (!initial || method == MethodKind::Cancel) && held,
        };
        let guard = &self.guard;
        let exempt = |ip: IpAddr| guard.is_exempt(ip);
        let mut evict = None;
        if method != MethodKind::Ack {
            let entries = self.tables.transactions();
            match self
                .tables
                .tx_holders
                .room(alg.max_transactions, entries, claim, policy, exempt)
            {
                Room::Granted => {}
                Room::Evict(victim) => evict = Some(victim),
                Room::Refused(why) => return self.refuse_full(config, at, msg, "transaction", why),
            }
        }
        if method == MethodKind::Invite
            && initial
            && self.tables.sessions_of(aor) >= alg.max_sessions_per_id
        {
            self.counters.session_limit += 1;
            self.answer(
                config,
                at,
                msg,
                busy.0,
                busy.1,
                "maximum sessions per user reached",
            );
            return false;
        }
        let new_dialog = Claimant {
            in_dialog: false,
            ..claim
        };
        if creates_dialog(method) && initial {
            let room =
                self.tables
                    .dialog_holders
                    .room_kept(alg.max_dialogs, new_dialog, policy, exempt);
            if let Some(why) = refusal(room) {
                return self.refuse_full(config, at, msg, "dialog", why);
            }
        }
        // Each call holds a pair of media ports on each side: the smallest pool bounds
        // the calls, and they are shared like a table of that size.
        let media_calls = self.media.pool_usage().iter().map(|p| p.2).min();
        if let (MethodKind::Invite, true, Some(cap)) = (method, initial, media_calls) {
            let room = self
                .tables
                .call_holders
                .room_kept(cap, new_dialog, policy, exempt);
            // An exhausted pool is the media table's to answer (and count).
            match refusal(room) {
                None | Some(Refusal::Full) => {}
                Some(why) => return self.refuse_full(config, at, msg, "media port", why),
            }
        }
        // A phone refreshing or removing a binding it holds adds nothing to the table:
        // a full table must not cost it its registration.
        if method == MethodKind::Register && !self.tables.holds_binding(aor, source) {
            let room = self.tables.binding_holders.room_kept(
                alg.max_registrations,
                new_dialog,
                policy,
                exempt,
            );
            if let Some(why) = refusal(room) {
                return self.refuse_full(config, at, msg, "registration", why);
            }
        }
        if let Some(victim) = evict {
            self.evict_transaction(config, victim);
        }
        true
    }

    /// Whether the gateway holds a dialog of this Call-ID, as the side the datagram
    /// arrived on names it.
    fn holds_dialog(&self, config: &Config, at: Arrival, call_id: &[u8]) -> bool {
        if arrived_inside(config, at) {
            self.tables.call_ids.contains_key(call_id)
        } else {
            self.tables.outside_dialog(call_id, None).is_some()
        }
    }

    /// Answers 503 for want of room in `table`, counts it and raises an `overload` event.
    fn refuse_full(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        table: &str,
        why: Refusal,
    ) -> bool {
        self.counters.state_full += 1;
        if why.is_share() {
            self.counters.refused_share += 1;
        }
        let method = msg
            .method()
            .and_then(|m| std::str::from_utf8(m.as_bytes()).ok());
        let warning = format!("gateway {table} {}", why.text());
        self.guard.table_refused(
            at.flow.remote.ip(),
            method,
            &format!("{warning}: 503"),
            at.now,
        );
        self.answer(config, at, msg, 503, "Service Unavailable", &warning);
        false
    }

    /// Ends one transaction to make room for a source under its fair share: a settled
    /// one (it only absorbs retransmissions), or one of `victim`'s still pending, a
    /// non-INVITE rather than an INVITE; a pending one is answered 503 towards its
    /// sender, as if the next hop had refused it. The first fit found goes (not the
    /// oldest), so the walk usually stops early: this runs for every claim on a full
    /// table.
    fn evict_transaction(&mut self, config: &Config, victim: Victim) {
        let (settled, holder) = match victim {
            Victim::Settled => (true, None),
            Victim::Holder(ip) => (false, Some(ip)),
        };
        let fits = |ip: IpAddr, final_at: Option<Instant>| {
            final_at.is_some() == settled && holder.is_none_or(|h| h == ip)
        };
        // (key, client side); an INVITE is kept as the fallback while looking further.
        let mut fallback = None;
        let mut found = None;
        for (k, t) in &self.tables.client {
            if fits(t.phone.remote.ip(), t.final_at) {
                if settled || t.method != MethodKind::Invite {
                    found = Some((k.clone(), true));
                    break;
                }
                fallback.get_or_insert_with(|| (k.clone(), true));
            }
        }
        if found.is_none() {
            for (k, t) in &self.tables.server {
                if fits(t.proxy.ip(), t.final_at) {
                    if settled || t.method != MethodKind::Invite {
                        found = Some((k.clone(), false));
                        break;
                    }
                    fallback.get_or_insert_with(|| (k.clone(), false));
                }
            }
        }
        let Some((key, is_client)) = found.or(fallback) else {
            return;
        };
        self.counters.evicted_transactions += 1;
        let warning = Some("gateway transaction table full: source over its fair share");
        if is_client {
            let Some(tx) = self.tables.remove_client(&key) else {
                return;
            };
            if tx.final_at.is_none() {
                let tag = self.hider.token(&[&tx.inside_call_id, b"503"]);
                let payload =
                    tx.echo
                        .response(503, "Service Unavailable", &config.agent, warning, &tag);
                self.send_on(tx.phone, payload);
                if creates_dialog(tx.method) {
                    self.end_unconfirmed(&tx.dialog, "evicted");
                }
            }
        } else {
            let Some(tx) = self.tables.remove_server(&key) else {
                return;
            };
            if tx.final_at.is_none() {
                let tag = self.hider.token(&[&tx.echo.call_id, b"503"]);
                let payload =
                    tx.echo
                        .response(503, "Service Unavailable", &config.agent, warning, &tag);
                self.send(tx.wan_local, tx.proxy, payload);
                if creates_dialog(tx.method) {
                    self.end_unconfirmed(&tx.dialog, "evicted");
                }
            }
        }
    }

    /// A request's SDP through the media table; when its media cannot be set up the
    /// request is answered 503 here and false returned (an ACK goes on unrelayed).
    fn request_media(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        edits: &mut Edits,
        passage: SdpPassage<'_>,
    ) -> bool {
        let why = match self.media.rewrite_sdp(at.now, msg, edits, passage) {
            Ok(()) => return true,
            Err(e) => media_error_text(e),
        };
        if msg.method().is_some_and(|m| m.kind() == MethodKind::Ack) {
            // An ACK (the answer to an offer in a 2xx) cannot be refused, and dropping
            // it would leave the far end retransmitting its 2xx: it goes on unrelayed,
            // inside addresses hidden, like a response.
            self.media.hide_only(msg, edits, passage);
            self.media_event(
                at.now,
                at.flow.remote.ip(),
                msg,
                &format!("media not relayed: {why}"),
            );
            return true;
        }
        self.media_event(
            at.now,
            at.flow.remote.ip(),
            msg,
            &format!("call refused: {why}"),
        );
        self.answer(config, at, msg, 503, "Service Unavailable", why);
        false
    }

    /// Media that could not be set up, for the event log: the operator learns of it
    /// there, not only from a counter (the gateway is out of a resource, not refusing
    /// a peer).
    fn media_event(&mut self, now: Instant, source: IpAddr, msg: &Message<'_>, reason: &str) {
        let method = match msg.method() {
            Some(m) => String::from_utf8_lossy(m.as_bytes()).into_owned(),
            // A response: named by its CSeq method.
            None => msg
                .cseq()
                .map(|c| String::from_utf8_lossy(c.method).into_owned())
                .unwrap_or_default(),
        };
        self.guard.record(
            now,
            EventKind::Overload,
            source,
            None,
            Some(&method),
            reason,
        );
    }

    /// A response's SDP through the media table. A response cannot be refused: when
    /// ports run out its media goes on unrelayed, inside addresses still hidden. A 2xx to
    /// an INVITE makes the answer's author the party from now on (other forks drop).
    fn response_media(
        &mut self,
        at: Arrival,
        msg: &Message<'_>,
        edits: &mut Edits,
        passage: SdpPassage<'_>,
        method: MethodKind,
        status: u16,
    ) {
        if let Err(e) = self.media.rewrite_sdp(at.now, msg, edits, passage) {
            self.media.hide_only(msg, edits, passage);
            let why = format!("media not relayed: {}", media_error_text(e));
            self.media_event(at.now, at.flow.remote.ip(), msg, &why);
        }
        if method == MethodKind::Invite && (200..300).contains(&status) {
            self.media
                .answered(passage.call, passage.from, passage.tag, at.now);
        }
    }

    /// Answers a request on the gateway's own behalf (never an ACK).
    fn answer(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        status: u16,
        reason: &str,
        warning: &str,
    ) {
        if msg.method().is_some_and(|m| m.kind() == MethodKind::Ack) {
            return;
        }
        let method = msg
            .method()
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned());
        self.guard.rejected(
            at.flow.remote.ip(),
            method.as_deref(),
            &format!("answered {status}: {warning}"),
            at.now,
        );
        let tag = self.hider.token(&[msg.call_id(), b"answer"]);
        let payload = Echo::of(msg).response(status, reason, &config.agent, Some(warning), &tag);
        self.send_on(at.flow, payload);
    }

    /// 481: the dialog or transaction a request names is not known here.
    fn answer_no_dialog(&mut self, config: &Config, at: Arrival, msg: &Message<'_>) {
        self.answer(
            config,
            at,
            msg,
            481,
            "Call/Transaction Does Not Exist",
            "no such dialog or transaction at this gateway",
        );
    }

    /// Whether the rule set drops a request outright (no rule, or a drop rule), counted
    /// and reported as `apply_rule` does; a reject rule's 403 is sent later, after the
    /// sender's limits.
    fn dropped_by_rules(
        &mut self,
        config: &Config,
        zone: ZoneId,
        at: Arrival,
        msg: &Message<'_>,
    ) -> bool {
        match config.match_rule(zone, &at.flow) {
            Some(rule) if rule.action != Action::Drop => false,
            _ => self.apply_rule(config, zone, at, msg).is_none(),
        }
    }

    fn apply_rule<'c>(
        &mut self,
        config: &'c Config,
        zone: ZoneId,
        at: Arrival,
        msg: &Message<'_>,
    ) -> Option<&'c Rule> {
        let method = msg
            .method()
            .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned());
        let Some(rule) = config.match_rule(zone, &at.flow) else {
            self.counters.dropped_no_rule += 1;
            self.guard.rejected(
                at.flow.remote.ip(),
                method.as_deref(),
                "dropped: no rule admits it",
                at.now,
            );
            return None;
        };
        match rule.action {
            Action::Drop => {
                self.counters.dropped_by_rule += 1;
                let reason = format!("dropped by rule {}", rule.name);
                self.guard
                    .rejected(at.flow.remote.ip(), method.as_deref(), &reason, at.now);
                None
            }
            Action::Reject => {
                self.counters.rejected_by_rule += 1;
                self.answer(config, at, msg, 403, "Forbidden", "refused by rule set");
                None
            }
            Action::Nat | Action::Allow => Some(rule),
        }
    }

    // ---- inside to outside ----

    fn request_from_inside(
        &mut self,
        config: &Config,
        zone: ZoneId,
        at: Arrival,
        msg: &Message<'_>,
    ) {
        let Some(rule) = self.apply_rule(config, zone, at, msg) else {
            return;
        };
        if rule.action != Action::Nat {
            self.counters.dropped_by_rule += 1;
            return;
        }
        let (Some(wan), Some(next_hop)) = (
            rule.to_zone.and_then(|z| config.zone(z)),
            rule.next_hop(&at.flow),
        ) else {
            self.counters.dropped_by_rule += 1;
            return;
        };
        let wan_local = wan.address;
        let Some(method) = msg.method().map(|m| m.kind()) else {
            return;
        };
        let (Some(from), Some(to), Some(cseq), Some(top_via)) =
            (msg.from(), msg.to(), msg.cseq(), msg.top_via())
        else {
            return;
        };
        let initial = to.tag().is_none();
        let inside_call_id = msg.call_id();
        let dialog_key = self.tables.call_ids.get(inside_call_id).cloned();
        let outside_call_id = dialog_key
            .as_ref()
            .map(|k| k.outside_call_id.clone())
            .unwrap_or_else(|| self.hider.call_id(inside_call_id));
        let tx_dialog = dialog_key.clone().unwrap_or(DialogKey {
            outside_call_id: outside_call_id.clone(),
            originated_inside: true,
        });
        let aor = aor_of(&from.uri);
        let in_dialog = dialog_key
            .as_ref()
            .filter(|_| !initial)
            .and_then(|k| self.tables.dialogs.get(k))
            .cloned();

        let phone_branch: &[u8] = top_via.branch.unwrap_or(msg.call_id());
        let remote_text = at.flow.remote.to_string();
        let next_hop_text = next_hop.to_string();
        // The next hop is part of the name: a phone may send the same branch to two
        // proxies (transparent mode sees both).
        let branch = self.hider.branch(&[
            phone_branch,
            remote_text.as_bytes(),
            next_hop_text.as_bytes(),
        ]);
        // The transaction's key, built once: looked up for a repeat, stored below.
        let tx_key = (branch.clone(), cseq.method.to_vec());
        if method == MethodKind::Cancel {
            let invite = (branch.clone(), b"INVITE".to_vec());
            let open = self
                .tables
                .client
                .get(&invite)
                .map(|tx| tx.final_at.is_none());
            self.cancel_received(config, at, msg, open, &branch, Toward::Outside);
            return;
        }
        if method != MethodKind::Ack {
            let repeat = self
                .tables
                .client
                .get(&tx_key)
                .map(|tx| Repeat::of(tx.final_at, &tx.last_response))
                .or_else(|| Repeat::completed(&self.tables.completed_client, &tx_key));
            if self.repeated(repeat, at) {
                return;
            }
        }

        // An in-dialog request for a dialog the gateway does not hold cannot be
        // translated (whose Call-ID, whose route set?): 481, RFC 3261 12.2.2. An ACK
        // is never answered.
        if !initial
            && in_dialog.is_none()
            && !matches!(method, MethodKind::Ack | MethodKind::Register)
        {
            self.counters.unknown_target += 1;
            self.answer_no_dialog(config, at, msg);
            return;
        }
        let busy = (403, "Forbidden");
        if !self.within_state_limits(config, at, msg, method, initial, &aor, busy) {
            return;
        }
        let wan_text = wan_local.to_string();
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let gateway_inside = |h: &sipward_proto::SipUri<'_>| {
            let p = h.port.unwrap_or(5060);
            h.host.ip().is_some_and(|ip| {
                config
                    .zones
                    .iter()
                    .any(|z| z.inside && z.address.ip() == ip && z.address.port() == p)
            })
        };

        let mut edits = Edits::new();
        let mut via_lines = Vec::new();
        let r = (|| -> Result<(), sipward_proto::EditError> {
            for f in msg.headers().iter().filter(|f| f.name == HeaderName::Via) {
                via_lines.extend_from_slice(f.line);
                edits.remove_field(msg, f)?;
            }
            let our_via = format!("SIP/2.0/UDP {wan_text};branch={branch};rport");
            edits.prepend_field(msg, "Via", our_via.as_bytes())?;
            decrement_max_forwards(msg, &mut edits)?;
            if let Some(f) = msg.header(HeaderName::CallId) {
                if f.value != outside_call_id.as_slice() {
                    edits.replace(msg, f.value, &outside_call_id)?;
                }
            }
            // In a dialog the phone knows only the gateway (its Contact and no route
            // set): the request goes to the far end's real target, by its route set.
            let anchored = in_dialog.as_ref().filter(|d| !d.far_contact.is_empty());
            if let (Some(d), Some(uri)) = (anchored, msg.request_uri()) {
                edits.replace(msg, uri.raw(), &d.far_contact)?;
            }
            let request_uri = msg.request_uri().filter(|_| anchored.is_none());
            // Request-URI and To: the gateway itself stands for the proxy; a phone for
            // the gateway's outside address.
            for uri in [request_uri, Some(&to.uri)].into_iter().flatten() {
                if let Uri::Sip(u) = uri {
                    if gateway_inside(u) {
                        edits.replace(msg, u.host_port, next_hop_text.as_bytes())?;
                    } else if u.host.ip().is_some_and(is_inside) {
                        edits.replace(msg, u.host_port, wan_text.as_bytes())?;
                    }
                }
            }
            if let Uri::Sip(u) = &from.uri {
                if u.host.ip().is_some_and(is_inside) || gateway_inside(u) {
                    edits.replace(msg, u.host_port, wan_text.as_bytes())?;
                }
            }
            let route_set = anchored.map(|d| d.far_route.as_slice()).unwrap_or_default();
            if !route_set.is_empty() {
                for f in msg.headers().iter().filter(|f| f.name == HeaderName::Route) {
                    edits.remove_field(msg, f)?;
                }
                edits.append_field(msg, "Route", &route_set.join(&b", "[..]))?;
            }
            // Route entries naming the gateway were for us: consume them.
            let own_routes = msg
                .headers()
                .iter()
                .filter(|f| f.name == HeaderName::Route && route_set.is_empty());
            for f in own_routes {
                // Entries naming another inside host cannot be reached from outside
                // either (and would name it there): they go too, the rest stay.
                let (ours, theirs): (Vec<&NameAddr<'_>>, Vec<_>) = msg
                    .routes()
                    .iter()
                    .filter(|r| {
                        msg.range_of(r.raw)
                            .is_some_and(|rr| field_contains(msg, f, &rr))
                    })
                    .partition(|r| {
                        r.uri.as_sip().is_some_and(|u| {
                            gateway_inside(u) || u.host.ip().is_some_and(is_inside)
                        })
                    });
                if theirs.is_empty() {
                    edits.remove_field(msg, f)?;
                } else if !ours.is_empty() {
                    let kept: Vec<&[u8]> = theirs.iter().map(|r| r.raw).collect();
                    edits.replace(msg, f.value, &kept.join(&b", "[..]))?;
                }
            }
            Ok(())
        })();
        if r.is_err() {
            self.counters.edit_failures += 1;
            return;
        }

        // Contacts: outside address plus a routing token.
        let mut register = None;
        let mut contact_token = String::new();
        for contact in &msg.contacts().list {
            let Uri::Sip(u) = &contact.uri else { continue };
            if !(u.host.ip().is_some_and(is_inside) || gateway_inside(u)) {
                continue;
            }
            // The proxy is part of the name: a phone registered with two proxies (in
            // transparent mode, each one it talks to) has a binding with each.
            let token = self.hider.token(&[
                &aor,
                remote_text.as_bytes(),
                u.raw,
                next_hop_text.as_bytes(),
            ]);
            let outside = contact_uri(u, &wan_text, &token);
            let ok = if contact.bracketed {
                edits.replace(msg, u.raw, outside.as_bytes())
            } else {
                edits.replace(msg, u.raw, format!("<{outside}>").as_bytes())
            };
            if ok.is_err() {
                self.counters.edit_failures += 1;
                return;
            }
            if contact_token.is_empty() {
                contact_token.clone_from(&token);
            }
            if method == MethodKind::Register && register.is_none() {
                register = Some(RegisterInfo {
                    aor: aor_of(&to.uri),
                    token,
                    inside_contact: u.raw.to_vec(),
                    outside_contact: outside.into_bytes(),
                });
            }
        }
        if method == MethodKind::Register
            && cap_expires(msg, &mut edits, config.alg.max_registration_time).is_err()
        {
            self.counters.edit_failures += 1;
            return;
        }
        if self
            .hide_unknown_out(config, msg, &mut edits, wan_local)
            .is_err()
        {
            self.counters.edit_failures += 1;
            return;
        }
        let passage = SdpPassage {
            call: &tx_dialog.media_id(),
            from: Side::Inside,
            tag: from.tag().unwrap_or_default(),
            gateway_ip: [at.flow.local.ip(), wan_local.ip()],
            is_inside: &is_inside,
        };
        if !self.request_media(config, at, msg, &mut edits, passage) {
            return;
        }

        let payload = match msg.rewrite(&edits) {
            Ok(p) => p,
            Err(_) => {
                self.counters.edit_failures += 1;
                return;
            }
        };
        let Some(payload) = self.outgoing(wan_local, payload) else {
            // Whatever the policy, the phone learns at once that its request cannot
            // leave (rather than retransmitting it into silence).
            self.answer(
                config,
                at,
                msg,
                500,
                "Server Internal Error",
                "request would reveal inside addresses",
            );
            return;
        };

        // Remember the way back.
        if creates_dialog(method) && initial && !self.tables.dialogs.contains_key(&tx_dialog) {
            self.open_dialog(Dialog {
                session: method == MethodKind::Invite,
                inside_call_id: inside_call_id.to_vec(),
                outside_call_id: outside_call_id.clone(),
                phone: at.flow,
                wan_local,
                proxy: next_hop,
                originated_inside: true,
                inside_from: from.raw.to_vec(),
                inside_to: to.raw.to_vec(),
                outside_from: Vec::new(),
                outside_to: Vec::new(),
                phone_contact: first_contact(msg),
                far_contact: Vec::new(),
                far_route: Vec::new(),
                aor: aor.clone(),
                token: contact_token,
                created: at.now,
                confirmed: false,
                cseq_inside: cseq.seq,
                cseq_outside: 0,
            });
        } else if let Some(d) = dialog_key.and_then(|k| self.tables.dialogs.get_mut(&k)) {
            d.cseq_inside = d.cseq_inside.max(cseq.seq);
        }
        if method != MethodKind::Ack {
            self.tables.insert_client(
                tx_key,
                ClientTx {
                    phone: at.flow,
                    via_lines,
                    echo: Echo::of(msg),
                    inside_call_id: inside_call_id.to_vec(),
                    inside_from: from.raw.to_vec(),
                    inside_to: to.raw.to_vec(),
                    method,
                    created: at.now,
                    final_at: None,
                    last_response: None,
                    register,
                    register_user: (method == MethodKind::Register).then(|| {
                        let credentials =
                            msg.authorization().is_some() || msg.proxy_authorization().is_some();
                        (register_user(msg), credentials)
                    }),
                    dialog: tx_dialog.clone(),
                },
            );
        }
        if ends_subscription(msg) {
            self.end_subscription(&tx_dialog);
        }
        if method == MethodKind::Invite {
            self.cancels.prepare(
                Toward::Outside,
                (branch.clone(), b"INVITE".to_vec()),
                &payload,
                Flow::udp(wan_local, next_hop),
                &config.alg.limits,
            );
        }
        self.counters.forwarded += 1;
        self.push(wan_local, next_hop, payload);
    }

    fn response_from_outside(&mut self, config: &Config, at: Arrival, msg: &Message<'_>) {
        let (Some(via), Some(cseq), Some(status)) = (msg.top_via(), msg.cseq(), msg.status())
        else {
            return;
        };
        let ours = via.host.ip() == Some(at.flow.local.ip())
            && via.port.unwrap_or(5060) == at.flow.local.port()
            && via
                .branch
                .is_some_and(|b| b.starts_with(BRANCH_PREFIX.as_bytes()));
        let key = (
            String::from_utf8_lossy(via.branch.unwrap_or_default()).into_owned(),
            cseq.method.to_vec(),
        );
        let branch = key.0.clone();
        if ours && cseq.method == b"CANCEL" && self.cancels.answered(&key.0, Toward::Outside) {
            self.cancel_answered(config, at, &key.0, status, Toward::Outside);
            return;
        }
        let Some(tx) = self.tables.client.get(&key).filter(|_| ours).cloned() else {
            self.counters.stray_responses += 1;
            return;
        };
        let mut edits = Edits::new();
        let mut new_binding = None;
        let r = (|| -> Result<(), sipward_proto::EditError> {
            remove_top_via(msg, &mut edits, &tx.via_lines)?;
            if msg.call_id() != tx.inside_call_id.as_slice() {
                if let Some(f) = msg.header(HeaderName::CallId) {
                    edits.replace(msg, f.value, &tx.inside_call_id)?;
                }
            }
            if let (Some(f), Some(from)) = (msg.header(HeaderName::From), msg.from()) {
                if from.raw != tx.inside_from.as_slice() {
                    edits.replace(msg, f.value, &tx.inside_from)?;
                }
            }
            if let (Some(f), Some(to)) = (msg.header(HeaderName::To), msg.to()) {
                let restored = with_tag(&tx.inside_to, to.tag());
                if to.raw != restored.as_slice() {
                    edits.replace(msg, f.value, &restored)?;
                }
            }
            // The phone's transaction is matched by its CSeq: it gets the one it sent,
            // whatever number a far end wrote (the method already matched).
            if let Some(f) = msg.header(HeaderName::CSeq) {
                if !tx.echo.cseq.is_empty() && f.value != tx.echo.cseq.as_slice() {
                    edits.replace(msg, f.value, &tx.echo.cseq)?;
                }
            }
            // Only a response that makes or refreshes a dialog's target is anchored at
            // the gateway; the Contacts of a redirect (3xx), a 485 or a 200 to OPTIONS
            // are addresses for the phone to use itself and stay as the far end wrote
            // them (they come from outside: nothing to hide).
            if tx.register.is_none() && sets_dialog_target(tx.method, status) {
                anchor_at_gateway(msg, &mut edits, &tx.phone.local.to_string())?;
            }
            if let Some(reg) = &tx.register {
                if (200..300).contains(&status) {
                    new_binding = restore_register_contacts(
                        msg,
                        &mut edits,
                        reg,
                        config.alg.max_registration_time,
                    )?;
                }
            }
            Ok(())
        })();
        if r.is_err() {
            self.counters.edit_failures += 1;
            return;
        }
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let lan_ip = config.own_address(&tx.phone).ip();
        let passage = SdpPassage {
            call: &tx.dialog.media_id(),
            from: Side::Outside,
            tag: msg.to().and_then(|t| t.tag()).unwrap_or_default(),
            gateway_ip: [lan_ip, at.flow.local.ip()],
            is_inside: &is_inside,
        };
        self.response_media(at, msg, &mut edits, passage, tx.method, status);
        let Ok(payload) = msg.rewrite(&edits) else {
            self.counters.edit_failures += 1;
            return;
        };

        // State.
        if let Some(t) = self.tables.client.get_mut(&key) {
            if status >= 200 {
                // The request's copy only serves a 408; an INVITE transaction lingers
                // 32 s more, so its memory is given back now.
                t.echo = Echo::default();
            }
            t.last_response = Repeat::keeps(tx.method, status).then(|| payload.clone());
        }
        if status >= 200 {
            self.tables.settle_client(&key, at.now);
        }
        if let (Some((user, credentials)), true) = (&tx.register_user, status >= 200) {
            let source = tx.phone.remote.ip();
            let refused = status == 403 || (*credentials && (status == 401 || status == 407));
            if refused {
                self.guard.register_failed(source, user, status, at.now);
            } else if (200..300).contains(&status) {
                self.guard.register_succeeded(source, user);
                if let Some(reg) = &tx.register {
                    if let Some(b) = self.tables.binding_elsewhere(&reg.aor, source) {
                        let previous = b.phone.remote.ip();
                        let aor = String::from_utf8_lossy(&reg.aor).into_owned();
                        self.guard.binding_moved(source, previous, &aor, at.now);
                    }
                }
            }
        }
        let dialog_response = (creates_dialog(tx.method) || tx.method == MethodKind::Update)
            && (101..300).contains(&status)
            && msg.to().and_then(|t| t.tag()).is_some();
        if dialog_response {
            if let Some(d) = self.tables.dialogs.get_mut(&tx.dialog) {
                // The far end's target (refreshed by every Contact it sends) and, while
                // the dialog is being set up, its route set: the phone knows neither.
                let contact = first_contact_uri(msg);
                if !contact.is_empty() {
                    d.far_contact = contact;
                }
                if !d.confirmed {
                    d.far_route = msg
                        .record_routes()
                        .iter()
                        .rev()
                        .map(|r| r.raw.to_vec())
                        .collect();
                }
            }
        }
        match tx.method {
            m if creates_dialog(m) && (200..300).contains(&status) => {
                let mut answered = None;
                if let Some(d) = self.tables.dialogs.get_mut(&tx.dialog) {
                    if !d.confirmed && d.session {
                        answered = Some(d.clone());
                    }
                    d.confirmed = true;
                    d.outside_from = msg.from().map(|f| f.raw.to_vec()).unwrap_or_default();
                    d.outside_to = msg.to().map(|t| t.raw.to_vec()).unwrap_or_default();
                    d.inside_to = with_tag(&tx.inside_to, msg.to().and_then(|t| t.tag()));
                }
                if let Some(d) = answered {
                    self.call_event(&d, EventKind::CallAnswered, &format!("{status}"));
                }
            }
            m if creates_dialog(m) && status >= 300 => {
                self.end_unconfirmed(&tx.dialog, &format!("not answered: {status}"))
            }
            MethodKind::Bye if status >= 200 => self.end_dialog(&tx.dialog, "hung up"),
            MethodKind::Register if status >= 200 => {
                if let Some(reg) = &tx.register {
                    match new_binding {
                        Some(expires) if (200..300).contains(&status) => {
                            self.tables.insert_binding(
                                reg.token.clone(),
                                Binding {
                                    aor: reg.aor.clone(),
                                    phone: tx.phone,
                                    registrar: at.flow.remote,
                                    inside_contact: reg.inside_contact.clone(),
                                    outside_contact: reg.outside_contact.clone(),
                                    expires_at: crate::protect::later(at.now, expires),
                                },
                            );
                        }
                        _ if status == 401 || status == 407 => {}
                        _ => {
                            self.tables.remove_binding(&reg.token);
                        }
                    }
                }
            }
            _ => {}
        }
        if status >= 200 && tx.method != MethodKind::Invite {
            self.tables.remove_client(&key);
            self.tables
                .completed_client
                .insert(key, payload.clone(), at.now);
        }
        self.counters.forwarded += 1;
        self.send_on(tx.phone, payload);
        if tx.method == MethodKind::Invite {
            self.invite_answered(&branch, status, Toward::Outside, at.now);
        }
    }

    // ---- outside to inside ----

    fn request_from_outside(
        &mut self,
        config: &Config,
        zone: ZoneId,
        at: Arrival,
        msg: &Message<'_>,
    ) {
        let Some(rule) = self.apply_rule(config, zone, at, msg) else {
            return;
        };
        if rule.action != Action::Allow {
            self.counters.dropped_by_rule += 1;
            return;
        }
        let Some(method) = msg.method().map(|m| m.kind()) else {
            return;
        };
        let (Some(cseq), Some(top_via), Some(from), Some(to)) =
            (msg.cseq(), msg.top_via(), msg.from(), msg.to())
        else {
            return;
        };
        let remote_text = at.flow.remote.to_string();
        let proxy_branch: &[u8] = top_via.branch.unwrap_or(msg.call_id());
        let branch = self.hider.branch(&[proxy_branch, remote_text.as_bytes()]);
        let initial = to.tag().is_none();
        // The transaction's key, built once: looked up for a repeat, stored below.
        let tx_key = (branch.clone(), cseq.method.to_vec());
        if method != MethodKind::Ack {
            let repeat = self
                .tables
                .server
                .get(&tx_key)
                .map(|tx| Repeat::of(tx.final_at, &tx.last_response))
                .or_else(|| Repeat::completed(&self.tables.completed_server, &tx_key));
            if self.repeated(repeat, at) {
                return;
            }
        }

        // Where does it go? A pending INVITE (CANCEL, ACK for a failure), a registration
        // token in the Request-URI, or the dialog the Call-ID names.
        let pending = self
            .tables
            .server
            .get(&(branch.clone(), b"INVITE".to_vec()))
            .cloned();
        if method == MethodKind::Cancel {
            let open = pending.as_ref().map(|p| p.final_at.is_none());
            self.cancel_received(config, at, msg, open, &branch, Toward::Inside);
            return;
        }
        let token = msg
            .request_uri()
            .and_then(|u| u.as_sip())
            .and_then(|u| u.param(TOKEN_PARAM).flatten())
            .map(|t| String::from_utf8_lossy(t).into_owned());
        let binding = token.as_ref().and_then(|t| self.tables.binding(t)).cloned();
        let dialog = self
            .tables
            .outside_dialog(msg.call_id(), token.as_deref())
            .cloned();
        let (phone, target, aor, tok) = if let (Some(p), MethodKind::Ack) = (&pending, method) {
            // A failure's ACK goes where the INVITE went, with its Request-URI.
            let target = p.request_uri.clone();
            (p.phone, target, p.aor.clone(), p.token.clone())
        } else if let Some(d) = dialog.as_ref().filter(|_| !initial) {
            (
                d.phone,
                Some(d.phone_contact.clone()),
                d.aor.clone(),
                d.token.clone(),
            )
        } else if let Some(b) = binding.as_ref().filter(|_| initial) {
            let t = token.clone().unwrap_or_default();
            (b.phone, Some(b.inside_contact.clone()), b.aor.clone(), t)
        } else {
            self.counters.unknown_target += 1;
            // A request inside a dialog (or a CANCEL) names state the gateway does
            // not hold: RFC 3261 12.2.2 and 9.2 answer 481, not 404.
            if !initial || method == MethodKind::Cancel {
                self.answer_no_dialog(config, at, msg);
            } else {
                self.answer(
                    config,
                    at,
                    msg,
                    404,
                    "Not Found",
                    "no such user behind this gateway",
                );
            }
            return;
        };
        if !self.within_state_limits(config, at, msg, method, initial, &aor, (486, "Busy Here")) {
            return;
        }

        let lan_local = phone.local;
        let lan_text = lan_local.to_string();
        let mut edits = Edits::new();
        let mut via_lines = Vec::new();
        let inside_dialog = dialog.as_ref().filter(|d| d.originated_inside && !initial);
        let r = (|| -> Result<(), sipward_proto::EditError> {
            for f in msg.headers().iter().filter(|f| f.name == HeaderName::Via) {
                via_lines.extend_from_slice(f.line);
                edits.remove_field(msg, f)?;
            }
            edits.prepend_field(
                msg,
                "Via",
                format!("SIP/2.0/UDP {lan_text};branch={branch}").as_bytes(),
            )?;
            decrement_max_forwards(msg, &mut edits)?;
            if let (Some(target), Some(uri)) = (&target, msg.request_uri()) {
                edits.replace(msg, uri.raw(), target)?;
            }
            // As for responses: only a dialog's target is the gateway's business.
            if sets_dialog_target(method, 200) {
                anchor_at_gateway(msg, &mut edits, &lan_text)?;
            }
            if let Some(d) = inside_dialog {
                // The far end speaks of the hidden call: give the phone back its own.
                if let Some(f) = msg.header(HeaderName::CallId) {
                    edits.replace(msg, f.value, &d.inside_call_id)?;
                }
                if let Some(f) = msg.header(HeaderName::To) {
                    edits.replace(msg, f.value, &d.inside_from)?;
                }
                if let Some(f) = msg.header(HeaderName::From) {
                    edits.replace(msg, f.value, &with_tag(&d.inside_to, from.tag()))?;
                }
            }
            Ok(())
        })();
        if r.is_err() {
            self.counters.edit_failures += 1;
            return;
        }
        if self
            .translate_call_ids_in(msg, &mut edits, phone.remote)
            .is_err()
        {
            self.counters.edit_failures += 1;
            return;
        }
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let tx_dialog = match dialog.as_ref().filter(|_| !initial) {
            Some(d) => d.key(),
            None => DialogKey {
                outside_call_id: msg.call_id().to_vec(),
                originated_inside: false,
            },
        };
        let passage = SdpPassage {
            call: &tx_dialog.media_id(),
            from: Side::Outside,
            tag: from.tag().unwrap_or_default(),
            gateway_ip: [config.own_address(&phone).ip(), at.flow.local.ip()],
            is_inside: &is_inside,
        };
        if !self.request_media(config, at, msg, &mut edits, passage) {
            return;
        }
        let Ok(payload) = msg.rewrite(&edits) else {
            self.counters.edit_failures += 1;
            return;
        };

        if creates_dialog(method) && initial && !self.tables.dialogs.contains_key(&tx_dialog) {
            self.open_dialog(Dialog {
                session: method == MethodKind::Invite,
                inside_call_id: msg.call_id().to_vec(),
                outside_call_id: msg.call_id().to_vec(),
                phone,
                wan_local: at.flow.local,
                proxy: at.flow.remote,
                originated_inside: false,
                inside_from: from.raw.to_vec(),
                inside_to: to.raw.to_vec(),
                outside_from: from.raw.to_vec(),
                outside_to: to.raw.to_vec(),
                phone_contact: target.clone().unwrap_or_default(),
                far_contact: first_contact_uri(msg),
                far_route: msg.record_routes().iter().map(|r| r.raw.to_vec()).collect(),
                aor: aor.clone(),
                token: tok.clone(),
                created: at.now,
                confirmed: false,
                cseq_inside: 0,
                cseq_outside: cseq.seq,
            });
        } else if let Some(d) = self.tables.dialogs.get_mut(&tx_dialog) {
            d.cseq_outside = d.cseq_outside.max(cseq.seq);
            let contact = first_contact_uri(msg);
            if !contact.is_empty() && !initial {
                d.far_contact = contact;
            }
        }
        if method != MethodKind::Ack {
            self.tables.insert_server(
                tx_key,
                ServerTx {
                    proxy: at.flow.remote,
                    wan_local: at.flow.local,
                    phone,
                    via_lines,
                    echo: Echo::of(msg),
                    method,
                    created: at.now,
                    final_at: None,
                    last_response: None,
                    aor,
                    token: tok,
                    dialog: tx_dialog.clone(),
                    record_route: msg.record_routes().iter().map(|r| r.raw.to_vec()).collect(),
                    request_uri: target,
                },
            );
        }
        if ends_subscription(msg) {
            self.end_subscription(&tx_dialog);
        }
        if method == MethodKind::Invite {
            self.cancels.prepare(
                Toward::Inside,
                (branch.clone(), b"INVITE".to_vec()),
                &payload,
                phone,
                &config.alg.limits,
            );
        }
        self.counters.forwarded += 1;
        self.send_on(phone, payload);
    }

    fn response_from_inside(&mut self, config: &Config, at: Arrival, msg: &Message<'_>) {
        let (Some(via), Some(cseq), Some(status)) = (msg.top_via(), msg.cseq(), msg.status())
        else {
            return;
        };
        let ours = via.host.ip() == Some(at.flow.local.ip())
            && via.port.unwrap_or(5060) == at.flow.local.port()
            && via
                .branch
                .is_some_and(|b| b.starts_with(BRANCH_PREFIX.as_bytes()));
        let key = (
            String::from_utf8_lossy(via.branch.unwrap_or_default()).into_owned(),
            cseq.method.to_vec(),
        );
        let branch = key.0.clone();
        if ours && cseq.method == b"CANCEL" && self.cancels.answered(&branch, Toward::Inside) {
            self.cancel_answered(config, at, &branch, status, Toward::Inside);
            return;
        }
        let Some(tx) = self.tables.server.get(&key).filter(|_| ours).cloned() else {
            self.counters.stray_responses += 1;
            return;
        };
        let wan_text = tx.wan_local.to_string();
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let mut edits = Edits::new();
        let r = (|| -> Result<(), sipward_proto::EditError> {
            remove_top_via(msg, &mut edits, &tx.via_lines)?;
            // Identity as the outside sent it; the phone's To-tag is kept.
            if let (Some(f), Some(to)) = (msg.header(HeaderName::To), msg.to()) {
                let restored = with_tag(&tx.echo.to, to.tag());
                if to.raw != restored.as_slice() {
                    edits.replace(msg, f.value, &restored)?;
                }
            }
            if let (Some(f), Some(from)) = (msg.header(HeaderName::From), msg.from()) {
                if from.raw != tx.echo.from.as_slice() {
                    edits.replace(msg, f.value, &tx.echo.from)?;
                }
            }
            if let Some(f) = msg.header(HeaderName::CallId) {
                if f.value != tx.echo.call_id.as_slice() {
                    edits.replace(msg, f.value, &tx.echo.call_id)?;
                }
            }
            for contact in &msg.contacts().list {
                let Uri::Sip(u) = &contact.uri else { continue };
                if let Some(ip) = u.host.ip().filter(|ip| is_inside(*ip)) {
                    // A redirect names where to go instead: a registered phone by its
                    // own token; a dialog's Contact routes back by this call's.
                    let own = (status >= 300)
                        .then(|| self.token_of_phone(ip, u.port.unwrap_or(5060)))
                        .flatten();
                    let outside = contact_uri(u, &wan_text, own.as_deref().unwrap_or(&tx.token));
                    if contact.bracketed {
                        edits.replace(msg, u.raw, outside.as_bytes())?;
                    } else {
                        edits.replace(msg, u.raw, format!("<{outside}>").as_bytes())?;
                    }
                }
            }
            // The caller's side built its route set from the request's Record-Route,
            // which the phone never saw: the dialog-making responses carry it back.
            if creates_dialog(tx.method)
                && (101..300).contains(&status)
                && !tx.record_route.is_empty()
            {
                for f in msg
                    .headers()
                    .iter()
                    .filter(|f| f.name == HeaderName::RecordRoute)
                {
                    edits.remove_field(msg, f)?;
                }
                edits.append_field(msg, "Record-Route", &tx.record_route.join(&b", "[..]))?;
            }
            Ok(())
        })();
        if r.is_err() {
            self.counters.edit_failures += 1;
            return;
        }
        if self
            .hide_unknown_out(config, msg, &mut edits, tx.wan_local)
            .is_err()
        {
            self.counters.edit_failures += 1;
            return;
        }
        let passage = SdpPassage {
            call: &tx.dialog.media_id(),
            from: Side::Inside,
            tag: msg.to().and_then(|t| t.tag()).unwrap_or_default(),
            gateway_ip: [at.flow.local.ip(), tx.wan_local.ip()],
            is_inside: &is_inside,
        };
        self.response_media(at, msg, &mut edits, passage, tx.method, status);
        let Ok(payload) = msg.rewrite(&edits) else {
            self.counters.edit_failures += 1;
            return;
        };
        let Some(payload) = self.outgoing(tx.wan_local, payload) else {
            return;
        };

        if let Some(t) = self.tables.server.get_mut(&key) {
            t.last_response = Repeat::keeps(tx.method, status).then(|| payload.clone());
        }
        if status >= 200 {
            self.tables.settle_server(&key, at.now);
        }
        match tx.method {
            m if creates_dialog(m) && (200..300).contains(&status) => {
                let contact = first_contact_uri(msg);
                let mut answered = None;
                if let Some(d) = self.tables.dialogs.get_mut(&tx.dialog) {
                    if !d.originated_inside {
                        if !d.confirmed && d.session {
                            answered = Some(d.clone());
                        }
                        d.confirmed = true;
                        if !contact.is_empty() {
                            d.phone_contact = contact;
                        }
                        d.inside_to = msg.to().map(|t| t.raw.to_vec()).unwrap_or_default();
                        d.outside_to = with_tag(&tx.echo.to, msg.to().and_then(|t| t.tag()));
                    }
                }
                if let Some(d) = answered {
                    self.call_event(&d, EventKind::CallAnswered, &format!("{status}"));
                }
            }
            m if creates_dialog(m) && status >= 300 => {
                self.end_unconfirmed(&tx.dialog, &format!("not answered: {status}"))
            }
            MethodKind::Bye if status >= 200 => self.end_dialog(&tx.dialog, "hung up"),
            _ => {}
        }
        if status >= 200 && tx.method != MethodKind::Invite {
            self.tables.remove_server(&key);
            self.tables
                .completed_server
                .insert(key, payload.clone(), at.now);
        }
        self.counters.forwarded += 1;
        self.push(tx.wan_local, tx.proxy, payload);
        if tx.method == MethodKind::Invite {
            self.invite_answered(&branch, status, Toward::Inside, at.now);
        }
    }

    /// Handles a repeated request (see `Repeat`); true when it is dealt with.
    fn repeated(&mut self, repeat: Option<Repeat>, at: Arrival) -> bool {
        match repeat {
            None | Some(Repeat::Forward) => return false,
            Some(Repeat::Answer(response)) => {
                self.send_on(at.flow, response);
            }
            Some(Repeat::Absorb) => {}
        }
        self.counters.absorbed_retransmissions += 1;
        true
    }

    fn end_unconfirmed(&mut self, key: &DialogKey, why: &str) {
        if self.tables.dialogs.get(key).is_some_and(|d| !d.confirmed) {
            self.end_dialog(key, why);
        }
    }

    fn end_subscription(&mut self, key: &DialogKey) {
        if self.tables.dialogs.get(key).is_some_and(|d| !d.session) {
            self.end_dialog(key, "subscription terminated");
        }
    }

    fn end_dialog(&mut self, key: &DialogKey, why: &str) {
        if let Some(d) = self.tables.remove_dialog(key) {
            self.media.release(&key.media_id());
            if d.session {
                self.call_event(&d, EventKind::CallEnded, why);
            }
        }
    }

    fn open_dialog(&mut self, d: Dialog) {
        if d.session {
            self.call_event(&d, EventKind::CallStarted, "INVITE");
        }
        self.tables.insert_dialog(d);
    }

    /// A call event for the log: the phone, its user, the call's direction and Call-ID.
    fn call_event(&mut self, d: &Dialog, kind: EventKind, what: &str) {
        let direction = if d.originated_inside {
            "outbound"
        } else {
            "inbound"
        };
        let reason = format!(
            "{direction} call {}: {what}",
            String::from_utf8_lossy(&d.inside_call_id)
        );
        let user = String::from_utf8_lossy(&d.aor).into_owned();
        self.guard.record(
            self.now.unwrap_or(d.created),
            kind,
            d.phone.remote.ip(),
            Some(&user),
            Some("INVITE"),
            &reason,
        );
    }

    // ---- timers ----

    /// Runs every timer due at `now`: 408 for transactions without a final response
    /// after the request-response timeout, BYE both ways for dialogs older than the
    /// signal timeout, removal of expired bindings.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let config = self.config.clone();
        let alg = &config.alg;

        self.tables.completed_client.expire(now, LINGER);
        self.tables.completed_server.expire(now, LINGER);
        let expired: Vec<_> = self
            .tables
            .client
            .iter()
            .filter(|(_, t)| expired_tx(t.created, t.final_at, now, answer_timeout(alg, t.method)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            let Some(tx) = self.tables.remove_client(&key) else {
                continue;
            };
            if tx.final_at.is_none() {
                self.counters.timeouts += 1;
                let tag = self.hider.token(&[&tx.inside_call_id, b"408"]);
                let payload = tx.echo.response(
                    408,
                    "Request Timeout",
                    &config.agent,
                    Some("no response from outside"),
                    &tag,
                );
                self.send_on(tx.phone, payload);
                if creates_dialog(tx.method) {
                    self.end_unconfirmed(&tx.dialog, "timed out");
                }
            }
        }
        let expired: Vec<_> = self
            .tables
            .server
            .iter()
            .filter(|(_, t)| expired_tx(t.created, t.final_at, now, answer_timeout(alg, t.method)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            let Some(tx) = self.tables.remove_server(&key) else {
                continue;
            };
            if tx.final_at.is_none() {
                self.counters.timeouts += 1;
                let tag = self.hider.token(&[&tx.echo.call_id, b"408"]);
                let payload = tx.echo.response(
                    408,
                    "Request Timeout",
                    &config.agent,
                    Some("no response from inside"),
                    &tag,
                );
                self.send(tx.wan_local, tx.proxy, payload);
                if creates_dialog(tx.method) {
                    self.end_unconfirmed(&tx.dialog, "timed out");
                }
            }
        }

        for due in self.cancels.due(now) {
            match due {
                Due::Send { flow, request } => {
                    self.send_on(flow, request);
                }
                Due::GiveUp { toward, invite } => {
                    self.terminate_invite(&config, toward, &invite, now)
                }
            }
        }
        let (client, server) = (&self.tables.client, &self.tables.server);
        self.cancels.retain(|toward, invite| match toward {
            Toward::Outside => client.get(invite).is_some_and(|t| t.final_at.is_none()),
            Toward::Inside => server.get(invite).is_some_and(|t| t.final_at.is_none()),
        });

        self.expire_idle_media(&config, now);
        self.guard.sweep(now);

        let old: Vec<DialogKey> = self
            .tables
            .dialogs
            .values()
            .filter(|d| {
                d.confirmed && now.saturating_duration_since(d.created) >= alg.signal_timeout
            })
            .map(Dialog::key)
            .collect();
        for id in old {
            if let Some(d) = self.tables.dialogs.get(&id).cloned() {
                self.counters.dialogs_expired += 1;
                // A call is ended on both sides; a subscription is only forgotten.
                if d.session {
                    self.bye_both_ways(&config, &d, 408, "signal timeout");
                }
                self.end_dialog(&id, "signal timeout");
            }
        }
        self.counters.bindings_expired += self.tables.expire_bindings(now) as u64;
        self.tables.recount_holders();

        let idle = self.tables.client.is_empty()
            && self.tables.server.is_empty()
            && self.tables.dialogs.is_empty()
            && self.tables.bindings().is_empty()
            && self.guard.bans(now).is_empty();
        self.next_sweep = (!idle).then(|| crate::protect::later(now, SWEEP));
    }

    /// The gateway is stopping: every call gets a BYE on both sides (`Reason: SIP;
    /// cause=503;text="gateway shutdown"`) and a `call_ended` event with reason
    /// "shutdown"; subscriptions are only forgotten. Drain `poll_transmit`,
    /// `poll_media` and `poll_event` afterwards. Returns the number of calls ended.
    pub fn shutdown(&mut self, now: Instant) -> usize {
        self.now = Some(now);
        let config = self.config.clone();
        // Calls still ringing: each INVITE's sender gets 503, and the side ringing a
        // CANCEL where one may go (after a provisional response), rather than ringing
        // on until its own timers give up.
        let ringing_out: Vec<_> = self
            .tables
            .client
            .values()
            .filter(|t| t.method == MethodKind::Invite && t.final_at.is_none())
            .map(|t| (t.echo.clone(), t.inside_call_id.clone(), t.phone))
            .collect();
        let ringing_in: Vec<_> = self
            .tables
            .server
            .values()
            .filter(|t| t.method == MethodKind::Invite && t.final_at.is_none())
            .map(|t| {
                let far = Flow::udp(t.wan_local, t.proxy);
                (t.echo.clone(), t.echo.call_id.clone(), far)
            })
            .collect();
        for (echo, call_id, flow) in ringing_out.into_iter().chain(ringing_in) {
            let tag = self.hider.token(&[&call_id, b"shutdown"]);
            let payload = echo.response(
                503,
                "Service Unavailable",
                &config.agent,
                Some("gateway shutdown"),
                &tag,
            );
            self.send_on(flow, payload);
        }
        for due in self.cancels.cancel_all(now) {
            if let Due::Send { flow, request } = due {
                self.send_on(flow, request);
            }
        }
        let dialogs: Vec<Dialog> = self.tables.dialogs.values().cloned().collect();
        let mut calls = 0;
        for d in dialogs {
            if d.session {
                calls += 1;
                // An early call has no far-end dialog to end: its INVITE transaction
                // is abandoned and the event still records it.
                if d.confirmed {
                    self.bye_both_ways(&config, &d, 503, "gateway shutdown");
                }
            }
            self.end_dialog(&d.key(), "shutdown");
        }
        calls
    }

    /// The data-channel timeout: idle streams are closed, and a call whose media all
    /// went idle (and is not on hold) is ended with a BYE both ways.
    fn expire_idle_media(&mut self, config: &Config, now: Instant) {
        let ended = self.media.expire_idle(now, config.alg.data_channel_timeout);
        for call in ended {
            let Some(d) = self
                .tables
                .dialogs
                .values()
                .find(|d| d.session && d.key().media_id() == call)
                .cloned()
            else {
                self.media.release(&call);
                continue;
            };
            tracing::info!(
                call_id = %String::from_utf8_lossy(&d.outside_call_id),
                "media idle for the data-channel timeout: call ended"
            );
            self.counters.media_timeouts += 1;
            self.bye_both_ways(config, &d, 408, "media timeout");
            self.end_dialog(&d.key(), "media timeout");
        }
        // Media whose dialog never came to be (a refused or failed request) is freed.
        let known: std::collections::HashSet<Vec<u8>> = self
            .tables
            .dialogs
            .values()
            .map(|d| d.key().media_id())
            .collect();
        self.media.retain_calls(|call| known.contains(call));
    }

    /// Ends a dialog on the gateway's own initiative: a BYE to the phone and one to the
    /// far end, each in the identity that side knows.
    fn bye_both_ways(&mut self, config: &Config, d: &Dialog, cause: u16, why: &str) {
        let (phone_local, phone_remote, far_local, far_remote) = if d.originated_inside {
            (&d.inside_from, &d.inside_to, &d.outside_to, &d.outside_from)
        } else {
            (&d.inside_to, &d.inside_from, &d.outside_from, &d.outside_to)
        };
        let text = String::from_utf8_lossy;
        let branch = self.hider.branch(&[&d.inside_call_id, b"bye-in"]);
        let to_phone = format!(
            "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} BYE\r\nReason: SIP;cause={cause};text=\"{why}\"\r\nContent-Length: 0\r\n\r\n",
            text(&d.phone_contact),
            d.phone.local,
            text(phone_remote),
            text(phone_local),
            text(&d.inside_call_id),
            d.cseq_outside.saturating_add(1).max(1),
        );
        self.send_on(d.phone, to_phone.into_bytes());
        let branch = self.hider.branch(&[&d.outside_call_id, b"bye-out"]);
        let routes: String = d
            .far_route
            .iter()
            .map(|r| format!("Route: {}\r\n", text(r)))
            .collect();
        let target = if d.far_contact.is_empty() {
            format!("sip:{}", d.proxy)
        } else {
            text(&d.far_contact).into_owned()
        };
        let to_far = format!(
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch={branch}\r\nMax-Forwards: 70\r\n{routes}From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} BYE\r\nReason: SIP;cause={cause};text=\"{why}\"\r\nContent-Length: 0\r\n\r\n",
            d.wan_local,
            text(far_remote),
            text(far_local),
            text(&d.outside_call_id),
            d.cseq_inside.saturating_add(1).max(1),
        );
        let _ = config;
        self.send(d.wan_local, d.proxy, to_far.into_bytes());
    }
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

/// Requests that create a dialog when sent outside one (RFC 3261, 6665, 3515).
/// What the gateway does with a request that repeats one it is already relaying (the
/// sender's retransmission timer fired): a stateful relay absorbs it (RFC 3261 16.6,
/// RFC 6026) instead of passing every copy on, where the next hop could take it for
/// a new request once it has answered.
enum Repeat {
    /// Nothing came back yet: the next hop may never have had it.
    Forward,
    /// Send the last response again.
    Answer(Vec<u8>),
    /// A 2xx answered the INVITE: the far end retransmits that 2xx itself until the
    /// ACK comes, so the copy is dropped (RFC 6026 "Accepted").
    Absorb,
}

impl Repeat {
    fn of(final_at: Option<Instant>, last_response: &Option<Vec<u8>>) -> Repeat {
        match (last_response, final_at) {
            (Some(r), _) => Repeat::Answer(r.clone()),
            (None, Some(_)) => Repeat::Absorb,
            (None, None) => Repeat::Forward,
        }
    }

    /// A repeat of an ended non-INVITE transaction: answered with its final response.
    fn completed(kept: &Completed, key: &(String, Vec<u8>)) -> Option<Repeat> {
        kept.get(key).map(|r| Repeat::Answer(r.clone()))
    }

    /// Whether a response is kept to answer retransmissions with: a provisional one, and
    /// an INVITE's failure (its transaction lingers). Not a 2xx to an INVITE, which ends
    /// the relay's part in the retransmissions, nor another request's final response,
    /// whose transaction ends with it (the response goes to `Completed` instead).
    fn keeps(method: MethodKind, status: u16) -> bool {
        match method {
            MethodKind::Invite => !(200..300).contains(&status),
            _ => status < 200,
        }
    }
}

fn creates_dialog(method: MethodKind) -> bool {
    matches!(
        method,
        MethodKind::Invite | MethodKind::Subscribe | MethodKind::Refer
    )
}

/// Whether a response's Contact is the target of a dialog the gateway keeps (and so is
/// replaced by the gateway's own address): a 1xx/2xx to a dialog-making or target-refresh
/// request (RFC 3261 12.1, 12.2; RFC 3311; RFC 6665).
fn sets_dialog_target(method: MethodKind, status: u16) -> bool {
    (101..300).contains(&status)
        && matches!(
            method,
            MethodKind::Invite
                | MethodKind::Subscribe
                | MethodKind::Refer
                | MethodKind::Update
                | MethodKind::Notify
        )
}

/// A NOTIFY that ends its subscription (RFC 6665 section 4.1.3).
fn ends_subscription(msg: &Message<'_>) -> bool {
    msg.method().is_some_and(|m| m.kind() == MethodKind::Notify)
        && msg.headers().iter().any(|f| {
            f.raw_name.eq_ignore_ascii_case(b"Subscription-State")
                && f.value
                    .get(..10)
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"terminated"))
        })
}

fn expired_tx(
    created: Instant,
    final_at: Option<Instant>,
    now: Instant,
    timeout: Duration,
) -> bool {
    match final_at {
        Some(f) => now.saturating_duration_since(f) >= LINGER,
        None => now.saturating_duration_since(created) >= timeout,
    }
}

/// How long a transaction of `method` waits for its final response: the configured
/// request-response timeout for an INVITE (a phone may ring that long), Timer F at most
/// for the others.
fn answer_timeout(alg: &crate::config::AlgOptions, method: MethodKind) -> Duration {
    if method == MethodKind::Invite {
        alg.request_response_timeout
    } else {
        alg.request_response_timeout.min(TIMER_F)
    }
}

/// Whether a datagram arrived on an inside zone's address.
fn arrived_inside(config: &Config, at: Arrival) -> bool {
    config
        .zone_of_local(at.flow.local)
        .and_then(|z| config.zone(z))
        .is_some_and(|z| z.inside)
}

/// The reason a claim for a table entry is refused, if it is.
fn refusal(room: Room) -> Option<Refusal> {
    match room {
        Room::Granted => None,
        Room::Evict(_) => Some(Refusal::FullForNew),
        Room::Refused(why) => Some(why),
    }
}

/// `user@host` of a URI, the key for per-user limits and bindings.
fn aor_of(uri: &Uri<'_>) -> Vec<u8> {
    match uri {
        Uri::Sip(u) => {
            let mut v = u.user.unwrap_or_default().to_vec();
            v.push(b'@');
            v.extend_from_slice(u.host.as_bytes());
            v
        }
        other => other.raw().to_vec(),
    }
}

fn first_contact(msg: &Message<'_>) -> Vec<u8> {
    first_contact_uri(msg)
}

fn first_contact_uri(msg: &Message<'_>) -> Vec<u8> {
    msg.contacts()
        .list
        .first()
        .map(|c| c.uri.raw().to_vec())
        .unwrap_or_default()
}

/// The user a REGISTER speaks for: the digest username when it carries credentials,
/// else the user part of its address-of-record.
fn register_user(msg: &Message<'_>) -> String {
    let digest = msg
        .authorization()
        .or(msg.proxy_authorization())
        .and_then(|c| c.username);
    let user = digest.or_else(|| msg.to().and_then(|t| t.uri.as_sip()).and_then(|u| u.user));
    String::from_utf8_lossy(user.unwrap_or_default()).into_owned()
}

/// Keeps the gateway in every dialog a phone takes part in: the far end's Contact becomes
/// the gateway's inside address and its Record-Route goes (the gateway keeps the route
/// set), so that the phone sends in-dialog requests to the gateway and nowhere else.
fn anchor_at_gateway(
    msg: &Message<'_>,
    edits: &mut Edits,
    lan: &str,
) -> Result<(), sipward_proto::EditError> {
    for contact in &msg.contacts().list {
        let Uri::Sip(u) = &contact.uri else { continue };
        let anchored = match u.user {
            Some(user) => format!("sip:{}@{lan}", String::from_utf8_lossy(user)),
            None => format!("sip:{lan}"),
        };
        if contact.bracketed {
            edits.replace(msg, u.raw, anchored.as_bytes())?;
        } else {
            edits.replace(msg, u.raw, format!("<{anchored}>").as_bytes())?;
        }
    }
    for f in msg
        .headers()
        .iter()
        .filter(|f| f.name == HeaderName::RecordRoute)
    {
        edits.remove_field(msg, f)?;
    }
    Ok(())
}

/// The phone's contact URI with the gateway's address and a routing token.
fn contact_uri(u: &sipward_proto::SipUri<'_>, host_port: &str, token: &str) -> String {
    let scheme = if u.secure { "sips" } else { "sip" };
    let mut s = String::from(scheme);
    s.push(':');
    if let Some(user) = u.user {
        s.push_str(&String::from_utf8_lossy(user));
        s.push('@');
    }
    s.push_str(host_port);
    for (name, value) in u.params() {
        if name.eq_ignore_ascii_case(TOKEN_PARAM.as_bytes()) {
            continue;
        }
        s.push(';');
        s.push_str(&String::from_utf8_lossy(name));
        if let Some(v) = value {
            s.push('=');
            s.push_str(&String::from_utf8_lossy(v));
        }
    }
    s.push(';');
    s.push_str(TOKEN_PARAM);
    s.push('=');
    s.push_str(token);
    s
}

fn with_tag(value: &[u8], tag: Option<&[u8]>) -> Vec<u8> {
    let mut v = value.to_vec();
    if let Some(tag) = tag {
        if !has_tag(value) {
            v.extend_from_slice(b";tag=");
            v.extend_from_slice(tag);
        }
    }
    v
}

fn field_contains(
    msg: &Message<'_>,
    f: &sipward_proto::HeaderField<'_>,
    r: &std::ops::Range<usize>,
) -> bool {
    msg.range_of(f.line)
        .is_some_and(|l| l.start <= r.start && r.end <= l.end)
}

fn decrement_max_forwards(
    msg: &Message<'_>,
    edits: &mut Edits,
) -> Result<(), sipward_proto::EditError> {
    match (msg.max_forwards(), msg.header(HeaderName::MaxForwards)) {
        (Some(n), Some(f)) => {
            edits.replace(msg, f.value, n.saturating_sub(1).to_string().as_bytes())
        }
        _ => edits.append_field(msg, "Max-Forwards", b"70"),
    }
}

/// Removes the gateway's own (top) Via and puts `restore` (whole Via lines) in its place.
fn remove_top_via(
    msg: &Message<'_>,
    edits: &mut Edits,
    restore: &[u8],
) -> Result<(), sipward_proto::EditError> {
    let Some(first) = msg.headers().iter().find(|f| f.name == HeaderName::Via) else {
        return Ok(());
    };
    let Some(line) = msg.range_of(first.line) else {
        return Ok(());
    };
    match msg
        .vias()
        .get(1)
        .and_then(|v| msg.range_of(v.raw))
        .filter(|r| r.start < line.end)
    {
        // The first Via field holds more entries: drop just ours (up to the next one).
        Some(second) => {
            let value = msg.range_of(first.value).map_or(line.start, |v| v.start);
            edits.replace_range(msg, value..second.start, b"")?;
            edits.insert(msg, line.start, restore)
        }
        None => edits.replace_range(msg, line, restore),
    }
}

/// Caps Expires (header and Contact parameter) of a REGISTER at `max`.
fn cap_expires(
    msg: &Message<'_>,
    edits: &mut Edits,
    max: Duration,
) -> Result<(), sipward_proto::EditError> {
    let max = max.as_secs();
    if let (Some(e), Some(f)) = (msg.expires(), msg.header(HeaderName::Expires)) {
        if u64::from(e) > max {
            edits.replace(msg, f.value, max.to_string().as_bytes())?;
        }
    }
    for c in &msg.contacts().list {
        cap_contact_expires(msg, edits, c, max)?;
    }
    Ok(())
}

fn cap_contact_expires(
    msg: &Message<'_>,
    edits: &mut Edits,
    c: &NameAddr<'_>,
    max: u64,
) -> Result<(), sipward_proto::EditError> {
    if let Some(Some(v)) = c.params.get("expires") {
        if c.expires().is_some_and(|e| u64::from(e) > max) {
            edits.replace(msg, v, max.to_string().as_bytes())?;
        }
    }
    Ok(())
}

/// In a 2xx to REGISTER: put the phone's contact back in place of the gateway's, cap the
/// granted time, and return it (`None`: the binding is gone).
fn restore_register_contacts(
    msg: &Message<'_>,
    edits: &mut Edits,
    reg: &RegisterInfo,
    max: Duration,
) -> Result<Option<Duration>, sipward_proto::EditError> {
    let mut granted = None;
    for c in &msg.contacts().list {
        let Uri::Sip(u) = &c.uri else { continue };
        let ours = u
            .param(TOKEN_PARAM)
            .flatten()
            .is_some_and(|t| t == reg.token.as_bytes());
        if !ours {
            continue;
        }
        let secs = c
            .expires()
            .or(msg.expires())
            .map_or(3600, u64::from)
            .min(max.as_secs());
        edits.replace(msg, u.raw, &reg.inside_contact)?;
        cap_contact_expires(msg, edits, c, max.as_secs())?;
        granted = (secs > 0).then(|| Duration::from_secs(secs));
    }
    if let (Some(e), Some(f)) = (msg.expires(), msg.header(HeaderName::Expires)) {
        if u64::from(e) > max.as_secs() {
            edits.replace(msg, f.value, max.as_secs().to_string().as_bytes())?;
        }
    }
    Ok(granted)
}

/// What an operator reads for a media set-up failure (Warning text and events).
fn media_error_text(e: MediaError) -> &'static str {
    match e {
        MediaError::PortsExhausted => "no media ports left",
        MediaError::SocketsUnavailable => "media sockets cannot be opened",
    }
}
