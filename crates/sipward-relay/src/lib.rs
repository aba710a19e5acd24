//! The media relay: forwards RTP and RTCP between the port pairs the core opens.
//!
//! One thread (one "relay core") owns every media socket and waits on them with epoll
//! (mio). A readable socket is drained in batches (`recvmmsg` through `quinn-udp`), each
//! datagram checked against the leg's party and sent on from the other leg's socket.
//! Media sockets are plain UDP sockets (no GRO, packet-info or TOS options: each costs a
//! system call per socket, and a 50-packet-a-second stream has nothing to coalesce).
//! Buffers are allocated once; nothing is allocated per packet.
//!
//! The core decides (`sipward_core::MediaCommand`); the relay only obeys: `Set` opens a
//! stream's four sockets or updates its parties, `Close` drops them (the ports close). It
//! writes what it saw into the stream's shared `StreamCounters`, which the core reads
//! for the data-channel timeout.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use quinn_udp::{EcnCodepoint, RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};
use sipward_core::{LegSpec, MediaCommand, Peer, Side, StreamCounters, StreamId};
use slab::Slab;

/// Receive buffer per batch slot: large enough for a GRO-coalesced train of datagrams.
const BUFFER: usize = 65_536;
const WAKER: Token = Token(usize::MAX);
/// How long the relay keeps polling after forwarding before it sleeps. Zero by default:
/// measured on two cores shared with the load generator, spinning took the CPU the
/// other side needed (bench/media: 130k instead of 174k packets/s with 2000 streams)
/// without bringing the 99th percentile down.
pub const DEFAULT_SPIN: Duration = Duration::ZERO;
/// Kernel receive buffer asked for each media socket.
const RECEIVE_BUFFER: usize = 1 << 20;

enum Message {
    Command(MediaCommand),
    Quit,
}

/// Where the relay thread runs and how it is scheduled (`[relay]` in the configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayOptions {
    /// After forwarding, keep polling without sleeping this long before blocking: while
    /// media flows the next packet usually comes within the window and is taken without
    /// a scheduler wake-up, at the price of a busy core. Zero: always block.
    pub spin: Duration,
    /// Pin the thread to this CPU (a core kept for media, away from the signalling).
    pub cpu: Option<usize>,
    /// Run the thread under SCHED_FIFO at this priority (1-99), so that kernel threads
    /// and other programs' work on its CPU wait for it rather than the media (needs
    /// CAP_SYS_NICE). What rtpengine's `--scheduling=fifo --priority=N` does.
    pub realtime_priority: Option<u8>,
}

fn place_current_thread(options: &RelayOptions) -> io::Result<()> {
    if let Some(cpu) = options.cpu {
        // The affinity mask has room for 1024 CPUs; a larger number is refused here
        // rather than handed to it.
        if cpu >= 1024 || !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            return Err(io::Error::other(format!(
                "cannot pin the media relay to CPU {cpu} (is it online?)"
            )));
        }
    }
    if let Some(priority) = options.realtime_priority {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, RealtimeThreadSchedulePolicy,
            ThreadPriority, ThreadPriorityValue, ThreadSchedulePolicy,
        };
        let value = ThreadPriorityValue::try_from(priority)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Crossplatform(value),
            ThreadSchedulePolicy::Realtime(RealtimeThreadSchedulePolicy::Fifo),
        )
        .map_err(|e| {
            io::Error::other(format!(
                "cannot run the media relay at real-time priority {priority} ({e:?}; needs CAP_SYS_NICE)"
            ))
        })?;
    }
    Ok(())
}

