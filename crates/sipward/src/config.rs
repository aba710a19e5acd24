//! Configuration file: TOML, unknown fields refused, errors with file and line.
//!
//! The file mirrors the founding brief's objects: interfaces (zones), address objects, an
//! ALG object with its options, a service that uses the ALG, and an ordered rule set. It
//! compiles to [`sipward_core::Config`]; every name a rule uses must exist.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use serde::Deserialize;
use sipward_core::config::Latching;
use sipward_core::{Action, AddressObject, AlgOptions, LeakPolicy, Rule, Zone};
use sipward_core::{FilterMode, ProtectionOptions, Rate};
use sipward_proto::Limits;
use toml::Spanned;

use crate::secret::Secret;

/// The configuration `sipward run` uses when no file is given: everything on loopback.
pub(crate) const EMBEDDED_DEFAULT: &str = include_str!("../../../examples/loopback.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    #[serde(default)]
    gateway: GatewaySection,
    #[serde(default)]
    interface: Vec<InterfaceSection>,
    #[serde(default)]
    address: Vec<AddressSection>,
    #[serde(default)]
    alg: HashMap<String, AlgSection>,
    #[serde(default)]
    service: HashMap<String, ServiceSection>,
    #[serde(default)]
    rule: Vec<RuleSection>,
    #[serde(default)]
    protection: ProtectionSection,
    /// Absent: no admin API. Present, it must carry a token.
    #[serde(default)]
    admin: Option<AdminSection>,
    #[serde(default)]
    relay: RelaySection,
    /// Stream (TCP, TLS) limits.
    #[serde(default)]
    transport: crate::streams::limits::TransportSettings,
    /// Transparent mode's listener and firewall (used when an interface intercepts).
    #[serde(default)]
    transparent: Option<TransparentSection>,
    /// What outlives the process.
    #[serde(default)]
    state: StateSection,
    /// An active/standby pair sharing the state store.
    #[serde(default)]
    ha: Option<HaSection>,
    /// Wire-layer limits for `sipward validate` when the file has no ALG.
    #[serde(default)]
    pub(crate) limits: LimitsConfig,
    /// The file's text, to turn spans into line numbers in errors.
    #[serde(skip)]
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewaySection {
    #[serde(default = "default_agent")]
    name: Spanned<String>,
    /// The key of the hidden Call-IDs and routing tokens (random per run by default;
    /// set it so that they survive a restart).
    #[serde(default)]
    secret: Option<Spanned<String>>,
    /// Where security events go as JSON lines: "-" (standard output, the default), a
    /// file path, or "off".
    #[serde(default = "default_events")]
    events: Spanned<String>,
    /// A syslog collector (RFC 5424 over UDP) that also gets every event.
    #[serde(default)]
    syslog: Option<Spanned<String>>,
    /// A Homer collector (HEP v3 over UDP) that gets a copy of every SIP datagram.
    #[serde(default)]
    hep: Option<Spanned<String>>,
    /// The capture agent id in HEP packets.
    #[serde(default = "default_hep_id")]
    hep_id: u32,
}

fn default_hep_id() -> u32 {
    2001
}

/// `[relay]`: where the media relay thread runs and how it waits. Every key optional:
/// by default it runs on any CPU, normally scheduled, and sleeps whenever idle.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelaySection {
    /// Pin the relay thread to this CPU.
    #[serde(default)]
    cpu: Option<Spanned<usize>>,
    /// SCHED_FIFO priority (1-99) for the relay thread.
    #[serde(default)]
    realtime_priority: Option<Spanned<u32>>,
    /// Microseconds the relay keeps polling after forwarding before it sleeps.
    #[serde(default)]
    busy_poll_us: Option<Spanned<u64>>,
    /// How the relay waits on its sockets: "auto", "io_uring" or "epoll".
    #[serde(default)]
    engine: Option<Spanned<String>>,
}

/// `[admin]`: the admin API, metrics and dashboard.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    #[serde(default = "default_admin_listen_spanned")]
    listen: Spanned<String>,
    /// The bearer token every API request must carry.
    #[serde(default)]
    token: Option<Spanned<String>>,
    /// Connections served at once (default 64); more are closed when accepted.
    #[serde(default)]
    max_connections: Option<Spanned<usize>>,
    /// Seconds a connection may take to send a request head, from its opening or its
    /// previous response (default 10).
    #[serde(default)]
    request_timeout: Option<Spanned<u64>>,
}

fn default_admin_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_admin_listen_spanned() -> Spanned<String> {
    Spanned::new(0..0, default_admin_listen())
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            name: default_agent(),
            secret: None,
            events: default_events(),
            syslog: None,
            hep: None,
            hep_id: default_hep_id(),
        }
    }
}

fn default_events() -> Spanned<String> {
    Spanned::new(0..0, "-".into())
}

/// `[protection]`: attack protection; every key optional (defaults in the README).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectionSection {
    max_register_failures: Option<Spanned<u32>>,
    max_failed_users_per_source: Option<Spanned<usize>>,
    failure_window: Option<Spanned<u64>>,
    ban_time: Option<Spanned<u64>>,
    new_requests_per_second: Option<Spanned<f64>>,
    new_requests_burst: Option<Spanned<f64>>,
    dialog_requests_per_second: Option<Spanned<f64>>,
    dialog_requests_burst: Option<Spanned<f64>>,
    responses_per_second: Option<Spanned<f64>>,
    responses_burst: Option<Spanned<f64>>,
    admission_per_second: Option<Spanned<f64>>,
    admission_burst: Option<Spanned<f64>>,
    /// The outside direction's own admission budget; default: the same as inside's.
    outside_admission_per_second: Option<Spanned<f64>>,
    outside_admission_burst: Option<Spanned<f64>>,
    /// Fair shares of the bounded tables (see the README's [protection] block).
    table_reserve: Option<Spanned<f64>>,
    table_share_floor: Option<Spanned<usize>>,
    outside_table_share: Option<Spanned<f64>>,
    retry_after: Option<Spanned<u32>>,
    /// Address objects exempt from per-source limits; default: the nat rules'
    /// destinations (the upstream proxy carries everyone's traffic).
    exempt: Option<Vec<Spanned<String>>>,
    scanner_agents: Option<Vec<Spanned<String>>>,
    scanner_filter: Option<Spanned<String>>,
    unknown_method_filter: Option<Spanned<String>>,
    deny: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
    network_filter: Option<Spanned<String>>,
    max_tracked_sources: Option<Spanned<usize>>,
    max_bans: Option<Spanned<usize>>,
}

fn default_agent() -> Spanned<String> {
    Spanned::new(0..0, "sipward".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceSection {
    name: Spanned<String>,
    /// The gateway's own IP address on this interface.
    address: Spanned<IpAddr>,
    #[serde(default)]
    networks: Vec<Spanned<String>>,
    /// Inside (protected) interface: its addresses never leave the gateway.
    #[serde(default)]
    inside: bool,
    /// UDP ports media is relayed on at this address, `"low-high"`; default
    /// 30000-39999.
    #[serde(default)]
    media_ports: Option<Spanned<String>>,
    /// Transparent mode: SIP this interface's phones send to other addresses is diverted
    /// to the gateway by the router (TPROXY). Inside interfaces only.
    #[serde(default)]
    intercept: Option<Spanned<bool>>,
    /// Certificate, key and trusted CAs for the `tls` services on this interface.
    #[serde(default)]
    tls: Option<Spanned<crate::streams::tls::TlsSettings>>,
    /// A name written in Via and Contact instead of the address (what a TLS peer's
    /// certificate check expects).
    #[serde(default)]
    advertise: Option<Spanned<String>>,
}

/// `[state]`: what outlives the process.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateSection {
    /// The hiding secret's file (hex; generated, mode 0600, if absent): a restarted
    /// process or the other node of a pair then recognises the names in its state.
    #[serde(default)]
    secret_file: Option<Spanned<String>>,
    /// The restart journal's directory: bindings, calls and bans survive a restart.
    #[serde(default)]
    dir: Option<Spanned<String>>,
    /// A Redis or Valkey server (`redis://host:port/db`) that keeps the state for a
    /// restart and for the other node of a pair.
    #[serde(default)]
    store: Option<Spanned<String>>,
}

/// `[ha]`: this node's part in a pair sharing `[state] store`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HaSection {
    /// "active" (the default) or "standby" (follows the store, sends nothing, until
    /// promoted).
    #[serde(default)]
    role: Option<Spanned<String>>,
    /// The name the pair's keys are filed under in the store (`sw:{group}:...`).
    #[serde(default)]
    group: Option<Spanned<String>>,
}

/// The store and this node's role, as `sipward run` uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HaSettings {
    pub(crate) store: crate::redis_store::StoreSettings,
    pub(crate) standby: bool,
}

/// `[transparent]`: the TPROXY listener and the firewall rules that feed it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransparentSection {
    /// The port of the listener the diverted datagrams are delivered to (default 15060).
    #[serde(default)]
    listen_port: Option<Spanned<u16>>,
    /// The packet mark of diverted datagrams, routed to the local table (default 0x5157).
    #[serde(default)]
    mark: Option<Spanned<u32>>,
    /// The routing table holding the `local` route for marked packets (default 100).
    #[serde(default)]
    route_table: Option<Spanned<u32>>,
    /// Install the nftables rules and the policy route at start, remove them at stop.
    #[serde(default)]
    manage_firewall: bool,
}

/// What the driver needs for transparent mode (`[transparent]` with the defaults filled
/// in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TransparentSettings {
    pub(crate) listen_port: u16,
    pub(crate) mark: u32,
    pub(crate) route_table: u32,
    pub(crate) manage_firewall: bool,
}

/// `[transparent]` defaults: the listener port, the mark ("QW", an unlikely clash) and
/// the routing table.
const DEFAULT_LISTEN_PORT: u16 = 15060;
const DEFAULT_MARK: u32 = 0x5157;
const DEFAULT_ROUTE_TABLE: u32 = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressSection {
    name: Spanned<String>,
    /// `ip` or `ip:port`.
    #[serde(default)]
    host: Option<Spanned<String>>,
    /// `ip/prefix`.
    #[serde(default)]
    network: Option<Spanned<String>>,
    /// How a host is reached as a next hop: `udp` (default), `tcp` or `tls`.
    #[serde(default)]
    transport: Option<Spanned<String>>,
    /// The name its TLS certificate must carry (DNS or IP; default: its address).
    #[serde(default)]
    server_name: Option<Spanned<String>>,
    /// Send it an OPTIONS this often (seconds) while it is a rule's next hop; its
    /// answers show it up or down (`/api/v1/peers`).
    #[serde(default)]
    options_ping: Option<Spanned<u64>>,
}

/// The ALG object: the brief's options plus the wire-layer limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlgSection {
    max_sessions_per_id: Option<Spanned<usize>>,
    max_registration_time: Option<Spanned<u64>>,
    request_response_timeout: Option<Spanned<u64>>,
    signal_timeout: Option<Spanned<u64>>,
    data_channel_timeout: Option<Spanned<u64>>,
    allow_media_bypass: Option<bool>,
    /// "off", "nat" or "any".
    media_latching: Option<Spanned<String>>,
    /// An SDP with SDES keys (`a=crypto`) toward a leg without TLS: "refuse" (488, the
    /// default) or "allow".
    #[serde(default)]
    sdes_on_plain_leg: Option<Spanned<String>>,
    max_registrations: Option<Spanned<usize>>,
    max_dialogs: Option<Spanned<usize>>,
    max_transactions: Option<Spanned<usize>>,
    /// "rewrite", "remove" or "refuse": an outgoing outside datagram that still names
    /// an inside address.
    leak_policy: Option<Spanned<String>>,
    // Wire-layer limits of this ALG (serde's flatten cannot be combined with
    // deny_unknown_fields, so they are listed here).
    max_param_len: Option<Spanned<usize>>,
    max_message_len: Option<Spanned<usize>>,
    max_sdp_len: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    max_vias: Option<Spanned<usize>>,
    max_routes: Option<Spanned<usize>>,
    max_contacts: Option<Spanned<usize>>,
    max_params: Option<Spanned<usize>>,
    max_sdp_media: Option<Spanned<usize>>,
    max_sdp_lines: Option<Spanned<usize>>,
}

