//! The gateway's state: transactions, dialogs and registration bindings, each in a
//! bounded table. This module is the seam for shared state (cluster mode): everything the
//! gateway remembers goes through these tables' methods.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sipward_proto::{Message, MethodKind};

use crate::flow::{ConnectionId, Flow};

/// What is needed to answer a request on the gateway's own behalf (408, 503): its Via
/// values, From, To, Call-ID and CSeq as they were written.
#[derive(Debug, Clone, Default)]
pub(crate) struct Echo {
    pub(crate) vias: Vec<Vec<u8>>,
    pub(crate) from: Vec<u8>,
    pub(crate) to: Vec<u8>,
    pub(crate) call_id: Vec<u8>,
    pub(crate) cseq: Vec<u8>,
}

impl Echo {
    pub(crate) fn of(msg: &Message<'_>) -> Self {
        use sipward_proto::HeaderName as H;
        let value = |h| msg.header(h).map(|f| f.value.to_vec()).unwrap_or_default();
        Echo {
            vias: msg
                .headers()
                .iter()
                .filter(|f| f.name == H::Via)
                .map(|f| f.value.to_vec())
                .collect(),
            from: value(H::From),
            to: value(H::To),
            call_id: value(H::CallId),
            cseq: value(H::CSeq),
        }
    }

    /// A response with this request's identity; `to_tag` is added when To has none.
    pub(crate) fn response(
        &self,
        status: u16,
        reason: &str,
        agent: &str,
        warning: Option<&str>,
        to_tag: &str,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(format!("SIP/2.0 {status} {reason}\r\n").as_bytes());
        for v in &self.vias {
            push(&mut out, "Via", v);
        }
        push(&mut out, "From", &self.from);
        if has_tag(&self.to) {
            push(&mut out, "To", &self.to);
        } else {
            let mut to = self.to.clone();
            to.extend_from_slice(b";tag=");
            to.extend_from_slice(to_tag.as_bytes());
            push(&mut out, "To", &to);
        }
        push(&mut out, "Call-ID", &self.call_id);
        push(&mut out, "CSeq", &self.cseq);
        out.extend_from_slice(format!("Server: {agent}\r\n").as_bytes());
        if let Some(w) = warning {
            out.extend_from_slice(format!("Warning: 399 {agent} \"{w}\"\r\n").as_bytes());
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        out
    }
}

fn push(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a (valid) To value carries a tag.
pub(crate) fn has_tag(to: &[u8]) -> bool {
    let params = match to.iter().rposition(|&b| b == b'>') {
        Some(i) => to.get(i + 1..).unwrap_or(&[]),
        None => to,
    };
    params.split(|&b| b == b';').skip(1).any(|p| {
        p.split(|&b| b == b'=')
            .next()
            .is_some_and(|n| n.trim_ascii().eq_ignore_ascii_case(b"tag"))
    })
}

/// Registration details a REGISTER transaction carries to its response.
#[derive(Debug, Clone)]
pub(crate) struct RegisterInfo {
    pub(crate) aor: Vec<u8>,
    pub(crate) token: String,
    /// The phone's own Contact URI, as it wrote it.
    pub(crate) inside_contact: Vec<u8>,
    /// The Contact URI the gateway registered in its place.
    pub(crate) outside_contact: Vec<u8>,
}

/// A request from inside forwarded outside; its responses come back from outside.
#[derive(Debug, Clone)]
pub(crate) struct ClientTx {
    /// The phone's flow: where its responses go.
    pub(crate) phone: Flow,
    /// The phone's Via field lines, CRLF included, restored on responses.
    pub(crate) via_lines: Vec<u8>,
    pub(crate) echo: Echo,
    pub(crate) inside_call_id: Vec<u8>,
    pub(crate) inside_from: Vec<u8>,
    pub(crate) inside_to: Vec<u8>,
    pub(crate) method: MethodKind,
    pub(crate) created: Instant,
    pub(crate) final_at: Option<Instant>,
    /// The last response relayed to the phone, sent again when the phone retransmits
    /// the request; `None` once a 2xx answered an INVITE (see `Repeat`).
    pub(crate) last_response: Option<Vec<u8>>,
    pub(crate) register: Option<RegisterInfo>,
    /// For a REGISTER: the user it speaks for and whether it carried credentials (a
    /// refusal of credentials is a failed attempt; the first challenge is not).
    pub(crate) register_user: Option<(String, bool)>,
    /// The dialog this transaction belongs to or creates.
    pub(crate) dialog: DialogKey,
    /// The transport the request went on (a stream takes no retransmissions).
    pub(crate) sent_on: crate::flow::Transport,
}

/// A request from outside forwarded to a phone; its responses come back from inside.
#[derive(Debug, Clone)]
pub(crate) struct ServerTx {
    /// The outside flow the request came on: its responses go back on it.
    pub(crate) outside: Flow,
    /// The phone's flow: where the request went.
    pub(crate) phone: Flow,
    pub(crate) via_lines: Vec<u8>,
    pub(crate) echo: Echo,
    pub(crate) method: MethodKind,
    pub(crate) created: Instant,
    pub(crate) final_at: Option<Instant>,
    /// The last response relayed to the proxy, as for `ClientTx::last_response`.
    pub(crate) last_response: Option<Vec<u8>>,
    pub(crate) aor: Vec<u8>,
    pub(crate) token: String,
    /// The dialog this transaction belongs to or creates.
    pub(crate) dialog: DialogKey,
    /// The request's Record-Route entries, withheld from the phone and given back in
    /// its responses.
    pub(crate) record_route: Vec<Vec<u8>>,
    /// The Request-URI the phone received (None: left as it came), which the ACK of a
    /// failure must carry too (RFC 3261 17.1.1.3).
    pub(crate) request_uri: Option<Vec<u8>>,
}

/// A call (INVITE dialog) through the gateway, early or confirmed.
/// Names a dialog in the gateway's tables. The outside Call-ID alone is not enough:
/// when one inside phone calls another through the outside proxy (hairpin), the
/// proxy sends the call back in with the very Call-ID the gateway gave it, and the
/// gateway then holds two dialogs under that Call-ID, one begun inside, one outside.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DialogKey {
    pub(crate) outside_call_id: Vec<u8>,
    pub(crate) originated_inside: bool,
}

impl DialogKey {
    /// The dialog a media id names (the inverse of `media_id`).
    pub(crate) fn from_media_id(id: &[u8]) -> Self {
        match id.strip_suffix(b";inbound") {
            Some(call) => DialogKey {
                outside_call_id: call.to_vec(),
                originated_inside: false,
            },
            None => DialogKey {
                outside_call_id: id.to_vec(),
                originated_inside: true,
            },
        }
    }

