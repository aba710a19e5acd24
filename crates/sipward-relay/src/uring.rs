//! The io_uring engine (Linux 6.1 or later): every media socket has one multishot
//! `recvmsg` armed on it, which the kernel completes once per datagram into a buffer of
//! its choosing from a ring of buffers the relay provides. One `io_uring_enter` then
//! hands the relay every datagram that arrived on any socket since the last, where the
//! epoll engine needs a wait plus one `recvmmsg` per readable socket: with many streams,
//! each of which has one packet at a time, that is one system call per packet less.
//!
//! This is the one module of sipward with `unsafe` code: the kernel writes into memory
//! the relay hands it by address (the buffer ring and its buffers, the `msghdr` template
//! every receive reads), so that memory is allocated here, outside Rust's ownership, and
//! lives until the kernel has let go of every receive (see `Drop`). Each `unsafe` block
//! says what it relies on.

use std::alloc::{self, Layout};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use crate::busy_poll::BusyPoll;
use crate::table::{Route, StreamSlots, Table, TAG_LIMIT};
use crate::{Applied, Inbox};

/// Buffers in the ring (a power of two, at most 32,768): room for this many datagrams
/// received and not yet forwarded, across all sockets.
const BUFFERS: u16 = 2048;
/// One buffer: the kernel's header, the source address, and a datagram of up to
/// 4,052 bytes (a larger one is counted as dropped; the epoll engine takes up to 64 KiB).
const BUFFER_SIZE: usize = 4096;
const BUFFER_GROUP: u16 = 0;
/// Submission queue entries; the completion queue has room for a ring's worth of
/// datagrams and more.
const SUBMISSIONS: u32 = 1024;
const COMPLETIONS: u32 = 8 * BUFFERS as u32;

/// `user_data` of a completion: the slot key in the low 32 bits, the slot's tag above
/// it (a slot key is reused; the tag tells a late completion of the socket that had
/// the key before from one of the current socket), and two marks.
const KEY_BITS: u32 = 32;
const TAG_MASK: u64 = TAG_LIMIT as u64 - 1;
/// The relay's tick.
const TICK: u64 = 1 << 60;
/// How often the relay wakes when nothing else wakes it: a send's completion (a
/// failure to count) is otherwise only taken with the next datagram or command.
const TICK_EVERY: Timespec = Timespec::new().nsec(50_000_000);
/// A send from buffer `user_data & 0xffff`.
const SEND: u64 = 1 << 61;
const WAKE: u64 = 1 << 62;
const CANCEL: u64 = 1 << 63;

fn user_data(key: usize, tag: u32) -> u64 {
    (key as u64 & u64::from(u32::MAX)) | ((u64::from(tag) & TAG_MASK) << KEY_BITS)
}

fn key_and_tag(data: u64) -> (usize, u32) {
    let key = (data & u64::from(u32::MAX)) as usize;
    let tag = ((data >> KEY_BITS) & TAG_MASK) as u32;
    (key, tag)
}

/// The buffers the kernel receives into, and the ring through which the relay gives
/// them (back) to it.
struct ProvidedBuffers {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    memory: *mut u8,
    memory_layout: Layout,
    /// Entries written so far (wrapping); the kernel sees them once published.
    tail: u16,
}

