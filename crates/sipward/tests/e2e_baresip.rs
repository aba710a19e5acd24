//! A real softphone call through `sipward run`: baresip inside calls baresip outside
//! (standing where the proxy is), sending a 3-second 440 Hz recording; the far end's
//! recording of what it decoded must be as long as in a direct call between the same
//! two baresips, and still a 440 Hz tone.
//!
//! baresip binds its media socket to the wildcard address, so on loopback its RTP
//! comes from 127.0.0.1 whatever its SDP says: the gateway runs with
//! `media_latching = "any"`, which answers each party where it actually sends from.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Topology;

/// Writes a baresip configuration directory for a UA on `ip:port` playing `source`.
fn baresip_dir(
    root: &Path,
    name: &str,
    ip: &str,
    port: u16,
    source: &Path,
    account: &str,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "poll_method epoll\nsip_listen {ip}:{port}\nsip_trans_def udp\n\
         audio_player aubridge,nil\naudio_alert aubridge,nil\naudio_source aufile,{}\n\
         module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\n\
         module aubridge.so\nmodule sndfile.so\nmodule account.so\nmodule menu.so\n\
         snd_path {}\n",
        source.display(),
        dir.display()
    );
    std::fs::write(dir.join("config"), config).unwrap();
    std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
    dir
}

fn sox(args: &[&str]) -> String {
    let out = Command::new("sox")
        .args(args)
        .output()
        .expect("sox is installed (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "sox {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The decoded-audio recording baresip's sndfile module wrote in `dir`.
fn decoded(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("no decoded recording in {}", dir.display()))
}

fn seconds(wav: &Path) -> f64 {
    let out = Command::new("soxi").arg("-D").arg(wav).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn rough_frequency(wav: &Path) -> f64 {
    let stat = sox(&[wav.to_str().unwrap(), "-n", "stat"]);
    stat.lines()
        .find(|l| l.starts_with("Rough   frequency:"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .parse()
        .unwrap()
}

/// One call from `caller` to `target`; returns the callee's decoded recording.
fn call(t: &Topology, run: &str, target: &str) -> PathBuf {
    let root = t.dir.join(run);
    let tone = t.dir.join("tone.wav");
    let filler = t.dir.join("filler.wav");
    let far_ip = t.proxy();
    let phone_ip = t.phone(0);
    let callee = baresip_dir(
        &root,
        "callee",
        &far_ip,
        5060,
        &filler,
        &format!("<sip:bob@{far_ip}>;regint=0;answermode=auto"),
    );
    let caller = baresip_dir(
        &root,
        "caller",
        &phone_ip,
        5070,
        &tone,
        &format!("<sip:alice@{phone_ip}:5070>;regint=0"),
    );
    let mut far = common::Guard::spawn(
        Command::new("baresip")
            .arg("-f")
            .arg(&callee)
            .args(["-n", &far_ip, "-t", "9"])
            .current_dir(&callee)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("baresip is installed (scripts/install-deps.sh installs it)");
    std::thread::sleep(Duration::from_millis(1000));
    // baresip quits by itself after -t seconds; the bound only stops a hung one.
    let status = common::output_within(
        Command::new("baresip")
            .arg("-f")
            .arg(&caller)
            .args([
                "-n",
                &phone_ip,
                "-e",
                &format!("/dial sip:bob@{target}"),
                "-t",
                "6",
            ])
            .current_dir(&caller),
        Duration::from_secs(30),
    )
    .unwrap()
    .status;
    assert!(status.success(), "caller baresip: {status:?}");
    far.wait_ended();
    decoded(&callee)
}

#[test]
fn baresip_call_through_the_gateway_carries_all_the_audio() {
    let t = Topology::new(54);
    let tone = t.dir.join("tone.wav");
    let filler = t.dir.join("filler.wav");
    sox(&[
        "-n",
        "-r",
        "8000",
        "-c",
        "1",
        "-b",
        "16",
        tone.to_str().unwrap(),
        "synth",
        "3",
        "sine",
        "440",
    ]);
    sox(&[
        "-n",
        "-r",
        "8000",
        "-c",
        "1",
        "-b",
        "16",
        filler.to_str().unwrap(),
        "synth",
        "10",
        "sine",
        "300",
    ]);

    // Baseline: the same two baresips calling each other directly.
    let direct = call(&t, "direct", &format!("{}:5060", t.proxy()));

    let gw = t.start_gateway_with("media_latching = \"any\"");
    let relayed = call(&t, "relayed", &t.gw_lan_sip());
    drop(gw);

    let (sent, direct_len, relayed_len) = (seconds(&tone), seconds(&direct), seconds(&relayed));
    // The direct call is the baseline for what baresip itself loses. On a loaded machine
    // its own recording has run long (3.94 s of 3 s sent, in a CI run beside builds):
    // such a baseline says nothing about the relay, and the check against what was sent
    // (below) is the one that holds.
    if (direct_len - sent).abs() <= 0.2 {
        assert!(
            (relayed_len - direct_len).abs() <= 0.041,
            "through the gateway the far end decoded {relayed_len} s, directly {direct_len} s (sent {sent} s)"
        );
    }
    assert!(
        (relayed_len - sent).abs() <= 0.2,
        "the far end decoded {relayed_len} s of the {sent} s sent"
    );
    let f = rough_frequency(&relayed);
    assert!(
        (420.0..=460.0).contains(&f),
        "the far end heard {f} Hz, not the 440 Hz tone"
    );
}