    /// The name the media seam knows this dialog's streams by (distinct for the two
    /// dialogs of a hairpin call).
    pub(crate) fn media_id(&self) -> Vec<u8> {
        let mut id = self.outside_call_id.clone();
        if !self.originated_inside {
            id.extend_from_slice(b";inbound");
        }
        id
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Dialog {
    /// An INVITE session (a call); otherwise a subscription (SUBSCRIBE, REFER), which
    /// does not count against max sessions per ID and ends without BYE.
    pub(crate) session: bool,
    pub(crate) inside_call_id: Vec<u8>,
    pub(crate) outside_call_id: Vec<u8>,
    /// The phone's flow: how the gateway reaches it in this dialog.
    pub(crate) phone: Flow,
    /// The outside flow: the proxy the call went to, or the node it came from.
    pub(crate) outside: Flow,
    pub(crate) originated_inside: bool,
    /// From and To values as the phone knows them (for an inside-originated call: its
    /// own From and To; for an inbound call: as the phone received them).
    pub(crate) inside_from: Vec<u8>,
    pub(crate) inside_to: Vec<u8>,
    /// The same values as the outside knows them.
    pub(crate) outside_from: Vec<u8>,
    pub(crate) outside_to: Vec<u8>,
    /// Phone's contact URI (inside) and the far end's contact URI (outside).
    pub(crate) phone_contact: Vec<u8>,
    pub(crate) far_contact: Vec<u8>,
    /// Route set towards the far end, in the order to use it.
    pub(crate) far_route: Vec<Vec<u8>>,
    pub(crate) aor: Vec<u8>,
    pub(crate) token: String,
    pub(crate) created: Instant,
    pub(crate) confirmed: bool,
    /// Highest CSeq seen from each side, so the gateway's own BYE comes after them.
    pub(crate) cseq_inside: u32,
    pub(crate) cseq_outside: u32,
}

impl Dialog {
    pub(crate) fn key(&self) -> DialogKey {
        DialogKey {
            outside_call_id: self.outside_call_id.clone(),
            originated_inside: self.originated_inside,
        }
    }

    /// Who holds the dialog's entry: the phone that began it, or the outside address
    /// its request came from; and whether that is outside.
    pub(crate) fn holder(&self) -> (IpAddr, bool) {
        if self.originated_inside {
            (self.phone.remote.ip(), false)
        } else {
            (self.outside.remote.ip(), true)
        }
    }
}

/// A registration binding: the inside phone a registrar knows by the gateway's contact.

#[derive(Debug, Clone)]
pub(crate) struct Binding {
    pub(crate) aor: Vec<u8>,
    /// The flow the phone registered on: inbound requests reach it there.
    pub(crate) phone: Flow,
    /// The registrar the phone registered with (in transparent mode, the proxy it
    /// believes it talks to; one binding per phone and proxy).
    pub(crate) registrar: SocketAddr,
    pub(crate) inside_contact: Vec<u8>,
    pub(crate) outside_contact: Vec<u8>,
    pub(crate) expires_at: Instant,
}

/// A read-only view of a binding, for tests and the admin surface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingView {
    pub aor: String,
    pub phone: SocketAddr,
    /// The registrar the binding was registered with.
    pub registrar: SocketAddr,
    /// Whether the phone's messages are intercepted (transparent mode).
    pub intercepted: bool,
    pub inside_contact: String,
    pub outside_contact: String,
    pub expires_at: Instant,
}

/// A read-only view of a dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogView {
    pub inside_call_id: String,
    pub outside_call_id: String,
    pub aor: String,
    pub phone: SocketAddr,
    pub confirmed: bool,
    pub created: Instant,
    /// A call (INVITE) rather than a subscription.
    pub session: bool,
    /// Begun by the inside phone.
    pub outbound: bool,
    /// Its media streams, with their counters.
    pub streams: Vec<crate::media::StreamView>,
}

/// All tables. Keys: client transactions by (our outside branch, CSeq method); server
/// transactions by (our inside branch, CSeq method); dialogs by outside Call-ID; bindings
/// by contact token.
/// What changed in the tables since the state records were last made (see `records`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Changed {
    Binding(String),
    Dialog(DialogKey),
}

