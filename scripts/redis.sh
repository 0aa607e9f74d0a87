#!/usr/bin/env bash
# A Redis for the example (`cargo run --example redis`): redis-server on loopback only, no
# persistence, in the background, stopped by its PID. The tests start their own; they do not
# need this.
#
#   scripts/redis.sh start        start it on 127.0.0.1:${REDIS_PORT:-6379}
#   scripts/redis.sh stop         stop it
#   scripts/redis.sh run CMD...   start, run CMD (with REDIS_URL set, for its --url), stop
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

BIN=${REDIS_SERVER:-redis-server}
PORT=${REDIS_PORT:-6379}
STATE=${REDIS_STATE:-$PWD/target/redis}
PIDFILE=$STATE/redis-$PORT.pid
LOG=$STATE/redis-$PORT.log

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

start() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "redis-server already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
    return
  fi
  if ! command -v "$BIN" >/dev/null 2>&1; then
    echo "redis-server not found: install it (apt-get install redis-server) or set REDIS_SERVER" >&2
    return 1
  fi
  if listening; then
    echo "something else already listens on 127.0.0.1:$PORT (a system Redis?); pick another port:" >&2
    echo "  REDIS_PORT=6390 $0 start && cargo run --example redis -- --url redis://127.0.0.1:6390" >&2
    return 1
  fi
  mkdir -p "$STATE"
  "$BIN" --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no --daemonize no \
    --dir "$STATE" >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      echo "redis-server exited; log:" >&2
      cat "$LOG" >&2
      rm -f "$PIDFILE"
      return 1
    fi
    if listening; then
      echo "redis-server listening on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), log $LOG)"
      return
    fi
    sleep 0.1
  done
  echo "redis-server did not listen on $PORT; log:" >&2
  cat "$LOG" >&2
  return 1
}

stop() { stop_pid "$PIDFILE" redis-server; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  run)
    shift
    start
    trap stop EXIT
    REDIS_URL=redis://127.0.0.1:$PORT "$@"
    ;;
  *) echo "usage: $0 start|stop|run CMD..." >&2; exit 2 ;;
esac