impl ProvidedBuffers {
    fn new() -> io::Result<Self> {
        let entries = usize::from(BUFFERS);
        let ring_layout = Layout::from_size_align(entries * size_of::<BufRingEntry>(), 4096)
            .map_err(io::Error::other)?;
        let memory_layout =
            Layout::from_size_align(entries * BUFFER_SIZE, 64).map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size.
        let ring = unsafe { alloc::alloc_zeroed(ring_layout) }.cast::<BufRingEntry>();
        // SAFETY: as above.
        let memory = unsafe { alloc::alloc_zeroed(memory_layout) };
        if ring.is_null() || memory.is_null() {
            // SAFETY: each pointer freed is one just allocated with that layout.
            unsafe {
                if !ring.is_null() {
                    alloc::dealloc(ring.cast(), ring_layout);
                }
                if !memory.is_null() {
                    alloc::dealloc(memory, memory_layout);
                }
            }
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut buffers = Self {
            ring,
            ring_layout,
            memory,
            memory_layout,
            tail: 0,
        };
        for id in 0..BUFFERS {
            buffers.give(id);
        }
        buffers.publish();
        Ok(buffers)
    }

    /// Writes buffer `id` into the next ring entry (not yet visible to the kernel).
    fn give(&mut self, id: u16) {
        let index = usize::from(self.tail & (BUFFERS - 1));
        // SAFETY: `index` is below BUFFERS, the number of entries allocated, and `id`
        // below BUFFERS, the number of buffers; the entry is past the published tail,
        // so the kernel does not read it now.
        unsafe {
            let entry = &mut *self.ring.add(index);
            entry.set_addr(self.memory.add(usize::from(id) * BUFFER_SIZE) as u64);
            entry.set_len(BUFFER_SIZE as u32);
            entry.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the entries written so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field lies in the first entry, which is allocated, aligned
        // for a u16, and shared with the kernel only through atomic accesses.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `id`, which the kernel has completed a receive
    /// into and which has not been given back since.
    fn filled(&self, id: u16, len: usize) -> Option<&[u8]> {
        if id >= BUFFERS {
            return None;
        }
        // SAFETY: the buffer lies inside the allocation; the kernel does not write into
        // a buffer between completing a receive into it and the relay giving it back
        // (`give`), which needs `&mut self` and so cannot happen while this borrow lives.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.memory.add(usize::from(id) * BUFFER_SIZE),
                len.min(BUFFER_SIZE),
            )
        })
    }
}

impl ProvidedBuffers {
    /// Where buffer `id` starts, for a send the kernel reads from it. The buffer must be
    /// one the kernel has completed a receive into and not been given back.
    fn start(&self, id: u16) -> Option<*mut u8> {
        // SAFETY: `id` is below BUFFERS, so the offset stays inside the allocation.
        (id < BUFFERS).then(|| unsafe { self.memory.add(usize::from(id) * BUFFER_SIZE) })
    }

    /// Writes `bytes` at the start of buffer `id` (over the receive's header, which has
    /// been read), for the send that follows.
    fn write_head(&mut self, id: u16, bytes: &[u8]) -> Option<*mut u8> {
        let start = self.start(id)?;
        if bytes.len() > HEADER + NAME_ROOM {
            return None;
        }
        // SAFETY: the range lies inside buffer `id`, which the kernel does not touch
        // between the completion of its receive and its return to the ring.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), start, bytes.len()) };
        Some(start)
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts; `Uring` drops this after the
        // ring is closed (field order), and `Uring::shut` first waits for every receive
        // and send to end, or leaks the buffers if the kernel does not confirm.
        unsafe {
            alloc::dealloc(self.ring.cast(), self.ring_layout);
            alloc::dealloc(self.memory, self.memory_layout);
        }
    }
}

/// What became of a datagram `send_one` was given.
#[derive(Clone, Copy)]
enum OneSend {
    /// A send reads from this buffer until it completes.
    Queued(u16),
    /// Dropped (and counted) or not sendable; the buffer can go back.
    Handled,
    /// Left to `Table::forward` (a datagram that did not arrive whole, say).
    NotTried,
}

/// What one completion said, copied out of the completion queue.
#[derive(Clone, Copy)]
struct Completion {
    user_data: u64,
    result: i32,
    flags: u32,
}

