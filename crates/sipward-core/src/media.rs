//! Media pinholes: the relay streams each call's SDP asks for.
//!
//! For every `m=` line that crosses the gateway, [`MediaTable`] allocates a port pair
//! (RTP on an even port, RTCP on the next) on each side the gateway faces, rewrites the
//! SDP to point at the pair on the side it goes to, and remembers where each party
//! receives (its SDP address, or, for a party behind another NAT, the first source that
//! sends: latching). The forwarding itself is I/O and lives in the relay (`sipward-relay`);
//! the table tells it what to do through [`MediaCommand`]s, drained like transmits, and
//! reads back what it saw through the shared [`StreamCounters`].
//!
//! Pure like the rest of the core: time is passed in, and the idle timeout is decided
//! here from the last activity the relay recorded.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipward_proto::sdp::{Direction as SdpDirection, Sdp};
use sipward_proto::{Edits, Message};

/// Names a relayed stream for the relay.
pub type StreamId = u64;

/// A side of the gateway: index 0 faces the inside phone, 1 the outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Inside = 0,
    Outside = 1,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Inside => Side::Outside,
            Side::Outside => Side::Inside,
        }
    }

    /// This side's element of a per-side pair.
    pub fn of<T>(self, pair: &[T; 2]) -> &T {
        match self {
            Side::Inside => &pair[0],
            Side::Outside => &pair[1],
        }
    }

    pub fn of_mut<T>(self, pair: &mut [T; 2]) -> &mut T {
        match self {
            Side::Inside => &mut pair[0],
            Side::Outside => &mut pair[1],
        }
    }
}

/// When the relay may accept media from a source other than the one the SDP names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latching {
    /// Only from the address and port the SDP names.
    Off,
    /// A party whose SDP names a private address (RFC 1918, RFC 6598) outside the
    /// gateway's own networks is behind another NAT: the first source that sends to its
    /// relay port becomes its address, both ways. Everyone else: as `Off`.
    #[default]
    Nat,
    /// Every party is latched to its first source.
    Any,
}

/// Where one party of a stream receives, and so the only source accepted from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// `None` while unknown, on hold (`c=0.0.0.0`), or behind another NAT (its SDP's
    /// private address is not reachable): nothing is sent to it until it latches.
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
    /// Take the first source that sends as this party's address (and send to it from
    /// then on; before that, to `rtp`/`rtcp`).
    pub latch: bool,
}

/// A stream as a state record keeps it: both relay addresses, the parties of each side
/// by tag (the current one first), hold. Counters and the idle clock start afresh.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamState {
    pub local: [SocketAddr; 2],
    pub peers: [Vec<(Vec<u8>, PeerState)>; 2],
    pub held: [bool; 2],
    pub bypassed: bool,
}

/// A [`Peer`] in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerState {
    pub rtp: Option<SocketAddr>,
    pub rtcp: Option<SocketAddr>,
    pub latch: bool,
}

impl From<Peer> for PeerState {
    fn from(p: Peer) -> Self {
        Self {
            rtp: p.rtp,
            rtcp: p.rtcp,
            latch: p.latch,
        }
    }
}

impl From<PeerState> for Peer {
    fn from(p: PeerState) -> Self {
        Self {
            rtp: p.rtp,
            rtcp: p.rtcp,
            latch: p.latch,
        }
    }
}

/// One side of a stream as the relay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegSpec {
    /// The gateway's RTP address on this side; RTCP is on the next port.
    pub local_rtp: SocketAddr,
    /// The parties on this side: packets go to the first; any of them may send (more
    /// than one only while forked early dialogs are alive).
    pub peers: Vec<Peer>,
    /// The call is not answered yet: the answer may name a party not known so far (a
    /// fork answering, a far end streaming before its 200 is read), so datagrams from
    /// sources the leg does not accept are held briefly rather than dropped.
    pub provisional: bool,
}

/// What the relay must do.
#[derive(Debug, Clone)]
pub enum MediaCommand {
    /// Open the stream (bind its four ports) or, when it exists, update its peers.
    Set {
        id: StreamId,
        /// Indexed by [`Side`].
        legs: [LegSpec; 2],
        counters: Arc<StreamCounters>,
    },
    /// Close the stream's ports.
    Close { id: StreamId },
}

/// Per-stream counters, written by the relay and read by the core and the operator.
#[derive(Debug)]
pub struct StreamCounters {
    epoch: Instant,
    /// Packets and bytes forwarded, indexed by the [`Side`] they came from.
    packets: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
    /// Packets refused: from a source that is not the party's, or with nowhere to go.
    dropped: AtomicU64,
    /// Nanoseconds after `epoch` of the last forwarded packet, plus one (0: never).
    last: AtomicU64,
    /// The RTP source a latching party was found at, per side, as the relay reports it
    /// (so that a restored stream keeps it: no stranger can race for it), and how often
    /// that changed.
    latched: [std::sync::Mutex<Option<SocketAddr>>; 2],
    latch_changes: AtomicU64,
}

