//! CANCEL hop by hop (RFC 3261 sections 9 and 16.10).
//!
//! The gateway is a stateful element: a CANCEL that matches an INVITE it is relaying is
//! answered 200 here, and the gateway cancels its own client transaction with a CANCEL
//! of its own, built when it forwarded the INVITE (the same Request-URI, Via branch,
//! From, To, Call-ID and Route, the INVITE's CSeq number with method CANCEL). The far
//! end's answer to that CANCEL is absorbed; the INVITE's final response (487) reaches
//! the canceller translated from the INVITE transaction as any other. The sender of the
//! first CANCEL stops retransmitting once it has its 200, so over UDP the gateway
//! retransmits its own (Timer E: T1 doubling up to T2) until an answer, and gives up at
//! 64*T1; if the INVITE has no final response by then, the canceller is answered 487 by
//! the gateway. A CANCEL that arrives before any provisional response is answered 200 at
//! once but sent on only when a provisional response comes (RFC 3261 9.1: the far end
//! may not have the INVITE yet); should a final response come first, it is not sent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sipward_proto::{parse_datagram, Datagram, HeaderName, Limits};

use crate::flow::Flow;
use crate::protect::later;

pub(crate) const T1: Duration = Duration::from_millis(500);
pub(crate) const T2: Duration = Duration::from_secs(4);
/// Timer F / B: how long a CANCEL (and the INVITE after it) may go unanswered.
pub(crate) const GIVE_UP: Duration = Duration::from_secs(32);

/// Which way the cancelled INVITE went: out to the far end (a client transaction) or
/// in to a phone (a server transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Toward {
    Outside,
    Inside,
}

/// The gateway's CANCEL for one INVITE it relays.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The CANCEL to send.
    pub(crate) request: Vec<u8>,
    /// Where it goes: the flow the INVITE was sent on.
    pub(crate) flow: Flow,
    /// The INVITE's transaction key (its branch, "INVITE").
    pub(crate) invite: (String, Vec<u8>),
    /// The canceller's CANCEL came (and was answered 200).
    pub(crate) requested: bool,
    /// A provisional response to the INVITE came: a CANCEL may go.
    pub(crate) provisional: bool,
    /// When it was first sent; the next retransmission and its interval.
    pub(crate) sent_at: Option<Instant>,
    pub(crate) next_at: Option<Instant>,
    pub(crate) interval: Duration,
    /// Its answer came: no more retransmissions.
    pub(crate) answered: bool,
}

/// What a timer tick asks of the gateway.
pub(crate) enum Due {
    Send {
        flow: Flow,
        request: Vec<u8>,
    },
    /// No final response to the INVITE within 64*T1 of the CANCEL: answer the
    /// canceller's INVITE 487 on the gateway's behalf.
    GiveUp {
        toward: Toward,
        invite: (String, Vec<u8>),
    },
}

/// The gateway's CANCELs, by the INVITE's branch and direction. One entry per INVITE in
/// progress (bounded by the transaction tables it shadows, swept with them).
#[derive(Default)]
pub(crate) struct Cancels {
    pending: HashMap<(String, Toward), Pending>,
}

impl Cancels {
    /// Remembers the CANCEL for an INVITE being forwarded.
    pub(crate) fn prepare(
        &mut self,
        toward: Toward,
        invite: (String, Vec<u8>),
        forwarded: &[u8],
        flow: Flow,
        limits: &Limits,
    ) {
        let Some(request) = build_cancel(forwarded, limits) else {
            return;
        };
        let key = (invite.0.clone(), toward);
        // A retransmitted INVITE keeps the state of the first.
        self.pending.entry(key).or_insert(Pending {
            request,
            flow,
            invite,
            requested: false,
            provisional: false,
            sent_at: None,
            next_at: None,
            interval: T1,
            answered: false,
        });
    }

    /// The canceller's CANCEL: the gateway's own goes now if it may (returned), else
    /// when a provisional response comes. None also when it was already sent.
    pub(crate) fn request(&mut self, branch: &str, toward: Toward, now: Instant) -> Option<Due> {
        let p = self.pending.get_mut(&(branch.to_string(), toward))?;
        p.requested = true;
        send_if_ready(p, now)
    }

    /// A provisional response to the INVITE: a CANCEL held for one goes now.
    pub(crate) fn provisional(
        &mut self,
        branch: &str,
        toward: Toward,
        now: Instant,
    ) -> Option<Due> {
        let p = self.pending.get_mut(&(branch.to_string(), toward))?;
        p.provisional = true;
        send_if_ready(p, now)
    }

    /// The answer to the gateway's CANCEL: true when it was one (to absorb).
    pub(crate) fn answered(&mut self, branch: &str, toward: Toward) -> bool {
        match self.pending.get_mut(&(branch.to_string(), toward)) {
            Some(p) if p.sent_at.is_some() => {
                p.answered = true;
                p.next_at = None;
                true
            }
            _ => false,
        }
    }

    /// The gateway is stopping: every CANCEL that may go (a provisional response came)
    /// goes now, asked for or not, as nobody will be left to relay the INVITE's outcome.
    pub(crate) fn cancel_all(&mut self, now: Instant) -> Vec<Due> {
        self.pending
            .values_mut()
            .filter_map(|p| {
                p.requested = true;
                send_if_ready(p, now)
            })
            .collect()
    }

    /// The INVITE's final response: nothing more to cancel.
    pub(crate) fn finished(&mut self, branch: &str, toward: Toward) {
        self.pending.remove(&(branch.to_string(), toward));
    }

