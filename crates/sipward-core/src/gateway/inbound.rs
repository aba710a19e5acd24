//! Outside to inside: a request for a phone (routed by pending INVITE, dialog or
//! binding token) and the phone's responses to it.

use super::*;

impl Gateway {
    pub(super) fn request_from_outside(
        &mut self,
        config: &Config,
        zone: ZoneId,
        at: Arrival,
        msg: &Message<'_>,
    ) {
        let Some(rule) = self.apply_rule(config, zone, at, msg) else {
            return;
        };
        if rule.action != Action::Allow {
            self.counters.dropped_by_rule += 1;
            return;
        }
        let Some(method) = msg.method().map(|m| m.kind()) else {
            return;
        };
        let (Some(cseq), Some(top_via), Some(from), Some(to)) =
            (msg.cseq(), msg.top_via(), msg.from(), msg.to())
        else {
            return;
        };
        let remote_text = at.flow.remote.to_string();
        let proxy_branch: &[u8] = top_via.branch.unwrap_or(msg.call_id());
        let branch = self.hider.branch(&[proxy_branch, remote_text.as_bytes()]);
        let initial = to.tag().is_none();
        // The transaction's key, built once: looked up for a repeat, stored below.
        let tx_key = (branch.clone(), cseq.method.to_vec());
        if method != MethodKind::Ack {
            let repeat = self
                .tables
                .server
                .get(&tx_key)
                .map(|tx| Repeat::of(tx.final_at, &tx.last_response).onto(tx.phone.transport))
                .or_else(|| Repeat::completed(&self.tables.completed_server, &tx_key));
            if self.repeated(repeat, at) {
                return;
            }
        }

        if method == MethodKind::Ack {
            self.retransmits
                .stop(&accepted_key(msg.call_id(), cseq.seq));
        }
        // Where does it go? A pending INVITE (CANCEL, ACK for a failure), a registration
        // token in the Request-URI, or the dialog the Call-ID names.
        let pending = self
            .tables
            .server
            .get(&(branch.clone(), b"INVITE".to_vec()))
            .cloned();
        if method == MethodKind::Cancel {
            let open = pending.as_ref().map(|p| p.final_at.is_none());
            self.cancel_received(config, at, msg, open, &branch, Toward::Inside);
            return;
        }
        let token = msg
            .request_uri()
            .and_then(|u| u.as_sip())
            .and_then(|u| u.param(TOKEN_PARAM).flatten())
            .map(|t| String::from_utf8_lossy(t).into_owned());
        let binding = token.as_ref().and_then(|t| self.tables.binding(t)).cloned();
        let dialog = self
            .tables
            .outside_dialog(msg.call_id(), token.as_deref())
            .cloned();
        let (phone, target, aor, tok) = if let (Some(p), MethodKind::Ack) = (&pending, method) {
            // A failure's ACK goes where the INVITE went, with its Request-URI.
            let target = p.request_uri.clone();
            (p.phone, target, p.aor.clone(), p.token.clone())
        } else if let Some(d) = dialog.as_ref().filter(|_| !initial) {
            (
                d.phone,
                Some(d.phone_contact.clone()),
                d.aor.clone(),
                d.token.clone(),
            )
        } else if let Some(b) = binding.as_ref().filter(|_| initial) {
            let t = token.clone().unwrap_or_default();
            (b.phone, Some(b.inside_contact.clone()), b.aor.clone(), t)
        } else if method == MethodKind::Options && initial && for_the_gateway(msg) {
            // An OPTIONS for the gateway itself (a trunk's keepalive): it is up.
            self.answer_options(config, at, msg);
            return;
        } else {
            self.counters.unknown_target += 1;
            // A request inside a dialog (or a CANCEL) names state the gateway does
            // not hold: RFC 3261 12.2.2 and 9.2 answer 481, not 404.
            if !initial || method == MethodKind::Cancel {
                self.answer_no_dialog(config, at, msg);
            } else {
                self.answer(
                    config,
                    at,
                    msg,
                    404,
                    "Not Found",
                    "no such user behind this gateway",
                );
            }
            return;
        };
        // The phone's connection is gone (RFC 5626 5.3): a phone reachable at its Contact
        // gets a new connection there; one behind a NAT (or that asked for outbound
        // behaviour with `ob`) cannot be reached, and the caller learns it at once.
        let phone = match phone {
            p if p.transport == Transport::Udp || p.connection.is_some() => p,
            p => match reconnect_target(target.as_deref(), p, &config.alg.limits) {
                Some(flow) => flow,
                None if method == MethodKind::Ack => return,
                None => {
                    self.counters.flow_failed += 1;
                    self.answer(
                        config,
                        at,
                        msg,
                        430,
                        "Flow Failed",
                        "phone's connection is gone",
                    );
                    return;
                }
            },
        };
        if !self.secure_enough(config, at, msg, phone.transport) {
            return;
        }
        if !self.within_state_limits(config, at, msg, method, initial, &aor, (486, "Busy Here")) {
            return;
        }

        let lan_local = phone.local;
        let lan_text = lan_local.to_string();
        let mut edits = Edits::new();
        let mut via_lines = Vec::new();
        let inside_dialog = dialog.as_ref().filter(|d| d.originated_inside && !initial);
        let r = (|| -> Result<(), sipward_proto::EditError> {
            for f in msg.headers().iter().filter(|f| f.name == HeaderName::Via) {
                via_lines.extend_from_slice(f.line);
                edits.remove_field(msg, f)?;
            }
            edits.prepend_field(
                msg,
                "Via",
                format!(
                    "SIP/2.0/{} {lan_text};branch={branch}",
                    phone.transport.via_token()
                )
                .as_bytes(),
            )?;
            decrement_max_forwards(msg, &mut edits)?;
            if let (Some(target), Some(uri)) = (&target, msg.request_uri()) {
                edits.replace(msg, uri.raw(), target)?;
            }
            // As for responses: only a dialog's target is the gateway's business.
            if sets_dialog_target(method, 200) {
                anchor_at_gateway(msg, &mut edits, &lan_text, phone.transport)?;
            }
            if let Some(d) = inside_dialog {
                // The far end speaks of the hidden call: give the phone back its own.
                if let Some(f) = msg.header(HeaderName::CallId) {
                    edits.replace(msg, f.value, &d.inside_call_id)?;
                }
                if let Some(f) = msg.header(HeaderName::To) {
                    edits.replace(msg, f.value, &d.inside_from)?;
                }
                if let Some(f) = msg.header(HeaderName::From) {
                    edits.replace(msg, f.value, &with_tag(&d.inside_to, from.tag()))?;
                }
            }
            Ok(())
        })();
        if r.is_err() {
            self.counters.edit_failures += 1;
            return;
        }
        if self
            .translate_call_ids_in(msg, &mut edits, phone.remote)
            .is_err()
        {
            self.counters.edit_failures += 1;
            return;
        }
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let tx_dialog = match dialog.as_ref().filter(|_| !initial) {
            Some(d) => d.key(),
            None => DialogKey {
                outside_call_id: msg.call_id().to_vec(),
                originated_inside: false,
            },
        };
        let passage = SdpPassage {
            call: &tx_dialog.media_id(),
            from: Side::Outside,
            tag: from.tag().unwrap_or_default(),
            gateway_ip: [config.own_address(&phone).ip(), at.flow.local.ip()],
            is_inside: &is_inside,
        };
        if !self.request_media(config, at, msg, &mut edits, passage) {
            return;
        }
        let Ok(payload) = msg.rewrite(&edits) else {
            self.counters.edit_failures += 1;
            return;
        };

        if creates_dialog(method) && initial && !self.tables.dialogs.contains_key(&tx_dialog) {
            self.open_dialog(Dialog {
                session: method == MethodKind::Invite,
                inside_call_id: msg.call_id().to_vec(),
                outside_call_id: msg.call_id().to_vec(),
                phone,
                outside: at.flow,
                originated_inside: false,
                inside_from: from.raw.to_vec(),
                inside_to: to.raw.to_vec(),
                outside_from: from.raw.to_vec(),
                outside_to: to.raw.to_vec(),
                phone_contact: target.clone().unwrap_or_default(),
                far_contact: first_contact_uri(msg),
                far_route: msg.record_routes().iter().map(|r| r.raw.to_vec()).collect(),
                aor: aor.clone(),
                token: tok.clone(),
                created: at.now,
                confirmed: false,
                cseq_inside: 0,
                cseq_outside: cseq.seq,
            });
        } else if let Some(d) = self.tables.dialogs.get_mut(&tx_dialog) {
            d.cseq_outside = d.cseq_outside.max(cseq.seq);
            let contact = first_contact_uri(msg);
            if !contact.is_empty() && !initial {
                d.far_contact = contact;
            }
        }
        if method != MethodKind::Ack {
            self.tables.insert_server(
                tx_key,
                ServerTx {
                    outside: at.flow,
                    phone,
                    via_lines,
                    echo: Echo::of(msg),
                    method,
                    created: at.now,
                    final_at: None,
                    last_response: None,
                    aor,
                    token: tok,
                    dialog: tx_dialog.clone(),
                    record_route: msg.record_routes().iter().map(|r| r.raw.to_vec()).collect(),
                    request_uri: target,
                },
            );
        }
        let onward = Onward {
            toward: Toward::Inside,
            flow: phone,
            branch: &branch,
            dialog: &tx_dialog,
            method,
        };
        self.send_request_onward(config, at, msg, onward, payload);
    }