pub(crate) struct Uring {
    // Field order matters: the ring is closed before the memory it used is freed.
    ring: IoUring,
    buffers: Option<ProvidedBuffers>,
    /// The `msghdr` every receive is made with: it only says how much room the source
    /// address gets (and that there is none for control messages).
    template: Box<libc::msghdr>,
    /// The tick's period, read by the kernel when a tick is armed.
    tick: Box<Timespec>,
    /// Receives armed and not yet ended.
    armed: usize,
    /// Sends queued and not yet completed (each holds a buffer).
    sending: usize,
    /// Sends queued since the relay last waited.
    queued_sends: usize,
    /// Per buffer, the receiving socket (`user_data`) and length of the send reading
    /// from it.
    send_owner: Vec<(u64, usize)>,
    completions: Vec<Completion>,
    /// Sockets whose receive ended and is to be armed again.
    rearm: Vec<usize>,
    /// Receives (`user_data`) whose cancellation is to be asked again.
    recancel: Vec<u64>,
    /// Sockets to arm after the next wait (arming failed).
    rearm_later: Vec<usize>,
    /// Sockets to arm at the next tick (their receive ended in an error).
    rearm_on_tick: Vec<usize>,
    /// The tick could not be set again; tried after the next wait.
    tick_lost: bool,
}

