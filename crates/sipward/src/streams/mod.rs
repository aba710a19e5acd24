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
        origin: &str,
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
                "{origin}: a tls service listens on {}: give that interface a `tls = {{ certificate = ..., private_key = ... }}` table",
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

    /// A warning when `limit` open files cannot hold the media's `media_files` and
    /// `max_connections` stream connections besides (none without stream services).
    pub(crate) fn file_limit_warning(&self, media_files: u64, limit: u64) -> Option<String> {
        if self.listeners.is_empty() {
            return None;
        }
        let connections = self.limits.max_connections as u64;
        let needed = media_files
            .saturating_add(connections)
            .saturating_add(self.listeners.len() as u64);
        (needed > limit).then(|| {
            format!(
                "warning: the open-file limit ({limit}) is below the {needed} that media ({media_files}) \
                 and [transport] max_connections = {connections} can need: connections past it are \
                 refused by the kernel; raise it (LimitNOFILE=, ulimit -n) or lower max_connections"
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::tls::tests::Fixture;

    /// A configuration with TCP phones on 5060, TLS phones on 5061 and a TLS trunk,
    /// the certificate paths relative to the file.
    fn text(extra_lan: &str) -> String {
        format!(
            r#"
[[interface]]
name = "lan"
address = "192.0.2.1"
networks = ["192.0.2.0/24"]
inside = true
{extra_lan}
[[interface]]
name = "wan"
address = "198.51.100.1"
networks = ["198.51.100.0/24"]
tls = {{ certificate = "server.crt", private_key = "server.key", ca = "ca.crt" }}
[[address]]
name = "phones"
network = "192.0.2.0/24"
[[address]]
name = "trunk"
host = "198.51.100.10"
transport = "tls"
server_name = "sip.example.test"
[alg.sip]
[service.sip]
protocol = "udp"
port = 5060
alg = "sip"
[service.sip-tcp]
protocol = "tcp"
port = 5060
alg = "sip"
[service.sip-tls]
protocol = "tls"
port = 5061
alg = "sip"
[[rule]]
action = "nat"
from = "lan"
source = "phones"
to = "wan"
destination = "trunk"
service = "sip-tcp"
[[rule]]
action = "nat"
from = "lan"
source = "phones"
to = "wan"
destination = "trunk"
service = "sip-tls"
[transport]
max_connections = 500
"#
        )
    }
    fn load(f: &Fixture, text: &str) -> Result<(sipward_core::Config, StreamSettings)> {
        let origin = f.path("gw.toml").display().to_string();
        let file = crate::config::Config::parse(text, &origin)?;
        let core = file.compile(&origin)?;
        let streams = file.streams(&origin, &core)?;
        Ok((core, streams))
    }

    #[test]
    fn listeners_tls_and_next_hops_come_from_the_configuration() {
        let f = Fixture::new("mod-config");
        let tls = "tls = { certificate = \"server.crt\", private_key = \"server.key\" }";
        let (core, s) = load(&f, &text(tls)).unwrap_or_else(|e| panic!("{e:#}"));
        let mut listeners: Vec<(String, Transport)> = s
            .listeners
            .iter()
            .map(|l| (l.local.to_string(), l.transport))
            .collect();
        listeners.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            listeners,
            vec![
                ("192.0.2.1:5060".to_string(), Transport::Tcp),
                ("192.0.2.1:5061".to_string(), Transport::Tls),
                // The trunk reached over TLS connects back to the outside address.
                ("198.51.100.1:5060".to_string(), Transport::Tls),
            ]
        );
        assert_eq!(s.tls.len(), 2, "both interfaces' certificates loaded");
        let trunk: SocketAddr = "198.51.100.10:5061"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            s.server_names.get(&trunk),
            Some(&"sip.example.test".to_string())
        );
        assert_eq!(s.limits.max_connections, 500);
        let rule = &core.rules[0];
        assert_eq!(
            (rule.next_hop_transport, rule.services[0].transport),
            (Transport::Tls, Transport::Tcp)
        );
        // Media (say 1000 files) and 500 connections do not fit in 1000 files.
        let warning = s.file_limit_warning(1000, 1000).unwrap_or_default();
        assert!(warning.contains("max_connections = 500"), "{warning}");
        assert_eq!(s.file_limit_warning(1000, 2000), None);
    }

    #[test]
    fn a_tls_service_without_a_certificate_and_bad_words_are_refused_with_their_line() {
        let f = Fixture::new("mod-config-bad");
        let error = |text: &str| {
            load(&f, text)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        let e = error(&text(""));
        assert!(e.contains("192.0.2.1:5061") && e.contains("tls = {"), "{e}");
        let e = error(&text(
            "tls = { certificate = \"nope.crt\", private_key = \"server.key\" }",
        ));
        assert!(
            e.contains("gw.toml:7: tls: ") && e.contains("nope.crt: cannot read"),
            "{e}"
        );
        let e = error(&text("").replace("transport = \"tls\"", "transport = \"sctp\""));
        assert!(e.contains("transport \"sctp\""), "{e}");
        let e = error(&text("").replace("protocol = \"tcp\"", "protocol = \"ws\""));
        assert!(e.contains("protocol \"ws\""), "{e}");
    }

    /// examples/streams.toml loads with certificates made as its comment says.
    #[test]
    fn the_streams_example_loads_with_certificates_from_sipward_cert() {
        let f = Fixture::new("mod-example");
        let args = crate::cert::CertArgs::for_test(
            "gw.example.test",
            &["10.0.0.1", "198.51.100.2"],
            &f.path("certs"),
        );
        crate::cert::run(&args).unwrap_or_else(|e| panic!("{e:#}"));
        let text = include_str!("../../../../examples/streams.toml");
        let (core, s) = load(&f, text).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.tls.len(), 2);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let mut listeners: Vec<String> = s
            .listeners
            .iter()
            .map(|l| format!("{} {}", l.local, l.transport.via_token()))
            .collect();
        listeners.sort();
        assert_eq!(
            listeners,
            [
                "10.0.0.1:5060 TCP",
                "10.0.0.1:5061 TLS",
                "198.51.100.2:5060 TLS",
                "198.51.100.2:5061 TLS"
            ]
        );
        assert_eq!(core.zones[1].advertise.as_deref(), Some("gw.example.test"));
    }
}
