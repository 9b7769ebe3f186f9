#!/usr/bin/env bash
# Installs the pinned Sockudo (the peer of `make bench-peers`) into target/peers/sockudo unless
# it is already there. Needs cmake and protoc (Debian: cmake protobuf-compiler libprotobuf-dev).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=5.2.0
PEERS="$ROOT/target/peers"
BIN="$PEERS/sockudo/bin/sockudo"
if [[ -x "$BIN" ]] && [[ "$(cat "$PEERS/sockudo/VERSION" 2>/dev/null)" == "$VERSION" ]]; then
    exit 0
fi
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
# protoc alone lacks the well-known types (google/protobuf/timestamp.proto) Sockudo's deps import.
[[ -f /usr/include/google/protobuf/timestamp.proto ]] || missing+=(libprotobuf-dev)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
            || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
    else
        echo "install-sockudo: needs: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
fi
mkdir -p "$PEERS"
echo "install-sockudo: building sockudo $VERSION (about 8 minutes on 2 cores)" >&2
CARGO_TARGET_DIR="${SOCKUDO_BUILD_DIR:-$PEERS/sockudo-build}" cargo install sockudo --version "=$VERSION" --locked \
    --root "$PEERS/sockudo" --features redis
echo "$VERSION" > "$PEERS/sockudo/VERSION"
