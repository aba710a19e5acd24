//! The media relay: forwards RTP and RTCP between the port pairs the core opens.
//!
//! One thread (one "relay core") owns every media socket. It waits on them with one of
//! two engines: io_uring (`uring`, the default where the kernel has it), where one
//! system call brings every datagram received on any socket, or epoll (`epoll`, mio),
//! where each readable socket is drained with `recvmmsg`. Either way each datagram is
//! checked against the leg's party and sent on from the other leg's socket (`table`),
//! consecutive ones of a socket in one GSO `sendmsg`. Media sockets are plain UDP
//! sockets (no GRO, packet-info or TOS options: each costs a system call per socket, and
//! a 50-packet-a-second stream has nothing to coalesce). Buffers are allocated once;
//! nothing is allocated per packet.
//!
//! The core decides (`sipward_core::MediaCommand`); the relay only obeys: `Set` opens a
//! stream's four sockets or updates its parties, `Close` drops them (the ports close). It
//! writes what it saw into the stream's shared `StreamCounters`, which the core reads
//! for the data-channel timeout.
//!
//! # Design notes
//!
//! (Moved here from ARCHITECTURE.md, which keeps the summary.)
//!
//! `RelayHandle::spawn` starts one thread (one relay core) that owns every media socket.
//! `apply` queues `MediaCommand`s and wakes it (a byte on a socket pair). `Set` takes a
//! stream's four sockets (RTP and RTCP on each side), bound by `PortReservations` when the core
//! handed the pairs out (binding them itself only for pairs nobody reserved: the relay driven
//! without the core, in tests and bench/media), or updates its parties; `Close` drops them, so
//! the ports close at once. Datagrams arriving on a leg whose party is not known yet, or that
//! the leg does not accept while the call is unanswered (`LegSpec::provisional`: a fork may
//! answer), are held (16 per leg, at most 1 s, 1,500 bytes each and 1 MiB in all) and sent on when a `Set` names or latches their
//! source: a far end streams as soon as its 200 OK is sent, before the gateway has read it. The thread has two engines for waiting on its sockets,
//! chosen at start (`Engine`, `[relay] engine`):
//!
//! - `uring.rs` (the default where the kernel allows it, Linux 6.1+): every media socket has
//!   one multishot `recvmsg` armed on it, completed by the kernel once per datagram into a
//!   buffer it takes from a ring of 2,048 buffers the relay provides. One `io_uring_enter`
//!   returns every datagram that arrived on any socket; the epoll engine needs a wait plus
//!   one `recvmmsg` per readable socket, which with many streams (one packet per socket per
//!   wake-up) is a system call per packet. A socket's lone datagram (the common case with
//!   many streams) is sent through the ring too, from the buffer it arrived in, with the
//!   destination written over the receive header in front of it, so a wake-up with N
//!   datagrams costs one `io_uring_enter` instead of N `sendmsg`; a run of several from one
//!   socket goes through `Table::forward` (one GSO train, `sendmsg`). Sends are made with
//!   MSG_DONTWAIT, so they complete while the queue is submitted, and the relay waits for
//!   their completions plus one more event: it is woken by traffic, not by its own sends. A
//!   50 ms tick bounds how long a send's completion (a failure to count) waits when nothing
//!   else happens. bench/media, 2000 streams, batched load: relay CPU 25-30 % lower than
//!   the epoll engine at 50-125k packets/s. A socket's completions carry its slot key and a
//!   tag (a reused key is told from the old socket's late completions); a closed stream's
//!   sockets are closed and their receives cancelled, and the relay waits (one enter) for
//!   the kernel to drop its references before the next command, so the ports are free even
//!   for a stream opened on them in the same batch; the slot keys are freed when the
//!   receives' last completions are reaped. A tag is 28 bits and goes round (a key and tag
//!   pair is never reused while a completion for it can be pending). A receive ended by an
//!   unexpected error is armed again at the next tick, not in a loop; transient errors of
//!   the wait (ENOMEM, EAGAIN) are logged and waited out. A buffer holds a datagram of up
//!   to 4,052 bytes; a larger one (never RTP on a 1500-byte path) is dropped and counted,
//!   where the epoll engine takes up to 64 KiB. This is
//!   the workspace's one module with `unsafe`: the kernel writes into memory the relay hands
//!   it by address (buffer ring, buffers, the `msghdr` template), so that memory lives
//!   outside Rust's ownership until every receive has ended (`Uring::shut`, bounded; if the
//!   kernel does not confirm, the memory is leaked rather than freed under it). Reads of a
//!   buffer happen only between its completion and its return to the ring.
//! - `epoll.rs` (mio, edge-triggered): a readable socket is read with `recvmmsg` through
//!   quinn-udp (32 datagrams per call). Used where io_uring is refused (older kernels,
//!   container seccomp profiles) or configured.
//!
//! Either way (`table.rs`) each datagram is checked against the leg's parties (or latched),
//! and sent from the other leg's socket to its party. A send the kernel refuses is counted
//! as a drop (quinn-udp's `try_send`: its `send` reports most failures as success). Consecutive datagrams of
//! one size (the last may be shorter) leave together in one `sendmsg` with UDP GSO (a
//! "train", `Train` in the code): a burst on one socket, such as a video key frame or audio
//! queued behind a stall, costs one send instead of one per packet (bench/media, one stream:
//! CPU per packet 7.1 -> 3.7 us). With many streams each read brings one packet and nothing
//! can be merged. Media sockets are plain
//! UDP sockets; quinn-udp's batching state is made once for the relay (made per socket it
//! opened two probe sockets and set six options every time: under a call storm that was most
//! of the relay's CPU; sharing it cut sipward's CPU per call by a third). Buffers are
//! allocated once; per packet there is
//! no allocation, and counters are updated once per batch (`StreamCounters`, atomics shared
//! with the core, which reads last activity for the idle timeout). A short read batch ends the
//! drain (on Linux a later datagram raises a new edge), saving the read that would only say
//! "empty". `spawn_with_options` (`RelayOptions`, the `[relay]` section) places the thread:
//! pinned to a CPU (core_affinity) and under SCHED_FIFO (thread-priority), both applied by the
//! thread itself before it serves and reported back, so that a placement that cannot be had
//! fails the start. Real-time priority is what brings the tail in: without it the relay
//! shares its CPU with kernel threads in CFS slices (p99 1-20 ms at half load in bench/media,
//! about 0.1 ms with it). It can also keep polling without sleeping for a while after it
//! forwards (busy-poll, `[relay] busy_poll_us`, both engines; `busy_poll.rs`): on a virtual
//! machine a halted CPU takes tens of microseconds to wake, and polling takes the next
//! packet without that. It is off by default because it takes the core while media flows.
//! Polling stops for the rest of a 10 ms window once the thread was awake for 70 % of it: a
//! SCHED_FIFO thread that never sleeps is stopped by the kernel's real-time throttling for
//! the rest of each second (50 ms), far worse for media than a wake-up.
//!
//! Where the relay's time goes (perf, bench/results/media-profile-2026-11-27.md): forwarding,
//! about 92 % is the kernel's UDP path (with epoll, one receive and one send system call per
//! packet, as each stream's socket rarely holds more than one packet per wake-up; io_uring
//! takes the system calls away, not the UDP work, and the wake-up per packet remains when
//! packets come evenly spaced: 5-8 us of CPU per packet then, against about 4 us at the
//! highest batched rate);
//! under a call storm
//! without RTP, opening and closing the four sockets per call was about 45 % of the
//! gateway's CPU, mostly quinn-udp's per-socket probes (now made once; what is left is
//! socket, bind, one option, epoll_ctl and close per socket). Sockets are not pooled on purpose:
//! ports are handed out oldest-free-first and closed at BYE, so a stale stream never lands in
//! a new call and a probe of a finished call's port is refused.