impl Uring {
    /// Sets up the ring; fails on a kernel (or seccomp profile) without what it needs.
    pub(crate) fn new() -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(COMPLETIONS)
            .build(SUBMISSIONS)?;
        let buffers = ProvidedBuffers::new()?;
        // SAFETY: the buffer ring stays allocated until after the ring is closed
        // (field order of `Uring`, and `Drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.ring as u64,
                BUFFERS,
                BUFFER_GROUP,
                0,
            )?;
        }
        // SAFETY: msghdr is plain data (integers and pointers), for which all zero bytes
        // is a valid value: no name, no iovec, no control buffer.
        let mut template: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        template.msg_namelen = NAME_ROOM as u32;
        Ok(Self {
            ring,
            buffers: Some(buffers),
            template,
            tick: Box::new(TICK_EVERY),
            armed: 0,
            sending: 0,
            queued_sends: 0,
            send_owner: vec![(0, 0); usize::from(BUFFERS)],
            completions: Vec::with_capacity(COMPLETIONS as usize),
            rearm: Vec::new(),
            recancel: Vec::new(),
            rearm_later: Vec::new(),
            rearm_on_tick: Vec::new(),
            tick_lost: false,
        })
    }

    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: what the entries point at (the msghdr template, the buffer ring)
            // lives as long as the ring; a send's payload and address are in a buffer
            // held (not given back to the ring) until the send completes. File
            // descriptors are the relay's own and open until the entries naming them
            // are submitted (`cancel` submits before it closes any).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // The submission queue is full: hand it to the kernel and go on.
            self.ring.submit()?;
        }
    }

    fn arm(&mut self, table: &mut Table, key: usize) {
        let Some((socket, tag)) = table
            .slots
            .get(key)
            .filter(|s| !s.closing)
            .and_then(|s| Some((s.socket.as_ref()?, s.tag)))
        else {
            return;
        };
        let entry =
            opcode::RecvMsgMulti::new(Fd(socket.as_raw_fd()), &*self.template, BUFFER_GROUP)
                .build()
                .user_data(user_data(key, tag));
        match self.push(&entry) {
            Ok(()) => self.armed += 1,
            Err(e) => {
                // Tried again after the next wait (the slot stays: its stream names it).
                tracing::warn!("cannot receive on a media socket yet: {e}");
                self.rearm_later.push(key);
            }
        }
    }

    /// Stops receiving on a closed stream's sockets and closes them, and waits for the
    /// kernel to let go of them: then their ports are free before the next command,
    /// which may be a new stream on the same ports (a pool running short).
    fn cancel(&mut self, table: &mut Table, closed: StreamSlots) {
        // Sends queued name their sockets by descriptor: they go to the kernel (which
        // then holds the sockets) before any descriptor is closed and perhaps reused.
        self.publish_buffers();
        if let Err(e) = self.ring.submit() {
            tracing::debug!("media relay: submitting before closing: {e}");
        }
        let mut any = false;
        for key in closed.into_iter().flatten() {
            let Some(slot) = table.slots.get_mut(key) else {
                continue;
            };
            // The pending receive holds its own reference to the socket until it ends.
            drop(slot.socket.take());
            let data = user_data(key, slot.tag);
            let entry = opcode::AsyncCancel::new(data)
                .build()
                .user_data(CANCEL | data);
            match self.push(&entry) {
                Ok(()) => any = true,
                Err(e) => {
                    tracing::warn!("cannot stop receiving on a media socket yet: {e}");
                    self.recancel.push(data);
                }
            }
        }
        // The cancellations complete as they are submitted (each posts a completion, so
        // the wait returns at once); ending the receives is deferred work the wait runs
        // first, which drops the last references to the sockets. Their completions are
        // reaped with the next batch.
        if any {
            // A wait for more completions than can come, with a zero timeout: the kernel
            // runs all deferred work before it gives up (a wait for one would stop
            // after a few dozen items, and under load the cancellations' are behind
            // the wake-ups of every busy socket).
            let now = Timespec::new();
            let args = SubmitArgs::new().timespec(&now);
            match self.ring.submitter().submit_with_args(1 << 16, &args) {
                Err(e) if e.raw_os_error() != Some(libc::ETIME) => {
                    tracing::debug!("media relay: waiting for cancellations: {e}");
                }
                _ => {}
            }
        }
    }

    /// Makes the buffers given back so far visible to the kernel: once per batch of
    /// completions, not per buffer.
    fn publish_buffers(&self) {
        if let Some(buffers) = &self.buffers {
            buffers.publish();
        }
    }

    fn arm_tick_or_later(&mut self) {
        if let Err(e) = self.arm_tick() {
            tracing::warn!("media relay cannot set its tick yet: {e}");
            self.tick_lost = true;
        }
    }

    fn arm_tick(&mut self) -> io::Result<()> {
        let entry = opcode::Timeout::new(&*self.tick).build().user_data(TICK);
        self.push(&entry)
    }

    fn arm_inbox(&mut self, inbox: &Inbox) -> io::Result<()> {
        let entry = opcode::PollAdd::new(Fd(inbox.fd()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(WAKE);
        self.push(&entry)
    }

    pub(crate) fn run(mut self, mut table: Table, inbox: Inbox, spin: Duration) {
        if let Err(e) = self.arm_inbox(&inbox).and_then(|()| self.arm_tick()) {
            tracing::error!("media relay cannot wait for commands: {e}");
            return;
        }
        let no_wait = Timespec::new();
        let mut busy_poll = BusyPoll::new(spin, Instant::now());
        loop {
            // Sends queued since the last wait complete as the queue is submitted (UDP
            // does not block, and MSG_DONTWAIT keeps the kernel from parking one that
            // would): waiting for their completions plus one more wakes the relay for
            // the next datagram or command, not for its own sends.
            let want = 1 + std::mem::take(&mut self.queued_sends);
            // Within the busy-poll window the kernel is asked to run its deferred work
            // and return at once (ETIME when nothing came): no sleep, no wake-up.
            let waited = busy_poll.wait(|polling| {
                if polling {
                    let args = SubmitArgs::new().timespec(&no_wait);
                    self.ring.submitter().submit_with_args(want, &args)
                } else {
                    self.ring.submit_and_wait(want)
                }
            });
            match waited.map_err(|e| e.raw_os_error()) {
                Ok(_) | Err(Some(libc::EINTR | libc::ETIME)) => {}
                // The kernel is short of memory for requests, or completions were lost
                // (EBADR): the relay goes on, after a breath so as not to spin.
                Err(Some(code @ (libc::EAGAIN | libc::ENOMEM | libc::EBUSY | libc::EBADR))) => {
                    tracing::warn!("media relay: {}", io::Error::from_raw_os_error(code));
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(code) => {
                    let e =
                        code.map_or_else(|| io::Error::other("?"), io::Error::from_raw_os_error);
                    tracing::error!("media relay wait failed: {e}");
                    self.shut(&table);
                    return;
                }
            }
            busy_poll.found_work(!self.ring.completion().is_empty());
            if !self.reap(&mut table, &inbox) {
                self.shut(&table);
                return;
            }
        }
    }

    /// Handles every completion queued; false when told to quit.
    fn reap(&mut self, table: &mut Table, inbox: &Inbox) -> bool {
        let mut completions = std::mem::take(&mut self.completions);
        completions.clear();
        completions.extend(self.ring.completion().map(|c| Completion {
            user_data: c.user_data(),
            result: c.result(),
            flags: c.flags(),
        }));
        let mut going_on = true;
        let mut rest = completions.as_slice();
        while let Some(first) = rest.first() {
            let data = first.user_data;
            // A socket's datagrams come in a run; forwarded together, a burst can leave
            // as one GSO train.
            let run = rest.iter().take_while(|c| c.user_data == data).count();
            let (this, next) = rest.split_at(run);
            rest = next;
            if data == WAKE {
                going_on &= self.take_commands(table, inbox, this);
            } else if data == TICK {
                self.arm_tick_or_later();
                self.rearm.append(&mut self.rearm_on_tick);
            } else if data & SEND != 0 {
                for c in this {
                    self.sent(table, c);
                }
            } else if data & CANCEL != 0 {
                for c in this {
                    match -c.result {
                        // It found nothing: the receive had already ended.
                        libc::ENOENT => {
                            self.release_if_closing(table, data & !CANCEL);
                        }
                        // The receive was running: ask again.
                        libc::EALREADY => self.recancel.push(data & !CANCEL),
                        _ => {}
                    }
                }
            } else {
                self.received(table, data, this);
            }
        }
        self.completions = completions;
        self.publish_buffers();
        for key in std::mem::take(&mut self.rearm) {
            self.arm(table, key);
        }
        for data in std::mem::take(&mut self.recancel) {
            let entry = opcode::AsyncCancel::new(data)
                .build()
                .user_data(CANCEL | data);
            if let Err(e) = self.push(&entry) {
                tracing::warn!("cannot stop receiving on a media socket yet: {e}");
                self.recancel.push(data);
            }
        }
        self.rearm.append(&mut self.rearm_later);
        if self.tick_lost {
            self.tick_lost = false;
            self.arm_tick_or_later();
        }
        going_on
    }

    fn take_commands(&mut self, table: &mut Table, inbox: &Inbox, run: &[Completion]) -> bool {
        if run.iter().any(|c| !cqueue::more(c.flags)) {
            if let Err(e) = self.arm_inbox(inbox) {
                tracing::error!("media relay cannot wait for commands: {e}");
                return false;
            }
        }
        inbox.clear_wake();
        loop {
            match inbox.apply_next(table) {
                Applied::Opened(opened) => {
                    for key in opened.into_iter().flatten() {
                        self.arm(table, key);
                    }
                }
                Applied::Closed(closed) => self.cancel(table, closed),
                Applied::Empty => return true,
                Applied::Quit => return false,
            }
        }
    }

    /// Forwards a run of one socket's completions and gives their buffers back (but for
    /// one a send is still reading).
    fn received(&mut self, table: &mut Table, data: u64, run: &[Completion]) {
        let (key, tag) = key_and_tag(data);
        let current = table.slots.get(key).is_some_and(|s| s.tag == tag);
        // One datagram (the common case with many streams: a socket holds one packet at
        // a time) is sent through the ring, from the buffer it arrived in; a run of
        // several goes through `Table::forward`, where it can leave as one GSO train.
        let outcome = match (run, current) {
            ([one], true) => self.send_one(table, key, tag, one),
            _ => OneSend::NotTried,
        };
        let unsubmitted = !self.ring.submission().is_empty();
        if let (OneSend::NotTried, true, true) = (outcome, current, unsubmitted) {
            // A lone datagram of this socket may be queued to go through the ring: it
            // leaves first, so that the socket's datagrams keep their order.
            if let Err(e) = self.ring.submit() {
                tracing::debug!("media relay: submitting before forwarding: {e}");
            }
        }
        if let (Some(buffers), OneSend::NotTried, true) = (&self.buffers, outcome, current) {
            let datagrams = run.iter().filter_map(|c| {
                let id = cqueue::buffer_select(c.flags)?;
                let len = usize::try_from(c.result).ok()?;
                let datagram = received_datagram(buffers.filled(id, len)?, NAME_ROOM);
                // An empty datagram carries nothing to forward (as with epoll).
                match datagram {
                    Some((_, [])) => None,
                    d => Some(d),
                }
            });
            table.forward(key, datagrams);
        }
        let held = match outcome {
            OneSend::Queued(id) => Some(id),
            _ => None,
        };
        if let Some(buffers) = &mut self.buffers {
            for id in run.iter().filter_map(|c| cqueue::buffer_select(c.flags)) {
                if Some(id) != held {
                    buffers.give(id);
                }
            }
        }
        for c in run.iter().filter(|c| !cqueue::more(c.flags)) {
            self.armed = self.armed.saturating_sub(1);
            if current && !self.release_if_closing(table, data) {
                // Out of buffers (given back by now), cancelled while running, or an
                // ICMP error from an earlier send (reported once): armed again at once.
                let passing = [
                    libc::ENOBUFS,
                    libc::ECANCELED,
                    libc::ECONNREFUSED,
                    libc::EHOSTUNREACH,
                    libc::ENETUNREACH,
                ];
                if c.result < 0 && !passing.contains(&-c.result) {
                    // An error that might come back at once: armed again on the next
                    // tick, not in a loop.
                    tracing::debug!(
                        "media receive ended: {}",
                        io::Error::from_raw_os_error(-c.result)
                    );
                    self.rearm_on_tick.push(key);
                } else {
                    self.rearm.push(key);
                }
            }
        }
    }

    /// Sends the one datagram of `completion` from its buffer, if the leg accepts it.
    fn send_one(
        &mut self,
        table: &mut Table,
        key: usize,
        tag: u32,
        completion: &Completion,
    ) -> OneSend {
        let Some(buffers) = self.buffers.as_mut() else {
            return OneSend::NotTried;
        };
        let Some(id) = cqueue::buffer_select(completion.flags) else {
            return OneSend::NotTried;
        };
        let Ok(len) = usize::try_from(completion.result) else {
            return OneSend::NotTried;
        };
        let Some((source, payload_len)) = buffers
            .filled(id, len)
            .and_then(|b| received_datagram(b, NAME_ROOM))
            .map(|(source, payload)| (source, payload.len()))
            .filter(|&(_, n)| n > 0)
        else {
            return OneSend::NotTried;
        };
        let (fd, target) = match table.route_one(key, source, payload_len) {
            Route::Send(fd, target) => (fd, target),
            Route::Dropped => return OneSend::Handled,
            // Held until the party is known: `forward` copies it out of the buffer.
            Route::Hold => return OneSend::NotTried,
        };
        let (address, address_len) = sockaddr_bytes(target);
        // The receive's header and source address have been read: the destination
        // goes where they were, in front of the payload, for the kernel to read.
        let Some(start) = address
            .get(..address_len)
            .and_then(|a| buffers.write_head(id, a))
        else {
            return OneSend::Handled;
        };
        // SAFETY: the payload starts HEADER + NAME_ROOM bytes into the buffer and was
        // found inside it by `received_datagram`.
        let payload = unsafe { start.add(HEADER + NAME_ROOM) };
        let entry = opcode::Send::new(Fd(fd), payload, payload_len as u32)
            .dest_addr(start.cast::<libc::sockaddr>())
            .dest_addr_len(address_len as libc::socklen_t)
            // Fail at once rather than wait for room (as the epoll engine's sends do):
            // a parked send would hold up the relay's wait and its buffer.
            .flags(libc::MSG_DONTWAIT)
            .build()
            .user_data(SEND | u64::from(id));
        match self.push(&entry) {
            Ok(()) => {
                self.sending += 1;
                self.queued_sends += 1;
                if let Some(owner) = self.send_owner.get_mut(usize::from(id)) {
                    *owner = (user_data(key, tag), payload_len);
                }
                OneSend::Queued(id)
            }
            Err(e) => {
                tracing::debug!("media send not queued: {e}");
                table.unsent(key, tag, payload_len);
                OneSend::Handled
            }
        }
    }

    /// A send through the ring completed: its buffer goes back (and if it failed, its
    /// stream counts it as dropped).
    fn sent(&mut self, table: &mut Table, completion: &Completion) {
        self.sending = self.sending.saturating_sub(1);
        let id = (completion.user_data & 0xffff) as u16;
        if completion.result < 0 {
            tracing::debug!(
                "media send failed: {}",
                io::Error::from_raw_os_error(-completion.result)
            );
            if let Some(&(owner, len)) = self.send_owner.get(usize::from(id)) {
                let (key, tag) = key_and_tag(owner);
                table.unsent(key, tag, len);
            }
        }
        if let Some(buffers) = &mut self.buffers {
            buffers.give(id);
        }
    }

    /// Lets go of a closing slot (its socket closes, the port is free); true if it was
    /// closing.
    fn release_if_closing(&mut self, table: &mut Table, data: u64) -> bool {
        let (key, tag) = key_and_tag(data);
        let closing = table
            .slots
            .get(key)
            .is_some_and(|s| s.tag == tag && s.closing);
        if closing {
            table.slots.try_remove(key);
        }
        closing
    }

    /// Ends every receive and waits (a bounded time) for the kernel to confirm, so that
    /// the buffers can be freed.
    fn shut(&mut self, table: &Table) {
        let keys: Vec<usize> = table.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let Some(slot) = table.slots.get(key) {
                let data = user_data(key, slot.tag);
                let entry = opcode::AsyncCancel::new(data)
                    .build()
                    .user_data(CANCEL | data);
                if self.push(&entry).is_err() {
                    break;
                }
            }
        }
        let wait = Timespec::new().nsec(10_000_000);
        let args = SubmitArgs::new().timespec(&wait);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.armed + self.sending > 0 && Instant::now() < deadline {
            let _ = self.ring.submitter().submit_with_args(1, &args);
            for c in self.ring.completion() {
                let data = c.user_data();
                if data & SEND != 0 {
                    self.sending = self.sending.saturating_sub(1);
                } else if data & (CANCEL | WAKE | TICK) == 0 && !cqueue::more(c.flags()) {
                    self.armed = self.armed.saturating_sub(1);
                }
            }
        }
        if self.armed + self.sending > 0 {
            // The kernel may still write into the buffers: better to leak them.
            tracing::error!(
                pending = self.armed + self.sending,
                "media receives did not end; their buffers are not freed"
            );
            std::mem::forget(self.buffers.take());
        }
    }
}

/// The source and payload of a datagram in a buffer a multishot `recvmsg` completed:
/// the kernel's `io_uring_recvmsg_out` header (name, control and payload lengths, and
/// flags, four u32), `name_room` bytes for the source address, then the payload. None
/// for a datagram that did not fit whole (or a source address not understood).
fn received_datagram(buffer: &[u8], name_room: usize) -> Option<(SocketAddr, &[u8])> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(buffer.get(at..at + 4)?.try_into().ok()?))
    };
    let (name_len, payload_len, flags) = (word(0)? as usize, word(8)? as usize, word(12)?);
    if name_len > name_room || flags & libc::MSG_TRUNC as u32 != 0 {
        return None;
    }
    let name = buffer.get(HEADER..HEADER + name_len)?;
    let payload_at = HEADER + name_room;
    let payload = buffer.get(payload_at..payload_at.checked_add(payload_len)?)?;
    Some((socket_address(name)?, payload))
}