/// A copy of a stream's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub dropped: u64,
    pub last_activity: Option<Instant>,
}

impl StreamCounters {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            packets: Default::default(),
            bytes: Default::default(),
            dropped: AtomicU64::new(0),
            last: AtomicU64::new(0),
            latched: Default::default(),
            latch_changes: AtomicU64::new(0),
        }
    }

    /// The relay latched the party on `side` at `source` (RTP).
    pub fn record_latch(&self, side: Side, source: SocketAddr) {
        if let Ok(mut slot) = side.of(&self.latched).lock() {
            *slot = Some(source);
        }
        self.latch_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Where the party on `side` was latched, if it was.
    pub fn latched(&self, side: Side) -> Option<SocketAddr> {
        side.of(&self.latched).lock().ok().and_then(|slot| *slot)
    }

    /// How many latches were reported (rises with each).
    pub fn latch_changes(&self) -> u64 {
        self.latch_changes.load(Ordering::Relaxed)
    }

    /// Records `packets` forwarded packets totalling `bytes`, which came from `from`.
    pub fn record(&self, from: Side, packets: u64, bytes: u64, at: Instant) {
        if let Some(p) = Some(from.of(&self.packets)) {
            p.fetch_add(packets, Ordering::Relaxed);
        }
        if let Some(b) = Some(from.of(&self.bytes)) {
            b.fetch_add(bytes, Ordering::Relaxed);
        }
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        let since = u64::try_from(since).unwrap_or(u64::MAX - 1);
        self.last.fetch_max(since + 1, Ordering::Relaxed);
    }

    /// Takes back packets `record` counted that then could not be sent (a relay that
    /// counts a send when it queues it, io_uring's), and counts them as dropped.
    pub fn unsent(&self, from: Side, packets: u64, bytes: u64) {
        from.of(&self.packets).fetch_sub(packets, Ordering::Relaxed);
        from.of(&self.bytes).fetch_sub(bytes, Ordering::Relaxed);
        self.record_drop(packets);
    }

    pub fn record_drop(&self, packets: u64) {
        self.dropped.fetch_add(packets, Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            n => Some(crate::protect::later(
                self.epoch,
                Duration::from_nanos(n - 1),
            )),
        }
    }

    pub fn snapshot(&self) -> CounterSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            packets: [load(&self.packets[0]), load(&self.packets[1])],
            bytes: [load(&self.bytes[0]), load(&self.bytes[1])],
            dropped: load(&self.dropped),
            last_activity: self.last_activity(),
        }
    }
}

/// Why media could not be set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaError {
    /// The port pool of a side is used up (or every free pair is taken by others).
    PortsExhausted,
    /// The sockets of a pair could not be opened (out of file descriptors, say).
    SocketsUnavailable,
}

/// Why a port pair could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveError {
    /// Another socket holds one of the two ports: try another pair.
    InUse,
    /// Opening failed for a reason another pair will not cure (no file descriptors
    /// left, no memory): the call is refused.
    Unavailable,
}

/// Opens a pair's sockets (RTP on `rtp`, RTCP on the next port) when the table hands
/// the pair out, so that an SDP never names a port that is not open. The driver's
/// implementation binds them on the spot and hands them to the relay, whose `Set` then
/// uses them; tests use fakes that can fail. The core itself does no I/O.
pub trait PortReserver: Send {
    fn reserve(&mut self, rtp: SocketAddr) -> Result<(), ReserveError>;
    /// Gives back a pair that was reserved but will not be used (the call was refused
    /// after it was reserved). A pair whose stream was `Set` is closed by `Close`.
    fn release(&mut self, rtp: SocketAddr);
}

/// The reserver of a table that is not given one: every pair is free, and the relay
/// binds the sockets itself at `Set`.
#[derive(Debug, Default)]
pub struct NoReservation;

impl PortReserver for NoReservation {
    fn reserve(&mut self, _rtp: SocketAddr) -> Result<(), ReserveError> {
        Ok(())
    }

    fn release(&mut self, _rtp: SocketAddr) {}
}

/// A range of port pairs on one gateway address.
#[derive(Debug)]
struct PortPool {
    ip: IpAddr,
    /// Free even ports; first in, first out, so that a port just released (whose late
    /// packets may still be on the way) is reused last.
    free: VecDeque<u16>,
    size: usize,
}

impl PortPool {
    fn new(ip: IpAddr, low: u16, high: u16) -> Self {
        let first = low.saturating_add(low % 2);
        let free: VecDeque<u16> = (first..high).step_by(2).collect();
        Self {
            ip,
            size: free.len(),
            free,
        }
    }
}

