//! The compiled configuration the core runs on: zones, address objects, the ALG options,
//! services and the ordered rule set. The binary builds it from the TOML file; tests build
//! it directly.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use sipward_proto::Limits;

use crate::flow::{Flow, Transport};
pub use crate::hiding::LeakPolicy;
pub use crate::media::Latching;
use crate::protect::ProtectionOptions;

/// Index of a zone in [`Config::zones`].
pub type ZoneId = usize;

/// An interface (zone) the gateway has an address on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    /// The gateway's own SIP address in this zone.
    pub address: SocketAddr,
    /// Networks that belong to this zone.
    pub networks: Vec<IpNet>,
    /// Whether this is an inside (protected) zone whose addresses must never leave.
    pub inside: bool,
    /// The inclusive UDP port range media is relayed on at this address; `None`: no
    /// relay (SDP only has inside addresses hidden).
    pub media_ports: Option<(u16, u16)>,
    /// Transparent mode: this (inside) zone also receives SIP its phones send to other
    /// addresses, diverted by the router (see [`crate::Flow::intercepted`]).
    pub intercept: bool,
    /// The name written in Via and Contact instead of the address (a TLS peer such as a
    /// Teams-style trunk expects the FQDN its certificate names).
    pub advertise: Option<String>,
}

impl Zone {
    /// The `host:port` the gateway writes for itself in this zone (Via, Contact).
    pub fn host_port(&self, local: SocketAddr) -> String {
        match &self.advertise {
            Some(name) => format!("{name}:{}", local.port()),
            None => local.to_string(),
        }
    }
}

/// A named address object: one host (optionally with port) or a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressObject {
    Host { ip: IpAddr, port: Option<u16> },
    Network(IpNet),
    Any,
}

impl std::fmt::Display for AddressObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddressObject::Host { ip, port: Some(p) } => write!(f, "{}", SocketAddr::new(*ip, *p)),
            AddressObject::Host { ip, port: None } => write!(f, "{ip}"),
            AddressObject::Network(net) => write!(f, "{net}"),
            AddressObject::Any => f.write_str("any"),
        }
    }
}

impl AddressObject {
    pub fn contains(&self, addr: SocketAddr) -> bool {
        match self {
            AddressObject::Host { ip, port } => {
                *ip == addr.ip() && port.is_none_or(|p| p == addr.port())
            }
            AddressObject::Network(net) => net.contains(&addr.ip()),
            AddressObject::Any => true,
        }
    }
}

impl AddressObject {
    /// Whether a message on `flow` comes from this object. On a stream only the address
    /// counts: a peer connects from an ephemeral port (RFC 3261 18.1.1), whatever port
    /// the object names for reaching it, so a TCP or TLS proxy's calls in would
    /// otherwise match no rule.
    pub fn contains_sender(&self, flow: &Flow) -> bool {
        match self {
            AddressObject::Host { ip, .. } if flow.transport != Transport::Udp => {
                *ip == flow.remote.ip()
            }
            _ => self.contains(flow.remote),
        }
    }
}

/// The SIP ALG options, with the founding brief's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlgOptions {
    pub max_sessions_per_id: usize,
    pub max_registration_time: Duration,
    pub request_response_timeout: Duration,
    pub signal_timeout: Duration,
    pub data_channel_timeout: Duration,
    pub allow_media_bypass: bool,
    /// Which media sources the relay accepts besides the SDP's (see [`Latching`]).
    pub media_latching: Latching,
    pub limits: Limits,
    pub max_registrations: usize,
    pub max_dialogs: usize,
    pub max_transactions: usize,
    /// What happens to an outgoing outside datagram that still names an inside address
    /// after every rewrite (the last line of defence).
    pub leak_policy: LeakPolicy,
    /// A request larger than this goes over TCP instead of UDP where the next hop takes
    /// TCP (RFC 3261 18.1.1: the path MTU less 200 bytes; 1300 for 1500).
    pub udp_switch_size: usize,
    /// Whether an SDP with SDES keys (`a=crypto`) may go to a leg without TLS, where
    /// anyone on the path can read the keys (otherwise 488).
    pub allow_sdes_on_plain_leg: bool,
}

