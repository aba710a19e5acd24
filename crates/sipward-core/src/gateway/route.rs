//! Where a message enters: the source check, parsing, the zone of its flow, the rule
//! that admits it (by the gateway address it was sent to, or, intercepted, by its
//! original destination), and the path it takes.

use super::*;

/// Whether a datagram arrived on an inside zone's address.
pub(super) fn arrived_inside(config: &Config, at: Arrival) -> bool {
    config
        .zone_of_local(at.flow.local)
        .and_then(|z| config.zone(z))
        .is_some_and(|z| z.inside)
}

impl Gateway {
    /// The stream connection `id` closed (either end, or a limit): flows on it forget
    /// it. A phone's next inbound request then gets a new connection to its Contact or
    /// 430 Flow Failed (RFC 5626 5.3); the outside is reconnected to on the next message.
    pub fn handle_connection_closed(&mut self, now: Instant, id: ConnectionId) {
        self.now = Some(now);
        self.tables.connection_closed(id);
    }

    /// Why stream connection `id` must outlive its idle timeout, if it must: a dialog
    /// over it (while the dialog lasts) or a registration binding made over it (until
    /// the binding expires). A lookup, kept by the tables as entries come and go.
    pub fn connection_use(&self, id: ConnectionId) -> Option<crate::state::ConnectionUse> {
        self.tables.connection_use(id)
    }

    /// A message the gateway sent on `flow` could not be delivered (the connection could
    /// not be opened or its send queue was full). A request of a transaction in progress
    /// gets its sender an answer at once instead of a timeout: 503 for a request toward
    /// the outside, 430 Flow Failed for one toward a phone on a stream.
    pub fn handle_undeliverable(&mut self, now: Instant, flow: Flow, payload: &[u8]) {
        self.now = Some(now);
        let config = self.config.clone();
        let Ok(Datagram::Message(msg)) = parse_datagram(payload, &config.alg.limits) else {
            return;
        };
        let (Some(via), Some(cseq)) = (msg.top_via(), msg.cseq()) else {
            return;
        };
        if !msg.is_request() || cseq.method == b"ACK" {
            return;
        }
        let key = (
            String::from_utf8_lossy(via.branch.unwrap_or_default()).into_owned(),
            cseq.method.to_vec(),
        );
        self.counters.undeliverable += 1;
        if let Some(tx) = self
            .tables
            .client
            .get(&key)
            .filter(|t| t.final_at.is_none())
        {
            let phone = tx.phone;
            let tag = self.hider.token(&[&tx.inside_call_id, b"503"]);
            let answer = tx.echo.response(
                503,
                "Service Unavailable",
                &config.agent,
                Some("next hop unreachable"),
                &tag,
            );
            self.retransmits.stop(&key);
            self.tables.settle_client(&key, now);
            self.send_on(phone, answer);
        } else if let Some(tx) = self
            .tables
            .server
            .get(&key)
            .filter(|t| t.final_at.is_none())
        {
            let outside = tx.outside;
            let (status, reason) = if flow.transport == Transport::Udp {
                (503, "Service Unavailable")
            } else {
                self.counters.flow_failed += 1;
                (430, "Flow Failed")
            };
            let tag = self.hider.token(&[&tx.echo.call_id, b"430"]);
            let answer = tx.echo.response(
                status,
                reason,
                &config.agent,
                Some("phone unreachable"),
                &tag,
            );
            self.retransmits.stop(&key);
            self.tables.settle_server(&key, now);
            self.send_on(outside, answer);
        }
        self.arm(now);
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
                // Whatever dialog the message belongs to may have changed (target,
                // route set, CSeq, media): its record is made again.
                self.touched_call(msg.call_id());
                self.arm(now);
            }
        }
    }

    /// Counts an intercepted message by its rule and original destination; false when no
    /// rule admits it (dropped and counted: the rule set's default).
    pub(super) fn count_diverted(&mut self, config: &Config, zone: ZoneId, flow: &Flow) -> bool {
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

    /// Whether the rule set drops a request outright (no rule, or a drop rule), counted
    /// and reported as `apply_rule` does; a reject rule's 403 is sent later, after the
    /// sender's limits.
    pub(super) fn dropped_by_rules(
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

    pub(super) fn apply_rule<'c>(
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

    pub(super) fn arm(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(crate::protect::later(now, SWEEP));
        }
    }
}
