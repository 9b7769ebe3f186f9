#!/usr/bin/env bash
# Runs a command with DATABASE_URL (Postgres) and REDIS_URL (Redis) pointing at real servers.
# Uses the given URLs when they answer; otherwise starts throwaway instances on free loopback
# ports under target/test-services and removes them on exit. Installs the server packages on
# Debian when they are missing and we are root; otherwise prints the command that would.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK="$ROOT/target/test-services/$$"
PG_DIR=""
PG_CTL=""
RUN_AS=()
REDIS_PID=""

log() { echo "test-services: $*" >&2; }

cleanup() {
    if [[ -n "$REDIS_PID" ]]; then kill "$REDIS_PID" 2>/dev/null || true; fi
    if [[ -n "$PG_DIR" ]]; then "${RUN_AS[@]}" "$PG_CTL" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

need_packages() {
    local missing=("$@")
    if [[ ${#missing[@]} -eq 0 ]]; then return; fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
    else
        log "missing servers; install them with: sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
}

find_pg_bin() {
    local bin
    bin=$(command -v "$1" 2>/dev/null || ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1 || true)
    echo "$bin"
}

pg_reachable() { [[ -n "${1:-}" ]] && psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }
redis_reachable() { [[ -n "${1:-}" ]] && redis-cli -u "$1" ping 2>/dev/null | grep -q PONG; }

packages=()
[[ -n "$(find_pg_bin initdb)" ]] || packages+=(postgresql)
command -v redis-server >/dev/null || packages+=(redis-server)
if ! { pg_reachable "${DATABASE_URL:-}" && redis_reachable "${REDIS_URL:-}"; }; then
    need_packages "${packages[@]}"
fi

mkdir -p "$WORK"

if pg_reachable "${DATABASE_URL:-}"; then
    log "using Postgres at the given DATABASE_URL"
else
    PG_DIR="$WORK/pg"
    PG_CTL=$(find_pg_bin pg_ctl)
    INITDB=$(find_pg_bin initdb)
    mkdir -p "$PG_DIR"
    if [[ $(id -u) -eq 0 ]]; then
        # initdb refuses to run as root
        user=postgres; id "$user" >/dev/null 2>&1 || user=nobody
        chown -R "$user" "$PG_DIR"
        chmod o+x "$ROOT/target" "$ROOT/target/test-services" "$WORK" 2>/dev/null || true
        RUN_AS=(runuser -u "$user" --)
    fi
    port=$(free_port)
    "${RUN_AS[@]}" "$INITDB" -D "$PG_DIR/data" -A trust -U postgres --no-sync >/dev/null
    "${RUN_AS[@]}" "$PG_CTL" -D "$PG_DIR/data" -l "$PG_DIR/log" -w start \
        -o "-p $port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=500" >/dev/null
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    log "started Postgres on 127.0.0.1:$port"
fi

if redis_reachable "${REDIS_URL:-}"; then
    log "using Redis at the given REDIS_URL"
else
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$WORK" --logfile "$WORK/redis.log" &
    REDIS_PID=$!
    for _ in $(seq 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    export REDIS_URL="redis://127.0.0.1:$port"
    log "started Redis on 127.0.0.1:$port"
fi

"$@"
