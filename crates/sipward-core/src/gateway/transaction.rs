//! Transaction rules the paths share: retransmissions answered from what was sent,
//! the gateway's own answers, which methods make dialogs, and the timeouts.

use super::*;

/// What the gateway does with a request that repeats one it is already relaying (the
/// sender's retransmission timer fired): a stateful relay absorbs it (RFC 3261 16.6,
/// RFC 6026) instead of passing every copy on, where the next hop could take it for
/// a new request once it has answered.
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
