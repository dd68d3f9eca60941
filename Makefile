# The two ways in: `make demo` and `make test`. Everything else is a helper.
.PHONY: demo test tools crds fmt lint

demo:
	e2e/demo.sh

test:
	e2e/test.sh

tools:
	e2e/tools.sh ensure

crds:
	cargo run --quiet -- crd --dir crds
	cp crds/*.yaml charts/headscale-operator/files/crds/

fmt:
	cargo fmt --all

lint:
	cargo clippy --all-targets -- -D warnings
