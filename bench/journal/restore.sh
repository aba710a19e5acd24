#!/bin/sh
# The restore time of a journal of 100,000 registration bindings: writes them as one
# snapshot into a fresh journal, then opens it as `sipward run` does (read, decode,
# rebuild the tables) and prints the restored line. A measurement, not a test:
#   sh bench/journal/restore.sh [--release]
set -eu
cd "$(dirname "$0")/../.."
exec cargo test --offline "$@" -p sipward --bin sipward \
    journal::tests::measure_restore_of_100k_bindings -- --ignored --nocapture