mod busy_poll;
mod epoll;
mod table;
#[allow(unsafe_code)]
mod uring;

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use sipward_core::{MediaCommand, PortReserver, ReserveError};

use crate::table::{StreamSlots, Table};
/// How long the relay keeps polling after work before it sleeps. Zero by default: a
/// polling relay takes most of a core while media flows, for a tail that is shorter in
/// most runs of bench/media but not all (bench/results/media-2026-11-27.md).
pub const DEFAULT_SPIN: Duration = Duration::ZERO;

enum Message {
    Command(MediaCommand),
    Quit,
}

/// Where the relay thread runs and how it is scheduled (`[relay]` in the configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayOptions {
    /// After forwarding, keep polling without sleeping this long before blocking: while
    /// media flows the next packet usually comes within the window and is taken without
    /// a scheduler wake-up, at the price of a busy core. Polling stops for the rest of a
    /// 10 ms window once the thread was awake for 70 % of it, so that a real-time relay
    /// stays clear of the kernel's real-time throttling. Zero: always block.
    pub spin: Duration,
    /// Pin the thread to this CPU (a core kept for media, away from the signalling).
    pub cpu: Option<usize>,
    /// Run the thread under SCHED_FIFO at this priority (1-99), so that kernel threads
    /// and other programs' work on its CPU wait for it rather than the media (needs
    /// CAP_SYS_NICE). What rtpengine's `--scheduling=fifo --priority=N` does.
    pub realtime_priority: Option<u8>,
    /// How the relay waits on its sockets.
    pub engine: Engine,
}

