#!/usr/bin/env bash
# The demo (`make demo`): builds what is missing, starts a local control plane and a real
# Headscale, installs the chart, runs the operator under the chart's ServiceAccount, applies
# examples/, waits until the HeadscaleServer and the two teams' AclPolicy fragments are Ready
# and shows what a user sees, including the merged policy Headscale serves.
#
#   e2e/demo.sh            run, show, stop everything on exit
#   e2e/demo.sh --keep     leave it running and print how to use and stop it
#   e2e/demo.sh --down     stop a kept demo
# State lives in $HSOP_DEMO_DIR (default /tmp/hsop-demo).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib.sh
. e2e/lib.sh
LOG_PREFIX=demo
DEMO=${HSOP_DEMO_DIR:-/tmp/hsop-demo}
NS=demo
t0=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - t0))"; }

down() {
  e2e/operator.sh stop "$DEMO/operator" 2>/dev/null || true
  e2e/headscale.sh stop "$DEMO/headscale" 2>/dev/null || true
  [ ! -d "$DEMO/cluster" ] || e2e/cluster.sh down "$DEMO/cluster" 2>/dev/null || true
}

keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  --down) down; rm -rf "$DEMO"; log "demo stopped"; exit 0 ;;
  "") ;;
  *) die "usage: $0 [--keep|--down]" ;;
esac

step "tools (cached in ~/.cache/headscale-operator; a cold machine builds them once)"
e2e/tools.sh ensure >/dev/null
eval "$(e2e/tools.sh env)"
PATH="$HSOP_K8S_BIN:$(dirname "$HSOP_HELM_BIN"):$PATH"
export PATH

step "build the operator (cargo build; the first build takes a few minutes)"
cargo build --quiet

# A demo left running from before is replaced.
[ ! -d "$DEMO" ] || { down; rm -rf "$DEMO"; }
mkdir -p "$DEMO"
owner=()
if [ "$keep" = 0 ]; then
  owner=(--owner-pid $$)
  trap 'down; rm -rf "$DEMO"' EXIT
  trap 'exit 130' INT TERM
fi

step "control plane: etcd, kube-apiserver, controller-manager, scheduler, KWOK on 127.0.0.1"
e2e/cluster.sh up "$DEMO/cluster" "${owner[@]}"
# shellcheck disable=SC1091
. "$DEMO/cluster/env"

step "a real Headscale $HSOP_HEADSCALE_DEMO_VERSION on 127.0.0.1"
e2e/headscale.sh start "$DEMO/headscale" "$HSOP_HEADSCALE_DEMO_VERSION" "${owner[@]}"
url=$(cat "$DEMO/headscale/url")

step "helm install headscale-operator"
helm install headscale-operator charts/headscale-operator --namespace headscale-operator-system \
  --create-namespace --wait --timeout 3m

step "the operator, with the chart's RBAC and leader election"
e2e/operator.sh start "$DEMO/operator" "${owner[@]}" -- \
  --leader-election --leader-election-namespace headscale-operator-system

step "kubectl apply examples/ (an API-key Secret and an external HeadscaleServer)"
kubectl create namespace "$NS"
kubectl -n "$NS" create secret generic headscale-api-key --from-file=api-key="$DEMO/headscale/api-key"
sed "s#url: http://127.0.0.1:8080#url: $url#" examples/external-server.yaml | kubectl -n "$NS" apply -f -
kubectl -n "$NS" wait --for=condition=Ready headscaleserver/corp --timeout=90s

step "kubectl apply examples/acl-team-*.yaml (two teams' AclPolicy fragments for corp)"
kubectl -n "$NS" apply -f examples/acl-team-platform.yaml -f examples/acl-team-web.yaml
kubectl -n "$NS" wait --for=condition=Ready aclpolicy/team-platform aclpolicy/team-web --timeout=60s

