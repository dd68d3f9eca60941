#!/usr/bin/env bash
# Runs the operator binary out of cluster with exactly the RBAC of the Helm chart's
# ServiceAccount (no kubelet runs the chart's pod here: KWOK only pretends).
#
#   e2e/operator.sh start DIR [--owner-pid PID] [-- EXTRA RUN ARGS...]
#       Needs KUBECONFIG (an admin kubeconfig of the cluster) and the chart installed.
#       Mints a token for the ServiceAccount $HSOP_OPERATOR_SA in $HSOP_OPERATOR_NAMESPACE
#       (defaults: headscale-operator in headscale-operator-system), writes
#       DIR/operator.kubeconfig with it, starts `$HSOP_OPERATOR_BIN run` (default:
#       target/debug/headscale-operator) with JSON logs to DIR/operator.log, waits for /readyz,
#       and writes DIR/operator.pid and DIR/operator.url (the probe/metrics endpoint).
#   e2e/operator.sh stop DIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
LOG_PREFIX=operator

NS=${HSOP_OPERATOR_NAMESPACE:-headscale-operator-system}
SA=${HSOP_OPERATOR_SA:-headscale-operator}
BIN=${HSOP_OPERATOR_BIN:-$here/../target/debug/headscale-operator}

cmd_start() {
  local dir=$1 owner="" port server ca token
  shift
  local -a extra=()
  while [ $# -gt 0 ]; do
    case $1 in
      --owner-pid) owner=$2; shift 2 ;;
      --) shift; extra=("$@"); break ;;
      *) die "unknown argument $1" ;;
    esac
  done
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
  port=$(free_tcp_port)
  KUBECONFIG=$dir/operator.kubeconfig setsid "$BIN" run --log-format json \
    --probe-addr "127.0.0.1:$port" "${extra[@]}" </dev/null >>"$dir/operator.log" 2>&1 &
  echo $! >"$dir/operator.pid"
  echo "http://127.0.0.1:$port" >"$dir/operator.url"
  [ -z "$owner" ] || start_watchdog "$owner" "$here/operator.sh" stop "$dir"
  local pid t=0
  pid=$(cat "$dir/operator.pid")
  until curl -sf --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
    if ! pid_alive "$pid" || [ "$t" -ge 60 ]; then
      tail -n 30 "$dir/operator.log" >&2
      cmd_stop "$dir"
      die "operator did not become ready (log: $dir/operator.log)"
    fi
    t=$((t + 1))
    sleep 1
  done
  log "operator running as $NS/$SA (pid $(cat "$dir/operator.pid"), probes at http://127.0.0.1:$port)"
}

cmd_stop() {
  stop_pidfile "$1/operator.pid"
  stop_pidfile "$1/operator.watchdog.pid"
}

case "${1:-}" in
  start) shift; [ $# -ge 1 ] || die "usage: $0 start DIR [--owner-pid PID] [-- ARGS]"; cmd_start "$@" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; cmd_stop "$2" ;;
  __watchdog) shift; watchdog_loop "$@" ;;
  *) die "usage: $0 start DIR [--owner-pid PID] [-- ARGS] | $0 stop DIR" ;;
esac