impl AlgSection {
    fn limits(&self) -> LimitsConfig {
        LimitsConfig {
            max_param_len: self.max_param_len.clone(),
            max_message_len: self.max_message_len.clone(),
            max_sdp_len: self.max_sdp_len.clone(),
            max_headers: self.max_headers.clone(),
            max_vias: self.max_vias.clone(),
            max_routes: self.max_routes.clone(),
            max_contacts: self.max_contacts.clone(),
            max_params: self.max_params.clone(),
            max_sdp_media: self.max_sdp_media.clone(),
            max_sdp_lines: self.max_sdp_lines.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    protocol: Spanned<String>,
    /// One port or a list (SIP on 5080 or 5070 beside 5060 is common).
    port: Spanned<PortList>,
    alg: Spanned<String>,
}

/// A service's `port`: an integer or a list of integers, each checked at compile time
/// (with its line) rather than by the parser.
#[derive(Debug)]
enum PortList {
    One(i64),
    Many(Vec<Spanned<i64>>),
}

impl<'de> Deserialize<'de> for PortList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PortList;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number or a list of port numbers")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<PortList, E> {
                Ok(PortList::One(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<PortList, E> {
                Ok(PortList::One(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<PortList, A::Error> {
                let mut ports = Vec::new();
                // A service has a handful of ports; a longer list is refused while read.
                while let Some(p) = seq.next_element::<Spanned<i64>>()? {
                    if ports.len() == MAX_SERVICE_PORTS {
                        return Err(serde::de::Error::custom(format!(
                            "at most {MAX_SERVICE_PORTS} ports"
                        )));
                    }
                    ports.push(p);
                }
                Ok(PortList::Many(ports))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// How a rule's host destination is reached (its address object's options).
#[derive(Debug, Default)]
struct NextHop {
    transport: sipward_core::Transport,
    server_name: Option<String>,
    udp_only: bool,
    options_ping: Option<Duration>,
}

/// The most ports one service may list.
const MAX_SERVICE_PORTS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    #[serde(default)]
    name: Option<Spanned<String>>,
    action: Spanned<String>,
    from: Spanned<String>,
    #[serde(default = "any")]
    source: Spanned<String>,
    to: Spanned<String>,
    #[serde(default = "any")]
    destination: Spanned<String>,
    /// One service's name or a list of them (`["sip-udp", "sip-tls"]`).
    service: Spanned<ServiceNames>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServiceNames {
    One(String),
    Many(Vec<String>),
}

impl ServiceNames {
    fn names(&self) -> &[String] {
        match self {
            ServiceNames::One(name) => std::slice::from_ref(name),
            ServiceNames::Many(names) => names,
        }
    }
}

fn any() -> Spanned<String> {
    Spanned::new(0..0, "any".into())
}

/// Wire-layer limits; every field optional, defaulting to the founding brief's values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsConfig {
    max_param_len: Option<Spanned<usize>>,
    max_message_len: Option<Spanned<usize>>,
    max_sdp_len: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    max_vias: Option<Spanned<usize>>,
    max_routes: Option<Spanned<usize>>,
    max_contacts: Option<Spanned<usize>>,
    max_params: Option<Spanned<usize>>,
    max_sdp_media: Option<Spanned<usize>>,
    max_sdp_lines: Option<Spanned<usize>>,
}

impl Config {
    /// Reads and checks a configuration file. Errors name the file and line.
    pub(crate) fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub(crate) fn parse(text: &str, origin: &str) -> Result<Config> {
        let mut config = toml::from_str::<Config>(text).map_err(|e| {
            let line = e.span().map(|s| {
                text.get(..s.start)
                    .map_or(1, |t| t.matches('\n').count() + 1)
            });
            // The parser's message names the type, not the key: the line's text does.
            let written = line
                .and_then(|l| text.lines().nth(l - 1))
                .map(str::trim)
                .filter(|l| !l.is_empty() && l.len() <= 120)
                // The file's bytes reach a terminal: control characters shown escaped.
                .map(|l| {
                    let shown: String = l
                        .chars()
                        .map(|c| {
                            if c.is_control() {
                                c.escape_unicode().to_string()
                            } else {
                                c.to_string()
                            }
                        })
                        .collect();
                    format!("{shown}: ")
                })
                .unwrap_or_default();
            // An interface address is the only IP-typed key: say what it takes, since
            // "[fd00::1]:5060" is how the same address is written everywhere else.
            let hint = if e.message() == "invalid IP address syntax" {
                " (an interface's address is the bare address, such as 192.0.2.1 or fd00::1: no brackets or port; the service gives the port)"
            } else {
                ""
            };
            match line {
                Some(line) => anyhow!("{origin}:{line}: {written}{}{hint}", e.message()),
                None => anyhow!("{origin}: {}{hint}", e.message()),
            }
        })?;
        config.text = text.to_owned();
        Ok(config)
    }

    /// `file:line` of a value, for errors about it.
    fn at<T>(&self, origin: &str, value: &Spanned<T>) -> String {
        let start = value.span().start;
        if value.span().is_empty() {
            return origin.to_owned(); // a default, not written in the file
        }
        let line = self
            .text
            .get(..start)
            .map_or(1, |t| t.matches('\n').count() + 1);
        format!("{origin}:{line}")
    }

    /// The limits `sipward validate` applies: the ALG's if there is exactly one.
    pub(crate) fn validate_limits(&self, origin: &str) -> Result<Limits> {
        match self.alg.iter().next() {
            Some((name, alg)) if self.alg.len() == 1 => {
                self.checked_limits(origin, &format!("[alg.{name}]"), &alg.limits())
            }
            _ => self.checked_limits(origin, "[limits]", &self.limits),
        }
    }

    /// An optional numeric key, refused with its line when outside `lo..=hi` (NaN and
    /// infinities included): every duration and count an operator sets ends up in
    /// arithmetic on instants or in table sizes, where an absurd value would overflow
    /// or starve the gateway at run time instead of failing `check`.
    fn ranged<T>(
        &self,
        origin: &str,
        key: &str,
        value: &Option<Spanned<T>>,
        (lo, hi): (T, T),
        unit: &str,
    ) -> Result<Option<T>>
    where
        T: PartialOrd + Copy + std::fmt::Display,
    {
        let Some(v) = value else { return Ok(None) };
        let x = *v.get_ref();
        if lo <= x && x <= hi {
            Ok(Some(x))
        } else {
            bail!(
                "{}: {key} = {x}: out of range, expected {lo} to {hi}{unit}",
                self.at(origin, v)
            )
        }
    }

    /// The wire-layer limits of a section, each checked against its range
    /// ([`LIMIT_RANGES`]).
    fn checked_limits(&self, origin: &str, section: &str, l: &LimitsConfig) -> Result<Limits> {
        let d = Limits::default();
        let get = |key: &str, v: &Option<Spanned<usize>>, dflt: usize| -> Result<usize> {
            let range = LIMIT_RANGES
                .iter()
                .find(|(k, _)| *k == key)
                .map_or((0, usize::MAX), |(_, r)| *r);
            Ok(self
                .ranged(origin, &format!("{section} {key}"), v, range, "")?
                .unwrap_or(dflt))
        };
        Ok(Limits {
            max_param_len: get("max_param_len", &l.max_param_len, d.max_param_len)?,
            max_message_len: get("max_message_len", &l.max_message_len, d.max_message_len)?,
            max_sdp_len: get("max_sdp_len", &l.max_sdp_len, d.max_sdp_len)?,
            max_headers: get("max_headers", &l.max_headers, d.max_headers)?,
            max_vias: get("max_vias", &l.max_vias, d.max_vias)?,
            max_routes: get("max_routes", &l.max_routes, d.max_routes)?,
            max_contacts: get("max_contacts", &l.max_contacts, d.max_contacts)?,
            max_params: get("max_params", &l.max_params, d.max_params)?,
            max_sdp_media: get("max_sdp_media", &l.max_sdp_media, d.max_sdp_media)?,
            max_sdp_lines: get("max_sdp_lines", &l.max_sdp_lines, d.max_sdp_lines)?,
        })
    }

    /// Compiles to the core's configuration, checking every cross-reference.
    pub(crate) fn compile(&self, origin: &str) -> Result<sipward_core::Config> {
        self.check_events_path(origin)?;
        // The name goes into every answer's Warning header as its agent: a token
        // (RFC 3261 warn-agent), or a CR LF in it would write headers of its own.
        let agent = self.gateway.name.get_ref();
        // It is copied into every answer, which must stay a datagram: a long name made
        // the 400s and 503s too large to send.
        if agent.len() > MAX_AGENT_LEN {
            bail!(
                "{}: [gateway] name: at most {MAX_AGENT_LEN} characters (it is the Warning header's agent), not {}",
                self.at(origin, &self.gateway.name),
                agent.len()
            );
        }
        if agent.is_empty()
            || !agent
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
        {
            bail!(
                "{}: [gateway] name {agent:?}: use letters, digits and - . ! % * _ + ` ' ~ (it is the Warning header's agent)",
                self.at(origin, &self.gateway.name)
            );
        }
        if self.interface.is_empty() {
            bail!("{origin}: no [[interface]]: the gateway needs at least an inside and an outside one");
        }
        let mut zones = Vec::new();
        for i in &self.interface {
            let name = i.name.get_ref();
            let mut networks = Vec::new();
            for n in &i.networks {
                let net = parse_network(n.get_ref()).map_err(|e| {
                    anyhow!("{}: interface {name:?}: network {e}", self.at(origin, n))
                })?;
                // A network claimed by two interfaces would route its sources to
                // whichever comes first: the second claim is almost surely a typo.
                for (other, theirs) in zones
                    .iter()
                    .flat_map(|z: &Zone| z.networks.iter().map(move |t| (z.name.as_str(), t)))
                {
                    if theirs.contains(&net.network()) || net.contains(&theirs.network()) {
                        bail!(
                            "{}: interface {name:?}: network {net} overlaps {theirs} of interface {other:?}",
                            self.at(origin, n)
                        );
                    }
                }
                networks.push(net);
            }
            let ip = *i.address.get_ref();
            if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255])
            {
                bail!(
                    "{}: interface {name:?}: address {ip} cannot be bound as the gateway's own address",
                    self.at(origin, &i.address)
                );
            }
            if let Some(other) = zones.iter().find(|z| z.address.ip() == ip) {
                bail!(
                    "{}: interface {name:?}: address {ip} is already interface {:?}'s",
                    self.at(origin, &i.address),
                    other.name
                );
            }
            if zones.iter().any(|z: &Zone| &z.name == name) {
                bail!(
                    "{}: interface {name:?} defined twice",
                    self.at(origin, &i.name)
                );
            }
            let media_ports = match &i.media_ports {
                None => DEFAULT_MEDIA_PORTS,
                Some(r) => parse_port_range(r.get_ref()).map_err(|e| {
                    anyhow!(
                        "{}: interface {name:?}: media_ports {:?}: {e}",
                        self.at(origin, r),
                        r.get_ref()
                    )
                })?,
            };
            let intercept = match &i.intercept {
                Some(v) if *v.get_ref() && !i.inside => bail!(
                    "{}: interface {name:?}: intercept = true needs an inside interface (`inside = true`): the router diverts the SIP its phones send",
                    self.at(origin, v)
                ),
                Some(v) => *v.get_ref(),
                None => false,
            };
            zones.push(Zone {
                name: name.clone(),
                address: SocketAddr::new(ip, 0),
                networks,
                inside: i.inside,
                media_ports: Some(media_ports),
                intercept,
                advertise: i.advertise.as_ref().map(|a| a.get_ref().clone()),
            });
        }
        if !zones.iter().any(|z| z.inside) || zones.iter().all(|z| z.inside) {
            bail!("{origin}: mark at least one interface `inside = true` and leave at least one outside");
        }
        let mut objects: HashMap<&str, AddressObject> = HashMap::new();
        objects.insert("any", AddressObject::Any);
        for a in &self.address {
            let name = a.name.get_ref();
            let obj = match (&a.host, &a.network) {
                (Some(h), None) => parse_host(h.get_ref())
                    .map_err(|e| anyhow!("{}: address {name:?}: {e}", self.at(origin, h)))?,
                (None, Some(n)) => {
                    AddressObject::Network(parse_network(n.get_ref()).map_err(|e| {
                        anyhow!("{}: address {name:?}: network {e}", self.at(origin, n))
                    })?)
                }
                _ => bail!(
                    "{}: address {name:?}: give exactly one of `host` or `network`",
                    self.at(origin, &a.name)
                ),
            };
            if objects.insert(name.as_str(), obj).is_some() {
                bail!(
                    "{}: address {name:?} defined twice",
                    self.at(origin, &a.name)
                );
            }
        }
        if self.alg.len() != 1 {
            bail!(
                "{origin}: define exactly one [alg.NAME] (found {})",
                self.alg.len()
            );
        }
        let (alg_name, alg) = self
            .alg
            .iter()
            .next()
            .ok_or_else(|| anyhow!("{origin}: no ALG"))?;
        let d = AlgOptions::default();
        let media_latching = match &alg.media_latching {
            None => d.media_latching,
            Some(v) => match v.get_ref().as_str() {
                "off" => Latching::Off,
                "nat" => Latching::Nat,
                "any" => Latching::Any,
                other => bail!(
                    "{}: alg {alg_name:?}: media_latching {other:?}: expected \"off\", \"nat\" or \"any\"",
                    self.at(origin, v)
                ),
            },
        };
        let leak_policy = match &alg.leak_policy {
            None => d.leak_policy,
            Some(v) => match v.get_ref().as_str() {
                "rewrite" => LeakPolicy::Rewrite,
                "remove" => LeakPolicy::Remove,
                "refuse" => LeakPolicy::Refuse,
                other => bail!(
                    "{}: alg {alg_name:?}: leak_policy {other:?}: expected \"rewrite\", \"remove\" or \"refuse\"",
                    self.at(origin, v)
                ),
            },
        };
        let section = format!("[alg.{alg_name}]");
        let key = |k: &str| format!("{section} {k}");
        let secs = |k: &str, v: &Option<Spanned<u64>>, range, d: Duration| -> Result<Duration> {
            Ok(self
                .ranged(origin, &key(k), v, range, " seconds")?
                .map_or(d, Duration::from_secs))
        };
        let count = |k: &str, v: &Option<Spanned<usize>>, d: usize| -> Result<usize> {
            Ok(self
                .ranged(origin, &key(k), v, (1, MAX_TABLE), "")?
                .unwrap_or(d))
        };
        let alg_options = AlgOptions {
            max_sessions_per_id: count(
                "max_sessions_per_id",
                &alg.max_sessions_per_id,
                d.max_sessions_per_id,
            )?,
            max_registration_time: secs(
                "max_registration_time",
                &alg.max_registration_time,
                (1, 7 * DAY),
                d.max_registration_time,
            )?,
            request_response_timeout: secs(
                "request_response_timeout",
                &alg.request_response_timeout,
                (1, DAY),
                d.request_response_timeout,
            )?,
            signal_timeout: secs(
                "signal_timeout",
                &alg.signal_timeout,
                (1, 30 * DAY),
                d.signal_timeout,
            )?,
            data_channel_timeout: secs(
                "data_channel_timeout",
                &alg.data_channel_timeout,
                (1, 30 * DAY),
                d.data_channel_timeout,
            )?,
            allow_media_bypass: alg.allow_media_bypass.unwrap_or(d.allow_media_bypass),
            media_latching,
            limits: self.checked_limits(origin, &section, &alg.limits())?,
            max_registrations: count(
                "max_registrations",
                &alg.max_registrations,
                d.max_registrations,
            )?,
            max_dialogs: count("max_dialogs", &alg.max_dialogs, d.max_dialogs)?,
            max_transactions: count(
                "max_transactions",
                &alg.max_transactions,
                d.max_transactions,
            )?,
            leak_policy,
            udp_switch_size: match self.transport.udp_mtu {
                None => d.udp_switch_size,
                Some(m) if (576..=65_535).contains(&m) => m - 200,
                Some(m) => bail!(
                    "{}: [transport] udp_mtu = {m}: out of range, expected 576 to 65535 (bytes; requests over udp_mtu - 200 go over TCP)",
                    self.section_at(origin, "[transport]")
                ),
            },
            allow_sdes_on_plain_leg: match &alg.sdes_on_plain_leg {
                None => d.allow_sdes_on_plain_leg,
                Some(v) => match v.get_ref().as_str() {
                    "refuse" => false,
                    "allow" => true,
                    other => bail!(
                        "{}: alg {alg_name:?}: sdes_on_plain_leg {other:?}: expected \"refuse\" or \"allow\"",
                        self.at(origin, v)
                    ),
                },
            },
        };
        let mut service_port = None;
        let mut stream_port = None;
        let mut service_ports: HashMap<&str, (sipward_core::Transport, Vec<u16>)> = HashMap::new();
        for (name, s) in &self.service {
            let Some(transport) = crate::streams::transport_named(s.protocol.get_ref()) else {
                bail!(
                    "{}: service {name:?}: protocol {:?}: expected \"udp\", \"tcp\" or \"tls\"",
                    self.at(origin, &s.protocol),
                    s.protocol.get_ref()
                );
            };
            if s.alg.get_ref() != alg_name {
                bail!(
                    "{}: service {name:?}: no ALG named {:?}",
                    self.at(origin, &s.alg),
                    s.alg.get_ref()
                );
            }
            let ports = self.service_port_list(origin, name, &s.port)?;
            if transport != sipward_core::Transport::Udp {
                // Stream services listen on their own ports (5061 for TLS, commonly).
                stream_port.get_or_insert(ports.first().copied().unwrap_or(5061));
                service_ports.insert(name.as_str(), (transport, ports));
                continue;
            }
            // The gateway's own addresses listen on the first port (explicit mode);
            // the others are matched on intercepted messages' original destinations.
            let first = ports.first().copied().unwrap_or(5060);
            match service_port {
                None => service_port = Some(first),
                Some(p) if p == first => {}
                Some(_) => bail!(
                    "{}: service {name:?}: all UDP services must start with the same port for now (the gateway's own SIP port)",
                    self.at(origin, &s.port)
                ),
            }
            service_ports.insert(name.as_str(), (transport, ports));
        }
        let port = service_port
            .or(stream_port)
            .ok_or_else(|| anyhow!("{origin}: define a [service.NAME] that uses the ALG"))?;
        for (z, i) in zones.iter_mut().zip(&self.interface) {
            z.address.set_port(port);
            if let Some((low, high)) = z.media_ports {
                if (low..=high).contains(&port) {
                    bail!(
                        "{}: interface {:?}: media_ports {low}-{high} contain the SIP port {port}",
                        i.media_ports
                            .as_ref()
                            .map_or_else(|| origin.to_owned(), |r| self.at(origin, r)),
                        z.name
                    );
                }
            }
        }
        let zone_id = |name: &str| zones.iter().position(|z| z.name == name);
        let mut rule_names: HashMap<&str, usize> = HashMap::new();
        for (i, r) in self.rule.iter().enumerate() {
            let Some(name) = &r.name else { continue };
            if let Some(first) = rule_names.insert(name.get_ref(), i + 1) {
                bail!(
                    "{}: rule {} ({:?}): the name is already rule {first}'s",
                    self.at(origin, name),
                    i + 1,
                    name.get_ref()
                );
            }
        }
        let mut rules = Vec::new();
        for (i, r) in self.rule.iter().enumerate() {
            let label = format!(
                "rule {} ({})",
                i + 1,
                r.name
                    .as_ref()
                    .map_or_else(|| r.action.get_ref().clone(), |n| n.get_ref().clone())
            );
            // `file:line: rule N (name): what`, the line of the offending key.
            let err = |at: String, what: String| anyhow!("{at}: {label}: {what}");
            let action = match r.action.get_ref().to_ascii_lowercase().as_str() {
                "nat" => Action::Nat,
                "allow" => Action::Allow,
                "drop" => Action::Drop,
                "reject" => Action::Reject,
                other => {
                    return Err(err(
                        self.at(origin, &r.action),
                        format!("unknown action {other:?} (nat, allow, drop, reject)"),
                    ))
                }
            };
            let from_zone = zone_id(r.from.get_ref()).ok_or_else(|| {
                err(
                    self.at(origin, &r.from),
                    format!("no interface {:?}", r.from.get_ref()),
                )
            })?;
            let to_zone = if r.to.get_ref() == "core" {
                None
            } else {
                Some(zone_id(r.to.get_ref()).ok_or_else(|| {
                    err(
                        self.at(origin, &r.to),
                        format!("no interface {:?} (or \"core\")", r.to.get_ref()),
                    )
                })?)
            };
            let object = |v: &Spanned<String>| {
                objects.get(v.get_ref().as_str()).cloned().ok_or_else(|| {
                    err(
                        self.at(origin, v),
                        format!("no address object {:?}", v.get_ref()),
                    )
                })
            };
            let source = object(&r.source)?;
            let destination = object(&r.destination)?;
            let hop = self.next_hop(origin, r.destination.get_ref())?;
            let mut services = Vec::new();
            if r.service.get_ref().names().is_empty() {
                return Err(err(
                    self.at(origin, &r.service),
                    "service = []: name at least one service".into(),
                ));
            }
            for name in r.service.get_ref().names() {
                let (transport, ports) = service_ports.get(name.as_str()).ok_or_else(|| {
                    err(self.at(origin, &r.service), format!("no service {name:?}"))
                })?;
                for p in ports {
                    let service = sipward_core::Service {
                        transport: *transport,
                        port: *p,
                    };
                    if !services.contains(&service) {
                        services.push(service);
                    }
                }
            }
            if action == Action::Nat {
                let intercepting = zones.get(from_zone).is_some_and(|z| z.intercept);
                if to_zone.is_none() {
                    return Err(err(
                        self.at(origin, &r.to),
                        "a nat rule needs `to` an outside interface".into(),
                    ));
                }
                if !matches!(destination, AddressObject::Host { .. }) && !intercepting {
                    return Err(err(
                        self.at(origin, &r.destination),
                        format!(
                            "destination {:?} ({destination}): a nat rule needs a host `destination` (the proxy), or, for a network or `any`, an interface that intercepts (`intercept = true` on interface {:?}): only diverted messages carry the destination to forward to",
                            r.destination.get_ref(),
                            r.from.get_ref()
                        ),
                    ));
                }
                if let AddressObject::Network(net) = &destination {
                    if let Some((z, n)) = zones.iter().filter(|z| z.inside).find_map(|z| {
                        z.networks
                            .iter()
                            .find(|n| n.contains(&net.network()) || net.contains(&n.network()))
                            .map(|n| (z, n))
                    }) {
                        return Err(err(
                            self.at(origin, &r.destination),
                            format!("the destination {net} overlaps {n} of inside interface {:?}: a nat rule hides inside addresses from the outside it sends to", z.name),
                        ));
                    }
                }
                if let AddressObject::Host { ip, .. } = &destination {
                    if let Some(z) = zones.iter().find(|z| z.address.ip() == *ip) {
                        return Err(err(
                            self.at(origin, &r.destination),
                            format!("the destination {ip} is the gateway's own address (interface {:?}): requests would loop", z.name),
                        ));
                    }
                    if let Some((z, n)) = zones
                        .iter()
                        .filter(|z| z.inside)
                        .find_map(|z| z.networks.iter().find(|n| n.contains(ip)).map(|n| (z, n)))
                    {
                        return Err(err(
                            self.at(origin, &r.destination),
                            format!("the destination {ip} is inside ({n} of interface {:?}): a nat rule hides inside addresses from the outside it sends to", z.name),
                        ));
                    }
                }
                if zones.get(from_zone).is_some_and(|z| !z.inside) {
                    return Err(err(
                        self.at(origin, &r.from),
                        "a nat rule translates from an inside interface".into(),
                    ));
                }
                if to_zone.and_then(|z| zones.get(z)).is_some_and(|z| z.inside) {
                    return Err(err(
                        self.at(origin, &r.to),
                        "a nat rule translates to an outside interface (inside addresses must not reach another inside one through it)".into(),
                    ));
                }
                let to = to_zone.and_then(|z| zones.get(z));
                if let (AddressObject::Host { ip, .. }, Some(to)) = (&destination, to) {
                    if ip.is_ipv4() != to.address.is_ipv4() {
                        return Err(err(
                            self.at(origin, &r.destination),
                            format!(
                                "the destination {ip} is {} but interface {:?} ({}) is {}: the gateway reaches it from that interface's address; give the interface an address of that family",
                                family(*ip),
                                to.name,
                                to.address.ip(),
                                family(to.address.ip())
                            ),
                        ));
                    }
                }
                if let (Some(from), Some(to)) = (zones.get(from_zone), to) {
                    if let Some(what) = cross_family_media_missing(from, to) {
                        return Err(err(self.at(origin, &r.to), what));
                    }
                }
            }
            if action == Action::Allow && to_zone.is_some() {
                return Err(err(
                    self.at(origin, &r.to),
                    "an allow rule admits traffic to the gateway itself: `to = \"core\"`".into(),
                ));
            }
            rules.push(Rule {
                name: r
                    .name
                    .as_ref()
                    .map_or_else(|| format!("rule{}", i + 1), |n| n.get_ref().clone()),
                action,
                from_zone,
                source,
                to_zone,
                destination,
                services,
                next_hop_transport: hop.transport,
                server_name: hop.server_name,
                udp_only: hop.udp_only,
                options_ping: hop.options_ping.filter(|_| action == Action::Nat),
            });
        }
        // `[limits]` is what `sipward validate` applies without an ALG; with one it is
        // unused (a warning says so) but still must not hold values that cannot work.
        self.checked_limits(origin, "[limits]", &self.limits)?;
        let persisted = self.state.dir.as_ref().or(self.state.store.as_ref());
        if let (Some(dir), None, None) = (persisted, &self.state.secret_file, &self.gateway.secret)
        {
            bail!(
                "{}: [state] {} needs a stable hiding secret (restored state is named under it): \
                 add [state] secret_file = \"/etc/sipward/secret\" (created if absent) or \
                 [gateway] secret",
                self.at(origin, dir),
                if self.state.dir.is_some() {
                    "dir"
                } else {
                    "store"
                }
            );
        }
        let secret = match (&self.state.secret_file, &self.gateway.secret) {
            (Some(file), Some(s)) => bail!(
                "{}: [gateway] secret and {}: [state] secret_file both set: keep one",
                self.at(origin, s),
                self.at(origin, file)
            ),
            (Some(file), None) => Secret::from_file(Path::new(file.get_ref())).map_err(|e| {
                anyhow!(
                    "{}: [state] secret_file {:?}: {e:#}",
                    self.at(origin, file),
                    file.get_ref()
                )
            })?,
            (None, Some(s)) if s.get_ref().len() < MIN_SECRET_LEN => bail!(
                "{}: [gateway] secret: use at least {MIN_SECRET_LEN} characters (it keys the hidden Call-IDs and routing tokens)",
                self.at(origin, s)
            ),
            (None, Some(s)) => Secret::derive(s.get_ref().as_bytes()),
            (None, None) => Secret::random()?,
        }
        .key;
        let protection = self.protection(origin, &objects, &rules)?;
        Ok(sipward_core::Config {
            agent: agent.clone(),
            zones,
            alg: alg_options,
            rules,
            protection,
            secret,
        })
    }

    /// A service's ports, each in range and listed once.
    fn service_port_list(
        &self,
        origin: &str,
        name: &str,
        port: &Spanned<PortList>,
    ) -> Result<Vec<u16>> {
        let check = |at: String, p: i64| -> Result<u16> {
            match u16::try_from(p) {
                Ok(0) => bail!("{at}: service {name:?}: port 0 is no port (5060 is SIP's)"),
                Ok(p) => Ok(p),
                _ => bail!("{at}: service {name:?}: port = {p}: out of range, expected 1 to 65535 (5060 is SIP's)"),
            }
        };
        let ports = match port.get_ref() {
            PortList::One(p) => vec![check(self.at(origin, port), *p)?],
            PortList::Many(list) => {
                let mut ports = Vec::new();
                for p in list {
                    let v = check(self.at(origin, p), *p.get_ref())?;
                    if ports.contains(&v) {
                        bail!(
                            "{}: service {name:?}: port {v} listed twice",
                            self.at(origin, p)
                        );
                    }
                    ports.push(v);
                }
                ports
            }
        };
        if ports.is_empty() {
            bail!(
                "{}: service {name:?}: port = []: list at least one port",
                self.at(origin, port)
            );
        }
        Ok(ports)
    }

    /// Transparent mode's settings when an interface intercepts (None otherwise), each
    /// number checked with its line. The listener port must not be one the gateway
    /// already binds (its SIP port, a media pool).
    pub(crate) fn transparent(
        &self,
        origin: &str,
        core: &sipward_core::Config,
    ) -> Result<Option<TransparentSettings>> {
        let default = TransparentSection::default();
        let t = self.transparent.as_ref().unwrap_or(&default);
        let listen_port = self
            .ranged(
                origin,
                "[transparent] listen_port",
                &t.listen_port,
                (1, 65535),
                "",
            )?
            .unwrap_or(DEFAULT_LISTEN_PORT);
        let mark = self
            .ranged(origin, "[transparent] mark", &t.mark, (1, u32::MAX), "")?
            .unwrap_or(DEFAULT_MARK);
        let route_table = self
            .ranged(
                origin,
                "[transparent] route_table",
                &t.route_table,
                (1, 252),
                " (253-255 are the kernel's default, main and local tables)",
            )?
            .unwrap_or(DEFAULT_ROUTE_TABLE);
        let port_at = || {
            t.listen_port.as_ref().map_or_else(
                || self.section_at(origin, "[transparent]"),
                |p| self.at(origin, p),
            )
        };
        for z in &core.zones {
            if z.address.port() == listen_port {
                bail!(
                    "{}: [transparent] listen_port = {listen_port}: it is the SIP port of interface {:?}; the listener needs a port of its own",
                    port_at(),
                    z.name
                );
            }
            if let Some((low, high)) = z.media_ports {
                if (low..=high).contains(&listen_port) {
                    bail!(
                        "{}: [transparent] listen_port = {listen_port}: inside the media ports {low}-{high} of interface {:?}",
                        port_at(),
                        z.name
                    );
                }
            }
        }
        // A datagram sent straight to the listener (not diverted) carries its own
        // address as the original destination: no rule may apply to that port.
        if let Some(r) = core
            .rules
            .iter()
            .find(|r| r.services.iter().any(|s| s.port == listen_port))
        {
            bail!(
                "{}: [transparent] listen_port = {listen_port}: a service port of rule {:?}; the listener needs a port of its own",
                port_at(),
                r.name
            );
        }
        if !core.zones.iter().any(|z| z.intercept) {
            return Ok(None);
        }
        Ok(Some(TransparentSettings {
            listen_port,
            mark,
            route_table,
            manage_firewall: t.manage_firewall,
        }))
    }

    /// The event log must be writable now, so that `check` says so, with the line,
    /// rather than `run` failing later. An existing file is opened for appending
    /// (nothing written); a missing one is created and removed again.
    fn check_events_path(&self, origin: &str) -> Result<()> {
        let Some(path) = self.events().filter(|e| *e != "-") else {
            return Ok(());
        };
        let at = self.at(origin, &self.gateway.events);
        let path = Path::new(path);
        let existed = path.exists();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| {
                anyhow!(
                    "{at}: [gateway] events {:?}: cannot write there: {e}",
                    path.display()
                )
            })?;
        if !existed {
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// The Redis store and this node's role (`[state] store`, `[ha]`), when a store is set.
    pub(crate) fn ha(&self, origin: &str) -> Result<Option<HaSettings>> {
        let ha = self.ha.as_ref();
        let Some(url) = &self.state.store else {
            if let Some(ha) = ha {
                let at = ha.role.as_ref().or(ha.group.as_ref());
                bail!(
                    "{}[ha] needs [state] store = \"redis://host:port/db\" (the pair's state is there)",
                    at.map_or_else(String::new, |v| format!("{}: ", self.at(origin, v)))
                );
            }
            return Ok(None);
        };
        if ![
            "redis://",
            "rediss://",
            "unix://",
            "redis+unix://",
            "valkey://",
            "valkeys://",
        ]
        .iter()
        .any(|scheme| url.get_ref().starts_with(scheme))
            || redis::parse_redis_url(url.get_ref()).is_none()
        {
            bail!(
                "{}: [state] store {:?}: not a Redis URL (redis://host:port/db, or unix:///path/to/socket)",
                self.at(origin, url),
                url.get_ref()
            );
        }
        let standby = match ha.and_then(|h| h.role.as_ref()) {
            None => false,
            Some(r) if r.get_ref() == "active" => false,
            Some(r) if r.get_ref() == "standby" => true,
            Some(r) => bail!(
                "{}: [ha] role {:?}: use \"active\" or \"standby\"",
                self.at(origin, r),
                r.get_ref()
            ),
        };
        if let (true, Some(dir)) = (standby, &self.state.dir) {
            bail!(
                "{}: [state] dir with [ha] role = \"standby\": a standby's state comes from the \
                 store (remove the journal from the standby's configuration)",
                self.at(origin, dir)
            );
        }
        let group = match ha.and_then(|h| h.group.as_ref()) {
            None => "sipward".to_string(),
            Some(g)
                if !g.get_ref().is_empty()
                    && g.get_ref().len() <= 64
                    && g.get_ref().bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
                    }) =>
            {
                g.get_ref().clone()
            }
            Some(g) => bail!(
                "{}: [ha] group {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
                self.at(origin, g),
                g.get_ref()
            ),
        };
        Ok(Some(HaSettings {
            store: crate::redis_store::StoreSettings {
                url: url.get_ref().clone(),
                group,
            },
            standby,
        }))
    }

    /// The restart journal's directory (`[state] dir`), when set.
    pub(crate) fn state_dir(&self) -> Option<PathBuf> {
        self.state.dir.as_ref().map(|d| PathBuf::from(d.get_ref()))
    }

    /// Where security events go: None (off), Some("-") standard output, or a path.
    pub(crate) fn events(&self) -> Option<&str> {
        let events = self.gateway.events.get_ref();
        (events != "off").then_some(events.as_str())
    }

    /// The admin API's settings, when an `[admin]` section is present; the section
    /// without a token is an error rather than a silently disabled API.
    pub(crate) fn admin(&self, origin: &str) -> Result<Option<crate::admin::AdminSettings>> {
        let Some(admin) = &self.admin else {
            return Ok(None);
        };
        let Some(token) = &admin.token else {
            bail!(
                "{}: [admin] has no token: set `token` (16 characters or more) or remove the section",
                self.section_at(origin, "[admin]")
            );
        };
        let listen = &admin.listen;
        let addr: SocketAddr = listen
            .get_ref()
            .parse()
            .ok()
            .filter(|a: &SocketAddr| a.port() != 0)
            .ok_or_else(|| {
                anyhow!(
                    "{}: [admin] listen {:?}: expected IP:port (port 1-65535)",
                    self.at(origin, listen),
                    listen.get_ref()
                )
            })?;
        if token.get_ref().bytes().any(|b| !b.is_ascii_graphic()) {
            bail!(
                "{}: [admin] token: only visible ASCII characters (no spaces) can be sent in an Authorization header",
                self.at(origin, token)
            );
        }
        if token.get_ref().len() < 16 {
            bail!(
                "{}: [admin] token: use at least 16 characters",
                self.at(origin, token)
            );
        }
        let max_connections = self
            .ranged(
                origin,
                "[admin] max_connections",
                &admin.max_connections,
                (1, 10_000),
                "",
            )?
            .unwrap_or(64);
        let request_timeout = self
            .ranged(
                origin,
                "[admin] request_timeout",
                &admin.request_timeout,
                (1, 3600),
                " seconds",
            )?
            .unwrap_or(10);
        Ok(Some(crate::admin::AdminSettings {
            listen: addr,
            listen_at: self.at(origin, listen),
            token: token.get_ref().clone(),
            max_connections,
            request_timeout: Duration::from_secs(request_timeout),
        }))
    }

    /// `file:line` of each interface's address, in the order of the compiled zones: a
    /// bind that fails at `run` names the line too.
    /// How the address object `name` is reached as a next hop: its `transport` and the
    /// `server_name` its TLS certificate must carry.
    fn next_hop(&self, origin: &str, name: &str) -> Result<NextHop> {
        let Some(a) = self.address.iter().find(|a| a.name.get_ref() == name) else {
            return Ok(NextHop::default());
        };
        let transport = match &a.transport {
            None => sipward_core::Transport::Udp,
            Some(t) => crate::streams::transport_named(t.get_ref()).ok_or_else(|| {
                anyhow!(
                    "{}: address {name:?}: transport {:?}: expected \"udp\", \"tcp\" or \"tls\"",
                    self.at(origin, t),
                    t.get_ref()
                )
            })?,
        };
        let server_name = match &a.server_name {
            None => None,
            Some(n) => {
                crate::streams::tls::server_name(n.get_ref()).map_err(|e| {
                    anyhow!("{}: address {name:?}: server_name: {e}", self.at(origin, n))
                })?;
                Some(n.get_ref().clone())
            }
        };
        let options_ping = match &a.options_ping {
            None => None,
            Some(v) if (1..=86_400).contains(v.get_ref()) => {
                Some(Duration::from_secs(*v.get_ref()))
            }
            Some(v) => bail!(
                "{}: address {name:?}: options_ping = {}: out of range, expected 1 to 86400 (seconds)",
                self.at(origin, v),
                v.get_ref()
            ),
        };
        Ok(NextHop {
            transport,
            server_name,
            // RFC 3261 18.1.1: every SIP element takes TCP; one written `transport =
            // "udp"` is taken at its word, and a large request still goes over UDP.
            udp_only: a
                .transport
                .as_ref()
                .is_some_and(|t| t.get_ref().eq_ignore_ascii_case("udp")),
            options_ping,
        })
    }

    /// The stream side's settings: each interface's TLS (paths relative to the file's
    /// folder), the `[transport]` limits and the names peers' certificates must carry.
    pub(crate) fn streams(
        &self,
        origin: &str,
        core: &sipward_core::Config,
    ) -> Result<crate::streams::StreamSettings> {
        let base = Path::new(origin)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut tls = Vec::new();
        for (i, z) in self.interface.iter().zip(&core.zones) {
            if let Some(t) = &i.tls {
                let mut t2 = t.get_ref().clone();
                for p in [&mut t2.certificate, &mut t2.private_key] {
                    // The built-in test certificate is no file.
                    if !p.to_str().is_some_and(|s| s.starts_with("builtin:")) {
                        *p = base.join(&*p);
                    }
                }
                t2.ca = t2.ca.map(|c| base.join(c));
                tls.push((z.address.ip(), t2, self.at(origin, t)));
            }
        }
        let limits = crate::streams::limits::LimitSettings::from_table(
            &self.transport,
            core.protection.exempt.clone(),
        )
        .map_err(|e| anyhow!("{}: {e}", self.section_at(origin, "[transport]")))?;
        crate::streams::StreamSettings::new(origin, core, tls, limits)
    }

    pub(crate) fn interface_lines(&self, origin: &str) -> Vec<String> {
        self.interface
            .iter()
            .map(|i| self.at(origin, &i.address))
            .collect()
    }

    /// What `check` and the start print as warnings: settings that work but are
    /// probably not meant.
    pub(crate) fn warnings(&self, origin: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !self.alg.is_empty() && self.text.lines().any(|l| l.trim() == "[limits]") {
            out.push(format!(
                "{}: warning: [limits] applies to `sipward validate` without an ALG only; the gateway uses the limits of [alg.NAME] (put them there)",
                self.section_at(origin, "[limits]")
            ));
        }
        for i in self
            .interface
            .iter()
            .filter(|i| i.inside && i.networks.is_empty())
        {
            out.push(format!(
                "{}: warning: inside interface {:?} has no networks: the last-line scan cannot recognise its phones' addresses in outgoing messages",
                self.at(origin, &i.name),
                i.name.get_ref()
            ));
        }
        if self.transparent.is_some()
            && !self
                .interface
                .iter()
                .any(|i| i.intercept.as_ref().is_some_and(|v| *v.get_ref()))
        {
            out.push(format!(
                "{}: warning: [transparent] has no effect: no interface has `intercept = true`",
                self.section_at(origin, "[transparent]")
            ));
        }
        if let Some(admin) = &self.admin {
            let loopback = admin
                .listen
                .get_ref()
                .parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if !loopback {
                out.push(format!(
                    "{}: warning: [admin] listen {:?} is not a loopback address and the API has no TLS: the token and all data travel in clear text",
                    self.at(origin, &admin.listen),
                    admin.listen.get_ref()
                ));
            }
        }
        out
    }

    /// `file:line` of a section header such as `[admin]` (the file when not found).
    fn section_at(&self, origin: &str, header: &str) -> String {
        self.text
            .lines()
            .position(|l| l.trim() == header)
            .map_or_else(|| origin.to_owned(), |i| format!("{origin}:{}", i + 1))
    }

    /// The media relay thread's placement (`[relay]`).
    pub(crate) fn relay(&self, origin: &str) -> Result<sipward_relay::RelayOptions> {
        let mut options = sipward_relay::RelayOptions::default();
        if let Some(cpu) = &self.relay.cpu {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            if *cpu.get_ref() >= cpus {
                bail!(
                    "{}: [relay] cpu {}: this machine has CPUs 0 to {}",
                    self.at(origin, cpu),
                    cpu.get_ref(),
                    cpus - 1
                );
            }
            options.cpu = Some(*cpu.get_ref());
        }
        if let Some(priority) = &self.relay.realtime_priority {
            match u8::try_from(*priority.get_ref()) {
                Ok(p @ 1..=99) => options.realtime_priority = Some(p),
                _ => bail!(
                    "{}: [relay] realtime_priority {}: expected 1 to 99 (SCHED_FIFO)",
                    self.at(origin, priority),
                    priority.get_ref()
                ),
            }
        }
        if let Some(us) = &self.relay.busy_poll_us {
            if *us.get_ref() > 1_000_000 {
                bail!(
                    "{}: [relay] busy_poll_us {}: at most 1000000 (one second)",
                    self.at(origin, us),
                    us.get_ref()
                );
            }
            options.spin = Duration::from_micros(*us.get_ref());
        }
        if let Some(engine) = &self.relay.engine {
            options.engine = match engine.get_ref().as_str() {
                "auto" => sipward_relay::Engine::Auto,
                "io_uring" => sipward_relay::Engine::IoUring,
                "epoll" => sipward_relay::Engine::Epoll,
                other => bail!(
                    "{}: [relay] engine {other:?}: expected \"auto\", \"io_uring\" or \"epoll\"",
                    self.at(origin, engine)
                ),
            };
        }
        Ok(options)
    }

    /// The syslog and HEP collectors, when configured.
    pub(crate) fn collectors(&self, origin: &str) -> Result<crate::driver::Collectors> {
        let addr = |v: &Spanned<String>, key: &str| -> Result<SocketAddr> {
            v.get_ref()
                .parse()
                .ok()
                .filter(|a: &SocketAddr| a.port() != 0 && !a.ip().is_unspecified())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: [gateway] {key} {:?}: expected the collector's IP:port (port 1-65535)",
                        self.at(origin, v),
                        v.get_ref()
                    )
                })
        };
        let syslog = self
            .gateway
            .syslog
            .as_ref()
            .map(|v| addr(v, "syslog"))
            .transpose()?;
        let hep = self
            .gateway
            .hep
            .as_ref()
            .map(|v| addr(v, "hep"))
            .transpose()?
            .map(|a| (a, self.gateway.hep_id));
        Ok(crate::driver::Collectors { syslog, hep })
    }

    /// A short digest of the configuration text, to tell configurations apart.
    pub(crate) fn digest(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.text.hash(&mut h);
        format!("{:016x}", h.finish())
    }

    fn protection(
        &self,
        origin: &str,
        objects: &HashMap<&str, AddressObject>,
        rules: &[Rule],
    ) -> Result<ProtectionOptions> {
        let p = &self.protection;
        let d = ProtectionOptions::default();
        let mode =
            |v: &Option<Spanned<String>>, key: &str, dflt: FilterMode| -> Result<FilterMode> {
                match v {
                    None => Ok(dflt),
                    Some(v) => match v.get_ref().as_str() {
                        "off" => Ok(FilterMode::Off),
                        "log" => Ok(FilterMode::LogOnly),
                        "enforce" => Ok(FilterMode::Enforce),
                        other => bail!(
                        "{}: protection {key} {other:?}: expected \"off\", \"log\" or \"enforce\"",
                        self.at(origin, v)
                    ),
                    },
                }
            };
        let nets = |v: &Option<Vec<Spanned<String>>>, key: &str| -> Result<Vec<IpNet>> {
            v.iter()
                .flatten()
                .map(|n| {
                    if let Ok(ip) = n.get_ref().parse::<IpAddr>() {
                        return Ok(IpNet::from(ip));
                    }
                    parse_network(n.get_ref())
                        .map_err(|e| anyhow!("{}: protection {key}: {e}", self.at(origin, n)))
                })
                .collect()
        };
        let as_nets = |o: &AddressObject| -> Vec<IpNet> {
            match o {
                AddressObject::Host { ip, .. } => vec![IpNet::from(*ip)],
                AddressObject::Network(n) => vec![*n],
                AddressObject::Any => Vec::new(),
            }
        };
        let exempt = match &p.exempt {
            Some(names) => {
                let mut out = Vec::new();
                for n in names {
                    let o = objects.get(n.get_ref().as_str()).ok_or_else(|| {
                        anyhow!(
                            "{}: protection exempt: no address object {:?}",
                            self.at(origin, n),
                            n.get_ref()
                        )
                    })?;
                    out.extend(as_nets(o));
                }
                out
            }
            None => rules
                .iter()
                .filter(|r| r.action == Action::Nat)
                .flat_map(|r| as_nets(&r.destination))
                .collect(),
        };
        let key = |k: &str| format!("[protection] {k}");
        let rate = |ps: &Option<Spanned<f64>>,
                    burst: &Option<Spanned<f64>>,
                    d: Rate,
                    name: &str|
         -> Result<Rate> {
            // A rate below one per hour is no rate; the burst is at least one message.
            let per_second = self
                .ranged(
                    origin,
                    &key(&format!("{name}_per_second")),
                    ps,
                    (1.0 / 3600.0, MAX_RATE),
                    " per second",
                )?
                .unwrap_or(d.per_second);
            let burst = self
                .ranged(
                    origin,
                    &key(&format!("{name}_burst")),
                    burst,
                    (1.0, MAX_RATE),
                    "",
                )?
                .unwrap_or(d.burst);
            Ok(Rate { per_second, burst })
        };
        let secs = |k: &str, v: &Option<Spanned<u64>>, range, d: Duration| -> Result<Duration> {
            Ok(self
                .ranged(origin, &key(k), v, range, " seconds")?
                .map_or(d, Duration::from_secs))
        };
        let count = |k: &str, v: &Option<Spanned<usize>>, range, d: usize| -> Result<usize> {
            Ok(self.ranged(origin, &key(k), v, range, "")?.unwrap_or(d))
        };
        let admission = rate(
            &p.admission_per_second,
            &p.admission_burst,
            d.admission,
            "admission",
        )?;
        let fraction = |v: &Option<Spanned<f64>>, key: &str, low: f64, high: f64, dflt: f64| match v
        {
            None => Ok(dflt),
            Some(v) if (low..=high).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => Err(anyhow!(
                "{}: protection {key} {}: expected a fraction from {low} to {high}",
                self.at(origin, v),
                v.get_ref()
            )),
        };
        Ok(ProtectionOptions {
            max_register_failures: self
                .ranged(
                    origin,
                    &key("max_register_failures"),
                    &p.max_register_failures,
                    (1, 1_000_000),
                    "",
                )?
                .unwrap_or(d.max_register_failures),
            max_failed_users_per_source: count(
                "max_failed_users_per_source",
                &p.max_failed_users_per_source,
                (1, 100_000),
                d.max_failed_users_per_source,
            )?,
            failure_window: secs(
                "failure_window",
                &p.failure_window,
                (1, 7 * DAY),
                d.failure_window,
            )?,
            ban_time: secs("ban_time", &p.ban_time, (1, YEAR), d.ban_time)?,
            new_requests: rate(
                &p.new_requests_per_second,
                &p.new_requests_burst,
                d.new_requests,
                "new_requests",
            )?,
            dialog_requests: rate(
                &p.dialog_requests_per_second,
                &p.dialog_requests_burst,
                d.dialog_requests,
                "dialog_requests",
            )?,
            responses: rate(
                &p.responses_per_second,
                &p.responses_burst,
                d.responses,
                "responses",
            )?,
            exempt,
            outside_admission: rate(
                &p.outside_admission_per_second,
                &p.outside_admission_burst,
                admission,
                "outside_admission",
            )?,
            admission,
            table_reserve: fraction(&p.table_reserve, "table_reserve", 0.0, 0.5, d.table_reserve)?,
            table_share_floor: count(
                "table_share_floor",
                &p.table_share_floor,
                (1, MAX_TABLE),
                d.table_share_floor,
            )?,
            outside_table_share: fraction(
                &p.outside_table_share,
                "outside_table_share",
                0.05,
                1.0,
                d.outside_table_share,
            )?,
            retry_after: self
                .ranged(
                    origin,
                    &key("retry_after"),
                    &p.retry_after,
                    (1, 3600),
                    " seconds",
                )?
                .unwrap_or(d.retry_after),
            scanner_agents: match &p.scanner_agents {
                None => d.scanner_agents,
                Some(agents) => {
                    let mut out = Vec::new();
                    for a in agents {
                        // An empty pattern is in every User-Agent: every phone banned.
                        if a.get_ref().trim().is_empty() {
                            bail!(
                                "{}: [protection] scanner_agents: an empty pattern matches every User-Agent",
                                self.at(origin, a)
                            );
                        }
                        out.push(a.get_ref().clone());
                    }
                    out
                }
            },
            scanner_filter: mode(&p.scanner_filter, "scanner_filter", d.scanner_filter)?,
            unknown_method_filter: mode(
                &p.unknown_method_filter,
                "unknown_method_filter",
                d.unknown_method_filter,
            )?,
            deny: nets(&p.deny, "deny")?,
            allow: nets(&p.allow, "allow")?,
            network_filter: mode(&p.network_filter, "network_filter", d.network_filter)?,
            max_tracked_sources: count(
                "max_tracked_sources",
                &p.max_tracked_sources,
                (1, MAX_TABLE),
                d.max_tracked_sources,
            )?,
            max_bans: count("max_bans", &p.max_bans, (1, MAX_TABLE), d.max_bans)?,
        })
    }
}

/// Addresses no single host has: unspecified, multicast, the IPv4 broadcast.
/// "IPv4" or "IPv6".
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Why a nat rule from `from` to `to` cannot carry calls, if the zones differ in address
/// family and either has no media ports: only the relay can carry media between the
/// families (an IPv6 phone cannot send RTP to an IPv4 far end, nor the reverse), and
/// without it the SDP would name an address the other side cannot reach.
fn cross_family_media_missing(from: &Zone, to: &Zone) -> Option<String> {
    let (a, b) = (from.address.ip(), to.address.ip());
    if a.is_ipv4() == b.is_ipv4() {
        return None;
    }
    let without = [from, to].into_iter().find(|z| z.media_ports.is_none())?;
    Some(format!(
        "interfaces {:?} ({}) and {:?} ({}) differ in address family, so media must be relayed on both, but interface {:?} has no media_ports: give it a range",
        from.name,
        family(a),
        to.name,
        family(b),
        without.name
    ))
}

fn no_host_has(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255])
}

