//! Transaction rules the paths share: retransmissions answered from what was sent,
//! the gateway's own answers, which methods make dialogs, and the timeouts.

use super::*;

/// What the gateway does with a request that repeats one it is already relaying (the
/// sender's retransmission timer fired): a stateful relay absorbs it (RFC 3261 16.6,
/// RFC 6026) instead of passing every copy on, where the next hop could take it for
/// a new request once it has answered.
/// Where a relayed request goes on, for the end both request paths share.
pub(super) struct Onward<'a> {
    pub(super) toward: Toward,
    pub(super) flow: Flow,
    /// The gateway's branch: the transaction's name on the next hop.
    pub(super) branch: &'a str,
    pub(super) dialog: &'a DialogKey,
    pub(super) method: MethodKind,
}

pub(super) enum Repeat {
    /// Nothing came back yet: the next hop may never have had it.
    Forward,
    /// Send the last response again.
    Answer(Vec<u8>),
    /// A 2xx answered the INVITE: the far end retransmits that 2xx itself until the
    /// ACK comes, so the copy is dropped (RFC 6026 "Accepted").
    Absorb,
}

impl Repeat {
    pub(super) fn of(final_at: Option<Instant>, last_response: &Option<Vec<u8>>) -> Repeat {
        match (last_response, final_at) {
            (Some(r), _) => Repeat::Answer(r.clone()),
            (None, Some(_)) => Repeat::Absorb,
            (None, None) => Repeat::Forward,
        }
    }

    /// A copy that would be forwarded goes no further when the next leg is a stream:
    /// the transport there is reliable and the copy would reach the next hop as a
    /// duplicate (RFC 3261 18.1.1: only UDP senders retransmit).
    pub(super) fn onto(self, next: Transport) -> Repeat {
        match (self, next) {
            (Repeat::Forward, Transport::Tcp | Transport::Tls) => Repeat::Absorb,
            (r, _) => r,
        }
    }

    /// A repeat of an ended non-INVITE transaction: answered with its final response.
    pub(super) fn completed(kept: &Completed, key: &(String, Vec<u8>)) -> Option<Repeat> {
        kept.get(key).map(|r| Repeat::Answer(r.clone()))
    }

    /// Whether a response is kept to answer retransmissions with: a provisional one, and
    /// an INVITE's failure (its transaction lingers). Not a 2xx to an INVITE, which ends
    /// the relay's part in the retransmissions, nor another request's final response,
    /// whose transaction ends with it (the response goes to `Completed` instead).
    pub(super) fn keeps(method: MethodKind, status: u16) -> bool {
        match method {
            MethodKind::Invite => !(200..300).contains(&status),
            _ => status < 200,
        }
    }
}

/// Requests that create a dialog when sent outside one (RFC 3261, 6665, 3515).
pub(super) fn creates_dialog(method: MethodKind) -> bool {
    matches!(
        method,
        MethodKind::Invite | MethodKind::Subscribe | MethodKind::Refer
    )
}

/// Whether a response's Contact is the target of a dialog the gateway keeps (and so is
/// replaced by the gateway's own address): a 1xx/2xx to a dialog-making or target-refresh
/// request (RFC 3261 12.1, 12.2; RFC 3311; RFC 6665).
pub(super) fn sets_dialog_target(method: MethodKind, status: u16) -> bool {
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
pub(super) fn ends_subscription(msg: &Message<'_>) -> bool {
    msg.method().is_some_and(|m| m.kind() == MethodKind::Notify)
        && msg.headers().iter().any(|f| {
            f.raw_name.eq_ignore_ascii_case(b"Subscription-State")
                && f.value
                    .get(..10)
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"terminated"))
        })
}

