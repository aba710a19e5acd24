//! The gateway's side of `hiding`: what the inside-to-outside paths do not rewrite
//! themselves, the Call-IDs that other headers name, and the last-line scan of every
//! datagram leaving by an outside interface.

use std::net::{IpAddr, SocketAddr};

use sipward_proto::{Edits, Message};

use super::Gateway;
use crate::config::Config;
use crate::hiding::{self, Inside, Names, Outside};
use crate::state::DialogKey;

impl Gateway {
    /// The last line of defence: an outside datagram with inside address text left in it
    /// is treated per `leak_policy`; `None` when it must not leave.
    pub(super) fn outgoing(&mut self, local: SocketAddr, payload: Vec<u8>) -> Option<Vec<u8>> {
        let config = self.config.clone();
        let outside_zone = config
            .zone_of_local(local)
            .and_then(|z| config.zone(z))
            .is_some_and(|z| !z.inside);
        if !outside_zone {
            return Some(payload);
        }
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let inside = Inside {
            is_inside: &is_inside,
            scanner: &self.scanner,
        };
        let host_port = local.to_string();
        let ip = local.ip().to_string();
        let outside = Outside {
            host_port: &host_port,
            ip: &ip,
        };
        match hiding::clean_outgoing(
            payload,
            &inside,
            &outside,
            config.alg.leak_policy,
            &config.alg.limits,
        ) {
            Ok(clean) => Some(clean),
            Err(fixed) => {
                self.counters.inside_address_leaks += 1;
                tracing::warn!(
                    policy = ?config.alg.leak_policy,
                    sent = fixed.is_some(),
                    "inside address text in an outgoing datagram"
                );
                fixed
            }
        }
    }

    /// Inside to outside: the headers and body parts the path does not rewrite itself
    /// lose their inside addresses (see `hiding`); Call-IDs named in Replaces and the
    /// like become the hidden ones.
    pub(super) fn hide_unknown_out(
        &self,
        config: &Config,
        msg: &Message<'_>,
        edits: &mut Edits,
        wan_local: SocketAddr,
    ) -> Result<(), sipward_proto::EditError> {
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let inside = Inside {
            is_inside: &is_inside,
            scanner: &self.scanner,
        };
        let host_port = wan_local.to_string();
        let ip = wan_local.ip().to_string();
        let outside = Outside {
            host_port: &host_port,
            ip: &ip,
        };
        let call_id = |id: &[u8]| {
            self.tables
                .call_ids
                .get(id)
                .map(|k| k.outside_call_id.clone())
                .filter(|outside| outside.as_slice() != id)
        };
        let token = |ip: IpAddr, port: u16| self.token_of_phone(ip, port);
        let names = Names {
            call_id: &call_id,
            token: &token,
        };
        let done = hiding::translate_call_ids(msg, edits, &names)?;
        hiding::hide_unknown(msg, edits, &inside, &outside, &names, &done)
    }

    /// The routing token that reaches the inside phone at `ip:port` from outside (its
    /// registration; any binding of that address when no port matches).
    pub(super) fn token_of_phone(&self, ip: IpAddr, port: u16) -> Option<String> {
        let bindings = self.tables.bindings();
        let exact = bindings
            .iter()
            .find(|(_, b)| b.phone.remote == SocketAddr::new(ip, port));
        exact
            .or_else(|| bindings.iter().find(|(_, b)| b.phone.remote.ip() == ip))
            .map(|(t, _)| t.clone())
    }

    /// Outside to inside: Call-IDs named in Replaces, Join, Target-Dialog, In-Reply-To
    /// and a Refer-To's Replaces become the ones `phone` knows.
    pub(super) fn translate_call_ids_in(
        &self,
        msg: &Message<'_>,
        edits: &mut Edits,
        phone: SocketAddr,
    ) -> Result<(), sipward_proto::EditError> {
        let call_id = |id: &[u8]| {
            let mut held = [true, false].into_iter().filter_map(|originated_inside| {
                self.tables.dialogs.get(&DialogKey {
                    outside_call_id: id.to_vec(),
                    originated_inside,
                })
            });
            let first = held.next()?;
            let second = held.next();
            let d = match second {
                Some(other) if other.phone.remote == phone && first.phone.remote != phone => other,
                _ => first,
            };
            (d.inside_call_id.as_slice() != id).then(|| d.inside_call_id.clone())
        };
        let token = |_: IpAddr, _: u16| None;
        let names = Names {
            call_id: &call_id,
            token: &token,
        };
        hiding::translate_call_ids(msg, edits, &names).map(|_| ())
    }
}
