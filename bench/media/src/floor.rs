//! The floor: the least a userspace relay can do per packet. One thread waits on every
//! inside socket with epoll and, for each readable one, reads one datagram and sends it
//! from the stream's outside socket to the receiver: no source check, no latching, no
//! counters, no commands. It is not a relay anyone should run; measured beside the real
//! ones, under the same load on the same CPU, it shows how much of their cost per packet
//! is this machine's kernel and wake-up path, which no userspace relay avoids.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{cpu_of_stat, Relay, REALTIME_PRIORITY};

pub(crate) struct Floor {
    pinned: bool,
    realtime: bool,
    next_port: u16,
    /// The running forwarder: told to stop through the flag, its thread id for its CPU.
    running: Option<(Arc<AtomicBool>, Arc<AtomicI32>, JoinHandle<()>)>,
    /// CPU seconds of forwarders already stopped.
    spent: f64,
}

impl Floor {
    pub(crate) fn new(pinned: bool, realtime: bool) -> Floor {
        Floor {
            pinned,
            realtime,
            next_port: 46000,
            running: None,
            spent: 0.0,
        }
    }

    fn thread_cpu(tid: i32) -> f64 {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .map_or(0.0, |stat| cpu_of_stat(&stat))
    }
}

impl Relay for Floor {
    fn name(&self) -> &'static str {
        "floor"
    }

    fn open(&mut self, n: usize, _sender: SocketAddr, receiver: SocketAddr) -> Vec<SocketAddr> {
        self.close_all();
        let mut inside = Vec::new();
        let mut outside = Vec::new();
        for _ in 0..n {
            let port = self.next_port;
            self.next_port = if port > 60000 { 46000 } else { port + 2 };
            inside.push(UdpSocket::bind(("127.90.5.1", port)).expect("floor inside port"));
            outside.push(UdpSocket::bind(("127.90.6.1", port)).expect("floor outside port"));
        }
        let ports = inside.iter().map(|s| s.local_addr().unwrap()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicI32::new(0));
        let (pinned, realtime) = (self.pinned, self.realtime);
        let thread = {
            let (stop, tid) = (stop.clone(), tid.clone());
            std::thread::Builder::new()
                .name("floor-relay".into())
                .spawn(move || {
                    place(pinned, realtime);
                    // SAFETY: gettid has no preconditions.
                    tid.store(unsafe { libc::gettid() }, Ordering::SeqCst);
                    forward(&inside, &outside, receiver, &stop);
                })
                .unwrap()
        };
        while tid.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.running = Some((stop, tid, thread));
        ports
    }

    fn close_all(&mut self) {
        if let Some((stop, tid, thread)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            // Read before the thread ends: its /proc entry goes with it.
            let cpu = Floor::thread_cpu(tid.load(Ordering::SeqCst));
            thread.join().unwrap();
            self.spent += cpu;
        }
    }

    fn cpu_seconds(&self) -> f64 {
        self.spent
            + self.running.as_ref().map_or(0.0, |(_, tid, _)| {
                Floor::thread_cpu(tid.load(Ordering::SeqCst))
            })
    }

    fn rss_bytes(&self) -> u64 {
        crate::rss_of("self")
    }
}

/// CPU 1 and SCHED_FIFO, as the real relays are placed.
fn place(pinned: bool, realtime: bool) {
    // SAFETY: plain system calls on this thread, with structures set up here.
    unsafe {
        if pinned {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(1, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
        }
        if realtime {
            let param = libc::sched_param {
                sched_priority: i32::from(REALTIME_PRIORITY),
            };
            assert_eq!(libc::sched_setscheduler(0, libc::SCHED_FIFO, &param), 0);
        }
    }
}

fn forward(inside: &[UdpSocket], outside: &[UdpSocket], receiver: SocketAddr, stop: &AtomicBool) {
    let SocketAddr::V4(receiver) = receiver else {
        panic!("IPv4 receiver")
    };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: receiver.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*receiver.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: epoll and socket calls on descriptors owned by `inside`/`outside`, which
    // outlive this function; buffers are local and sized as passed.
    unsafe {
        let epoll = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        assert!(epoll >= 0);
        for (i, s) in inside.iter().enumerate() {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            assert_eq!(
                libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut event),
                0
            );
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut buffer = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let ready = libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, 10);
            for event in events.iter().take(ready.max(0) as usize) {
                let i = event.u64 as usize;
                let len = libc::recv(
                    inside[i].as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_DONTWAIT,
                );
                if len > 0 {
                    libc::sendto(
                        outside[i].as_raw_fd(),
                        buffer.as_ptr().cast(),
                        len as usize,
                        libc::MSG_DONTWAIT,
                        (&to as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    );
                }
            }
        }
        libc::close(epoll);
    }
}
