//! Transparent mode's firewall: the nftables ruleset that diverts the phones' SIP to the
//! listener (TPROXY), the policy route that delivers the marked datagrams locally, and,
//! with `manage_firewall = true`, installing them at start and removing them at stop.
//!
//! `sipward nft-rules` prints, in this order: an nftables script (loadable with
//! `nft -f`, idempotent: it replaces any earlier `table inet sipward`), a line
//! `# routing:`, then one `ip` command per line (the policy routing for the mark).
//! No `socket transparent` rule: measured, it hands a second phone's datagram to the
//! unconnected socket that answers as the proxy instead of to the listener.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use sipward_core::{Action, AddressObject, Config, Transport};

use crate::config::TransparentSettings;

/// The nftables table sipward owns.
pub(crate) const TABLE: &str = "sipward";
/// The line between the nftables script and the routing commands.
pub(crate) const ROUTING_MARK: &str = "# routing:";

/// The families (IPv4 first) whose interfaces intercept.
fn families(config: &Config) -> Vec<bool> {
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        if config
            .zones
            .iter()
            .any(|z| z.intercept && z.address.is_ipv6() == ipv6)
        {
            out.push(ipv6);
        }
    }
    out
}

/// The (destination, port) pairs of one family the nat rules of intercepting zones
/// forward: each rule's destination (`any`: the whole family) times its service ports.
/// Pairs inside a larger one of the same port are left out (nftables refuses
/// overlapping intervals).
fn destinations(config: &Config, ipv6: bool) -> Vec<(IpNet, u16)> {
    let mut pairs: Vec<(IpNet, u16)> = Vec::new();
    for r in &config.rules {
        let Some(zone) = config.zone(r.from_zone) else {
            continue;
        };
        // `any` is the whole family of the zone's phones.
        if r.action != Action::Nat || !zone.intercept || zone.address.is_ipv6() != ipv6 {
            continue;
        }
        let (net, only_port) = match &r.destination {
            AddressObject::Host { ip, port } => (IpNet::from(*ip), *port),
            AddressObject::Network(net) => (*net, None),
            AddressObject::Any if ipv6 => (IpNet::V6(ipnet::Ipv6Net::default()), None),
            AddressObject::Any => (IpNet::V4(ipnet::Ipv4Net::default()), None),
        };
        if matches!(net, IpNet::V6(_)) != ipv6 {
            continue;
        }
        // UDP only: the listener is a UDP socket (streams would need a TCP one).
        let ports = r
            .services
            .iter()
            .filter(|s| s.transport == Transport::Udp)
            .map(|s| s.port);
        for port in ports {
            if only_port.is_some_and(|p| p != port) || pairs.contains(&(net, port)) {
                continue;
            }
            pairs.push((net, port));
        }
    }
    let covered = |(net, port): &(IpNet, u16)| {
        pairs
            .iter()
            .any(|(other, p)| p == port && other != net && other.contains(net))
    };
    pairs.iter().filter(|p| !covered(p)).copied().collect()
}