impl Default for AlgOptions {
    fn default() -> Self {
        Self {
            max_sessions_per_id: 5,
            max_registration_time: Duration::from_secs(3600),
            request_response_timeout: Duration::from_secs(180),
            signal_timeout: Duration::from_secs(43200),
            data_channel_timeout: Duration::from_secs(120),
            allow_media_bypass: false,
            media_latching: Latching::default(),
            limits: Limits::default(),
            max_registrations: 10_000,
            max_dialogs: 10_000,
            max_transactions: 20_000,
            leak_policy: LeakPolicy::default(),
            udp_switch_size: 1300,
            allow_sdes_on_plain_leg: false,
        }
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Inside to outside, translated: the ALG forwards to `destination` and hides the
    /// inside topology.
    Nat,
    /// Outside to the gateway itself ("core"): the ALG routes from its own state.
    Allow,
    /// Silently discarded (counted).
    Drop,
    /// Refused: requests get 403.
    Reject,
}

/// One rule of the ordered IP rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub action: Action,
    /// Zone the datagram arrives in.
    pub from_zone: ZoneId,
    pub source: AddressObject,
    /// For `Nat`: the outside zone. For `Allow`: `None`, the gateway itself.
    pub to_zone: Option<ZoneId>,
    /// For `Nat`, where the phone's message goes. A host is the next hop (the proxy) of
    /// messages sent to the gateway itself, and matches intercepted messages sent to
    /// it; a network or `any` matches only intercepted messages, whose next hop is
    /// their original destination.
    pub destination: AddressObject,
    /// The services (transport and port) the rule applies to: the gateway's listener
    /// for messages sent to it, the original destination's port for intercepted ones.
    pub services: Vec<Service>,
    /// For `Nat`: how the next hop (a host destination) is reached, and the name its
    /// TLS certificate must carry. An intercepted message goes on in its own transport.
    pub next_hop_transport: Transport,
    pub server_name: Option<String>,
    /// The next hop takes UDP only: a request too large for UDP still goes over UDP
    /// (counted) instead of switching to TCP (RFC 3261 18.1.1).
    pub udp_only: bool,
    /// Send the next hop an OPTIONS this often (what trunks such as Teams expect).
    pub options_ping: Option<Duration>,
}

/// A transport and port a rule admits (one of a service's ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    pub transport: Transport,
    pub port: u16,
}

impl Service {
    pub fn udp(port: u16) -> Self {
        Self {
            transport: Transport::Udp,
            port,
        }
    }
}

impl Rule {
    /// Whether this rule applies to a message that arrived in `zone` on `flow`.
    pub fn matches(&self, zone: ZoneId, flow: &Flow) -> bool {
        if self.from_zone != zone
            || !self
                .services
                .iter()
                .any(|s| s.transport == flow.transport && s.port == flow.local.port())
            || !self.source.contains_sender(flow)
        {
            return false;
        }
        if flow.intercepted {
            // The original destination decides; a nat rule forwards to it.
            return self.destination.contains(flow.local);
        }
        // Sent to the gateway itself: a nat rule needs a host to forward to.
        self.action != Action::Nat || matches!(self.destination, AddressObject::Host { .. })
    }

    /// Where a nat rule sends a message that arrived on `flow`, from the gateway's
    /// address `wan`: the original destination of an intercepted one (in its transport),
    /// else the rule's host in the rule's transport.
    pub fn next_hop(&self, flow: &Flow, wan: SocketAddr) -> Option<Flow> {
        let (transport, remote) = if flow.intercepted {
            (flow.transport, flow.local)
        } else {
            match self.destination {
                AddressObject::Host { ip, port } => {
                    let default_port = match self.next_hop_transport {
                        Transport::Tls => 5061,
                        Transport::Udp | Transport::Tcp => 5060,
                    };
                    let remote = SocketAddr::new(ip, port.unwrap_or(default_port));
                    (self.next_hop_transport, remote)
                }
                _ => return None,
            }
        };
        Some(Flow {
            transport,
            local: wan,
            remote,
            connection: None,
            intercepted: false,
        })
    }
}

/// The whole compiled configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Names this gateway in Warning and Via-derived values.
    pub agent: String,
    pub zones: Vec<Zone>,
    pub alg: AlgOptions,
    pub rules: Vec<Rule>,
    /// Attack protection.
    pub protection: ProtectionOptions,
    /// Key for the hashes that name hidden branches, Call-IDs and contact tokens.
    pub secret: [u8; 16],
}

impl Config {
    pub fn zone(&self, id: ZoneId) -> Option<&Zone> {
        self.zones.get(id)
    }

    /// The zone whose gateway address is `local` (its IP address; any port).
    pub fn zone_of_local(&self, local: SocketAddr) -> Option<ZoneId> {
        // By address alone: a zone's TCP and TLS services listen on its address at
        // their own ports (5061 for TLS) beside the UDP one.
        self.zones.iter().position(|z| z.address.ip() == local.ip())
    }

