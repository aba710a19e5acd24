//! `sipward nft-rules`: the ruleset of a configuration with a host, a network and `any`
//! as destinations and two-port services, compared with the golden file, and loaded by
//! nft in a private network namespace (twice: the script replaces its own table).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::process::Command;

fn golden(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file)
}

fn nft_rules(config: &PathBuf) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sipward"))
        .args(["nft-rules", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn the_ruleset_matches_the_golden_file() {
    let out = nft_rules(&golden("transparent.toml"));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = std::fs::read_to_string(golden("transparent.nft")).unwrap();
    assert_eq!(text, expected);
}

#[test]
fn the_script_loads_twice_and_the_routing_follows_the_marker() {
    let text = String::from_utf8(nft_rules(&golden("transparent.toml")).stdout).unwrap();
    let (script, routing) = text.split_once("\n# routing:\n").unwrap();
    let routing: Vec<&str> = routing.lines().collect();
    assert_eq!(
        routing,
        [
            "ip rule add fwmark 0x1234 lookup 42",
            "ip route add local 0.0.0.0/0 dev lo table 42",
            "ip -6 rule add fwmark 0x1234 lookup 42",
            "ip -6 route add local ::/0 dev lo table 42",
        ]
    );
    let dir = std::env::temp_dir().join(format!("sipward-nft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.nft");
    std::fs::write(&file, script).unwrap();
    // Loaded twice and the routing applied, in a namespace of its own.
    let shell = format!(
        "ip link set lo up && nft -f {f} && nft -f {f} && {routing} && nft list table inet sipward && ip rule && ip -6 rule",
        f = file.display(),
        routing = routing.join(" && ")
    );
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", &shell])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listed} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(listed.matches("tproxy ip to :15070").count(), 1, "{listed}");
    assert_eq!(
        listed.matches("tproxy ip6 to :15070").count(),
        1,
        "{listed}"
    );
    assert_eq!(
        listed.matches("fwmark 0x1234 lookup 42").count(),
        2,
        "{listed}"
    );
    // The pitfall measured in the reference: no `socket transparent` rule.
    assert!(!text.contains("socket transparent"));
}

#[test]
fn a_configuration_without_interception_has_no_ruleset() {
    let out =
        nft_rules(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/loopback.toml"));
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no interface has `intercept = true`"), "{e}");
}
