//! The wire benchmark's ratios measured interleaved, for a machine whose speed drifts.
//!
//! Criterion times one function for seconds, then the next: when the machine slows down
//! between the two (other guests on the host, frequency changes), the ratio moves with it
//! (three runs of `wire` within minutes gave 0.19 to 0.33 for the same build). Here each
//! round times a short batch of sipward, then of the peer, then the peer again and
//! sipward again (so a drift within the round cancels), and the ratio of the two sums is
//! that round's. The median of the rounds is reported, with its quartiles.
//!
//! Usage: `cargo bench --bench ratio [-- ROUNDS]` (default 201). Prints a Markdown table.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use sipward_proto::Limits;

mod common;
use common::*;

/// Iterations of each side per half-round: a few milliseconds.
const BATCH: u32 = 400;

fn time(batch: u32, mut f: impl FnMut() -> usize) -> Duration {
    let started = Instant::now();
    for _ in 0..batch {
        black_box(f());
    }
    started.elapsed()
}

/// Median and quartiles of sipward's time over the peer's, one ratio per round.
fn ratios(
    rounds: usize,
    mut ours: impl FnMut() -> usize,
    mut theirs: impl FnMut() -> usize,
) -> (f64, f64, f64) {
    // Warm both up (caches, branch predictors, allocator).
    time(BATCH, &mut ours);
    time(BATCH, &mut theirs);
    let mut all: Vec<f64> = (0..rounds)
        .map(|_| {
            let a1 = time(BATCH, &mut ours);
            let b1 = time(BATCH, &mut theirs);
            let b2 = time(BATCH, &mut theirs);
            let a2 = time(BATCH, &mut ours);
            (a1 + a2).as_secs_f64() / (b1 + b2).as_secs_f64()
        })
        .collect();
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

fn main() {
    // `cargo bench` passes `--bench`; a number among the arguments is the round count.
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(201usize);
    let limits = Limits::default();
    println!("| comparison | message | median ratio | quartiles | target |");
    println!("|---|---|---|---|---|");
    for (name, bytes) in MESSAGES {
        let (median, q1, q3) = ratios(
            rounds,
            || sipward_parse(black_box(bytes), &limits),
            || rsipstack_parse_typed(black_box(bytes)),
        );
        println!(
            "| parse + validate / rsipstack | {name} | {median:.3} | {q1:.3}-{q3:.3} | <= 0.25 {} |",
            if median <= 0.25 { "yes" } else { "NO" }
        );
    }
    let mut out = Vec::with_capacity(2048);
    for (name, bytes) in MESSAGES {
        let (median, q1, q3) = ratios(
            rounds,
            || {
                sipward_rewrite(black_box(bytes), &limits, &mut out);
                out.len()
            },
            || rsip_rewrite(black_box(bytes)).len(),
        );
        println!(
            "| rewrite / rsip | {name} | {median:.3} | {q1:.3}-{q3:.3} | <= 0.33 {} |",
            if median <= 1.0 / 3.0 { "yes" } else { "NO" }
        );
    }
    println!("\n{rounds} rounds of {BATCH} x 4 iterations per comparison and message.");
}