fn parse_host(h: &str) -> Result<AddressObject> {
    if let Ok(sa) = h.parse::<SocketAddr>() {
        if no_host_has(sa.ip()) {
            bail!("host {h:?}: not an address a host can have");
        }
        if sa.port() == 0 {
            bail!("host {h:?}: port 0 is no port (leave it out for any port)");
        }
        return Ok(AddressObject::Host {
            ip: sa.ip(),
            port: Some(sa.port()),
        });
    }
    let ip: IpAddr = h
        .parse()
        .map_err(|_| anyhow!("host {h:?} is not an IP address or IP:port"))?;
    if no_host_has(ip) {
        bail!("host {h:?}: not an address a host can have");
    }
    Ok(AddressObject::Host { ip, port: None })
}

/// `a.b.c.d/len` (or IPv6), refusing host bits: `192.168.1.5/24` is more likely a
/// typo for the network or for a host than meant as written.
fn parse_network(text: &str) -> Result<IpNet> {
    let net: IpNet = text
        .parse()
        .map_err(|e| anyhow!("{text:?}: {e} (expected a.b.c.d/len)"))?;
    if net.addr() != net.network() {
        bail!(
            "{text:?}: host bits set, did you mean {}/{}",
            net.network(),
            net.prefix_len()
        );
    }
    Ok(net)
}

