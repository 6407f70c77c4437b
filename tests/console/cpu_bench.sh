#!/bin/bash
# CPU of the daemon with N idle peers, with no console page open vs 5 pages open.
set -u
OUT=${OUT:-$(mktemp -d)}
echo "logs in $OUT"
BIN=${BIN:-target/debug}
PEERS=${PEERS:-300}
DATA_DIR=${DATA:-$(mktemp -d)} RELAY=1 ICE_SERVERS= HOST=127.0.0.1 PORT=0 FORWARD_OPS=1 \
  RELAY_MAX_PER_IP=5000 MAX_PEERS=1100 DB_NAME=loadgen RUST_LOG=info \
  $BIN/genosdb-fallback > $OUT/daemon.log 2>&1 &
DPID=$!
sleep 3
PORT=$(grep -o 'addr=127.0.0.1:[0-9]*' $OUT/daemon.log | head -1 | cut -d: -f2)
SPID=$(grep -o 'joined the sync room.*' $OUT/daemon.log | head -1 | grep -o 'peer_id=[A-Za-z0-9]*' | cut -d= -f2)
echo "daemon pid $DPID port $PORT superpeer $SPID"
$BIN/loadgen resources --port $PORT --pid $DPID --superpeer-id "$SPID" --db loadgen --peers $PEERS --procs 2 --idle-secs 260 --secs 5 > $OUT/loadgen.log 2>&1 &
LPID=$!
until curl -s 127.0.0.1:$PORT/health | grep -q "\"peers\":$PEERS"; do sleep 1; done
echo "linked $PEERS"
sleep 10
cpu() { awk '{print $14+$15}' /proc/$DPID/stat; }
T=$(getconf CLK_TCK)
a=$(cpu); sleep 60; b=$(cpu)
echo "no page: $(echo "scale=2; ($b-$a)*100/$T/60" | bc) % of a core"
PLAYWRIGHT_DIR=${PLAYWRIGHT_DIR:-$HOME/.cache/genosdb-fallback/playwright-core-1.65.1} node tests/console/open_pages.mjs http://127.0.0.1:$PORT/ 5 100 > $OUT/pages.log 2>&1 &
NPID=$!
until grep -q open $OUT/pages.log; do sleep 1; done
sleep 10
a=$(cpu); sleep 60; b=$(cpu)
echo "5 pages: $(echo "scale=2; ($b-$a)*100/$T/60" | bc) % of a core"
wait $NPID
sleep 5
a=$(cpu); sleep 40; b=$(cpu)
echo "no page again: $(echo "scale=2; ($b-$a)*100/$T/60*60/40" | bc) % of a core"
kill $LPID 2>/dev/null; wait $LPID 2>/dev/null
kill $DPID; wait $DPID
