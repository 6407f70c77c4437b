#!/bin/bash
# The daemon's CPU with PEERS idle loadgen peers, with the console closed vs open in
# PAGES headless Chromiums, alternated ROUNDS times in one run (tests/console/cpu_windows.mjs).
# Everything on 127.0.0.1: the daemon's embedded relay, no ICE server.
#
#   cargo build --release --bins --features loadgen
#   BIN=target/release PEERS=1000 tests/console/cpu_bench.sh
set -u
OUT=${OUT:-$(mktemp -d)}
BIN=${BIN:-target/release}
PEERS=${PEERS:-1000}
PAGES=${PAGES:-5}
ROUNDS=${ROUNDS:-4}
SECS=${SECS:-30}
PLAYWRIGHT_DIR=${PLAYWRIGHT_DIR:-$(.ci/provision playwright | tail -1)}
echo "logs in $OUT"
DATA_DIR=${DATA:-$(mktemp -d)} RELAY=1 RELAY_URLS= ICE_SERVERS= HOST=127.0.0.1 PORT=0 FORWARD_OPS=1 \
  RELAY_MAX_PER_IP=5000 MAX_PEERS=1100 DB_NAME=loadgen RUST_LOG=info \
  $BIN/genosdb-fallback > $OUT/daemon.log 2>&1 &
DPID=$!
until grep -qs 'joined the sync room' $OUT/daemon.log; do sleep 0.5; done
PORT=$(grep -o 'addr=127.0.0.1:[0-9]*' $OUT/daemon.log | head -1 | cut -d: -f2)
SPID=$(grep 'joined the sync room' $OUT/daemon.log | head -1 | grep -o 'peer_id=[A-Za-z0-9]*' | cut -d= -f2)
echo "daemon pid $DPID port $PORT superpeer $SPID"
# Idle long enough for every window, their settling and the browsers' start.
IDLE=$(( ROUNDS * 2 * (SECS + 10) + 120 ))
$BIN/loadgen resources --port $PORT --pid $DPID --superpeer-id "$SPID" --db loadgen \
  --peers $PEERS --procs 2 --idle-secs $IDLE --secs 5 > $OUT/loadgen.log 2>&1 &
LPID=$!
until curl -s 127.0.0.1:$PORT/health | grep -q "\"peers\":$PEERS[,}]"; do
  kill -0 $LPID 2>/dev/null || { echo "loadgen ended before $PEERS peers linked"; tail $OUT/loadgen.log; break; }
  sleep 1
done
echo "linked $(curl -s 127.0.0.1:$PORT/health | grep -o '"peers":[0-9]*')"
sleep 10
PLAYWRIGHT_DIR=$PLAYWRIGHT_DIR node tests/console/cpu_windows.mjs "http://127.0.0.1:$PORT/" $DPID \
  $PAGES $ROUNDS $SECS | tee $OUT/windows.log
echo "still linked at the end: $(curl -s 127.0.0.1:$PORT/health | grep -o '"peers":[0-9]*')"
kill $LPID 2>/dev/null; wait $LPID 2>/dev/null
kill $DPID; wait $DPID
