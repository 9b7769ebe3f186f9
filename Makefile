# pushlite developer commands. `make run` needs nothing installed; `make test` brings its own
# Postgres and Redis when DATABASE_URL / REDIS_URL do not reach running servers.

CARGO ?= cargo
RUN_DIR ?= target/run

.PHONY: run build test lint fmt bench js-deps

## One node on 127.0.0.1:4000, SQLite registry in target/run, in-process bus, seeded test app.
run: build
	mkdir -p $(RUN_DIR)
	cd $(RUN_DIR) && ../debug/pushlite seed >/dev/null && exec ../debug/pushlite serve

build:
	$(CARGO) build --bin pushlite

## The whole suite against real Postgres and Redis.
test: js-deps
	$(CARGO) build --tests --bins
	scripts/with-test-services.sh $(CARGO) test --lib --bins --tests

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt

## Benchmarks (release build); numbers go to the README.
bench:
	$(CARGO) bench --bench fanout
	$(CARGO) bench --bench cross_node

## The official phoenix client and friends for the end-to-end test.
js-deps:
	cd tests/js && npm ci --no-audit --no-fund --silent
