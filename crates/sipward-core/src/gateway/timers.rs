//! Virtual time: the sweep of every table and timer of the brief, and the shutdown.

use super::*;

impl Gateway {
    /// Runs every timer due at `now`: 408 for transactions without a final response
    /// after the request-response timeout, BYE both ways for dialogs older than the
    /// signal timeout, removal of expired bindings.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        let config = self.config.clone();
        let alg = &config.alg;

        self.tables.completed_client.expire(now, LINGER);
        self.tables.completed_server.expire(now, LINGER);
        let expired: Vec<_> = self
            .tables
            .client
            .iter()
            .filter(|(_, t)| expired_tx(t.created, t.final_at, now, answer_timeout(alg, t.method)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.time_out_client(&config, &key, "no response from outside");
        }
        let expired: Vec<_> = self
            .tables
            .server
            .iter()
            .filter(|(_, t)| expired_tx(t.created, t.final_at, now, answer_timeout(alg, t.method)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.time_out_server(&config, &key, "no response from inside");
        }

        for due in self.retransmits.due(now) {
            match due {
                RetransmitDue::Send { flow, payload } => {
                    self.counters.retransmitted += 1;
                    self.push_on(flow, payload);
                }
                RetransmitDue::GiveUp { kind, key } => match kind {
                    RetransmitKind::Accepted => {}
                    RetransmitKind::Invite | RetransmitKind::NonInvite => {
                        if self.tables.client.contains_key(&key) {
                            self.time_out_client(&config, &key, "no response over udp");
                        } else {
                            self.time_out_server(&config, &key, "no response over udp");
                        }
                    }
                },
            }
        }
        for due in self.cancels.due(now) {
            match due {
                Due::Send { flow, request } => {
                    self.send_on(flow, request);
                }
                Due::GiveUp { toward, invite } => {
                    self.terminate_invite(&config, toward, &invite, now)
                }
            }
        }
        let (client, server) = (&self.tables.client, &self.tables.server);
        self.cancels.retain(|toward, invite| match toward {
            Toward::Outside => client.get(invite).is_some_and(|t| t.final_at.is_none()),
            Toward::Inside => server.get(invite).is_some_and(|t| t.final_at.is_none()),
        });

        self.expire_idle_media(&config, now);
        self.ping_peers(&config, now);
        if self.tables.tracking {
            for call in self.media.newly_latched() {
                self.tables
                    .note(Changed::Dialog(DialogKey::from_media_id(&call)));
            }
        }
        self.guard.sweep(now);

        let old: Vec<DialogKey> = self
            .tables
            .dialogs
            .values()
            .filter(|d| {
                d.confirmed && now.saturating_duration_since(d.created) >= alg.signal_timeout
            })
            .map(Dialog::key)
            .collect();
        for id in old {
            if let Some(d) = self.tables.dialogs.get(&id).cloned() {
                self.counters.dialogs_expired += 1;
                // A call is ended on both sides; a subscription is only forgotten.
                if d.session {
                    self.bye_both_ways(&config, &d, 408, "signal timeout");
                }
                self.end_dialog(&id, "signal timeout");
            }
        }
        self.counters.bindings_expired += self.tables.expire_bindings(now) as u64;
        self.tables.recount_holders();

        let idle = self.tables.client.is_empty()
            && self.tables.server.is_empty()
            && self.tables.dialogs.is_empty()
            && self.tables.bindings().is_empty()
            && self.guard.bans(now).is_empty()
            && self.pings.is_empty();
        self.next_sweep = (!idle).then(|| crate::protect::later(now, SWEEP));
    }

    /// The gateway is stopping: every call gets a BYE on both sides (`Reason: SIP;
    /// cause=503;text="gateway shutdown"`) and a `call_ended` event with reason
    /// "shutdown"; subscriptions are only forgotten. Drain `poll_transmit`,
    /// `poll_media` and `poll_event` afterwards. Returns the number of calls ended.
    pub fn shutdown(&mut self, now: Instant) -> usize {
        self.now = Some(now);
        let config = self.config.clone();
        // Calls still ringing: each INVITE's sender gets 503, and the side ringing a
        // CANCEL where one may go (after a provisional response), rather than ringing
        // on until its own timers give up.
        let ringing_out: Vec<_> = self
            .tables
            .client
            .values()
            .filter(|t| t.method == MethodKind::Invite && t.final_at.is_none())
            .map(|t| (t.echo.clone(), t.inside_call_id.clone(), t.phone))
            .collect();
        let ringing_in: Vec<_> = self
            .tables
            .server
            .values()
            .filter(|t| t.method == MethodKind::Invite && t.final_at.is_none())
            .map(|t| (t.echo.clone(), t.echo.call_id.clone(), t.outside))
            .collect();
        for (echo, call_id, flow) in ringing_out.into_iter().chain(ringing_in) {
            let tag = self.hider.token(&[&call_id, b"shutdown"]);
            let payload = echo.response(
                503,
                "Service Unavailable",
                &config.agent,
                Some("gateway shutdown"),
                &tag,
            );
            self.send_on(flow, payload);
        }
        for due in self.cancels.cancel_all(now) {
            if let Due::Send { flow, request } = due {
                self.send_on(flow, request);
            }
        }
        let dialogs: Vec<Dialog> = self.tables.dialogs.values().cloned().collect();
        let mut calls = 0;
        for d in dialogs {
            if d.session {
                calls += 1;
                // An early call has no far-end dialog to end: its INVITE transaction
                // is abandoned and the event still records it.
                if d.confirmed {
                    self.bye_both_ways(&config, &d, 503, "gateway shutdown");
                }
            }
            self.end_dialog(&d.key(), "shutdown");
        }
        calls
    }

    /// A client transaction that got no final response in time: the phone gets 408.
    pub(super) fn time_out_client(&mut self, config: &Config, key: &(String, Vec<u8>), why: &str) {
        let Some(tx) = self.tables.remove_client(key) else {
            return;
        };
        self.retransmits.stop(key);
        if tx.final_at.is_none() {
            self.counters.timeouts += 1;
            let tag = self.hider.token(&[&tx.inside_call_id, b"408"]);
            let payload = tx
                .echo
                .response(408, "Request Timeout", &config.agent, Some(why), &tag);
            self.send_on(tx.phone, payload);
            if creates_dialog(tx.method) {
                self.end_unconfirmed(&tx.dialog, "timed out");
            }
        }
    }

    /// A server transaction the phone did not answer in time: the outside gets 408.
    pub(super) fn time_out_server(&mut self, config: &Config, key: &(String, Vec<u8>), why: &str) {
        let Some(tx) = self.tables.remove_server(key) else {
            return;
        };
        self.retransmits.stop(key);
        if tx.final_at.is_none() {
            self.counters.timeouts += 1;
            let tag = self.hider.token(&[&tx.echo.call_id, b"408"]);
            let payload = tx
                .echo
                .response(408, "Request Timeout", &config.agent, Some(why), &tag);
            self.send_on(tx.outside, payload);
            if creates_dialog(tx.method) {
                self.end_unconfirmed(&tx.dialog, "timed out");
            }
        }
    }
}
