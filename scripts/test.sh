#!/usr/bin/env bash
# The whole test suite: installs what it needs, then formatting, lints, unit, property,
# corpus and end-to-end tests, and a short fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

# Everything the suite starts inherits this marker, so that what outlives it can be found
# (scripts/leftovers.sh): a run fails if a test left a process behind, and on every way
# out the leftovers are killed, so that the next run starts clean.
export SIPWARD_TEST_RUN="$$-$(date +%s%N)"
trap 'env -u SIPWARD_TEST_RUN ./scripts/leftovers.sh --kill "$SIPWARD_TEST_RUN" $$ >/dev/null || true' EXIT

step "installing test dependencies"
./scripts/install-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, property, RFC 4475 corpus, end-to-end with SIPp)"
cargo test --workspace 2>&1 | tee target/test-output.log
grep -q "test result: ok" target/test-output.log

step "transparent mode on a router: the netns harness, every case (tests/transparent)"
./tests/transparent/harness.sh --alg sipward --no-record

step "fuzz smoke run (${FUZZ_SECONDS:-20} s per target)"
./fuzz/smoke.sh "${FUZZ_SECONDS:-20}"

step "no process left behind"
# Let processes killed in the last test's drops be reaped first.
sleep 1
env -u SIPWARD_TEST_RUN ./scripts/leftovers.sh "$SIPWARD_TEST_RUN" $$

step "all tests passed"
