#!/usr/bin/env bash
# A local, offline Headscale server for the e2e tests.
#
#   e2e/headscale.sh start DIR VERSION [--owner-pid PID] [--listen ADDR] [--ephemeral-timeout DUR]
#       VERSION is one of HSOP_HEADSCALE_BINS (e.g. v0.28.0, v0.29.2; the leading v is optional).
#       The first start renders DIR/config.yaml from e2e/headscale/config.template.yaml with free
#       ports; later starts reuse it, so stop+start is a restart on the same ports and database
#       (also across versions, for upgrade tests). Runs `headscale serve` in its own session
#       (log: DIR/headscale.log, appended; pid: DIR/headscale.pid), waits for GET /health = 200,
#       and makes sure DIR/api-key (mode 0600) holds a working API key, minting one over the unix
#       socket (`apikeys create --expiration 1d`) when there is none or it stopped working.
#       Writes DIR/url (http://ADDR:PORT) and DIR/socket (the CLI's unix socket path).
#       The key is never printed.
#       --owner-pid PID: a watchdog runs `stop DIR` as soon as PID exits.
#       These two shape the config, so they count at the first start of a DIR only:
#       --listen ADDR: the IPv4 address for HTTP, STUN and the embedded DERP region (default
#       127.0.0.1; the real-client tests pass the host's bridge address from e2e/netns.sh).
#       --ephemeral-timeout DUR: how long after its session ends an ephemeral node is deleted
#       (Go duration, both versions refuse 65s or less; default: Headscale's own, 120s). Written
#       under the key VERSION reads: ephemeral_node_inactivity_timeout before 0.29,
#       node.ephemeral.inactivity_timeout from 0.29 (0.29 still reads the old key, so an upgrade
#       on the same DIR keeps it).
#   e2e/headscale.sh stop DIR
#       TERM, then KILL after ~10 s. Idempotent; succeeds when nothing runs.
#
# Binaries: HSOP_HEADSCALE_BINS ("v0.28.0=/path/headscale v0.29.2=/path/headscale"), read from
# `e2e/tools.sh env` when unset.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
LOG_PREFIX=headscale
TEMPLATE=$here/headscale/config.template.yaml
WAIT_SECONDS=${HSOP_HEADSCALE_WAIT_SECONDS:-60}

usage() {
  echo "usage: $0 start DIR VERSION [--owner-pid PID] [--listen ADDR] [--ephemeral-timeout DUR] | $0 stop DIR" >&2
  exit 2
}

