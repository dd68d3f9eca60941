#!/usr/bin/env bash
# Isolated test hosts for real Tailscale clients: one network namespace per client, joined by
# veth pairs to a host-side bridge on a private /24 that is unique per run.
#
#   e2e/netns.sh up DIR [--owner-pid PID]
#       Checks that namespaces can be made here, sweeps what dead runs left behind, then makes
#       the bridge hsop<ID>br with address 10.213.<N>.1/24 (N unique among live runs) and writes
#       DIR/net.env (HSOP_NET_ID, HSOP_NET_BRIDGE, HSOP_NET_SUBNET, HSOP_NET_ADDR, HSOP_NET_SOCKDIR).
#       HSOP_NET_ADDR is where Headscale must listen for the clients to reach it.
#       --owner-pid PID: a watchdog runs `down DIR` as soon as PID exits. The owner (PID, else
#       the caller) is recorded: once it is gone, the next `up` or `sweep` removes the network.
#   e2e/netns.sh host DIR INDEX
#       Makes the namespace hsop<ID>-<INDEX> (INDEX 1..200): loopback up, one veth (eth0 inside,
#       hsop<ID>h<INDEX> on the bridge) with 10.213.<N>.<10+INDEX>/24, and no other route: no
#       default route, so nothing sent from it can leave the test subnet. Prints "NAMESPACE ADDR".
#   e2e/netns.sh unhost DIR INDEX
#       Kills every process in that namespace and removes it and its veth. Idempotent.
#   e2e/netns.sh down DIR
#       Kills every process in the run's namespaces, removes namespaces, links, the bridge and the
#       run's registry entry. Idempotent.
#   e2e/netns.sh sweep
#       Removes the namespaces and links of every run whose owner is gone (also done by `up`).
#   e2e/netns.sh check
#       Exits 0 when namespaces, veths and bridges can be made here, else says why.
#
# The host's sysctls are never changed (ip_forward stays as it is): hosts talk to each other
# through the bridge (layer 2) and to the host's own bridge address, neither of which forwards.
# Registry of live runs: /run/hsop-netns/<ID>/{owner,dir,octet}, guarded by a flock.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
LOG_PREFIX=netns
REGISTRY=${HSOP_NETNS_REGISTRY:-/run/hsop-netns}
# The second octet of every test subnet: 10.213.<N>.0/24.
SUBNET_PREFIX=10.213
MAX_INDEX=200

usage() {
  echo "usage: $0 up DIR [--owner-pid PID] | host DIR INDEX | unhost DIR INDEX | down DIR | sweep | check" >&2
  exit 2
}

locked() {
  mkdir -p "$REGISTRY"
  exec 8>"$REGISTRY/.lock"
  flock 8
}

# check: a throw-away namespace with a veth pair and a bridge, or a clear refusal.
cmd_check() {
  local probe=hsopc$$ why=""
  [ "$(id -u)" = 0 ] || why="not root (uid $(id -u)): network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN"
  command -v ip >/dev/null || why="the ip command (iproute2) is missing"
  if [ -z "$why" ]; then
    if ! ip netns add "$probe" 2>"/tmp/$probe.err"; then
      why="ip netns add failed: $(cat "/tmp/$probe.err")"
    elif ! ip link add "${probe}a" type veth peer name "${probe}b" 2>"/tmp/$probe.err"; then
      why="creating a veth pair failed: $(cat "/tmp/$probe.err")"
    elif ! ip link set "${probe}b" netns "$probe" 2>"/tmp/$probe.err"; then
      why="moving a veth into a namespace failed: $(cat "/tmp/$probe.err")"
    elif ! ip link add "${probe}br" type bridge 2>"/tmp/$probe.err"; then
      why="creating a bridge failed: $(cat "/tmp/$probe.err")"
    fi
    ip link del "${probe}br" 2>/dev/null || true
    ip link del "${probe}a" 2>/dev/null || true
    ip netns del "$probe" 2>/dev/null || true
    rm -f "/tmp/$probe.err"
  fi
  [ -e /dev/net/tun ] || why="${why:+$why; }/dev/net/tun is missing (the clients use a TUN device in their namespace)"
  if [ -n "$why" ]; then
    log "ERROR: cannot make isolated test hosts here: $why"
    log "the real-client tests need root with network namespaces (CI runs as root); they are not skipped"
    exit 1
  fi
}