/// The wire-layer limits' allowed ranges: below the minimum an ordinary request no
/// longer fits (a REGISTER has some ten headers, a Via two parameters); above the maximum
/// a UDP datagram cannot reach it anyway, or the parser's lists would grow for nothing.
const LIMIT_RANGES: [(&str, (usize, usize)); 10] = [
    ("max_param_len", (32, 65_535)),
    ("max_message_len", (256, 65_535)),
    ("max_sdp_len", (64, 65_535)),
    ("max_headers", (16, 1024)),
    ("max_vias", (1, 1024)),
    ("max_routes", (1, 1024)),
    ("max_contacts", (1, 1024)),
    ("max_params", (4, 1024)),
    ("max_sdp_media", (1, 256)),
    ("max_sdp_lines", (8, 8192)),
];

/// A day and a year, in seconds: the longest timers and bans an operator may set.
const DAY: u64 = 86_400;
/// The longest `[gateway] name`: it goes into every answer's Warning header.
const MAX_AGENT_LEN: usize = 64;
/// The shortest `[gateway] secret`: it keys the hidden Call-IDs and routing tokens.
const MIN_SECRET_LEN: usize = 16;
const YEAR: u64 = 365 * DAY;
/// The most entries a table may be configured to hold (memory stays bounded).
const MAX_TABLE: usize = 10_000_000;
/// The fastest rate (per second) and largest burst a token bucket may have.
const MAX_RATE: f64 = 100_000_000.0;

