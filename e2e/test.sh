#!/usr/bin/env bash
# Every test of the project, as `make test` and CI run it:
#   static checks -> unit, CRD and golden-config tests -> chart checks -> the rendered
#   Headscale configs started with the real binaries -> a real control plane (etcd,
#   kube-apiserver, controller-manager, scheduler, KWOK) with the chart installed and the
#   operator running under the chart's ServiceAccount -> integration tests against real
#   Headscale servers.
# Builds missing tools first (cached in ~/.cache/headscale-operator; cold: see README).
# HSOP_KEEP=1 leaves the environment running afterwards and prints how to reuse it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib.sh
. e2e/lib.sh
LOG_PREFIX="test"
t0=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - t0))"; }

step "tools"
e2e/tools.sh ensure >/dev/null
eval "$(e2e/tools.sh env)"
PATH="$HSOP_K8S_BIN:$(dirname "$HSOP_HELM_BIN"):$PATH"
export PATH

# The real-client tests need network namespaces (root): say so now, not after 15 minutes.
e2e/netns.sh check

step "format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
(cd e2e && "$HSOP_SHELLCHECK_BIN" -x ./*.sh) && (cd charts/headscale-operator/ci && "$HSOP_SHELLCHECK_BIN" -x ./*.sh)

step "unit tests and CRD drift"
cargo build --quiet
cargo test --quiet --lib --bins --test crds --test render

step "chart checks (offline)"
bash charts/headscale-operator/ci/check.sh

RUN=$(mktemp -d /tmp/hsop-test.XXXXXX)
cleanup() {
  local rc=$?
  if [ "${HSOP_KEEP:-0}" = 1 ]; then
    log "kept: . $RUN/cluster/env; HSOP_E2E_DIR=$RUN cargo test --test e2e; stop with: e2e/operator.sh stop $RUN/operator; e2e/cluster.sh down $RUN/cluster"
  else
    e2e/operator.sh stop "$RUN/operator" 2>/dev/null || true
    e2e/cluster.sh down "$RUN/cluster" || true
    rm -rf "$RUN"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
owner=()
[ "${HSOP_KEEP:-0}" = 1 ] || owner=(--owner-pid $$)

step "rendered configs on the real Headscale (no cluster needed)"
HSOP_E2E_DIR=$RUN cargo test --test e2e_render -- --test-threads 4

step "control plane"
e2e/cluster.sh up "$RUN/cluster" "${owner[@]}"
# shellcheck disable=SC1091
. "$RUN/cluster/env"

step "chart on the cluster"
kubectl create namespace headscale-operator-system >/dev/null
helm template headscale-operator charts/headscale-operator --namespace headscale-operator-system |
  kubectl apply --dry-run=server -f - >/dev/null
helm install headscale-operator charts/headscale-operator --namespace headscale-operator-system \
  --create-namespace --wait --timeout 3m >/dev/null
kubectl -n headscale-operator-system get deploy,sa

step "operator (with the chart's RBAC)"
e2e/operator.sh start "$RUN/operator" "${owner[@]}" -- --resync-seconds 2 --max-backoff-seconds 4 --allow-endpoint-annotation --log-level info,headscale_operator=debug \
  --leader-election --leader-election-namespace headscale-operator-system

step "integration tests"
HSOP_E2E_DIR=$RUN cargo test --test e2e -- --test-threads 4
HSOP_E2E_DIR=$RUN cargo test --test e2e_policy -- --test-threads 4
HSOP_E2E_DIR=$RUN cargo test --test e2e_nodes -- --test-threads 4
HSOP_E2E_DIR=$RUN cargo test --test e2e_managed -- --test-threads 4
HSOP_E2E_DIR=$RUN cargo test --test e2e_dns -- --test-threads 4
HSOP_E2E_DIR=$RUN cargo test --test headscale_client -- --test-threads 2
HSOP_E2E_DIR=$RUN cargo test --test e2e_keyholder -- --test-threads 2
# Real Tailscale clients in network namespaces (root; no cluster needed). The versions run in
# parallel inside each test; the ephemeral-node test (about 80 s) sets the pace. --show-output
# prints the figures (wall time of starting 1 and 5 clients, offline and pruning delays).
HSOP_E2E_DIR=$RUN cargo test --test e2e_clients -- --test-threads 8 --show-output
# The nodes and policy controllers on real clients (operator, control plane and namespaces):
# interactive approval, a pre-approved key used, pruning around online nodes and a restart,
# merged AclPolicies on real traffic. The restart-grace test (about 2 min) sets the pace.
HSOP_E2E_DIR=$RUN cargo test --test e2e_real_nodes -- --test-threads 4 --show-output

step "done in $((SECONDS - t0))s"
