//! The Redis (or Valkey) state store (`[state] store = "redis://host:port/db"`): the
//! core's records under `sw:{group}:`, for a restart and for the standby of a pair.
//!
//! Layout, per group:
//! - `sw:{group}:b:{token}`, `sw:{group}:d:{call-id}:{dir}`, `sw:{group}:ban:{ip}`: one
//!   record each (JSON, with the wall-clock time it was made), bindings and bans with
//!   their expiry (`PXAT`);
//! - `sw:{group}:log`: the change stream (`XADD ... MAXLEN ~`), each entry a key and its
//!   record (none for a delete), or `resync` after a rewrite; keyspace notifications
//!   would be lost while a follower is disconnected, a stream is read from where it was;
//! - `sw:{group}:meta`: a hash of `schema`, `secret_id` and `epoch` (raised by each
//!   promotion; an active node seeing a higher one steps down).
//!
//! Like the journal, the packet path never waits on Redis: records go through a bounded
//! channel to a writer thread, which pipelines each batch. The writer keeps the last
//! record of every key (its mirror): while Redis is unreachable the records only go
//! there, and once it answers again the writer rewrites everything from the mirror.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::{Client, Connection};
use sipward_core::records::{RestoreReport, StateRecord};
use sipward_core::Gateway;

use crate::store::{wall_ms, Feed, Message, Stored};

/// The layout of what is stored; a store of a newer layout is refused.
const SCHEMA: u32 = 1;
/// Records in flight to the writer; past this the driver resyncs instead of queueing.
const CHANNEL_RECORDS: usize = 16_384;
/// How long the writer gathers records before writing them.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// A batch is written at once when it reaches this many records.
const BATCH_RECORDS: usize = 1_024;
/// The change stream's approximate length (`MAXLEN ~`): a follower further behind
/// than this reads the snapshot again.
pub(crate) const LOG_ENTRIES: u64 = 100_000;
/// How long a connection attempt or a command may take before Redis counts as down.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the writer tries Redis again while it is down, and reads the epoch.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Keys read per SCAN step.
const SCAN_COUNT: usize = 1_000;

/// Where the store is and which group's keys are ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreSettings {
    pub(crate) url: String,
    pub(crate) group: String,
}

