//! The sipward binary: command line, configuration file and the tokio driver.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod admin;
mod cert;
mod cli;
mod config;
mod driver;
mod export;
mod firewall;
mod ha;
mod journal;
mod redis_store;
mod secret;
mod store;
mod streams;
mod transparent;
mod validate;

#[derive(Parser)]
#[command(
    name = "sipward",
    version,
    about = "SIP application layer gateway and VoIP edge-security gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (on the embedded loopback configuration when no file is given).
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print the compiled rule set.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the nftables ruleset and the policy routing that divert the phones' SIP to
    /// sipward (transparent mode): an `nft -f` script, a line `# routing:`, then the
    /// `ip` commands, one per line.
    NftRules {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Judge SIP datagrams stored in files, one datagram per file, exactly as the gateway
    /// would: prints `FILE: accept`, `FILE: reject CODE REASON` or `FILE: drop REASON`.
    Validate {
        /// Configuration file whose limits apply (the embedded defaults otherwise).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also print the answer sipward would send for each rejected request.
        #[arg(long)]
        show_answer: bool,
        /// Files to judge.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Make a test CA and a certificate and key for NAME (PEM files), for trying SIP over
    /// TLS. FOR TESTING ONLY: the CA key is written unprotected beside its certificate.
    Cert(cert::CertArgs),
    /// Ask the running gateway (admin API): status, calls, registrations, blacklist.
    #[command(flatten)]
    Admin(cli::AdminCommand),
}

/// The core's configuration and the binary's own settings (event log, control socket).
pub(crate) fn load_all(path: Option<&Path>) -> Result<(sipward_core::Config, driver::Settings)> {
    let (file, origin) = match path {
        Some(p) => (config::Config::load(p)?, p.display().to_string()),
        None => (
            config::Config::parse(config::EMBEDDED_DEFAULT, "embedded default")?,
            "embedded default".to_string(),
        ),
    };
    let core = file.compile(&origin)?;
    let streams = file.streams(&origin, &core)?;
    let mut warnings = file.warnings(&origin);
    warnings.extend(streams.warnings.iter().cloned());
    let settings = driver::Settings {
        events: file.events().map(str::to_string),
        admin: file.admin(&origin)?,
        warnings,
        config_digest: file.digest(),
        path: path.map(Path::to_path_buf),
        collectors: file.collectors(&origin)?,
        interface_lines: file.interface_lines(&origin),
        relay: file.relay(&origin)?,
        streams,
        transparent: file.transparent(&origin, &core)?,
        journal: file.state_dir(),
        ha: file.ha(&origin)?,
    };
    Ok((core, settings))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SIPWARD_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => load_all(config.as_deref()).and_then(|(c, settings)| {
            abort_on_panic();
            for w in &settings.warnings {
                driver::say(&mut std::io::stderr(), &format!("sipward: {w}"));
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(driver::run(c, settings))
                .map(|()| ExitCode::SUCCESS)
        }),
        Command::Admin(command) => cli::run(command),
        Command::Cert(args) => cert::run(&args).map(|written| {
            for file in written {
                println!("{}", file.display());
            }
            eprintln!("sipward: test certificates only: keep the CA key away from production");
            ExitCode::SUCCESS
        }),
        Command::Check { config } => load_all(config.as_deref()).map(|(c, settings)| {
            for w in &settings.warnings {
                eprintln!("sipward: {w}");
            }
            print_rules(&c);
            if let Some(t) = &settings.transparent {
                driver::say(
                    &mut std::io::stdout(),
                    &format!(
                        "transparent: listener port {}, mark {:#x}, route table {}, firewall {}",
                        t.listen_port,
                        t.mark,
                        t.route_table,
                        if t.manage_firewall {
                            "installed by sipward (manage_firewall)"
                        } else {
                            "loaded by the operator (sipward nft-rules)"
                        }
                    ),
                );
            }
            // `run` raises the soft limit to the hard one: that is what it will have.
            if let Ok((_, hard)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
                if let Some(warning) = driver::file_limit_warning(&c, hard) {
                    eprintln!("sipward: {warning}");
                }
                let media = driver::files_needed(&c);
                if let Some(warning) = settings.streams.file_limit_warning(media, hard) {
                    eprintln!("sipward: {warning}");
                }
            }
            ExitCode::SUCCESS
        }),
        Command::NftRules { config } => load_all(config.as_deref()).and_then(|(c, settings)| {
            let Some(t) = &settings.transparent else {
                anyhow::bail!(
                    "{}: no interface has `intercept = true`: nothing to divert",
                    config
                        .as_deref()
                        .map_or_else(|| "embedded default".into(), |p| p.display().to_string())
                );
            };
            let _ = std::io::Write::write_all(
                &mut std::io::stdout(),
                firewall::ruleset_text(&c, t).as_bytes(),
            );
            Ok(ExitCode::SUCCESS)
        }),
        Command::Validate {
            config,
            show_answer,
            files,
        } => validate::run(config.as_deref(), show_answer, &files),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sipward: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// A panic anywhere in `run` (the driver task, where tokio would otherwise catch it and
/// leave a process that answers nothing, or the relay thread) ends the process at once
/// with one clear line: a gateway half alive with calls up is worse than a restart by
/// the service manager.
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("panic");
        let at = info.location().map_or_else(
            || "an unknown place".to_string(),
            |l| format!("{}:{}", l.file(), l.line()),
        );
        // Written directly: the standard streams' macros panic themselves on a closed
        // stream.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!(
                "sipward: internal error at {at}: {message}; aborting so the service manager restarts it\n"
            )
            .as_bytes(),
        );
        std::process::abort();
    }));
}

fn print_rules(c: &sipward_core::Config) {
    use std::fmt::Write as _;
    let mut out = String::from("configuration ok\n");
    for z in &c.zones {
        let nets: Vec<String> = z.networks.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "interface {:<8} {:<22} {} networks [{}]{}",
            z.name,
            z.address,
            if z.inside { "inside " } else { "outside" },
            nets.join(", "),
            if z.intercept {
                " intercept (transparent mode)"
            } else {
                ""
            }
        );
    }
    let a = &c.alg;
    let _ = writeln!(
        out,
        "alg: max sessions per id {}, max registration time {}s, request-response timeout {}s, signal timeout {}s, data channel timeout {}s, media bypass {}",
        a.max_sessions_per_id,
        a.max_registration_time.as_secs(),
        a.request_response_timeout.as_secs(),
        a.signal_timeout.as_secs(),
        a.data_channel_timeout.as_secs(),
        if a.allow_media_bypass { "on" } else { "off" }
    );
    let _ = writeln!(
        out,
        "limits: parameter {} B, message {} B, SDP {} B",
        a.limits.max_param_len, a.limits.max_message_len, a.limits.max_sdp_len
    );
    let zone = |id: usize| c.zones.get(id).map_or("?", |z| z.name.as_str());
    for (i, r) in c.rules.iter().enumerate() {
        let _ = writeln!(
            out,
            "rule {:>2} {:<18} {:<6} from {} {} to {} {} {}",
            i + 1,
            r.name,
            format!("{:?}", r.action).to_lowercase(),
            zone(r.from_zone),
            r.source,
            r.to_zone.map_or("core", zone),
            r.destination,
            r.services
                .iter()
                .map(|s| format!("{}/{}", s.transport.via_token().to_lowercase(), s.port))
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    out.push_str("rule  * default            drop   anything else (counted)\n");
    // A closed pipe (`sipward check | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}
