//! The seam between signalling and media.
//!
//! Whenever an SDP body crosses the gateway, the core hands it to a [`MediaSeam`], which
//! records the edits that make the SDP point where media must go. The media relay (issue
//! "Media pinholes") implements it by allocating relay ports; until then
//! [`RewriteToZoneAddress`] only replaces inside addresses with the gateway's address in
//! the zone the SDP is going to, so that no inside address leaves.

use std::net::IpAddr;

use sipward_proto::{Edits, Message};

/// Which way an SDP body is travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From an inside phone towards the outside.
    Outbound,
    /// From the outside towards an inside phone.
    Inbound,
}

/// Rewrites an SDP body as it crosses the gateway.
pub trait MediaSeam {
    /// Records edits to `msg`'s SDP body. `call_key` names the call (the outside
    /// Call-ID); `zone_ip` is the gateway's address in the zone the message goes to;
    /// `is_inside` says whether an address must be hidden.
    fn rewrite_sdp(
        &mut self,
        msg: &Message<'_>,
        edits: &mut Edits,
        call_key: &[u8],
        direction: Direction,
        zone_ip: IpAddr,
        is_inside: &dyn Fn(IpAddr) -> bool,
    );

    /// The call ended: release whatever was allocated for it.
    fn release(&mut self, call_key: &[u8]);
}

/// Replaces inside addresses in `o=`, `c=` and `a=rtcp` with the gateway's zone address.
#[derive(Debug, Default)]
pub struct RewriteToZoneAddress;

impl MediaSeam for RewriteToZoneAddress {
    fn rewrite_sdp(
        &mut self,
        msg: &Message<'_>,
        edits: &mut Edits,
        _call_key: &[u8],
        direction: Direction,
        zone_ip: IpAddr,
        is_inside: &dyn Fn(IpAddr) -> bool,
    ) {
        if direction == Direction::Inbound {
            return;
        }
        let Some(sdp) = msg.sdp() else { return };
        let replacement = zone_ip.to_string();
        for addr in sdp.addresses() {
            let inside = std::str::from_utf8(addr)
                .ok()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(is_inside);
            if inside {
                // An address the parser returned is a slice of this message outside any
                // quoted string, so the edit cannot be refused.
                let _ = edits.replace(msg, addr, replacement.as_bytes());
            }
        }
    }

    fn release(&mut self, _call_key: &[u8]) {}
}
