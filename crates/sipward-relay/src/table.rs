//! What the relay knows, whichever way its sockets are waited on: the media sockets
//! ("slots"), the streams they belong to, each leg's parties, and the forwarding of what
//! a socket received to the other leg's party.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use quinn_udp::{Transmit, UdpSockRef, UdpSocketState};
use sipward_core::{LegSpec, Peer, Side, StreamCounters, StreamId};
use slab::Slab;

use crate::Reserved;

/// Tags go round below this (io_uring's `user_data` has room for 28 bits of them).
pub(crate) const TAG_LIMIT: u32 = 1 << 28;
/// Kernel receive buffer asked for each media socket.
const RECEIVE_BUFFER: usize = 1 << 20;
/// The most a train carries: UDP's 65,507-byte payload limit, with room to spare.
const MAX_TRAIN_BYTES: usize = 60_000;

/// Which of a leg's two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Rtp = 0,
    Rtcp = 1,
}

/// One media socket and whose it is.
pub(crate) struct Slot {
    /// The socket; taken (closed) when its stream closes, even while the engine still
    /// waits for the kernel to confirm it has let go of it.
    pub(crate) socket: Option<std::net::UdpSocket>,
    stream: usize,
    side: Side,
    channel: Channel,
    /// Tells this socket's completions from those of an earlier socket with the same
    /// key (io_uring).
    pub(crate) tag: u32,
    /// The stream is gone; the socket waits for its engine to let go of it (io_uring
    /// holds a pending receive on it until the cancellation completes).
    pub(crate) closing: bool,
}

/// What a read's forwarding came to, for the stream's counters.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    dropped: u64,
}

impl Tally {
    /// Writes what a batch did into the stream's shared counters (once per batch, not
    /// per packet).
    fn record(&self, counters: &StreamCounters, side: Side, now: Instant) {
        if self.packets > 0 {
            counters.record(side, self.packets, self.bytes, now);
        }
        if self.dropped > 0 {
            counters.record_drop(self.dropped);
        }
    }
}

/// Datagrams to one party sent in one GSO `sendmsg`: all of `segment` bytes except the
/// last, which may be shorter (and then ends the train).
#[derive(Default)]
struct Train {
    segment: usize,
    count: usize,
    closed: bool,
}

impl Train {
    fn fits(&self, len: usize, max: usize, bytes: usize) -> bool {
        self.count == 0
            || (!self.closed
                && len <= self.segment
                && self.count < max
                && bytes + len <= MAX_TRAIN_BYTES)
    }

    fn add(&mut self, len: usize) {
        if self.count == 0 {
            self.segment = len;
        }
        self.closed = len < self.segment;
        self.count += 1;
    }

    /// Sends the train in `data` (and empties both). `try_send`, not `send`: quinn-udp's
    /// `send` reports most failures as success (QUIC retransmits anyway), and a relay
    /// has to count them as drops.
    fn send(
        &mut self,
        state: &UdpSocketState,
        socket: &std::net::UdpSocket,
        target: SocketAddr,
        data: &mut Vec<u8>,
        tally: &mut Tally,
    ) {
        if self.count == 0 {
            return;
        }
        let transmit = Transmit {
            destination: target,
            ecn: None,
            contents: data,
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        };
        if state.try_send(UdpSockRef::from(socket), &transmit).is_ok() {
            tally.packets += self.count as u64;
            tally.bytes += data.len() as u64;
        } else if self.count > 1 {
            // The kernel may refuse a train another packet would pass (a segment larger
            // than the path MTU allows for GSO): send its datagrams one by one.
            for datagram in data.chunks(self.segment.max(1)) {
                let single = Transmit {
                    contents: datagram,
                    segment_size: None,
                    ..transmit
                };
                if state.try_send(UdpSockRef::from(socket), &single).is_ok() {
                    tally.packets += 1;
                    tally.bytes += datagram.len() as u64;
                } else {
                    tally.dropped += 1;
                }
            }
        } else {
            tally.dropped += 1;
        }
        *self = Train::default();
        data.clear();
    }
}

