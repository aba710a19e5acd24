//! Inside to outside: a phone's request (topology hidden, state remembered) and the
//! outside's responses to it (restored for the phone).

use super::*;

impl Gateway {
    pub(super) fn request_from_inside(
        &mut self,
        config: &Config,
        zone: ZoneId,
        at: Arrival,
        msg: &Message<'_>,
    ) {
        let Some(rule) = self.apply_rule(config, zone, at, msg) else {
            return;
        };
        if rule.action != Action::Nat {
            self.counters.dropped_by_rule += 1;
            return;
        }
        let Some(outside) = rule
            .to_zone
            .and_then(|z| config.zone(z))
            .and_then(|wan| rule.next_hop(&at.flow, wan.address))
        else {
            self.counters.dropped_by_rule += 1;
            return;
        };
        let (wan_local, next_hop) = (outside.local, outside.remote);
        let Some(method) = msg.method().map(|m| m.kind()) else {
            return;
        };
        let (Some(from), Some(to), Some(cseq), Some(top_via)) =
            (msg.from(), msg.to(), msg.cseq(), msg.top_via())
        else {
            return;
        };
        let initial = to.tag().is_none();
        let inside_call_id = msg.call_id();
        let dialog_key = self.tables.call_ids.get(inside_call_id).cloned();
        let outside_call_id = dialog_key
            .as_ref()
            .map(|k| k.outside_call_id.clone())
            .unwrap_or_else(|| self.hider.call_id(inside_call_id));
        let tx_dialog = dialog_key.clone().unwrap_or(DialogKey {
            outside_call_id: outside_call_id.clone(),
            originated_inside: true,
        });
        let aor = aor_of(&from.uri);
        let in_dialog = dialog_key
            .as_ref()
            .filter(|_| !initial)
            .and_then(|k| self.tables.dialogs.get(k))
            .cloned();

        let phone_branch: &[u8] = top_via.branch.unwrap_or(msg.call_id());
        let remote_text = at.flow.remote.to_string();
        let next_hop_text = next_hop.to_string();
        // The next hop is part of the name: a phone may send the same branch to two
        // proxies (transparent mode sees both).
        let branch = self.hider.branch(&[
            phone_branch,
            remote_text.as_bytes(),
            next_hop_text.as_bytes(),
        ]);
        // The transaction's key, built once: looked up for a repeat, stored below.
        let tx_key = (branch.clone(), cseq.method.to_vec());
        if method == MethodKind::Cancel {
            let invite = (branch.clone(), b"INVITE".to_vec());
            let open = self
                .tables
                .client
                .get(&invite)
                .map(|tx| tx.final_at.is_none());
            self.cancel_received(config, at, msg, open, &branch, Toward::Outside);
            return;
        }
        if method != MethodKind::Ack {
            let repeat = self
                .tables
                .client
                .get(&tx_key)
                .map(|tx| Repeat::of(tx.final_at, &tx.last_response).onto(tx.sent_on))
                .or_else(|| Repeat::completed(&self.tables.completed_client, &tx_key));
            if self.repeated(repeat, at) {
                return;
            }
        }

        if method == MethodKind::Ack {
            self.retransmits
                .stop(&accepted_key(inside_call_id, cseq.seq));
        }
        // An in-dialog request for a dialog the gateway does not hold cannot be
        // translated (whose Call-ID, whose route set?): 481, RFC 3261 12.2.2. An ACK
        // is never answered.
        if !initial
            && in_dialog.is_none()
            && !matches!(method, MethodKind::Ack | MethodKind::Register)
        {
            self.counters.unknown_target += 1;
            self.answer_no_dialog(config, at, msg);
            return;
        }
        if !self.secure_enough(config, at, msg, outside.transport) {
            return;
        }
        let busy = (403, "Forbidden");
        if !self.within_state_limits(config, at, msg, method, initial, &aor, busy) {
            return;
        }
        let wan_text = config.leg_host_port(wan_local, outside.transport);
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let gateway_inside = |h: &sipward_proto::SipUri<'_>| {
            let p = h.port.unwrap_or(5060);
            h.host.ip().is_some_and(|ip| {
                config
                    .zones
                    .iter()
                    .any(|z| z.inside && z.address.ip() == ip && z.address.port() == p)
            })
        };