/// A stream's state in the table.
#[derive(Debug)]
struct Stream {
    id: StreamId,
    counters: Arc<StreamCounters>,
    /// The gateway's RTP address on each side.
    local: [SocketAddr; 2],
    /// Parties on each side by the tag of the dialog end that wrote their SDP, the
    /// current one first.
    peers: [Vec<(Vec<u8>, Peer)>; 2],
    /// The side's last SDP put the stream on hold (not sendrecv, or `c=0.0.0.0`).
    held: [bool; 2],
    /// Since when the stream counts as set up (for the idle timeout).
    since: Instant,
    /// Both parties are inside and talk directly (media bypass): nothing to relay, and
    /// no idle timeout.
    bypassed: bool,
    /// The relay's latch reports already seen (`StreamCounters::latch_changes`).
    latches_seen: u64,
}

/// The media of one dialog, by `m=` line.
#[derive(Debug, Default)]
struct CallMedia {
    streams: Vec<Option<Stream>>,
    answered: Option<Instant>,
}

/// A read-only view of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamView {
    pub id: StreamId,
    /// The `m=` line it belongs to.
    pub index: usize,
    pub local: [SocketAddr; 2],
    /// The current party on each side.
    pub peers: [Option<Peer>; 2],
    pub held: bool,
    pub counters: CounterSnapshot,
}

/// How an SDP body crosses the gateway.
#[derive(Clone, Copy)]
pub struct SdpPassage<'r> {
    /// Names the dialog (the same for all its messages).
    pub call: &'r [u8],
    /// The side the SDP comes from.
    pub from: Side,
    /// The tag of the dialog end that wrote the SDP (From of a request, To of a
    /// response); several answers with different tags are forks.
    pub tag: &'r [u8],
    /// The gateway's address on each side (indexed by [`Side`]).
    pub gateway_ip: [IpAddr; 2],
    /// Whether an address is inside (must not leave).
    pub is_inside: &'r dyn Fn(IpAddr) -> bool,
}

/// The media state of every call.
pub struct MediaTable {
    pools: Vec<PortPool>,
    latching: Latching,
    /// Networks of the gateway's zones: a private address in them is not behind another NAT.
    own_networks: Vec<ipnet::IpNet>,
    calls: HashMap<Vec<u8>, CallMedia>,
    next_id: StreamId,
    commands: VecDeque<MediaCommand>,
    refused: u64,
    /// Media bypass for two inside parties (`allow_media_bypass`).
    bypass: bool,
    /// Which call and `m=` line each outside relay address belongs to: an SDP naming one
    /// of them has come back in through the outside (a hairpin call).
    owners: HashMap<SocketAddr, (Vec<u8>, usize)>,
    reserver: Box<dyn PortReserver>,
    /// Pairs skipped because another socket held a port.
    ports_skipped: u64,
}

