# Shared helpers of the e2e scripts (sourced, not run): logging, option parsing, process
# liveness and ownership, free ports, start-up polling, stopping by pid file, and the owner-pid
# watchdog. Every script sets LOG_PREFIX after sourcing this file.
# shellcheck shell=bash

LOG_PREFIX=${LOG_PREFIX:-e2e}
log() { printf '[%s] %s\n' "$LOG_PREFIX" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# fail_with_log LOGFILE MSG: logs MSG as an error with the last 40 lines of LOGFILE, exits 1.
fail_with_log() {
  local file=$1
  log "ERROR: $2"
  if [ -f "$file" ]; then
    log "---- last 40 lines of $file ----"
    tail -n 40 "$file" >&2 || true
    log "----"
  fi
  exit 1
}

# parse_owner_pid ARGS...: reads the options [--owner-pid PID | --owner-pid=PID] into OWNER_PID
# ("" when absent; the last one wins) and stops at the first other argument: it and everything
# after it go to OPT_REST. `--owner-pid` without a value calls the script's `usage`; a value that
# is not a pid dies.
# shellcheck disable=SC2034 # OWNER_PID and OPT_REST are for the caller
parse_owner_pid() {
  OWNER_PID="" OPT_REST=()
  while [ $# -gt 0 ]; do
    case $1 in
      --owner-pid) [ $# -ge 2 ] || usage; OWNER_PID=$2; shift 2 ;;
      --owner-pid=*) OWNER_PID=${1#*=}; shift ;;
      *) OPT_REST=("$@"); break ;;
    esac
  done
  if [ -n "$OWNER_PID" ] && ! [[ $OWNER_PID =~ ^[0-9]+$ ]]; then die "--owner-pid needs a pid"; fi
}

# The fields of /proc/PID/stat after "(comm)", on one line: $1 = state, ${20} = start time.
proc_stat() { sed -e 's/.*) //' "/proc/$1/stat" 2>/dev/null; }

# pid_alive PID: true when PID exists and is not a zombie.
pid_alive() {
  local state
  [ -n "$1" ] || return 1
  state=$(proc_stat "$1" | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# owns_pid PID DIR: true when PID is alive and belongs to DIR: its command line names DIR (or a
# path below it), or its environment holds exactly E2E_OWNER_DIR=DIR (start a program whose
# arguments name no path of DIR, like the operator, with that variable set). Guards against pids
# recycled by other processes before a kill.
owns_pid() {
  local pid=$1 dir=$2 args vars
  pid_alive "$pid" || return 1
  # DIR itself or a path below it, as a whole argument or after "=" (--opt=DIR/...).
  args=" $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")"
  case $args in *" $dir "* | *" $dir/"* | *"=$dir "* | *"=$dir/"*) return 0 ;; esac
  vars=$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/environ") || return 1
  case $'\n'$vars$'\n' in *$'\n'"E2E_OWNER_DIR=$dir"$'\n'*) return 0 ;; esac
  return 1
}

# free_ports KIND...: prints one distinct port per KIND (tcp or udp), space-separated, each free
# on 127.0.0.1 (and on $FREE_PORTS_ADDR, when set to another local address) right now. They are
# drawn at random below the kernel's ephemeral range, so that outgoing connections do not grab
# them meanwhile, and held until all are found.
free_ports() {
  FREE_PORTS_ADDR=${FREE_PORTS_ADDR:-127.0.0.1} python3 - "$@" <<'PY'
import os, random, socket, sys
kinds = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
lo, hi = 20000, 32000
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        hi = min(hi, int(f.read().split()[0]) - 1)
except OSError:
    pass
addrs = sorted({"127.0.0.1", os.environ["FREE_PORTS_ADDR"]})
held, out = [], []
for kind in sys.argv[1:]:
    while True:
        p = random.randint(lo, hi)
        if p in out:
            continue
        bound = []
        try:
            for a in addrs:
                s = socket.socket(socket.AF_INET, kinds[kind])
                bound.append(s)
                s.bind((a, p))
        except OSError:
            for s in bound:
                s.close()
            continue
        held.extend(bound)
        out.append(p)
        break
for s in held:
    s.close()
print(" ".join(map(str, out)))
PY
}

# await PID SECONDS CMD...: runs CMD (output discarded) every 0.2 s until it succeeds while PID
# is alive. Returns 0 when CMD succeeded and PID still runs (another process answering in its
# place does not count), 1 as soon as PID is gone, 2 after SECONDS.
await() {
  local pid=$1 deadline=$((SECONDS + $2))
  shift 2
  until "$@" >/dev/null 2>&1; do
    pid_alive "$pid" || return 1
    [ "$SECONDS" -lt "$deadline" ] || return 2
    sleep 0.2
  done
  pid_alive "$pid" || return 1
}

