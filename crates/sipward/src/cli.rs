//! The command line over the admin API: `sipward status|calls|registrations|blacklist`,
//! readable tables by default, the API's JSON with `--json`.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Global: accepted before or after a subcommand's own arguments
/// (`sipward blacklist add 192.0.2.66 --seconds 600 --token ...`).
#[derive(Args)]
pub(crate) struct Api {
    /// The gateway's admin API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// The admin token (or set SIPWARD_TOKEN).
    #[arg(long, global = true, env = "SIPWARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// How long the CLI waits to connect to the API, and for a whole answer: a gateway (or
/// anything else at that address) that accepts and never answers must not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Subcommand)]
pub(crate) enum AdminCommand {
    /// Version, uptime, listeners and what the gateway holds.
    Status {
        #[command(flatten)]
        api: Api,
    },
    /// Calls and subscriptions, with their media streams.
    Calls {
        #[command(flatten)]
        api: Api,
    },
    /// Registration bindings.
    Registrations {
        #[command(flatten)]
        api: Api,
    },
    /// List, add or remove blacklisted sources.
    Blacklist {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        action: BlacklistAction,
    },
    /// The active/standby pair: this node's role, epoch and lag; promote a standby.
    Ha {
        #[command(flatten)]
        api: Api,
        #[command(subcommand)]
        action: HaAction,
    },
}

#[derive(Subcommand)]
pub(crate) enum HaAction {
    /// Role, epoch, lag behind the active and the store's state (JSON).
    Show,
    /// Make this standby active (keepalived's notify script calls it on MASTER).
    Promote,
}

#[derive(Subcommand)]
pub(crate) enum BlacklistAction {
    /// The live entries: source, reason, user, first/last seen, expiry, hits.
    List,
    /// Blacklist a source (for the configured ban time unless --seconds is given).
    Add {
        source: IpAddr,
        #[arg(long)]
        seconds: Option<u64>,
        #[arg(long, default_value = "added by operator")]
        reason: String,
    },
    /// Lift a source's ban.
    Remove { source: IpAddr },
}

/// `text` with every control character (C0, DEL, C1) written as `\uXXXX` (valid in JSON too): values from
/// the API (ban reasons, user agents, users) come from operators and peers and must not
/// drive the terminal. `keep_newlines` for the pretty-printed JSON, whose newlines are
/// its own (serde_json escapes those inside strings, but not DEL or C1).
pub(crate) fn printable(text: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(keep_newlines && c == '\n') {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

fn print_json(v: &Value) {
    println!("{}", printable(&format!("{v:#}"), true));
}

fn request(api: &Api, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let token = api
        .token
        .as_deref()
        .ok_or_else(|| anyhow!("no admin token: give --token or set SIPWARD_TOKEN"))?;
    // A header cannot carry these; said here rather than as a connection failure.
    if token.chars().any(|c| !c.is_ascii_graphic()) {
        anyhow::bail!("the admin token can only hold visible ASCII characters (no spaces)");
    }
    let url = format!("{}{path}", api.api.trim_end_matches('/'));
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout(ANSWER_TIMEOUT)
        .build();
    let req = agent
        .request(method, &url)
        .set("Authorization", &format!("Bearer {token}"));
    let result = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match result {
        Ok(resp) => resp
            .into_json()
            .map_err(|e| anyhow!("{url}: the answer is not the API's JSON ({e})")),
        Err(ureq::Error::Status(code, resp)) => {
            let why = resp
                .into_json::<Value>()
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            Err(anyhow!("{url}: {code} {}", printable(&why, false)))
        }
        Err(e) => Err(anyhow!("{url}: {e} (is sipward running with [admin] set?)")),
    }
}

/// Prints rows as an aligned table.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    if rows.is_empty() {
        println!("(none)");
    }
    for r in rows {
        line(r);
    }
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => printable(s, false),
        Some(Value::Null) | None => "-".into(),
        Some(other) => printable(&other.to_string(), false),
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

pub(crate) fn run(command: AdminCommand) -> Result<ExitCode> {
    match command {
        AdminCommand::Ha { api, action } => {
            let v = match action {
                HaAction::Show => request(&api, "GET", "/api/v1/ha", None)?,
                HaAction::Promote => request(&api, "POST", "/api/v1/ha/promote", None)?,
            };
            print_json(&v);
        }
        AdminCommand::Status { api } => {
            let v = request(&api, "GET", "/api/v1/status", None)?;
            if api.json {
                print_json(&v);
            } else {
                for key in [
                    "version",
                    "uptime_seconds",
                    "config_digest",
                    "registrations",
                    "calls",
                    "transactions",
                    "media_streams",
                    "bans",
                ] {
                    println!("{key:<16} {}", text(&v, key));
                }
                for t in v.get("tables").map(items).unwrap_or_default() {
                    let name = match t.get("address") {
                        Some(Value::String(a)) => {
                            format!("{} {}", text(t, "table"), printable(a, false))
                        }
                        _ => text(t, "table"),
                    };
                    println!(
                        "table            {name:<30} {} of {}",
                        text(t, "entries"),
                        text(t, "capacity")
                    );
                }
                for l in v.get("listeners").map(items).unwrap_or_default() {
                    println!(
                        "listener         {} {} ({})",
                        text(l, "interface"),
                        text(l, "address"),
                        if l.get("inside") == Some(&json!(true)) {
                            "inside"
                        } else {
                            "outside"
                        }
                    );
                }
            }
        }
        AdminCommand::Calls { api } => {
            let v = request(&api, "GET", "/api/v1/calls", None)?;
            if api.json {
                print_json(&v);
            } else {
                let rows = items(&v)
                    .iter()
                    .map(|c| {
                        let media: Vec<String> = c
                            .get("streams")
                            .map(items)
                            .unwrap_or_default()
                            .iter()
                            .map(|s| {
                                format!(
                                    "{}/{} pkts, {} dropped",
                                    text(s, "packets_from_inside"),
                                    text(s, "packets_from_outside"),
                                    text(s, "dropped")
                                )
                            })
                            .collect();
                        vec![
                            text(c, "inside_call_id"),
                            text(c, "kind"),
                            text(c, "direction"),
                            text(c, "aor"),
                            text(c, "state"),
                            text(c, "age_seconds"),
                            media.join("; "),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "CALL-ID",
                        "KIND",
                        "DIRECTION",
                        "USER",
                        "STATE",
                        "AGE",
                        "MEDIA",
                    ],
                    rows,
                );
            }
        }
        AdminCommand::Registrations { api } => {
            let v = request(&api, "GET", "/api/v1/registrations", None)?;
            if api.json {
                print_json(&v);
            } else {
                let rows = items(&v)
                    .iter()
                    .map(|r| {
                        vec![
                            text(r, "aor"),
                            text(r, "phone"),
                            text(r, "outside_contact"),
                            text(r, "expires_in"),
                        ]
                    })
                    .collect();
                table(&["USER", "PHONE", "OUTSIDE CONTACT", "EXPIRES IN"], rows);
            }
        }
        AdminCommand::Blacklist { api, action } => {
            let v = match action {
                BlacklistAction::List => request(&api, "GET", "/api/v1/blacklist", None)?,
                BlacklistAction::Add {
                    source,
                    seconds,
                    reason,
                } => {
                    // Refused here, before any request, with the API's own words.
                    if let Some(why) = crate::admin::ban_refusal(seconds, Some(&reason)) {
                        anyhow::bail!("blacklist add: {why}");
                    }
                    request(
                        &api,
                        "POST",
                        "/api/v1/blacklist",
                        Some(
                            json!({"source": source.to_string(), "seconds": seconds, "reason": reason}),
                        ),
                    )?
                }
                BlacklistAction::Remove { source } => {
                    request(&api, "DELETE", &format!("/api/v1/blacklist/{source}"), None)?
                }
            };
            if api.json || !v.is_array() {
                print_json(&v);
            } else {
                let rows = items(&v)
                    .iter()
                    .map(|b| {
                        vec![
                            text(b, "source"),
                            text(b, "reason"),
                            text(b, "user"),
                            text(b, "hits"),
                            text(b, "expires_in"),
                            text(b, "first_seen"),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "SOURCE",
                        "REASON",
                        "USER",
                        "HITS",
                        "EXPIRES IN",
                        "FIRST SEEN",
                    ],
                    rows,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