impl std::fmt::Debug for MediaTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaTable")
            .field("pools", &self.pools)
            .field("calls", &self.calls.len())
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl MediaTable {
    /// `pools`: per gateway address, the inclusive port range to relay on. An address
    /// without a pool does not relay: SDP crossing it only has inside addresses hidden.
    pub fn new(
        pools: &[(IpAddr, u16, u16)],
        latching: Latching,
        own_networks: Vec<ipnet::IpNet>,
    ) -> Self {
        Self {
            pools: pools
                .iter()
                .map(|&(ip, low, high)| PortPool::new(ip, low, high))
                .collect(),
            latching,
            own_networks,
            calls: HashMap::new(),
            next_id: 1,
            commands: VecDeque::new(),
            refused: 0,
            bypass: false,
            owners: HashMap::new(),
            reserver: Box::new(NoReservation),
            ports_skipped: 0,
        }
    }

    /// Opens each pair's sockets through `reserver` as the pair is handed out.
    pub fn set_reserver(&mut self, reserver: Box<dyn PortReserver>) {
        self.reserver = reserver;
    }

    /// Port pairs skipped because another socket held one of their ports.
    pub fn ports_skipped(&self) -> u64 {
        self.ports_skipped
    }

    /// New options (a reload); streams and pools carry over.
    pub fn set_options(&mut self, latching: Latching, bypass: bool) {
        self.latching = latching;
        self.bypass = bypass;
    }

    /// Lets two inside parties whose call went out and came back in (through the
    /// outside proxy) send media to each other directly.
    pub fn with_bypass(mut self, bypass: bool) -> Self {
        self.bypass = bypass;
        self
    }

    /// The next instruction for the relay.
    pub fn poll_command(&mut self) -> Option<MediaCommand> {
        self.commands.pop_front()
    }

    /// Calls refused for want of ports.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Port pairs in use and available, per gateway address.
    pub fn pool_usage(&self) -> Vec<(IpAddr, usize, usize)> {
        self.pools
            .iter()
            .map(|p| (p.ip, p.size - p.free.len(), p.size))
            .collect()
    }

    /// Streams open, across all calls.
    pub fn stream_count(&self) -> usize {
        self.calls
            .values()
            .map(|c| c.streams.iter().flatten().count())
            .sum()
    }

    /// The streams of a call.
    pub fn streams(&self, call: &[u8]) -> Vec<StreamView> {
        let Some(c) = self.calls.get(call) else {
            return Vec::new();
        };
        c.streams
            .iter()
            .enumerate()
            .filter_map(|(index, s)| s.as_ref().map(|s| (index, s)))
            .map(|(index, s)| StreamView {
                id: s.id,
                index,
                local: s.local,
                peers: [
                    s.peers[0].first().map(|p| p.1),
                    s.peers[1].first().map(|p| p.1),
                ],
                held: s.held.iter().any(|&h| h),
                counters: s.counters.snapshot(),
            })
            .collect()
    }

    /// The streams of `call` as a state record keeps them (see `records`).
    pub(crate) fn snapshot(&self, call: &[u8]) -> Vec<Option<StreamState>> {
        let Some(c) = self.calls.get(call) else {
            return Vec::new();
        };
        c.streams
            .iter()
            .map(|s| {
                s.as_ref().map(|s| StreamState {
                    local: s.local,
                    peers: [Side::Inside, Side::Outside].map(|side| {
                        let latched = s.counters.latched(side);
                        side.of(&s.peers)
                            .iter()
                            .enumerate()
                            .map(|(i, (tag, peer))| {
                                let mut state = PeerState::from(*peer);
                                // The current party, found by latching: restored at
                                // the address it was found at, latched already.
                                if let (0, true, Some(at)) = (i, peer.latch, latched) {
                                    state.rtp = Some(at);
                                    state.rtcp =
                                        Some(SocketAddr::new(at.ip(), at.port().wrapping_add(1)));
                                    state.latch = false;
                                }
                                (tag.clone(), state)
                            })
                            .collect()
                    }),
                    held: s.held,
                    bypassed: s.bypassed,
                })
            })
            .collect()
    }

    /// The calls whose relay latched a party since last asked (their records must be
    /// made again, so that a restore keeps the latched address).
    pub(crate) fn newly_latched(&mut self) -> Vec<Vec<u8>> {
        let mut calls = Vec::new();
        for (call, media) in &mut self.calls {
            let mut news = false;
            for s in media.streams.iter_mut().flatten() {
                let changes = s.counters.latch_changes();
                if changes != s.latches_seen {
                    s.latches_seen = changes;
                    news = true;
                }
            }
            if news {
                calls.push(call.clone());
            }
        }
        calls
    }

    /// Takes back the streams of a restored call on the very ports they had (the
    /// phones' NATs and the far end point at them), and queues their `Set`. A port that
    /// is not in a pool any more, is in use, or cannot be opened drops that stream
    /// (false is returned; the call keeps its signalling).
    pub(crate) fn restore(
        &mut self,
        call: &[u8],
        streams: &[Option<StreamState>],
        answered: bool,
        now: Instant,
    ) -> bool {
        let mut all = true;
        let mut restored = CallMedia {
            streams: Vec::with_capacity(streams.len()),
            answered: answered.then_some(now),
        };
        for state in streams {
            let Some(state) = state else {
                restored.streams.push(None);
                continue;
            };
            match self.take_ports(state.local) {
                Some(()) => {
                    let id = self.next_id;
                    self.next_id += 1;
                    let stream = Stream {
                        id,
                        counters: Arc::new(StreamCounters::new(now)),
                        local: state.local,
                        peers: state.peers.clone().map(|side| {
                            side.into_iter()
                                .map(|(tag, peer)| (tag, Peer::from(peer)))
                                .collect()
                        }),
                        held: state.held,
                        since: now,
                        bypassed: state.bypassed,
                        latches_seen: 0,
                    };
                    self.owners.insert(
                        *Side::Outside.of(&stream.local),
                        (call.to_vec(), restored.streams.len()),
                    );
                    if !stream.bypassed {
                        queue_set(&mut self.commands, set_command(&stream, !answered));
                    }
                    restored.streams.push(Some(stream));
                }
                None => {
                    all = false;
                    restored.streams.push(None);
                }
            }
        }
        self.calls.insert(call.to_vec(), restored);
        all
    }

    /// Removes both addresses' RTP ports from their pools and opens them.
    fn take_ports(&mut self, local: [SocketAddr; 2]) -> Option<()> {
        let mut taken = Vec::with_capacity(2);
        for addr in local {
            let pool = self.pool_index(addr.ip());
            let slot = pool.and_then(|p| {
                let free = &mut self.pools.get_mut(p)?.free;
                let at = free.iter().position(|&port| port == addr.port())?;
                free.remove(at)
            });
            let opened = slot.is_some() && self.reserver.reserve(addr).is_ok();
            if !opened {
                if slot.is_some() {
                    if let Some(p) = pool {
                        self.give_back(p, addr.port());
                    }
                }
                for (p, rtp) in taken {
                    self.reserver.release(rtp);
                    self.give_back(p, rtp.port());
                }
                return None;
            }
            if let Some(p) = pool {
                taken.push((p, addr));
            }
        }
        Some(())
    }

    fn pool_index(&self, ip: IpAddr) -> Option<usize> {
        self.pools.iter().position(|p| p.ip == ip)
    }

    /// Records the edits that make `msg`'s SDP point at the relay on the side it goes
    /// to, and the SDP's author as the party on the side it comes from. Nothing is
    /// recorded when ports run out.
    pub fn rewrite_sdp(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        edits: &mut Edits,
        passage: SdpPassage<'_>,
    ) -> Result<(), MediaError> {
        let Some(sdp) = msg.sdp() else { return Ok(()) };
        let from = passage.from;
        let to = from.other();
        let pool_in = self.pool_index(*Side::Inside.of(&passage.gateway_ip));
        let pool_out = self.pool_index(*Side::Outside.of(&passage.gateway_ip));
        let (Some(pool_in), Some(pool_out)) = (pool_in, pool_out) else {
            hide_addresses(msg, edits, sdp, from, passage);
            return Ok(());
        };
        if self.bypass && from == Side::Outside {
            if let Some(plan) = self.bypass_plan(sdp, passage) {
                self.apply_bypass(msg, edits, sdp, passage, &plan);
                return Ok(());
            }
        }

        // Allocate first, so that a refusal leaves no half-made edits.
        let mut fresh: Vec<(usize, Stream)> = Vec::new();
        {
            for (index, m) in sdp.media.iter().enumerate() {
                let exists = self
                    .calls
                    .get(passage.call)
                    .and_then(|c| c.streams.get(index))
                    .is_some_and(Option::is_some);
                if m.is_declined() || exists {
                    continue;
                }
                match self.allocate(pool_in, pool_out, now) {
                    Ok(s) => fresh.push((index, s)),
                    Err(e) => {
                        for (_, s) in fresh {
                            self.unreserve(&s);
                        }
                        tracing::warn!(
                            call = %String::from_utf8_lossy(passage.call),
                            "{}: call refused",
                            match e {
                                MediaError::PortsExhausted => "media port pool exhausted",
                                MediaError::SocketsUnavailable => "media sockets cannot be opened",
                            }
                        );
                        self.refused += 1;
                        return Err(e);
                    }
                }
            }
        }
        let latching = self.latching;
        let own = self.own_networks.clone();
        let call = self.calls.entry(passage.call.to_vec()).or_default();
        for (index, s) in fresh {
            self.owners
                .insert(*Side::Outside.of(&s.local), (passage.call.to_vec(), index));
            if call.streams.len() <= index {
                call.streams.resize_with(index + 1, || None);
            }
            if let Some(slot) = call.streams.get_mut(index) {
                *slot = Some(s);
            }
        }

        let session_ip = sdp.connection.and_then(|c| c.ip);
        let mut released = Vec::new();
        let mut changed = Vec::new();
        for (index, m) in sdp.media.iter().enumerate() {
            let Some(slot) = call.streams.get_mut(index) else {
                continue;
            };
            if m.is_declined() {
                // A declined or removed stream: its ports go back to the pool.
                if let Some(s) = slot.take() {
                    released.push(s);
                }
                continue;
            }
            let Some(stream) = slot.as_mut() else {
                continue;
            };
            let ip = m.connection.and_then(|c| c.ip).or(session_ip);
            let on_hold_address = ip.is_some_and(|ip| ip.is_unspecified());
            let rtp = ip
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| SocketAddr::new(ip, m.port));
            let rtcp = match m.rtcp {
                Some(r) => {
                    r.ip.or(ip)
                        .filter(|ip| !ip.is_unspecified())
                        .map(|ip| SocketAddr::new(ip, r.port))
                }
                None => rtp.map(|a| SocketAddr::new(a.ip(), a.port().saturating_add(1))),
            };
            let behind_nat =
                ip.is_some_and(|ip| is_private(ip) && !own.iter().any(|n| n.contains(&ip)));
            let latch = match latching {
                Latching::Off => false,
                Latching::Any => true,
                Latching::Nat => behind_nat,
            };
            let peer = if latching == Latching::Nat && behind_nat {
                // Its SDP address cannot be reached from here: nothing is sent to it
                // before it has sent (and latched).
                Peer {
                    rtp: None,
                    rtcp: None,
                    latch,
                }
            } else {
                Peer { rtp, rtcp, latch }
            };
            let parties = from.of_mut(&mut stream.peers);
            parties.retain(|(tag, _)| tag.as_slice() != passage.tag);
            parties.insert(0, (passage.tag.to_vec(), peer));
            parties.truncate(MAX_FORKS);
            *from.of_mut(&mut stream.held) =
                on_hold_address || m.effective_direction(sdp.direction) != SdpDirection::SendRecv;
            changed.push(index);

            // The SDP now names the relay on the side it goes to.
            let local = *to.of(&stream.local);
            let _ = edits.replace(msg, m.port_token, local.port().to_string().as_bytes());
            if let Some(c) = m.connection {
                if !c.ip.is_some_and(|ip| ip.is_unspecified()) {
                    let _ = set_address(msg, edits, c.address, local.ip());
                }
            }
            if let Some(r) = m.rtcp {
                let port = local.port().saturating_add(1).to_string();
                let _ = edits.replace(msg, r.port_token, port.as_bytes());
                if let Some(a) = r.address {
                    let _ = set_address(msg, edits, a, local.ip());
                }
            }
        }
        let to_ip = *to.of(&passage.gateway_ip);
        if let Some(c) = sdp.connection {
            if !c.ip.is_some_and(|ip| ip.is_unspecified()) {
                let _ = set_address(msg, edits, c.address, to_ip);
            }
        }
        hide_origin(msg, edits, sdp, to_ip, passage);

        let provisional = call.answered.is_none();
        for index in changed {
            if let Some(Some(s)) = call.streams.get(index) {
                queue_set(&mut self.commands, set_command(s, provisional));
            }
        }
        for s in released {
            self.close(&s);
        }
        Ok(())
    }

    /// A 2xx answered the call: the answer's author (`tag`, on `answerer`'s side) is the
    /// party from now on, and other forks' parties are dropped.
    pub fn answered(&mut self, call: &[u8], answerer: Side, tag: &[u8], now: Instant) {
        let Some(c) = self.calls.get_mut(call) else {
            return;
        };
        let first_answer = c.answered.is_none();
        if first_answer {
            c.answered = Some(now);
            for s in c.streams.iter_mut().flatten() {
                s.since = now;
            }
        }
        for s in c.streams.iter_mut().flatten() {
            let parties = answerer.of_mut(&mut s.peers);
            let forks_dropped =
                parties.iter().any(|(t, _)| t.as_slice() == tag) && parties.len() > 1;
            if forks_dropped {
                parties.retain(|(t, _)| t.as_slice() == tag);
            }
            // The relay stops holding packets from unknown sources for a fork's answer.
            if forks_dropped || first_answer {
                queue_set(&mut self.commands, set_command(s, false));
            }
        }
    }

    /// The call ended: close its streams and return their ports.
    pub fn release(&mut self, call: &[u8]) {
        if let Some(c) = self.calls.remove(call) {
            for s in c.streams.into_iter().flatten() {
                self.close(&s);
            }
        }
    }

    /// Applies the data-channel timeout at `now`: a stream of an answered call with no
    /// packet either way for `timeout` is closed; returned are the calls none of whose
    /// streams is left, and that are not on hold (a held call may be silent until the
    /// signal timeout). The caller ends them.
    pub fn expire_idle(&mut self, now: Instant, timeout: Duration) -> Vec<Vec<u8>> {
        let mut ended = Vec::new();
        let mut closed = Vec::new();
        for (key, call) in &mut self.calls {
            if call.answered.is_none() {
                continue;
            }
            let held = call
                .streams
                .iter()
                .flatten()
                .any(|s| s.held.iter().any(|&h| h));
            if held {
                continue;
            }
            let mut any_alive = false;
            let mut any_closed = false;
            for slot in &mut call.streams {
                let Some(s) = slot else { continue };
                if s.bypassed {
                    any_alive = true;
                    continue;
                }
                let last = s
                    .counters
                    .last_activity()
                    .map_or(s.since, |l| l.max(s.since));
                if now.saturating_duration_since(last) >= timeout {
                    if let Some(s) = slot.take() {
                        closed.push(s);
                    }
                    any_closed = true;
                } else {
                    any_alive = true;
                }
            }
            if any_closed && !any_alive {
                ended.push(key.clone());
            }
        }
        for s in closed {
            self.close(&s);
        }
        ended
    }

    /// For an SDP from outside that names only relay addresses of other calls whose
    /// inside party is on the same inside address as this call's: that party, per `m=`
    /// line. Only when every live stream can go direct to one and the same host.
    fn bypass_plan(&self, sdp: &Sdp<'_>, passage: SdpPassage<'_>) -> Option<Vec<(usize, Peer)>> {
        let session_ip = sdp.connection.and_then(|c| c.ip);
        let inside_ip = *Side::Inside.of(&passage.gateway_ip);
        let mut plan = Vec::new();
        for (index, m) in sdp.media.iter().enumerate() {
            if m.is_declined() {
                continue;
            }
            let ip = m.connection.and_then(|c| c.ip).or(session_ip)?;
            let (owner, other_index) = self.owners.get(&SocketAddr::new(ip, m.port))?;
            if owner.as_slice() == passage.call {
                return None;
            }
            let other = self.calls.get(owner)?.streams.get(*other_index)?.as_ref()?;
            if Side::Inside.of(&other.local).ip() != inside_ip {
                return None;
            }
            let peer = Side::Inside.of(&other.peers).first()?.1;
            peer.rtp?;
            plan.push((index, peer));
        }
        let first = plan.first()?.1.rtp?.ip();
        plan.iter()
            .all(|(_, p)| p.rtp.is_some_and(|a| a.ip() == first))
            .then_some(plan)
    }

    /// Points the SDP at the other inside party directly and marks both calls' streams
    /// as bypassed.
    fn apply_bypass(
        &mut self,
        msg: &Message<'_>,
        edits: &mut Edits,
        sdp: &Sdp<'_>,
        passage: SdpPassage<'_>,
        plan: &[(usize, Peer)],
    ) {
        let session_ip = sdp.connection.and_then(|c| c.ip);
        for &(index, peer) in plan {
            let (Some(m), Some(rtp)) = (sdp.media.get(index), peer.rtp) else {
                continue;
            };
            let _ = edits.replace(msg, m.port_token, rtp.port().to_string().as_bytes());
            if let Some(c) = m.connection {
                let _ = set_address(msg, edits, c.address, rtp.ip());
            }
            if let Some(r) = m.rtcp {
                let rtcp = peer.rtcp.unwrap_or(rtp);
                let _ = edits.replace(msg, r.port_token, rtcp.port().to_string().as_bytes());
                if let Some(a) = r.address {
                    let _ = set_address(msg, edits, a, rtcp.ip());
                }
            }
            // The other call's stream, found by the relay address this SDP named.
            let ip = m.connection.and_then(|c| c.ip).or(session_ip);
            if let Some((owner, other_index)) =
                ip.and_then(|ip| self.owners.get(&SocketAddr::new(ip, m.port)).cloned())
            {
                if let Some(Some(s)) = self
                    .calls
                    .get_mut(&owner)
                    .and_then(|c| c.streams.get_mut(other_index))
                {
                    s.bypassed = true;
                }
            }
            if let Some(Some(s)) = self
                .calls
                .get_mut(passage.call)
                .and_then(|c| c.streams.get_mut(index))
            {
                s.bypassed = true;
            }
        }
        if let (Some(c), Some(rtp)) = (sdp.connection, plan.first().and_then(|p| p.1.rtp)) {
            let _ = set_address(msg, edits, c.address, rtp.ip());
        }
        // The call exists for this side too, so that its answer is relayed (hidden) on
        // the way out and found again on the way back.
        self.calls.entry(passage.call.to_vec()).or_default();
    }

    /// Forgets (and closes) the media of calls `keep` says no longer exist.
    pub fn retain_calls(&mut self, keep: impl Fn(&[u8]) -> bool) {
        let gone: Vec<Vec<u8>> = self.calls.keys().filter(|k| !keep(k)).cloned().collect();
        for call in gone {
            self.release(&call);
        }
    }

    /// The SDP goes on unrelayed (ports ran out on a response, which cannot be
    /// refused); inside addresses are still hidden.
    pub fn hide_only(&self, msg: &Message<'_>, edits: &mut Edits, passage: SdpPassage<'_>) {
        if let Some(sdp) = msg.sdp() {
            hide_addresses(msg, edits, sdp, passage.from, passage);
        }
    }

    fn allocate(
        &mut self,
        pool_in: usize,
        pool_out: usize,
        now: Instant,
    ) -> Result<Stream, MediaError> {
        let inside = self.reserve_pair(pool_in)?;
        let outside = match self.reserve_pair(pool_out) {
            Ok(a) => a,
            Err(e) => {
                self.reserver.release(inside);
                self.give_back(pool_in, inside.port());
                return Err(e);
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        Ok(Stream {
            id,
            counters: Arc::new(StreamCounters::new(now)),
            local: [inside, outside],
            peers: [Vec::new(), Vec::new()],
            held: [false, false],
            since: now,
            bypassed: false,
            latches_seen: 0,
        })
    }

    /// Takes the oldest free pair of `pool` whose sockets open. A pair another socket
    /// holds goes to the back of the pool (it may be free later) and the next is tried,
    /// at most once round the pool.
    fn reserve_pair(&mut self, pool: usize) -> Result<SocketAddr, MediaError> {
        let pool = self.pools.get_mut(pool).ok_or(MediaError::PortsExhausted)?;
        for _ in 0..pool.free.len() {
            let Some(port) = pool.free.pop_front() else {
                break;
            };
            let rtp = SocketAddr::new(pool.ip, port);
            match self.reserver.reserve(rtp) {
                Ok(()) => return Ok(rtp),
                Err(ReserveError::InUse) => {
                    tracing::warn!(%rtp, "media port taken by another socket: skipped");
                    self.ports_skipped += 1;
                    pool.free.push_back(port);
                }
                Err(ReserveError::Unavailable) => {
                    pool.free.push_front(port);
                    return Err(MediaError::SocketsUnavailable);
                }
            }
        }
        Err(MediaError::PortsExhausted)
    }

    fn give_back(&mut self, pool: usize, port: u16) {
        if let Some(p) = self.pools.get_mut(pool) {
            p.free.push_back(port);
        }
    }

    fn free(&mut self, s: &Stream) {
        for local in s.local {
            if let Some(i) = self.pool_index(local.ip()) {
                self.give_back(i, local.port());
            }
        }
    }

    /// Gives back the pairs of a stream that was never `Set`: their reserved sockets
    /// close here, not in the relay.
    fn unreserve(&mut self, s: &Stream) {
        for local in s.local {
            self.reserver.release(local);
        }
        self.free(s);
    }

    fn close(&mut self, s: &Stream) {
        self.owners.remove(Side::Outside.of(&s.local));
        self.commands.push_back(MediaCommand::Close { id: s.id });
        self.free(s);
    }
}

/// Forked early dialogs remembered per stream side.
const MAX_FORKS: usize = 8;

/// Queues a `Set`, in place of one for the same stream still queued (the answer's own
/// `Set` and the one that ends its provisional state leave as one).
fn queue_set(commands: &mut VecDeque<MediaCommand>, set: MediaCommand) {
    let MediaCommand::Set { id, .. } = &set else {
        commands.push_back(set);
        return;
    };
    let queued = commands
        .iter_mut()
        .find(|c| matches!(c, MediaCommand::Set { id: queued, .. } if queued == id));
    match queued {
        Some(slot) => *slot = set,
        None => commands.push_back(set),
    }
}

fn set_command(s: &Stream, provisional: bool) -> MediaCommand {
    let leg = |side: Side| LegSpec {
        local_rtp: *side.of(&s.local),
        peers: side.of(&s.peers).iter().map(|p| p.1).collect(),
        provisional,
    };
    MediaCommand::Set {
        id: s.id,
        legs: [leg(Side::Inside), leg(Side::Outside)],
        counters: s.counters.clone(),
    }
}

/// RFC 1918 and RFC 6598 (carrier-grade NAT) addresses; IPv6 unique-local.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// Without a relay: inside addresses leaving the gateway become its address on the
/// side the SDP goes to.
fn hide_addresses(
    msg: &Message<'_>,
    edits: &mut Edits,
    sdp: &Sdp<'_>,
    from: Side,
    passage: SdpPassage<'_>,
) {
    if from != Side::Inside {
        return;
    }
    let replacement = *Side::Outside.of(&passage.gateway_ip);
    for addr in sdp.addresses() {
        let inside = std::str::from_utf8(addr)
            .ok()
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(passage.is_inside);
        if inside {
            // An address the parser returned is a slice of this message outside any
            // quoted string, so the edit cannot be refused.
            let _ = set_address(msg, edits, addr, replacement);
        }
    }
}

/// Puts `ip` in place of an SDP address (`c=`, `o=`, `a=rtcp`), with the address type
/// before it changed too when the family differs: an IPv6 phone's `IN IP6` line must
/// not go out as `IN IP6 203.0.113.1`, which no parser takes (RFC 5118 section 4.9).
fn set_address(
    msg: &Message<'_>,
    edits: &mut Edits,
    address: &[u8],
    ip: IpAddr,
) -> Result<(), sipward_proto::EditError> {
    let range = msg
        .range_of(address)
        .ok_or(sipward_proto::EditError::NotInMessage)?;
    let written = match ip {
        IpAddr::V4(_) => b"IP4 ",
        IpAddr::V6(_) => b"IP6 ",
    };
    let type_at = range.start.saturating_sub(4)..range.start;
    let before = msg.as_bytes().get(type_at.clone()).unwrap_or_default();
    let is_type = before.eq_ignore_ascii_case(b"IP4 ") || before.eq_ignore_ascii_case(b"IP6 ");
    if is_type && !before.eq_ignore_ascii_case(written) {
        let text = format!("{}{ip}", String::from_utf8_lossy(written));
        return edits.replace_range(msg, type_at.start..range.end, text.as_bytes());
    }
    edits.replace_range(msg, range, ip.to_string().as_bytes())
}

/// `o=` names the author's host: an inside one is replaced.
fn hide_origin(
    msg: &Message<'_>,
    edits: &mut Edits,
    sdp: &Sdp<'_>,
    to_ip: IpAddr,
    passage: SdpPassage<'_>,
) {
    let inside = std::str::from_utf8(sdp.origin.address)
        .ok()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(passage.is_inside);
    if inside && !(passage.is_inside)(to_ip) {
        let _ = set_address(msg, edits, sdp.origin.address, to_ip);
    }
}
