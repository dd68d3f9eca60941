#!/usr/bin/env bash
# A throw-away Kubernetes control plane on loopback, with no kubelet and no container runtime:
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok (fake node and pods).
#
#   e2e/cluster.sh up DIR [--owner-pid PID]
#       DIR must be missing or empty. Generates a fresh PKI in DIR/pki, picks free ports on
#       127.0.0.1, starts every component in its own session (logs: DIR/logs/<name>.log,
#       pids: DIR/pids/<name>.pid), registers the fake node kwok-node-0 and waits until it is
#       Ready and the default ServiceAccount exists. Writes DIR/kubeconfig (admin, system:masters)
#       and DIR/env (source it: KUBECONFIG, HSOP_CLUSTER_DIR, HSOP_APISERVER_URL, ...).
#       --owner-pid PID: a watchdog runs `down DIR` as soon as PID exits (even if it was
#       SIGKILLed), so nothing outlives the test run.
#       If anything fails, what was started is stopped again and the exit status is non-zero.
#   e2e/cluster.sh down DIR
#       Stops everything `up` started (reverse order, TERM then KILL after ~10 s) and the
#       watchdog. Idempotent; succeeds when nothing runs.
#
# Binaries: HSOP_ETCD_BIN, HSOP_K8S_BIN (dir), HSOP_KWOK_BIN, HSOP_KUBECTL_BIN; read from
# `e2e/tools.sh env` when unset (the tools must have been built with `e2e/tools.sh ensure`).
# Kwok plays the stages in e2e/kwok-stages.yaml (override: HSOP_KWOK_STAGES).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
LOG_PREFIX=cluster

NODE_NAME=kwok-node-0
SERVICE_CIDR=10.0.0.0/24
POD_CIDR=10.244.0.0/16
NODE_IP=172.18.0.2
WAIT_SECONDS=${HSOP_CLUSTER_WAIT_SECONDS:-120}
# Components in start order; `down` stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

usage() {
  echo "usage: $0 up DIR [--owner-pid PID] | $0 down DIR" >&2
  exit 2
}

load_tools() {
  if [ -z "${HSOP_ETCD_BIN:-}" ] || [ -z "${HSOP_K8S_BIN:-}" ] || [ -z "${HSOP_KWOK_BIN:-}" ] ||
    [ -z "${HSOP_KUBECTL_BIN:-}" ]; then
    eval "$("$here/tools.sh" env)"
  fi
  local b
  for b in "$HSOP_ETCD_BIN" "$HSOP_K8S_BIN/kube-apiserver" "$HSOP_K8S_BIN/kube-controller-manager" \
    "$HSOP_K8S_BIN/kube-scheduler" "$HSOP_KWOK_BIN" "$HSOP_KUBECTL_BIN"; do
    [ -x "$b" ] || die "missing tool binary $b (run e2e/tools.sh ensure)"
  done
}

# start NAME CMD...: runs CMD in a new session, logging to DIR/logs/NAME.log.
start() {
  local name=$1; shift
  # Not a process-group leader (no job control here), so setsid execs in place and $! is the
  # component's own pid; it leads its own session and process group.
  setsid "$@" </dev/null >"$DIR/logs/$name.log" 2>&1 &
  echo "$!" >"$DIR/pids/$name.pid"
  log "started $name (pid $!)"
}

# wait_for NAME DESCRIPTION CMD...: polls CMD until it succeeds; fails early if NAME died.
wait_for() {
  local name=$1 what=$2 rc=0
  shift 2
  await "$(cat "$DIR/pids/$name.pid")" "$WAIT_SECONDS" "$@" || rc=$?
  case $rc in
    0) ;;
    1) fail_with_log "$DIR/logs/$name.log" "$name exited while waiting for $what" ;;
    *) fail_with_log "$DIR/logs/$name.log" "timed out after ${WAIT_SECONDS}s waiting for $what" ;;
  esac
}