/// The handle the driver keeps: commands go in, the thread does the rest.
pub struct RelayHandle {
    sender: mpsc::Sender<Message>,
    waker: Arc<Waker>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RelayHandle {
    /// Starts the relay thread with the default busy-poll window.
    pub fn spawn() -> io::Result<Self> {
        Self::spawn_with(DEFAULT_SPIN)
    }

    /// Starts the relay thread with a busy-poll window of `spin` and no placement.
    pub fn spawn_with(spin: Duration) -> io::Result<Self> {
        Self::spawn_with_options(RelayOptions {
            spin,
            ..RelayOptions::default()
        })
    }

    /// Starts the relay thread placed and scheduled as `options` say. Fails when the
    /// placement cannot be had (a CPU that does not exist, real-time scheduling without
    /// the privilege for it): an operator who asked for it should know at start.
    pub fn spawn_with_options(options: RelayOptions) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (sender, receiver) = mpsc::channel();
        let relay = Relay::new(poll, receiver)?;
        let (placed_tx, placed_rx) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name("sipward-relay".into())
            .spawn(move || {
                let placed = place_current_thread(&options);
                let ok = placed.is_ok();
                let _ = placed_tx.send(placed);
                if ok {
                    relay.run(options.spin);
                }
            })?;
        match placed_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(io::Error::other("the media relay thread died at start")),
        }
        Ok(Self {
            sender,
            waker,
            thread: Some(thread),
        })
    }

    /// Queues commands for the relay and wakes it once.
    pub fn apply(&self, commands: impl IntoIterator<Item = MediaCommand>) {
        let mut any = false;
        for c in commands {
            any = true;
            if self.sender.send(Message::Command(c)).is_err() {
                tracing::error!("media relay thread is gone");
                return;
            }
        }
        if any {
            if let Err(e) = self.waker.wake() {
                tracing::error!("cannot wake the media relay: {e}");
            }
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        let _ = self.sender.send(Message::Quit);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which of a leg's two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    Rtp = 0,
    Rtcp = 1,
}

struct Slot {
    socket: UdpSocket,
    stream: usize,
    side: Side,
    channel: Channel,
}

/// What a read's forwarding came to, for the stream's counters.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    dropped: u64,
}

/// The most a train carries: UDP's 65,507-byte payload limit, with room to spare.
const MAX_TRAIN_BYTES: usize = 60_000;

/// Datagrams to one party sent in one GSO `sendmsg`: all of `segment` bytes except the
/// last, which may be shorter (and then ends the train), all with the same ECN marks.
#[derive(Default)]
struct Train {
    segment: usize,
    count: usize,
    ecn: Option<EcnCodepoint>,
    closed: bool,
}

impl Train {
    fn fits(&self, len: usize, ecn: Option<EcnCodepoint>, max: usize, bytes: usize) -> bool {
        self.count == 0
            || (!self.closed
                && ecn == self.ecn
                && len <= self.segment
                && self.count < max
                && bytes + len <= MAX_TRAIN_BYTES)
    }

    fn add(&mut self, len: usize, ecn: Option<EcnCodepoint>) {
        if self.count == 0 {
            self.segment = len;
            self.ecn = ecn;
        }
        self.closed = len < self.segment;
        self.count += 1;
    }