    pub(super) fn response_from_inside(&mut self, config: &Config, at: Arrival, msg: &Message<'_>) {
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
        if ours && cseq.method == b"CANCEL" && self.cancels.answered(&branch, Toward::Inside) {
            self.cancel_answered(config, at, &branch, status, Toward::Inside);
            return;
        }
        let Some(tx) = self.tables.server.get(&key).filter(|_| ours).cloned() else {
            self.counters.stray_responses += 1;
            return;
        };
        let accepted = tx.method == MethodKind::Invite && (200..300).contains(&status);
        if accepted && tx.final_at.is_some() && tx.outside.transport != Transport::Udp {
            // The phone repeats its 2xx over UDP until the ACK; the stream had it once.
            self.counters.absorbed_retransmissions += 1;
            return;
        }
        self.retransmits.response(&key, status);
        let wan_text = config.leg_host_port(tx.outside.local, tx.outside.transport);
        let is_inside = |ip: IpAddr| config.is_inside(ip);
        let mut edits = Edits::new();
        let r = (|| -> Result<(), sipward_proto::EditError> {
            remove_top_via(msg, &mut edits, &tx.via_lines)?;
            // Identity as the outside sent it; the phone's To-tag is kept.
            if let (Some(f), Some(to)) = (msg.header(HeaderName::To), msg.to()) {
                let restored = with_tag(&tx.echo.to, to.tag());
                if to.raw != restored.as_slice() {
                    edits.replace(msg, f.value, &restored)?;
                }
            }
            if let (Some(f), Some(from)) = (msg.header(HeaderName::From), msg.from()) {
                if from.raw != tx.echo.from.as_slice() {
                    edits.replace(msg, f.value, &tx.echo.from)?;
                }
            }
            if let Some(f) = msg.header(HeaderName::CallId) {
                if f.value != tx.echo.call_id.as_slice() {
                    edits.replace(msg, f.value, &tx.echo.call_id)?;
                }
            }
            for contact in &msg.contacts().list {
                let Uri::Sip(u) = &contact.uri else { continue };
                if let Some(ip) = u.host.ip().filter(|ip| is_inside(*ip)) {
                    // A redirect names where to go instead: a registered phone by its
                    // own token; a dialog's Contact routes back by this call's.
                    let own = (status >= 300)
                        .then(|| self.token_of_phone(ip, u.port.unwrap_or(5060)))
                        .flatten();
                    let outside = contact_uri(
                        u,
                        &wan_text,
                        own.as_deref().unwrap_or(&tx.token),
                        tx.outside.transport,
                    );
                    if contact.bracketed {
                        edits.replace(msg, u.raw, outside.as_bytes())?;
                    } else {
                        edits.replace(msg, u.raw, format!("<{outside}>").as_bytes())?;
                    }
                }
            }
            // The caller's side built its route set from the request's Record-Route,
            // which the phone never saw: the dialog-making responses carry it back.
            if creates_dialog(tx.method)
                && (101..300).contains(&status)
                && !tx.record_route.is_empty()
            {
                for f in msg
                    .headers()
                    .iter()
                    .filter(|f| f.name == HeaderName::RecordRoute)
                {
                    edits.remove_field(msg, f)?;
                }
                edits.append_field(msg, "Record-Route", &tx.record_route.join(&b", "[..]))?;
            }
            Ok(())
        })();
        if r.is_err() {
            self.counters.edit_failures += 1;
            return;
        }
        if self
            .hide_unknown_out(config, msg, &mut edits, tx.outside.local)
            .is_err()
        {
            self.counters.edit_failures += 1;
            return;
        }
        let passage = SdpPassage {
            call: &tx.dialog.media_id(),
            from: Side::Inside,
            tag: msg.to().and_then(|t| t.tag()).unwrap_or_default(),
            gateway_ip: [config.own_address(&at.flow).ip(), tx.outside.local.ip()],
            is_inside: &is_inside,
        };
        self.response_media(at, msg, &mut edits, passage, tx.method, status);
        let Ok(payload) = msg.rewrite(&edits) else {
            self.counters.edit_failures += 1;
            return;
        };
        let Some(payload) = self.outgoing(tx.outside.local, payload) else {
            return;
        };

        if let Some(t) = self.tables.server.get_mut(&key) {
            t.last_response = Repeat::keeps(tx.method, status).then(|| payload.clone());
        }
        if status >= 200 {
            self.tables.settle_server(&key, at.now);
        }
        match tx.method {
            m if creates_dialog(m) && (200..300).contains(&status) => {
                let contact = first_contact_uri(msg);
                let mut answered = None;
                if let Some(d) = self.tables.dialogs.get_mut(&tx.dialog) {
                    if !d.originated_inside {
                        if !d.confirmed && d.session {
                            answered = Some(d.clone());
                        }
                        d.confirmed = true;
                        if !contact.is_empty() {
                            d.phone_contact = contact;
                        }
                        d.inside_to = msg.to().map(|t| t.raw.to_vec()).unwrap_or_default();
                        d.outside_to = with_tag(&tx.echo.to, msg.to().and_then(|t| t.tag()));
                    }
                }
                if let Some(d) = answered {
                    self.call_event(&d, EventKind::CallAnswered, &format!("{status}"));
                }
            }
            m if creates_dialog(m) && status >= 300 => {
                self.end_unconfirmed(&tx.dialog, &format!("not answered: {status}"))
            }
            MethodKind::Bye if status >= 200 => self.end_dialog(&tx.dialog, "hung up"),
            _ => {}
        }
        if status >= 200 && tx.method != MethodKind::Invite {
            self.tables.remove_server(&key);
            self.tables
                .completed_server
                .insert(key, payload.clone(), at.now);
        }
        if accepted && at.flow.transport != Transport::Udp && tx.outside.transport == Transport::Udp
        {
            let key = accepted_key(&tx.echo.call_id, cseq_number(&tx.echo.cseq));
            self.retransmits.start(
                key,
                RetransmitKind::Accepted,
                tx.outside,
                payload.clone(),
                at.now,
            );
        }
        self.counters.forwarded += 1;
        self.push_on(tx.outside, payload);
        if tx.method == MethodKind::Invite {
            self.invite_answered(&branch, status, Toward::Inside, at.now);
        }
    }
}

/// Where a phone on a stream whose connection is gone can be reached again: at its
/// Contact, if that is where its connection came from (no NAT between) and it did not
/// ask for outbound behaviour (`ob`, RFC 5626: reachable only over its own flows).
fn reconnect_target(
    contact: Option<&[u8]>,
    phone: Flow,
    limits: &sipward_proto::Limits,
) -> Option<Flow> {
    let uri = sipward_proto::uri::parse_uri(contact?, limits).ok()?;
    let sip = uri.as_sip()?;
    let default_port = if phone.transport == Transport::Tls {
        5061
    } else {
        5060
    };
    let at = SocketAddr::new(sip.host.ip()?, sip.port.unwrap_or(default_port));
    let outbound = sip.param("ob").is_some();
    (at == phone.remote && !outbound).then_some(Flow {
        connection: None,
        ..phone
    })
}

/// A request addressed to the gateway itself rather than to a user behind it: a
/// Request-URI without a user part or routing token (`sip:gateway.example.com:5061`).
fn for_the_gateway(msg: &Message<'_>) -> bool {
    msg.request_uri()
        .and_then(|u| u.as_sip())
        .is_some_and(|u| u.user.is_none() && u.param(TOKEN_PARAM).is_none())
}