    /// Forgets CANCELs whose INVITE transaction is gone.
    pub(crate) fn retain(&mut self, mut exists: impl FnMut(Toward, &(String, Vec<u8>)) -> bool) {
        self.pending
            .retain(|(_, toward), p| exists(*toward, &p.invite));
    }

    /// The next retransmission or give-up.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|p| match (p.next_at, p.sent_at) {
                (Some(next), Some(sent)) => Some(next.min(later(sent, GIVE_UP))),
                (None, Some(sent)) => Some(later(sent, GIVE_UP)),
                _ => None,
            })
            .min()
    }

    /// Retransmissions and give-ups due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (key, p) in &mut self.pending {
            let Some(sent) = p.sent_at else { continue };
            if now.saturating_duration_since(sent) >= GIVE_UP {
                out.push(Due::GiveUp {
                    toward: key.1,
                    invite: p.invite.clone(),
                });
                gone.push(key.clone());
                continue;
            }
            if p.answered {
                continue;
            }
            if let Some(next) = p.next_at.filter(|n| *n <= now) {
                out.push(Due::Send {
                    flow: p.flow,
                    request: p.request.clone(),
                });
                p.interval = (p.interval * 2).min(T2);
                p.next_at = Some(later(next.max(now), p.interval));
            }
        }
        for key in gone {
            self.pending.remove(&key);
        }
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending.len()
    }
}

fn send_if_ready(p: &mut Pending, now: Instant) -> Option<Due> {
    if !(p.requested && p.provisional) || p.sent_at.is_some() {
        return None;
    }
    p.sent_at = Some(now);
    p.interval = T1;
    p.next_at = Some(later(now, T1));
    Some(Due::Send {
        flow: p.flow,
        request: p.request.clone(),
    })
}

/// The CANCEL for an INVITE as the gateway sent it (RFC 3261 9.1): its Request-URI, top
/// Via, Route, From, To and Call-ID, its CSeq number with method CANCEL.
pub(crate) fn build_cancel(invite: &[u8], limits: &Limits) -> Option<Vec<u8>> {
    let Ok(Datagram::Message(msg)) = parse_datagram(invite, limits) else {
        return None;
    };
    let uri = msg.request_uri()?.raw();
    let top = msg.top_via()?.raw;
    let cseq = msg.cseq()?.seq;
    let value = |name| msg.header(name).map(|f| f.value);
    let (from, to, call_id) = (
        value(HeaderName::From)?,
        value(HeaderName::To)?,
        value(HeaderName::CallId)?,
    );
    let mut out = Vec::with_capacity(320);
    out.extend_from_slice(b"CANCEL ");
    out.extend_from_slice(uri);
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(top);
    out.extend_from_slice(b"\r\nMax-Forwards: 70\r\n");
    for f in msg.headers().iter().filter(|f| f.name == HeaderName::Route) {
        out.extend_from_slice(f.line);
    }
    for (name, v) in [("From", from), ("To", to), ("Call-ID", call_id)] {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("CSeq: {cseq} CANCEL\r\nContent-Length: 0\r\n\r\n").as_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::disallowed_methods)]
    use super::*;

    const INVITE: &str = "INVITE sip:bob@198.51.100.7:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKsw1;rport\r\nMax-Forwards: 69\r\nRoute: <sip:p1.example.net;lr>\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:b@example.net>\r\nCall-ID: sw1\r\nCSeq: 7 INVITE\r\nContact: <sip:a@203.0.113.1>\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn the_cancel_copies_what_rfc_3261_9_1_says() {
        let c = String::from_utf8(build_cancel(INVITE.as_bytes(), &Limits::default()).unwrap())
            .unwrap();
        assert_eq!(
            c,
            "CANCEL sip:bob@198.51.100.7:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.1:5060;branch=z9hG4bKsw1;rport\r\nMax-Forwards: 70\r\nRoute: <sip:p1.example.net;lr>\r\nFrom: <sip:a@example.net>;tag=1\r\nTo: <sip:b@example.net>\r\nCall-ID: sw1\r\nCSeq: 7 CANCEL\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn retransmits_t1_doubling_to_t2_then_gives_up_at_64_t1() {
        let t0 = Instant::now();
        let a: std::net::SocketAddr = "203.0.113.1:5060".parse().unwrap();
        let b: std::net::SocketAddr = "203.0.113.10:5060".parse().unwrap();
        let mut c = Cancels::default();
        let key = ("z9hG4bKsw1".to_string(), b"INVITE".to_vec());
        c.prepare(
            Toward::Outside,
            key,
            INVITE.as_bytes(),
            Flow::udp(a, b),
            &Limits::default(),
        );
        assert!(
            c.request("z9hG4bKsw1", Toward::Outside, t0).is_none(),
            "held"
        );
        assert!(c.provisional("z9hG4bKsw1", Toward::Outside, t0).is_some());
        let mut sends = Vec::new();
        let mut now = t0;
        while let Some(next) = c.next_due() {
            now = next;
            for d in c.due(now) {
                match d {
                    Due::Send { .. } => sends.push(now.duration_since(t0).as_millis()),
                    Due::GiveUp { .. } => sends.push(u128::MAX),
                }
            }
        }
        assert_eq!(&sends[..7], &[500, 1500, 3500, 7500, 11500, 15500, 19500]);
        assert_eq!(sends.last(), Some(&u128::MAX));
        assert_eq!(c.len(), 0);
        assert!(now.duration_since(t0) == GIVE_UP);
    }
}
