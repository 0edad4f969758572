#!/usr/bin/env bash
# Interop with real third-party clients: Python's `websockets` (from PyPI, in a virtualenv
# under target/interop) against the daemon with the WebSocket plugin, and curl against
# /healthz and the 426.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/interop"
mkdir -p "$work"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install --quiet 'websockets>=12'
fi
cargo build --release --quiet -p switchyard -p switchyard-websocket
rm -rf "$work/plugins" && mkdir -p "$work/plugins"
cp "$root/target/release/libswitchyard_websocket.so" "$work/plugins/"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SWITCHYARD_LISTEN="127.0.0.1:$port" SWITCHYARD_PLUGIN_DIR="$work/plugins" RUST_LOG=warn \
  "$root/target/release/switchyard" &
daemon=$!
trap 'kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break
  sleep 0.05
done
curl -sf "http://127.0.0.1:$port/healthz" | grep -qx ok
curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" | grep -qx 426
"$work/venv/bin/python" "$root/tests/interop/python_websockets.py" "ws://127.0.0.1:$port/chat"
