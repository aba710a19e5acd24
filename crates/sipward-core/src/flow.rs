//! How a message reaches the gateway and how one leaves it: a [`Flow`].
//!
//! Every way a message can arrive — a datagram on one of the gateway's own addresses, a
//! datagram diverted to it by the router (transparent mode, TPROXY), later a message
//! framed out of a TCP or TLS connection — is one `Flow`, so the paths have a single
//! notion of "where this came from and how to answer". The state tables keep the flow
//! of each phone (transactions, dialogs, bindings) and every [`crate::Transmit`] names
//! the flow to send on; the driver maps a flow to a socket or a connection.

use std::net::SocketAddr;

/// The transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// The Via transport token (RFC 3261 section 18).
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// A stream connection, numbered by the driver that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Where a message came from and on what, or where one goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    /// The gateway's end as the peer sees it: one of the gateway's own addresses, or,
    /// for an intercepted flow, the original destination the peer sent to (the proxy
    /// it believes it talks to).
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The stream connection the message came on or must leave on; `None` for UDP.
    pub connection: Option<ConnectionId>,
    /// Diverted to the gateway by the router: `local` is not an address of the gateway,
    /// and what goes back leaves from it (an `IP_TRANSPARENT` socket bound there).
    pub intercepted: bool,
}

impl Flow {
    /// A UDP datagram on one of the gateway's own addresses.
    pub fn udp(local: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            transport: Transport::Udp,
            local,
            remote,
            connection: None,
            intercepted: false,
        }
    }

    /// A UDP datagram `remote` sent to `original_destination`, diverted to the gateway.
    pub fn intercepted_udp(original_destination: SocketAddr, remote: SocketAddr) -> Self {
        Self {
            intercepted: true,
            ..Self::udp(original_destination, remote)
        }
    }
}