/// A leg's parties as the relay tracks them, latched addresses included.
#[derive(Default)]
struct Leg {
    peers: Vec<Peer>,
    /// The source a latching party was first seen sending from, per channel.
    latched: [Option<SocketAddr>; 2],
    /// Datagrams that came while the leg had no party yet (or, the call unanswered,
    /// from a source it does not accept, or with the other leg's party unknown): a far
    /// end starts sending as soon as it has sent its answer, before the gateway has read
    /// the answer and told the relay who it is. Bounded (`EARLY_PACKETS`, `EARLY_FOR`,
    /// `EARLY_MAX_LEN`, and `HELD_BYTES` for the whole table); sent on once the party is
    /// known, if they are its.
    early: Vec<Early>,
    /// `LegSpec::provisional`: unaccepted datagrams are held, not dropped.
    provisional: bool,
    /// An RTP source just latched, to report in the stream's counters.
    just_latched: Option<SocketAddr>,
}

/// A datagram held until its leg's party is known.
struct Early {
    channel: Channel,
    source: SocketAddr,
    at: Instant,
    bytes: Vec<u8>,
}

/// The most datagrams a leg holds before its party is known (both channels): a few
/// 20 ms packets cover the time the gateway takes to read an answer.
const EARLY_PACKETS: usize = 16;
/// How long a held datagram may wait for its party; older ones are dropped.
const EARLY_FOR: Duration = Duration::from_secs(1);
/// The largest datagram held (a packet on a 1500-byte path); larger ones are dropped.
const EARLY_MAX_LEN: usize = 1500;
/// The most bytes held across all streams: packets sprayed at every open port before
/// the answers cannot take more memory than this (some 6,000 audio packets).
const HELD_BYTES: usize = 1 << 20;

impl Leg {
    fn accepts(&mut self, channel: Channel, source: SocketAddr) -> bool {
        let latching = self.peers.first().is_some_and(|p| p.latch);
        let slot = match channel {
            Channel::Rtp => &mut self.latched[0],
            Channel::Rtcp => &mut self.latched[1],
        };
        if *slot == Some(source) {
            return true;
        }
        let named = self
            .peers
            .iter()
            .any(|p| address(p, channel) == Some(source));
        if latching && (slot.is_none() || named) {
            // The first source is the party's address, also when it is the one its SDP
            // names: packets for it go where it sends from. The SDP's own address takes
            // over from another latched first (a stray or late packet from elsewhere,
            // the old address after a re-INVITE moved the party).
            *slot = Some(source);
            if channel == Channel::Rtp {
                self.just_latched = Some(source);
            }
            return true;
        }
        named
    }

    /// Holds a datagram until the leg's (or the other leg's) party is known; `held`
    /// counts the bytes held across the table. Returns how many datagrams are dropped
    /// instead: held ones too old to wait on, and this one when there is no room.
    fn hold(
        &mut self,
        datagram: (Channel, SocketAddr, &[u8]),
        now: Instant,
        held: &mut usize,
    ) -> u64 {
        let (channel, source, bytes) = datagram;
        let before = self.early.len();
        self.early.retain(|e| {
            let fresh = now.saturating_duration_since(e.at) < EARLY_FOR;
            if !fresh {
                *held = held.saturating_sub(e.bytes.len());
            }
            fresh
        });
        let expired = (before - self.early.len()) as u64;
        let room = self.early.len() < EARLY_PACKETS
            && bytes.len() <= EARLY_MAX_LEN
            && *held + bytes.len() <= HELD_BYTES;
        if !room {
            return expired + 1;
        }
        *held += bytes.len();
        self.early.push(Early {
            channel,
            source,
            at: now,
            bytes: bytes.to_vec(),
        });
        expired
    }

    /// Bytes this leg holds.
    fn held_bytes(&self) -> usize {
        self.early.iter().map(|e| e.bytes.len()).sum()
    }

    /// Whether a datagram this leg does not accept is held rather than dropped: nobody
    /// is known to send on it yet, or the call is unanswered and the answer may name
    /// someone else (a fork).
    fn holds(&self) -> bool {
        self.peers.is_empty() || self.provisional
    }

