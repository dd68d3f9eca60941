#!/usr/bin/env bash
# Offline checks of the headscale-operator chart: lint, renders of each switch, RBAC and pod
# security invariants, schema rejections, and the CRD copies in files/crds/.
#
#   charts/headscale-operator/ci/check.sh
#
# Helm comes from $HSOP_HELM_BIN (set by `eval "$(e2e/tools.sh env)"`); when it is unset the
# path is taken from e2e/tools.sh env, which only prints paths and builds nothing.
# Optional: kubernetes-validate on PATH (PyPI kubernetes-validate==1.37.0) adds a strict
# schema check of the rendered core objects.
# Prints one line per check and "N passed, N failed"; exits non-zero when any check failed.
set -uo pipefail

chart=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
repo=$(cd "$chart/../.." && pwd)
kube_version=1.37.2
crd_names="headscaleservers aclpolicies dnsconfigs nodeapprovals"

if [ -z "${HSOP_HELM_BIN:-}" ] && [ -x "$repo/e2e/tools.sh" ]; then
  eval "$("$repo/e2e/tools.sh" env)"
fi
helm=${HSOP_HELM_BIN:-}
if [ -z "$helm" ] || [ ! -x "$helm" ]; then
  echo "helm not found at '${helm}': run e2e/tools.sh ensure first" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
fail() {
  failed=$((failed + 1)); printf 'FAIL %s\n' "$1"
  [ -n "${2:-}" ] && while IFS= read -r line; do printf '     | %s\n' "$line"; done <<<"$2"
  return 0
}
# check NAME COMMAND...: runs the command, passes when it exits 0.
check() {
  local name=$1 out; shift
  if out=$("$@" 2>&1); then ok "$name"; else fail "$name" "$out"; fi
}
# count FILE REGEX: number of lines matching.
count() { grep -cE -- "$2" "$1" || true; }
expect_count() { # NAME FILE REGEX N
  local n; n=$(count "$2" "$3")
  if [ "$n" -eq "$4" ]; then ok "$1"; else fail "$1" "expected $4 lines matching /$3/, found $n"; fi
}
render() { # OUT ARGS...: helm template into OUT
  local out=$1; shift
  "$helm" template t "$chart" --namespace hsop-system --kube-version "$kube_version" "$@" >"$out"
}

echo "chart: $chart"
echo "helm:  $("$helm" version --short 2>/dev/null || echo "$helm")"
echo

# --- lint --------------------------------------------------------------------------------
check "helm lint --strict (defaults)" "$helm" lint --strict --kube-version "$kube_version" "$chart"
check "helm lint --strict (ci/all-on-values.yaml)" \
  "$helm" lint --strict --kube-version "$kube_version" -f "$chart/ci/all-on-values.yaml" "$chart"

