//! Attack protection: the blacklist, per-source flood limits, global admission control,
//! registration-failure counting, scanner and policy filters, and the security events
//! they raise. Pure like the rest of the core: time is passed in.
//!
//! Registration hijack rule: failures are counted per (user, source address) within a
//! window. At the maximum, that source is banned: its further REGISTERs (and all else)
//! are dropped unanswered. A source failing for many different users is banned as a
//! scanner. A user is never locked out as such: failures from an attacker's address do
//! not count against the same user registering from another address, so nobody can lock
//! a legitimate phone out merely by failing on its user name from elsewhere.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// How a filter acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterMode {
    Off,
    /// Matches are reported as events but let through: for trying a filter out.
    LogOnly,
    #[default]
    Enforce,
}

/// A token bucket's shape: sustained rate and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

/// The protection options, with defaults meant for an office edge.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtectionOptions {
    /// Failed REGISTERs for one user from one source before the source is banned.
    pub max_register_failures: u32,
    /// Distinct users failing from one source before it is banned.
    pub max_failed_users_per_source: usize,
    /// How long a failure counts.
    pub failure_window: Duration,
    /// How long a ban lasts (registration failures, scanners, floods).
    pub ban_time: Duration,
    /// Per-source limits: requests outside a dialog (new calls, registrations, OPTIONS...).
    pub new_requests: Rate,
    /// Per-source limits: requests within a dialog (ACK, BYE, re-INVITE...).
    pub dialog_requests: Rate,
    /// Per-source limits: responses.
    pub responses: Rate,
    /// Sources exempt from per-source limits (the upstream proxy carries everyone's
    /// traffic); global admission still applies to them.
    pub exempt: Vec<IpNet>,
    /// Admission of new requests (every request outside a dialog, whatever its method)
    /// arriving from inside zones, for all inside sources together, before `503`.
    pub admission: Rate,
    /// The same for requests arriving from outside zones. A budget of its own, so that
    /// no outside flood (from the exempt proxy address too, which UDP lets anyone
    /// spoof) takes the inside callers' budget.
    pub outside_admission: Rate,
    /// The part (0..1) of the transaction and dialog tables kept for requests inside
    /// established dialogs (BYE, ACK, re-INVITE, NOTIFY...): new requests never fill it.
    pub table_reserve: f64,
    /// Entries of each bounded table any source may hold whatever its fair share.
    pub table_share_floor: usize,
    /// The part (0..1) of each table's room for new requests that sources outside may
    /// hold together (the exempt proxy included), so that inside callers keep the rest.
    pub outside_table_share: f64,
    /// Seconds a `503` asks the sender to wait.
    pub retry_after: u32,
    /// User-Agent substrings (case-insensitive) of scanners.
    pub scanner_agents: Vec<String>,
    pub scanner_filter: FilterMode,
    /// Requests whose method sipward does not know.
    pub unknown_method_filter: FilterMode,
    /// Sources refused outright; when `allow` is not empty, only its networks are admitted.
    pub deny: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    pub network_filter: FilterMode,
    /// Bounds of the tables (sources tracked, bans).
    pub max_tracked_sources: usize,
    pub max_bans: usize,
}

