//! OPTIONS pings to configured next hops (`options_ping` on a rule): what trunks such
//! as Teams Direct Routing expect of an SBC, and how the operator sees that a proxy is
//! up. One ping in flight per rule; its answer (any status) marks the peer up, a ping
//! unanswered when the next is due marks it down.

use super::*;

/// One rule's pings.
#[derive(Debug, Clone, Default)]
pub(super) struct PeerPing {
    next_at: Option<Instant>,
    /// The branch of the ping in flight.
    outstanding: Option<String>,
    sent: u64,
    last_answer: Option<(Instant, u16)>,
    up: bool,
}

/// A read-only view of a pinged peer, for the admin surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub rule: String,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub up: bool,
    pub pings_sent: u64,
    /// The last answer's status and when it came.
    pub last_answer: Option<(Instant, u16)>,
}

impl Gateway {
    /// Sends the pings due at `now` (from the sweep).
    pub(super) fn ping_peers(&mut self, config: &Config, now: Instant) {
        for rule in &config.rules {
            let Some(every) = rule.options_ping else {
                continue;
            };
            let Some(peer) = rule
                .to_zone
                .and_then(|z| config.zone(z))
                .and_then(|wan| rule.next_hop(&Flow::udp(wan.address, wan.address), wan.address))
            else {
                continue;
            };
            let state = self.pings.entry(rule.name.clone()).or_default();
            if state.next_at.is_some_and(|at| at > now) {
                continue;
            }
            if state.outstanding.is_some() {
                // The last one went unanswered.
                state.up = false;
            }
            state.sent += 1;
            let branch =
                self.hider
                    .branch(&[rule.name.as_bytes(), b"ping", &state.sent.to_be_bytes()]);
            state.outstanding = Some(branch.clone());
            state.next_at = Some(crate::protect::later(now, every));
            let host_port = config.leg_host_port(peer.local, peer.transport);
            let call_id = self.hider.token(&[rule.name.as_bytes(), b"ping-call"]);
            let tag = self.hider.token(&[rule.name.as_bytes(), b"ping-tag"]);
            let ping = format!(
                "OPTIONS sip:{remote} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: <sip:{host_port}>;tag={tag}\r\nTo: <sip:{remote}>\r\nCall-ID: {call_id}\r\nCSeq: {seq} OPTIONS\r\nUser-Agent: {agent}\r\nContent-Length: 0\r\n\r\n",
                remote = peer.remote,
                via = via_value(peer.transport, &host_port, &branch),
                seq = state.sent,
                agent = config.agent,
            );
            self.counters.options_pings += 1;
            self.send_on(peer, ping.into_bytes());
        }
    }

    /// A response to one of the gateway's pings: true if it was one (absorbed).
    pub(super) fn ping_answered(&mut self, branch: &str, status: u16, now: Instant) -> bool {
        let Some(state) = self
            .pings
            .values_mut()
            .find(|p| p.outstanding.as_deref() == Some(branch))
        else {
            return false;
        };
        if status >= 200 {
            state.outstanding = None;
            state.up = true;
            state.last_answer = Some((now, status));
        }
        true
    }

    /// The peers pinged and how they answer.
    pub fn peers(&self) -> Vec<PeerView> {
        let config = &self.config;
        config
            .rules
            .iter()
            .filter(|r| r.options_ping.is_some())
            .filter_map(|rule| {
                let wan = rule.to_zone.and_then(|z| config.zone(z))?;
                let peer = rule.next_hop(&Flow::udp(wan.address, wan.address), wan.address)?;
                let state = self.pings.get(&rule.name).cloned().unwrap_or_default();
                Some(PeerView {
                    rule: rule.name.clone(),
                    peer: peer.remote,
                    transport: peer.transport,
                    up: state.up,
                    pings_sent: state.sent,
                    last_answer: state.last_answer,
                })
            })
            .collect()
    }
}
