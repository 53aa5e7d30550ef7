#!/usr/bin/env bash
# Regenerates docs/board.png, the README's picture of the call board: a daemon on loopback
# ports (its own temporary folder), a few TeleCMI and JAS calls posted to it, and a headless
# chromium screenshot of the admin page. Needs chromium (apt-get install chromium) and a built
# `target/debug/callhook` (cargo build). Talks to 127.0.0.1 only; stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v chromium >/dev/null || { echo "chromium is needed: apt-get install chromium" >&2; exit 2; }
bin=target/debug/callhook
[ -x "$bin" ] || { echo "build first: cargo build" >&2; exit 2; }
work=$(mktemp -d)
trap 'kill "$daemon" 2>/dev/null || true; rm -rf "$work"' EXIT
export CALLHOOK__SERVER__LISTEN=127.0.0.1:19989 CALLHOOK__ADMIN__LISTEN=127.0.0.1:19988 \
    CALLHOOK__JAS__WEBHOOK_SECRET=screenshot CALLHOOK__JAS__REGISTER=false \
    CALLHOOK__JAS__LOOKUP_PARTICIPANTS=false CALLHOOK__TELECMI__PATH_TOKEN=screenshot \
    CALLHOOK__STORAGE__PATH="$work/data/callhook.db" CALLHOOK__RECORDINGS__DIR="$work/recordings" \
    CALLHOOK__CALLS__END_GRACE_MS=100
: > "$work/empty.toml"
"$bin" serve --config "$work/empty.toml" > "$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 50); do curl -fs http://127.0.0.1:19988/readyz >/dev/null && break; sleep 0.1; done
now=$(date +%s%3N)
leg() { # conversation leg cmiuuid status direction seconds-ago from to
  curl -fs -o /dev/null http://127.0.0.1:19989/webhooks/telecmi/screenshot \
    -H 'content-type: application/json' \
    -d "{\"type\":\"event\",\"conversation_uuid\":\"$1\",\"leg\":\"$2\",\"cmiuuid\":\"$3\",\"status\":\"$4\",\"direction\":\"$5\",\"time\":$((now - $6 * 1000)),\"from\":$7,\"to\":$8,\"user\":\"101_1111112\"}"
}
leg conv-a1 a conv-a1 started inbound 95 919900001111 914440001234
leg conv-a1 a conv-a1 answered inbound 90 919900001111 914440001234
leg conv-b2 a conv-b2 started outbound 40 914440001234 917700002222
leg conv-b2 b leg-b2 started outbound 38 914440001234 917700002222
leg conv-b2 b leg-b2 answered outbound 30 914440001234 917700002222
leg conv-c3 a conv-c3 started inbound 300 918800003333 914440001234
leg conv-c3 a conv-c3 hangup inbound 240 918800003333 914440001234
ts=$(date -u +%FT%T.000Z)
body="{\"eventName\":\"call_status\",\"timestamp\":\"$ts\",\"data\":{\"event\":{\"entity\":\"/callcontrol/101/participants/7\",\"event_type\":0},\"sequence\":1}}"
printf '%s' "$body" > "$work/jas.json"
"$bin" send --url http://127.0.0.1:19989/webhooks/jas --config "$work/empty.toml" "$work/jas.json" >/dev/null
sleep 1
# The stream stays open, so the page never finishes loading: take the picture after 4 s.
chromium --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
  --timeout=4000 --window-size=1200,760 --screenshot="$PWD/docs/board.png" \
  http://127.0.0.1:19988/ > "$work/chromium.log" 2>&1
echo "wrote docs/board.png"