/// Media relay ports of an interface that names none.
const DEFAULT_MEDIA_PORTS: (u16, u16) = (30000, 39999);

/// `"low-high"`: an inclusive range holding at least one even/odd port pair.
fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| anyhow!("expected \"low-high\", such as \"30000-39999\""))?;
    let port = |p: &str| -> Result<u16> {
        p.trim()
            .parse::<u16>()
            .map_err(|_| anyhow!("{p:?} is not a port number (1-65535)"))
    };
    let (low, high) = (port(low)?, port(high)?);
    if low < 1024 {
        bail!("the range must start at 1024 or above");
    }
    // In u32: near 65535 the sum saturated in u16 and "65535-65535" passed, a pool
    // without a single pair.
    let first_even = u32::from(low) + u32::from(low % 2);
    if u32::from(high) < first_even + 1 {
        bail!("the range must hold at least one even port and the odd one after it");
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_to_the_brief() {
        let c = Config::parse("", "t").unwrap();
        assert_eq!(c.validate_limits("t").unwrap(), Limits::default());
        let c = Config::parse("[limits]\nmax_param_len = 100\n", "t").unwrap();
        assert_eq!(c.validate_limits("t").unwrap().max_param_len, 100);
    }

    #[test]
    fn relay_placement_is_read_and_checked_with_its_line() {
        let file = Config::parse(
            "[relay]\ncpu = 0\nrealtime_priority = 10\nbusy_poll_us = 20\nengine = \"epoll\"\n",
            "r.toml",
        )
        .unwrap();
        let options = file.relay("r.toml").unwrap();
        assert_eq!(options.cpu, Some(0));
        assert_eq!(options.realtime_priority, Some(10));
        assert_eq!(options.spin, Duration::from_micros(20));
        assert_eq!(options.engine, sipward_relay::Engine::Epoll);
        assert_eq!(
            Config::parse("", "r.toml")
                .unwrap()
                .relay("r.toml")
                .unwrap(),
            sipward_relay::RelayOptions::default()
        );
        for (text, line, word) in [
            ("[relay]\n\nrealtime_priority = 0\n", 3, "1 to 99"),
            ("[relay]\nrealtime_priority = 100\n", 2, "1 to 99"),
            ("[relay]\ncpu = 4096\n", 2, "this machine has CPUs"),
            ("[relay]\nbusy_poll_us = 2000000\n", 2, "at most"),
            (
                "[relay]\ncpu = 0\nengine = \"uring\"\n",
                3,
                "expected \"auto\"",
            ),
        ] {
            let e = Config::parse(text, "r.toml")
                .unwrap()
                .relay("r.toml")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("r.toml:{line}: ")), "{e}");
            assert!(e.contains(word), "{e}");
        }
    }

    #[test]
    fn errors_name_file_and_line() {
        let e =
            Config::parse("[limits]\nmax_param_len = 10\nmax_bogus = 3\n", "x.toml").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("x.toml:3: "), "{text}");
        assert!(text.contains("max_bogus"), "{text}");
        let e = Config::parse("[limits]\nmax_param_len = \"ten\"\n", "x.toml").unwrap_err();
        assert!(e.to_string().starts_with("x.toml:2: "), "{e}");
    }

    #[test]
    fn leak_policy_is_read_and_checked_with_its_line() {
        let with = |value: &str| {
            let text = EMBEDDED_DEFAULT.replacen(
                "[alg.sip]\n",
                &format!("[alg.sip]\nleak_policy = {value}\n"),
                1,
            );
            Config::parse(&text, "l.toml").unwrap().compile("l.toml")
        };
        assert_eq!(
            with("\"refuse\"").unwrap().alg.leak_policy,
            LeakPolicy::Refuse
        );
        assert_eq!(
            with("\"remove\"").unwrap().alg.leak_policy,
            LeakPolicy::Remove
        );
        let e = with("\"drop\"").unwrap_err().to_string();
        assert!(e.starts_with("l.toml:"), "{e}");
        assert!(e.contains("expected \"rewrite\""), "{e}");
        let default = Config::parse(EMBEDDED_DEFAULT, "e")
            .unwrap()
            .compile("e")
            .unwrap();
        assert_eq!(default.alg.leak_policy, LeakPolicy::Rewrite);
    }

    #[test]
    fn embedded_default_compiles_with_the_brief_defaults() {
        let c = Config::parse(EMBEDDED_DEFAULT, "embedded")
            .unwrap()
            .compile("embedded")
            .unwrap();
        assert_eq!(c.alg.max_sessions_per_id, 5);
        assert_eq!(c.alg.max_registration_time, Duration::from_secs(3600));
        assert_eq!(c.alg.request_response_timeout, Duration::from_secs(180));
        assert_eq!(c.alg.signal_timeout, Duration::from_secs(43200));
        assert_eq!(c.alg.data_channel_timeout, Duration::from_secs(120));
        assert!(!c.alg.allow_media_bypass);
        assert_eq!(c.alg.limits, Limits::default());
        assert_eq!(c.rules.len(), 2);
        assert_eq!(c.rules[0].action, Action::Nat);
        assert_eq!(c.rules[1].action, Action::Allow);
    }

    #[test]
    fn references_are_checked() {
        let broken =
            EMBEDDED_DEFAULT.replace("destination = \"sip-proxy\"", "destination = \"nowhere\"");
        let e = Config::parse(&broken, "b.toml")
            .unwrap()
            .compile("b.toml")
            .unwrap_err();
        let line = broken
            .lines()
            .position(|l| l.contains("\"nowhere\""))
            .unwrap()
            + 1;
        assert_eq!(
            e.to_string(),
            format!("b.toml:{line}: rule 1 (phones-to-proxy): no address object \"nowhere\"")
        );
        let bad_net = EMBEDDED_DEFAULT.replacen(
            "networks = [\"127.0.1.0/24\"]",
            "networks = [\"127.0.1.0/33\"]",
            1,
        );
        let e = Config::parse(&bad_net, "n.toml")
            .unwrap()
            .compile("n.toml")
            .unwrap_err();
        let line = bad_net.lines().position(|l| l.contains("/33")).unwrap() + 1;
        assert!(
            e.to_string()
                .starts_with(&format!("n.toml:{line}: interface \"lan\"")),
            "{e}"
        );
    }

    #[test]
    fn table_shares_and_outside_admission_are_read_and_range_checked() {
        let compile = |tail: &str| {
            let text = format!("{EMBEDDED_DEFAULT}\n[protection]\n{tail}");
            Config::parse(&text, "p.toml")
                .and_then(|c| c.compile("p.toml"))
                .map(|c| c.protection)
        };
        let p = compile("").unwrap();
        assert_eq!(p.outside_admission, p.admission);
        assert_eq!(p.table_share_floor, 32);
        let p = compile(
            "admission_per_second = 300\noutside_admission_per_second = 50\n\
             outside_admission_burst = 60\ntable_reserve = 0.2\ntable_share_floor = 4\n\
             outside_table_share = 0.25\n",
        )
        .unwrap();
        assert_eq!(p.admission.per_second, 300.0);
        assert_eq!(
            (p.outside_admission.per_second, p.outside_admission.burst),
            (50.0, 60.0)
        );
        assert_eq!((p.table_reserve, p.table_share_floor), (0.2, 4));
        assert_eq!(p.outside_table_share, 0.25);
        // Defaults follow the inside budget when only it is set.
        let p = compile("admission_per_second = 300\n").unwrap();
        assert_eq!(p.outside_admission.per_second, 300.0);
        for (bad, key) in [
            ("table_reserve = 0.9", "table_reserve"),
            ("table_reserve = -0.1", "table_reserve"),
            ("table_share_floor = 0", "table_share_floor"),
            ("outside_table_share = 0.0", "outside_table_share"),
            ("outside_table_share = 1.5", "outside_table_share"),
            ("outside_admission_per_second = 0", "outside_admission"),
        ] {
            let e = compile(bad).unwrap_err().to_string();
            assert!(e.starts_with("p.toml:") && e.contains(key), "{bad}: {e}");
        }
    }

    /// `check` on the embedded default with `from` replaced by `to`: the error, which
    /// must start with `c.toml:LINE: ` where LINE is the line holding `marker`.
    fn refused(from: &str, to: &str, marker: &str) -> String {
        let text = EMBEDDED_DEFAULT.replacen(from, to, 1);
        assert_ne!(text, EMBEDDED_DEFAULT, "{from:?} not in the default");
        let e = Config::parse(&text, "c.toml")
            .and_then(|c| c.compile("c.toml").and(c.admin("c.toml")))
            .expect_err(to)
            .to_string();
        // The last line with the marker: a duplicate is refused where it repeats.
        let line = text
            .lines()
            .collect::<Vec<_>>()
            .iter()
            .rposition(|l| l.contains(marker))
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("{marker:?} not in the text"));
        assert!(e.starts_with(&format!("c.toml:{line}: ")), "{to}: {e}");
        e
    }

    #[test]
    fn ha_settings_are_read_and_bad_ones_refused_with_their_line() {
        let with = |state: &str, ha: &str| {
            format!(
                "[gateway]\nname = \"sipward\"\nsecret = \"0123456789abcdef0\"\n[state]\n{state}\n{ha}\n[[interface]]\nname = \"lan\"\naddress = \"127.0.0.1\"\nnetworks = [\"127.0.0.0/8\"]\ninside = true\n"
            )
        };
        let parsed = |text: &str| {
            let c = Config::parse(text, "s.toml").unwrap();
            c.ha("s.toml").map_err(|e| e.to_string())
        };
        let store = "store = \"redis://127.0.0.1:6379/0\"";
        let ha = parsed(&with(store, "[ha]\nrole = \"standby\"\ngroup = \"edge1\""))
            .unwrap()
            .unwrap();
        assert!(ha.standby);
        assert_eq!(ha.store.group, "edge1");
        assert_eq!(ha.store.prefix(), "sw:edge1:");
        let single = parsed(&with(store, "")).unwrap().unwrap();
        assert!(!single.standby);
        assert_eq!(single.store.group, "sipward");
        assert_eq!(parsed(&with("", "")).unwrap(), None);
        for (state, ha, want) in [
            (
                "",
                "[ha]\nrole = \"active\"",
                "s.toml:7: [ha] needs [state] store",
            ),
            (
                store,
                "[ha]\nrole = \"primary\"",
                "s.toml:7: [ha] role \"primary\"",
            ),
            (
                store,
                "[ha]\ngroup = \"a b\"",
                "s.toml:7: [ha] group \"a b\"",
            ),
            (
                "store = \"http://127.0.0.1/\"",
                "",
                "s.toml:5: [state] store \"http://127.0.0.1/\": not a Redis URL",
            ),
            (
                &format!("{store}\ndir = \"/var/lib/sipward\""),
                "[ha]\nrole = \"standby\"",
                "s.toml:6: [state] dir with [ha] role = \"standby\"",
            ),
        ] {
            let e = parsed(&with(state, ha)).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn a_journal_without_a_stable_secret_is_refused_with_its_line() {
        let with_dir = |extra: &str| {
            EMBEDDED_DEFAULT.replacen(
                "[[interface]]\nname = \"lan\"",
                &format!(
                    "[state]\ndir = \"/var/lib/sipward\"\n{extra}\n[[interface]]\nname = \"lan\""
                ),
                1,
            )
        };
        let text = with_dir("");
        let line = text.lines().position(|l| l.starts_with("dir = ")).unwrap() + 1;
        let e = Config::parse(&text, "s.toml")
            .and_then(|c| c.compile("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "s.toml:{line}: [state] dir needs a stable hiding secret"
            )) && e.contains("secret_file"),
            "{e}"
        );
        let with_secret = with_dir("").replacen(
            "name = \"sipward\"",
            "name = \"sipward\"\nsecret = \"0123456789abcdef0\"",
            1,
        );
        let config = Config::parse(&with_secret, "s.toml").unwrap();
        assert!(config.compile("s.toml").is_ok());
        assert_eq!(config.state_dir(), Some(PathBuf::from("/var/lib/sipward")));
    }

    #[test]
    fn ipv6_interfaces_and_a_rule_across_the_families_compile() {
        let text = EMBEDDED_DEFAULT
            .replacen("address = \"127.0.1.1\"", "address = \"fd00::1\"", 1)
            .replacen(
                "networks = [\"127.0.1.0/24\"]",
                "networks = [\"fd00::/64\"]",
                1,
            )
            .replacen("network = \"127.0.1.0/24\"", "network = \"fd00::/64\"", 1)
            .replacen(
                "address = \"127.0.2.1\"",
                "address = \"2001:db8::1\"\nmedia_ports = \"40000-40999\"",
                1,
            )
            .replacen(
                "networks = [\"127.0.2.0/24\"]",
                "networks = [\"2001:db8::/64\"]",
                1,
            )
            .replacen(
                "host = \"127.0.2.10:5060\"",
                "host = \"[2001:db8::10]:5060\"",
                1,
            );
        let config = load_everything(&text).unwrap();
        let lan = &config.zones[0];
        assert_eq!(lan.address, "[fd00::1]:5060".parse().unwrap());
        assert_eq!(lan.networks, vec!["fd00::/64".parse().unwrap()]);
        assert_eq!(config.zones[1].media_ports, Some((40000, 40999)));
        // IPv6 inside, IPv4 outside: relayed media on both sides (the default ports).
        let mixed = text
            .replacen("address = \"2001:db8::1\"", "address = \"127.0.2.1\"", 1)
            .replacen(
                "networks = [\"2001:db8::/64\"]",
                "networks = [\"127.0.2.0/24\"]",
                1,
            )
            .replacen(
                "host = \"[2001:db8::10]:5060\"",
                "host = \"127.0.2.10:5060\"",
                1,
            );
        let config = load_everything(&mixed).unwrap();
        assert!(config.zones.iter().all(|z| z.media_ports.is_some()));
    }

    #[test]
    fn a_rule_across_the_families_needs_media_ports_on_both_zones() {
        let zone = |name: &str, address: &str, media_ports| Zone {
            name: name.into(),
            address: address.parse().unwrap(),
            networks: Vec::new(),
            inside: name == "lan",
            media_ports,
            intercept: false,
            advertise: None,
        };
        let ports = Some((30000, 39999));
        let lan6 = zone("lan", "[fd00::1]:5060", ports);
        let wan4 = zone("wan", "192.0.2.1:5060", ports);
        assert_eq!(cross_family_media_missing(&lan6, &wan4), None);
        let wan4_bare = zone("wan", "192.0.2.1:5060", None);
        let e = cross_family_media_missing(&lan6, &wan4_bare).unwrap();
        assert!(
            e.contains("\"lan\" (IPv6) and \"wan\" (IPv4) differ in address family"),
            "{e}"
        );
        assert!(e.contains("interface \"wan\" has no media_ports"), "{e}");
        let lan6_bare = zone("lan", "[fd00::1]:5060", None);
        assert!(cross_family_media_missing(&lan6_bare, &wan4)
            .unwrap()
            .contains("interface \"lan\" has no media_ports"));
        // The same family needs no relay to be reachable.
        let lan4_bare = zone("lan", "10.0.0.1:5060", None);
        assert_eq!(cross_family_media_missing(&lan4_bare, &wan4_bare), None);
    }

    #[test]
    fn a_secret_file_and_a_secret_together_are_refused_and_the_file_keys_the_gateway() {
        let dir = std::env::temp_dir().join(format!("sipward-cfg-secret-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        let with_file = EMBEDDED_DEFAULT.replacen(
            "[[interface]]\nname = \"lan\"",
            &format!("[state]\nsecret_file = {file:?}\n\n[[interface]]\nname = \"lan\""),
            1,
        );
        let both = with_file.replacen(
            "name = \"sipward\"",
            "name = \"sipward\"\nsecret = \"0123456789abcdef0\"",
            1,
        );
        let e = Config::parse(&both, "s.toml")
            .and_then(|c| c.compile("s.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("s.toml:8: [gateway] secret and s.toml:") && e.contains("both set"),
            "{e}"
        );
        // The file is created on first use, and the same key comes from it again.
        let key = |text: &str| {
            Config::parse(text, "s.toml")
                .and_then(|c| c.compile("s.toml"))
                .unwrap()
                .secret
        };
        let first = key(&with_file);
        assert!(file.exists());
        assert_eq!(first, key(&with_file));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn next_hop_options_service_lists_sdes_and_udp_mtu_reach_the_core() {
        let compiled = |text: &str| {
            Config::parse(text, "n.toml")
                .and_then(|c| c.compile("n.toml"))
                .map_err(|e| e.to_string())
        };
        let text = EMBEDDED_DEFAULT
            .replacen(
                "host = \"127.0.2.10:5060\"",
                "host = \"127.0.2.10:5060\"\ntransport = \"udp\"\noptions_ping = 30",
                1,
            )
            .replacen(
                "[service.sip-udp]",
                "[service.sip-tcp2]\nprotocol = \"tcp\"\nport = 5070\nalg = \"sip\"\n\n[service.sip-udp]",
                1,
            )
            .replacen(
                "service = [\"sip-udp\", \"sip-tcp\", \"sip-tls\"]",
                "service = [\"sip-udp\", \"sip-tcp2\"]",
                1,
            )
            .replacen(
                "max_sdp_len = 4000",
                "max_sdp_len = 4000\nsdes_on_plain_leg = \"allow\"",
                1,
            )
            + "\n[transport]\nudp_mtu = 9000\n";
        let c = compiled(&text).unwrap();
        let nat = &c.rules[0];
        assert!(nat.udp_only, "transport = \"udp\" is taken at its word");
        assert_eq!(nat.options_ping, Some(Duration::from_secs(30)));
        let tcp = sipward_core::Service {
            transport: sipward_core::Transport::Tcp,
            port: 5070,
        };
        assert!(
            nat.services.contains(&sipward_core::Service::udp(5060)) && nat.services.contains(&tcp),
            "{:?}",
            nat.services
        );
        assert!(c.alg.allow_sdes_on_plain_leg);
        assert_eq!(c.alg.udp_switch_size, 8800);
        // The defaults: every next hop takes TCP for large requests, no pings, keys refused.
        let d = compiled(EMBEDDED_DEFAULT).unwrap();
        assert!(!d.rules[0].udp_only && d.rules[0].options_ping.is_none());
        assert!(!d.alg.allow_sdes_on_plain_leg);
        assert_eq!(d.alg.udp_switch_size, 1300);
        for (from, to, words) in [
            (
                "options_ping = 30",
                "options_ping = 0",
                "options_ping = 0: out of range",
            ),
            (
                "udp_mtu = 9000",
                "udp_mtu = 100",
                "udp_mtu = 100: out of range",
            ),
            (
                "sdes_on_plain_leg = \"allow\"",
                "sdes_on_plain_leg = \"maybe\"",
                "expected \"refuse\" or \"allow\"",
            ),
            (
                "[\"sip-udp\", \"sip-tcp2\"]",
                "[\"sip-udp\", \"sip-sctp\"]",
                "no service \"sip-sctp\"",
            ),
        ] {
            let e = compiled(&text.replacen(from, to, 1)).unwrap_err();
            assert!(e.starts_with("n.toml:") && e.contains(words), "{to}: {e}");
        }
    }

    #[test]
    fn check_refuses_configurations_that_cannot_work() {
        let wan = "address = \"127.0.2.1\"\nnetworks = [\"127.0.2.0/24\"]";
        for (from, to, marker, words) in [
            ("port = 5060", "port = 0", "port = 0", "port 0"),
            // Defect 1: an absurd ban time passed check and overflowed at run time.
            (
                "[alg.sip]",
                "[protection]\nban_time = 9223372036854775807\n[alg.sip]",
                "ban_time",
                "expected 1 to 31536000",
            ),
            (
                "max_message_len = 6048",
                "max_message_len = 0",
                "max_message_len",
                "expected 256 to 65535",
            ),
            (
                "signal_timeout = 43200",
                "signal_timeout = 0",
                "signal_timeout",
                "out of range",
            ),
            (
                wan,
                "address = \"127.0.2.1\"\nnetworks = [\"127.0.0.0/16\"]",
                "127.0.0.0/16",
                "overlaps 127.0.1.0/24",
            ),
            (
                wan,
                "address = \"127.0.1.1\"\nnetworks = [\"127.0.2.0/24\"]",
                "address = \"127.0.1.1\"",
                "already interface \"lan\"'s",
            ),
            (
                "inside = true",
                "inside = true\nmedia_ports = \"5000-6000\"",
                "media_ports",
                "contain the SIP port 5060",
            ),
            (
                "name = \"proxy-to-core\"",
                "name = \"phones-to-proxy\"",
                "name = \"phones-to-proxy\"",
                "already rule 1",
            ),
            (
                "network = \"127.0.1.0/24\"",
                "network = \"127.0.1.7/24\"",
                "127.0.1.7/24",
                "host bits set, did you mean 127.0.1.0/24",
            ),
            (
                "networks = [\"127.0.1.0/24\"]",
                "networks = [\"127.0.1.9/24\"]",
                "127.0.1.9/24",
                "host bits set, did you mean 127.0.1.0/24",
            ),
            (
                "events = \"-\"",
                "events = \"/nonexistent-dir/events.jsonl\"",
                "events =",
                "cannot write there",
            ),
            (
                "token = \"sipward-loopback-demo-token\"",
                "",
                "[admin]",
                "no token",
            ),
            (
                "address = \"127.0.1.1\"",
                "address = \"[fd00::1]:5060\"",
                "[fd00::1]:5060",
                "invalid IP address syntax (an interface's address is the bare address, such as 192.0.2.1 or fd00::1: no brackets or port",
            ),
            (
                "host = \"127.0.2.10:5060\"",
                "host = \"[2001:db8::10]:5060\"",
                "destination = \"sip-proxy\"",
                "the destination 2001:db8::10 is IPv6 but interface \"wan\" (127.0.2.1) is IPv4",
            ),
            (
                "host = \"127.0.2.10:5060\"",
                "host = \"127.0.2.10:0\"",
                "127.0.2.10:0",
                "port 0",
            ),
            (
                "address = \"127.0.2.1\"",
                "address = \"0.0.0.0\"",
                "0.0.0.0",
                "cannot be bound",
            ),
            (
                "[alg.sip]",
                "[protection]\nscanner_agents = [\"sipvicious\", \"\"]\n[alg.sip]",
                "scanner_agents",
                "empty pattern",
            ),
            (
                "listen = \"127.0.0.1:8080\"",
                "listen = \"127.0.0.1:0\"",
                "listen =",
                "port 1-65535",
            ),
            (
                "name = \"sipward\"",
                "name = \"sipward\\r\\nX-Evil: 1\"",
                "X-Evil",
                "Warning header's agent",
            ),
            (
                "to = \"wan\"",
                "to = \"lan\"",
                "to = \"lan\"",
                "to an outside interface",
            ),
            (
                "host = \"127.0.2.10:5060\"",
                "host = \"0.0.0.0:5060\"",
                "0.0.0.0:5060",
                "not an address a host can have",
            ),
            (
                "token = \"sipward-loopback-demo-token\"",
                "token = \"sipward loopback demo token\"",
                "token =",
                "visible ASCII",
            ),
        ] {
            let e = refused(from, to, marker);
            assert!(e.contains(words), "{to}: {e}");
        }
        // A section-level line for the missing token, where the section begins.
        let e = refused("token = \"sipward-loopback-demo-token\"", "", "[admin]");
        assert!(e.contains("[admin] has no token"), "{e}");
    }

    /// Siblings of issue 17's defect 13 found by probing every key with hostile values:
    /// each passed `check` and then could not work at run time.
    #[test]
    fn check_refuses_what_probing_found_unworkable() {
        let long_name = format!("name = \"{}\"", "a".repeat(65));
        let cases: [(&str, &str, &str, &str); 10] = [
            // u16 arithmetic saturated: a pool without a single pair passed.
            (
                "inside = true",
                "inside = true\nmedia_ports = \"65535-65535\"",
                "media_ports",
                "at least one even port",
            ),
            // Ignored with an ALG, and so never checked: refused like the ALG's own.
            (
                "[alg.sip]",
                "[limits]\nmax_message_len = 0\n[alg.sip]",
                "max_message_len = 0",
                "[limits] max_message_len = 0: out of range",
            ),
            // Every answer carries it: at 60,000 bytes no 400 or 503 could be sent.
            (
                "name = \"sipward\"",
                &long_name,
                "aaaaaaaa",
                "at most 64 characters",
            ),
            (
                "host = \"127.0.2.10:5060\"",
                "host = \"255.255.255.255:5060\"",
                "255.255.255.255",
                "not an address a host can have",
            ),
            // A nat rule to the gateway's own address sends every request to itself.
            (
                "host = \"127.0.2.10:5060\"",
                "host = \"127.0.2.1:5060\"",
                "destination = \"sip-proxy\"",
                "gateway's own address",
            ),
            (
                "host = \"127.0.2.10:5060\"",
                "host = \"127.0.1.50:5060\"",
                "destination = \"sip-proxy\"",
                "is inside (127.0.1.0/24",
            ),
            (
                "name = \"sipward\"",
                "name = \"sipward\"\nsecret = \"short\"",
                "secret =",
                "at least 16 characters",
            ),
            (
                "[[interface]]\nname = \"lan\"",
                "[state]\nsecret_file = \"/nonexistent-dir/secret\"\n\n[[interface]]\nname = \"lan\"",
                "secret_file =",
                "cannot be created",
            ),
            // The parser's own errors name the key through the line's text.
            (
                "port = 5060",
                "port = 65536",
                "port = 65536",
                "port = 65536: ",
            ),
            (
                "max_sessions_per_id = 5",
                "max_sessions_per_id = -1",
                "max_sessions_per_id = -1",
                "max_sessions_per_id = -1: ",
            ),
        ];
        for (from, to, marker, words) in cases {
            let e = refused(from, to, marker);
            assert!(e.contains(words), "{to}: {e}");
        }
        for collector in ["syslog = \"0.0.0.0:514\"", "hep = \"[::]:9060\""] {
            let text = EMBEDDED_DEFAULT.replacen(
                "name = \"sipward\"",
                &format!("name = \"sipward\"\n{collector}"),
                1,
            );
            let e = Config::parse(&text, "c.toml")
                .unwrap()
                .collectors("c.toml")
                .err()
                .unwrap_or_else(|| panic!("{collector} accepted"))
                .to_string();
            assert!(e.starts_with("c.toml:8: "), "{e}");
        }
        // Works, but not as meant: warnings.
        let text = EMBEDDED_DEFAULT
            .replacen(
                "[alg.sip]",
                "[limits]\nmax_message_len = 9000\n[alg.sip]",
                1,
            )
            .replacen("networks = [\"127.0.1.0/24\"]", "networks = []", 1);
        let c = Config::parse(&text, "w.toml").unwrap();
        c.compile("w.toml").unwrap();
        let w = c.warnings("w.toml").join("\n");
        assert!(w.contains("[limits] applies to `sipward validate`"), "{w}");
        assert!(
            w.contains("inside interface \"lan\" has no networks"),
            "{w}"
        );
    }

    #[test]
    fn admin_listen_off_loopback_is_a_warning_not_an_error() {
        let text = EMBEDDED_DEFAULT.replace("127.0.0.1:8080", "192.0.2.1:8080");
        let c = Config::parse(&text, "w.toml").unwrap();
        assert!(c.admin("w.toml").unwrap().is_some());
        let w = c.warnings("w.toml");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("not a loopback address") && w[0].starts_with("w.toml:13: "),
            "{w:?}"
        );
        assert!(Config::parse(EMBEDDED_DEFAULT, "d")
            .unwrap()
            .warnings("d")
            .is_empty());
    }

    const TRANSPARENT: &str = include_str!("../../../examples/transparent.toml");

    #[test]
    fn transparent_mode_compiles_with_port_lists_networks_and_any() {
        let c = Config::parse(TRANSPARENT, "t.toml").unwrap();
        let core = c.compile("t.toml").unwrap();
        assert!(core.zones[0].intercept);
        assert!(!core.zones[1].intercept);
        assert_eq!(core.zones[0].address.port(), 5060);
        assert_eq!(
            core.rules[0].services,
            vec![
                sipward_core::Service::udp(5060),
                sipward_core::Service::udp(5080)
            ]
        );
        assert_eq!(core.rules[2].destination, AddressObject::Any);
        assert!(matches!(
            core.rules[1].destination,
            AddressObject::Network(_)
        ));
        let t = c.transparent("t.toml", &core).unwrap().unwrap();
        assert_eq!(
            t,
            TransparentSettings {
                listen_port: 15060,
                mark: 0x5157,
                route_table: 100,
                manage_firewall: false
            }
        );
        // Without an intercepting interface there is nothing to set up.
        let plain = Config::parse(EMBEDDED_DEFAULT, "d").unwrap();
        let core = plain.compile("d").unwrap();
        assert_eq!(plain.transparent("d", &core).unwrap(), None);
    }

    /// `TRANSPARENT` with `old` replaced by `new`, compiled: the error, which must
    /// name the line of the replacement's last line, or of `blamed` when given.
    fn transparent_error(old: &str, new: &str) -> String {
        transparent_error_at(old, new, None)
    }

    fn transparent_error_at(old: &str, new: &str, blamed: Option<&str>) -> String {
        assert!(TRANSPARENT.contains(old), "{old}");
        let text = TRANSPARENT.replacen(old, new, 1);
        let at = match blamed {
            Some(b) => text.find(b).unwrap_or(0),
            None => TRANSPARENT.find(old).unwrap_or(0) + new.trim_end().len(),
        };
        let line = text[..at].matches('\n').count() + 1;
        let e = load_everything(&text).unwrap_err().to_string();
        let e2 = Config::parse(&text, "p.toml")
            .and_then(|c| {
                let core = c.compile("p.toml")?;
                c.transparent("p.toml", &core).map(|_| ())
            })
            .unwrap_err()
            .to_string();
        assert_eq!(e, e2);
        assert!(e.starts_with(&format!("p.toml:{line}: ")), "{e}");
        e
    }

    #[test]
    fn transparent_mistakes_are_refused_with_their_line() {
        // Intercept on an outside interface.
        let e = transparent_error(
            "networks = [\"198.51.100.0/24\"]\n",
            "networks = [\"198.51.100.0/24\"]\nintercept = true",
        );
        assert!(e.contains("needs an inside interface"), "{e}");
        // A network or `any` destination without interception.
        for new in ["inside = true\nintercept = false", "inside = true"] {
            let e = transparent_error_at(
                "inside = true\nintercept = true",
                new,
                Some("destination = \"provider-nodes\""),
            );
            assert!(
                e.contains("rule 2 (to-provider-nodes)")
                    && e.contains("`intercept = true` on interface \"office\""),
                "{e}"
            );
        }
        // Ports: out of range, listed twice, none.
        let e = transparent_error("port = [5060, 5080]", "port = [5060, 70000]");
        assert!(e.contains("port = 70000: out of range"), "{e}");
        let e = transparent_error("port = [5060, 5080]", "port = [5060, 5080, 5060]");
        assert!(e.contains("port 5060 listed twice"), "{e}");
        let e = transparent_error("port = [5060, 5080]", "port = []");
        assert!(e.contains("at least one port"), "{e}");
        let e = transparent_error("port = [5060, 5080]", "port = 0");
        assert!(e.contains("port 0 is no port"), "{e}");
        // The listener on the SIP port; a routing table of the kernel's.
        let e = transparent_error("listen_port = 15060", "listen_port = 5060");
        assert!(e.contains("SIP port of interface"), "{e}");
        let e = transparent_error("listen_port = 15060", "listen_port = 5080");
        assert!(e.contains("a service port of rule \"to-provider\""), "{e}");
        let e = transparent_error("route_table = 100", "route_table = 254");
        assert!(e.contains("out of range"), "{e}");
        let e = transparent_error("mark = 0x5157", "mark = 0");
        assert!(e.contains("out of range"), "{e}");
        // A network destination overlapping the inside.
        let e = transparent_error_at(
            "network = \"203.0.113.0/28\"",
            "network = \"10.10.0.0/16\"",
            Some("destination = \"provider-nodes\""),
        );
        assert!(e.contains("overlaps 10.10.0.0/24"), "{e}");
    }

    /// Every numeric key of the file, where it goes (`None`: `[alg.sip]`, else the
    /// section to add).
    const NUMERIC_KEYS: &[(&str, &str)] = &[
        ("alg", "max_sessions_per_id"),
        ("alg", "max_registration_time"),
        ("alg", "request_response_timeout"),
        ("alg", "signal_timeout"),
        ("alg", "data_channel_timeout"),
        ("alg", "max_registrations"),
        ("alg", "max_dialogs"),
        ("alg", "max_transactions"),
        ("alg", "max_param_len"),
        ("alg", "max_message_len"),
        ("alg", "max_sdp_len"),
        ("alg", "max_headers"),
        ("alg", "max_vias"),
        ("alg", "max_routes"),
        ("alg", "max_contacts"),
        ("alg", "max_params"),
        ("alg", "max_sdp_media"),
        ("alg", "max_sdp_lines"),
        ("protection", "max_register_failures"),
        ("protection", "max_failed_users_per_source"),
        ("protection", "failure_window"),
        ("protection", "ban_time"),
        ("protection", "new_requests_per_second"),
        ("protection", "new_requests_burst"),
        ("protection", "dialog_requests_per_second"),
        ("protection", "dialog_requests_burst"),
        ("protection", "responses_per_second"),
        ("protection", "responses_burst"),
        ("protection", "admission_per_second"),
        ("protection", "admission_burst"),
        ("protection", "retry_after"),
        ("protection", "outside_admission_per_second"),
        ("protection", "outside_admission_burst"),
        ("protection", "table_reserve"),
        ("protection", "table_share_floor"),
        ("protection", "outside_table_share"),
        ("protection", "max_tracked_sources"),
        ("protection", "max_bans"),
        ("admin", "max_connections"),
        ("admin", "request_timeout"),
        ("relay", "cpu"),
        ("relay", "realtime_priority"),
        ("relay", "busy_poll_us"),
        ("gateway", "hep_id"),
        ("limits", "max_message_len"),
        ("service", "port"),
        ("transparent", "listen_port"),
        ("transparent", "mark"),
        ("transparent", "route_table"),
    ];

    /// The embedded default with `key = value` in its section (the key's line is
    /// returned too).
    fn with_value(section: &str, key: &str, value: &str) -> (String, usize) {
        let line = format!("{key} = {value}");
        // The default writes some keys out: those lines go, so the key is set once.
        let base: String = EMBEDDED_DEFAULT
            .lines()
            .filter(|l| section == "service" || !l.starts_with(&format!("{key} ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let text = match section {
            "alg" => base.replacen("[alg.sip]\n", &format!("[alg.sip]\n{line}\n"), 1),
            "admin" => base.replacen("[admin]\n", &format!("[admin]\n{line}\n"), 1),
            "gateway" => base.replacen("[gateway]\n", &format!("[gateway]\n{line}\n"), 1),
            "service" => base.replacen("port = 5060", &line, 1),
            other => format!("{base}\n[{other}]\n{line}\n"),
        };
        let at = text.lines().position(|l| l == line).map_or(0, |i| i + 1);
        (text, at)
    }

    /// Everything `run` derives from the file, as `run` would (the relay thread is not
    /// started: its placement is only checked).
    fn load_everything(text: &str) -> Result<sipward_core::Config> {
        let c = Config::parse(text, "p.toml")?;
        let core = c.compile("p.toml")?;
        c.admin("p.toml")?;
        c.relay("p.toml")?;
        c.collectors("p.toml")?;
        c.validate_limits("p.toml")?;
        c.transparent("p.toml", &core)?;
        Ok(core)
    }

    /// Drives a gateway built from an accepted configuration through what used to
    /// overflow: a scanner's REGISTER (a ban), a REGISTER whose 200 grants the longest
    /// expiry, an operator's ban, and timers far in the future.
    fn exercise(core: sipward_core::Config) {
        use std::net::SocketAddr;
        let lan = core.zones[0].address;
        let wan = core.zones[1].address;
        let mut g = sipward_core::Gateway::new(core);
        let t0 = std::time::Instant::now();
        let phone: SocketAddr = "127.0.1.20:5070".parse().unwrap();
        let register = |agent: &str, branch: &str| {
            format!(
                "REGISTER sip:127.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.1.20:5070;branch=z9hG4bK{branch}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:alice@127.0.2.10>;tag=1\r\nTo: <sip:alice@127.0.2.10>\r\n\
                 Call-ID: {branch}@127.0.1.20\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.1.20:5070>;expires=4294967295\r\n\
                 Expires: 4294967295\r\nUser-Agent: {agent}\r\nContent-Length: 0\r\n\r\n"
            )
        };
        g.handle_datagram(
            t0,
            lan,
            phone,
            register("friendly-scanner", "scan").as_bytes(),
        );
        let scanner: SocketAddr = "127.0.1.21:5070".parse().unwrap();
        g.handle_datagram(t0, lan, scanner, register("sipvicious", "scan2").as_bytes());
        g.handle_datagram(
            t0,
            lan,
            "127.0.1.22:5070".parse().unwrap(),
            register("Yealink", "ok").as_bytes(),
        );
        while let Some(t) = g.poll_transmit() {
            // Answer whatever went to the proxy with a 200 granting the most.
            let text = String::from_utf8_lossy(&t.payload).into_owned();
            if t.remote.port() == 5060 && text.starts_with("REGISTER") {
                let mut answer = String::from("SIP/2.0 200 OK\r\n");
                for l in text.split("\r\n").skip(1) {
                    if l.is_empty() {
                        break;
                    }
                    let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
                    if ["via", "from", "to", "call-id", "cseq", "contact"].contains(&name.as_str())
                    {
                        answer.push_str(l);
                        answer.push_str("\r\n");
                    }
                }
                answer.push_str("Expires: 4294967295\r\nContent-Length: 0\r\n\r\n");
                g.handle_datagram(t0, wan, t.remote, answer.as_bytes());
            }
        }
        g.ban(
            "192.0.2.18".parse().unwrap(),
            Some(Duration::from_secs(u64::MAX)),
            "x",
            t0,
        );
        g.ban("192.0.2.19".parse().unwrap(), None, "x", t0);
        for step in [1, 3600, 86_400 * 400, 86_400 * 365 * 50] {
            g.handle_timeout(t0 + Duration::from_secs(step));
        }
        let _ = g.bans(t0);
    }

    use proptest::prelude::*;

    proptest::proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every numeric key with extreme values: accepted, and a gateway built from it
        /// survives what used to overflow, or refused with the key's `file:line`.
        #[test]
        fn every_numeric_key_is_accepted_safely_or_refused_with_its_line(
            key in prop::sample::select(NUMERIC_KEYS),
            value in prop_oneof![
                prop::sample::select(vec![
                    "0", "1", "-1", "2", "65535", "65536", "4294967295", "4294967296",
                    "9223372036854775807", "-9223372036854775808", "99999999999999999999",
                    "18446744073709551615", "0.0", "-0.5", "1e308", "inf", "-inf", "nan",
                    "1.5", "\"10\"", "true",
                ]).prop_map(|v: &str| v.to_string()),
                proptest::arbitrary::any::<i64>().prop_map(|v| v.to_string()),
                proptest::arbitrary::any::<f64>().prop_map(|v| format!("{v:e}")),
            ],
        ) {
            let (section, name) = key;
            let (text, line) = with_value(section, name, &value);
            prop_assert!(line > 0);
            match load_everything(&text) {
                Ok(core) => exercise(core),
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(
                        e.starts_with(&format!("p.toml:{line}: ")),
                        "{} = {}: {}", name, value, e
                    );
                }
            }
        }
    }
}