    /// The zone a message on `flow` arrived in: the zone of the gateway's address it
    /// was sent to, or for an intercepted one the intercepting zone the sender belongs
    /// to (the only one of the sender's family when none lists it).
    pub fn zone_of_flow(&self, flow: &Flow) -> Option<ZoneId> {
        if !flow.intercepted {
            return self.zone_of_local(flow.local);
        }
        let intercepting = || {
            self.zones
                .iter()
                .enumerate()
                .filter(|(_, z)| z.intercept && z.address.is_ipv4() == flow.remote.is_ipv4())
        };
        let ip = flow.remote.ip();
        intercepting()
            .find(|(_, z)| z.networks.iter().any(|n| n.contains(&ip)))
            .or_else(|| intercepting().next())
            .map(|(id, _)| id)
    }

    /// How the gateway writes itself at its address `local` (Via, Contact): the zone's
    /// advertised name with the port, or the address.
    pub fn host_port(&self, local: SocketAddr) -> String {
        match self.zone_of_local(local).and_then(|z| self.zone(z)) {
            Some(zone) => zone.host_port(local),
            None => local.to_string(),
        }
    }

    /// How the gateway writes itself at `local` on a leg of `transport` (Via, Contact):
    /// [`Config::host_port`], with the port where that zone listens for `transport` when
    /// `local` is the zone's UDP address (a connection the gateway opened has no port to
    /// be reached at: a TLS leg whose Contact named the UDP port 5060 would send the
    /// peer's requests there). Without such a listener, the transport's default port.
    pub fn leg_host_port(&self, local: SocketAddr, transport: Transport) -> String {
        self.host_port(SocketAddr::new(local.ip(), self.leg_port(local, transport)))
    }

    /// The port of [`Config::leg_host_port`].
    pub fn leg_port(&self, local: SocketAddr, transport: Transport) -> u16 {
        let zone = self.zone_of_local(local);
        let opened_by_us = zone
            .and_then(|z| self.zone(z))
            .is_some_and(|z| z.address == local);
        if transport == Transport::Udp || !opened_by_us {
            return local.port();
        }
        let listening = self
            .rules
            .iter()
            .filter(|r| Some(r.from_zone) == zone)
            .flat_map(|r| &r.services)
            .find(|s| s.transport == transport)
            .map(|s| s.port);
        let default = if transport == Transport::Tls {
            5061
        } else {
            5060
        };
        listening.unwrap_or(default)
    }

    /// The gateway's own address in the zone of `flow` (its media relay is there): the
    /// flow's local address, or an intercepted flow's zone address.
    pub fn own_address(&self, flow: &Flow) -> SocketAddr {
        if !flow.intercepted {
            return flow.local;
        }
        self.zone_of_flow(flow)
            .and_then(|z| self.zone(z))
            .map_or(flow.local, |z| z.address)
    }

    /// Whether `ip` belongs to an inside zone (a gateway inside address included).
    pub fn is_inside(&self, ip: IpAddr) -> bool {
        // `::ffff:10.0.0.20` is 10.0.0.20 written as IPv6 (RFC 5118 section 4.6).
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        self.zones
            .iter()
            .filter(|z| z.inside)
            .any(|z| z.address.ip() == ip || z.networks.iter().any(|n| n.contains(&ip)))
    }

    /// The outgoing scan's view of the inside: its networks and the gateway's inside
    /// addresses.
    pub(crate) fn inside_scanner(&self) -> crate::hiding::Scanner {
        let inside = || self.zones.iter().filter(|z| z.inside);
        let own: Vec<IpNet> = inside().map(|z| IpNet::from(z.address.ip())).collect();
        crate::hiding::Scanner::new(inside().flat_map(|z| z.networks.iter()).chain(own.iter()))
    }

    /// First rule matching a message arriving in `zone` on `flow`.
    pub fn match_rule(&self, zone: ZoneId, flow: &Flow) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(zone, flow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn a_host_s_port_binds_udp_senders_but_not_a_stream_s_ephemeral_source_port() {
        let proxy = AddressObject::Host {
            ip: addr("203.0.113.10:5061").ip(),
            port: Some(5061),
        };
        let gw = addr("203.0.113.1:5061");
        let mut flow = Flow::udp(gw, addr("203.0.113.10:40000"));
        assert!(!proxy.contains_sender(&flow), "UDP: the port counts");
        flow.transport = Transport::Tls;
        assert!(proxy.contains_sender(&flow), "TLS from an ephemeral port");
        flow.remote = addr("203.0.113.11:5061");
        assert!(!proxy.contains_sender(&flow), "another address");
    }
}