/// Changes kept before the seam is drained; beyond them the store needs a full resync.
const MAX_CHANGES: usize = 65_536;

#[derive(Debug, Default)]
pub(crate) struct Tables {
    /// Changes for the state records, when they are wanted (`tracking`); `overflowed`
    /// once more piled up than `MAX_CHANGES` (then a full snapshot is needed).
    pub(crate) changed: Vec<Changed>,
    pub(crate) tracking: bool,
    pub(crate) overflowed: bool,
    /// Read freely; entries go in and out only through `insert_client` /
    /// `remove_client` (and the server pair), which keep `tx_holders` true.
    pub(crate) client: HashMap<(String, Vec<u8>), ClientTx>,
    pub(crate) server: HashMap<(String, Vec<u8>), ServerTx>,
    pub(crate) dialogs: HashMap<DialogKey, Dialog>,
    /// Who holds the entries of each bounded table, for the fair shares (`Holders`).
    pub(crate) tx_holders: Holders,
    pub(crate) dialog_holders: Holders,
    pub(crate) binding_holders: Holders,
    /// Calls (session dialogs) per source: each holds media ports, a pool smaller than
    /// the dialog table, so calls get shares of their own.
    pub(crate) call_holders: Holders,
    /// Inside Call-ID to outside Call-ID, for dialogs.
    pub(crate) call_ids: HashMap<Vec<u8>, DialogKey>,
    bindings: HashMap<String, Binding>,
    /// Indexes kept beside the tables so that a request costs the same with 100,000
    /// registrations or calls as with ten: call dialogs per AoR (the per-user session
    /// limit) and binding tokens per AoR (a registration moving to another phone).
    sessions_by_aor: HashMap<Vec<u8>, usize>,
    tokens_by_aor: HashMap<Vec<u8>, Vec<String>>,
    /// What each stream connection carries (kept by the insert and remove functions),
    /// so the driver's idle reaper asks about one connection at the cost of a lookup.
    by_connection: HashMap<ConnectionId, ConnectionHeld>,
    /// Final responses to non-INVITE requests from inside and from outside, by the
    /// transaction's key (see `Completed`).
    pub(crate) completed_client: Completed,
    pub(crate) completed_server: Completed,
}

/// The dialogs and bindings one stream connection carries.
#[derive(Debug, Default)]
struct ConnectionHeld {
    /// Dialog flows on it (a dialog with both legs on one connection counts twice).
    dialogs: usize,
    /// The expiries of the bindings on it, with how many expire at each instant.
    bindings: BTreeMap<Instant, usize>,
}

/// Why a stream connection must stay open although no message crosses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionUse {
    /// A call or subscription runs over it: open while the dialog lasts.
    Dialog,
    /// A registration binding was made over it: inbound requests reach the phone on it
    /// until the binding expires (the last one, if several).
    Binding { until: Instant },
}

/// The final responses of ended non-INVITE transactions, kept for a while so that a
/// retransmitted request whose answer was lost on the way back is answered by the
/// gateway, as a stateful proxy's completed server transaction does (RFC 3261 17.2.2,
/// Timer J). Kept apart from the live transaction tables: a late response retransmission
/// must not run a transaction's side effects (bindings, failed-login counts) twice.
/// Entries expire in arrival order, so expiry walks only what is due.
/// The most final responses one `Completed` table keeps (about 50 MB of typical responses).
pub(crate) const MAX_COMPLETED: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct Completed {
    responses: HashMap<(String, Vec<u8>), Vec<u8>>,
    order: VecDeque<(Instant, (String, Vec<u8>))>,
}

