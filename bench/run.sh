#!/usr/bin/env bash
# Builds callhook and the benchmark driver in release mode and runs every measurement of
# BENCHMARKS.md in one go (about 4 minutes on 2 cores after the build, plus up to 6 for the
# call-event parts outbound, paced and deliveries, whose waits are capped), printing the table
# at the end.
# Needs wrk (apt-get install wrk). Everything talks to 127.0.0.1 only; scratch files go to
# target/bench. Extra arguments go to `callhook-bench all` (e.g. --only ceiling,plain).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 2; }
cargo build --release --locked --bin callhook --example callhook-bench
exec target/release/examples/callhook-bench all "$@"
