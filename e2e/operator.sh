#!/usr/bin/env bash
# Runs the operator binary out of cluster with exactly the RBAC of the Helm chart's
# ServiceAccount (no kubelet runs the chart's pod here: KWOK only pretends).
#
#   e2e/operator.sh start DIR [--owner-pid PID] [-- EXTRA RUN ARGS...]
#       Needs KUBECONFIG (an admin kubeconfig of the cluster) and the chart installed.
#       Mints a token for the ServiceAccount $HSOP_OPERATOR_SA in $HSOP_OPERATOR_NAMESPACE
#       (defaults: headscale-operator in headscale-operator-system), writes
#       DIR/operator.kubeconfig with it, starts `$HSOP_OPERATOR_BIN run` (default:
#       ${CARGO_TARGET_DIR:-target}/debug/headscale-operator) with JSON logs to DIR/operator.log, waits for /readyz,
#       and writes DIR/operator.pid and DIR/operator.url (the probe/metrics endpoint).
#   e2e/operator.sh stop DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
LOG_PREFIX=operator

NS=${HSOP_OPERATOR_NAMESPACE:-headscale-operator-system}
SA=${HSOP_OPERATOR_SA:-headscale-operator}
BIN=${HSOP_OPERATOR_BIN:-${CARGO_TARGET_DIR:-$here/../target}/debug/headscale-operator}
usage() {
  case ${1:-} in
    start) die "usage: $0 start DIR [--owner-pid PID] [-- ARGS]" ;;
    stop) die "usage: $0 stop DIR" ;;
    *) die "usage: $0 start DIR [--owner-pid PID] [-- ARGS] | $0 stop DIR" ;;
  esac
}

cmd_start() {
  local dir=$1 port server ca token
  shift
  local -a extra=()
  parse_owner_pid "$@"
  if [ "${#OPT_REST[@]}" -gt 0 ]; then
    [ "${OPT_REST[0]}" = -- ] || die "unknown argument ${OPT_REST[0]}"
    extra=("${OPT_REST[@]:1}")
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd -P)
  [ -x "$BIN" ] || die "operator binary $BIN is missing (cargo build first)"
  : "${KUBECONFIG:?KUBECONFIG must name the cluster admin kubeconfig}"
  local kubectl=${HSOP_KUBECTL_BIN:-kubectl}
  server=$("$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')
  ca=$("$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority}')
  token=$("$kubectl" -n "$NS" create token "$SA" --duration 12h)
  local old_umask
  old_umask=$(umask)
  umask 077
  cat >"$dir/operator.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "$server", certificate-authority: "$ca"}
users:
- name: $SA
  user: {token: "$token"}
contexts:
- name: e2e
  context: {cluster: e2e, user: $SA, namespace: $NS}
current-context: e2e
KC
  umask "$old_umask"
  # The watchdog first: a bad --owner-pid fails before anything runs.
  [ -z "$OWNER_PID" ] || start_watchdog "$OWNER_PID" "$dir/operator.watchdog.pid" /dev/null \
    "the operator in $dir" "$here/operator.sh" stop "$dir"
  port=$(free_ports tcp)
  # The operator's arguments name no path of DIR: the environment marks it as DIR's (owns_pid).
  KUBECONFIG=$dir/operator.kubeconfig E2E_OWNER_DIR=$dir setsid "$BIN" run --log-format json \
    --probe-addr "127.0.0.1:$port" "${extra[@]}" </dev/null >>"$dir/operator.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/operator.pid"
  echo "http://127.0.0.1:$port" >"$dir/operator.url"
  if ! await "$pid" 60 curl -sf --max-time 2 "http://127.0.0.1:$port/readyz"; then
    tail -n 30 "$dir/operator.log" >&2
    cmd_stop "$dir"
    die "operator did not become ready (log: $dir/operator.log)"
  fi
  log "operator running as $NS/$SA (pid $pid, probes at http://127.0.0.1:$port)"
}

cmd_stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  dir=$(cd "$dir" && pwd -P)
  stop_pidfiles "$dir" "$dir/operator.watchdog.pid" "$dir/operator.pid"
  rm -f "$dir/operator.watchdog.pid"
}

dispatch start 1 stop "$@"