impl Completed {
    pub(crate) fn insert(&mut self, key: (String, Vec<u8>), response: Vec<u8>, now: Instant) {
        if self.responses.insert(key.clone(), response).is_none() {
            self.order.push_back((now, key));
        }
        // Bounded whatever the request rate: past the cap the oldest go first (a repeat
        // of theirs then reaches the far end, as without this table).
        while self.order.len() > MAX_COMPLETED {
            if let Some((_, old)) = self.order.pop_front() {
                self.responses.remove(&old);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.responses.len()
    }

    pub(crate) fn get(&self, key: &(String, Vec<u8>)) -> Option<&Vec<u8>> {
        self.responses.get(key)
    }

    /// Forgets what was kept `linger` or longer ago.
    pub(crate) fn expire(&mut self, now: Instant, linger: Duration) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < linger {
                return;
            }
            if let Some((_, key)) = self.order.pop_front() {
                self.responses.remove(&key);
            }
        }
    }
}

impl Tables {
    pub(crate) fn transactions(&self) -> usize {
        self.client.len() + self.server.len()
    }

    /// A client transaction is held by the inside phone that sent its request, while
    /// it waits for its final response (`tx_holders` counts only those: one that has
    /// its answer lingers for retransmissions and is the first given up for room).
    pub(crate) fn insert_client(&mut self, key: (String, Vec<u8>), tx: ClientTx) {
        if tx.final_at.is_none() {
            self.tx_holders.add(tx.phone.remote.ip(), false);
        }
        if let Some(old) = self.client.insert(key, tx) {
            if old.final_at.is_none() {
                self.tx_holders.remove(old.phone.remote.ip(), false);
            }
        }
    }

    pub(crate) fn remove_client(&mut self, key: &(String, Vec<u8>)) -> Option<ClientTx> {
        let tx = self.client.remove(key)?;
        if tx.final_at.is_none() {
            self.tx_holders.remove(tx.phone.remote.ip(), false);
        }
        Some(tx)
    }

    /// A client transaction got its final response at `now` (the first one counts).
    pub(crate) fn settle_client(&mut self, key: &(String, Vec<u8>), now: Instant) {
        if let Some(tx) = self.client.get_mut(key) {
            if tx.final_at.is_none() {
                tx.final_at = Some(now);
                self.tx_holders.remove(tx.phone.remote.ip(), false);
            }
        }
    }

    /// A server transaction is held by the outside address that sent its request,
    /// while it waits for its final response (as for `insert_client`).
    pub(crate) fn insert_server(&mut self, key: (String, Vec<u8>), tx: ServerTx) {
        if tx.final_at.is_none() {
            self.tx_holders.add(tx.outside.remote.ip(), true);
        }
        if let Some(old) = self.server.insert(key, tx) {
            if old.final_at.is_none() {
                self.tx_holders.remove(old.outside.remote.ip(), true);
            }
        }
    }

    pub(crate) fn remove_server(&mut self, key: &(String, Vec<u8>)) -> Option<ServerTx> {
        let tx = self.server.remove(key)?;
        if tx.final_at.is_none() {
            self.tx_holders.remove(tx.outside.remote.ip(), true);
        }
        Some(tx)
    }

    /// Counts the holders of every table again from the entries themselves. The counts
    /// are kept as entries come and go; run once a sweep, this bounds any drift (an
    /// entry changed other than through the methods above) to a second. A walk over
    /// the tables, some 50,000 entries at the default caps.
    pub(crate) fn recount_holders(&mut self) {
        let mut tx = Holders::default();
        for t in self.client.values().filter(|t| t.final_at.is_none()) {
            tx.add(t.phone.remote.ip(), false);
        }
        for t in self.server.values().filter(|t| t.final_at.is_none()) {
            tx.add(t.outside.remote.ip(), true);
        }
        let (mut dialogs, mut calls) = (Holders::default(), Holders::default());
        for d in self.dialogs.values() {
            let (ip, outside) = d.holder();
            dialogs.add(ip, outside);
            if d.session {
                calls.add(ip, outside);
            }
        }
        let mut bindings = Holders::default();
        for b in self.bindings.values() {
            bindings.add(b.phone.remote.ip(), false);
        }
        let drifted = tx != self.tx_holders
            || dialogs != self.dialog_holders
            || calls != self.call_holders
            || bindings != self.binding_holders;
        if drifted {
            tracing::warn!("table holder counts drifted from the tables; recounted");
        }
        self.tx_holders = tx;
        self.dialog_holders = dialogs;
        self.call_holders = calls;
        self.binding_holders = bindings;
    }

    /// A server transaction got its final response at `now`.
    pub(crate) fn settle_server(&mut self, key: &(String, Vec<u8>), now: Instant) {
        if let Some(tx) = self.server.get_mut(key) {
            if tx.final_at.is_none() {
                tx.final_at = Some(now);
                self.tx_holders.remove(tx.outside.remote.ip(), true);
            }
        }
    }

    /// Calls (early or confirmed) that count against `aor`.
    pub(crate) fn sessions_of(&self, aor: &[u8]) -> usize {
        self.sessions_by_aor.get(aor).copied().unwrap_or(0)
    }