# --- default render ----------------------------------------------------------------------
d=$work/default.yaml
if check "helm template (defaults)" render "$d"; then
  expect_count "defaults: 4 CustomResourceDefinitions" "$d" '^kind: CustomResourceDefinition$' 4
  expect_count "defaults: CRDs carry helm.sh/resource-policy: keep" "$d" '^    helm.sh/resource-policy: keep$' 4
  for name in $crd_names; do
    expect_count "defaults: CRD $name.headscale.operator.dev rendered" "$d" "^  name: $name\.headscale\.operator\.dev$" 1
  done
  for kind in ServiceAccount ClusterRole ClusterRoleBinding Role RoleBinding Service Deployment; do
    expect_count "defaults: one $kind" "$d" "^kind: $kind$" 1
  done
  expect_count "defaults: no ServiceMonitor" "$d" '^kind: ServiceMonitor$' 0
  # Who may approve nodes: the admission policy for NodeApprovals, on by default.
  expect_count "defaults: one ValidatingAdmissionPolicy (node approvers)" "$d" '^kind: ValidatingAdmissionPolicy$' 1
  expect_count "defaults: one ValidatingAdmissionPolicyBinding (Deny)" "$d" '^  validationActions: \["Deny"\]$' 1
  expect_count "defaults: approver groups headscale-approvers, system:masters" "$d" 'g in \["headscale-approvers","system:masters"\]' 1
  expect_count "defaults: no NetworkPolicy" "$d" '^kind: NetworkPolicy$' 0
  # RBAC: no wildcard, no pods/exec, Secrets read-only (comments aside).
  grep -vE '^[[:space:]]*#' "$d" >"$work/default-nocomments.yaml"
  expect_count "rbac: no wildcard verbs, resources or groups" "$work/default-nocomments.yaml" '"\*"|'"'"'\*'"'"'|- \*$' 0
  expect_count "rbac: no pods/exec" "$work/default-nocomments.yaml" 'pods/exec' 0
  # Managed servers' children are garbage-collected through owner references.
  expect_count "rbac: no deletecollection, bind, escalate or impersonate" "$work/default-nocomments.yaml" \
    '"(deletecollection|bind|escalate|impersonate)"' 0
  expect_count "rbac: delete only for ingresses and networkpolicies (a managed server's dropped ones)" \
    "$work/default-nocomments.yaml" '"delete"' 1
  if grep -A1 'resources: \["ingresses", "networkpolicies"\]' "$d" |
    grep -q 'verbs: \["get", "list", "watch", "create", "patch", "delete"\]'; then
    ok "rbac: the delete rule is the ingresses and networkpolicies rule"
  else
    fail "rbac: the delete rule is the ingresses and networkpolicies rule" "$(grep -B1 -A2 '"delete"' "$d")"
  fi
  expect_count "rbac: networkpolicies only in that rule" "$work/default-nocomments.yaml" 'networkpolicies' 1
  expect_count "rbac: the keyholder image is the operator's" "$d" '^ +- name: HSOP_KEYHOLDER_IMAGE$' 1
  # Secrets: read (API keys), and create/patch only (pre-auth keys of NodeApprovals,
  # garbage-collected with their owner): never update, never delete.
  secret_verbs=$(grep -A1 'resources: \["secrets"\]' "$d" | grep 'verbs:' | sed 's/^ *//' | sort | tr '\n' ' ')
  if [ "$secret_verbs" = 'verbs: ["create", "patch"] verbs: ["get", "list", "watch"] ' ]; then
    ok "rbac: secrets verbs are exactly get, list, watch + create, patch"
  else
    fail "rbac: secrets verbs are exactly get, list, watch + create, patch" "$secret_verbs"
  fi
  if grep -A1 'resources: \["configmaps"\]' "$d" | grep -q 'verbs: \["get", "list", "watch"\]'; then
    ok "rbac: configmaps verbs are exactly get, list, watch (AclPolicy configMapRef)"
  else
    fail "rbac: configmaps verbs are exactly get, list, watch (AclPolicy configMapRef)" "$(grep -A1 configmaps "$d")"
  fi
  # update outside the lease (its own rule, by name): the status subresources, and a replace
  # that removes fields someone added, only on the StatefulSet and the Service.
  update_rules=$(grep -B1 -E '^    verbs: \[.*"update"' "$work/default-nocomments.yaml" | grep -E '^    resources:' |
    sed 's/^ *//' | sort | tr '\n' ' ')
  want='resources: ["headscaleservers/status", "aclpolicies/status", "dnsconfigs/status", "nodeapprovals/status"] '
  want+='resources: ["services"] resources: ["statefulsets"] '
  if [ "$update_rules" = "$want" ]; then
    ok "rbac: update only for the statuses, statefulsets and services"
  else
    fail "rbac: update only for the statuses, statefulsets and services" "$update_rules"
  fi
  expect_count "rbac: lease get/update restricted by resourceNames" "$d" '^    resourceNames: \["headscale-operator"\]$' 1
  # Pod and container security.
  expect_count "deployment: strategy Recreate" "$d" '^    type: Recreate$' 1
  expect_count "deployment: replicas 1" "$d" '^  replicas: 1$' 1
  expect_count "deployment: args [run]" "$d" '^ +args: \["run"\]$' 1
  expect_count "deployment: runAsNonRoot (pod and container)" "$d" '^ +runAsNonRoot: true$' 2
  expect_count "deployment: runAsUser 65532 (pod and container)" "$d" '^ +runAsUser: 65532$' 2
  expect_count "deployment: seccompProfile RuntimeDefault (pod and container)" "$d" '^ +type: RuntimeDefault$' 2
  expect_count "deployment: readOnlyRootFilesystem" "$d" '^ +readOnlyRootFilesystem: true$' 1
  expect_count "deployment: allowPrivilegeEscalation false" "$d" '^ +allowPrivilegeEscalation: false$' 1
  expect_count "deployment: capabilities drop ALL" "$d" '^ +- ALL$' 1
  expect_count "deployment: automountServiceAccountToken (SA and pod)" "$d" 'automountServiceAccountToken: true$' 2
  expect_count "deployment: liveness /healthz and readiness /readyz" "$d" '^ +path: /(healthz|readyz)$' 2
  expect_count "deployment: image tag defaults to appVersion" "$d" \
    "^ +image: \".*:$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$chart/Chart.yaml")\"$" 1
  expect_count "ports: http-metrics on the container and the Service" "$d" '^ +- name: http-metrics$' 2
  expect_count "service: port 8080" "$d" '^      port: 8080$' 1
  expect_count "labels: app.kubernetes.io/part-of on every object" "$d" 'app.kubernetes.io/part-of: headscale-operator' \
    "$(( $(count "$d" '^kind: ') + 1 ))" # +1: the pod template
fi

# --- the switches ------------------------------------------------------------------------
s=$work/switched.yaml
if check "helm template (crds.install=false crds.keep=false serviceMonitor.enabled=true networkPolicy.enabled=true)" \
  render "$s" --set crds.install=false,crds.keep=false,serviceMonitor.enabled=true,networkPolicy.enabled=true; then
  expect_count "switched: no CustomResourceDefinition" "$s" '^kind: CustomResourceDefinition$' 0
  expect_count "switched: one ServiceMonitor" "$s" '^kind: ServiceMonitor$' 1
  expect_count "switched: ServiceMonitor is monitoring.coreos.com/v1" "$s" '^apiVersion: monitoring.coreos.com/v1$' 1
  expect_count "switched: one NetworkPolicy" "$s" '^kind: NetworkPolicy$' 1
