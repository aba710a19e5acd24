#!/usr/bin/env bash
# Runs the wire-layer benchmark (sipward vs rsipstack and rsip, same bytes, same run)
# and writes the ratios to bench/results/wire-DATE.md.
# Usage: bench/wire/report.sh [extra criterion args, e.g. --measurement-time 10]
set -euo pipefail
cd "$(dirname "$0")"
cargo bench --bench wire -- "$@"
cargo bench --bench drop -- "$@"
# The same ratios measured interleaved (robust to the machine's drift); see benches/ratio.rs.
cargo bench --bench ratio > target/ratio.md
mkdir -p ../results
out="../results/wire-$(date +%F).md"
python3 - "$out" <<'PY'
import json, sys, os, platform, datetime
root = "target/criterion"
def mean(group, who, msg):
    with open(os.path.join(root, group, who, msg, "new", "estimates.json")) as f:
        return json.load(f)["mean"]["point_estimate"]
rows = []
checks = [
    ("parse_validate", "rsipstack", 0.25, "parse + full validation vs rsipstack parse + typed headers"),
    ("rewrite", "rsip", 1 / 3, "parse + rewrite Via/Contact/SDP + serialize vs rsip parse + replace + serialize"),
]
lines = [f"# Wire layer benchmark, {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC",
         "", f"Machine: {platform.machine()}, {os.cpu_count()} cores. Means of criterion samples; "
         "ratio = sipward time / peer time (lower is better).", ""]
for group, peer, target, what in checks:
    lines += [f"## {group}: {what} (target ratio <= {target:.2f})", "",
              "| message | sipward | " + peer + " | ratio | target met |", "|---|---|---|---|---|"]
    for msg in ["invite_sdp", "register_auth", "ok_sdp"]:
        ours, theirs = mean(group, "sipward", msg), mean(group, peer, msg)
        ratio = ours / theirs
        lines.append(f"| {msg} | {ours/1000:.2f} µs | {theirs/1000:.2f} µs | {ratio:.2f} | {'yes' if ratio <= target else 'NO'} |")
    lines.append("")
def drop_ns(name):
    with open(os.path.join(root, "drop", name, "new", "estimates.json")) as f:
        return json.load(f)["mean"]["point_estimate"]
lines += ["## drop: the core's cost of discarding a flood datagram (no socket read)", "",
          "| datagram | ns each |", "|---|---|",
          f"| from a blacklisted source (before parsing) | {drop_ns('banned_source'):.0f} |",
          f"| from an outside host no rule admits (parsed, then dropped) | {drop_ns('no_rule_after_parse'):.0f} |", ""]
with open("target/ratio.md") as f:
    lines += ["## The same ratios, interleaved (benches/ratio.rs: each round times sipward, the peer, the peer,",
              "sipward in short batches; median of the rounds' ratios, with quartiles)", "", f.read().strip(), ""]
text = "\n".join(lines)
print(text)
# A run earlier the same day is kept below the new one.
earlier = ""
if os.path.exists(sys.argv[1]):
    with open(sys.argv[1]) as f:
        earlier = f.read().replace("\n# Wire layer benchmark", "\n## Earlier run: Wire layer benchmark")
        earlier = earlier.replace("# Wire layer benchmark", "## Earlier run: Wire layer benchmark", 1)
with open(sys.argv[1], "w") as f:
    f.write(text + "\n" + ("\n" + earlier if earlier else ""))
PY