    /// Notes a change for the state records.
    pub(crate) fn note(&mut self, change: Changed) {
        if !self.tracking {
            return;
        }
        if self.changed.len() >= MAX_CHANGES {
            self.overflowed = true;
            self.changed.clear();
            return;
        }
        self.changed.push(change);
    }

    pub(crate) fn insert_dialog(&mut self, d: Dialog) {
        let key = d.key();
        self.note(Changed::Dialog(key.clone()));
        self.call_ids.insert(d.inside_call_id.clone(), key.clone());
        if d.session {
            *self.sessions_by_aor.entry(d.aor.clone()).or_default() += 1;
        }
        let (ip, outside) = d.holder();
        self.dialog_holders.add(ip, outside);
        if d.session {
            self.call_holders.add(ip, outside);
        }
        self.hold_dialog(&d, true);
        if let Some(old) = self.dialogs.insert(key, d) {
            self.hold_dialog(&old, false);
            let (ip, outside) = old.holder();
            self.dialog_holders.remove(ip, outside);
            if old.session {
                self.call_holders.remove(ip, outside);
            }
            self.forget_session(&old);
        }
    }

    pub(crate) fn remove_dialog(&mut self, key: &DialogKey) -> Option<Dialog> {
        let d = self.dialogs.remove(key)?;
        self.hold_dialog(&d, false);
        self.note(Changed::Dialog(key.clone()));
        self.call_ids.remove(&d.inside_call_id);
        let (ip, outside) = d.holder();
        self.dialog_holders.remove(ip, outside);
        if d.session {
            self.call_holders.remove(ip, outside);
        }
        self.forget_session(&d);
        Some(d)
    }

    /// Counts (or uncounts) a dialog's flows on the connections they use.
    fn hold_dialog(&mut self, d: &Dialog, add: bool) {
        for id in [d.phone.connection, d.outside.connection]
            .into_iter()
            .flatten()
        {
            let held = self.by_connection.entry(id).or_default();
            held.dialogs = if add {
                held.dialogs.saturating_add(1)
            } else {
                held.dialogs.saturating_sub(1)
            };
            self.forget_unheld(id);
        }
    }

    /// Counts (or uncounts) a binding on the connection it was registered over.
    fn hold_binding(&mut self, b: &Binding, add: bool) {
        let Some(id) = b.phone.connection else { return };
        let held = self.by_connection.entry(id).or_default();
        if add {
            *held.bindings.entry(b.expires_at).or_default() += 1;
        } else if let Some(n) = held.bindings.get_mut(&b.expires_at) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.bindings.remove(&b.expires_at);
            }
        }
        self.forget_unheld(id);
    }

    fn forget_unheld(&mut self, id: ConnectionId) {
        if self
            .by_connection
            .get(&id)
            .is_some_and(|h| h.dialogs == 0 && h.bindings.is_empty())
        {
            self.by_connection.remove(&id);
        }
    }

    /// What keeps connection `id` wanted: a dialog over it, else its latest binding.
    pub(crate) fn connection_use(&self, id: ConnectionId) -> Option<ConnectionUse> {
        let held = self.by_connection.get(&id)?;
        if held.dialogs > 0 {
            return Some(ConnectionUse::Dialog);
        }
        let (&until, _) = held.bindings.last_key_value()?;
        Some(ConnectionUse::Binding { until })
    }

    fn forget_session(&mut self, d: &Dialog) {
        if !d.session {
            return;
        }
        if let Some(n) = self.sessions_by_aor.get_mut(&d.aor) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.sessions_by_aor.remove(&d.aor);
            }
        }
    }

    /// The stream connection `id` closed: every flow on it forgets it. A phone's flow
    /// then has no connection (an inbound request decides: a new connection, or 430);
    /// an outside one reconnects on the next message. Returns how many flows used it.
    pub(crate) fn connection_closed(&mut self, id: ConnectionId) -> usize {
        self.by_connection.remove(&id);
        let mut n = 0;
        let mut forget = |flow: &mut Flow| {
            if flow.connection == Some(id) {
                flow.connection = None;
                n += 1;
            }
        };
        self.bindings
            .values_mut()
            .for_each(|b| forget(&mut b.phone));
        for d in self.dialogs.values_mut() {
            forget(&mut d.phone);
            forget(&mut d.outside);
        }
        self.client.values_mut().for_each(|t| forget(&mut t.phone));
        for t in self.server.values_mut() {
            forget(&mut t.phone);
            forget(&mut t.outside);
        }
        n
    }

    pub(crate) fn bindings(&self) -> &HashMap<String, Binding> {
        &self.bindings
    }

    pub(crate) fn binding(&self, token: &str) -> Option<&Binding> {
        self.bindings.get(token)
    }

    pub(crate) fn insert_binding(&mut self, token: String, b: Binding) {
        if self.bindings.contains_key(&token) {
            self.remove_binding(&token);
        }
        self.tokens_by_aor
            .entry(b.aor.clone())
            .or_default()
            .push(token.clone());
        self.binding_holders.add(b.phone.remote.ip(), false);
        self.hold_binding(&b, true);
        self.note(Changed::Binding(token.clone()));
        self.bindings.insert(token, b);
    }

    pub(crate) fn remove_binding(&mut self, token: &str) -> Option<Binding> {
        let b = self.bindings.remove(token)?;
        self.hold_binding(&b, false);
        self.note(Changed::Binding(token.to_owned()));
        self.binding_holders.remove(b.phone.remote.ip(), false);
        if let Some(tokens) = self.tokens_by_aor.get_mut(&b.aor) {
            tokens.retain(|t| t != token);
            if tokens.is_empty() {
                self.tokens_by_aor.remove(&b.aor);
            }
        }
        Some(b)
    }

    /// Removes the bindings expired at `now`; how many.
    pub(crate) fn expire_bindings(&mut self, now: Instant) -> usize {
        let expired: Vec<String> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.expires_at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for t in &expired {
            self.remove_binding(t);
        }
        expired.len()
    }

    /// Whether a phone at `source` holds a binding of `aor`.
    pub(crate) fn holds_binding(&self, aor: &[u8], source: IpAddr) -> bool {
        self.tokens_by_aor.get(aor).is_some_and(|tokens| {
            tokens
                .iter()
                .filter_map(|t| self.bindings.get(t))
                .any(|b| b.phone.remote.ip() == source)
        })
    }

    /// A binding of `aor` held by a phone at another address than `source`.
    pub(crate) fn binding_elsewhere(&self, aor: &[u8], source: IpAddr) -> Option<&Binding> {
        self.tokens_by_aor
            .get(aor)?
            .iter()
            .filter_map(|t| self.bindings.get(t))
            .find(|b| b.phone.remote.ip() != source)
    }

    /// The dialog a request from outside belongs to. Under a hairpin Call-ID the
    /// routing token of the Request-URI (the Contact the gateway gave that dialog's
    /// phone) tells the two apart.
    pub(crate) fn outside_dialog(&self, call_id: &[u8], token: Option<&str>) -> Option<&Dialog> {
        let mut found = [true, false].into_iter().filter_map(|originated_inside| {
            self.dialogs.get(&DialogKey {
                outside_call_id: call_id.to_vec(),
                originated_inside,
            })
        });
        let first = found.next()?;
        let second = found.next();
        match (second, token) {
            (Some(other), Some(t)) if other.token == t => Some(other),
            _ => Some(first),
        }
    }
}

