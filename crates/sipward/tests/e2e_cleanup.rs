//! The harness stops everything a test starts: a process and whatever it forked, on
//! every path, even a daemon that ignores SIGTERM (issue 17, defect 17: a Kamailio of an
//! e2e test outlived the suite, orphaned).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Guard, Terminated, Topology};

/// The live processes of process group `pgid` (zombies excluded: they are dead).
fn group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(2) == Some(&pgid.to_string().as_str()) && fields.first() != Some(&"Z") {
            members.push(pid);
        }
    }
    members
}

/// Waits up to `limit` for `pred` to hold.
fn eventually(limit: Duration, pred: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if pred() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pred()
}

#[test]
fn a_guarded_process_and_its_children_end_with_the_guard() {
    let guard =
        Guard::spawn(Command::new("sh").args(["-c", "sleep 600 & sleep 600 & wait"])).unwrap();
    let pgid = guard.id();
    assert!(
        eventually(Duration::from_secs(5), || group_members(pgid).len() == 3),
        "shell and two sleeps expected: {:?}",
        group_members(pgid)
    );
    drop(guard);
    assert!(
        eventually(Duration::from_secs(2), || group_members(pgid).is_empty()),
        "left behind: {:?}",
        group_members(pgid)
    );
}

#[test]
fn a_daemon_ignoring_sigterm_is_killed_with_what_it_forked() {
    // The disposition is inherited: the forked sleep ignores SIGTERM as well.
    let daemon = Terminated::spawn(
        Command::new("sh").args(["-c", "trap '' TERM; sleep 600 & while :; do sleep 1; done"]),
    )
    .unwrap();
    let pgid = daemon.id();
    assert!(eventually(Duration::from_secs(5), || group_members(pgid)
        .len()
        >= 2));
    let started = Instant::now();
    drop(daemon);
    // SIGKILL is delivered asynchronously: the group is gone a moment after the drop.
    assert!(
        eventually(Duration::from_secs(2), || group_members(pgid).is_empty()),
        "left behind: {:?}",
        group_members(pgid)
    );
    // SIGTERM first, SIGKILL after its bound: the drop is bounded too.
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn kamailio_and_its_workers_end_with_the_test() {
    let t = Topology::new(90);
    let kamailio = t.start_kamailio();
    let pgid = kamailio.id();
    // -M 8 and the UDP listener: the main process forks workers and helpers.
    assert!(
        group_members(pgid).len() > 1,
        "kamailio forked nothing: {:?}",
        group_members(pgid)
    );
    drop(kamailio);
    assert!(
        eventually(Duration::from_secs(2), || group_members(pgid).is_empty()),
        "kamailio processes left behind: {:?}",
        group_members(pgid)
    );
}