impl StoreSettings {
    pub(crate) fn prefix(&self) -> String {
        format!("sw:{}:", self.group)
    }
    fn meta(&self) -> String {
        format!("sw:{}:meta", self.group)
    }
    pub(crate) fn log(&self) -> String {
        format!("sw:{}:log", self.group)
    }
    /// The URL without a password, for messages.
    pub(crate) fn shown(&self) -> String {
        match redis::parse_redis_url(&self.url) {
            Some(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }
}

/// What the writer reports (read by the admin API and the driver).
#[derive(Default)]
pub(crate) struct StoreStatus {
    pub(crate) connected: AtomicBool,
    /// Batches written, records written, and writes that failed (Redis down).
    pub(crate) batches: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Records kept only in the mirror since Redis went down (written at the rewrite).
    pub(crate) unwritten: AtomicU64,
    /// Full rewrites from the mirror (after each reconnect).
    pub(crate) rewrites: AtomicU64,
    pub(crate) mirror_keys: AtomicU64,
    /// The epoch this node holds (set at promotion) and the highest one seen in the store.
    pub(crate) own_epoch: AtomicU64,
    pub(crate) seen_epoch: AtomicU64,
}

impl StoreStatus {
    /// A newer promotion happened elsewhere: this node must stop acting.
    pub(crate) fn fenced(&self) -> bool {
        self.seen_epoch.load(Ordering::Relaxed) > self.own_epoch.load(Ordering::Relaxed)
    }

    /// The store's and the pair's Prometheus metrics (appended to `/metrics`).
    pub(crate) fn metrics(&self, active: bool) -> String {
        use std::fmt::Write as _;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, kind, help, value) in [
            (
                "sipward_store_connected",
                "gauge",
                "1 while the Redis store answers the writer.",
                u64::from(self.connected.load(Ordering::Relaxed)),
            ),
            (
                "sipward_store_write_failures_total",
                "counter",
                "Writes to the Redis store that failed (it was unreachable).",
                get(&self.failures),
            ),
            (
                "sipward_store_records_waiting",
                "gauge",
                "Records kept only in memory while the Redis store is down (written when it is back).",
                get(&self.unwritten),
            ),
            (
                "sipward_store_rewrites_total",
                "counter",
                "Full rewrites of the Redis store from memory (after each reconnect).",
                get(&self.rewrites),
            ),
            (
                "sipward_store_records_written_total",
                "counter",
                "Records written to the Redis store.",
                get(&self.records),
            ),
            (
                "sipward_ha_active",
                "gauge",
                "1 when this node is the active one of its group, 0 when standby.",
                u64::from(active),
            ),
            (
                "sipward_ha_epoch",
                "gauge",
                "The epoch this node was promoted with (0 before its first write).",
                get(&self.own_epoch),
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "connected": self.connected.load(Ordering::Relaxed),
            "batches_written": get(&self.batches),
            "records_written": get(&self.records),
            "write_failures": get(&self.failures),
            "records_waiting_for_store": get(&self.unwritten),
            "rewrites": get(&self.rewrites),
            "mirror_keys": get(&self.mirror_keys),
        })
    }
}

/// Connects with the I/O timeout on every command.
pub(crate) fn connect(url: &str) -> redis::RedisResult<Connection> {
    let client = Client::open(url)?;
    let con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(con)
}

/// Refuses a store of a newer layout or written under another secret.
pub(crate) fn check_meta(
    con: &mut Connection,
    settings: &StoreSettings,
    secret_id: &str,
) -> Result<()> {
    let (schema, stored): (Option<u32>, Option<String>) = redis::cmd("HMGET")
        .arg(settings.meta())
        .arg("schema")
        .arg("secret_id")
        .query(con)?;
    if let Some(schema) = schema.filter(|s| *s > SCHEMA) {
        bail!(
            "[state] store {} (group {:?}): written by a newer sipward (layout {schema}, this \
             one reads {SCHEMA})",
            settings.shown(),
            settings.group
        );
    }
    if let Some(stored) = stored.filter(|s| s != secret_id) {
        bail!(
            "[state] store {} (group {:?}): the state there was written under another hiding \
             secret (id {stored}; this configuration's is {secret_id}): give both nodes the \
             same [state] secret_file, or use another group",
            settings.shown(),
            settings.group
        );
    }
    Ok(())
}

/// The store's epoch (0 when never promoted).
pub(crate) fn read_epoch(
    con: &mut Connection,
    settings: &StoreSettings,
) -> redis::RedisResult<u64> {
    let epoch: Option<u64> = redis::cmd("HGET")
        .arg(settings.meta())
        .arg("epoch")
        .query(con)?;
    Ok(epoch.unwrap_or(0))
}

/// Every record key of the group (not the meta hash or the log).
fn scan_keys(con: &mut Connection, settings: &StoreSettings) -> redis::RedisResult<Vec<String>> {
    let prefix = settings.prefix();
    let mut keys = Vec::new();
    for kind in ["b:", "d:", "ban:"] {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}{kind}*"))
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .query(con)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// Every record of the group, by key without the prefix; unreadable values are counted.
pub(crate) fn read_all(
    con: &mut Connection,
    settings: &StoreSettings,
) -> redis::RedisResult<(HashMap<String, Stored>, usize)> {
    let prefix = settings.prefix();
    let keys = scan_keys(con, settings)?;
    let mut records = HashMap::new();
    let mut unreadable = 0;
    for chunk in keys.chunks(SCAN_COUNT) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(chunk).query(con)?;
        for (key, value) in chunk.iter().zip(values) {
            // Gone (expired) between the scan and the read.
            let Some(value) = value else { continue };
            match serde_json::from_slice::<Stored>(&value) {
                Ok(s) => {
                    let short = key.strip_prefix(&prefix).unwrap_or(key).to_string();
                    records.insert(short, s);
                }
                Err(_) => unreadable += 1,
            }
        }
    }
    Ok((records, unreadable))
}

/// Records with their ages, for [`Gateway::restore_state`].
pub(crate) fn with_ages(records: impl IntoIterator<Item = Stored>) -> Vec<(StateRecord, Duration)> {
    let now_ms = wall_ms();
    records
        .into_iter()
        .map(|s| {
            let age = Duration::from_millis(now_ms.saturating_sub(s.at_ms));
            (s.record, age)
        })
        .collect()
}

/// What a restore from Redis rebuilt.
pub(crate) struct Restored {
    pub(crate) report: RestoreReport,
    pub(crate) unreadable: usize,
    pub(crate) took: Duration,
}

/// The driver's end of the Redis store.
pub(crate) struct RedisStore {
    pub(crate) settings: StoreSettings,
    pub(crate) feed: Feed,
    writer: Option<JoinHandle<()>>,
    pub(crate) status: Arc<StoreStatus>,
}

impl RedisStore {
    /// Reads the group's records from Redis into `gateway` (a start without a journal),
    /// refusing state of another secret. An unreachable Redis is an error here: the
    /// caller decides whether to start empty.
    pub(crate) fn restore(settings: &StoreSettings, gateway: &mut Gateway) -> Result<Restored> {
        let started = Instant::now();
        let mut con = connect(&settings.url)
            .with_context(|| format!("[state] store {}: cannot connect", settings.shown()))?;
        check_meta(&mut con, settings, &gateway.secret_id())?;
        let (records, unreadable) = read_all(&mut con, settings)
            .with_context(|| format!("[state] store {}: cannot read", settings.shown()))?;
        let report = gateway.restore_state(Instant::now(), with_ages(records.into_values()), 0);
        Ok(Restored {
            report,
            unreadable,
            took: started.elapsed(),
        })
    }

