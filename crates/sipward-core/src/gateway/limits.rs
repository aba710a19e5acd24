//! Protection and table limits on a parsed message: rates, filters, admission, the fair
//! shares of the state tables and the eviction that keeps room for phones.

use super::*;

/// The reason a claim for a table entry is refused, if it is.
pub(super) fn refusal(room: Room) -> Option<Refusal> {
    match room {
        Room::Granted => None,
        Room::Evict(_) => Some(Refusal::FullForNew),
        Room::Refused(why) => Some(why),
    }
}

impl Gateway {
    /// Protection on a parsed message: per-source rate, filters, admission, registration
    /// failures. False: it goes no further (dropped or answered here).
    pub(super) fn screen(&mut self, config: &Config, at: Arrival, msg: &Message<'_>) -> bool {
        let source = at.flow.remote.ip();
        let Some(method) = msg.method() else {
            if !self
                .guard
                .within_rate(source, Class::Response, "response", at.now)
            {
                self.counters.dropped_flood += 1;
                return false;
            }
            return true;
        };
        let kind = method.kind();
        // Borrowed, not copied: this runs for every request.
        let name = std::str::from_utf8(method.as_bytes()).unwrap_or("?");
        // A To-tag makes a request part of a dialog only if the gateway holds one by
        // its Call-ID: anyone can write a tag, and such a request must not pass as
        // in-dialog around the new-request limits and admission.
        let in_dialog = (msg.to().and_then(|t| t.tag()).is_some()
            && self.holds_dialog(config, at, msg.call_id()))
            || matches!(kind, MethodKind::Ack | MethodKind::Cancel);
        let class = if in_dialog {
            Class::DialogRequest
        } else {
            Class::NewRequest
        };
        if !self.guard.within_rate(source, class, name, at.now) {
            self.counters.dropped_flood += 1;
            return false;
        }
        let known = kind != MethodKind::Other;
        if !self
            .guard
            .filter_request(source, name, known, msg.user_agent(), at.now)
        {
            self.counters.dropped_filtered += 1;
            return false;
        }
        if kind == MethodKind::Register {
            let user = register_user(msg);
            if !self.guard.may_register(source, &user, at.now) {
                self.counters.dropped_filtered += 1;
                return false;
            }
        }
        // Every new request takes a transaction and work upstream, whatever its method
        // (OPTIONS, SUBSCRIBE, MESSAGE, PUBLISH...): all count, each direction on its own.
        if !in_dialog {
            let outside = !arrived_inside(config, at);
            if let Verdict::Overloaded { retry_after } =
                self.guard.admit_new(source, name, outside, at.now)
            {
                self.counters.overloaded += 1;
                if outside {
                    self.counters.overloaded_outside += 1;
                }
                let tag = self.hider.token(&[msg.call_id(), b"answer"]);
                let mut payload = Echo::of(msg).response(
                    503,
                    "Service Unavailable",
                    &config.agent,
                    Some("overloaded"),
                    &tag,
                );
                let end = b"Content-Length: 0\r\n\r\n";
                if payload.ends_with(end) {
                    let at_len = payload.len() - end.len();
                    let header = format!("Retry-After: {retry_after}\r\n");
                    payload.splice(at_len..at_len, header.into_bytes());
                }
                self.send_on(at.flow, payload);
                return false;
            }
        }
        true
    }