/// Who holds the entries of one bounded table: a count per source address and for the
/// outside direction, kept as entries come and go, so that admission costs a lookup.
/// For the transaction table only the transactions still waiting for their answer are
/// counted (the rest are settled: they only absorb retransmissions).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Holders {
    by_source: HashMap<IpAddr, usize>,
    outside: usize,
    total: usize,
}

/// How a table's room is shared (from `ProtectionOptions`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SharePolicy {
    /// Part of the table only requests inside established dialogs may use.
    pub(crate) reserve: f64,
    /// Entries every source may hold, whatever its fair share.
    pub(crate) floor: usize,
    /// Part of the new-request room outside sources may hold together.
    pub(crate) outside_share: f64,
}

/// Who asks for an entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimant {
    pub(crate) source: IpAddr,
    pub(crate) outside: bool,
    /// Exempt from per-source limits (the upstream proxy): no per-source share, but
    /// the outside share still binds it.
    pub(crate) exempt: bool,
    /// The request belongs to an established dialog (or cancels a pending INVITE).
    pub(crate) in_dialog: bool,
}

/// The verdict on a claim for one more entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Room {
    Granted,
    /// The room for new requests is full and the claimant under its fair share: a
    /// settled entry (`Settled`) or one of a source over its share may make room.
    Evict(Victim),
    Refused(Refusal),
}

/// Why a claim for an entry is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The table is at its limit.
    Full,
    /// The room for new requests is full and nothing can be given up for this claim.
    FullForNew,
    /// The outside sources together hold their share.
    OutsideShare,
    /// The source holds its fair share.
    SourceShare,
}

impl Refusal {
    /// The words after the table's name, in a Warning and an event.
    pub(crate) fn text(self) -> &'static str {
        match self {
            Refusal::Full => "table full",
            Refusal::FullForNew => "table full for new requests",
            Refusal::OutsideShare => "table: outside share reached",
            Refusal::SourceShare => "table: source over its fair share",
        }
    }

    /// A share refused it rather than the table's size.
    pub(crate) fn is_share(self) -> bool {
        matches!(self, Refusal::OutsideShare | Refusal::SourceShare)
    }
}

/// Whose entry makes room (see `Room::Evict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Victim {
    /// The oldest entry that no longer waits for anything (a settled transaction).
    Settled,
    /// The oldest entry of this source, which holds more than its fair share.
    Holder(IpAddr),
}