/// Size of the kernel's `io_uring_recvmsg_out`.
const HEADER: usize = 16;
/// Room for a source address in a receive buffer, after the header.
const NAME_ROOM: usize = size_of::<libc::sockaddr_in6>();

/// `address` as the kernel's `sockaddr_in` or `sockaddr_in6` bytes, and their length.
fn sockaddr_bytes(address: SocketAddr) -> ([u8; NAME_ROOM], usize) {
    let mut bytes = [0u8; NAME_ROOM];
    let mut put = |at: usize, data: &[u8]| {
        if let Some(to) = bytes.get_mut(at..at + data.len()) {
            to.copy_from_slice(data);
        }
    };
    match address {
        SocketAddr::V4(a) => {
            put(0, &(libc::AF_INET as u16).to_ne_bytes());
            put(2, &a.port().to_be_bytes());
            put(4, &a.ip().octets());
            (bytes, size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(a) => {
            put(0, &(libc::AF_INET6 as u16).to_ne_bytes());
            put(2, &a.port().to_be_bytes());
            put(4, &a.flowinfo().to_be_bytes());
            put(8, &a.ip().octets());
            put(24, &a.scope_id().to_ne_bytes());
            (bytes, NAME_ROOM)
        }
    }
}

/// The source address of a datagram from the kernel's `sockaddr` bytes.
fn socket_address(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes([*name.first()?, *name.get(1)?]));
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope: [u8; 4] = name.get(24..28)?.try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                u32::from_be_bytes(flow),
                u32::from_ne_bytes(scope),
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_keeps_key_and_tag_apart_from_the_marks() {
        for (key, tag) in [(0, 0), (7, 1), (u32::MAX as usize, (1 << 28) - 1)] {
            let data = user_data(key, tag);
            assert_eq!(data & (TICK | SEND | WAKE | CANCEL), 0);
            assert_eq!(key_and_tag(data), (key, tag));
            assert_eq!(key_and_tag(CANCEL | data), (key, tag));
        }
    }

    #[test]
    fn tags_go_round_within_what_user_data_keeps() {
        use sipward_core::{LegSpec, StreamCounters};
        use std::sync::Arc;
        let mut table = Table::with_first_tag(TAG_LIMIT - 3).unwrap();
        let mut seen = Vec::new();
        for id in 0..3u16 {
            let leg = |side: u8| LegSpec {
                local_rtp: SocketAddr::new([127, 77, 20 + side, 1].into(), 46000 + 2 * id),
                peers: Vec::new(),
                provisional: false,
            };
            let opened = table.set(
                u64::from(id),
                [leg(0), leg(1)],
                Arc::new(StreamCounters::new(Instant::now())),
            );
            for key in opened.into_iter().flatten() {
                let tag = table.slots.get(key).unwrap().tag;
                assert_eq!(key_and_tag(user_data(key, tag)), (key, tag), "tag {tag}");
                seen.push(tag);
            }
        }
        assert_eq!(seen.len(), 12);
        assert!(seen.contains(&0), "the tags went round: {seen:?}");
    }

    #[test]
    fn source_addresses_are_read_from_sockaddr_bytes() {
        let mut v4 = [0u8; 28];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&4000u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 9]);
        assert_eq!(socket_address(&v4), "127.0.0.9:4000".parse().ok());
        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&5004u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(socket_address(&v6), "[::1]:5004".parse().ok());
        assert_eq!(socket_address(&v6[..20]), None);
        assert_eq!(socket_address(&[0u8; 28]), None);
        for a in ["127.0.0.9:4000", "[::1]:5004", "[fe80::1%3]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            let (bytes, len) = sockaddr_bytes(a);
            assert_eq!(socket_address(&bytes[..len]), Some(a), "round trip of {a}");
        }
    }

    fn completed(name: &[u8], payload: &[u8], flags: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for word in [name.len() as u32, 0, payload.len() as u32, flags] {
            b.extend_from_slice(&word.to_ne_bytes());
        }
        b.extend_from_slice(name);
        b.resize(HEADER + 28, 0);
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn a_completed_buffer_gives_source_and_payload_or_nothing() {
        let mut name = vec![0u8; 16];
        name[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        name[2..4].copy_from_slice(&7078u16.to_be_bytes());
        name[4..8].copy_from_slice(&[127, 1, 2, 3]);
        let b = completed(&name, b"rtp!", 0);
        assert_eq!(
            received_datagram(&b, 28),
            Some(("127.1.2.3:7078".parse().unwrap(), &b"rtp!"[..]))
        );
        // Cut short by the buffer, marked truncated, or a name longer than its room.
        assert_eq!(received_datagram(&b[..b.len() - 1], 28), None);
        let truncated = completed(&name, b"rtp!", libc::MSG_TRUNC as u32);
        assert_eq!(received_datagram(&truncated, 28), None);
        assert_eq!(received_datagram(&b, 8), None);
        assert_eq!(received_datagram(&b[..10], 28), None);
    }
}
