//! The portable engine: epoll (mio) says which sockets are readable, each is drained
//! with `recvmmsg` (quinn-udp). Used where io_uring is not to be had (an older kernel,
//! a container whose seccomp profile refuses it) or when the configuration asks for it.

use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use quinn_udp::{RecvMeta, UdpSockRef, BATCH_SIZE};

use crate::busy_poll::BusyPoll;
use crate::table::{StreamSlots, Table};
use crate::{Applied, Inbox};

/// Receive buffer per batch slot: large enough for a GRO-coalesced train of datagrams.
const BUFFER: usize = 65_536;
const WAKER: Token = Token(usize::MAX);

pub(crate) struct Epoll {
    poll: Poll,
    /// `BATCH_SIZE` receive buffers of `BUFFER` bytes, end to end.
    buffers: Vec<u8>,
}

impl Epoll {
    pub(crate) fn new(inbox: &Inbox) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut SourceFd(&inbox.fd()), WAKER, Interest::READABLE)?;
        Ok(Self {
            poll,
            buffers: vec![0u8; BATCH_SIZE * BUFFER],
        })
    }

    pub(crate) fn run(mut self, mut table: Table, inbox: Inbox, spin: Duration) {
        let mut events = Events::with_capacity(1024);
        let mut busy_poll = BusyPoll::new(spin, Instant::now());
        loop {
            let polled = busy_poll.wait(|polling| {
                let timeout = polling.then_some(Duration::ZERO);
                self.poll.poll(&mut events, timeout)
            });
            if let Err(e) = polled {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("media relay poll failed: {e}");
                return;
            }
            busy_poll.found_work(!events.is_empty());
            if events.is_empty() {
                continue;
            }
            for event in &events {
                if event.token() == WAKER {
                    inbox.clear_wake();
                    loop {
                        match inbox.apply_next(&mut table) {
                            Applied::Opened(opened) => self.register(&mut table, opened),
                            // Closing a socket takes it out of epoll: no call needed.
                            Applied::Closed(closed) => {
                                for key in closed.into_iter().flatten() {
                                    table.slots.try_remove(key);
                                }
                            }
                            Applied::Empty => break,
                            Applied::Quit => return,
                        }
                    }
                } else {
                    self.drain(&mut table, event.token().0);
                }
            }
        }
    }

    fn register(&self, table: &mut Table, opened: StreamSlots) {
        for key in opened.into_iter().flatten() {
            let Some(socket) = table.slots.get(key).and_then(|s| s.socket.as_ref()) else {
                continue;
            };
            let fd = socket.as_raw_fd();
            if let Err(e) =
                self.poll
                    .registry()
                    .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)
            {
                // The slot stays (its stream names it); it only does not receive.
                tracing::error!("cannot wait on a media socket: {e}");
            }
        }
    }

    /// Reads a readable socket until it would block, forwarding what is acceptable.
    fn drain(&mut self, table: &mut Table, key: usize) {
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        loop {
            let Some(socket) = table.slots.get(key).and_then(|s| s.socket.as_ref()) else {
                return;
            };
            let mut chunks = self.buffers.chunks_mut(BUFFER);
            let mut bufs: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let received = table
                .state
                .recv(UdpSockRef::from(socket), &mut bufs, &mut meta);
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
            let datagrams = meta
                .iter()
                .zip(self.buffers.chunks(BUFFER))
                .take(count)
                .flat_map(|(m, buf)| {
                    let contents = buf.get(..m.len);
                    let stride = m.stride.max(1);
                    // A datagram the buffer could not hold whole is one drop.
                    let whole = contents.map(|c| c.chunks(stride)).into_iter().flatten();
                    let cut = contents.is_none().then_some(None);
                    whole.map(move |d| Some((m.addr, d))).chain(cut)
                });
            table.forward(key, datagrams);
            // A short batch emptied the queue. Stopping here saves the read that would
            // only say so: on Linux every datagram that arrives later raises a new
            // edge, so nothing is left unnoticed.
            if count < BATCH_SIZE {
                return;
            }
        }
    }
}
