//! Dialog state: opened, confirmed and ended, the call events, and the gateway's own
//! BYEs when a call times out.

use super::*;

impl Gateway {
    pub(super) fn end_unconfirmed(&mut self, key: &DialogKey, why: &str) {
        if self.tables.dialogs.get(key).is_some_and(|d| !d.confirmed) {
            self.end_dialog(key, why);
        }
    }

    pub(super) fn end_subscription(&mut self, key: &DialogKey) {
        if self.tables.dialogs.get(key).is_some_and(|d| !d.session) {
            self.end_dialog(key, "subscription terminated");
        }
    }

    pub(super) fn end_dialog(&mut self, key: &DialogKey, why: &str) {
        if let Some(d) = self.tables.remove_dialog(key) {
            self.media.release(&key.media_id());
            if d.session {
                self.call_event(&d, EventKind::CallEnded, why);
            }
        }
    }

    pub(super) fn open_dialog(&mut self, d: Dialog) {
        if d.session {
            self.call_event(&d, EventKind::CallStarted, "INVITE");
        }
        self.tables.insert_dialog(d);
    }

    /// A call event for the log: the phone, its user, the call's direction and Call-ID.
    pub(super) fn call_event(&mut self, d: &Dialog, kind: EventKind, what: &str) {
        let direction = if d.originated_inside {
            "outbound"
        } else {
            "inbound"
        };
        let reason = format!(
            "{direction} call {}: {what}",
            String::from_utf8_lossy(&d.inside_call_id)
        );
        let user = String::from_utf8_lossy(&d.aor).into_owned();
        self.guard.record(
            self.now.unwrap_or(d.created),
            kind,
            d.phone.remote.ip(),
            Some(&user),
            Some("INVITE"),
            &reason,
        );
    }

    /// Ends a dialog on the gateway's own initiative: a BYE to the phone and one to the
    /// far end, each in the identity that side knows.
    pub(super) fn bye_both_ways(&mut self, config: &Config, d: &Dialog, cause: u16, why: &str) {
        let (phone_local, phone_remote, far_local, far_remote) = if d.originated_inside {
            (&d.inside_from, &d.inside_to, &d.outside_to, &d.outside_from)
        } else {
            (&d.inside_to, &d.inside_from, &d.outside_from, &d.outside_to)
        };
        let text = String::from_utf8_lossy;
        let branch = self.hider.branch(&[&d.inside_call_id, b"bye-in"]);
        let to_phone = format!(
            "BYE {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} BYE\r\nReason: SIP;cause={cause};text=\"{why}\"\r\nContent-Length: 0\r\n\r\n",
            text(&d.phone_contact),
            via_value(d.phone.transport, &d.phone.local.to_string(), &branch),
            text(phone_remote),
            text(phone_local),
            text(&d.inside_call_id),
            d.cseq_outside.saturating_add(1).max(1),
        );
        self.send_on(d.phone, to_phone.into_bytes());
        let branch = self.hider.branch(&[&d.outside_call_id, b"bye-out"]);
        let routes: String = d
            .far_route
            .iter()
            .map(|r| format!("Route: {}\r\n", text(r)))
            .collect();
        let target = if d.far_contact.is_empty() {
            format!("sip:{}", d.outside.remote)
        } else {
            text(&d.far_contact).into_owned()
        };
        let to_far = format!(
            "BYE {target} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\n{routes}From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} BYE\r\nReason: SIP;cause={cause};text=\"{why}\"\r\nContent-Length: 0\r\n\r\n",
            via_value(d.outside.transport, &config.leg_host_port(d.outside.local, d.outside.transport), &branch),
            text(far_remote),
            text(far_local),
            text(&d.outside_call_id),
            d.cseq_inside.saturating_add(1).max(1),
        );
        self.send_on(d.outside, to_far.into_bytes());
    }
}
