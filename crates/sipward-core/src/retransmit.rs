//! Reliability bridging between a stream leg and a UDP leg (RFC 3261 17.1, 13.3.1.4).
//!
//! A sender on TCP or TLS never retransmits: the transport is reliable. When the gateway
//! passes its message on over UDP, nobody would retransmit a lost datagram, so the
//! gateway does it itself: a request by Timer A (INVITE, doubling) or Timer E
//! (non-INVITE, doubling up to T2), until a response comes or 64*T1 passes (then the
//! sender gets 408); a 2xx to an INVITE toward a UDP phone, doubling up to T2, until the
//! phone's ACK comes or 64*T1 passes. The opposite direction needs no state: copies a UDP
//! sender retransmits are never passed onto a stream (see `Repeat` in the gateway).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::flow::Flow;
use crate::protect::later;

/// RFC 3261's T1 and T2.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Timers B, F and the 2xx's: 64*T1.
const GIVE_UP: Duration = Duration::from_secs(32);

/// What is retransmitted, and so what ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// An INVITE (Timer A): any response ends it.
    Invite,
    /// Another request (Timer E): a provisional response slows it to T2, a final
    /// response ends it.
    NonInvite,
    /// A 2xx to an INVITE, toward the phone: the ACK ends it.
    Accepted,
}

struct Pending {
    kind: Kind,
    flow: Flow,
    payload: Vec<u8>,
    interval: Duration,
    next_at: Instant,
    give_up_at: Instant,
}

/// What a timer tick asks of the gateway.
pub(crate) enum Due {
    Send {
        flow: Flow,
        payload: Vec<u8>,
    },
    /// 64*T1 without a response (a request: the sender gets 408) or without an ACK.
    GiveUp {
        kind: Kind,
        key: (String, Vec<u8>),
    },
}

/// The gateway's own retransmissions, by the key of what they belong to: a client
/// transaction's (our branch, method), or for a 2xx the inside Call-ID and CSeq number.
/// Bounded by the tables they shadow: an entry is made only for a message the gateway
/// relays, and ends within 64*T1.
#[derive(Default)]
pub(crate) struct Retransmits {
    pending: HashMap<(String, Vec<u8>), Pending>,
}

impl Retransmits {
    /// Starts retransmitting `payload`, just sent on the UDP `flow`.
    pub(crate) fn start(
        &mut self,
        key: (String, Vec<u8>),
        kind: Kind,
        flow: Flow,
        payload: Vec<u8>,
        now: Instant,
    ) {
        // A repeated start (the sender's stream delivered the request again) keeps the
        // timers that run.
        self.pending.entry(key).or_insert(Pending {
            kind,
            flow,
            payload,
            interval: T1,
            next_at: later(now, T1),
            give_up_at: later(now, GIVE_UP),
        });
    }

    /// A response to the request under `key` came.
    pub(crate) fn response(&mut self, key: &(String, Vec<u8>), status: u16) {
        let Some(p) = self.pending.get_mut(key) else {
            return;
        };
        match p.kind {
            Kind::NonInvite if status < 200 => p.interval = T2,
            Kind::Invite | Kind::NonInvite => {
                self.pending.remove(key);
            }
            Kind::Accepted => {}
        }
    }

    /// The ACK (or anything else that ends it) came: stop.
    pub(crate) fn stop(&mut self, key: &(String, Vec<u8>)) {
        self.pending.remove(key);
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.next_at.min(p.give_up_at))
            .min()
    }

    /// Everything due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Due> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (key, p) in &mut self.pending {
            if p.give_up_at <= now {
                gone.push(key.clone());
                out.push(Due::GiveUp {
                    kind: p.kind,
                    key: key.clone(),
                });
                continue;
            }
            if p.next_at <= now {
                out.push(Due::Send {
                    flow: p.flow,
                    payload: p.payload.clone(),
                });
                p.interval = match p.kind {
                    // Timer A doubles without a cap (RFC 3261 17.1.1.2).
                    Kind::Invite => p.interval.saturating_mul(2),
                    Kind::NonInvite | Kind::Accepted => p.interval.saturating_mul(2).min(T2),
                };
                p.next_at = later(now, p.interval);
            }
        }
        for key in gone {
            self.pending.remove(&key);
        }
        out
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::disallowed_methods)]

    use super::*;

    fn flow() -> Flow {
        Flow::udp(
            "203.0.113.1:5060".parse().unwrap(),
            "203.0.113.10:5060".parse().unwrap(),
        )
    }

    /// The send times of one entry until it ends, on virtual time.
    fn sends(r: &mut Retransmits, t0: Instant) -> (Vec<u128>, bool) {
        let mut at = Vec::new();
        let mut gave_up = false;
        while let Some(next) = r.next_due() {
            for due in r.due(next) {
                match due {
                    Due::Send { .. } => at.push((next - t0).as_millis()),
                    Due::GiveUp { .. } => gave_up = true,
                }
            }
        }
        (at, gave_up)
    }

    #[test]
    fn timer_a_doubles_until_64_t1_then_gives_up() {
        let t0 = Instant::now();
        let mut r = Retransmits::default();
        r.start(
            ("b".into(), b"INVITE".to_vec()),
            Kind::Invite,
            flow(),
            vec![1],
            t0,
        );
        let (at, gave_up) = sends(&mut r, t0);
        assert_eq!(at, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert!(gave_up);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn timer_e_caps_at_t2_and_a_provisional_slows_it() {
        let t0 = Instant::now();
        let mut r = Retransmits::default();
        let key = ("b".to_string(), b"OPTIONS".to_vec());
        r.start(key.clone(), Kind::NonInvite, flow(), vec![1], t0);
        let (at, _) = sends(&mut r, t0);
        assert_eq!(
            &at[..6],
            &[500, 1500, 3500, 7500, 11500, 15500],
            "capped at T2"
        );
        r.start(key.clone(), Kind::NonInvite, flow(), vec![1], t0);
        r.response(&key, 100);
        let first = r.next_due().unwrap();
        assert_eq!((first - t0).as_millis(), 500, "the armed timer stays");
        r.due(first);
        assert_eq!((r.next_due().unwrap() - first).as_secs(), 4, "then T2");
        r.response(&key, 200);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn any_response_ends_an_invite_and_only_the_ack_ends_a_2xx() {
        let t0 = Instant::now();
        let mut r = Retransmits::default();
        let invite = ("b".to_string(), b"INVITE".to_vec());
        r.start(invite.clone(), Kind::Invite, flow(), vec![1], t0);
        r.response(&invite, 100);
        assert_eq!(r.len(), 0);
        let ok = ("call".to_string(), b"1".to_vec());
        r.start(ok.clone(), Kind::Accepted, flow(), vec![2], t0);
        r.response(&ok, 200);
        assert_eq!(r.len(), 1);
        r.stop(&ok);
        assert_eq!(r.len(), 0);
    }
}
