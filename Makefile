# quorumd: see README.md. `make cluster3` runs a local 3-node cluster in the
# foreground (Ctrl-C stops it); `make test` is what CI runs (.ci/run).

CARGO ?= cargo

# The release binary is built for the host triple explicitly, so that on
# linux-gnu it can be linked statically (crt-static) without affecting the
# proc-macros cargo builds for the host. A static quorumd maps no libc.so,
# libm.so or ld.so: about 1.3 MiB less resident memory per node, and one
# file to copy onto a device. It never resolves names (addresses are
# ip:port), so static glibc's NSS limits do not apply. (build.rs also drops
# the binary's unwind tables when it links: see there.)
TARGET := $(shell rustc -vV | sed -n 's/^host: //p')
ifneq (,$(findstring linux-gnu,$(TARGET)))
RELEASE_RUSTFLAGS := -C target-feature=+crt-static
endif
RELEASE_BIN := target/$(TARGET)/release/quorumd
export QUORUMD := $(CURDIR)/$(RELEASE_BIN)

.PHONY: all build deb cluster1 cluster3 cluster5 cluster3-tls clean-clusters bootstrap timeout shutdown test bench fuzz chaos chaos-deps ui-deps node-deps

all: build

build:
	RUSTFLAGS="$(RELEASE_RUSTFLAGS)" $(CARGO) build --release --target $(TARGET) -p quorumd

# target/debian/quorumd_<version>_<arch>.deb, from the static release binary,
# with Debian's dpkg-deb (scripts/deb.sh; README, "Deploying on a box").
deb: build
	scripts/deb.sh $(RELEASE_BIN)

# exec: the script, not an intermediate shell, gets Ctrl-C and waits for the
# nodes to shut down before make returns.
cluster1 cluster3 cluster5: build
	exec scripts/cluster.sh clusters/$@.toml

# The TLS cluster's certificates are generated (with `quorumd certs`) when
# `quorumd check` finds them missing or wrong; they live under target/.
TLS_CERTS := target/clusters/cluster3-tls/certs
cluster3-tls: build
	@if $(QUORUMD) check clusters/cluster3-tls.toml >/dev/null 2>&1; then \
		echo "certificates: $(TLS_CERTS)/ (kept; \`make clean-clusters\` makes new ones)"; \
	else \
		$(QUORUMD) certs --cluster clusters/cluster3-tls.toml --out $(TLS_CERTS) --force >/dev/null && \
		echo "certificates: wrote $(TLS_CERTS)/"; \
	fi
	@echo "  CA $(TLS_CERTS)/ca.pem; client pair $(TLS_CERTS)/client.pem, $(TLS_CERTS)/client.key"
	@echo "  e.g. curl --cacert $(TLS_CERTS)/ca.pem --cert $(TLS_CERTS)/client.pem --key $(TLS_CERTS)/client.key https://localhost:8121/admin/cluster/status"
	exec scripts/cluster.sh clusters/cluster3-tls.toml

# Deletes the local clusters' state (and the TLS cluster's certificates):
# the next `make cluster3` starts a new cluster. Stop the clusters first.
clean-clusters:
	rm -rf target/clusters

bootstrap timeout shutdown: build
	exec scripts/scenario.sh $@

# The chaos runner (tools/chaos) makes partitions and packet loss
# with iptables inside network namespaces; a fresh machine has `ip` but not
# `iptables`. CI runs as root, so this installs it there.
chaos-deps:
	@command -v iptables-restore >/dev/null 2>&1 || { \
		echo "installing iptables for the chaos runner"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null; }

# The dashboard's browser test (tests/ui.rs) drives Debian's headless
# Chromium through chromium-driver, and the README's examples
# (tests/readme.rs) use curl; a fresh machine may have none of them. CI
# runs as root, so this installs them there.
ui-deps:
	@{ command -v chromium && command -v chromedriver && command -v curl; } >/dev/null 2>&1 || { \
		echo "installing chromium, chromium-driver and curl for the dashboard's and the README's tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends chromium chromium-driver curl >/dev/null; }

# The npm `consul` client, for tests/acl.rs (Debian's nodejs and npm are
# installed first when missing; CI runs as root).
NODE_CONSUL := consul@2.0.1
node-deps:
	@command -v npm >/dev/null 2>&1 || { \
		echo "installing nodejs and npm for the ACL tests' npm consul client"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends nodejs npm >/dev/null; }
	@test -f target/node-consul/node_modules/consul/package.json || { \
		echo "installing $(NODE_CONSUL) into target/node-consul for the ACL tests"; \
		mkdir -p target/node-consul && npm install --prefix target/node-consul --no-audit \
			--no-fund --silent $(NODE_CONSUL); }

# `make chaos NODES=5 DURATION=30m SEED=42`, or any flags in CHAOS_ARGS
# (`target/release/quorumd-chaos run --help`). Needs root.
NODES ?= 3
DURATION ?= 60s
CHAOS_ARGS ?= --nodes $(NODES) --duration $(DURATION) $(if $(SEED),--seed $(SEED))
chaos: build chaos-deps
	$(CARGO) build --release -p quorumd-chaos
	target/release/quorumd-chaos run --quorumd $(RELEASE_BIN) $(CHAOS_ARGS)

# fmt, clippy, rustdoc and the tests must all be clean. The
# package is built before the tests (tests/package.rs reads it back and
# installs it into a scratch root), so a broken release build stops here.
# The workspace's default members are the node and tools/chaos, so this
# also runs the chaos unit tests and the ~1 minute chaos run (as root).
test: chaos-deps ui-deps node-deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --quiet
	$(MAKE) deb
	$(CARGO) test

# Each cargo-fuzz target for FUZZ_SECONDS (nightly toolchain; cargo-fuzz is
# installed if missing). Crash inputs land in fuzz/regressions/<target>/,
# which `make test` replays on stable (tests/fuzz_regressions.rs).
FUZZ_SECONDS ?= 60
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

# Every bench, on the release binary `make build` makes, the one that
# ships; `make bench BENCH=write` runs one of benches/ alone. The binary is
# copied aside: cargo builds one of its own for the benches at the same
# path, whose functions have other names (Rust's symbol hashes cover how
# cargo built it), so that the code layout of scripts/text-order.ld, which
# names them, applies to it only in part.
bench: build
	mkdir -p target/bench-bin && cp $(RELEASE_BIN) target/bench-bin/quorumd
	QUORUMD_BENCH_BIN=$(CURDIR)/target/bench-bin/quorumd RUSTFLAGS="$(RELEASE_RUSTFLAGS)" \
		$(CARGO) bench --target $(TARGET) -p quorumd $(if $(BENCH),--bench $(BENCH))
