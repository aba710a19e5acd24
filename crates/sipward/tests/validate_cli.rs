//! `sipward validate` as a user runs it: the binary on corpus files and on a bad config.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::process::Command;

fn corpus(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/corpora/rfc4475")
        .join(file)
}

fn sipward(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sipward"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_one_verdict_line_per_file() {
    let files = ["wsinv.dat", "badvers.dat", "bigcode.dat", "zeromf.dat"];
    let paths: Vec<String> = files
        .iter()
        .map(|f| corpus(f).display().to_string())
        .collect();
    let args: Vec<&str> = std::iter::once("validate")
        .chain(paths.iter().map(String::as_str))
        .collect();
    let (code, stdout, _) = sipward(&args);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(lines[0].ends_with("wsinv.dat: accept"), "{stdout}");
    assert!(
        lines[1].ends_with("badvers.dat: reject 505 unsupported SIP version in start line"),
        "{stdout}"
    );
    assert!(
        lines[2].ends_with("bigcode.dat: drop bad status code in start line"),
        "{stdout}"
    );
    assert!(
        lines[3].ends_with("zeromf.dat: reject 483 Max-Forwards exhausted in Max-Forwards"),
        "{stdout}"
    );
}

#[test]
fn configured_limits_apply() {
    let dir = std::env::temp_dir().join(format!("sipward-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("small.toml");
    std::fs::write(&cfg, "[limits]\nmax_message_len = 500\n").unwrap();
    let (code, stdout, _) = sipward(&[
        "validate",
        "--config",
        cfg.to_str().unwrap(),
        corpus("wsinv.dat").to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout
            .trim_end()
            .ends_with("wsinv.dat: reject 513 message too large"),
        "{stdout}"
    );
}

#[test]
fn bad_config_names_file_and_line() {
    let dir = std::env::temp_dir().join(format!("sipward-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "[limits]\nmax_param_len = 1024\nmax_pram_len = 5\n").unwrap();
    let (code, stdout, stderr) = sipward(&[
        "validate",
        "--config",
        cfg.to_str().unwrap(),
        corpus("wsinv.dat").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(&format!("{}:3: ", cfg.display())),
        "{stderr}"
    );
    assert!(stderr.contains("max_pram_len"), "{stderr}");
}

#[test]
fn unreadable_file_fails_clearly() {
    let (code, _, stderr) = sipward(&["validate", "/nonexistent/x.sip"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("/nonexistent/x.sip: cannot read"),
        "{stderr}"
    );
}