impl Default for ProtectionOptions {
    fn default() -> Self {
        Self {
            max_register_failures: 5,
            max_failed_users_per_source: 10,
            failure_window: Duration::from_secs(600),
            ban_time: Duration::from_secs(3600),
            new_requests: Rate {
                per_second: 20.0,
                burst: 100.0,
            },
            dialog_requests: Rate {
                per_second: 100.0,
                burst: 300.0,
            },
            responses: Rate {
                per_second: 200.0,
                burst: 500.0,
            },
            exempt: Vec::new(),
            admission: Rate {
                per_second: 2000.0,
                burst: 4000.0,
            },
            outside_admission: Rate {
                per_second: 2000.0,
                burst: 4000.0,
            },
            table_reserve: 0.1,
            table_share_floor: 32,
            outside_table_share: 0.5,
            retry_after: 5,
            scanner_agents: [
                "friendly-scanner",
                "sipvicious",
                "sipcli",
                "sip-scan",
                "sipsak",
                "iWar",
                "sundayddr",
                "VaxSIPUserAgent",
                "SIVuS",
                "smap",
                "pplsip",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            scanner_filter: FilterMode::Enforce,
            unknown_method_filter: FilterMode::Enforce,
            deny: Vec::new(),
            allow: Vec::new(),
            network_filter: FilterMode::Enforce,
            max_tracked_sources: 100_000,
            max_bans: 100_000,
        }
    }
}

/// What a security event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A message refused (malformed, filtered, over a limit).
    Rejected,
    Banned,
    Unbanned,
    /// A binding registered from another address than the one holding it.
    HijackSuspected,
    /// A REGISTER with credentials the registrar refused.
    RegisterFailed,
    /// Over an admission budget, a table limit or a source's fair share of a table: a
    /// new request answered 503.
    Overload,
    /// A call began (INVITE through the gateway), was answered, or ended.
    CallStarted,
    CallAnswered,
    CallEnded,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Rejected => "rejected",
            EventKind::Banned => "banned",
            EventKind::Unbanned => "unbanned",
            EventKind::HijackSuspected => "hijack_suspected",
            EventKind::RegisterFailed => "register_failed",
            EventKind::Overload => "overload",
            EventKind::CallStarted => "call_started",
            EventKind::CallAnswered => "call_answered",
            EventKind::CallEnded => "call_ended",
        }
    }
}

/// A security event, for the log (JSON lines in the driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEvent {
    pub at: Instant,
    pub kind: EventKind,
    pub source: IpAddr,
    pub user: Option<String>,
    pub method: Option<String>,
    pub reason: String,
}