    /// Where packets for this leg's party go on `channel`: where a latching party sends
    /// from once seen, else where its SDP says (none for a party behind another NAT,
    /// whose SDP address the core leaves out).
    fn destination(&self, channel: Channel) -> Option<SocketAddr> {
        let peer = self.peers.first()?;
        if !peer.latch {
            return address(peer, channel);
        }
        let latched = match channel {
            Channel::Rtp => self.latched[0],
            // Until the party's own RTCP is seen, its RTCP is taken to come from the
            // port after its RTP (RFC 3550), where it also listens.
            Channel::Rtcp => self.latched[1].or_else(|| {
                self.latched[0].map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
            }),
        };
        latched.or_else(|| address(peer, channel))
    }
}

/// Whether a datagram is held rather than sent or dropped: its leg does not accept it
/// but may soon (no party yet, or a fork may answer), or it is its party's but the other
/// leg's party is not known yet (an inbound call's far end streaming as soon as it has
/// the phone's 200, before the relay has the phone's `Set`).
fn waits(accepted: bool, has_target: bool, from_leg: &Leg, to_leg: &Leg) -> bool {
    if accepted {
        !has_target && to_leg.holds()
    } else {
        from_leg.holds()
    }
}

/// A stream's two legs: the one a packet came in on, and the other.
fn legs_mut(legs: &mut [Leg; 2], from: Side) -> (&mut Leg, &Leg) {
    let [inside, outside] = legs;
    match from {
        Side::Inside => (inside, outside),
        Side::Outside => (outside, inside),
    }
}

fn channel_of<T: Copy>(pair: &[T; 2], channel: Channel) -> T {
    match channel {
        Channel::Rtp => pair[0],
        Channel::Rtcp => pair[1],
    }
}

fn address(p: &Peer, channel: Channel) -> Option<SocketAddr> {
    match channel {
        Channel::Rtp => p.rtp,
        Channel::Rtcp => p.rtcp,
    }
}

struct Stream {
    /// Socket slots, `[side][channel]`.
    slots: [[Option<usize>; 2]; 2],
    legs: [Leg; 2],
    counters: Arc<StreamCounters>,
}

/// Where `Table::route_one` sends a datagram.
pub(crate) enum Route {
    /// From this socket to this party (counted as forwarded).
    Send(RawFd, SocketAddr),
    /// Nowhere (counted as dropped).
    Dropped,
    /// To be held until the leg's party is known: the engine hands it to
    /// `Table::forward`, which copies it out of the receive buffer.
    Hold,
}

/// A stream's socket slots, as `Table::set` opened or `Table::close` let go of them.
pub(crate) type StreamSlots = [Option<usize>; 4];

pub(crate) struct Table {
    pub(crate) slots: Slab<Slot>,
    streams: Slab<Stream>,
    by_id: HashMap<StreamId, usize>,
    /// The datagrams of the train being put together, end to end.
    train: Vec<u8>,
    /// The tag the next socket gets.
    next_tag: u32,
    /// quinn-udp's batching state, one for every media socket: it holds what the kernel
    /// can do (GSO, GRO), not anything of one socket, and making it per socket costs two
    /// probe sockets and six socket options each time (measured: most of the relay's
    /// CPU under a call storm).
    pub(crate) state: UdpSocketState,
    /// The socket `state` was made from, held for the relay's life: it has UDP GRO on,
    /// and the kernel switches its GRO code paths on and off (live-patching code on
    /// every CPU) whenever the number of such sockets goes between zero and one.
    _state_socket: std::net::UdpSocket,
    /// Sockets the driver bound for the core's pairs (`PortReservations`).
    reserved: Reserved,
    /// Bytes of datagrams held for parties not yet known, across all streams.
    held: usize,
}

impl Table {
    pub(crate) fn new(reserved: Reserved) -> io::Result<Self> {
        let mut table = Self::with_first_tag(0)?;
        table.reserved = reserved;
        Ok(table)
    }

    /// A table whose first socket gets tag `first + 1` (tests start near the limit).
    pub(crate) fn with_first_tag(first: u32) -> io::Result<Self> {
        let state_socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let state = UdpSocketState::new(UdpSockRef::from(&state_socket))?;
        Ok(Self {
            slots: Slab::new(),
            streams: Slab::new(),
            by_id: HashMap::new(),
            train: Vec::with_capacity(MAX_TRAIN_BYTES),
            next_tag: first % TAG_LIMIT,
            state,
            _state_socket: state_socket,
            reserved: Reserved::default(),
            held: 0,
        })
    }

