//! Transparent mode's sockets (TPROXY): the listener the router diverts the phones' SIP
//! to, which learns each datagram's original destination, and the sockets that answer
//! from that destination, the address the phone believes it talks to.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrIn, SockaddrIn6,
    SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The listener's receive buffer: every phone's signalling arrives on this one socket.
const LISTENER_RECEIVE_BUFFER: usize = 8 << 20;

/// Sockets kept open to answer from proxy addresses; past it the least recently used
/// one is closed (it is reopened when needed: the phone sees the same address).
pub(crate) const SEND_SOCKETS: usize = 256;

/// Whether the error means the process lacks CAP_NET_ADMIN (IP_TRANSPARENT and binding
/// a non-local address need it).
pub(crate) fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EACCES))
}

/// The listener of one family: a UDP socket on the wildcard address and `port` that
/// accepts datagrams for any address (`IP_TRANSPARENT`) and reports where each was sent
/// (`IP_RECVORIGDSTADDR` / `IPV6_RECVORIGDSTADDR`).
pub(crate) fn bind_listener(port: u16, ipv6: bool) -> io::Result<UdpSocket> {
    let address = if ipv6 {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
    };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if ipv6 {
        socket.set_only_v6(true)?;
    }
    // IP_TRANSPARENT sets the socket's one transparent flag for both families (the
    // kernel passes SOL_IP options of an IPv6 UDP socket to the IPv4 code).
    setsockopt(&socket, sockopt::IpTransparent, &true)?;
    if ipv6 {
        setsockopt(&socket, sockopt::Ipv6OrigDstAddr, &true)?;
    } else {
        setsockopt(&socket, sockopt::Ipv4OrigDstAddr, &true)?;
    }
    let _ = socket.set_recv_buffer_size(LISTENER_RECEIVE_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// One diverted datagram: its length in the buffer, sender and original destination.
pub(crate) struct Diverted {
    pub(crate) len: usize,
    pub(crate) remote: SocketAddr,
    pub(crate) original_destination: SocketAddr,
}

/// Receives the next datagram on a listener. A datagram without an original
/// destination (not diverted: sent to the listener's port directly) is skipped.
pub(crate) async fn recv_diverted(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Diverted> {
    loop {
        socket.readable().await?;
        match socket.try_io(Interest::READABLE, || recv_once(socket, buf)) {
            Ok(Some(d)) => return Ok(d),
            Ok(None) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

fn recv_once(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<Diverted>> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut control = nix::cmsg_space!(nix::libc::sockaddr_in6);
    let msg = recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::empty(),
    )?;
    let len = msg.bytes;
    let remote = msg.address.as_ref().and_then(std_address);
    let mut original_destination = None;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::Ipv4OrigDstAddr(a) => {
                original_destination =
                    Some(SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(a))));
            }
            ControlMessageOwned::Ipv6OrigDstAddr(a) => {
                original_destination =
                    Some(SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(a))));
            }
            _ => {}
        }
    }
    Ok(match (remote, original_destination) {
        (Some(remote), Some(original_destination)) => Some(Diverted {
            len,
            remote,
            original_destination,
        }),
        _ => {
            tracing::debug!(
                ?remote,
                "datagram on the transparent listener without an original destination: skipped"
            );
            None
        }
    })
}

fn std_address(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    a.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// A socket bound to an address that is not the gateway's (`IP_TRANSPARENT` allows the
/// bind), to send as that address.
fn bind_foreign(local: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    if local.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    setsockopt(&socket, sockopt::IpTransparent, &true)?;
    // It only sends: what the kernel would queue on it is never read.
    let _ = socket.set_recv_buffer_size(4096);
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    UdpSocket::from_std(socket.into())
}

/// The counters of the send sockets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SenderStats {
    pub(crate) open: usize,
    pub(crate) opened: u64,
    pub(crate) evicted: u64,
    pub(crate) send_failures: u64,
}

/// The sockets that send as proxy addresses, opened on demand, at most
/// [`SEND_SOCKETS`] of them, the least recently used closed first.
pub(crate) struct Senders {
    sockets: HashMap<SocketAddr, (Arc<UdpSocket>, u64)>,
    capacity: usize,
    clock: u64,
    stats: SenderStats,
}

impl Senders {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            sockets: HashMap::new(),
            capacity: capacity.max(1),
            clock: 0,
            stats: SenderStats::default(),
        }
    }

    pub(crate) fn stats(&self) -> SenderStats {
        SenderStats {
            open: self.sockets.len(),
            ..self.stats
        }
    }

    /// The socket for `local`, opened (and the least recently used closed) if needed.
    fn socket(&mut self, local: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        self.clock += 1;
        if let Some((socket, used)) = self.sockets.get_mut(&local) {
            *used = self.clock;
            return Ok(socket.clone());
        }
        let socket = Arc::new(bind_foreign(local)?);
        self.stats.opened += 1;
        if self.sockets.len() >= self.capacity {
            let oldest = self
                .sockets
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(a, _)| *a);
            if let Some(oldest) = oldest {
                self.sockets.remove(&oldest);
                self.stats.evicted += 1;
            }
        }
        self.sockets.insert(local, (socket.clone(), self.clock));
        Ok(socket)
    }

    /// Sends `payload` to `remote` from `local`; a failure is logged and counted (the
    /// phone retransmits, or the transaction times out as with any lost datagram).
    pub(crate) async fn send(&mut self, local: SocketAddr, remote: SocketAddr, payload: &[u8]) {
        let result = match self.socket(local) {
            Ok(socket) => socket.send_to(payload, remote).await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.stats.send_failures += 1;
            tracing::warn!(%local, %remote, "transparent send failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache keeps at most its capacity, closing the least recently used socket;
    /// a failed send is counted, not fatal. (Binds loopback addresses, which are
    /// local, so IP_TRANSPARENT is only set, not needed; it needs CAP_NET_ADMIN.)
    #[test]
    fn the_send_sockets_are_bounded_least_recently_used_first() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let to = sink.local_addr().unwrap();
            let mut senders = Senders::new(2);
            let a: SocketAddr = "127.0.0.2:0".parse().unwrap();
            let b: SocketAddr = "127.0.0.3:0".parse().unwrap();
            let c: SocketAddr = "127.0.0.4:0".parse().unwrap();
            senders.send(a, to, b"1").await;
            senders.send(b, to, b"2").await;
            senders.send(a, to, b"3").await; // a is now the most recent
            senders.send(c, to, b"4").await; // b goes
            assert_eq!(
                senders.stats(),
                SenderStats {
                    open: 2,
                    opened: 3,
                    evicted: 1,
                    send_failures: 0
                }
            );
            assert!(senders.sockets.contains_key(&a) && senders.sockets.contains_key(&c));
            let mut buf = [0u8; 8];
            let mut from = Vec::new();
            for _ in 0..4 {
                let (n, src) = sink.recv_from(&mut buf).unwrap();
                from.push((buf[..n].to_vec(), src.ip()));
            }
            assert_eq!(from[3], (b"4".to_vec(), c.ip()));
            // An IPv4 socket cannot send to an IPv6 address: counted.
            senders.send(a, "[::1]:9".parse().unwrap(), b"5").await;
            assert_eq!(senders.stats().send_failures, 1);
        });
    }
}