/// How the relay thread waits on its media sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Engine {
    /// io_uring where the kernel allows it (Linux 6.1 or later, not refused by a
    /// seccomp profile), epoll otherwise.
    #[default]
    Auto,
    /// io_uring; the relay does not start without it.
    IoUring,
    /// epoll and `recvmmsg`, everywhere.
    Epoll,
}

/// The engine the relay thread runs with.
enum Running {
    Uring(Box<uring::Uring>),
    Epoll(epoll::Epoll),
}

impl Running {
    /// Sets up the engine asked for (in the relay thread: an io_uring ring belongs to
    /// the thread that made it).
    fn start(engine: Engine, inbox: &Inbox) -> io::Result<Self> {
        match engine {
            Engine::IoUring => Ok(Self::Uring(Box::new(uring::Uring::new()?))),
            Engine::Epoll => Ok(Self::Epoll(epoll::Epoll::new(inbox)?)),
            Engine::Auto => match uring::Uring::new() {
                Ok(u) => Ok(Self::Uring(Box::new(u))),
                Err(e) => {
                    tracing::info!("media relay: io_uring not available ({e}); using epoll");
                    Ok(Self::Epoll(epoll::Epoll::new(inbox)?))
                }
            },
        }
    }

    fn engine(&self) -> Engine {
        match self {
            Self::Uring(_) => Engine::IoUring,
            Self::Epoll(_) => Engine::Epoll,
        }
    }