# stop_pidfiles DIR FILE...: stops the processes whose pids FILE... hold, if they belong to DIR
# (owns_pid): TERM to each one's process group (or to the process alone), KILL to those still
# there after ~10 s. Removes each FILE, except one that holds the caller's own pid (a watchdog
# running the stop command itself): that process is not signalled and its file is left to the
# caller. Sets STOPPED to the names (FILE's base name without .pid) of the processes it signalled.
stop_pidfiles() {
  local dir=$1 file pid entry remaining=() live=()
  shift
  STOPPED=()
  for file in "$@"; do
    [ -f "$file" ] || continue
    pid=$(cat "$file" 2>/dev/null || true)
    [ "$pid" != "$$" ] || continue
    if owns_pid "$pid" "$dir"; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      live+=("$pid:$(basename "$file" .pid)")
    fi
    rm -f "$file"
  done
  [ "${#live[@]}" -gt 0 ] || return 0
  local deadline=$((SECONDS + 10)) killed=0
  while :; do
    remaining=()
    for entry in "${live[@]}"; do
      owns_pid "${entry%%:*}" "$dir" && remaining+=("$entry")
    done
    [ "${#remaining[@]}" -gt 0 ] || break
    if [ "$killed" = 0 ] && [ "$SECONDS" -ge "$deadline" ]; then
      for entry in "${remaining[@]}"; do
        log "${entry#*:} (pid ${entry%%:*}) ignored TERM; sending KILL"
        kill -KILL -- "-${entry%%:*}" 2>/dev/null || kill -KILL "${entry%%:*}" 2>/dev/null || true
      done
      killed=1 deadline=$((SECONDS + 2))
    elif [ "$SECONDS" -ge "$deadline" ]; then
      break
    fi
    sleep 0.1
  done
  for entry in "${live[@]}"; do STOPPED+=("${entry#*:}"); done
}

# dispatch START MIN STOP ARGS...: the command line of a script with the verbs START and STOP:
# `START DIR ...` (at least MIN words after START) runs cmd_START, `STOP DIR` runs cmd_STOP, and
# `__watchdog ...` (see start_watchdog) runs watchdog_loop. Anything else calls `usage [VERB]`.
dispatch() {
  local start=$1 min=$2 stop=$3
  shift 3
  [ $# -ge 1 ] || usage
  case $1 in
    "$start") [ $# -gt "$min" ] || usage "$1"; shift; "cmd_$start" "$@" ;;
    "$stop") [ $# -eq 2 ] || usage "$1"; "cmd_$stop" "$2" ;;
    __watchdog) shift; watchdog_loop "$@" ;;
    *) usage ;;
  esac
}

# start_watchdog OWNER PIDFILE LOGFILE WHAT CMD...: starts, in its own session, a watchdog that
# runs CMD (CMD[0] is the calling script) once OWNER has exited, even when OWNER was SIGKILLed, so
# that nothing outlives its caller. Its pid goes to PIDFILE, its output is appended to LOGFILE.
# WHAT says what CMD stops, for that log. The script must run `__watchdog ARGS...` as
# `watchdog_loop ARGS...` (dispatch does). The watchdog's command line includes CMD, so it names
# the DIR that CMD names (owns_pid).
start_watchdog() {
  local owner=$1 pidfile=$2 logfile=$3 what=$4 starttime
  shift 4
  pid_alive "$owner" || die "--owner-pid $owner is not a running process"
  starttime=$(proc_stat "$owner" | cut -d' ' -f20)
  setsid "$1" __watchdog "$owner" "$starttime" "$what" "$@" </dev/null >>"$logfile" 2>&1 &
  WATCHDOG_PID=$!
  echo "$WATCHDOG_PID" >"$pidfile"
}

# watchdog_loop OWNER STARTTIME WHAT CMD...: waits until OWNER is gone (or a zombie, or its pid
# was reused: another start time), then execs CMD in its place (same pid, see stop_pidfiles).
watchdog_loop() {
  local owner=$1 starttime=$2 what=$3 stat
  local -a f
  shift 3
  while stat=$(proc_stat "$owner"); do
    read -r -a f <<<"$stat" # f[0] = state, f[19] = start time
    [ "${f[0]}" != Z ] && [ "${f[19]}" = "$starttime" ] || break
    sleep 1
  done
  echo "owner pid $owner exited; stopping $what"
  exec "$@"
}
