#!/usr/bin/env bash
# Interop with real third-party clients: Python's `websockets` (from PyPI, in a virtualenv
# under target/interop) against the daemon with the WebSocket plugin, and curl against
# /healthz and the 426.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/interop"
mkdir -p "$work"
# shellcheck source=../scripts/python-env.sh
. "$root/tests/scripts/python-env.sh"
# Pinned: the versions this check was written against.
python_env "$work" 'websockets==17.4'
cargo build --release --quiet -p switchyard -p switchyard-websocket
rm -rf "$work/plugins" && mkdir -p "$work/plugins"
cp "$root/target/release/libswitchyard_websocket.so" "$work/plugins/"
# shellcheck source=../scripts/start-daemon.sh
. "$root/tests/scripts/start-daemon.sh"
# A route to a TCP service the route script serves itself, on a port free a moment ago.
service_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SWITCHYARD_WEBSOCKET_ROUTES="/svc=tcp://127.0.0.1:$service_port,/=echo"
start_daemon "$work/plugins"
curl -sf "http://$addr/healthz" | grep -qx ok
curl -s -o /dev/null -w '%{http_code}' "http://$addr/" | grep -qx 426
"$py" "$root/tests/interop/python_websockets.py" "ws://$addr/chat"
"$py" "$root/tests/interop/python_websockets_route.py" "ws://$addr/svc" "$service_port"