    fn run(self, table: Table, inbox: Inbox, spin: Duration) {
        match self {
            Self::Uring(u) => (*u).run(table, inbox, spin),
            Self::Epoll(e) => e.run(table, inbox, spin),
        }
    }
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

/// Sockets bound for pairs the core handed out, by local address, until the relay takes
/// them at the stream's `Set`.
pub(crate) type Reserved = Arc<Mutex<HashMap<SocketAddr, UdpSocket>>>;

/// The relay's [`PortReserver`]: binds a pair's two sockets when the core hands the pair
/// out (in the driver's thread, before the SDP naming it leaves), so that a port that
/// cannot open refuses the call instead of leaving it without media. The relay thread
/// then serves exactly these sockets: nothing binds the ports a second time.
pub struct PortReservations {
    reserved: Reserved,
    running: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

/// How far the relay thread is with the commands queued for it.
#[derive(Default)]
struct Progress {
    /// Commands queued so far (by `RelayHandle::apply`).
    queued: AtomicU64,
    /// Commands the relay thread has carried out in full (a closed stream's ports
    /// are free again).
    done: AtomicU64,
}

/// How long a reservation waits for the relay to close a port it is about to close.
const CLOSE_WAIT: Duration = Duration::from_millis(200);

impl PortReservations {
    /// Waits (up to `CLOSE_WAIT`) until the relay has carried out every command queued
    /// so far; false if it has not. The driver queues a call's `Close` before it reads
    /// the next datagram, so a pair reused at once (a full pool) may still be bound by
    /// the relay: that port is about to be free, not another program's.
    fn relay_caught_up(&self) -> bool {
        let queued = self.progress.queued.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        while self.progress.done.load(Ordering::Acquire) < queued {
            if started.elapsed() >= CLOSE_WAIT || !self.running.load(Ordering::Acquire) {
                return false;
            }
            thread::sleep(Duration::from_micros(200));
        }
        true
    }
}

/// Binds one media socket at `local`. An IPv6 socket is IPv6 only (`IPV6_V6ONLY`),
/// whatever `net.ipv6.bindv6only` says: the families of a relay pair are the zones',
/// and an IPv4-mapped peer on an IPv6 port would be a third kind of address to check.
pub(crate) fn bind_media(local: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&local.into())?;
    Ok(socket.into())
}

impl PortReserver for PortReservations {
    fn reserve(&mut self, rtp: SocketAddr) -> Result<(), ReserveError> {
        if !self.running.load(Ordering::Acquire) {
            // Nobody would serve the sockets: the call is refused, not left silent.
            tracing::error!(%rtp, "media relay thread is not running: no media");
            return Err(ReserveError::Unavailable);
        }
        let rtcp_port = rtp.port().checked_add(1).ok_or(ReserveError::InUse)?;
        let rtcp = SocketAddr::new(rtp.ip(), rtcp_port);
        let bind = |local: SocketAddr| {
            let bound = match bind_media(local) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && self.relay_caught_up() => {
                    bind_media(local)
                }
                other => other,
            };
            bound.map_err(|e| {
                match e.kind() {
                    // Another socket has it (or it is a port we may not use): another
                    // pair may well open (the core logs the skip).
                    io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied => {
                        tracing::debug!(%local, "cannot open media port: {e}");
                        ReserveError::InUse
                    }
                    _ => {
                        tracing::error!(%local, "cannot open media port: {e}");
                        ReserveError::Unavailable
                    }
                }
            })
        };
        let rtp_socket = bind(rtp)?;
        let rtcp_socket = bind(rtcp)?;
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        reserved.insert(rtp, rtp_socket);
        reserved.insert(rtcp, rtcp_socket);
        Ok(())
    }

    fn release(&mut self, rtp: SocketAddr) {
        let mut reserved = self.reserved.lock().unwrap_or_else(PoisonError::into_inner);
        reserved.remove(&rtp);
        if let Some(port) = rtp.port().checked_add(1) {
            reserved.remove(&SocketAddr::new(rtp.ip(), port));
        }
    }
}

/// The handle the driver keeps: commands go in, the thread does the rest.
pub struct RelayHandle {
    sender: mpsc::Sender<Message>,
    /// A byte sent here wakes the relay thread for its commands.
    waker: UnixDatagram,
    engine: Engine,
    thread: Option<thread::JoinHandle<()>>,
    reserved: Reserved,
    /// Cleared when the relay thread ends, however it ends.
    running: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

/// Clears the flag it holds when dropped: when the relay thread returns or unwinds.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
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