# owner_alive ID: the run's owner (pid and start time recorded at `up`) still runs.
owner_alive() {
  local entry=$REGISTRY/$1 pid start
  [ -f "$entry/owner" ] || return 1
  read -r pid start <"$entry/owner" || return 1
  pid_alive "$pid" || return 1
  [ "$(proc_stat "$pid" | cut -d' ' -f20)" = "$start" ]
}

# kill_netns NS: TERM then KILL every process whose network namespace is NS.
kill_netns() {
  local ns=$1 pids i
  pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
  [ -n "${pids// /}" ] || return 0
  # shellcheck disable=SC2086 # a list of pids
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 1 50); do
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [ -n "${pids// /}" ] || return 0
    if [ "$i" = 30 ]; then
      log "processes in $ns ignored TERM: $pids; sending KILL"
      # shellcheck disable=SC2086 # a list of pids
      kill -KILL $pids 2>/dev/null || true
    fi
    sleep 0.1
  done
}

# remove_run ID: everything of run ID, whatever state it is in.
remove_run() {
  local id=$1 ns link
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^hsop$id-" || true); do
    kill_netns "$ns"
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^hsop$id" || true); do
    ip link del "$link" 2>/dev/null || true
  done
  if [ -f "$REGISTRY/$id/sockdir" ]; then rm -rf "$(cat "$REGISTRY/$id/sockdir")"; fi
  rm -rf "${REGISTRY:?}/$id"
}

# sweep_locked: removes runs whose owner is gone, and namespaces/links named hsop<ID>... of runs
# with no registry entry at all (left by a crash before the registry existed, or a reboot race).
sweep_locked() {
  local ids id
  ids=$({
    ip netns list 2>/dev/null | awk '{print $1}' | sed -nE 's/^hsop([0-9a-f]{6})-.*/\1/p'
    ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed -nE 's/^hsop([0-9a-f]{6}).*/\1/p'
    find "$REGISTRY" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null
  } | sort -u)
  for id in $ids; do
    owner_alive "$id" && continue
    log "sweeping stale run $id (owner gone)"
    remove_run "$id"
  done
}

cmd_sweep() { locked; sweep_locked; }

# net_env DIR: loads DIR/net.env.
net_env() {
  DIR=$1
  [ -f "$DIR/net.env" ] || die "$DIR/net.env is missing: run \`$0 up $DIR\` first"
  # shellcheck disable=SC1091
  . "$DIR/net.env"
}

cmd_up() {
  DIR=$1; shift
  parse_owner_pid "$@"
  [ "${#OPT_REST[@]}" -eq 0 ] || usage
  cmd_check
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd -P)
  [ ! -f "$DIR/net.env" ] || die "$DIR already has a test network ($DIR/net.env); run down first"
  locked
  sweep_locked
  # Without --owner-pid the caller owns the network (this script exits at once).
  local id octet used n owner=${OWNER_PID:-$PPID}
  id=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
  while [ -e "$REGISTRY/$id" ]; do id=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n'); done
  # A third octet no live run and no host address uses.
  used=" $(cat "$REGISTRY"/*/octet 2>/dev/null | tr '\n' ' ' || true) "
  used="$used $(ip -o -4 addr show 2>/dev/null | sed -nE "s/.* ${SUBNET_PREFIX//./\\.}\.([0-9]+)\.[0-9]+\/.*/\1/p" | tr '\n' ' ') "
  octet=""
  for n in $(seq 1 254 | shuf); do
    case $used in *" $n "*) continue ;; esac
    octet=$n; break
  done
  [ -n "$octet" ] || die "no free $SUBNET_PREFIX.N.0/24 left for a test network"
  local sockdir=/tmp/hsop$id
  mkdir -p "$REGISTRY/$id"
  echo "$owner $(proc_stat "$owner" | cut -d' ' -f20)" >"$REGISTRY/$id/owner"
  echo "$octet" >"$REGISTRY/$id/octet"
  echo "$DIR" >"$REGISTRY/$id/dir"
  echo "$sockdir" >"$REGISTRY/$id/sockdir"
  local br=hsop${id}br addr=$SUBNET_PREFIX.$octet.1
  if ! { ip link add "$br" type bridge && ip addr add "$addr/24" dev "$br" && ip link set "$br" up; }; then
    remove_run "$id"
    die "could not make the bridge $br"
  fi
  flock -u 8
  mkdir -m 0700 "$sockdir"
  cat >"$DIR/net.env" <<ENV