/// A blacklist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanView {
    pub source: IpAddr,
    pub reason: String,
    pub user: Option<String>,
    pub first_seen: Instant,
    pub last_seen: Instant,
    pub expires: Instant,
    /// Datagrams dropped because of the ban.
    pub hits: u64,
    /// Set by the operator (the API, the CLI): kept over automatic bans when the table
    /// is full, so that a flood of spoofed sources getting themselves banned cannot
    /// push an operator's ban out.
    pub by_operator: bool,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    /// Takes a token; false when empty.
    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Bucket {
    /// Takes a token if `floor` tokens are left after it; false otherwise.
    fn take_above(&mut self, rate: Rate, now: Instant, floor: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.at = now;
        if self.tokens >= 1.0 + floor {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The part of an admission bucket's burst that only light sources may take: many
/// sources each within its own limits can together drain a shared budget, and the
/// phone that sends one REGISTER a minute must not find it empty behind them.
const ADMISSION_KEPT_FOR_LIGHT: f64 = 0.25;
/// New requests a source may have sent beyond what its bucket has refilled and still
/// count as light.
const LIGHT_SOURCE_USE: f64 = 10.0;

/// A source's buckets and registration failures.
#[derive(Debug)]
struct SourceState {
    buckets: [Bucket; 3],
    /// Failure times per user.
    failures: HashMap<String, VecDeque<Instant>>,
    last_seen: Instant,
}

/// The class of a message, for the per-source limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    NewRequest = 0,
    DialogRequest = 1,
    Response = 2,
}

/// The verdict on a request that passed the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Drop silently.
    Drop,
    /// Answer 503 with Retry-After.
    Overloaded {
        retry_after: u32,
    },
}

/// The protection state.
#[derive(Debug)]
pub struct Guard {
    options: ProtectionOptions,
    bans: HashMap<IpAddr, BanView>,
    sources: HashMap<IpAddr, SourceState>,
    /// Admission buckets: requests from inside zones, from outside zones.
    admission: [Option<Bucket>; 2],
    events: VecDeque<SecurityEvent>,
    /// Per-source events kept per sweep, so a flood cannot flood the log.
    event_budget: HashMap<IpAddr, u32>,
    pub(crate) dropped_banned: u64,
    /// When a full source table was last swept for blank entries.
    last_source_sweep: Option<Instant>,
    /// Rises with every change to the bans (for the state records: the bans are
    /// compared only when it moved).
    pub(crate) ban_generation: u64,
}

/// Whether `needle` occurs in `haystack`, ASCII letters compared without case.
fn contains_ignore_ascii_case(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Events one source may raise between sweeps (one second).
const EVENTS_PER_SOURCE: u32 = 20;
/// Events queued at most; older ones are dropped first.
const MAX_EVENTS: usize = 10_000;

impl Guard {
    pub fn new(options: ProtectionOptions) -> Self {
        Self {
            options,
            bans: HashMap::new(),
            sources: HashMap::new(),
            admission: [None, None],
            events: VecDeque::new(),
            event_budget: HashMap::new(),
            dropped_banned: 0,
            last_source_sweep: None,
            ban_generation: 0,
        }
    }

    /// New options (a reload); bans, counts and buckets carry over.
    pub fn set_options(&mut self, options: ProtectionOptions) {
        self.options = options;
    }

    pub fn options(&self) -> &ProtectionOptions {
        &self.options
    }

    /// The first check on every datagram, before parsing: bans and network lists.
    /// Cheap by design: one hash lookup for a banned source.
    pub fn admit_source(&mut self, source: IpAddr, now: Instant) -> bool {
        if let Some(ban) = self.bans.get_mut(&source) {
            if ban.expires > now {
                ban.hits += 1;
                ban.last_seen = now;
                self.dropped_banned += 1;
                return false;
            }
        }
        if self.options.network_filter != FilterMode::Off {
            let denied = self.options.deny.iter().any(|n| n.contains(&source))
                || (!self.options.allow.is_empty()
                    && !self.options.allow.iter().any(|n| n.contains(&source)));
            if denied {
                self.event(
                    now,
                    EventKind::Rejected,
                    source,
                    None,
                    None,
                    "source network denied",
                );
                return self.options.network_filter == FilterMode::LogOnly;
            }
        }
        true
    }

    /// Whether `source` is exempt from per-source limits (the upstream proxy).
    pub fn is_exempt(&self, source: IpAddr) -> bool {
        self.exempt(source)
    }

    fn exempt(&self, source: IpAddr) -> bool {
        self.options.exempt.iter().any(|n| n.contains(&source))
    }

    /// Per-source rate limit for a parsed message; a source over its limit is banned.
    pub fn within_rate(
        &mut self,
        source: IpAddr,
        class: Class,
        method: &str,
        now: Instant,
    ) -> bool {
        if self.exempt(source) {
            return true;
        }
        let o = &self.options;
        let rates = [o.new_requests, o.dialog_requests, o.responses];
        if !self.sources.contains_key(&source) && self.sources.len() >= o.max_tracked_sources {
            self.forget_blank_sources(now);
            if self.sources.len() >= self.options.max_tracked_sources {
                // Still full (a spoofed-source flood): unknown sources are bound by the
                // admission budget of their direction instead of state of their own.
                return true;
            }
        }
        let state = self.sources.entry(source).or_insert_with(|| SourceState {
            buckets: rates.map(|r| Bucket::full(r, now)),
            failures: HashMap::new(),
            last_seen: now,
        });
        state.last_seen = now;
        let (bucket, rate) = match class {
            Class::NewRequest => (&mut state.buckets[0], rates[0]),
            Class::DialogRequest => (&mut state.buckets[1], rates[1]),
            Class::Response => (&mut state.buckets[2], rates[2]),
        };
        if bucket.take(rate, now) {
            return true;
        }
        let reason = format!(
            "flood: over {} {} per second",
            rate.per_second,
            match class {
                Class::NewRequest => "new requests",
                Class::DialogRequest => "in-dialog requests",
                Class::Response => "responses",
            }
        );
        self.ban(source, None, Some(method), &reason, now, None);
        false
    }

    /// Makes room in a full source table (at most once a second): a source whose buckets
    /// have all refilled and that has no failures recorded is as good as unknown, so its
    /// entry goes; without this the first sources seen kept the table and every later
    /// one went unlimited.
    fn forget_blank_sources(&mut self, now: Instant) {
        if self
            .last_source_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_source_sweep = Some(now);
        let o = &self.options;
        let rates = [o.new_requests, o.dialog_requests, o.responses];
        self.sources.retain(|_, s| {
            !s.failures.is_empty()
                || s.buckets.iter().zip(rates).any(|(b, r)| {
                    let refill = now.saturating_duration_since(b.at).as_secs_f64() * r.per_second;
                    b.tokens + refill < r.burst
                })
        });
    }

    /// Admission of a new request (any request outside a dialog) from inside or from
    /// outside: each direction draws on its own budget.
    pub fn admit_new(
        &mut self,
        source: IpAddr,
        method: &str,
        outside: bool,
        now: Instant,
    ) -> Verdict {
        let (rate, slot, side) = if outside {
            (self.options.outside_admission, 1, "outside")
        } else {
            (self.options.admission, 0, "inside")
        };
        // Light: a source whose own new-request bucket is nearly full (it sent little of
        // late), or one without state (exempt, or the source table full).
        let light = self.sources.get(&source).is_none_or(|s| {
            s.buckets[0].tokens + LIGHT_SOURCE_USE >= self.options.new_requests.burst
        });
        let floor = if light {
            0.0
        } else {
            rate.burst * ADMISSION_KEPT_FOR_LIGHT
        };
        let Some(bucket) = self.admission.get_mut(slot) else {
            return Verdict::Pass;
        };
        let bucket = bucket.get_or_insert_with(|| Bucket::full(rate, now));
        if bucket.take_above(rate, now, floor) {
            Verdict::Pass
        } else {
            self.event(
                now,
                EventKind::Overload,
                source,
                None,
                Some(method),
                &format!("over the {side} admission rate: 503"),
            );
            Verdict::Overloaded {
                retry_after: self.options.retry_after,
            }
        }
    }

    /// A new request refused for want of room in a bounded table (the table's limit or
    /// the source's fair share of it): an `overload` event, rate-limited per source.
    pub fn table_refused(&mut self, source: IpAddr, method: Option<&str>, why: &str, now: Instant) {
        self.event(now, EventKind::Overload, source, None, method, why);
    }

    /// Scanner User-Agents and unknown methods; a scanner is banned.
    pub fn filter_request(
        &mut self,
        source: IpAddr,
        method: &str,
        known_method: bool,
        user_agent: Option<&[u8]>,
        now: Instant,
    ) -> bool {
        if self.options.scanner_filter != FilterMode::Off {
            if let Some(agent) = user_agent {
                // Every request with a User-Agent comes here: compare in place, no copies.
                let hit = self
                    .options
                    .scanner_agents
                    .iter()
                    .find(|s| contains_ignore_ascii_case(agent, s.as_bytes()))
                    .cloned();
                if let Some(sig) = hit {
                    let reason = format!("scanner User-Agent ({sig})");
                    if self.options.scanner_filter == FilterMode::Enforce {
                        self.ban(source, None, Some(method), &reason, now, None);
                        return false;
                    }
                    self.event(
                        now,
                        EventKind::Rejected,
                        source,
                        None,
                        Some(method),
                        &format!("{reason}, log only"),
                    );
                }
            }
        }
        if !known_method && self.options.unknown_method_filter != FilterMode::Off {
            let enforce = self.options.unknown_method_filter == FilterMode::Enforce;
            let reason = if enforce {
                "unknown method"
            } else {
                "unknown method, log only"
            };
            self.event(now, EventKind::Rejected, source, None, Some(method), reason);
            return !enforce;
        }
        true
    }

    /// Whether `source` may send a REGISTER for `user` (false: drop it unanswered).
    pub fn may_register(&self, source: IpAddr, user: &str, now: Instant) -> bool {
        let Some(state) = self.sources.get(&source) else {
            return true;
        };
        let recent = state.failures.get(user).map_or(0, |f| {
            f.iter()
                .filter(|t| now.saturating_duration_since(**t) < self.options.failure_window)
                .count()
        });
        recent < self.options.max_register_failures as usize
    }

    /// The registrar refused credentials `user` sent from `source`.
    pub fn register_failed(&mut self, source: IpAddr, user: &str, status: u16, now: Instant) {
        self.event(
            now,
            EventKind::RegisterFailed,
            source,
            Some(user),
            Some("REGISTER"),
            &format!("registrar answered {status} to credentials"),
        );
        if self.exempt(source) {
            return;
        }
        let o = &self.options;
        let window = o.failure_window;
        let rates = [o.new_requests, o.dialog_requests, o.responses];
        let state = self.sources.entry(source).or_insert_with(|| SourceState {
            buckets: rates.map(|r| Bucket::full(r, now)),
            failures: HashMap::new(),
            last_seen: now,
        });
        state.last_seen = now;
        if state.failures.len() > o.max_failed_users_per_source.saturating_mul(4)
            && !state.failures.contains_key(user)
        {
            // Bounded: a source this busy is banned below anyway.
            state.failures.retain(|_, f| {
                f.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
        }
        let list = state.failures.entry(user.to_string()).or_default();
        list.push_back(now);
        while list.len() > o.max_register_failures as usize + 1 {
            list.pop_front();
        }
        let user_failures = list
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < window)
            .count();
        let users_failing = state
            .failures
            .values()
            .filter(|f| {
                f.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            })
            .count();
        if user_failures >= o.max_register_failures as usize {
            let reason = format!("{user_failures} failed registrations for one user");
            self.ban(source, Some(user), Some("REGISTER"), &reason, now, None);
        } else if users_failing >= o.max_failed_users_per_source {
            let reason = format!("failed registrations for {users_failing} users");
            self.ban(source, Some(user), Some("REGISTER"), &reason, now, None);
        }
    }

    /// The registrar accepted `user` from `source`: its failures are forgotten.
    pub fn register_succeeded(&mut self, source: IpAddr, user: &str) {
        if let Some(state) = self.sources.get_mut(&source) {
            state.failures.remove(user);
        }
    }

    /// A binding for `user` now registered from `source` was held by `previous`.
    pub fn binding_moved(&mut self, source: IpAddr, previous: IpAddr, user: &str, now: Instant) {
        self.event(
            now,
            EventKind::HijackSuspected,
            source,
            Some(user),
            Some("REGISTER"),
            &format!("registered a binding held from {previous}"),
        );
    }

    /// Adds (or extends) a ban. `duration` None: the configured ban time.
    pub fn ban(
        &mut self,
        source: IpAddr,
        user: Option<&str>,
        method: Option<&str>,
        reason: &str,
        now: Instant,
        duration: Option<Duration>,
    ) {
        let expires = later(now, duration.unwrap_or(self.options.ban_time));
        if let Some(b) = self.bans.get_mut(&source) {
            if b.expires > now {
                b.expires = b.expires.max(expires);
                b.last_seen = now;
                self.ban_generation += 1;
                return;
            }
        }
        if self.bans.len() >= self.options.max_bans {
            self.bans.retain(|_, b| b.expires > now);
            if self.bans.len() >= self.options.max_bans {
                // Full of live bans: the automatic one ending soonest makes room (an
                // operator's only when there are no others).
                if let Some(victim) = self
                    .bans
                    .values()
                    .min_by_key(|b| (b.by_operator, b.expires))
                    .map(|b| b.source)
                {
                    self.bans.remove(&victim);
                }
            }
        }
        self.ban_generation += 1;
        self.bans.insert(
            source,
            BanView {
                source,
                reason: reason.to_string(),
                user: user.map(str::to_string),
                first_seen: now,
                last_seen: now,
                expires,
                hits: 0,
                by_operator: false,
            },
        );
        // A ban's own event is never suppressed by the per-source budget.
        self.record(now, EventKind::Banned, source, user, method, reason);
    }

    /// Lifts a ban; false when there was none.
    pub fn unban(&mut self, source: IpAddr, now: Instant, why: &str) -> bool {
        let Some(b) = self.bans.remove(&source) else {
            return false;
        };
        self.ban_generation += 1;
        self.sources.remove(&source);
        self.record(
            now,
            EventKind::Unbanned,
            source,
            b.user.as_deref(),
            None,
            why,
        );
        true
    }

    /// Live bans.
    /// Marks a source's ban as the operator's (see [`BanView::by_operator`]).
    pub fn mark_by_operator(&mut self, source: IpAddr) {
        if let Some(b) = self.bans.get_mut(&source) {
            b.by_operator = true;
            self.ban_generation += 1;
        }
    }

    pub fn bans(&self, now: Instant) -> Vec<BanView> {
        let mut v: Vec<BanView> = self
            .bans
            .values()
            .filter(|b| b.expires > now)
            .cloned()
            .collect();
        v.sort_by_key(|b| b.first_seen);
        v
    }

    /// Once a second: expired bans end (with an event), idle sources are forgotten.
    pub fn sweep(&mut self, now: Instant) {
        let expired: Vec<IpAddr> = self
            .bans
            .values()
            .filter(|b| b.expires <= now)
            .map(|b| b.source)
            .collect();
        for source in expired {
            self.unban(source, now, "ban expired");
        }
        let idle = self.options.failure_window.max(Duration::from_secs(60));
        self.sources
            .retain(|_, s| now.saturating_duration_since(s.last_seen) < idle);
        self.event_budget.clear();
    }

    /// A rejection worth an event (malformed messages, rule drops with an answer...).
    pub fn rejected(&mut self, source: IpAddr, method: Option<&str>, reason: &str, now: Instant) {
        self.event(now, EventKind::Rejected, source, None, method, reason);
    }

    fn event(
        &mut self,
        at: Instant,
        kind: EventKind,
        source: IpAddr,
        user: Option<&str>,
        method: Option<&str>,
        reason: &str,
    ) {
        let budget = self.event_budget.entry(source).or_insert(0);
        if *budget >= EVENTS_PER_SOURCE {
            return;
        }
        *budget += 1;
        self.record(at, kind, source, user, method, reason);
    }

    /// Records an event outside the per-source budget (calls are not floods).
    pub(crate) fn record(
        &mut self,
        at: Instant,
        kind: EventKind,
        source: IpAddr,
        user: Option<&str>,
        method: Option<&str>,
        reason: &str,
    ) {
        self.push_event(SecurityEvent {
            at,
            kind,
            source,
            user: user.map(str::to_string),
            method: method.map(str::to_string),
            reason: reason.to_string(),
        });
    }

    fn push_event(&mut self, e: SecurityEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    pub fn poll_event(&mut self) -> Option<SecurityEvent> {
        self.events.pop_front()
    }

    /// Sources currently tracked (bounded by `max_tracked_sources`).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Fill and capacity of the guard's bounded tables: (table, entries, capacity).
    /// Failure records are kept per source and user; a source keeps at most four times
    /// `max_failed_users_per_source` of them (plus the one that triggers the trim).
    pub fn table_usage(&self) -> [(&'static str, usize, usize); 3] {
        let o = &self.options;
        let failures = self.sources.values().map(|s| s.failures.len()).sum();
        let per_source = o
            .max_failed_users_per_source
            .saturating_mul(4)
            .saturating_add(1);
        [
            ("tracked_sources", self.sources.len(), o.max_tracked_sources),
            (
                "failure_records",
                failures,
                o.max_tracked_sources.saturating_mul(per_source),
            ),
            ("bans", self.bans.len(), o.max_bans),
        ]
    }

    /// Users with failures recorded from `source` (for tests and the admin surface).
    pub fn failing_users(&self, source: IpAddr) -> HashSet<String> {
        self.sources
            .get(&source)
            .map(|s| s.failures.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// `now + d`, saturating: a duration an operator or a peer chose (a ban, an expiry)
/// must never panic the gateway with an overflowing instant. Past what the clock can
/// represent, a century is as good as forever.
pub fn later(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    now.checked_add(d)
        .or_else(|| now.checked_add(CENTURY))
        .unwrap_or(now)
}
