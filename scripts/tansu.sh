#!/usr/bin/env bash
# A real Kafka-compatible broker for tests: tansu, on loopback only.
#
#   scripts/tansu.sh build            build tansu once into .tools/ (cached; ~11 min on 2 cores)
#   scripts/tansu.sh start [TOPIC...] start it on 127.0.0.1:${TANSU_PORT:-19092}, create topics
#   scripts/tansu.sh stop             stop it by its PID
#   scripts/tansu.sh run CMD...       start, run CMD with TANSU_BROKER/TANSU_PID set, stop
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

VERSION=0.6.0
ROOT=${TANSU_ROOT:-$PWD/.tools/tansu-$VERSION}
BIN=$ROOT/bin/tansu
PORT=${TANSU_PORT:-19092}
URL=tcp://127.0.0.1:$PORT
STATE=${TANSU_STATE:-$PWD/target/tansu}
PIDFILE=$STATE/tansu.pid
LOG=$STATE/tansu.log

build() {
  if [ -x "$BIN" ]; then
    echo "tansu $VERSION: cached at $BIN"
    return
  fi
  echo "building tansu $VERSION into $ROOT (cached for later runs)"
  cargo install tansu --version "$VERSION" --features dynostore --locked --root "$ROOT"
}

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "tansu did not listen on $PORT; log:" >&2
  cat "$LOG" >&2 || true
  return 1
}

start() {
  build
  mkdir -p "$STATE"
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "tansu already running (pid $(cat "$PIDFILE"))"
  else
    "$BIN" broker \
      --listener-url "$URL" \
      --advertised-listener-url "$URL" \
      --storage-engine memory://tansu/ >"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    wait_port
    echo "tansu listening on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
  fi
  for topic in "$@"; do
    "$BIN" topic create "$topic" --partitions "${TANSU_PARTITIONS:-3}" --broker "$URL" >>"$LOG" 2>&1 ||
      echo "topic $topic: create failed or exists (see $LOG)"
  done
}

stop() { stop_pid "$PIDFILE" tansu; }

case "${1:-}" in
  build) build ;;
  start) shift; start "$@" ;;
  stop) stop ;;
  run)
    shift
    start tanker-real tanker-frozen tanker-killed
    trap stop EXIT
    TANSU_BROKER=127.0.0.1:$PORT TANSU_PID=$(cat "$PIDFILE") TANSU_BIN=$BIN TANSU_URL=$URL TANSU_LOG=$LOG "$@"
    ;;
  *) echo "usage: $0 build|start [TOPIC...]|stop|run CMD..." >&2; exit 2 ;;
esac
