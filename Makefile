# The two ways in: `make demo` and `make test`. Everything else is a helper.
.PHONY: demo test tools crds fmt lint bench

demo:
	e2e/demo.sh

test:
	e2e/test.sh

tools:
	e2e/tools.sh ensure

# The client against a real Headscale with 1,000 fake nodes; prints figures. Not part of `make test`.
bench:
	e2e/tools.sh ensure >/dev/null
	eval "$$(e2e/tools.sh env)"; dir=$$(mktemp -d /tmp/hsop-bench.XXXXXX); \
	  HSOP_E2E_DIR=$$dir cargo bench --bench client; rc=$$?; rm -rf $$dir; exit $$rc

crds:
	cargo run --quiet -- crd --dir crds
	cp crds/*.yaml charts/headscale-operator/files/crds/

fmt:
	cargo fmt --all

lint:
	cargo clippy --all-targets -- -D warnings
