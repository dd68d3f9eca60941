# The two ways in: `make demo` and `make test`. Everything else is a helper.
.PHONY: demo test tools crds fmt lint bench

demo:
	e2e/demo.sh

test:
	e2e/test.sh

tools:
	e2e/tools.sh ensure

# Benchmarks against real parts; they print figures. Not part of `make test`.
#   client: the Headscale client against a real Headscale with 1,000 fake nodes.
#   nodes:  the node audit (wall time, CPU, API calls) at 1, 1,000 and 10,000 nodes.
#   policy: kubectl apply of a changed AclPolicy -> served by Headscale, 50 fragments on
#           5 servers, with its own control plane, chart and operator (p50/p99, API calls).
bench:
	e2e/tools.sh ensure >/dev/null
	cargo build --quiet
	eval "$$(e2e/tools.sh env)"; dir=$$(mktemp -d /tmp/hsop-bench.XXXXXX); \
	  HSOP_E2E_DIR=$$dir cargo bench --bench client; rc=$$?; rm -rf $$dir; [ $$rc = 0 ] || exit $$rc; \
	  dir=$$(mktemp -d /tmp/hsop-bench.XXXXXX); \
	  HSOP_E2E_DIR=$$dir HSOP_HEADSCALE_WAIT_SECONDS=900 cargo bench --bench nodes; rc=$$?; for d in $$dir/hs-*; do e2e/headscale.sh stop $$d; done; \
	  rm -rf $$dir; [ $$rc = 0 ] || exit $$rc; \
	  dir=$$(mktemp -d /tmp/hsop-bench.XXXXXX); \
	  HSOP_E2E_DIR=$$dir cargo bench --bench policy; rc=$$?; \
	  for d in $$dir/hs-*; do e2e/headscale.sh stop $$d; done; e2e/operator.sh stop $$dir/operator; \
	  e2e/cluster.sh down $$dir/cluster; rm -rf $$dir; exit $$rc

crds:
	cargo run --quiet -- crd --dir crds
	cp crds/*.yaml charts/headscale-operator/files/crds/

fmt:
	cargo fmt --all

lint:
	cargo clippy --all-targets -- -D warnings