    /// Sends the train in `data` (and empties both).
    fn send(
        &mut self,
        state: &UdpSocketState,
        socket: &UdpSocket,
        target: SocketAddr,
        data: &mut Vec<u8>,
        tally: &mut Tally,
    ) {
        if self.count == 0 {
            return;
        }
        let transmit = Transmit {
            destination: target,
            ecn: self.ecn,
            contents: data,
            segment_size: (self.count > 1).then_some(self.segment),
            src_ip: None,
        };
        if state.send(UdpSockRef::from(socket), &transmit).is_ok() {
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
                if state.send(UdpSockRef::from(socket), &single).is_ok() {
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
}

impl Leg {
    fn accepts(&mut self, channel: Channel, source: SocketAddr) -> bool {
        if channel_of(&self.latched, channel) == Some(source) {
            return true;
        }
        let named = self
            .peers
            .iter()
            .any(|p| address(p, channel) == Some(source));
        if named {
            return true;
        }
        let latching = self.peers.first().is_some_and(|p| p.latch);
        if latching {
            let slot = match channel {
                Channel::Rtp => &mut self.latched[0],
                Channel::Rtcp => &mut self.latched[1],
            };
            if slot.is_none() {
                *slot = Some(source);
                return true;
            }
        }
        false
    }

    /// Where packets for this leg's party go on `channel`.
    fn destination(&self, channel: Channel) -> Option<SocketAddr> {
        let peer = self.peers.first()?;
        if !peer.latch {
            return address(peer, channel);
        }
        match channel {
            Channel::Rtp => self.latched[0],
            // Until the party's own RTCP is seen, its RTCP is taken to come from the
            // port after its RTP (RFC 3550), where it also listens.
            Channel::Rtcp => self.latched[1].or_else(|| {
                self.latched[0].map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
            }),
        }
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

struct Relay {
    poll: Poll,
    receiver: mpsc::Receiver<Message>,
    slots: Slab<Slot>,
    streams: Slab<Stream>,
    by_id: HashMap<StreamId, usize>,
    /// `BATCH_SIZE` receive buffers of `BUFFER` bytes, end to end.
    buffers: Vec<u8>,
    /// The datagrams of the train being put together, end to end.
    train: Vec<u8>,
    /// quinn-udp's batching state, one for every media socket: it holds what the kernel
    /// can do (GSO, GRO), not anything of one socket, and making it per socket costs two
    /// probe sockets and six socket options each time (measured: most of the relay's
    /// CPU under a call storm).
    state: UdpSocketState,
    /// The socket `state` was made from, held for the relay's life: it has UDP GRO on,
    /// and the kernel switches its GRO code paths on and off (live-patching code on
    /// every CPU) whenever the number of such sockets goes between zero and one.
    _state_socket: std::net::UdpSocket,
}

impl Relay {
    fn new(poll: Poll, receiver: mpsc::Receiver<Message>) -> io::Result<Self> {
        let state_socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let state = UdpSocketState::new(UdpSockRef::from(&state_socket))?;
        Ok(Self {
            poll,
            receiver,
            slots: Slab::new(),
            streams: Slab::new(),
            by_id: HashMap::new(),
            buffers: vec![0u8; BATCH_SIZE * BUFFER],
            train: Vec::with_capacity(MAX_TRAIN_BYTES),
            state,
            _state_socket: state_socket,
        })
    }

    fn run(mut self, spin: Duration) {
        let mut events = Events::with_capacity(1024);
        let mut last_work: Option<Instant> = None;
        loop {
            let spinning = last_work.is_some_and(|t| t.elapsed() < spin);
            let timeout = spinning.then_some(Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("media relay poll failed: {e}");
                return;
            }
            if events.is_empty() {
                if !spinning {
                    last_work = None;
                }
                continue;
            }
            last_work = (!spin.is_zero()).then(Instant::now);
            for event in &events {
                if event.token() == WAKER {
                    if !self.take_commands() {
                        return;
                    }
                } else {
                    self.drain(event.token().0);
                }
            }
        }
    }

    /// Applies queued commands; false when told to quit.
    fn take_commands(&mut self) -> bool {
        loop {
            match self.receiver.try_recv() {
                Ok(Message::Command(MediaCommand::Set { id, legs, counters })) => {
                    self.set(id, legs, counters);
                }
                Ok(Message::Command(MediaCommand::Close { id })) => self.close(id),
                Ok(Message::Quit) | Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => return true,
            }
        }
    }

    fn set(&mut self, id: StreamId, legs: [LegSpec; 2], counters: Arc<StreamCounters>) {
        if let Some(&key) = self.by_id.get(&id) {
            if let Some(stream) = self.streams.get_mut(key) {
                for (leg, spec) in stream.legs.iter_mut().zip(legs) {
                    if leg.peers != spec.peers {
                        // A new party (re-INVITE to another address, a fork answering):
                        // a latching one is latched afresh.
                        leg.peers = spec.peers;
                        leg.latched = [None, None];
                    }
                }
            }
            return;
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
            }
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
        let std_socket = std::net::UdpSocket::bind(local)?;
        std_socket.set_nonblocking(true)?;
        // Room for a burst while the relay thread is not running (the kernel caps it at
        // net.core.rmem_max); memory is only taken by packets actually queued.
        if let Err(e) = self
            .state
            .set_recv_buffer_size(UdpSockRef::from(&std_socket), RECEIVE_BUFFER)
        {
            tracing::debug!(%local, "cannot enlarge the receive buffer: {e}");
        }
        let mut socket = UdpSocket::from_std(std_socket);
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        self.poll
            .registry()
            .register(&mut socket, Token(key), Interest::READABLE)?;
        entry.insert(Slot {
            socket,
            stream,
            side,
            channel,
        });
        Ok(key)
    }

    fn close(&mut self, id: StreamId) {
        let Some(key) = self.by_id.remove(&id) else {
            return;
        };
        let Some(stream) = self.streams.try_remove(key) else {
            return;
        };
        // Closing a socket takes it out of epoll: no deregistration call needed.
        for slot in stream.slots.iter().flatten().flatten() {
            self.slots.try_remove(*slot);
        }
    }

    /// Reads a readable socket until it would block, forwarding what is acceptable.
    fn drain(&mut self, key: usize) {
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        loop {
            let Some(slot) = self.slots.get(key) else {
                return;
            };
            let mut chunks = self.buffers.chunks_mut(BUFFER);
            let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let received = self
                .state
                .recv(UdpSockRef::from(&slot.socket), &mut bufs, &mut meta);
            let count = match received {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors from an earlier send (port unreachable) surface here;
                    // they do not stop the socket.
                    tracing::debug!("media receive: {e}");
                    continue;
                }
            };
            self.forward(key, &meta, count);
            // A short batch emptied the queue. Stopping here saves the read that would
            // only say so: on Linux every datagram that arrives later raises a new
            // edge, so nothing is left unnoticed.
            if count < BATCH_SIZE {
                return;
            }
        }
    }

    /// Sends what one read brought in: each datagram the leg accepts goes to the other
    /// leg's party. Consecutive datagrams of one size (the last may be shorter) leave in
    /// one `sendmsg` with UDP GSO, a "train": a burst on one socket (a video key frame,
    /// audio queued behind a stall) costs one system call instead of one per packet.
    fn forward(&mut self, key: usize, meta: &[RecvMeta], count: usize) {
        let Some(slot) = self.slots.get(key) else {
            return;
        };
        let (side, channel, stream_key) = (slot.side, slot.channel, slot.stream);
        let Some(stream) = self.streams.get_mut(stream_key) else {
            return;
        };
        let now = Instant::now();
        let out_slot = channel_of(side.other().of(&stream.slots), channel);
        let out = out_slot.and_then(|k| self.slots.get(k));
        let (from_leg, to_leg) = legs_mut(&mut stream.legs, side);
        let target = to_leg.destination(channel);
        let max_segments = self.state.max_gso_segments().max(1);
        let mut tally = Tally::default();
        let mut train = Train::default();
        self.train.clear();
        for (m, buf) in meta.iter().zip(self.buffers.chunks(BUFFER)).take(count) {
            let accepted = from_leg.accepts(channel, m.addr);
            let Some(contents) = buf.get(..m.len) else {
                tally.dropped += 1;
                continue;
            };
            for datagram in contents.chunks(m.stride.max(1)) {
                let (Some(target), Some(out), true) = (target, out, accepted) else {
                    tally.dropped += 1;
                    continue;
                };
                if !train.fits(datagram.len(), m.ecn, max_segments, self.train.len()) {
                    train.send(
                        &self.state,
                        &out.socket,
                        target,
                        &mut self.train,
                        &mut tally,
                    );
                }
                train.add(datagram.len(), m.ecn);
                self.train.extend_from_slice(datagram);
            }
        }
        if let (Some(target), Some(out)) = (target, out) {
            train.send(
                &self.state,
                &out.socket,
                target,
                &mut self.train,
                &mut tally,
            );
        }
        if tally.packets > 0 {
            stream
                .counters
                .record(side, tally.packets, tally.bytes, now);
        }
        if tally.dropped > 0 {
            stream.counters.record_drop(tally.dropped);
        }
    }
}