fi
k=$work/nokeep.yaml
if check "helm template (crds.keep=false)" render "$k" --set crds.keep=false; then
  expect_count "crds.keep=false: 4 CRDs" "$k" '^kind: CustomResourceDefinition$' 4
  expect_count "crds.keep=false: no resource-policy annotation" "$k" 'helm.sh/resource-policy' 0
fi
a=$work/all-on.yaml
if check "helm template (ci/all-on-values.yaml)" render "$a" -f "$chart/ci/all-on-values.yaml"; then
  expect_count "all-on: watchNamespace binds with a RoleBinding, no ClusterRoleBinding" "$a" '^kind: ClusterRoleBinding$' 0
  expect_count "all-on: RoleBinding in the watched namespace" "$a" '^  namespace: tenants$' 1
  expect_count "all-on: NetworkPolicy restricts egress" "$a" '^    - Egress$' 1
  expect_count "all-on: image pinned by digest" "$a" '^ +image: ".*@sha256:[0-9a-f]{64}"$' 1
  expect_count "all-on: probe address follows probePort" "$a" '^ +value: "0\.0\.0\.0:9090"$' 1
fi

# --- optional strict schema check of the core objects --------------------------------------
if command -v kubernetes-validate >/dev/null 2>&1; then
  for f in "$d" "$s" "$a"; do
    # ServiceMonitor has no bundled schema; kubernetes-validate only warns about it.
    check "kubernetes-validate --strict $(basename "$f")" kubernetes-validate -k "${kube_version%.*}.0" --strict "$f"
  done
else
  echo "skip kubernetes-validate (not on PATH)"
fi

# --- values the schema must reject ---------------------------------------------------------
reject() { # NAME EXPECTED_MESSAGE_REGEX VALUES_YAML
  local out
  printf '%s\n' "$3" >"$work/bad.yaml"
  if out=$("$helm" template t "$chart" --kube-version "$kube_version" -f "$work/bad.yaml" 2>&1); then
    fail "$1" "accepted: $3"
  elif grep -qE -- "$2" <<<"$out"; then
    ok "$1: $(grep -E -- "$2" <<<"$out" | head -1 | sed 's/^[- ]*//')"
  else
    fail "$1" "$out"
  fi
}
reject "schema rejects replicaCount: \"x\"" "/replicaCount.*want integer" 'replicaCount: "x"'
reject "schema rejects an unknown top-level key" "additional properties 'replicas' not allowed" 'replicas: 2'
reject "schema rejects an unknown nested key" "additional properties 'kepp' not allowed" 'crds: {install: true, keep: true, kepp: true}'
reject "schema rejects logging.format: xml" "/logging/format" 'logging: {format: xml, level: info}'
reject "schema rejects a string crds.install" "/crds/install" 'crds: {install: "yes", keep: true}'
reject "schema rejects probePort 70000" "/probePort" 'probePort: 70000'
reject "template rejects egress without apiServerCidrs" "apiServerCidrs" \
  'networkPolicy: {enabled: true, egress: {enabled: true}}'

# --- the CRD copies ------------------------------------------------------------------------
for name in $crd_names; do
  f="files/crds/$name.headscale.operator.dev.yaml"
  if [ ! -f "$chart/$f" ]; then
    fail "$f exists"
  elif [ -d "$repo/crds" ]; then
    if cmp -s "$repo/crds/$name.headscale.operator.dev.yaml" "$chart/$f"; then
      ok "$f is byte-identical to crds/$name.headscale.operator.dev.yaml"
    else
      fail "$f is byte-identical to crds/$name.headscale.operator.dev.yaml" \
        "$(diff "$repo/crds/$name.headscale.operator.dev.yaml" "$chart/$f" 2>&1 | head -20)"
    fi
  else
    ok "$f exists (crds/ not generated yet: comparison skipped)"
  fi
done
# Helm's fromYaml (and kubectl) read YAML 1.1, where unquoted y/n/yes/no/on/off are booleans;
# a YAML 1.2 writer (serde_yaml) leaves them unquoted, so an enum value "off" would become false.
b='(y|Y|n|N|yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)'
yaml11=$(grep -nE "^[[:space:]]*(- )?${b}(:([[:space:]]|\$)|[[:space:]]*\$)|:[[:space:]]+${b}[[:space:]]*\$" \
  "$chart"/files/crds/*.yaml || true)
if [ -z "$yaml11" ]; then
  ok "files/crds: no unquoted YAML 1.1 booleans (y/n/yes/no/on/off)"
else
  fail "files/crds: no unquoted YAML 1.1 booleans (y/n/yes/no/on/off)" "$yaml11"
fi

echo
echo "chart: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