HSOP_NET_ID=$id
HSOP_NET_BRIDGE=$br
HSOP_NET_SUBNET=$SUBNET_PREFIX.$octet.0/24
HSOP_NET_ADDR=$addr
HSOP_NET_SOCKDIR=$sockdir
ENV
  [ -z "$OWNER_PID" ] || start_watchdog "$OWNER_PID" "$DIR/netns-watchdog.pid" "$DIR/netns-watchdog.log" \
    "test network in $DIR" "$self" down "$DIR"
  log "test network $id up: bridge $br, $SUBNET_PREFIX.$octet.0/24, host address $addr"
}

cmd_host() {
  net_env "$1"
  local index=$2
  [[ $index =~ ^[0-9]+$ ]] && [ "$index" -ge 1 ] && [ "$index" -le "$MAX_INDEX" ] ||
    die "INDEX must be 1..$MAX_INDEX, not $index"
  local ns=hsop$HSOP_NET_ID-$index hostside=hsop${HSOP_NET_ID}h$index inside=hsop${HSOP_NET_ID}n$index
  local addr=${HSOP_NET_ADDR%.1}.$((10 + index))
  ip netns list | awk '{print $1}' | grep -qx "$ns" && die "namespace $ns exists already"
  if ! {
    ip netns add "$ns" &&
      ip link add "$hostside" type veth peer name "$inside" &&
      ip link set "$inside" netns "$ns" &&
      ip link set "$hostside" master "$HSOP_NET_BRIDGE" &&
      ip link set "$hostside" up &&
      ip -n "$ns" link set lo up &&
      ip -n "$ns" link set "$inside" name eth0 &&
      ip -n "$ns" addr add "$addr/24" dev eth0 &&
      ip -n "$ns" link set eth0 up
  }; then
    cmd_unhost "$DIR" "$index" 2>/dev/null || true
    die "could not make the test host $ns"
  fi
  echo "$ns $addr"
}

cmd_unhost() {
  net_env "$1"
  local ns=hsop$HSOP_NET_ID-$2
  if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    kill_netns "$ns"
    ip netns del "$ns" 2>/dev/null || true
  fi
  # Deleting the namespace deletes its veth end and so the pair; this catches a half-made pair.
  ip link del "hsop${HSOP_NET_ID}h$2" 2>/dev/null || true
}

cmd_down() {
  DIR=$1
  [ -f "$DIR/net.env" ] || return 0
  net_env "$DIR"
  stop_pidfiles "$DIR" "$DIR/netns-watchdog.pid"
  locked
  remove_run "$HSOP_NET_ID"
  flock -u 8
  rm -f "$DIR/net.env"
  log "test network $HSOP_NET_ID down"
}

case ${1:-} in
  sweep) [ $# -eq 1 ] || usage; cmd_sweep ;;
  check) [ $# -eq 1 ] || usage; cmd_check ;;
  host | unhost) [ $# -eq 3 ] || usage; "cmd_$1" "$2" "$3" ;;
  *) dispatch up 1 down "$@" ;;
esac
