# quorumd: see README.md. `make cluster3` runs a local 3-node cluster in the
# foreground (Ctrl-C stops it); `make test` is what CI runs (.ci/run).

CARGO ?= cargo

.PHONY: all build cluster1 cluster3 cluster5 bootstrap timeout shutdown test bench

all: build

build:
	$(CARGO) build --release

# exec: the script, not an intermediate shell, gets Ctrl-C and waits for the
# nodes to shut down before make returns.
cluster1 cluster3 cluster5: build
	exec scripts/cluster.sh clusters/$@.toml

bootstrap timeout shutdown: build
	exec scripts/scenario.sh $@

# fmt, clippy, rustdoc and the tests must all be clean (STYLE.md).
test:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --quiet
	$(CARGO) test

bench:
	$(CARGO) bench
