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
  "$work/venv/bin/pip" install --quiet 'websockets==17.4' # the version this check was written against
fi
cargo build --release --quiet -p switchyard -p switchyard-websocket
rm -rf "$work/plugins" && mkdir -p "$work/plugins"
cp "$root/target/release/libswitchyard_websocket.so" "$work/plugins/"
# shellcheck source=../scripts/start-daemon.sh
. "$root/tests/scripts/start-daemon.sh"
# A route to a TCP service the route script serves itself, on a port free a moment ago.
service_port=$("$work/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SWITCHYARD_WEBSOCKET_ROUTES="/svc=tcp://127.0.0.1:$service_port,/=echo"
start_daemon "$work/plugins"
curl -sf "http://$addr/healthz" | grep -qx ok
curl -s -o /dev/null -w '%{http_code}' "http://$addr/" | grep -qx 426
"$work/venv/bin/python" "$root/tests/interop/python_websockets.py" "ws://$addr/chat"
"$work/venv/bin/python" "$root/tests/interop/python_websockets_route.py" "ws://$addr/svc" "$service_port"