find_binary() {
  local want=${1#v} entry
  [ -n "${HSOP_HEADSCALE_BINS:-}" ] || eval "$("$here/tools.sh" env)"
  for entry in $HSOP_HEADSCALE_BINS; do
    if [ "${entry%%=*}" = "v$want" ] || [ "${entry%%=*}" = "$want" ]; then
      [ -x "${entry#*=}" ] || die "headscale $1 is not built: ${entry#*=} (run e2e/tools.sh ensure)"
      echo "${entry#*=}"
      return 0
    fi
  done
  die "no headscale binary for version $1 in HSOP_HEADSCALE_BINS ($HSOP_HEADSCALE_BINS)"
}

render_config() {
  local version=$1 port metrics stun sock extra=""
  # HTTP (tcp), metrics (tcp), STUN (udp); free on LISTEN_ADDR too when that is not loopback.
  read -r port metrics stun <<<"$(FREE_PORTS_ADDR=$LISTEN_ADDR free_ports tcp tcp udp)"
  sock=$DIR/hs.sock
  if [ "${#sock}" -ge 100 ]; then
    # Unix socket paths are limited to ~108 bytes: use a short directory keyed by DIR.
    sock=/tmp/hsop-hs-$(printf '%s' "$DIR" | sha256sum | cut -c1-12)/hs.sock
  fi
  if [ -n "$EPHEMERAL_TIMEOUT" ]; then
    if [ "$(minor_of "$version")" -ge 29 ]; then
      extra=$'\nnode:\n  ephemeral:\n    inactivity_timeout: '"$EPHEMERAL_TIMEOUT"$'\n'
    else
      extra=$'\nephemeral_node_inactivity_timeout: '"$EPHEMERAL_TIMEOUT"$'\n'
    fi
  fi
  python3 - "$TEMPLATE" "$DIR/config.yaml" "$DIR" "$port" "$metrics" "$stun" "$sock" "$LISTEN_ADDR" "$extra" <<'PY'
import sys
src, dst, d, port, metrics, stun, sock, addr, extra = sys.argv[1:]
text = open(src).read()
for k, v in (("@DIR@", d), ("@PORT@", port), ("@METRICS_PORT@", metrics),
             ("@STUN_PORT@", stun), ("@SOCKET@", sock), ("@ADDR@", addr)):
    text = text.replace(k, v)
assert "@" not in "".join(l for l in text.splitlines() if not l.lstrip().startswith("#")), "unreplaced placeholder"
open(dst, "w").write(text + extra)
PY
  log "rendered $DIR/config.yaml (address $LISTEN_ADDR, port $port, metrics $metrics, stun udp $stun${EPHEMERAL_TIMEOUT:+, ephemeral timeout $EPHEMERAL_TIMEOUT})"
}

# minor_of VERSION: 29 for v0.29.2.
minor_of() { local v=${1#v}; v=${v#*.}; echo "${v%%.*}"; }

# Reads a top-level or nested scalar from the rendered config (only the two keys we need).
config_value() {
  sed -n "s/^$1: *//p" "$DIR/config.yaml" | head -n1
}

healthy() {
  [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/health")" = 200 ]
}

key_works() {
  [ -s "$DIR/api-key" ] || return 1
  local code
  # The key goes to curl through a header file on stdin, never through argv.
  code=$(printf 'Authorization: Bearer %s\n' "$(cat "$DIR/api-key")" |
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H @- "$URL/api/v1/apikey") || true
  [ "$code" = 200 ]
}

mint_key() {
  local out key
  out=$(env -u HEADSCALE_CLI_ADDRESS -u HEADSCALE_CLI_API_KEY -u HEADSCALE_CONFIG \
    "$BIN" -c "$DIR/config.yaml" apikeys create --expiration 1d 2>>"$DIR/cli.log") ||
    fail_with_log "$DIR/headscale.log" "headscale apikeys create failed (see $DIR/cli.log)"
  key=$(printf '%s\n' "$out" | grep -oE 'hskey-api-[A-Za-z0-9_-]+' | tail -n1 || true)
  [ -n "$key" ] || key=$(printf '%s\n' "$out" | sed -n '/[^[:space:]]/p' | tail -n1 | tr -d '[:space:]"')
  [ -n "$key" ] || die "headscale apikeys create printed no key"
  (umask 077 && printf '%s' "$key" >"$DIR/api-key.tmp")
  mv -f "$DIR/api-key.tmp" "$DIR/api-key"
  chmod 0600 "$DIR/api-key"
}

STARTED=0
on_start_exit() {
  local rc=$?
  if [ "$STARTED" != 1 ]; then
    [ "$rc" != 0 ] || rc=1
    cmd_stop "$DIR" || true
  fi
  exit "$rc"
}

cmd_start() {
  local version t0=$SECONDS
  DIR=$1 version=$2; shift 2
  local owner=""
  LISTEN_ADDR=127.0.0.1 EPHEMERAL_TIMEOUT=""
  while [ $# -gt 0 ]; do
    parse_owner_pid "$@"
    [ -z "$OWNER_PID" ] || owner=$OWNER_PID
    set -- ${OPT_REST[@]+"${OPT_REST[@]}"}
    [ $# -gt 0 ] || break
    case $1 in
      --listen) [ $# -ge 2 ] || usage; LISTEN_ADDR=$2; shift 2 ;;
      --listen=*) LISTEN_ADDR=${1#*=}; shift ;;
      --ephemeral-timeout) [ $# -ge 2 ] || usage; EPHEMERAL_TIMEOUT=$2; shift 2 ;;
      --ephemeral-timeout=*) EPHEMERAL_TIMEOUT=${1#*=}; shift ;;
      *) usage ;;
    esac
  done
  OWNER_PID=$owner
  [[ $LISTEN_ADDR =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--listen needs an IPv4 address, not $LISTEN_ADDR"
  [ -z "$EPHEMERAL_TIMEOUT" ] || [[ $EPHEMERAL_TIMEOUT =~ ^[0-9]+(s|m|h)$ ]] ||
    die "--ephemeral-timeout needs a duration like 70s or 2m, not $EPHEMERAL_TIMEOUT"
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd -P)
  BIN=$(find_binary "$version")
  if [ -f "$DIR/headscale.pid" ] && owns_pid "$(cat "$DIR/headscale.pid")" "$DIR"; then
    die "headscale already runs for $DIR (pid $(cat "$DIR/headscale.pid")); stop it first"
  fi
  [ -f "$DIR/config.yaml" ] || render_config "$version"
  local listen sock
  listen=$(config_value listen_addr)
  URL=http://$listen
  sock=$(config_value unix_socket)
  if [ "$(dirname "$sock")" != "$DIR" ]; then
    mkdir -p "$(dirname "$sock")"
    chmod 0700 "$(dirname "$sock")"
  fi

  trap on_start_exit EXIT
  trap 'exit 130' INT TERM
  [ -z "$OWNER_PID" ] || start_watchdog "$OWNER_PID" "$DIR/watchdog.pid" "$DIR/watchdog.log" \
    "headscale in $DIR" "$self" stop "$DIR"
  printf '\n==== %s: start %s (%s) ====\n' "$(date -u +%FT%TZ)" "$version" "$BIN" >>"$DIR/headscale.log"
  # Not a process-group leader (no job control here), so setsid execs in place: $! is headscale.
  env -u HEADSCALE_CONFIG setsid "$BIN" -c "$DIR/config.yaml" serve </dev/null >>"$DIR/headscale.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$DIR/headscale.pid"

  local rc=0
  await "$pid" "$WAIT_SECONDS" healthy || rc=$?
  [ "$rc" != 1 ] || fail_with_log "$DIR/headscale.log" "headscale exited during start-up"
  [ "$rc" = 0 ] || fail_with_log "$DIR/headscale.log" "no GET /health = 200 within ${WAIT_SECONDS}s"
  local t_health=$((SECONDS - t0))
  if ! key_works; then
    [ ! -s "$DIR/api-key" ] || log "the API key in $DIR/api-key no longer works; minting a new one"
    mint_key
    key_works || fail_with_log "$DIR/headscale.log" "the freshly minted API key is rejected"
  fi
  echo "$URL" >"$DIR/url"
  echo "$sock" >"$DIR/socket"
  STARTED=1
  log "headscale $version up at $URL in $((SECONDS - t0))s (healthy after ${t_health}s; key in $DIR/api-key)"
}

cmd_stop() {
  DIR=$1
  [ -d "$DIR" ] || return 0
  DIR=$(cd "$DIR" && pwd -P)
  stop_pidfiles "$DIR" "$DIR/watchdog.pid" "$DIR/headscale.pid"
  rm -f "$DIR/watchdog.pid"
  # A socket outside DIR (long DIR paths) lives in its own short /tmp directory: remove it.
  local sock
  sock=$([ -f "$DIR/config.yaml" ] && config_value unix_socket || true)
  if [ -n "$sock" ] && [ "$(dirname "$sock")" != "$DIR" ]; then
    rm -f "$sock"
    rmdir "$(dirname "$sock")" 2>/dev/null || true
  fi
  [ "${#STOPPED[@]}" -eq 0 ] || log "stopped headscale in $DIR"
}

dispatch start 2 stop "$@"