    /// Opens a new stream's sockets, or updates a known stream's parties. Returns the
    /// slots opened, for the engine to start receiving on.
    pub(crate) fn set(
        &mut self,
        id: StreamId,
        legs: [LegSpec; 2],
        counters: Arc<StreamCounters>,
    ) -> StreamSlots {
        if let Some(&key) = self.by_id.get(&id) {
            if let Some(stream) = self.streams.get_mut(key) {
                for (leg, spec) in stream.legs.iter_mut().zip(legs) {
                    leg.provisional = spec.provisional;
                    if leg.peers != spec.peers {
                        // A new party (re-INVITE to another address, a fork answering):
                        // a latching one is latched afresh.
                        leg.peers = spec.peers;
                        leg.latched = [None, None];
                    }
                }
                for side in [Side::Inside, Side::Outside] {
                    Self::send_early(&self.slots, stream, side, &mut self.held);
                }
            }
            return [None; 4];
        }
        let key = self.streams.insert(Stream {
            slots: [[None; 2]; 2],
            legs: Default::default(),
            counters,
        });
        self.by_id.insert(id, key);
        let mut slots = [[None; 2]; 2];
        for (side, spec) in [Side::Inside, Side::Outside].into_iter().zip(&legs) {
            for channel in [Channel::Rtp, Channel::Rtcp] {
                let port = spec.local_rtp.port().saturating_add(channel as u16);
                let local = SocketAddr::new(spec.local_rtp.ip(), port);
                match self.open(local, key, side, channel) {
                    Ok(slot) => {
                        let side_slots = side.of_mut(&mut slots);
                        match channel {
                            Channel::Rtp => side_slots[0] = Some(slot),
                            Channel::Rtcp => side_slots[1] = Some(slot),
                        }
                    }
                    Err(e) => tracing::error!(%local, stream = id, "cannot open media port: {e}"),
                }
            }
        }
        if let Some(stream) = self.streams.get_mut(key) {
            stream.slots = slots;
            for (leg, spec) in stream.legs.iter_mut().zip(legs) {
                leg.peers = spec.peers;
                leg.provisional = spec.provisional;
            }
        }
        let [[a, b], [c, d]] = slots;
        [a, b, c, d]
    }

    /// Sends on what `side`'s leg held while its party was unknown (or the call
    /// unanswered), after a `Set`: what the party (or latching) accepts now goes to the
    /// other leg's party as it would have on arrival; what the leg still holds for
    /// waits on; the rest is dropped and counted.
    fn send_early(slots: &Slab<Slot>, stream: &mut Stream, side: Side, held: &mut usize) {
        let (from_leg, to_leg) = legs_mut(&mut stream.legs, side);
        if from_leg.early.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut tally = Tally::default();
        *held = held.saturating_sub(from_leg.held_bytes());
        for early in std::mem::take(&mut from_leg.early) {
            if now.saturating_duration_since(early.at) >= EARLY_FOR {
                tally.dropped += 1;
                continue;
            }
            let accepted = from_leg.accepts(early.channel, early.source);
            let target = to_leg.destination(early.channel);
            if waits(accepted, target.is_some(), from_leg, to_leg) {
                *held += early.bytes.len();
                from_leg.early.push(early);
                continue;
            }
            if !accepted {
                tally.dropped += 1;
                continue;
            }
            let out = channel_of(side.other().of(&stream.slots), early.channel)
                .and_then(|k| slots.get(k))
                .and_then(|s| s.socket.as_ref());
            match (target, out) {
                (Some(target), Some(out)) if out.send_to(&early.bytes, target).is_ok() => {
                    tally.packets += 1;
                    tally.bytes += early.bytes.len() as u64;
                }
                _ => tally.dropped += 1,
            }
        }
        tally.record(&stream.counters, side, now);
        if let Some(at) = from_leg.just_latched.take() {
            stream.counters.record_latch(side, at);
        }
    }