# ---------------------------------------------------------------------------------------------
gen_pki() {
  local p=$DIR/pki
  mkdir -p "$p"
  (
    cd "$p"
    umask 077
    local days=3650
    openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=hsop-test-ca" \
      -keyout ca.key -out ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    cat >apiserver.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EXT
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days "$days" -extfile apiserver.ext -out apiserver.crt
    cat >client.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=hsop-admin" \
      -keyout admin.key -out admin.csr
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -days "$days" -extfile client.ext -out admin.crt
    # Front proxy (request-header authentication): its own CA, so that no other client
    # certificate can assert X-Remote-User. Completes extension-apiserver-authentication.
    openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=hsop-front-proxy-ca" \
      -keyout front-proxy-ca.key -out front-proxy-ca.crt \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=front-proxy-client" \
      -keyout front-proxy-client.key -out front-proxy-client.csr
    openssl x509 -req -in front-proxy-client.csr -CA front-proxy-ca.crt -CAkey front-proxy-ca.key \
      -CAcreateserial -days "$days" -extfile client.ext -out front-proxy-client.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
    rm -f ./*.csr ./*.ext
    chmod 0644 ca.crt apiserver.crt admin.crt front-proxy-ca.crt front-proxy-client.crt sa.pub
  ) >"$DIR/logs/pki.log" 2>&1 || fail_with_log "$DIR/logs/pki.log" "generating the PKI failed"
}

write_kubeconfig() {
  local p=$DIR/pki
  umask 077
  cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: hsop-test
  cluster:
    server: $API_URL
    certificate-authority: $p/ca.crt
users:
- name: hsop-admin
  user:
    client-certificate: $p/admin.crt
    client-key: $p/admin.key
contexts:
- name: hsop-test
  context:
    cluster: hsop-test
    user: hsop-admin
    namespace: default
current-context: hsop-test
EOF
  umask 022
}

write_env() {
  local var
  {
    echo "# generated by e2e/cluster.sh up; source it"
    for var in "HSOP_CLUSTER_DIR=$DIR" "KUBECONFIG=$DIR/kubeconfig" "HSOP_APISERVER_URL=$API_URL" \
      "HSOP_APISERVER_CA=$DIR/pki/ca.crt" "HSOP_KUBECTL_BIN=$HSOP_KUBECTL_BIN" \
      "HSOP_NODE_NAME=$NODE_NAME"; do
      printf "export %s='%s'\n" "${var%%=*}" "${var#*=}"
    done
  } >"$DIR/env"
}

kubectl_() { "$HSOP_KUBECTL_BIN" --kubeconfig "$DIR/kubeconfig" "$@"; }

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" | grep -q '"health":"true"'
}

apiserver_ready() {
  curl -fsS --max-time 3 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" \
    --key "$DIR/pki/admin.key" "$API_URL/readyz" | grep -qx ok
}

node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

default_sa_exists() { kubectl_ -n default get serviceaccount default; }

create_node() {
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    node.kubernetes.io/instance-type: kwok
spec: {}
EOF
}

# ---------------------------------------------------------------------------------------------
# stop_pids NAME...: stops the named components of $DIR (see stop_pidfiles).
stop_pids() {
  local name files=()
  for name in "$@"; do files+=("$DIR/pids/$name.pid"); done
  stop_pidfiles "$DIR" "${files[@]}"
  for name in "${STOPPED[@]}"; do log "stopped $name"; done
}

cmd_down() {
  DIR=$1
  [ -d "$DIR" ] || { log "nothing to stop: $DIR does not exist"; return 0; }
  DIR=$(cd "$DIR" && pwd -P)
  [ -d "$DIR/pids" ] || { log "nothing to stop in $DIR"; return 0; }
  stop_pids watchdog
  # Reverse start order; the three clients of the apiserver can go together.
  stop_pids kwok kube-scheduler kube-controller-manager
  stop_pids kube-apiserver
  stop_pids etcd
  rm -f "$DIR/pids/watchdog.pid"
  rmdir "$DIR/pids" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
UP_DONE=0
on_up_exit() {
  local rc=$?
  if [ "$UP_DONE" != 1 ]; then
    [ "$rc" != 0 ] || rc=1
    log "up failed; stopping what was started"
    cmd_down "$DIR" || true
  fi
  exit "$rc"
}

cmd_up() {
  DIR=$1; shift
  parse_owner_pid "$@"
  [ "${#OPT_REST[@]}" -eq 0 ] || usage
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd -P)
  [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty"
  load_tools
  local stages=${HSOP_KWOK_STAGES:-$here/kwok-stages.yaml}
  [ -f "$stages" ] || die "missing stage file $stages"
  local t0=$SECONDS t_api t_node
  mkdir -p "$DIR/logs" "$DIR/pids" "$DIR/etcd" "$DIR/kwok"
  trap on_up_exit EXIT
  trap 'exit 130' INT TERM
  if [ -n "$OWNER_PID" ]; then
    start_watchdog "$OWNER_PID" "$DIR/pids/watchdog.pid" "$DIR/logs/watchdog.log" \
      "the cluster in $DIR" "$self" down "$DIR"
    log "watchdog (pid $WATCHDOG_PID) will stop the cluster when pid $OWNER_PID exits"
  fi

  gen_pki
  local ports
  ports=$(free_ports tcp tcp tcp tcp)
  read -r ETCD_PORT ETCD_PEER_PORT API_PORT SCHED_PORT <<<"$ports"
  API_URL="https://127.0.0.1:$API_PORT"
  write_kubeconfig
  local p=$DIR/pki k=$DIR/kubeconfig

  start etcd "$HSOP_ETCD_BIN" --name=hsop --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="hsop=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync=true --quota-backend-bytes=$((2 * 1024 * 1024 * 1024)) \
    --log-level=warn
  wait_for etcd "etcd /health" etcd_healthy

  start kube-apiserver "$HSOP_K8S_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --requestheader-client-ca-file="$p/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$p/front-proxy-client.crt" --proxy-client-key-file="$p/front-proxy-client.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --authorization-mode=RBAC \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true \
    --cert-dir="$DIR/apiserver-certs" \
    --profiling=false \
    --v=1
  wait_for kube-apiserver "kube-apiserver /readyz" apiserver_ready
  t_api=$((SECONDS - t0))
  log "apiserver ready at $API_URL after ${t_api}s"

  start kube-controller-manager "$HSOP_K8S_BIN/kube-controller-manager" \
    --kubeconfig="$k" --bind-address=127.0.0.1 --secure-port=0 \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --leader-elect=false --profiling=false --v=1
  start kube-scheduler "$HSOP_K8S_BIN/kube-scheduler" \
    --kubeconfig="$k" --authentication-kubeconfig="$k" --authorization-kubeconfig="$k" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" \
    --leader-elect=false --profiling=false --v=1
  KWOK_WORKDIR="$DIR/kwok" start kwok "$HSOP_KWOK_BIN" \
    --kubeconfig="$k" --config="$stages" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-lease-duration-seconds=40 --cidr="$POD_CIDR" --node-ip="$NODE_IP"

  create_node >"$DIR/logs/node.log" 2>&1 || fail_with_log "$DIR/logs/node.log" "creating node $NODE_NAME failed"
  wait_for kwok "node $NODE_NAME to become Ready" node_ready
  t_node=$((SECONDS - t0))
  wait_for kube-controller-manager "the default ServiceAccount" default_sa_exists
  local c
  for c in "${COMPONENTS[@]}"; do
    pid_alive "$(cat "$DIR/pids/$c.pid")" || fail_with_log "$DIR/logs/$c.log" "$c is not running"
  done
  write_env
  UP_DONE=1
  log "cluster up in $((SECONDS - t0))s (apiserver ${t_api}s, node Ready ${t_node}s): source $DIR/env"
}

dispatch up 1 down "$@"