        let mut edits = Edits::new();
        let mut via_lines = Vec::new();
        let r = (|| -> Result<(), sipward_proto::EditError> {
            for f in msg.headers().iter().filter(|f| f.name == HeaderName::Via) {
                via_lines.extend_from_slice(f.line);
                edits.remove_field(msg, f)?;
            }
            let our_via = via_value(outside.transport, &wan_text, &branch);
            edits.prepend_field(msg, "Via", our_via.as_bytes())?;
            decrement_max_forwards(msg, &mut edits)?;
            if let Some(f) = msg.header(HeaderName::CallId) {
                if f.value != outside_call_id.as_slice() {
                    edits.replace(msg, f.value, &outside_call_id)?;
                }
            }
            // In a dialog the phone knows only the gateway (its Contact and no route
            // set): the request goes to the far end's real target, by its route set.
            let anchored = in_dialog.as_ref().filter(|d| !d.far_contact.is_empty());
            if let (Some(d), Some(uri)) = (anchored, msg.request_uri()) {
                edits.replace(msg, uri.raw(), &d.far_contact)?;
            }
            let request_uri = msg.request_uri().filter(|_| anchored.is_none());
            // Request-URI and To: the gateway itself stands for the proxy; a phone for
            // the gateway's outside address.
            for uri in [request_uri, Some(&to.uri)].into_iter().flatten() {
                if let Uri::Sip(u) = uri {
                    if gateway_inside(u) {
                        edits.replace(msg, u.host_port, next_hop_text.as_bytes())?;
                    } else if u.host.ip().is_some_and(is_inside) {
                        edits.replace(msg, u.host_port, wan_text.as_bytes())?;
                    }
                }
            }
            if let Uri::Sip(u) = &from.uri {
                if u.host.ip().is_some_and(is_inside) || gateway_inside(u) {
                    edits.replace(msg, u.host_port, wan_text.as_bytes())?;
                }
            }
            let route_set = anchored.map(|d| d.far_route.as_slice()).unwrap_or_default();
            if !route_set.is_empty() {
                for f in msg.headers().iter().filter(|f| f.name == HeaderName::Route) {
                    edits.remove_field(msg, f)?;
                }
                edits.append_field(msg, "Route", &route_set.join(&b", "[..]))?;
            }
            // Route entries naming the gateway were for us: consume them.
            let own_routes = msg
                .headers()
                .iter()
                .filter(|f| f.name == HeaderName::Route && route_set.is_empty());
            for f in own_routes {
                // Entries naming another inside host cannot be reached from outside
                // either (and would name it there): they go too, the rest stay.
                let (ours, theirs): (Vec<&NameAddr<'_>>, Vec<_>) = msg
                    .routes()
                    .iter()
                    .filter(|r| {
                        msg.range_of(r.raw)
                            .is_some_and(|rr| field_contains(msg, f, &rr))
                    })
                    .partition(|r| {
                        r.uri.as_sip().is_some_and(|u| {
                            gateway_inside(u) || u.host.ip().is_some_and(is_inside)
                        })
                    });
                if theirs.is_empty() {
                    edits.remove_field(msg, f)?;
                } else if !ours.is_empty() {
                    let kept: Vec<&[u8]> = theirs.iter().map(|r| r.raw).collect();
                    edits.replace(msg, f.value, &kept.join(&b", "[..]))?;
                }
            }
            Ok(())
        })();
        if r.is_err() {
            self.counters.edit_failures += 1;
            return;
        }

        // Contacts: outside address plus a routing token.
        let mut register = None;
        let mut contact_token = String::new();
        for contact in &msg.contacts().list {
            let Uri::Sip(u) = &contact.uri else { continue };
            if !(u.host.ip().is_some_and(is_inside) || gateway_inside(u)) {
                continue;
            }
            // The proxy is part of the name: a phone registered with two proxies (in
            // transparent mode, each one it talks to) has a binding with each.
            let token = self.hider.token(&[
                &aor,
                remote_text.as_bytes(),
                u.raw,
                next_hop_text.as_bytes(),
            ]);
            let outside = contact_uri(u, &wan_text, &token, outside.transport);
            let ok = if contact.bracketed {
                edits.replace(msg, u.raw, outside.as_bytes())
            } else {
                edits.replace(msg, u.raw, format!("<{outside}>").as_bytes())
            };
            if ok.is_err() {
                self.counters.edit_failures += 1;
                return;
            }
            if contact_token.is_empty() {
                contact_token.clone_from(&token);
            }
            if method == MethodKind::Register && register.is_none() {
                register = Some(RegisterInfo {
                    aor: aor_of(&to.uri),
                    token,
                    inside_contact: u.raw.to_vec(),
                    outside_contact: outside.into_bytes(),
                });
            }
        }
        if method == MethodKind::Register
            && cap_expires(msg, &mut edits, config.alg.max_registration_time).is_err()
        {
            self.counters.edit_failures += 1;
            return;
        }
        if self
            .hide_unknown_out(config, msg, &mut edits, wan_local)
            .is_err()
        {
            self.counters.edit_failures += 1;
            return;
        }
        let passage = SdpPassage {
            call: &tx_dialog.media_id(),
            from: Side::Inside,
            tag: from.tag().unwrap_or_default(),
            gateway_ip: [config.own_address(&at.flow).ip(), wan_local.ip()],
            is_inside: &is_inside,
        };
        if !self.request_media(config, at, msg, &mut edits, passage) {
            return;
        }

        let payload = match msg.rewrite(&edits) {
            Ok(p) => p,
            Err(_) => {
                self.counters.edit_failures += 1;
                return;
            }
        };
        let Some(payload) = self.outgoing(wan_local, payload) else {
            // Whatever the policy, the phone learns at once that its request cannot
            // leave (rather than retransmitting it into silence).
            self.answer(
                config,
                at,
                msg,
                500,
                "Server Internal Error",
                "request would reveal inside addresses",
            );
            return;
        };

        // Too large for UDP: this request (and its CANCEL) goes over TCP where the next
        // hop takes it; the dialog's leg stays as configured.
        let leg = outside;
        let (outside, payload) = self.fit_transport(rule, outside, payload);

        // Remember the way back.
        if creates_dialog(method) && initial && !self.tables.dialogs.contains_key(&tx_dialog) {
            self.open_dialog(Dialog {
                session: method == MethodKind::Invite,
                inside_call_id: inside_call_id.to_vec(),
                outside_call_id: outside_call_id.clone(),
                phone: at.flow,
                outside: leg,
                originated_inside: true,
                inside_from: from.raw.to_vec(),
                inside_to: to.raw.to_vec(),
                outside_from: Vec::new(),
                outside_to: Vec::new(),
                phone_contact: first_contact(msg),
                far_contact: Vec::new(),
                far_route: Vec::new(),
                aor: aor.clone(),
                token: contact_token,
                created: at.now,
                confirmed: false,
                cseq_inside: cseq.seq,
                cseq_outside: 0,
            });
        } else if let Some(d) = dialog_key.and_then(|k| self.tables.dialogs.get_mut(&k)) {
            d.cseq_inside = d.cseq_inside.max(cseq.seq);
        }
        if method != MethodKind::Ack {
            self.tables.insert_client(
                tx_key,
                ClientTx {
                    phone: at.flow,
                    via_lines,
                    echo: Echo::of(msg),
                    inside_call_id: inside_call_id.to_vec(),
                    inside_from: from.raw.to_vec(),
                    inside_to: to.raw.to_vec(),
                    method,
                    created: at.now,
                    final_at: None,
                    last_response: None,
                    register,
                    register_user: (method == MethodKind::Register).then(|| {
                        let credentials =
                            msg.authorization().is_some() || msg.proxy_authorization().is_some();
                        (register_user(msg), credentials)
                    }),
                    dialog: tx_dialog.clone(),
                    sent_on: outside.transport,
                },
            );
        }
        let onward = Onward {
            toward: Toward::Outside,
            flow: outside,
            branch: &branch,
            dialog: &tx_dialog,
            method,
        };
        self.send_request_onward(config, at, msg, onward, payload);
    }