    /// Starts the relay thread placed, scheduled and waiting as `options` say. Fails
    /// when that cannot be had (a CPU that does not exist, real-time scheduling without
    /// the privilege for it, io_uring asked for and refused): an operator who asked for
    /// it should know at start.
    pub fn spawn_with_options(options: RelayOptions) -> io::Result<Self> {
        let (sender, receiver) = mpsc::channel();
        let (waker, wake) = UnixDatagram::pair()?;
        waker.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let progress = Arc::new(Progress::default());
        let inbox = Inbox {
            receiver,
            wake,
            progress: progress.clone(),
            taken: Cell::new(0),
        };
        let reserved = Reserved::default();
        let table = Table::new(reserved.clone())?;
        let (started_tx, started_rx) = mpsc::sync_channel(1);
        let running = Arc::new(AtomicBool::new(true));
        let ended = ClearOnDrop(running.clone());
        let thread = thread::Builder::new()
            .name("sipward-relay".into())
            .spawn(move || {
                let _ended = ended;
                let started = place_current_thread(&options)
                    .and_then(|()| Running::start(options.engine, &inbox));
                let _ = started_tx.send(
                    started
                        .as_ref()
                        .map(Running::engine)
                        .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                );
                if let Ok(running) = started {
                    running.run(table, inbox, options.spin);
                }
            })?;
        let engine = match started_rx.recv() {
            Ok(Ok(engine)) => engine,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err(io::Error::other("the media relay thread died at start")),
        };
        Ok(Self {
            sender,
            waker,
            engine,
            thread: Some(thread),
            reserved,
            running,
            progress,
        })
    }

    /// The reserver to give the core ([`sipward_core::Gateway::set_port_reserver`]):
    /// streams `Set` on pairs it reserved are served on the sockets it bound. A `Set`
    /// on a pair nobody reserved (a relay driven without the core) binds its own.
    pub fn reservations(&self) -> PortReservations {
        PortReservations {
            reserved: self.reserved.clone(),
            running: self.running.clone(),
            progress: self.progress.clone(),
        }
    }

    /// The engine the relay runs with (`Auto` resolved).
    pub fn engine(&self) -> Engine {
        self.engine
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
            self.progress.queued.fetch_add(1, Ordering::Release);
        }
        if any {
            self.wake();
        }
    }

    fn wake(&self) {
        match self.waker.send(&[1]) {
            // A full queue already holds a wake-up the relay has yet to take.
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                tracing::error!("cannot wake the media relay: {e}");
            }
            _ => {}
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        let _ = self.sender.send(Message::Quit);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The relay thread's end of the command channel.
pub(crate) struct Inbox {
    receiver: mpsc::Receiver<Message>,
    wake: UnixDatagram,
    progress: Arc<Progress>,
    /// Commands taken from the queue so far.
    taken: Cell<u64>,
}

/// What applying one command did to the table.
pub(crate) enum Applied {
    /// A stream was set; the slots newly opened for it.
    Opened(StreamSlots),
    /// A stream was closed; its slots, now closing.
    Closed(StreamSlots),
    /// No command is waiting.
    Empty,
    Quit,
}

impl Inbox {
    /// What the engine waits on to learn of commands.
    pub(crate) fn fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Takes the wake-ups sent so far (before the commands they announce are read, so
    /// that none is missed).
    pub(crate) fn clear_wake(&self) {
        let mut byte = [0u8; 16];
        while self.wake.recv(&mut byte).is_ok() {}
    }

    /// Applies the next queued command to `table`.
    pub(crate) fn apply_next(&self, table: &mut Table) -> Applied {
        // The engine has carried out the command taken before (closed its sockets)
        // before it asks for the next.
        self.progress
            .done
            .store(self.taken.get(), Ordering::Release);
        let taken = self.receiver.try_recv();
        if let Ok(Message::Command(_)) = &taken {
            self.taken.set(self.taken.get() + 1);
        }
        match taken {
            Ok(Message::Command(MediaCommand::Set { id, legs, counters })) => {
                Applied::Opened(table.set(id, legs, counters))
            }
            Ok(Message::Command(MediaCommand::Close { id })) => Applied::Closed(table.close(id)),
            Ok(Message::Quit) | Err(mpsc::TryRecvError::Disconnected) => Applied::Quit,
            Err(mpsc::TryRecvError::Empty) => Applied::Empty,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn ipv6_media_sockets_are_ipv6_only_and_ipv4_ones_bind_as_usual() {
        let v6 = super::bind_media("[::1]:0".parse().unwrap()).unwrap();
        assert!(socket2::SockRef::from(&v6).only_v6().unwrap());
        let v4 = super::bind_media("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(v4.local_addr().unwrap().is_ipv4());
    }
}
