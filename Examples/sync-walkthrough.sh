#!/usr/bin/env bash
# A hub and two edges fed by `nova simulate`; one edge's link to the hub is cut for a while, then
# restored. Shows lag, catch-up and a clean `nova verify`. Runs on loopback in a temporary
# directory; needs python3 (a 20-line TCP relay stands in for the edge's network link).
#
#   Examples/sync-walkthrough.sh            # uses .build/debug/nova, building it if missing
#   NOVA_BIN=/path/to/nova Examples/sync-walkthrough.sh
#   FEED_SECONDS=10 CUT_SECONDS=4 Examples/sync-walkthrough.sh   # shorter (the test suite runs it so)
#
# The hub runs on SQLite here so that the walkthrough needs no database server; in production it
# runs on PostgreSQL/TimescaleDB (Examples/hub.json) with the same API and the same sync routes.
set -euo pipefail
cd "$(dirname "$0")/.."
NOVA=${NOVA_BIN:-$PWD/.build/debug/nova}
[ -x "$NOVA" ] || swift build --product nova
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nova-walkthrough.XXXXXX")
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; echo "(logs and stores kept in $WORK)"; }
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

FEED=${FEED_SECONDS:-30}; CUT=${CUT_SECONDS:-12}; HALF=$(( (CUT + 1) / 2 ))
HUB_PORT=$(port); RELAY_PORT=$(port); A_PORT=$(port); B_PORT=$(port)
TOKEN_A=walkthrough-site-a-$RANDOM$RANDOM; TOKEN_B=walkthrough-site-b-$RANDOM$RANDOM; READ=walkthrough-read-$RANDOM$RANDOM
export NOVA_TOKEN=$READ

cat > "$WORK/hub.json" <<JSON
{"core": {"siteId": "hub"}, "database": {"type": "sqlite", "sqlite": {"path": "$WORK/hub.db"}},
 "server": {"port": $HUB_PORT, "tokens": [
   {"sha256": "$(sha "$TOKEN_A")", "roles": ["sync"], "siteId": "site-a"},
   {"sha256": "$(sha "$TOKEN_B")", "roles": ["sync"], "siteId": "site-b"},
   {"sha256": "$(sha "$READ")", "roles": ["read"]}]}}
JSON
edge() { # name port upstream
  cat > "$WORK/$1.json" <<JSON
{"core": {"siteId": "$1"}, "database": {"sqlite": {"path": "$WORK/$1.db"}}, "server": {"port": $2},
 "sync": {"enabled": true, "upstream": "$3", "batchSize": 2000, "maxBackoffSeconds": 2}}
JSON
}
edge site-a "$A_PORT" "http://127.0.0.1:$HUB_PORT"
edge site-b "$B_PORT" "http://127.0.0.1:$RELAY_PORT"   # site-b reaches the hub through the relay

relay() { # the "network link" of site-b: forwards RELAY_PORT to the hub until killed
  python3 - "$RELAY_PORT" "$HUB_PORT" <<'PY' &
import asyncio, sys
listen, target = int(sys.argv[1]), int(sys.argv[2])
async def pipe(r, w):
    try:
        while data := await r.read(65536): w.write(data); await w.drain()
    finally: w.close()
async def handle(r, w):
    try: tr, tw = await asyncio.open_connection("127.0.0.1", target)
    except OSError: w.close(); return
    await asyncio.gather(pipe(r, tw), pipe(tr, w), return_exceptions=True)
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen, reuse_address=True)
    async with server: await server.serve_forever()
asyncio.run(main())
PY
  RELAY_PID=$!; PIDS+=("$RELAY_PID")
}
wait_listening() { until grep -q "listening on" "$1" 2>/dev/null; do sleep 0.1; done; }
status() { curl -s "http://127.0.0.1:$1/v1/sync/status"; echo; }
sites() { curl -s -H "Authorization: Bearer $READ" "http://127.0.0.1:$HUB_PORT/v1/sync/sites"; echo; }

say "start the hub (port $HUB_PORT) and two edges (site-a :$A_PORT, site-b :$B_PORT via a relay :$RELAY_PORT)"
"$NOVA" serve --config "$WORK/hub.json" --log-level warning > "$WORK/hub.out" 2> "$WORK/hub.err" & PIDS+=($!)
wait_listening "$WORK/hub.out"
relay
NOVA_SYNC_TOKEN=$TOKEN_A "$NOVA" record --config "$WORK/site-a.json" --log-level warning > "$WORK/a.out" 2> "$WORK/a.err" & PIDS+=($!)
NOVA_SYNC_TOKEN=$TOKEN_B "$NOVA" record --config "$WORK/site-b.json" --log-level warning > "$WORK/b.out" 2> "$WORK/b.err" & PIDS+=($!)
wait_listening "$WORK/a.out"; wait_listening "$WORK/b.out"

say "feed both edges: 100 devices at 10 Hz each, for $FEED s"
"$NOVA" simulate --devices 100 --rate 10 --duration "$FEED" --scope site-a --target "http://127.0.0.1:$A_PORT" > "$WORK/sim-a.out" 2>&1 & SIM_A=$!
"$NOVA" simulate --devices 100 --rate 10 --duration "$FEED" --scope site-b --target "http://127.0.0.1:$B_PORT" > "$WORK/sim-b.out" 2>&1 & SIM_B=$!
PIDS+=("$SIM_A" "$SIM_B")
sleep 3
say "both sites in step: the hub's view"
sites

say "cut site-b's link for $CUT s (the relay stops); site-b keeps recording"
kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true
sleep "$HALF"
say "site-b during the cut: pending events grow, the hub is unreachable"
status "$B_PORT"
sleep "$HALF"
say "the hub during the cut: site-b's lagSeconds has grown"
sites

say "restore the link: the backlog drains"
relay
pending() { status "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pendingEvents"])'; }
for _ in $(seq 1 100); do
  p=$(pending "$B_PORT"); printf '  site-b pending: %s\n' "$p"
  [ "$p" -lt 2000 ] && break
  sleep 0.5
done
wait "$SIM_A" "$SIM_B" || true
cat "$WORK/sim-a.out" "$WORK/sim-b.out" | grep -E "^(sent|recorder)"
# The feed has stopped: both outboxes empty out (within a minute even on a loaded machine).
for _ in $(seq 1 240); do
  [ "$(pending "$A_PORT")" = 0 ] && [ "$(pending "$B_PORT")" = 0 ] && break
  sleep 0.25
done
say "after catch-up"
status "$B_PORT"
sites

say "prove it: nova verify, each edge against the hub (exit 0 = equal)"
"$NOVA" verify "sqlite:$WORK/site-a.db" "http://127.0.0.1:$HUB_PORT" --scope site-a
"$NOVA" verify "sqlite:$WORK/site-b.db" "http://127.0.0.1:$HUB_PORT" --scope site-b
say "done"
