//! `sipward validate`: the live gateway's judgement applied to files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use sipward_proto::{build_answer, parse_datagram, Datagram, Limits};

use crate::config::Config;

/// The verdict line for one datagram, as `sipward validate` prints it after `FILE: `.
pub(crate) fn verdict(datagram: &[u8], limits: &Limits) -> (String, Option<Vec<u8>>) {
    match parse_datagram(datagram, limits) {
        Ok(Datagram::Message(_)) => ("accept".to_owned(), None),
        Ok(Datagram::Keepalive) => ("accept keepalive".to_owned(), None),
        Ok(Datagram::StunBinding(_)) => ("accept STUN Binding request".to_owned(), None),
        Err(r) => match r.status {
            Some(code) => (
                format!("reject {code} {}", r.defect),
                build_answer(datagram, &r, "sipward"),
            ),
            None => (format!("drop {}", r.defect), None),
        },
    }
}

pub(crate) fn run(config: Option<&Path>, show_answer: bool, files: &[PathBuf]) -> Result<ExitCode> {
    let limits = match config {
        Some(path) => Config::load(path)?.validate_limits(&path.display().to_string())?,
        None => Limits::default(),
    };
    let mut failed = false;
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => {
                let (line, answer) = verdict(&bytes, &limits);
                println!("{}: {line}", file.display());
                if let (true, Some(a)) = (show_answer, answer) {
                    print!("{}", String::from_utf8_lossy(&a));
                }
            }
            Err(e) => {
                eprintln!("{}: cannot read: {e}", file.display());
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