    /// The bounds on what a request would add: transactions, calls per user (answered
    /// `busy`: 403 going out, 486 coming in), dialogs, registrations, each table shared
    /// fairly among sources (`Holders::room`). When one is reached the request is
    /// answered here (503 with an `overload` event) and false returned.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn within_state_limits(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        method: MethodKind,
        initial: bool,
        aor: &[u8],
        busy: (u16, &str),
    ) -> bool {
        let alg = &config.alg;
        let p = &config.protection;
        let policy = SharePolicy {
            reserve: p.table_reserve,
            floor: p.table_share_floor,
            outside_share: p.outside_table_share,
        };
        let source = at.flow.remote.ip();
        let outside = !arrived_inside(config, at);
        // The reserved room is for dialogs the gateway holds: a To-tag alone (anyone can
        // write one) does not make a request part of one. A CANCEL ends a pending
        // INVITE, whose dialog is held from the start: room for it like for a BYE.
        let held = self.holds_dialog(config, at, msg.call_id());
        let claim = Claimant {
            source,
            outside,
            exempt: self.guard.is_exempt(source),
            in_dialog: (!initial || method == MethodKind::Cancel) && held,
        };
        let guard = &self.guard;
        let exempt = |ip: IpAddr| guard.is_exempt(ip);
        let mut evict = None;
        if method != MethodKind::Ack {
            let entries = self.tables.transactions();
            match self
                .tables
                .tx_holders
                .room(alg.max_transactions, entries, claim, policy, exempt)
            {
                Room::Granted => {}
                Room::Evict(victim) => evict = Some(victim),
                Room::Refused(why) => return self.refuse_full(config, at, msg, "transaction", why),
            }
        }
        if method == MethodKind::Invite
            && initial
            && self.tables.sessions_of(aor) >= alg.max_sessions_per_id
        {
            self.counters.session_limit += 1;
            self.answer(
                config,
                at,
                msg,
                busy.0,
                busy.1,
                "maximum sessions per user reached",
            );
            return false;
        }
        let new_dialog = Claimant {
            in_dialog: false,
            ..claim
        };
        if creates_dialog(method) && initial {
            let room =
                self.tables
                    .dialog_holders
                    .room_kept(alg.max_dialogs, new_dialog, policy, exempt);
            if let Some(why) = refusal(room) {
                return self.refuse_full(config, at, msg, "dialog", why);
            }
        }
        // Each call holds a pair of media ports on each side: the smallest pool bounds
        // the calls, and they are shared like a table of that size.
        let media_calls = self.media.pool_usage().iter().map(|p| p.2).min();
        if let (MethodKind::Invite, true, Some(cap)) = (method, initial, media_calls) {
            let room = self
                .tables
                .call_holders
                .room_kept(cap, new_dialog, policy, exempt);
            // An exhausted pool is the media table's to answer (and count).
            match refusal(room) {
                None | Some(Refusal::Full) => {}
                Some(why) => return self.refuse_full(config, at, msg, "media port", why),
            }
        }
        // A phone refreshing or removing a binding it holds adds nothing to the table:
        // a full table must not cost it its registration.
        if method == MethodKind::Register && !self.tables.holds_binding(aor, source) {
            let room = self.tables.binding_holders.room_kept(
                alg.max_registrations,
                new_dialog,
                policy,
                exempt,
            );
            if let Some(why) = refusal(room) {
                return self.refuse_full(config, at, msg, "registration", why);
            }
        }
        if let Some(victim) = evict {
            self.evict_transaction(config, victim);
        }
        true
    }

    /// Whether the gateway holds a dialog of this Call-ID, as the side the datagram
    /// arrived on names it.
    pub(super) fn holds_dialog(&self, config: &Config, at: Arrival, call_id: &[u8]) -> bool {
        if arrived_inside(config, at) {
            self.tables.call_ids.contains_key(call_id)
        } else {
            self.tables.outside_dialog(call_id, None).is_some()
        }
    }

    /// Answers 503 for want of room in `table`, counts it and raises an `overload` event.
    pub(super) fn refuse_full(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        table: &str,
        why: Refusal,
    ) -> bool {
        self.counters.state_full += 1;
        if why.is_share() {
            self.counters.refused_share += 1;
        }
        let method = msg
            .method()
            .and_then(|m| std::str::from_utf8(m.as_bytes()).ok());
        let warning = format!("gateway {table} {}", why.text());
        self.guard.table_refused(
            at.flow.remote.ip(),
            method,
            &format!("{warning}: 503"),
            at.now,
        );
        self.answer(config, at, msg, 503, "Service Unavailable", &warning);
        false
    }

    /// Ends one transaction to make room for a source under its fair share: a settled
    /// one (it only absorbs retransmissions), or one of `victim`'s still pending, a
    /// non-INVITE rather than an INVITE; a pending one is answered 503 towards its
    /// sender, as if the next hop had refused it. The first fit found goes (not the
    /// oldest), so the walk usually stops early: this runs for every claim on a full
    /// table.
    pub(super) fn evict_transaction(&mut self, config: &Config, victim: Victim) {
        let (settled, holder) = match victim {
            Victim::Settled => (true, None),
            Victim::Holder(ip) => (false, Some(ip)),
        };
        let fits = |ip: IpAddr, final_at: Option<Instant>| {
            final_at.is_some() == settled && holder.is_none_or(|h| h == ip)
        };
        // (key, client side); an INVITE is kept as the fallback while looking further.
        let mut fallback = None;
        let mut found = None;
        for (k, t) in &self.tables.client {
            if fits(t.phone.remote.ip(), t.final_at) {
                if settled || t.method != MethodKind::Invite {
                    found = Some((k.clone(), true));
                    break;
                }
                fallback.get_or_insert_with(|| (k.clone(), true));
            }
        }
        if found.is_none() {
            for (k, t) in &self.tables.server {
                if fits(t.outside.remote.ip(), t.final_at) {
                    if settled || t.method != MethodKind::Invite {
                        found = Some((k.clone(), false));
                        break;
                    }
                    fallback.get_or_insert_with(|| (k.clone(), false));
                }
            }
        }
        let Some((key, is_client)) = found.or(fallback) else {
            return;
        };
        self.counters.evicted_transactions += 1;
        let warning = Some("gateway transaction table full: source over its fair share");
        if is_client {
            let Some(tx) = self.tables.remove_client(&key) else {
                return;
            };
            if tx.final_at.is_none() {
                let tag = self.hider.token(&[&tx.inside_call_id, b"503"]);
                let payload =
                    tx.echo
                        .response(503, "Service Unavailable", &config.agent, warning, &tag);
                self.send_on(tx.phone, payload);
                if creates_dialog(tx.method) {
                    self.end_unconfirmed(&tx.dialog, "evicted");
                }
            }
        } else {
            let Some(tx) = self.tables.remove_server(&key) else {
                return;
            };
            if tx.final_at.is_none() {
                let tag = self.hider.token(&[&tx.echo.call_id, b"503"]);
                let payload =
                    tx.echo
                        .response(503, "Service Unavailable", &config.agent, warning, &tag);
                self.send_on(tx.outside, payload);
                if creates_dialog(tx.method) {
                    self.end_unconfirmed(&tx.dialog, "evicted");
                }
            }
        }
    }
}
