#!/usr/bin/env bash
# Plugins that describe themselves, checked with the tools operators use (issue 24): the
# daemon with every reference plugin and the C plugin, clients doing known things, then
# /metrics read by Prometheus's own Python parser (prometheus_client), /status.json, and
# the status page in headless Chromium, its numbers checked against the JSON and a
# screenshot kept in target/status/status.png.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/status"
mkdir -p "$work"
# shellcheck source=../scripts/python-env.sh
. "$root/tests/scripts/python-env.sh"
# Pinned: the versions this check was written against.
python_env "$work" 'websockets==17.4' 'prometheus_client==0.26.0'
cargo build --release --quiet -p switchyard -p switchyard-websocket -p switchyard-tunnel \
  -p switchyard-h2c -p switchyard-echo
rm -rf "$work/plugins" && mkdir -p "$work/plugins"
for plugin in websocket tunnel h2c echo; do
  cp "$root/target/release/libswitchyard_$plugin.so" "$work/plugins/"
done
"${CC:-cc}" -std=c11 -Wall -Werror -O2 -fPIC -shared -I "$root/protocol-api/include" \
  "$root/tests/c/echo_plugin.c" -o "$work/plugins/libc_echo.so"
chromium=$(command -v chromium || true)
[ -n "$chromium" ] || { echo "chromium is not installed (.ci/run installs it)" >&2; exit 1; }
closed=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SWITCHYARD_WEBSOCKET_ROUTES="/down=tcp://127.0.0.1:$closed,/=echo"
export SWITCHYARD_TUNNEL_ROUTES="/db=127.0.0.1:$closed"
export SWITCHYARD_C_ECHO_GREETING="hello"
export SWITCHYARD_ACCESS_LOG=json
# shellcheck source=../scripts/start-daemon.sh
. "$root/tests/scripts/start-daemon.sh"
start_daemon "$work/plugins"
rm -f "$work/status.png"
SCREENSHOT="$work/status.png" "$py" "$root/tests/status/check.py" "$addr" "$chromium" \
  "$root/tests/scripts/chromium_page.py" "$daemon_log"
[ -s "$work/status.png" ] || { echo "no screenshot" >&2; exit 1; }
echo "status page screenshot: $work/status.png"
