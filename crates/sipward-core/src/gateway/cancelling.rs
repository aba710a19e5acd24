//! The gateway's side of `cancel`: a CANCEL answered here, the gateway's own sent on,
//! its answer absorbed, and the INVITE ended when the far side never finishes it.

use std::time::Instant;

use sipward_proto::Message;

use super::{Arrival, Gateway};
use crate::cancel::{Due, Toward};
use crate::config::Config;
use crate::state::Echo;

impl Gateway {
    /// A CANCEL for the INVITE with `branch` (`open`: its transaction, and whether it
    /// still waits for a final response). Answered here, 200 or 481 (RFC 3261 16.10);
    /// the gateway's own CANCEL goes on once it may (see `cancel`).
    pub(super) fn cancel_received(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        open: Option<bool>,
        branch: &str,
        toward: Toward,
    ) {
        let Some(open) = open else {
            self.counters.unknown_target += 1;
            self.answer_no_dialog(config, at, msg);
            return;
        };
        let tag = self.hider.token(&[msg.call_id(), b"cancel"]);
        let ok = Echo::of(msg).response(200, "OK", &config.agent, None, &tag);
        self.send_on(at.flow, ok);
        if !open {
            return;
        }
        if let Some(Due::Send { flow, request }) = self.cancels.request(branch, toward, at.now) {
            self.counters.forwarded += 1;
            self.send_on(flow, request);
        }
    }

    /// The answer to the gateway's own CANCEL is absorbed. A 487 in its place (a far
    /// end that put the CANCEL's CSeq on the INVITE's final response) ends the INVITE.
    pub(super) fn cancel_answered(
        &mut self,
        config: &Config,
        at: Arrival,
        branch: &str,
        status: u16,
        toward: Toward,
    ) {
        self.counters.absorbed_retransmissions += 1;
        if status == 487 {
            let invite = (branch.to_string(), b"INVITE".to_vec());
            self.cancels.finished(branch, toward);
            self.terminate_invite(config, toward, &invite, at.now);
        }
    }

    /// A response to a relayed INVITE: a provisional one lets a held CANCEL go, a final
    /// one ends the need for it.
    pub(super) fn invite_answered(
        &mut self,
        branch: &str,
        status: u16,
        toward: Toward,
        now: Instant,
    ) {
        if status >= 200 {
            self.cancels.finished(branch, toward);
        } else if let Some(Due::Send { flow, request }) =
            self.cancels.provisional(branch, toward, now)
        {
            self.send_on(flow, request);
        }
    }

    /// Ends a cancelled INVITE that got no final response: the canceller gets 487 built
    /// from the INVITE transaction (its CSeq, Vias, identity).
    pub(super) fn terminate_invite(
        &mut self,
        config: &Config,
        toward: Toward,
        invite: &(String, Vec<u8>),
        now: Instant,
    ) {
        let (reply, dialog) = match toward {
            Toward::Outside => {
                let Some(tx) = self.tables.client.get_mut(invite) else {
                    return;
                };
                if tx.final_at.is_some() {
                    return;
                }
                let tag = self.hider.token(&[&tx.inside_call_id, b"487"]);
                let payload = tx.echo.response(
                    487,
                    "Request Terminated",
                    &config.agent,
                    Some("cancelled"),
                    &tag,
                );
                tx.last_response = Some(payload.clone());
                let reply = ((tx.phone, payload), tx.dialog.clone());
                // Through the table, so that the phone's share of it is given back.
                self.tables.settle_client(invite, now);
                reply
            }
            Toward::Inside => {
                let Some(tx) = self.tables.server.get_mut(invite) else {
                    return;
                };
                if tx.final_at.is_some() {
                    return;
                }
                let tag = self.hider.token(&[&tx.echo.call_id, b"487"]);
                let payload = tx.echo.response(
                    487,
                    "Request Terminated",
                    &config.agent,
                    Some("cancelled"),
                    &tag,
                );
                tx.last_response = Some(payload.clone());
                let reply = ((tx.outside, payload), tx.dialog.clone());
                self.tables.settle_server(invite, now);
                reply
            }
        };
        self.send_on(reply.0, reply.1);
        self.end_unconfirmed(&dialog, "cancelled");
    }
}
