//! SIP over TCP and TLS: certificates and TLS configuration, the limits a stream peer is
//! held to, the task that runs one connection, and the runtime the driver uses.

pub(crate) mod conn;
pub(crate) mod limits;
pub(crate) mod runtime;
pub(crate) mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use sipward_core::{AddressObject, Transport};

use limits::LimitSettings;
use runtime::ListenerSpec;
use tls::{TlsHolder, TlsSettings};

/// A service's or address object's `protocol`/`transport` word.
pub(crate) fn transport_named(word: &str) -> Option<Transport> {
    match word.to_ascii_lowercase().as_str() {
        "udp" => Some(Transport::Udp),
        "tcp" => Some(Transport::Tcp),
        "tls" => Some(Transport::Tls),
        _ => None,
    }
}

/// The TLS port when a host names none (RFC 3261 §19.1.2).
const DEFAULT_TLS_PORT: u16 = 5061;

/// What the stream side is configured with, checked (the TLS files read) at load.
pub(crate) struct StreamSettings {
    pub listeners: Vec<ListenerSpec>,
    /// Each interface's TLS, by its address; `file:line` of its table for reload errors.
    pub tls: HashMap<IpAddr, (Arc<TlsHolder>, String)>,
    pub server_names: HashMap<SocketAddr, String>,
    pub limits: LimitSettings,
    /// Expired certificates and the like.
    pub warnings: Vec<String>,
}

impl StreamSettings {
    /// Listeners for every stream service on the interfaces its rules use, the TLS of
    /// each interface (its files read now: an error names the file), and the names
    /// configured next hops must show.
    pub(crate) fn new(
        core: &sipward_core::Config,
        tls: Vec<(IpAddr, TlsSettings, String)>,
        limits: LimitSettings,
    ) -> Result<Self> {
        let mut listeners: Vec<ListenerSpec> = Vec::new();
        let mut server_names = HashMap::new();
        let mut listen = |local: SocketAddr, transport: Transport| {
            if !listeners.iter().any(|l| l.local == local) {
                listeners.push(ListenerSpec { local, transport });
            }
        };
        for rule in &core.rules {
            // Phones (or peers, for an allow rule) connect to the interface they come from.
            if let Some(zone) = core.zones.get(rule.from_zone) {
                for service in rule
                    .services
                    .iter()
                    .filter(|s| s.transport != Transport::Udp)
                {
                    listen(
                        SocketAddr::new(zone.address.ip(), service.port),
                        service.transport,
                    );
                }
            }
            // A next hop reached over a stream connects back to the address the gateway
            // writes for itself on that side.
            if rule.next_hop_transport != Transport::Udp {
                if let Some(zone) = rule.to_zone.and_then(|z| core.zones.get(z)) {
                    listen(zone.address, rule.next_hop_transport);
                }
            }
            if let (Some(name), AddressObject::Host { ip, port }) =
                (&rule.server_name, &rule.destination)
            {
                let default_port = if rule.next_hop_transport == Transport::Tls {
                    DEFAULT_TLS_PORT
                } else {
                    5060
                };
                server_names.insert(
                    SocketAddr::new(*ip, port.unwrap_or(default_port)),
                    name.clone(),
                );
            }
        }
        let now = std::time::SystemTime::now();
        let mut holders = HashMap::new();
        let mut warnings = Vec::new();
        for (ip, settings, at) in tls {
            let holder = TlsHolder::new(settings, now).map_err(|e| anyhow!("{at}: tls: {e}"))?;
            warnings.extend(
                holder
                    .current()
                    .warnings
                    .iter()
                    .map(|w| format!("{at}: warning: {w}")),
            );
            holders.insert(ip, (Arc::new(holder), at));
        }
        if let Some(l) = listeners
            .iter()
            .find(|l| l.transport == Transport::Tls && !holders.contains_key(&l.local.ip()))
        {
            return Err(anyhow!(
                "a tls service listens on {}: give that interface a `tls = {{ certificate = ..., private_key = ... }}` table",
                l.local
            ));
        }
        Ok(Self {
            listeners,
            tls: holders,
            server_names,
            limits,
            warnings,
        })
    }

    /// Re-reads every interface's certificate files; the first that fails keeps all
    /// the old ones and says `file:line: tls: file: what`.
    pub(crate) fn reload_tls(&self, fresh: &StreamSettings) -> Result<()> {
        let now = std::time::SystemTime::now();
        // Checked whole first, so a failure leaves every interface as it was.
        for (ip, (holder, at)) in &fresh.tls {
            if !self.tls.contains_key(ip) {
                return Err(anyhow!("{at}: tls: a new TLS interface needs a restart"));
            }
            tls::build(&holder.settings(), now).map_err(|e| anyhow!("{at}: tls: {e}"))?;
        }
        for (ip, (holder, at)) in &fresh.tls {
            if let Some((running, _)) = self.tls.get(ip) {
                running
                    .reload(holder.settings(), now)
                    .map_err(|e| anyhow!("{at}: tls: {e}"))?;
            }
        }
        Ok(())
    }

    /// The runtime's setup.
    pub(crate) fn setup(&self, max_message_len: usize, agent: &str) -> runtime::StreamSetup {
        runtime::StreamSetup {
            listeners: self.listeners.clone(),
            tls: self
                .tls
                .iter()
                .map(|(ip, (h, _))| (*ip, h.clone()))
                .collect(),
            server_names: self.server_names.clone(),
            limits: self.limits.clone(),
            max_message_len,
            agent: agent.to_string(),
        }
    }
}