impl Holders {
    pub(crate) fn add(&mut self, source: IpAddr, outside: bool) {
        *self.by_source.entry(source).or_default() += 1;
        self.total += 1;
        if outside {
            self.outside += 1;
        }
    }

    pub(crate) fn remove(&mut self, source: IpAddr, outside: bool) {
        if let Some(n) = self.by_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_source.remove(&source);
            }
        }
        self.total = self.total.saturating_sub(1);
        if outside {
            self.outside = self.outside.saturating_sub(1);
        }
    }

    pub(crate) fn held_by(&self, source: IpAddr) -> usize {
        self.by_source.get(&source).copied().unwrap_or(0)
    }

    /// Whether one more entry fits in a table of `cap` entries holding `entries` now
    /// (settled ones included). The policy:
    /// - the whole table is for everyone; its last `reserve` part only for requests in
    ///   established dialogs, so a BYE never meets a table filled by new requests;
    /// - the outside sources together hold at most `outside_share` of the new-request
    ///   room, so no outside flood (spoofed from the exempt proxy or not) takes it all;
    /// - once the table is half full, a source may hold at most its fair share, the
    ///   new-request room divided among the sources holding entries (itself counted),
    ///   and never less than `floor`;
    /// - when the new-request room is full anyway (the sources came one after another,
    ///   each within the share of its time), a claimant under its fair share takes the
    ///   place of a settled entry, or else of an entry of the largest holder over its
    ///   own (`Evict`), so that the first to fill a table do not keep it.
    ///
    /// Cost: a few lookups; only a claim on a full table scans the holders (at most one
    /// per entry) for the largest.
    pub(crate) fn room(
        &self,
        cap: usize,
        entries: usize,
        claim: Claimant,
        policy: SharePolicy,
        exempt: impl Fn(IpAddr) -> bool,
    ) -> Room {
        if entries >= cap {
            return Room::Refused(Refusal::Full);
        }
        if claim.in_dialog {
            return Room::Granted;
        }
        let reserved = (cap as f64 * policy.reserve.clamp(0.0, 1.0)).ceil() as usize;
        let usable = cap.saturating_sub(reserved).max(1);
        if claim.outside {
            let outside_room =
                ((usable as f64 * policy.outside_share.clamp(0.0, 1.0)) as usize).max(1);
            if self.outside >= outside_room {
                return Room::Refused(Refusal::OutsideShare);
            }
        }
        let held = self.held_by(claim.source);
        let holders = self.by_source.len() + usize::from(held == 0);
        let share = (usable / holders.max(1)).max(policy.floor);
        // Shares bind once the table is half full: before that nobody waits for room,
        // and a busy source (a PBX) is not held to the count of quiet ones.
        let contended = entries >= usable / 2;
        if contended && !claim.exempt && held >= share {
            return Room::Refused(Refusal::SourceShare);
        }
        if entries < usable {
            return Room::Granted;
        }
        // The claimant is under its share here (or exempt, bound by the outside share).
        if entries > self.total {
            return Room::Evict(Victim::Settled);
        }
        let largest = self
            .by_source
            .iter()
            .filter(|(ip, n)| **n > share && !exempt(**ip))
            .max_by_key(|(_, n)| **n)
            .map(|(ip, _)| *ip);
        match largest {
            Some(ip) if ip != claim.source => Room::Evict(Victim::Holder(ip)),
            _ => Room::Refused(Refusal::FullForNew),
        }
    }
}