    fn open(
        &mut self,
        local: SocketAddr,
        stream: usize,
        side: Side,
        channel: Channel,
    ) -> io::Result<usize> {
        // A plain socket: no GRO, packet-info or TOS options, which a stream of 50
        // packets a second has no use for and which cost system calls per call.
        // The socket bound when the pair was handed out, if it was (always, under the
        // driver): binding again here could find the port taken in between.
        let reserved = self
            .reserved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&local);
        let socket = match reserved {
            Some(socket) => socket,
            None => crate::bind_media(local)?,
        };
        socket.set_nonblocking(true)?;
        // Room for a burst while the relay thread is not running (the kernel caps it at
        // net.core.rmem_max); memory is only taken by packets actually queued.
        if let Err(e) = self
            .state
            .set_recv_buffer_size(UdpSockRef::from(&socket), RECEIVE_BUFFER)
        {
            tracing::debug!(%local, "cannot enlarge the receive buffer: {e}");
        }
        self.next_tag = (self.next_tag + 1) % TAG_LIMIT;
        Ok(self.slots.insert(Slot {
            socket: Some(socket),
            stream,
            side,
            channel,
            tag: self.next_tag,
            closing: false,
        }))
    }

    /// Forgets a stream; its slots are marked closing and returned, for the engine to
    /// release (`Slab::remove`) once it no longer uses them.
    pub(crate) fn close(&mut self, id: StreamId) -> StreamSlots {
        let Some(key) = self.by_id.remove(&id) else {
            return [None; 4];
        };
        let Some(stream) = self.streams.try_remove(key) else {
            return [None; 4];
        };
        let held: usize = stream.legs.iter().map(Leg::held_bytes).sum();
        self.held = self.held.saturating_sub(held);
        let [[a, b], [c, d]] = stream.slots;
        let keys = [a, b, c, d];
        for key in keys.iter().flatten() {
            if let Some(slot) = self.slots.get_mut(*key) {
                slot.closing = true;
            }
        }
        keys
    }

    /// Where one datagram of `len` bytes received on slot `key` from `source` goes:
    /// the socket to send it from and the party, counted as forwarded; `None` (counted
    /// as a drop) when the leg does not accept it or has nowhere to send it. For an
    /// engine that sends by itself (io_uring), which takes the count back with
    /// `unsent` if the send fails.
    pub(crate) fn route_one(&mut self, key: usize, source: SocketAddr, len: usize) -> Route {
        let Some(slot) = self.slots.get(key).filter(|s| !s.closing) else {
            return Route::Dropped;
        };
        let (side, channel) = (slot.side, slot.channel);
        let Some(stream) = self.streams.get_mut(slot.stream) else {
            return Route::Dropped;
        };
        let out_slot = channel_of(side.other().of(&stream.slots), channel);
        let out = out_slot
            .and_then(|k| self.slots.get(k))
            .and_then(|s| s.socket.as_ref());
        let (from_leg, to_leg) = legs_mut(&mut stream.legs, side);
        // Accepting first: it latches a party even while the other leg has nowhere to
        // send yet.
        let accepted = from_leg.accepts(channel, source);
        let target = to_leg.destination(channel);
        if let Some(at) = from_leg.just_latched.take() {
            stream.counters.record_latch(side, at);
        }
        if waits(accepted, target.is_some(), from_leg, to_leg) {
            return Route::Hold;
        }
        match (target, out, accepted) {
            (Some(target), Some(out), true) => {
                stream.counters.record(side, 1, len as u64, Instant::now());
                Route::Send(out.as_raw_fd(), target)
            }
            _ => {
                stream.counters.record_drop(1);
                Route::Dropped
            }
        }
    }

    /// A datagram of `len` bytes `route_one` routed from slot `key` (if it is still the
    /// socket with `tag`) could not be sent: counted as dropped, not forwarded.
    pub(crate) fn unsent(&mut self, key: usize, tag: u32, len: usize) {
        // A closing slot's stream is gone, and its key may be another stream's now.
        let Some(slot) = self.slots.get(key).filter(|s| s.tag == tag && !s.closing) else {
            return;
        };
        if let Some(stream) = self.streams.get(slot.stream) {
            stream.counters.unsent(slot.side, 1, len as u64);
        }
    }

    /// Sends what one read on slot `key` brought in: each datagram (its source and
    /// bytes; `None` for one that could not be read whole) the leg accepts goes to the
    /// other leg's party. Consecutive datagrams of one size (the last may be shorter)
    /// leave in one `sendmsg` with UDP GSO, a "train": a burst on one socket (a video
    /// key frame, audio queued behind a stall) costs one system call instead of one per
    /// packet.
    pub(crate) fn forward<'a>(
        &mut self,
        key: usize,
        datagrams: impl Iterator<Item = Option<(SocketAddr, &'a [u8])>>,
    ) {
        let Some(slot) = self.slots.get(key).filter(|s| !s.closing) else {
            return;
        };
        let (side, channel, stream_key) = (slot.side, slot.channel, slot.stream);
        let Some(stream) = self.streams.get_mut(stream_key) else {
            return;
        };
        let now = Instant::now();
        let out_slot = channel_of(side.other().of(&stream.slots), channel);
        let out = out_slot
            .and_then(|k| self.slots.get(k))
            .and_then(|s| s.socket.as_ref());
        let (from_leg, to_leg) = legs_mut(&mut stream.legs, side);
        let target = to_leg.destination(channel);
        let max_segments = self.state.max_gso_segments().max(1);
        let mut tally = Tally::default();
        let mut train = Train::default();
        self.train.clear();
        for datagram in datagrams {
            let Some((source, bytes)) = datagram else {
                tally.dropped += 1;
                continue;
            };
            // Accepting comes first: it latches a party even while the other leg has
            // nowhere to send yet (both latching, the first packets of a call).
            let accepted = from_leg.accepts(channel, source);
            if waits(accepted, target.is_some(), from_leg, to_leg) {
                tally.dropped += from_leg.hold((channel, source, bytes), now, &mut self.held);
                continue;
            }
            let (Some(target), Some(out), true) = (target, out, accepted) else {
                tally.dropped += 1;
                continue;
            };
            if !train.fits(bytes.len(), max_segments, self.train.len()) {
                train.send(&self.state, out, target, &mut self.train, &mut tally);
            }
            train.add(bytes.len());
            self.train.extend_from_slice(bytes);
        }
        if let (Some(target), Some(out)) = (target, out) {
            train.send(&self.state, out, target, &mut self.train, &mut tally);
        }
        tally.record(&stream.counters, side, now);
        if let Some(at) = from_leg.just_latched.take() {
            stream.counters.record_latch(side, at);
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn source() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000))
    }

    #[test]
    fn a_leg_holds_a_bounded_number_of_small_recent_datagrams() {
        let now = Instant::now();
        let mut held = 0;
        let mut leg = Leg::default();
        let packet = [0u8; 172];
        for _ in 0..EARLY_PACKETS {
            assert_eq!(
                leg.hold((Channel::Rtp, source(), &packet), now, &mut held),
                0
            );
        }
        assert_eq!(held, EARLY_PACKETS * 172);
        // Full: the next is dropped.
        assert_eq!(
            leg.hold((Channel::Rtp, source(), &packet), now, &mut held),
            1
        );
        // Too large to hold, even with room.
        let mut other = Leg::default();
        let jumbo = vec![0u8; EARLY_MAX_LEN + 1];
        assert_eq!(
            other.hold((Channel::Rtp, source(), &jumbo), now, &mut held),
            1
        );
        // A second later the old ones expire (dropped) and make room.
        let later = now + EARLY_FOR;
        let dropped = leg.hold((Channel::Rtp, source(), &packet), later, &mut held);
        assert_eq!(dropped, EARLY_PACKETS as u64);
        assert_eq!((leg.early.len(), held), (1, 172));
    }

    #[test]
    fn the_table_holds_at_most_its_byte_budget() {
        let now = Instant::now();
        let mut held = HELD_BYTES - 100;
        let mut leg = Leg::default();
        assert_eq!(
            leg.hold((Channel::Rtp, source(), &[0; 100]), now, &mut held),
            0
        );
        assert_eq!(
            leg.hold((Channel::Rtp, source(), &[0; 1]), now, &mut held),
            1
        );
        assert_eq!(held, HELD_BYTES);
    }
}