    pub(super) fn response_from_outside(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
    ) {
        let (Some(via), Some(cseq), Some(status)) = (msg.top_via(), msg.cseq(), msg.status())
        else {
            return;
        };
        let ours = via_is_ours(config, via, at.flow.local);
        let key = (
            String::from_utf8_lossy(via.branch.unwrap_or_default()).into_owned(),
            cseq.method.to_vec(),
        );
        let branch = key.0.clone();
        if ours && cseq.method == b"CANCEL" && self.cancels.answered(&key.0, Toward::Outside) {
            self.cancel_answered(config, at, &key.0, status, Toward::Outside);
            return;
        }
        if ours && cseq.method == b"OPTIONS" && self.ping_answered(&key.0, status, at.now) {
            return;
        }
        let Some(tx) = self.tables.client.get(&key).filter(|_| ours).cloned() else {
            self.counters.stray_responses += 1;
            return;
        };
        self.retransmits.response(&key, status);
        let mut edits = Edits::new();
        let mut new_binding = None;
        let r = (|| -> Result<(), sipward_proto::EditError> {
            remove_top_via(msg, &mut edits, &tx.via_lines)?;
            if msg.call_id() != tx.inside_call_id.as_slice() {
                if let Some(f) = msg.header(HeaderName::CallId) {
                    edits.replace(msg, f.value, &tx.inside_call_id)?;
                }
            }
            if let (Some(f), Some(from)) = (msg.header(HeaderName::From), msg.from()) {
                if from.raw != tx.inside_from.as_slice() {
                    edits.replace(msg, f.value, &tx.inside_from)?;
                }
            }
            if let (Some(f), Some(to)) = (msg.header(HeaderName::To), msg.to()) {
                let restored = with_tag(&tx.inside_to, to.tag());
                if to.raw != restored.as_slice() {
                    edits.replace(msg, f.value, &restored)?;
                }
            }
            // The phone's transaction is matched by its CSeq: it gets the one it sent,
            // whatever number a far end wrote (the method already matched).
            if let Some(f) = msg.header(HeaderName::CSeq) {
                if !tx.echo.cseq.is_empty() && f.value != tx.echo.cseq.as_slice() {
                    edits.replace(msg, f.value, &tx.echo.cseq)?;
                }
            }
            // Only a response that makes or refreshes a dialog's target is anchored at
            // the gateway; the Contacts of a redirect (3xx), a 485 or a 200 to OPTIONS
            // are addresses for the phone to use itself and stay as the far end wrote
            // them (they come from outside: nothing to hide).
            if tx.register.is_none() && sets_dialog_target(tx.method, status) {
                anchor_at_gateway(
                    msg,
                    &mut edits,
                    &tx.phone.local.to_string(),
                    tx.phone.transport,
                )?;
            }
            if let Some(reg) = &tx.register {
                if (200..300).contains(&status) {
                    new_binding = restore_register_contacts(
                        msg,
                        &mut edits,
                        reg,
                        config.alg.max_registration_time,
                    )?;
                }
            }
            Ok(())
        })();
        if r.is_err() {
            self.counters.edit_failures += 1;
            return;
        }
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let lan_ip = config.own_address(&tx.phone).ip();
        let passage = SdpPassage {
            call: &tx.dialog.media_id(),
            from: Side::Outside,
            tag: msg.to().and_then(|t| t.tag()).unwrap_or_default(),
            gateway_ip: [lan_ip, at.flow.local.ip()],
            is_inside: &is_inside,
        };
        self.response_media(at, msg, &mut edits, passage, tx.method, status);
        let Ok(payload) = msg.rewrite(&edits) else {
            self.counters.edit_failures += 1;
            return;
        };

        // State.
        if let Some(t) = self.tables.client.get_mut(&key) {
            if status >= 200 {
                // The request's copy only serves a 408; an INVITE transaction lingers
                // 32 s more, so its memory is given back now.
                t.echo = Echo::default();
            }
            t.last_response = Repeat::keeps(tx.method, status).then(|| payload.clone());
        }
        if status >= 200 {
            self.tables.settle_client(&key, at.now);
        }
        if let (Some((user, credentials)), true) = (&tx.register_user, status >= 200) {
            let source = tx.phone.remote.ip();
            let refused = status == 403 || (*credentials && (status == 401 || status == 407));
            if refused {
                self.guard.register_failed(source, user, status, at.now);
            } else if (200..300).contains(&status) {
                self.guard.register_succeeded(source, user);
                if let Some(reg) = &tx.register {
                    if let Some(b) = self.tables.binding_elsewhere(&reg.aor, source) {
                        let previous = b.phone.remote.ip();
                        let aor = String::from_utf8_lossy(&reg.aor).into_owned();
                        self.guard.binding_moved(source, previous, &aor, at.now);
                    }
                }
            }
        }
        let dialog_response = (creates_dialog(tx.method) || tx.method == MethodKind::Update)
            && (101..300).contains(&status)
            && msg.to().and_then(|t| t.tag()).is_some();
        if dialog_response {
            if let Some(d) = self.tables.dialogs.get_mut(&tx.dialog) {
                // The far end's target (refreshed by every Contact it sends) and, while
                // the dialog is being set up, its route set: the phone knows neither.
                let contact = first_contact_uri(msg);
                if !contact.is_empty() {
                    d.far_contact = contact;
                }
                if !d.confirmed {
                    d.far_route = msg
                        .record_routes()
                        .iter()
                        .rev()
                        .map(|r| r.raw.to_vec())
                        .collect();
                }
            }
        }
        match tx.method {
            m if creates_dialog(m) && (200..300).contains(&status) => {
                let mut answered = None;
                if let Some(d) = self.tables.dialogs.get_mut(&tx.dialog) {
                    if !d.confirmed && d.session {
                        answered = Some(d.clone());
                    }
                    d.confirmed = true;
                    d.outside_from = msg.from().map(|f| f.raw.to_vec()).unwrap_or_default();
                    d.outside_to = msg.to().map(|t| t.raw.to_vec()).unwrap_or_default();
                    d.inside_to = with_tag(&tx.inside_to, msg.to().and_then(|t| t.tag()));
                }
                if let Some(d) = answered {
                    self.call_event(&d, EventKind::CallAnswered, &format!("{status}"));
                }
            }
            m if creates_dialog(m) && status >= 300 => {
                self.end_unconfirmed(&tx.dialog, &format!("not answered: {status}"))
            }
            MethodKind::Bye if status >= 200 => self.end_dialog(&tx.dialog, "hung up"),
            MethodKind::Register if status >= 200 => {
                if let Some(reg) = &tx.register {
                    match new_binding {
                        Some(expires) if (200..300).contains(&status) => {
                            self.tables.insert_binding(
                                reg.token.clone(),
                                Binding {
                                    aor: reg.aor.clone(),
                                    phone: tx.phone,
                                    registrar: at.flow.remote,
                                    inside_contact: reg.inside_contact.clone(),
                                    outside_contact: reg.outside_contact.clone(),
                                    expires_at: crate::protect::later(at.now, expires),
                                },
                            );
                        }
                        _ if status == 401 || status == 407 => {}
                        _ => {
                            self.tables.remove_binding(&reg.token);
                        }
                    }
                }
            }
            _ => {}
        }
        if status >= 200 && tx.method != MethodKind::Invite {
            self.tables.remove_client(&key);
            self.tables
                .completed_client
                .insert(key, payload.clone(), at.now);
        }
        // A 2xx from a stream toward a UDP phone: repeated until the phone's ACK.
        let accepted = tx.method == MethodKind::Invite && (200..300).contains(&status);
        if accepted && at.flow.transport != Transport::Udp && tx.phone.transport == Transport::Udp {
            let key = accepted_key(&tx.inside_call_id, cseq_number(&tx.echo.cseq));
            self.retransmits.start(
                key,
                RetransmitKind::Accepted,
                tx.phone,
                payload.clone(),
                at.now,
            );
        }
        self.counters.forwarded += 1;
        self.send_on(tx.phone, payload);
        if tx.method == MethodKind::Invite {
            self.invite_answered(&branch, status, Toward::Outside, at.now);
        }
    }
}
