#!/usr/bin/env bash
# The crash test (tests/it/crash.rs) for more rounds: each round posts signed events from 4
# concurrent clients for ~2 s, SIGKILLs the daemon during a burst of redeliveries, restarts it
# on the same database and checks that every acknowledged event is a duplicate and the call
# table is unchanged; then as many rounds of call events flowing to two endpoints, killed
# mid-delivery, each event delivered to both after the restart, per call in order.
# Usage: bench/crash-loop.sh [ROUNDS]   (default 20; ~6 s a round, ~2 s a delivery round)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-20}"
CALLHOOK_CRASH_ROUNDS="$ROUNDS" cargo test --release --test it -- --nocapture crash:: \
    events_out::a_kill_mid_delivery 2>&1 | grep -E '^round |test result|panicked|FAILED'
