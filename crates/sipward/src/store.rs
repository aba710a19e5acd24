//! What the state stores share: the driver's end of a store's writer (a bounded channel
//! fed with `try_send`, a snapshot after an overflow) and the record as stored. The
//! journal (`[state] dir`) and the Redis store (`[state] store`) are both fed through it,
//! from one drain of the core's records per event.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sipward_core::records::StateRecord;
use sipward_core::Gateway;

/// A record as stored: with the wall-clock time (Unix ms) it was handed over at.
#[derive(Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) at_ms: u64,
    pub(crate) record: StateRecord,
}

pub(crate) fn encode(at_ms: u64, record: StateRecord) -> Option<Vec<u8>> {
    serde_json::to_vec(&Stored { at_ms, record }).ok()
}

/// What the driver hands a writer.
pub(crate) enum Message {
    Record(u64, StateRecord),
    /// Everything, replacing what is stored (keys not in it are removed).
    Snapshot(u64, Vec<StateRecord>),
}

/// Unix milliseconds now.
pub(crate) fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The driver's end of one writer.
pub(crate) struct Feed {
    pub(crate) sender: Option<SyncSender<Message>>,
    /// Records were dropped (the channel was full): a snapshot must follow.
    pub(crate) resync: bool,
    /// What the writer is, for the line that says it stopped.
    label: String,
}

impl Feed {
    pub(crate) fn new(sender: SyncSender<Message>, label: String) -> Self {
        Self {
            sender: Some(sender),
            resync: false,
            label,
        }
    }

    /// Whether a snapshot is waiting for room (the driver retries it when idle).
    pub(crate) fn behind(&self) -> bool {
        self.resync
    }

    fn offer(&mut self, message: Message) {
        let Some(sender) = &self.sender else {
            return;
        };
        let snapshot = matches!(message, Message::Snapshot(..));
        if self.resync && !snapshot {
            // The snapshot that follows carries it.
            return;
        }
        match sender.try_send(message) {
            Ok(()) => {
                if snapshot {
                    self.resync = false;
                }
            }
            Err(TrySendError::Full(_)) => {
                if !self.resync {
                    tracing::warn!("state store behind: records dropped, a snapshot follows");
                }
                self.resync = true;
            }
            Err(TrySendError::Disconnected(_)) => {
                self.sender = None;
                crate::driver::say(
                    &mut std::io::stderr(),
                    &format!(
                        "sipward: the {} writer stopped: state is no longer kept there",
                        self.label
                    ),
                );
            }
        }
    }

    pub(crate) fn hang_up(&mut self) {
        drop(self.sender.take());
    }
}

/// Hands the core's new records to every feed; call after every event. Never blocks.
pub(crate) fn take(gateway: &mut Gateway, now: Instant, feeds: &mut [&mut Feed]) {
    if feeds.iter().all(|f| f.sender.is_none()) {
        return;
    }
    if gateway.resync_needed() || feeds.iter().any(|f| f.resync) {
        let at = wall_ms();
        let snapshot = gateway.snapshot_state(now);
        for feed in feeds.iter_mut() {
            feed.offer(Message::Snapshot(at, snapshot.clone()));
        }
    }
    while let Some(record) = gateway.poll_state(now) {
        let at = wall_ms();
        for feed in feeds.iter_mut() {
            feed.offer(Message::Record(at, record.clone()));
        }
    }
}
