//! The restart journal (`[state] dir`): the core's state records kept in an embedded
//! store (fjall) so that `sipward run` restores bindings, calls and bans after a crash
//! or a restart.
//!
//! The packet path never waits on the disk: records go to a writer thread through a
//! bounded channel with `try_send`; a full channel drops them and asks the core for a
//! full snapshot, sent once the channel has room. The writer commits a batch every
//! [`BATCH_WINDOW`] (or [`BATCH_RECORDS`] records) as one `write()` to the store's log,
//! which a `kill -9` does not undo, and syncs the log to disk once a second ([`SYNC_EVERY`]),
//! which bounds what a power loss takes.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use sipward_core::records::{RestoreReport, StateRecord};
use sipward_core::Gateway;

use crate::store::{encode, wall_ms, Feed, Message, Stored};

/// The layout of what is stored; a journal of a newer layout is refused.
const SCHEMA: u32 = 1;
/// Records in flight to the writer; past this the driver resyncs instead of queueing.
const CHANNEL_RECORDS: usize = 16_384;
/// How long the writer gathers records before writing them.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// A batch is written at once when it reaches this many records.
const BATCH_RECORDS: usize = 1_024;
/// How often the written log is synced to disk.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often the driver retries a snapshot the full channel refused, when idle.
pub(crate) const RETRY_EVERY: Duration = Duration::from_millis(100);

const META_SCHEMA: &str = "schema";
const META_SECRET: &str = "secret_id";

/// What the journal restored at start, for the start line.
pub(crate) struct Restored {
    pub(crate) report: RestoreReport,
    /// Stored records that could not be read (a record of a layout this build does not
    /// know).
    pub(crate) unreadable: usize,
    pub(crate) took: Duration,
}

impl Restored {
    /// `restored 12 bindings, 3 dialogs (3 streams), 1 ban from DIR in 4 ms`.
    pub(crate) fn line(&self, dir: &Path) -> String {
        let r = &self.report;
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut line = format!(
            "sipward: restored {}, {} ({}), {} from {} in {} ms",
            plural(r.bindings, "binding", "bindings"),
            plural(r.dialogs, "dialog", "dialogs"),
            plural(r.streams, "stream", "streams"),
            plural(r.bans, "ban", "bans"),
            dir.display(),
            self.took.as_millis()
        );
        let mut dropped = Vec::new();
        if r.expired > 0 {
            dropped.push(format!("{} expired", r.expired));
        }
        if r.streams_lost > 0 {
            dropped.push(format!(
                "{} whose ports could not be taken again",
                plural(r.streams_lost, "stream", "streams")
            ));
        }
        if self.unreadable > 0 {
            dropped.push(format!("{} unreadable", self.unreadable));
        }
        if !dropped.is_empty() {
            line.push_str(&format!(" ({} dropped)", dropped.join(", ")));
        }
        line
    }
}

