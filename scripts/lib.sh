# Shell helpers shared by the scripts that run a server for tests and examples. Source it.

# stop_pid PIDFILE NAME: stops the process whose PID is in PIDFILE (resuming it first, in case a
# test froze it with SIGSTOP), waits up to 5 s for it to end, then kills it.
stop_pid() {
  local pidfile=$1 name=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill -CONT "$pid" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "$name stopped"
}