pub(super) fn expired_tx(
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
pub(super) fn answer_timeout(alg: &crate::config::AlgOptions, method: MethodKind) -> Duration {
    if method == MethodKind::Invite {
        alg.request_response_timeout
    } else {
        alg.request_response_timeout.min(TIMER_F)
    }
}

impl Gateway {
    /// The end both request paths share: a subscription ended by its NOTIFY, the
    /// gateway's own CANCEL made ready for an INVITE, its own retransmissions where a
    /// stream sender's request goes on over UDP, and the send (the payload has had the
    /// last-line scan where it leaves by an outside interface).
    pub(super) fn send_request_onward(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        onward: Onward<'_>,
        payload: Vec<u8>,
    ) {
        if ends_subscription(msg) {
            self.end_subscription(onward.dialog);
        }
        if onward.method == MethodKind::Invite {
            self.cancels.prepare(
                onward.toward,
                (onward.branch.to_owned(), b"INVITE".to_vec()),
                &payload,
                onward.flow,
                &config.alg.limits,
            );
        }
        let cseq_method = msg.cseq().map(|c| c.method.to_vec()).unwrap_or_default();
        if let Some(kind) = bridged(at.flow.transport, onward.flow.transport, onward.method) {
            let key = (onward.branch.to_owned(), cseq_method);
            self.retransmits
                .start(key, kind, onward.flow, payload.clone(), at.now);
        }
        self.counters.forwarded += 1;
        self.push_on(onward.flow, payload);
    }

    /// RFC 3261 18.1.1: a request over `udp_switch_size` goes over TCP to a next hop
    /// that takes it (every SIP element must, unless the rule says `udp_only`); the Via
    /// names the transport used. A UDP-only next hop still gets UDP, counted.
    pub(super) fn fit_transport(
        &mut self,
        rule: &Rule,
        flow: Flow,
        payload: Vec<u8>,
    ) -> (Flow, Vec<u8>) {
        let config = self.config.clone();
        if flow.transport != Transport::Udp || payload.len() <= config.alg.udp_switch_size {
            return (flow, payload);
        }
        if rule.udp_only {
            self.counters.udp_oversize += 1;
            return (flow, payload);
        }
        let mut payload = payload;
        // Our Via is the request's only one: its transport token is the first
        // `SIP/2.0/UDP ` after the start line, and has the same length as TCP's.
        let start = payload.windows(2).position(|w| w == b"\r\n").unwrap_or(0);
        let found = payload
            .get(start..)
            .and_then(|rest| rest.windows(12).position(|w| w == b"SIP/2.0/UDP "))
            .map(|at| start + at + 8);
        if let Some(token) = found.and_then(|at| payload.get_mut(at..at + 3)) {
            token.copy_from_slice(b"TCP");
        }
        self.counters.switched_to_tcp += 1;
        let flow = Flow {
            transport: Transport::Tcp,
            ..flow
        };
        (flow, payload)
    }

    /// `sips:` needs TLS on both legs (RFC 3261 26.2.2: else 480), and SDES keys must
    /// not cross a leg without TLS (else 488, unless allowed). False: answered here.
    pub(super) fn secure_enough(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        onward: Transport,
    ) -> bool {
        let sips = msg
            .request_uri()
            .and_then(|u| u.as_sip())
            .is_some_and(|u| u.secure);
        if sips && (at.flow.transport != Transport::Tls || onward != Transport::Tls) {
            self.counters.refused_insecure += 1;
            self.answer(
                config,
                at,
                msg,
                480,
                "Temporarily Unavailable",
                "sips: requires TLS",
            );
            return false;
        }
        let keys = msg.sdp().is_some() && contains(msg.body(), b"a=crypto:");
        if keys && onward != Transport::Tls && !config.alg.allow_sdes_on_plain_leg {
            self.counters.refused_insecure += 1;
            self.answer(
                config,
                at,
                msg,
                488,
                "Not Acceptable Here",
                "SDES keys toward a leg without TLS",
            );
            return false;
        }
        true
    }

    /// Answers a request on the gateway's own behalf (never an ACK).
    pub(super) fn answer(
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

    /// 200 to an OPTIONS for the gateway itself, with what it accepts.
    pub(super) fn answer_options(&mut self, config: &Config, at: Arrival, msg: &Message<'_>) {
        let tag = self.hider.token(&[msg.call_id(), b"options"]);
        let mut payload = Echo::of(msg).response(200, "OK", &config.agent, None, &tag);
        let allow = b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK, INFO, REFER, NOTIFY, SUBSCRIBE, MESSAGE\r\n";
        // Before the closing Content-Length line.
        let at_end = payload
            .len()
            .saturating_sub(b"Content-Length: 0\r\n\r\n".len());
        payload.splice(at_end..at_end, allow.iter().copied());
        self.counters.answered_options += 1;
        self.send_on(at.flow, payload);
    }

    /// 481: the dialog or transaction a request names is not known here.
    pub(super) fn answer_no_dialog(&mut self, config: &Config, at: Arrival, msg: &Message<'_>) {
        self.answer(
            config,
            at,
            msg,
            481,
            "Call/Transaction Does Not Exist",
            "no such dialog or transaction at this gateway",
        );
    }

    /// Handles a repeated request (see `Repeat`); true when it is dealt with.
    pub(super) fn repeated(&mut self, repeat: Option<Repeat>, at: Arrival) -> bool {
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
}

/// What a request on `from` and sent on `to` needs from the gateway's own
/// retransmissions: a stream sender's request passed on over UDP.
pub(super) fn bridged(
    from: Transport,
    to: Transport,
    method: MethodKind,
) -> Option<RetransmitKind> {
    let bridged = from != Transport::Udp && to == Transport::Udp;
    match method {
        _ if !bridged => None,
        MethodKind::Ack => None,
        MethodKind::Invite => Some(RetransmitKind::Invite),
        _ => Some(RetransmitKind::NonInvite),
    }
}

/// The key of a 2xx the gateway retransmits toward a UDP party until its ACK: the
/// Call-ID that party knows and the CSeq number of the INVITE (its ACK has the same).
pub(super) fn accepted_key(call_id: &[u8], cseq_number: u32) -> (String, Vec<u8>) {
    (
        String::from_utf8_lossy(call_id).into_owned(),
        cseq_number.to_string().into_bytes(),
    )
}

/// The number of a CSeq value (`"1 INVITE"` -> 1).
pub(super) fn cseq_number(value: &[u8]) -> u32 {
    value
        .split(|b| *b == b' ')
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