/// The driver's end of the journal.
pub(crate) struct Journal {
    dir: PathBuf,
    pub(crate) feed: Feed,
    writer: Option<JoinHandle<()>>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, refuses state written under another
    /// secret, restores what it holds into `gateway`, and starts the writer. The
    /// caller enables state records afterwards (the first take writes a snapshot).
    pub(crate) fn open(dir: &Path, gateway: &mut Gateway) -> Result<(Self, Restored)> {
        let started = Instant::now();
        std::fs::create_dir_all(dir)
            .with_context(|| format!("[state] dir {}: cannot be created", dir.display()))?;
        let db = Database::builder(dir)
            .open()
            .with_context(|| format!("[state] dir {}: cannot open the journal", dir.display()))?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let state = db.keyspace("state", KeyspaceCreateOptions::default)?;
        let secret_id = gateway.secret_id();
        if let Some(stored) = meta.get(META_SCHEMA)? {
            let schema: u32 = std::str::from_utf8(&stored)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u32::MAX);
            if schema > SCHEMA {
                bail!(
                    "[state] dir {}: the journal was written by a newer sipward (layout {schema}, \
                     this one reads {SCHEMA}): run that version, or move the directory away to \
                     start without state",
                    dir.display()
                );
            }
        }
        if let Some(stored) = meta.get(META_SECRET)? {
            let stored = String::from_utf8_lossy(&stored).into_owned();
            if stored != secret_id {
                bail!(
                    "[state] dir {}: the journal was written under another hiding secret (id \
                     {stored}; this configuration's is {secret_id}): the secret changed \
                     ([state] secret_file or [gateway] secret). Put the old secret back to keep \
                     the state, or move the directory away to start without it",
                    dir.display()
                );
            }
        }
        let now_ms = wall_ms();
        let mut unreadable = 0;
        let mut records = Vec::new();
        for item in state.iter() {
            let (_, value) = item.into_inner()?;
            match serde_json::from_slice::<Stored>(&value) {
                Ok(s) => {
                    let age = Duration::from_millis(now_ms.saturating_sub(s.at_ms));
                    records.push((s.record, age));
                }
                Err(_) => unreadable += 1,
            }
        }
        let report = gateway.restore_state(Instant::now(), records, 0);
        meta.insert(META_SCHEMA, SCHEMA.to_string())?;
        meta.insert(META_SECRET, secret_id)?;
        db.persist(PersistMode::SyncAll)?;
        let took = started.elapsed();
        let (sender, receiver) = mpsc::sync_channel(CHANNEL_RECORDS);
        let writer = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || write_loop(&db, &state, &receiver))
            .context("cannot start the journal writer")?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                feed: Feed::new(sender, format!("journal ({})", dir.display())),
                writer: Some(writer),
            },
            Restored {
                report,
                unreadable,
                took,
            },
        ))
    }

    /// `sipward run`'s start: opens and restores (printing the restored line) and hands
    /// the restored media to the relay. The driver then enables state records, and
    /// its first take writes a snapshot, so that the journal is exact again.
    pub(crate) fn start(
        dir: &Path,
        gateway: &mut Gateway,
        relay: &sipward_relay::RelayHandle,
    ) -> Result<Self> {
        let (journal, restored) = Self::open(dir, gateway)?;
        crate::driver::say(&mut std::io::stdout(), &restored.line(dir));
        relay.apply(std::iter::from_fn(|| gateway.poll_media()));
        Ok(journal)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hands the core's new records to the writer; call after every event. Never
    /// blocks: when the channel is full the records are dropped and a snapshot is
    /// sent as soon as it has room.
    #[cfg(test)]
    pub(crate) fn take(&mut self, gateway: &mut Gateway, now: Instant) {
        crate::store::take(gateway, now, &mut [&mut self.feed]);
    }

    /// Whether a snapshot is waiting for room (the driver retries it when idle).
    #[cfg(test)]
    pub(crate) fn behind(&self) -> bool {
        self.feed.behind()
    }

    /// Writes what is queued, syncs it to disk and stops the writer (a graceful stop).
    pub(crate) fn close(&mut self) {
        self.feed.hang_up();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: batches, one write per batch, a sync per second, and a final
/// sync when the driver hangs up.
fn write_loop(db: &Database, state: &Keyspace, receiver: &Receiver<Message>) {
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    loop {
        // Wait for the first message of a batch (waking for the second's sync).
        let first = if unsynced {
            let wait = SYNC_EVERY.saturating_sub(last_sync.elapsed());
            match receiver.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match receiver.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            }
        };
        let mut hung_up = false;
        if let Some(first) = first {
            let mut batch = db.batch().durability(Some(PersistMode::Buffer));
            let mut count = 0;
            add(&mut batch, state, first, &mut count);
            let window_ends = Instant::now() + BATCH_WINDOW;
            while count < BATCH_RECORDS {
                match receiver.recv_timeout(window_ends.saturating_duration_since(Instant::now())) {
                    Ok(m) => add(&mut batch, state, m, &mut count),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        hung_up = true;
                        break;
                    }
                }
            }
            if let Err(e) = batch.commit() {
                crate::driver::say(
                    &mut std::io::stderr(),
                    &format!("sipward: journal write failed: {e}"),
                );
                return;
            }
            unsynced = true;
        }
        if unsynced && (hung_up || last_sync.elapsed() >= SYNC_EVERY) {
            if let Err(e) = db.persist(PersistMode::SyncData) {
                tracing::warn!("journal sync failed: {e}");
            }
            last_sync = Instant::now();
            unsynced = false;
        }
        if hung_up {
            break;
        }
    }
    let _ = db.persist(PersistMode::SyncAll);
}

