//! The state seam: what of the gateway's state must outlive the process, as idempotent
//! records.
//!
//! Each record is the whole current value of one thing under its key (a binding by
//! token, a dialog by Call-ID and direction, a ban by source), or its deletion: applying
//! a record twice, or an older one before a newer one of the same key, leaves what the
//! newer says. A store keeps the last record of each key. Times are durations relative
//! to when the record was made; the driver stamps each with the wall clock and, on
//! restore, says how long ago each was written. Connections do not survive a restart,
//! so flows are kept without theirs.
//!
//! The core stays sans-I/O: [`crate::Gateway::poll_state`] hands records out as the
//! tables change (when enabled), [`crate::Gateway::restore_state`] rebuilds tables,
//! indexes and media from them.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::flow::{Flow, Transport};
use crate::media::StreamState;

/// One thing's state, or its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StateRecord {
    Binding {
        token: String,
        state: Option<BindingState>,
    },
    Dialog {
        id: DialogId,
        state: Option<Box<DialogState>>,
    },
    Ban {
        source: IpAddr,
        state: Option<BanState>,
    },
}

impl StateRecord {
    /// The key a store files the record under (the last record of a key wins).
    pub fn key(&self) -> String {
        match self {
            StateRecord::Binding { token, .. } => format!("b:{token}"),
            StateRecord::Dialog { id, .. } => format!(
                "d:{}:{}",
                hex(&id.outside_call_id),
                if id.originated_inside { "out" } else { "in" }
            ),
            StateRecord::Ban { source, .. } => format!("ban:{source}"),
        }
    }

    /// Whether the record ends its key's state.
    pub fn is_delete(&self) -> bool {
        match self {
            StateRecord::Binding { state, .. } => state.is_none(),
            StateRecord::Dialog { state, .. } => state.is_none(),
            StateRecord::Ban { state, .. } => state.is_none(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A flow without its connection (connections end with the process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowState {
    pub transport: TransportState,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub intercepted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransportState {
    Udp,
    Tcp,
    Tls,
}

impl From<Flow> for FlowState {
    fn from(f: Flow) -> Self {
        Self {
            transport: match f.transport {
                Transport::Udp => TransportState::Udp,
                Transport::Tcp => TransportState::Tcp,
                Transport::Tls => TransportState::Tls,
            },
            local: f.local,
            remote: f.remote,
            intercepted: f.intercepted,
        }
    }
}

impl From<FlowState> for Flow {
    fn from(f: FlowState) -> Self {
        Self {
            transport: match f.transport {
                TransportState::Udp => Transport::Udp,
                TransportState::Tcp => Transport::Tcp,
                TransportState::Tls => Transport::Tls,
            },
            local: f.local,
            remote: f.remote,
            connection: None,
            intercepted: f.intercepted,
        }
    }
}

/// A registration binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindingState {
    pub aor: Vec<u8>,
    pub phone: FlowState,
    pub registrar: SocketAddr,
    pub inside_contact: Vec<u8>,
    pub outside_contact: Vec<u8>,
    /// Time left when the record was made.
    pub expires_in_ms: u64,
}

/// Names a dialog: the Call-ID the outside knows and which side began it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DialogId {
    pub outside_call_id: Vec<u8>,
    pub originated_inside: bool,
}

/// A dialog with its route set, CSeqs and media.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogState {
    pub session: bool,
    pub inside_call_id: Vec<u8>,
    pub phone: FlowState,
    pub outside: FlowState,
    pub inside_from: Vec<u8>,
    pub inside_to: Vec<u8>,
    pub outside_from: Vec<u8>,
    pub outside_to: Vec<u8>,
    pub phone_contact: Vec<u8>,
    pub far_contact: Vec<u8>,
    pub far_route: Vec<Vec<u8>>,
    pub aor: Vec<u8>,
    pub token: String,
    /// How old the dialog was when the record was made (the signal timeout counts
    /// from its start).
    pub age_ms: u64,
    pub confirmed: bool,
    pub cseq_inside: u32,
    pub cseq_outside: u32,
    /// Its streams by `m=` line (`None`: a line without a relayed stream).
    pub media: Vec<Option<StreamState>>,
}

/// A ban of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanState {
    pub reason: String,
    pub user: Option<String>,
    pub expires_in_ms: u64,
    pub by_operator: bool,
}

/// What a restore rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    pub bindings: usize,
    pub dialogs: usize,
    pub streams: usize,
    /// Streams whose ports could not be taken again (the call keeps its signalling).
    pub streams_lost: usize,
    pub bans: usize,
    /// Records already expired by the time they were restored.
    pub expired: usize,
}
