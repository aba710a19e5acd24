//! sipward's wire layer against rsipstack and rsip, on the same bytes in the same run.
//!
//! Two comparisons, as issue 2 asks:
//! - `parse_validate/*`: sipward's parse + full validation (every typed header, every
//!   limit, the SDP body) against rsipstack's parse followed by reading the typed headers
//!   a gateway needs (Via, From, To, CSeq, Contact, Authorization for REGISTER, Allow as
//!   methods, and the numbers in Max-Forwards, Content-Length and Expires, which
//!   rsipstack keeps as text). rsipstack has no SDP model; its side parses no body.
//! - `rewrite/*`: sipward's parse + rewrite of the top Via sent-by, the Contact host and
//!   the SDP addresses and port + serialize, against rsip's parse + the same replacements
//!   through its typed headers + serialize (rsip has no SDP model: its body edit is a
//!   plain string replacement, which favours rsip).
//!
//! `bench/wire/report.sh` runs this and writes the ratios to `bench/results/`, with the
//! same ratios measured interleaved by `ratio.rs` (steadier on a noisy machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sipward_proto::{parse_datagram, Datagram, Limits};

mod common;
use common::*;

fn parse_validate(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("parse_validate");
    for (name, bytes) in MESSAGES {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("sipward", name), bytes, |b, m| {
            b.iter(|| sipward_parse(black_box(m), &limits))
        });
        group.bench_with_input(BenchmarkId::new("rsipstack", name), bytes, |b, m| {
            b.iter(|| rsipstack_parse_typed(black_box(m)))
        });
    }
    group.finish();
}

fn rewrite(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("rewrite");
    for (name, bytes) in MESSAGES {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        let mut out = Vec::with_capacity(2048);
        group.bench_with_input(BenchmarkId::new("sipward", name), bytes, |b, m| {
            b.iter(|| {
                sipward_rewrite(black_box(m), &limits, &mut out);
                out.len()
            })
        });
        group.bench_with_input(BenchmarkId::new("rsip", name), bytes, |b, m| {
            b.iter(|| rsip_rewrite(black_box(m)).len())
        });
    }
    group.finish();
}

/// Checks, before timing, that both sides did the same job: each rewrite hides the
/// inside address and still parses.
fn sanity(_: &mut Criterion) {
    let limits = Limits::default();
    for (name, bytes) in MESSAGES {
        let mut ours = Vec::new();
        sipward_rewrite(bytes, &limits, &mut ours);
        let theirs = rsip_rewrite(bytes);
        for (who, out) in [("sipward", &ours), ("rsip", &theirs)] {
            let text = String::from_utf8_lossy(out);
            let hidden = !text.contains(INSIDE_IP);
            assert!(hidden, "{who} left {INSIDE_IP} in {name}:\n{text}");
            assert!(text.contains(PUBLIC_IP), "{who} did not rewrite {name}");
        }
        assert!(matches!(
            parse_datagram(&ours, &limits),
            Ok(Datagram::Message(_))
        ));
        assert!(rsipstack_parse_typed(bytes) > 0);
    }
}

criterion_group!(benches, sanity, parse_validate, rewrite);
criterion_main!(benches);
