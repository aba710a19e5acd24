//! The standby of an active/standby pair (`[ha] role = "standby"`): a thread that reads
//! the group's records from the Redis store (SCAN), then follows its change stream
//! (`XREAD BLOCK` from the last entry seen), keeping the last record of every key. The
//! driver stays passive meanwhile; at promotion it restores this mirror.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use redis::Connection;

use crate::redis_store::{self, StoreSettings};
use crate::store::{wall_ms, Stored};

/// How long one `XREAD` waits for entries: also how soon a stop is noticed.
const BLOCK_MS: u64 = 200;
/// Entries read at once.
const READ_COUNT: usize = 1_000;
/// The wait before connecting again after an error.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the follower has, shared with the driver.
#[derive(Default)]
pub(crate) struct Followed {
    pub(crate) mirror: HashMap<String, Stored>,
    pub(crate) connected: bool,
    /// How far behind the active's writes the last read entry was (0 when caught up).
    pub(crate) lag_ms: u64,
    pub(crate) entries: u64,
    /// Full reads of the snapshot (at start, after a reconnect or a rewrite).
    pub(crate) snapshots: u64,
    /// The store's epoch as last read.
    pub(crate) epoch: u64,
    /// Why the store's state is not followed (another secret), if so.
    pub(crate) refused: Option<String>,
}

pub(crate) struct Follower {
    stop: Arc<AtomicBool>,
    pub(crate) shared: Arc<Mutex<Followed>>,
    thread: Option<JoinHandle<()>>,
}

impl Follower {
    pub(crate) fn spawn(settings: StoreSettings, secret_id: String) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Followed::default()));
        let thread = {
            let (stop, shared) = (stop.clone(), shared.clone());
            std::thread::Builder::new()
                .name("ha-follower".into())
                .spawn(move || follow(&settings, &secret_id, &stop, &shared))?
        };
        Ok(Self {
            stop,
            shared,
            thread: Some(thread),
        })
    }

    /// Stops following and hands over the mirror (the thread ends by itself within
    /// one read; the promotion does not wait for it).
    pub(crate) fn take(mut self) -> Vec<Stored> {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.thread.take());
        let mut shared = match self.shared.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::take(&mut shared.mirror).into_values().collect()
    }

    /// The store's epoch as the follower last read it.
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.shared).epoch
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let shared = match self.shared.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        serde_json::json!({
            "connected": shared.connected,
            "lag_ms": shared.lag_ms,
            "entries_applied": shared.entries,
            "snapshots_read": shared.snapshots,
            "mirror_keys": shared.mirror.len(),
            "store_epoch": shared.epoch,
            "refused": shared.refused,
        })
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn lock(shared: &Mutex<Followed>) -> std::sync::MutexGuard<'_, Followed> {
    match shared.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The follower thread: snapshot, then the stream, again after any error or `resync`.
fn follow(settings: &StoreSettings, secret_id: &str, stop: &AtomicBool, shared: &Mutex<Followed>) {
    while !stop.load(Ordering::Relaxed) {
        match follow_once(settings, secret_id, stop, shared) {
            Ok(()) => {}
            Err(e) => {
                let mut s = lock(shared);
                if s.connected {
                    crate::driver::say(
                        &mut std::io::stderr(),
                        &format!(
                            "sipward: standby: Redis store {} unreachable ({e:#}): retrying",
                            settings.shown()
                        ),
                    );
                }
                s.connected = false;
                drop(s);
                std::thread::sleep(RETRY_EVERY);
            }
        }
    }
}

/// The last entry's id of the log ("0-0" when it is empty): reading from there after
/// the snapshot misses nothing written after the snapshot began.
fn last_id(con: &mut Connection, settings: &StoreSettings) -> redis::RedisResult<String> {
    let last: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XREVRANGE")
        .arg(settings.log())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)?;
    Ok(last
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_string(), |(id, _)| id))
}

type StreamReply = Option<Vec<(String, Vec<(String, HashMap<String, Vec<u8>>)>)>>;

/// One connection's worth of following; returns to read the snapshot again.
fn follow_once(
    settings: &StoreSettings,
    secret_id: &str,
    stop: &AtomicBool,
    shared: &Mutex<Followed>,
) -> Result<()> {
    let mut con = redis_store::connect(&settings.url)?;
    if let Err(e) = redis_store::check_meta(&mut con, settings, secret_id) {
        let text = format!("{e:#}");
        let mut s = lock(shared);
        if s.refused.as_deref() != Some(&text) {
            crate::driver::say(&mut std::io::stderr(), &format!("sipward: standby: {text}"));
        }
        s.refused = Some(text);
        s.connected = true;
        drop(s);
        std::thread::sleep(RETRY_EVERY);
        return Ok(());
    }
    let mut from = last_id(&mut con, settings)?;
    let (records, _) = redis_store::read_all(&mut con, settings)?;
    let epoch = redis_store::read_epoch(&mut con, settings)?;
    {
        let mut s = lock(shared);
        s.mirror = records;
        s.connected = true;
        s.refused = None;
        s.snapshots += 1;
        s.epoch = epoch;
        s.lag_ms = 0;
    }
    while !stop.load(Ordering::Relaxed) {
        let reply: StreamReply = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(settings.log())
            .arg(&from)
            .query(&mut con)?;
        let entries = reply.into_iter().flatten().flat_map(|(_, entries)| entries);
        let mut s = lock(shared);
        let mut any = false;
        for (id, mut fields) in entries {
            any = true;
            if fields.contains_key("resync") {
                // The active rewrote everything (keys may have gone without a log entry).
                return Ok(());
            }
            if let Some(key) = fields.remove("k").and_then(|k| String::from_utf8(k).ok()) {
                match fields
                    .remove("r")
                    .and_then(|r| serde_json::from_slice::<Stored>(&r).ok())
                {
                    Some(record) => {
                        s.mirror.insert(key, record);
                    }
                    None => {
                        s.mirror.remove(&key);
                    }
                }
            }
            s.entries += 1;
            let written_ms = id
                .split('-')
                .next()
                .and_then(|ms| ms.parse::<u64>().ok())
                .unwrap_or(0);
            s.lag_ms = wall_ms().saturating_sub(written_ms);
            from = id;
        }
        if !any {
            s.lag_ms = 0;
            drop(s);
            let epoch = redis_store::read_epoch(&mut con, settings)?;
            lock(shared).epoch = epoch;
        }
    }
    Ok(())
}