impl Holders {
    /// `room` for a table whose entries are not given up for a newcomer (calls,
    /// subscriptions, bindings). Its reserved part is then the newcomers' room: once
    /// the rest is full, a source holding fewer than `floor` entries may still take
    /// one there, so the sources that came first cannot keep everyone else out.
    pub(crate) fn room_kept(
        &self,
        cap: usize,
        claim: Claimant,
        policy: SharePolicy,
        exempt: impl Fn(IpAddr) -> bool,
    ) -> Room {
        match self.room(cap, self.total, claim, policy, exempt) {
            Room::Evict(_) | Room::Refused(Refusal::FullForNew)
                if self.held_by(claim.source) < policy.floor =>
            {
                Room::Granted
            }
            Room::Evict(_) => Room::Refused(Refusal::FullForNew),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    // A test needs a starting instant; the core itself never reads the clock.
    #![allow(clippy::unwrap_used, clippy::disallowed_methods)]
    use super::*;

    fn key(n: usize) -> (String, Vec<u8>) {
        (format!("z9hG4bK{n}"), b"BYE".to_vec())
    }

    #[test]
    fn completed_responses_expire_in_order_and_stay_bounded() {
        let t0 = Instant::now();
        let mut kept = Completed::default();
        kept.insert(key(0), b"200 zero".to_vec(), t0);
        kept.insert(key(1), b"200 one".to_vec(), t0 + Duration::from_secs(10));
        kept.expire(t0 + Duration::from_secs(32), Duration::from_secs(32));
        assert!(kept.get(&key(0)).is_none(), "kept past its time");
        assert_eq!(kept.get(&key(1)).unwrap(), b"200 one");

        for n in 2..MAX_COMPLETED + 2 {
            kept.insert(key(n), Vec::new(), t0 + Duration::from_secs(11));
        }
        assert_eq!(kept.responses.len(), MAX_COMPLETED);
        assert_eq!(kept.order.len(), MAX_COMPLETED);
        assert!(kept.get(&key(1)).is_none(), "the oldest goes first");
        assert!(kept.get(&key(MAX_COMPLETED + 1)).is_some());
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn claim(n: u8) -> Claimant {
        Claimant {
            source: ip(n),
            outside: false,
            exempt: false,
            in_dialog: false,
        }
    }

    const POLICY: SharePolicy = SharePolicy {
        reserve: 0.1,
        floor: 2,
        outside_share: 0.5,
    };

    fn holding(counts: &[(u8, usize)]) -> Holders {
        let mut h = Holders::default();
        for &(n, count) in counts {
            for _ in 0..count {
                h.add(ip(n), false);
            }
        }
        h
    }

    #[test]
    fn shares_bind_only_once_the_table_is_half_full() {
        let none = |_: IpAddr| false;
        // A busy source among quiet ones, the table far from full: granted.
        let h = holding(&[(1, 30), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(h.room(100, 33, claim(1), POLICY, none), Room::Granted);
        // Half full: its share is 90 / 4 = 22.
        let h = holding(&[(1, 45), (2, 1), (3, 1), (4, 1)]);
        assert_eq!(
            h.room(100, 48, claim(1), POLICY, none),
            Room::Refused(Refusal::SourceShare)
        );
        assert_eq!(h.room(100, 48, claim(2), POLICY, none), Room::Granted);
    }

    #[test]
    fn a_full_room_is_made_by_a_settled_entry_or_the_largest_holder_over_its_share() {
        let none = |_: IpAddr| false;
        let h = holding(&[(1, 60), (2, 30)]);
        // 90 pending and 5 settled entries: a newcomer takes a settled one's place...
        assert_eq!(
            h.room(100, 95, claim(3), POLICY, none),
            Room::Evict(Victim::Settled)
        );
        // ...and without settled ones, one of the largest holder's (share 30).
        assert_eq!(
            h.room(100, 90, claim(3), POLICY, none),
            Room::Evict(Victim::Holder(ip(1)))
        );
        // An exempt holder is not a victim.
        let exempt = |a: IpAddr| a == ip(1);
        assert_eq!(
            h.room(100, 90, claim(3), POLICY, exempt),
            Room::Refused(Refusal::FullForNew)
        );
        // Under its share (45 between two), the second holder may take the first's
        // place; over its own, the first makes no room for itself.
        assert_eq!(
            h.room(100, 90, claim(2), POLICY, none),
            Room::Evict(Victim::Holder(ip(1)))
        );
        assert_eq!(
            h.room(100, 90, claim(1), POLICY, none),
            Room::Refused(Refusal::SourceShare)
        );
    }

    #[test]
    fn the_reserve_is_for_dialogs_and_the_cap_for_everyone() {
        let none = |_: IpAddr| false;
        let h = holding(&[(1, 95)]);
        let in_dialog = Claimant {
            in_dialog: true,
            ..claim(1)
        };
        assert_eq!(h.room(100, 95, in_dialog, POLICY, none), Room::Granted);
        assert_eq!(
            h.room(100, 95, claim(1), POLICY, none),
            Room::Refused(Refusal::SourceShare)
        );
        assert_eq!(
            h.room(100, 100, in_dialog, POLICY, none),
            Room::Refused(Refusal::Full)
        );
        // Where nothing is given up, the reserve is the newcomers' room.
        assert_eq!(h.room_kept(100, claim(2), POLICY, none), Room::Granted);
        let mut h = h;
        h.add(ip(2), false);
        h.add(ip(2), false);
        assert_eq!(
            h.room_kept(100, claim(2), POLICY, none),
            Room::Refused(Refusal::FullForNew),
            "at its floor, a newcomer no longer"
        );
    }

    #[test]
    fn outside_sources_together_hold_at_most_their_share() {
        let mut h = Holders::default();
        for _ in 0..45 {
            h.add(ip(200), true);
        }
        let proxy = Claimant {
            source: ip(200),
            outside: true,
            exempt: true,
            in_dialog: false,
        };
        let exempt = |a: IpAddr| a == ip(200);
        assert_eq!(
            h.room(100, 45, proxy, POLICY, exempt),
            Room::Refused(Refusal::OutsideShare)
        );
        assert_eq!(h.room(100, 45, claim(1), POLICY, exempt), Room::Granted);
        h.remove(ip(200), true);
        assert_eq!(h.room(100, 44, proxy, POLICY, exempt), Room::Granted);
    }
}