/// An address or network as nftables writes it (a host without `/32`).
fn nft_net(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The nftables script for `config` (see the module's documentation).
pub(crate) fn nft_script(config: &Config, t: &TransparentSettings) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# sipward transparent mode: divert the phones' SIP to the listener on port {} (TPROXY)",
        t.listen_port
    );
    // Declared, deleted and declared again: loading it twice replaces the table.
    let _ = writeln!(out, "table inet {TABLE}");
    let _ = writeln!(out, "delete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    let families = families(config);
    for &ipv6 in &families {
        let (name, kind) = if ipv6 {
            ("sip6", "ipv6_addr")
        } else {
            ("sip4", "ipv4_addr")
        };
        let _ = writeln!(out, "    set {name} {{");
        let _ = writeln!(out, "        type {kind} . inet_service");
        let _ = writeln!(out, "        flags interval");
        let elements: Vec<String> = destinations(config, ipv6)
            .iter()
            .map(|(net, port)| format!("{} . {port}", nft_net(net)))
            .collect();
        if !elements.is_empty() {
            let _ = writeln!(out, "        elements = {{ {} }}", elements.join(", "));
        }
        let _ = writeln!(out, "    }}");
    }
    let _ = writeln!(out, "    chain divert {{");
    let _ = writeln!(
        out,
        "        type filter hook prerouting priority mangle; policy accept;"
    );
    for &ipv6 in &families {
        let (ip, set) = if ipv6 {
            ("ip6", "sip6")
        } else {
            ("ip", "sip4")
        };
        let inside: Vec<String> = config
            .zones
            .iter()
            .filter(|z| z.inside)
            .flat_map(|z| z.networks.iter())
            .filter(|n| matches!(n, IpNet::V6(_)) == ipv6)
            .map(nft_net)
            .collect();
        // Office traffic to another inside network is never diverted, even by `any`.
        let not_inside = if inside.is_empty() {
            String::new()
        } else {
            format!("{ip} daddr != {{ {} }} ", inside.join(", "))
        };
        for z in config
            .zones
            .iter()
            .filter(|z| z.intercept && z.address.is_ipv6() == ipv6)
        {
            let sources: Vec<String> = z
                .networks
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == ipv6)
                .map(nft_net)
                .collect();
            // The configuration names no devices: the zone's networks say whose SIP it is.
            let from = if sources.is_empty() {
                String::new()
            } else {
                format!("{ip} saddr {{ {} }} ", sources.join(", "))
            };
            let _ = writeln!(
                out,
                "        {from}fib daddr type != local {not_inside}{ip} daddr . udp dport @{set} meta mark set {:#x} tproxy {ip} to :{} counter accept comment \"{}\"",
                t.mark, t.listen_port, z.name
            );
        }
    }
    let _ = writeln!(out, "    }}");
    let _ = writeln!(out, "}}");
    out
}

/// The policy routing for the mark, one command (arguments to `ip`) per step.
pub(crate) fn routing_commands(config: &Config, t: &TransparentSettings) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for ipv6 in families(config) {
        let family: &[&str] = if ipv6 { &["-6"] } else { &[] };
        let everything = if ipv6 { "::/0" } else { "0.0.0.0/0" };
        let mark = format!("{:#x}", t.mark);
        let table = t.route_table.to_string();
        let args = |rest: &[&str]| -> Vec<String> {
            family
                .iter()
                .chain(rest)
                .map(|s| (*s).to_string())
                .collect()
        };
        out.push(args(&["rule", "add", "fwmark", &mark, "lookup", &table]));
        out.push(args(&[
            "route", "add", "local", everything, "dev", "lo", "table", &table,
        ]));
    }
    out
}

/// What `sipward nft-rules` prints.
pub(crate) fn ruleset_text(config: &Config, t: &TransparentSettings) -> String {
    let mut out = nft_script(config, t);
    out.push_str(ROUTING_MARK);
    out.push('\n');
    for c in routing_commands(config, t) {
        let _ = writeln!(out, "ip {}", c.join(" "));
    }
    out
}

/// Whether this process has CAP_NET_ADMIN (bit 12 of the effective set).
pub(crate) fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 12) != 0)
}

/// The message when CAP_NET_ADMIN is missing.
pub(crate) const NEEDS_NET_ADMIN: &str = "transparent mode needs CAP_NET_ADMIN (IP_TRANSPARENT sockets, the firewall rules): run as root or grant it (systemd: AmbientCapabilities=CAP_NET_ADMIN)";

/// A command in PATH.
fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs a command, its output captured; the error carries its stderr.
fn run(program: &Path, args: &[String], input: Option<&str>) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write to {}", program.display()))?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "`{} {}` failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The rules installed by `manage_firewall`; dropping it removes them.
pub(crate) struct Installed {
    nft: PathBuf,
    ip: PathBuf,
    routing: Vec<Vec<String>>,
}