fn add(batch: &mut fjall::OwnedWriteBatch, state: &Keyspace, message: Message, count: &mut usize) {
    match message {
        Message::Record(at, record) => {
            *count += 1;
            put(batch, state, at, record);
        }
        Message::Snapshot(at, records) => {
            *count += records.len();
            let keep: std::collections::HashSet<String> =
                records.iter().map(StateRecord::key).collect();
            // Keys the snapshot no longer has ended while records were being dropped.
            for item in state.iter() {
                if let Ok(key) = item.key() {
                    if std::str::from_utf8(&key).map_or(true, |k| !keep.contains(k)) {
                        batch.remove(state, key);
                    }
                }
            }
            for record in records {
                put(batch, state, at, record);
            }
        }
    }
}

fn put(batch: &mut fjall::OwnedWriteBatch, state: &Keyspace, at: u64, record: StateRecord) {
    let key = record.key();
    if record.is_delete() {
        batch.remove(state, key);
    } else if let Some(value) = encode(at, record) {
        batch.insert(state, key, value);
    }
}

/// Writes `records` as one snapshot into the journal at `dir` and closes it (for the
/// restore measurement).
#[cfg(test)]
pub(crate) fn write_snapshot(dir: &Path, records: Vec<StateRecord>) -> Result<()> {
    let db = Database::builder(dir).open()?;
    let state = db.keyspace("state", KeyspaceCreateOptions::default)?;
    let mut batch = db.batch();
    let mut count = 0;
    add(
        &mut batch,
        &state,
        Message::Snapshot(wall_ms(), records),
        &mut count,
    );
    batch.commit()?;
    db.persist(PersistMode::SyncAll)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use sipward_core::records::{BindingState, FlowState, TransportState};

    fn gateway_under(secret: u8) -> Gateway {
        let (mut config, _) = crate::load_all(None).unwrap();
        config.secret = [secret; 16];
        Gateway::new(config)
    }

    fn gateway() -> Gateway {
        gateway_under(7)
    }

    fn binding(i: u32, expires_in_ms: u64) -> StateRecord {
        let [_, a, b, c] = i.to_be_bytes();
        let phone: std::net::SocketAddr = format!("10.{a}.{b}.{c}:5060").parse().unwrap();
        StateRecord::Binding {
            token: format!("tok{i:08}"),
            state: Some(BindingState {
                aor: format!("sip:user{i}@example.test").into_bytes(),
                phone: FlowState {
                    transport: TransportState::Udp,
                    local: "127.0.0.1:5060".parse().unwrap(),
                    remote: phone,
                    intercepted: false,
                },
                registrar: "192.0.2.10:5060".parse().unwrap(),
                inside_contact: format!("<sip:user{i}@{phone}>").into_bytes(),
                outside_contact: format!("<sip:tok{i:08}@198.51.100.1:5060>").into_bytes(),
                expires_in_ms,
            }),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sipward-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_written_through_the_writer_are_restored_and_deletes_remove_them() {
        let dir = temp_dir("roundtrip");
        {
            let (journal, _) = Journal::open(&dir, &mut gateway()).unwrap();
            let sender = journal.feed.sender.clone().unwrap();
            for i in 0..3 {
                sender
                    .send(Message::Record(wall_ms(), binding(i, 60_000)))
                    .unwrap();
            }
            let deleted = StateRecord::Binding {
                token: "tok00000001".into(),
                state: None,
            };
            sender.send(Message::Record(wall_ms(), deleted)).unwrap();
            drop(sender);
        }
        let (_, restored) = Journal::open(&dir, &mut gateway()).unwrap();
        assert_eq!(restored.report.bindings, 2);
        assert!(restored
            .line(&dir)
            .starts_with("sipward: restored 2 bindings, 0 dialogs (0 streams), 0 bans from "));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_snapshot_replaces_what_is_stored_and_expired_records_are_counted() {
        let dir = temp_dir("snapshot");
        write_snapshot(&dir, (0..5).map(|i| binding(i, 60_000)).collect()).unwrap();
        write_snapshot(&dir, vec![binding(7, 60_000), binding(8, 0)]).unwrap();
        let (_, restored) = Journal::open(&dir, &mut gateway()).unwrap();
        assert_eq!((restored.report.bindings, restored.report.expired), (1, 1));
        assert!(
            restored.line(&dir).contains("(1 expired dropped)"),
            "{}",
            restored.line(&dir)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_channel_drops_records_and_a_snapshot_follows_once_there_is_room() {
        // A channel of one and no writer: the test plays the writer.
        let (sender, receiver) = mpsc::sync_channel(1);
        let mut journal = Journal {
            dir: PathBuf::new(),
            feed: Feed::new(sender, "journal".into()),
            writer: None,
        };
        let mut gateway = gateway();
        gateway.enable_state_records();
        let now = Instant::now();
        journal.take(&mut gateway, now);
        assert!(!journal.behind(), "the first snapshot fits");
        let source: std::net::IpAddr = "192.0.2.66".parse().unwrap();
        gateway.ban(source, Some(Duration::from_secs(60)), "test", now);
        journal.take(&mut gateway, now);
        assert!(journal.behind(), "the ban's record did not fit");
        // The writer catches up: the first snapshot (empty), then the one with the ban.
        assert!(matches!(receiver.try_recv(), Ok(Message::Snapshot(_, r)) if r.is_empty()));
        journal.take(&mut gateway, now);
        assert!(!journal.behind());
        match receiver.try_recv() {
            Ok(Message::Snapshot(_, records)) => assert!(
                matches!(records.as_slice(), [StateRecord::Ban { source: s, state: Some(_) }] if *s == source),
                "{records:?}"
            ),
            _ => panic!("no snapshot after the overflow"),
        }
    }

    #[test]
    fn state_under_another_secret_is_refused() {
        let dir = temp_dir("secret");
        drop(Journal::open(&dir, &mut gateway()).unwrap());
        let refused = Journal::open(&dir, &mut gateway_under(8))
            .err()
            .unwrap()
            .to_string();
        assert!(
            refused.contains("written under another hiding secret"),
            "{refused}"
        );
        assert!(refused.contains(&dir.display().to_string()), "{refused}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The restore time of 100,000 bindings (bench/journal-restore.sh runs it, release).
    #[test]
    #[ignore = "a measurement, run by bench/journal-restore.sh"]
    fn measure_restore_of_100k_bindings() {
        let dir = temp_dir("measure");
        let n = 100_000;
        let started = Instant::now();
        write_snapshot(&dir, (0..n).map(|i| binding(i, 3_600_000)).collect()).unwrap();
        let written = started.elapsed();
        let mut gateway = gateway();
        let (_, restored) = Journal::open(&dir, &mut gateway).unwrap();
        assert_eq!(restored.report.bindings, n as usize);
        let bytes: u64 = walk_size(&dir);
        println!(
            "journal: wrote {n} bindings in {} ms ({} MB on disk); {}",
            written.as_millis(),
            bytes / 1_000_000,
            restored.line(&dir)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn walk_size(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk_size(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
}
