# Shared helpers of the e2e scripts (sourced, not run).
# shellcheck shell=bash

LOG_PREFIX=${LOG_PREFIX:-e2e}
log() { printf '[%s] %s\n' "$LOG_PREFIX" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A free TCP port on 127.0.0.1 below the ephemeral range.
free_tcp_port() {
  python3 - <<'PY'
import random, socket
hi = 32000
try:
    hi = min(hi, int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0]) - 1)
except OSError:
    pass
while True:
    p = random.randint(20000, hi)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
PY
}

# wait_until SECONDS WHAT CMD...: runs CMD every second until it succeeds.
wait_until() {
  local limit=$1 what=$2 t=0
  shift 2
  until "$@" >/dev/null 2>&1; do
    t=$((t + 1))
    if [ "$t" -ge "$limit" ]; then
      log "timed out after ${limit}s waiting for $what"
      return 1
    fi
    sleep 1
  done
}

# True while PID runs (not a zombie).
pid_alive() {
  local state
  state=$(sed -e 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# stop_pidfile FILE: TERM the process (and its session), KILL after ~10 s, remove FILE.
stop_pidfile() {
  local file=$1 pid i
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  if [ -n "$pid" ] && pid_alive "$pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      pid_alive "$pid" || break
      sleep 0.1
    done
    pid_alive "$pid" && { kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; }
  fi
  rm -f "$file"
}

# start_watchdog OWNER_PID SCRIPT ARGS...: runs `SCRIPT ARGS...` once OWNER_PID has exited,
# so nothing outlives a caller that was killed. The watchdog pid goes to ${ARGS[-1]}/<name>.watchdog.pid.
start_watchdog() {
  local owner=$1 script=$2 dir=${*: -1} starttime
  shift 2
  [ -d "/proc/$owner" ] || die "--owner-pid $owner is not a running process"
  starttime=$(sed -e 's/.*) //' "/proc/$owner/stat" | cut -d' ' -f20)
  setsid "$script" __watchdog "$owner" "$starttime" "$script" "$@" </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/$(basename "$script" .sh).watchdog.pid"
}

# The watchdog's loop: waits for the owner (same pid and start time) to go, then runs the command.
watchdog_loop() {
  local owner=$1 starttime=$2 stat
  shift 2
  local -a f
  while stat=$(sed -e 's/.*) //' "/proc/$owner/stat" 2>/dev/null); do
    read -r -a f <<<"$stat"
    [ "${f[0]}" != Z ] && [ "${f[19]}" = "$starttime" ] || break
    sleep 1
  done
  # Drop our own pid file first so the stop command does not kill us mid-way.
  rm -f "${*: -1}/$(basename "$1" .sh).watchdog.pid"
  exec "$@"
}
