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
            let bound = match UdpSocket::bind(local) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && self.relay_caught_up() => {
                    UdpSocket::bind(local)
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