/// Checks what TPROXY needs and installs the ruleset. Returns the warnings to print
/// (a kernel SIP helper in the ruleset).
pub(crate) fn install(
    config: &Config,
    t: &TransparentSettings,
) -> Result<(Installed, Vec<String>)> {
    if !has_net_admin() {
        bail!("{NEEDS_NET_ADMIN}");
    }
    let find = |name: &str, package: &str| {
        find_command(name).ok_or_else(|| {
            anyhow!("[transparent] manage_firewall = true needs the `{name}` command ({package}): not found in PATH")
        })
    };
    let nft = find("nft", "nftables")?;
    let ip = find("ip", "iproute2")?;
    let mut warnings = Vec::new();
    let ruleset = run(&nft, &["list".into(), "ruleset".into()], None)?;
    if kernel_sip_helper(&ruleset) {
        warnings.push(
            "warning: the nftables ruleset has a `ct helper` of type \"sip\" (the kernel SIP ALG, nf_conntrack_sip): attached to the phones' SIP it rewrites behind sipward; remove it from that traffic".to_string(),
        );
    }
    run(
        &nft,
        &["-f".into(), "-".into()],
        Some(&nft_script(config, t)),
    )
    .context("cannot load the transparent mode's nftables rules")?;
    let installed = Installed {
        nft,
        ip,
        routing: routing_commands(config, t),
    };
    for command in &installed.routing {
        // Idempotent: an earlier run's rule is taken away first (all its copies), and
        // the route replaced.
        if command.iter().any(|a| a == "rule") {
            let delete = with_verb(command, "del");
            for _ in 0..16 {
                if run(&installed.ip, &delete, None).is_err() {
                    break;
                }
            }
            run(&installed.ip, command, None)?;
        } else {
            run(&installed.ip, &with_verb(command, "replace"), None)?;
        }
    }
    Ok((installed, warnings))
}

/// `command` with its `add` replaced by `verb`.
fn with_verb(command: &[String], verb: &str) -> Vec<String> {
    command
        .iter()
        .map(|a| {
            if a == "add" {
                verb.to_string()
            } else {
                a.clone()
            }
        })
        .collect()
}

/// Whether an `nft list ruleset` output declares a conntrack helper of type "sip".
pub(crate) fn kernel_sip_helper(ruleset: &str) -> bool {
    let mut in_helper = false;
    for line in ruleset.lines().map(str::trim) {
        if line.starts_with("ct helper ") && line.ends_with('{') {
            in_helper = true;
        } else if in_helper && line.starts_with("type \"sip\"") {
            return true;
        } else if line == "}" {
            in_helper = false;
        }
    }
    false
}

impl Drop for Installed {
    fn drop(&mut self) {
        let table = ["delete", "table", "inet", TABLE].map(String::from);
        if let Err(e) = run(&self.nft, &table, None) {
            tracing::warn!("removing the nftables table: {e:#}");
        }
        for command in &self.routing {
            if let Err(e) = run(&self.ip, &with_verb(command, "del"), None) {
                tracing::warn!("removing the policy routing: {e:#}");
            }
        }
    }
}

/// Whether any address of `config`'s intercepting zones is IPv6 (the listener then
/// opens on both families).
pub(crate) fn listener_families(config: &Config) -> Vec<bool> {
    families(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_sip_helper_is_recognised_in_the_ruleset() {
        let with = "table inet filter {\n\tct helper sip-5060 {\n\t\ttype \"sip\" protocol udp\n\t\tl3proto ip\n\t}\n}\n";
        assert!(kernel_sip_helper(with));
        let ftp = "table inet filter {\n\tct helper ftp {\n\t\ttype \"ftp\" protocol tcp\n\t}\n\tchain c {\n\t\tcomment \"type \\\"sip\\\"\"\n\t}\n}\n";
        assert!(!kernel_sip_helper(ftp));
    }

    #[test]
    fn covered_pairs_are_left_out() {
        let text = include_str!("../../../examples/transparent.toml");
        let file = crate::config::Config::parse(text, "t").unwrap();
        let core = file.compile("t").unwrap();
        // `any` covers the host and the network: only it is left, per port.
        let nets: Vec<String> = destinations(&core, false)
            .iter()
            .map(|(n, p)| format!("{n} {p}"))
            .collect();
        assert_eq!(nets, ["0.0.0.0/0 5060", "0.0.0.0/0 5080"]);
        assert!(destinations(&core, true).is_empty());
    }
}
