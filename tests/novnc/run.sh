#!/usr/bin/env bash
# noVNC as its users run it, end to end: Debian's novnc page served by the daemon itself
# (SWITCHYARD_STATIC_ROUTES=/=/usr/share/novnc), its WebSocket on the same port bridged to a
# real VNC server (x11vnc on an Xvfb display) by a tcp:// route, unmodified noVNC in headless
# Chromium connecting (autoconnect, path=websockify) and drawing the remote desktop: the
# README's three lines, checked.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/novnc"
mkdir -p "$work"
# shellcheck source=../scripts/python-env.sh
. "$root/tests/scripts/python-env.sh"
# The DevTools client's; pinned: the version this check was written against.
python_env "$work" 'websockets==17.4'
cargo build --release --quiet -p switchyard -p switchyard-websocket
rm -rf "$work/plugins" && mkdir -p "$work/plugins"
cp "$root/target/release/libswitchyard_websocket.so" "$work/plugins/"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  kill "${daemon:-}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
# A display of its own (Xvfb picks a free one and says which), and a VNC server on it.
Xvfb -displayfd 1 -screen 0 800x600x24 -nolisten tcp >"$work/display" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/display" ] && break; sleep 0.05; done
display=":$(head -n 1 "$work/display")"
vnc_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
x11vnc -display "$display" -localhost -rfbport "$vnc_port" -forever -shared -nopw -quiet \
  >"$work/x11vnc.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$vnc_port") 2>/dev/null && break; sleep 0.1; done

export SWITCHYARD_STATIC_ROUTES="/=/usr/share/novnc"
export SWITCHYARD_WEBSOCKET_ROUTES="/websockify=tcp://127.0.0.1:$vnc_port"
# shellcheck source=../scripts/start-daemon.sh
. "$root/tests/scripts/start-daemon.sh"
start_daemon "$work/plugins"
trap cleanup EXIT
chromium=$(command -v chromium || true)
[ -n "$chromium" ] || { echo "chromium is not installed (.ci/run installs it)" >&2; exit 1; }
# Connected, and the remote desktop's framebuffer (800x600) is on the page's canvas.
"$py" "$root/tests/scripts/chromium_page.py" "$chromium" \
  "http://$addr/vnc.html?autoconnect=true&path=websockify" \
  "document.documentElement.classList.contains('noVNC_connected') && document.querySelector('#noVNC_container canvas').width + 'x' + document.querySelector('#noVNC_container canvas').height" \
  "800x600"
grep -q '"GET /vnc.html?autoconnect=true&path=websockify HTTP/1.1" 200' "$daemon_log" \
  || { cat "$daemon_log" >&2; echo "the page was not served by the daemon" >&2; exit 1; }
echo "novnc: the page from the daemon, connected through it, 800x600 desktop drawn"
