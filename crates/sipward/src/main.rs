//! The sipward binary: command line, configuration and (with the gateway) the tokio driver.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
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