step "node enrollment: approve an interactive registration, pre-approve a key (examples/node-approvals.yaml)"
hsbin=""
for e in $HSOP_HEADSCALE_BINS; do [ "${e%%=*}" = "$HSOP_HEADSCALE_DEMO_VERSION" ] && hsbin=${e#*=}; done
hscli() { "$hsbin" -c "$DEMO/headscale/config.yaml" "$@"; }
hscli users create alice >/dev/null
# What `tailscale up` without a key leaves behind, simulated with Headscale's fake-node facility.
auth_id="hskey-authreq-$(head -c 200 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 24)"
hscli debug create-node --user alice --name alice-laptop --key "$auth_id" >/dev/null
sed "s#hskey-authreq-REPLACEWITHTHEPRINTEDID#$auth_id#" examples/node-approvals.yaml | kubectl -n "$NS" apply -f -
kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Approved nodeapproval/alice-laptop --timeout=60s
kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=KeyIssued nodeapproval/build-runner --timeout=60s

step "audit: a node nobody approved, and stale nodes pruning would delete (dry run)"
# Registered by hand behind the operator's back; fake nodes are never online.
auth_id="hskey-authreq-$(head -c 200 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 24)"
hscli debug create-node --user alice --name rogue --key "$auth_id" >/dev/null
hscli auth register --user alice --auth-id "$auth_id" >/dev/null
kubectl -n "$NS" patch headscaleserver corp --type merge -p \
  '{"spec":{"nodes":{"pruning":{"enabled":true,"dryRun":true,"staleAfter":"10s","restartGrace":"0s"}}}}'
# A node is judged 15 s after it registered (its approval may still be writing its status).
kubectl -n "$NS" wait --for=jsonpath='{.status.nodes.unexpected}'=1 headscaleserver/corp --timeout=60s
kubectl -n "$NS" wait --for=jsonpath='{.status.nodes.stale}'=2 headscaleserver/corp --timeout=60s

step "a managed server (examples/managed-server.yaml): the operator runs Headscale; KWOK plays the kubelet"
kubectl apply -f - >/dev/null <<EOF2
apiVersion: v1
kind: PersistentVolume
metadata: {name: demo-local-edge}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: demo-local
  hostPath: {path: /tmp/demo-local-edge}
EOF2
kubectl -n "$NS" apply -f examples/managed-server.yaml
# The StatefulSet controller creates the pod a moment after the operator's apply.
kubectl -n "$NS" wait --for=create pod/edge-0 --timeout=90s
kubectl -n "$NS" wait --for=condition=Ready pod/edge-0 --timeout=90s
# KWOK runs no containers, so no keyholder mints the API key: the server waits for it.
kubectl -n "$NS" wait --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=ApiKeyPending \
  headscaleserver/edge --timeout=60s

step "its DNS (examples/dns-config.yaml): split DNS and extra records; then a record changes without a restart"
kubectl -n "$NS" apply -f examples/dns-config.yaml
kubectl -n "$NS" wait --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=Applied \
  dnsconfig/edge-dns --timeout=60s
# The DNS settings rolled the pod once; wait until the new pod runs them.
kubectl -n "$NS" rollout status statefulset/edge --timeout=90s
kubectl -n "$NS" wait --for=condition=Ready pod/edge-0 --timeout=90s
uid_before=$(kubectl -n "$NS" get pod edge-0 -o jsonpath='{.metadata.uid}')
gen_before=$(kubectl -n "$NS" get statefulset edge -o jsonpath='{.metadata.generation}')
records_before=$(kubectl -n "$NS" get configmap edge-dns-records -o jsonpath='{.data.extra-records\.json}')
kubectl -n "$NS" patch dnsconfig edge-dns --type merge -p \
  '{"spec":{"extraRecords":[{"name":"grafana.tailnet.example.com","type":"A","value":"100.64.0.11"}]}}'
for _ in $(seq 1 60); do
  records_after=$(kubectl -n "$NS" get configmap edge-dns-records -o jsonpath='{.data.extra-records\.json}')
  [ "$records_after" = "$records_before" ] || break
  sleep 0.5
done
sleep 3 # a resync or two: nothing else may move
uid_after=$(kubectl -n "$NS" get pod edge-0 -o jsonpath='{.metadata.uid}')
gen_after=$(kubectl -n "$NS" get statefulset edge -o jsonpath='{.metadata.generation}')
printf 'records ConfigMap edge-dns-records before:\n%s\nafter:\n%s\n' "$records_before" "$records_after"
echo "pod edge-0 uid before $uid_before, after $uid_after; StatefulSet generation before $gen_before, after $gen_after"
[ "$records_after" != "$records_before" ] || die "the records ConfigMap did not change"
[ "$uid_after" = "$uid_before" ] && [ "$gen_after" = "$gen_before" ] || die "a records change restarted the pod"

step "what a user sees"
kubectl -n "$NS" get headscaleservers -o wide
echo
kubectl -n "$NS" get headscaleserver corp -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo
echo "What the operator generated for the managed server edge (no key in the ConfigMap):"
kubectl -n "$NS" get statefulset,pod,service,networkpolicy,configmap,secret,serviceaccount,role,rolebinding,pvc \
  -l app.kubernetes.io/instance=edge 2>/dev/null || true
kubectl -n "$NS" get pvc data-edge-0
kubectl -n "$NS" get headscaleserver edge -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo
kubectl -n "$NS" get dnsconfigs -o wide
echo "status.dns of edge (leakProtection: clients use the tailnet's resolvers only):"
kubectl -n "$NS" get headscaleserver edge -o jsonpath='{.status.dns}' | python3 -m json.tool
echo
kubectl -n "$NS" get events --field-selector involvedObject.name=corp
echo
kubectl -n "$NS" get aclpolicies -o wide
echo
kubectl -n "$NS" get events --field-selector involvedObject.kind=AclPolicy
echo
kubectl -n "$NS" get nodeapprovals -o wide
echo
echo "status.nodes of corp (the audit; the pre-auth key itself is only in its Secret):"
kubectl -n "$NS" get headscaleserver corp -o jsonpath='{.status.nodes}' | python3 -m json.tool
echo
kubectl -n "$NS" get events --field-selector involvedObject.kind=NodeApproval
echo
kubectl -n "$NS" get events --field-selector reason=UnexpectedNode
echo
echo "Headscale's own list of nodes (headscale nodes list):"
hscli nodes list -o json | python3 -c '
import json, sys
for n in json.load(sys.stdin):
    user = (n.get("user") or {}).get("name")
    print("  id", n.get("id"), n.get("name"), "user", user, "online", n.get("online", False))'
echo
echo "Headscale itself says: $(curl -s "$url/version")"
echo
echo "The merged policy Headscale serves (GET /api/v1/policy):"
# The key goes in a header read from a pipe: never on a command line, never printed.
printf 'Authorization: Bearer %s\n' "$(cat "$DEMO/headscale/api-key")" |
  curl -sf -H @- "$url/api/v1/policy" | python3 -c 'import json, sys; print(json.load(sys.stdin)["policy"])'

step "demo ready in $((SECONDS - t0))s"
if [ "$keep" = 1 ]; then
  cat <<EOF2
Everything keeps running. To look around:
  . $DEMO/cluster/env          # KUBECONFIG and friends
  export PATH=$HSOP_K8S_BIN:\$PATH
  kubectl -n $NS get hss,hsacl,hsdns,hsna -o wide
  curl $(cat "$DEMO/operator/operator.url")/metrics
  tail -f $DEMO/operator/operator.log
Stop it all with: e2e/demo.sh --down
EOF2
fi
