//! The SDP of each path through the [`MediaTable`]: offers and answers rewritten to the
//! relay, refusals answered, idle media ended.

use super::*;

/// What an operator reads for a media set-up failure (Warning text and events).
pub(super) fn media_error_text(e: MediaError) -> &'static str {
    match e {
        MediaError::PortsExhausted => "no media ports left",
        MediaError::SocketsUnavailable => "media sockets cannot be opened",
    }
}

impl Gateway {
    /// A request's SDP through the media table; when its media cannot be set up the
    /// request is answered 503 here and false returned (an ACK goes on unrelayed).
    pub(super) fn request_media(
        &mut self,
        config: &Config,
        at: Arrival,
        msg: &Message<'_>,
        edits: &mut Edits,
        passage: SdpPassage<'_>,
    ) -> bool {
        let why = match self.media.rewrite_sdp(at.now, msg, edits, passage) {
            Ok(()) => return true,
            Err(e) => media_error_text(e),
        };
        if msg.method().is_some_and(|m| m.kind() == MethodKind::Ack) {
            // An ACK (the answer to an offer in a 2xx) cannot be refused, and dropping
            // it would leave the far end retransmitting its 2xx: it goes on unrelayed,
            // inside addresses hidden, like a response.
            self.media.hide_only(msg, edits, passage);
            self.media_event(
                at.now,
                at.flow.remote.ip(),
                msg,
                &format!("media not relayed: {why}"),
            );
            return true;
        }
        self.media_event(
            at.now,
            at.flow.remote.ip(),
            msg,
            &format!("call refused: {why}"),
        );
        self.answer(config, at, msg, 503, "Service Unavailable", why);
        false
    }

    /// Media that could not be set up, for the event log: the operator learns of it
    /// there, not only from a counter (the gateway is out of a resource, not refusing
    /// a peer).
    pub(super) fn media_event(
        &mut self,
        now: Instant,
        source: IpAddr,
        msg: &Message<'_>,
        reason: &str,
    ) {
        let method = match msg.method() {
            Some(m) => String::from_utf8_lossy(m.as_bytes()).into_owned(),
            // A response: named by its CSeq method.
            None => msg
                .cseq()
                .map(|c| String::from_utf8_lossy(c.method).into_owned())
                .unwrap_or_default(),
        };
        self.guard.record(
            now,
            EventKind::Overload,
            source,
            None,
            Some(&method),
            reason,
        );
    }

    /// A response's SDP through the media table. A response cannot be refused: when
    /// ports run out its media goes on unrelayed, inside addresses still hidden. A 2xx to
    /// an INVITE makes the answer's author the party from now on (other forks drop).
    pub(super) fn response_media(
        &mut self,
        at: Arrival,
        msg: &Message<'_>,
        edits: &mut Edits,
        passage: SdpPassage<'_>,
        method: MethodKind,
        status: u16,
    ) {
        if let Err(e) = self.media.rewrite_sdp(at.now, msg, edits, passage) {
            self.media.hide_only(msg, edits, passage);
            let why = format!("media not relayed: {}", media_error_text(e));
            self.media_event(at.now, at.flow.remote.ip(), msg, &why);
        }
        if method == MethodKind::Invite && (200..300).contains(&status) {
            self.media
                .answered(passage.call, passage.from, passage.tag, at.now);
        }
    }

    /// The data-channel timeout: idle streams are closed, and a call whose media all
    /// went idle (and is not on hold) is ended with a BYE both ways.
    pub(super) fn expire_idle_media(&mut self, config: &Config, now: Instant) {
        let ended = self.media.expire_idle(now, config.alg.data_channel_timeout);
        for call in ended {
            let Some(d) = self
                .tables
                .dialogs
                .values()
                .find(|d| d.session && d.key().media_id() == call)
                .cloned()
            else {
                self.media.release(&call);
                continue;
            };
            tracing::info!(
                call_id = %String::from_utf8_lossy(&d.outside_call_id),
                "media idle for the data-channel timeout: call ended"
            );
            self.counters.media_timeouts += 1;
            self.bye_both_ways(config, &d, 408, "media timeout");
            self.end_dialog(&d.key(), "media timeout");
        }
        // Media whose dialog never came to be (a refused or failed request) is freed.
        let known: std::collections::HashSet<Vec<u8>> = self
            .tables
            .dialogs
            .values()
            .map(|d| d.key().media_id())
            .collect();
        self.media.retain_calls(|call| known.contains(call));
    }
}