    /// Starts the writer. It writes nothing until the first snapshot arrives (so a
    /// standby, which feeds it nothing, never touches the store). `prune` says whether
    /// that first rewrite may delete keys the snapshot does not have: not when the
    /// state could not be read at start (the keys are kept for a later restart).
    pub(crate) fn spawn(settings: StoreSettings, secret_id: String, prune: bool) -> Result<Self> {
        let (sender, receiver) = mpsc::sync_channel(CHANNEL_RECORDS);
        let status = Arc::new(StoreStatus::default());
        let label = format!("Redis store ({})", settings.shown());
        let writer = {
            let (settings, status) = (settings.clone(), status.clone());
            std::thread::Builder::new()
                .name("redis-store".into())
                .spawn(move || {
                    Writer {
                        settings,
                        secret_id,
                        status,
                        mirror: HashMap::new(),
                        con: None,
                        prune,
                        refused: false,
                        last_try: None,
                    }
                    .run(&receiver);
                })
                .context("cannot start the Redis store writer")?
        };
        Ok(Self {
            settings,
            feed: Feed::new(sender, label),
            writer: Some(writer),
            status,
        })
    }

    /// Writes what is queued (as far as Redis answers) and stops the writer.
    pub(crate) fn close(&mut self) {
        self.feed.hang_up();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's state.
struct Writer {
    settings: StoreSettings,
    secret_id: String,
    status: Arc<StoreStatus>,
    /// The last record of every key, with its time: what a rewrite writes.
    mirror: HashMap<String, (u64, StateRecord)>,
    con: Option<Connection>,
    prune: bool,
    /// The store holds another secret's state: nothing is written there.
    refused: bool,
    last_try: Option<Instant>,
}

/// When a record stops mattering (Unix ms), for those that expire by themselves.
fn expiry_ms(at_ms: u64, record: &StateRecord) -> Option<u64> {
    match record {
        StateRecord::Binding { state: Some(b), .. } => Some(at_ms.saturating_add(b.expires_in_ms)),
        StateRecord::Ban { state: Some(b), .. } => Some(at_ms.saturating_add(b.expires_in_ms)),
        _ => None,
    }
}

impl Writer {
    fn run(mut self, receiver: &Receiver<Message>) {
        let mut started = false;
        loop {
            let first = match receiver.recv_timeout(RETRY_EVERY) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut hung_up = false;
            if let Some(first) = first {
                started |= matches!(first, Message::Snapshot(..));
                let window_ends = Instant::now() + BATCH_WINDOW;
                self.absorb(first, &mut batch);
                while batch.len() < BATCH_RECORDS {
                    match receiver
                        .recv_timeout(window_ends.saturating_duration_since(Instant::now()))
                    {
                        Ok(m) => {
                            started |= matches!(m, Message::Snapshot(..));
                            self.absorb(m, &mut batch);
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            hung_up = true;
                            break;
                        }
                    }
                }
            }
            if started && !self.refused {
                self.write(batch);
            }
            if hung_up {
                break;
            }
        }
    }

    /// Folds a message into the mirror; the keys to write are added to `batch`
    /// (`None` after a snapshot: everything is rewritten).
    fn absorb(&mut self, message: Message, batch: &mut Vec<Option<String>>) {
        match message {
            Message::Record(at, record) => {
                let key = record.key();
                if record.is_delete() {
                    self.mirror.remove(&key);
                } else {
                    self.mirror.insert(key.clone(), (at, record));
                }
                batch.push(Some(key));
            }
            Message::Snapshot(at, records) => {
                self.mirror = records.into_iter().map(|r| (r.key(), (at, r))).collect();
                // Everything is rewritten; the keys gathered so far are in it.
                self.con = None;
                batch.push(None);
            }
        }
        self.status
            .mirror_keys
            .store(self.mirror.len() as u64, Ordering::Relaxed);
    }

    /// Writes a batch, or everything after a (re)connect or a snapshot.
    fn write(&mut self, batch: Vec<Option<String>>) {
        let now_ms = wall_ms();
        self.mirror
            .retain(|_, (at, r)| !matches!(expiry_ms(*at, r), Some(e) if e <= now_ms));
        if self.con.is_none() {
            // Reconnect at most once per RETRY_EVERY; meanwhile the mirror keeps it all.
            if self.last_try.is_some_and(|t| t.elapsed() < RETRY_EVERY)
                && !batch.iter().any(Option::is_none)
            {
                self.count_unwritten(&batch);
                return;
            }
            self.last_try = Some(Instant::now());
            match self.rewrite() {
                Ok(()) => return,
                Err(e) => {
                    self.down(&e);
                    self.count_unwritten(&batch);
                    return;
                }
            }
        }
        if let Err(e) = self.write_keys(&batch) {
            self.down(&e);
            self.count_unwritten(&batch);
        }
    }

    fn count_unwritten(&self, batch: &[Option<String>]) {
        let n = batch.iter().flatten().count() as u64;
        self.status.unwritten.fetch_add(n, Ordering::Relaxed);
    }

    fn down(&mut self, e: &anyhow::Error) {
        if self.status.connected.swap(false, Ordering::Relaxed) || self.con.is_some() {
            crate::driver::say(
                &mut std::io::stderr(),
                &format!(
                    "sipward: Redis store {} unreachable ({e:#}): calls go on, records are kept \
                     here and rewritten when it answers",
                    self.settings.shown()
                ),
            );
        }
        self.status.failures.fetch_add(1, Ordering::Relaxed);
        self.con = None;
    }

    /// Adds the commands that file `key`'s mirrored record (or delete it) and log it.
    fn add_key(&self, pipe: &mut redis::Pipeline, key: &str) {
        let full = format!("{}{key}", self.settings.prefix());
        let log = pipe
            .cmd("XADD")
            .arg(self.settings.log())
            .arg("MAXLEN")
            .arg("~")
            .arg(LOG_ENTRIES)
            .arg("*")
            .arg("k")
            .arg(key);
        match self.mirror.get(key) {
            Some((at, record)) => {
                let Some(value) = crate::store::encode(*at, record.clone()) else {
                    return;
                };
                log.arg("r").arg(&value).ignore();
                let set = pipe.cmd("SET").arg(&full).arg(&value);
                if let Some(expires) = expiry_ms(*at, record) {
                    set.arg("PXAT").arg(expires);
                }
                set.ignore();
            }
            None => {
                log.ignore();
                pipe.cmd("DEL").arg(&full).ignore();
            }
        }
    }

    fn write_keys(&mut self, batch: &[Option<String>]) -> Result<()> {
        if self.status.fenced() {
            // Another node was promoted: nothing more is written from here.
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // The epoch first: a fenced node learns it with its first batch after the
        // promotion elsewhere (and the driver stops feeding it).
        pipe.cmd("HGET").arg(self.settings.meta()).arg("epoch");
        // Each key once (its last record is in the mirror), in the order they came.
        let mut seen = HashSet::new();
        let keys: Vec<&str> = batch
            .iter()
            .flatten()
            .map(String::as_str)
            .filter(|k| seen.insert(*k))
            .collect();
        for key in &keys {
            self.add_key(&mut pipe, key);
        }
        let Some(con) = self.con.as_mut() else {
            return Ok(());
        };
        let (epoch,): (Option<u64>,) = pipe.query(con)?;
        self.saw_epoch(epoch.unwrap_or(0));
        if !keys.is_empty() {
            self.status.batches.fetch_add(1, Ordering::Relaxed);
            self.status
                .records
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn saw_epoch(&self, epoch: u64) {
        self.status.seen_epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// Connects, checks the store's secret, and writes the whole mirror: stale keys
    /// deleted, every record set, and a `resync` entry on the log so that a follower
    /// reads the snapshot again.
    fn rewrite(&mut self) -> Result<()> {
        let mut con = connect(&self.settings.url)?;
        if let Err(e) = check_meta(&mut con, &self.settings, &self.secret_id) {
            crate::driver::say(
                &mut std::io::stderr(),
                &format!("sipward: {e:#}: nothing is written there"),
            );
            self.refused = true;
            return Ok(());
        }
        let mut epoch = read_epoch(&mut con, &self.settings)?;
        if self.status.own_epoch.load(Ordering::Relaxed) == 0 {
            // An active node's first connection claims the group: a node active
            // before it sees the higher epoch and steps down.
            epoch = redis::cmd("HINCRBY")
                .arg(self.settings.meta())
                .arg("epoch")
                .arg(1)
                .query(&mut con)?;
            self.status.own_epoch.store(epoch, Ordering::Relaxed);
        }
        let own = self.status.own_epoch.load(Ordering::Relaxed);
        if epoch < own {
            // The store lost its data (a restart without persistence): the epoch is put
            // back, or a node promoted next would get one that fences nobody.
            let _: () = redis::cmd("HSET")
                .arg(self.settings.meta())
                .arg("epoch")
                .arg(own)
                .query(&mut con)?;
        }
        self.saw_epoch(epoch);
        if self.status.fenced() {
            // Another node was promoted: the driver steps down; this one writes nothing.
            self.con = Some(con);
            self.status.connected.store(true, Ordering::Relaxed);
            return Ok(());
        }
        let prefix = self.settings.prefix();
        let stale: Vec<String> = if self.prune {
            scan_keys(&mut con, &self.settings)?
                .into_iter()
                .filter(|k| {
                    k.strip_prefix(&prefix)
                        .is_some_and(|short| !self.mirror.contains_key(short))
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.settings.meta())
            .arg("schema")
            .arg(SCHEMA)
            .arg("secret_id")
            .arg(&self.secret_id)
            .ignore();
        for chunk in stale.chunks(SCAN_COUNT) {
            pipe.cmd("DEL").arg(chunk).ignore();
        }
        let mut written = 0u64;
        for (key, (at, record)) in &self.mirror {
            let Some(value) = crate::store::encode(*at, record.clone()) else {
                continue;
            };
            let set = pipe.cmd("SET").arg(format!("{prefix}{key}")).arg(value);
            if let Some(expires) = expiry_ms(*at, record) {
                set.arg("PXAT").arg(expires);
            }
            set.ignore();
            written += 1;
        }
        pipe.cmd("XADD")
            .arg(self.settings.log())
            .arg("MAXLEN")
            .arg("~")
            .arg(LOG_ENTRIES)
            .arg("*")
            .arg("resync")
            .arg("1")
            .ignore();
        pipe.query::<()>(&mut con)?;
        // From now on the stale keys of a start without state may go too.
        self.prune = true;
        self.status.rewrites.fetch_add(1, Ordering::Relaxed);
        self.status.records.fetch_add(written, Ordering::Relaxed);
        self.status.unwritten.store(0, Ordering::Relaxed);
        if !self.status.connected.swap(true, Ordering::Relaxed)
            && self.status.rewrites.load(Ordering::Relaxed) > 1
        {
            crate::driver::say(
                &mut std::io::stdout(),
                &format!(
                    "sipward: Redis store {} answers again: {written} record(s) rewritten",
                    self.settings.shown()
                ),
            );
        }
        self.con = Some(con);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    /// A redis-server on a Unix socket in a temporary directory (no address bound, no
    /// persistence), killed when dropped.
    pub(crate) struct Server {
        child: Option<Child>,
        pub(crate) dir: PathBuf,
        pub(crate) url: String,
    }

    impl Server {
        pub(crate) fn start(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("sipward-redis-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("redis.sock");
            let mut server = Self {
                child: None,
                url: format!("unix://{}", socket.display()),
                dir,
            };
            server.resume();
            server
        }

        /// Starts the server (again, after [`Server::stop`]) and waits until it answers.
        pub(crate) fn resume(&mut self) {
            let socket = self.dir.join("redis.sock");
            let child = Command::new("redis-server")
                .args(["--port", "0", "--save", "", "--appendonly", "no"])
                .arg("--unixsocket")
                .arg(&socket)
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server (scripts/install-deps.sh installs it)");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while connect(&self.url).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        pub(crate) fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        pub(crate) fn con(&self) -> Connection {
            connect(&self.url).unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn gateway_under(secret: u8) -> Gateway {
        let (mut config, _) = crate::load_all(None).unwrap();
        config.secret = [secret; 16];
        Gateway::new(config)
    }

    fn settings(server: &Server) -> StoreSettings {
        StoreSettings {
            url: server.url.clone(),
            group: "edge1".into(),
        }
    }

    fn ban(source: &str, seconds: u64) -> StateRecord {
        StateRecord::Ban {
            source: source.parse().unwrap(),
            state: Some(sipward_core::records::BanState {
                reason: "test".into(),
                user: None,
                expires_in_ms: seconds * 1000,
                by_operator: true,
            }),
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn records_are_written_with_expiry_logged_and_restored_and_deletes_remove_them() {
        let server = Server::start("roundtrip");
        let settings = settings(&server);
        let mut gateway = gateway_under(7);
        let mut store = RedisStore::spawn(settings.clone(), gateway.secret_id(), true).unwrap();
        gateway.enable_state_records();
        let now = Instant::now();
        crate::store::take(&mut gateway, now, &mut [&mut store.feed]);
        // Records of the snapshot's own batch are in its rewrite, not logged one by one.
        wait_for("the first rewrite", || {
            store.status.rewrites.load(Ordering::Relaxed) == 1
        });
        let sources = ["192.0.2.1", "192.0.2.2", "192.0.2.3"];
        for s in sources {
            gateway.ban(
                s.parse().unwrap(),
                Some(Duration::from_secs(600)),
                "test",
                now,
            );
        }
        crate::store::take(&mut gateway, now, &mut [&mut store.feed]);
        gateway.unban("192.0.2.2".parse().unwrap(), now);
        crate::store::take(&mut gateway, now, &mut [&mut store.feed]);
        store.close();

        let mut con = server.con();
        let keys = scan_keys(&mut con, &settings).unwrap();
        assert_eq!(
            keys,
            vec!["sw:edge1:ban:192.0.2.1", "sw:edge1:ban:192.0.2.3"],
            "the unbanned source's key is deleted"
        );
        let ttl: i64 = redis::cmd("PTTL")
            .arg("sw:edge1:ban:192.0.2.1")
            .query(&mut con)
            .unwrap();
        assert!(
            (500_000..=600_000).contains(&ttl),
            "a ban expires with its time: {ttl} ms left"
        );
        let (schema, secret): (u32, String) = redis::cmd("HMGET")
            .arg("sw:edge1:meta")
            .arg("schema")
            .arg("secret_id")
            .query(&mut con)
            .unwrap();
        assert_eq!((schema, secret), (SCHEMA, gateway.secret_id()));
        // The log: the first snapshot's resync mark, three puts and a delete.
        let log: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(settings.log())
            .arg("-")
            .arg("+")
            .query::<Vec<(String, HashMap<String, String>)>>(&mut con)
            .unwrap();
        let kinds: Vec<String> = log
            .iter()
            .map(|(_, f)| match (f.get("resync"), f.get("k"), f.get("r")) {
                (Some(_), _, _) => "resync".to_string(),
                (_, Some(k), Some(_)) => format!("put {k}"),
                (_, Some(k), None) => format!("del {k}"),
                _ => "?".to_string(),
            })
            .collect();
        assert_eq!(kinds.first().map(String::as_str), Some("resync"));
        assert!(
            kinds.contains(&"put ban:192.0.2.3".to_string()),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&"del ban:192.0.2.2".to_string()),
            "{kinds:?}"
        );

        let mut restarted = gateway_under(7);
        let restored = RedisStore::restore(&settings, &mut restarted).unwrap();
        assert_eq!(restored.report.bans, 2);
        let refused = RedisStore::restore(&settings, &mut gateway_under(8))
            .err()
            .unwrap()
            .to_string();
        assert!(refused.contains("another hiding secret"), "{refused}");
    }

    #[test]
    fn while_redis_is_down_records_wait_in_the_mirror_and_are_rewritten_when_it_is_back() {
        let mut server = Server::start("down");
        let settings = settings(&server);
        // A key a start without state must not delete, and one the rewrite must.
        let mut store = RedisStore::spawn(settings.clone(), "id".into(), true).unwrap();
        let (at, sender) = (wall_ms(), store.feed.sender.clone().unwrap());
        sender
            .send(Message::Snapshot(at, vec![ban("192.0.2.1", 600)]))
            .unwrap();
        wait_for("the first rewrite", || {
            store.status.rewrites.load(Ordering::Relaxed) == 1
        });
        server.stop();
        sender
            .send(Message::Record(wall_ms(), ban("192.0.2.9", 600)))
            .unwrap();
        sender
            .send(Message::Record(
                wall_ms(),
                StateRecord::Ban {
                    source: "192.0.2.1".parse().unwrap(),
                    state: None,
                },
            ))
            .unwrap();
        wait_for("the failure to be counted", || {
            store.status.failures.load(Ordering::Relaxed) >= 1
                && store.status.unwritten.load(Ordering::Relaxed) >= 2
        });
        assert!(!store.status.connected.load(Ordering::Relaxed));
        assert_eq!(store.status.mirror_keys.load(Ordering::Relaxed), 1);
        let metrics = store.status.metrics(true);
        assert!(
            metrics.contains("\nsipward_store_connected 0\n")
                && metrics.contains("\nsipward_store_records_waiting 2\n"),
            "{metrics}"
        );
        // Redis comes back empty (no persistence): everything is written again.
        server.resume();
        wait_for("the rewrite after the reconnect", || {
            store.status.rewrites.load(Ordering::Relaxed) == 2
        });
        assert!(store.status.connected.load(Ordering::Relaxed));
        assert_eq!(store.status.unwritten.load(Ordering::Relaxed), 0);
        let mut con = server.con();
        let keys = scan_keys(&mut con, &settings).unwrap();
        assert_eq!(keys, vec!["sw:edge1:ban:192.0.2.9"]);
        // The epoch claimed at the first write is put back into the emptied store.
        assert_eq!(store.status.own_epoch.load(Ordering::Relaxed), 1);
        assert_eq!(read_epoch(&mut con, &settings).unwrap(), 1);
        drop(sender);
        store.close();
    }

    #[test]
    fn a_start_without_state_keeps_the_stores_keys_and_a_fenced_writer_writes_nothing() {
        let server = Server::start("fence");
        let settings = settings(&server);
        let mut con = server.con();
        let _: () = redis::cmd("SET")
            .arg("sw:edge1:ban:192.0.2.50")
            .arg("{}")
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg("sw:edge1:meta")
            .arg("epoch")
            .arg(5)
            .query(&mut con)
            .unwrap();
        let mut store = RedisStore::spawn(settings.clone(), "id".into(), false).unwrap();
        store.status.own_epoch.store(5, Ordering::Relaxed);
        let sender = store.feed.sender.clone().unwrap();
        sender
            .send(Message::Snapshot(wall_ms(), vec![ban("192.0.2.1", 600)]))
            .unwrap();
        wait_for("the first rewrite", || {
            store.status.rewrites.load(Ordering::Relaxed) == 1
        });
        assert_eq!(
            scan_keys(&mut con, &settings).unwrap(),
            vec!["sw:edge1:ban:192.0.2.1", "sw:edge1:ban:192.0.2.50"]
        );
        // Another node is promoted: the next batch learns it and writes nothing more.
        let _: () = redis::cmd("HSET")
            .arg("sw:edge1:meta")
            .arg("epoch")
            .arg(6)
            .query(&mut con)
            .unwrap();
        wait_for("the epoch to be seen", || store.status.fenced());
        sender
            .send(Message::Record(wall_ms(), ban("192.0.2.2", 600)))
            .unwrap();
        drop(sender);
        store.close();
        assert_eq!(scan_keys(&mut con, &settings).unwrap().len(), 2);
    }
}
