#!/bin/bash
# Direct link between the daemon and genossrv (werift), no browser in the room (issue 16).
# Both offer directions: ORDER=daemon-first (the daemon hears genossrv's first announce and
# offers) and ORDER=gs-first (genossrv is in the room first, hears ours and offers; a second,
# relay-only daemon carries the signalling). A node imported into the daemon must reach
# genossrv, and a node genossrv writes must reach the daemon, over that one link.
#
# Copy next to the shared harness's run.sh, then (loopback only):
#   BIN=/path/to/genosdb-fallback unshare -n ./genossrv-link.sh
# Prints `PASS <order> offered_by=<us|peer>` or `FAIL <order>` per order; exits 1 on a FAIL.
set -u
HR=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:?set BIN to the genosdb-fallback binary}
BUN=${BUN:-$HR/node_modules/.bin/bun}
ip link set lo up 2>/dev/null
PROBE=$HR/superpeers/genossrv-link-probe.mjs
# The harness's genossrv wrapper, plus: write one node, report when the daemon's node arrives.
sed "s|^console.info('\[harness\] superpeer ready')|&\n\
setTimeout(async () => { await db.put({ from: 'genossrv', at: Date.now() }, 'from-genossrv'); console.info('[probe] genossrv wrote from-genossrv') }, Number(process.env.PROBE_PUT_MS \|\| 8000))\n\
let seen = false\n\
setInterval(async () => { const r = (await db.get('from-daemon'))?.result; if (r \&\& !seen) { seen = true; console.info('[probe] genossrv has from-daemon:', JSON.stringify(r)) } }, 500)|" \
  "$HR/superpeers/genossrv-loopback.mjs" > "$PROBE"
grep -q "genossrv has from-daemon" "$PROBE" || { echo "could not build the probe from genossrv-loopback.mjs" >&2; exit 2; }

failed=0
run() {
  local order=$1 port=$2 D dpid gpid rpid= url
  D=$(mktemp -d /tmp/genossrv-link.XXXXXX)
  echo "{\"id\":\"from-daemon\",\"value\":{\"from\":\"daemon\"},\"edges\":[],\"timestamp\":{\"physical\":$(date +%s%3N),\"logical\":0}}" > "$D/in.jsonl"
  DATA_DIR=$D/data DB_NAME=glink "$BIN" import "$D/in.jsonl" > /dev/null 2>&1
  local log="info,genosdb_fallback::rtc=debug"
  if [ "$order" = gs-first ]; then
    url=ws://127.0.0.1:$((port + 1))
    PORT=$((port + 1)) RELAY=1 RTC_ENABLED=0 ICE_SERVERS= DATA_DIR=$D/relay DB_NAME=relayonly "$BIN" > "$D/relay.log" 2>&1 &
    rpid=$!
    sleep 1
    PROBE_PUT_MS=14000 DB_NAME=glink RELAY_URLS=$url DATA_DIR=$D/gs "$BUN" "$PROBE" > "$D/gs.log" 2>&1 &
    gpid=$!
    sleep 5
    PORT=$port RELAY_URLS=$url ICE_SERVERS= DATA_DIR=$D/data DB_NAME=glink RUST_LOG=$log "$BIN" > "$D/daemon.log" 2>&1 &
    dpid=$!
  else
    PORT=$port RELAY=1 ICE_SERVERS= DATA_DIR=$D/data DB_NAME=glink RUST_LOG=$log "$BIN" > "$D/daemon.log" 2>&1 &
    dpid=$!
    sleep 1.5
    DB_NAME=glink RELAY_URLS=ws://127.0.0.1:$port DATA_DIR=$D/gs "$BUN" "$PROBE" > "$D/gs.log" 2>&1 &
    gpid=$!
  fi
  local ok=0
  for _ in $(seq 1 60); do
    sleep 1
    if grep -q "genossrv has from-daemon" "$D/gs.log" &&
      DATA_DIR=$D/data DB_NAME=glink "$BIN" export 2>/dev/null | grep -q '"from-genossrv"'; then
      ok=1
      break
    fi
  done
  kill $gpid $dpid $rpid 2>/dev/null
  wait 2>/dev/null
  echo "== $order: daemon log ($D/daemon.log)"
  grep -E "joined the sync room|dialing|offer received|answer received|sending our description|data channel open|peer joined" "$D/daemon.log" | cut -c1-220
  grep -h "\[probe\]" "$D/gs.log"
  if [ $ok = 1 ]; then
    echo "PASS $order $(grep -o 'offered_by="[a-z]*"' "$D/daemon.log" | head -1)"
  else
    echo "FAIL $order"
    failed=1
  fi
}
run daemon-first 18090
run gs-first 18100
rm -f "$PROBE"
exit $failed
