//! Where a message leaves: every send goes through `send_on` with the flow to use (the
//! last-line scan for outside flows), and the counters of what went in and out. A new
//! transport needs nothing here beyond its [`Flow`]; the driver maps flows to sockets.

use super::*;

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

    pub(super) fn on(flow: Flow, payload: Vec<u8>) -> Self {
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

/// Which way a message went.
#[derive(Clone, Copy)]
pub(super) enum Direction {
    In,
    Out,
}

/// Original destinations counted one by one in [`Traffic::diverted_to`]; the rest are
/// summed in `diverted_to_other` (a rule to `any` must not grow the map without bound).
pub(super) const DIVERTED_DESTINATIONS: usize = 256;

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
    pub(super) fn count(&mut self, flow: Direction, payload: &[u8]) {
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
    /// Retransmissions the gateway sent itself on a UDP leg for a sender on a stream.
    pub retransmitted: u64,
    /// Requests for a phone whose connection is gone, answered 430 Flow Failed.
    pub flow_failed: u64,
    /// Messages the driver could not deliver (connection refused, queue full).
    pub undeliverable: u64,
    /// Requests too large for UDP sent over TCP instead, and those sent over UDP anyway
    /// because the next hop takes UDP only.
    pub switched_to_tcp: u64,
    pub udp_oversize: u64,
    /// Requests refused for security: `sips:` without TLS on both legs (480), SDES keys
    /// toward a leg without TLS (488).
    pub refused_insecure: u64,
    /// OPTIONS for the gateway itself, answered 200.
    pub answered_options: u64,
    /// OPTIONS pings sent to configured next hops.
    pub options_pings: u64,
}

impl Counters {
    /// Every counter by a stable name (the admin API's and the metrics' keys).
    pub fn fields(&self) -> [(&'static str, u64); 34] {
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
            ("retransmitted", self.retransmitted),
            ("flow_failed", self.flow_failed),
            ("undeliverable", self.undeliverable),
            ("switched_to_tcp", self.switched_to_tcp),
            ("udp_oversize", self.udp_oversize),
            ("refused_insecure", self.refused_insecure),
            ("answered_options", self.answered_options),
            ("options_pings", self.options_pings),
        ]
    }
}

impl Gateway {
    /// Sends on `flow` (a phone's, kept in the tables, or the outside leg's).
    pub(super) fn send_on(&mut self, flow: Flow, payload: Vec<u8>) -> bool {
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

    pub(super) fn push_on(&mut self, flow: Flow, payload: Vec<u8>) {
        self.traffic.count(Direction::Out, &payload);
        self.out.push_back(Transmit::on(flow, payload));
    }
}
