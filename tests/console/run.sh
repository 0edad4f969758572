#!/usr/bin/env bash
# The development console (SWITCHYARD_DEVCONSOLE=on, websocketd's --devconsole) as a
# developer uses it: headless Chromium opens a route's address as a page, the console the
# daemon answers connects to it by WebSocket, a message typed in goes to a real program
# (`exec:/bin/cat`, websocketd's way) and its answer shows on the page.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/console"
mkdir -p "$work"
# shellcheck source=../scripts/python-env.sh
. "$root/tests/scripts/python-env.sh"
# The DevTools client's; pinned as the noVNC check pins it.
python_env "$work" 'websockets==17.4'
cargo build --release --quiet -p switchyard -p switchyard-websocket
rm -rf "$work/plugins" && mkdir -p "$work/plugins"
cp "$root/target/release/libswitchyard_websocket.so" "$work/plugins/"
export SWITCHYARD_DEVCONSOLE=on
export SWITCHYARD_WEBSOCKET_ROUTES="/cat=exec:/bin/cat"
# shellcheck source=../scripts/start-daemon.sh
. "$root/tests/scripts/start-daemon.sh"
start_daemon "$work/plugins"
chromium=$(command -v chromium || true)
[ -n "$chromium" ] || { echo "chromium is not installed (.ci/run installs it)" >&2; exit 1; }
# Connect is clicked (the console opens nothing by itself, nor on a click in its first
# second); once it says "open", a message
# is typed and sent (once); then the page's received lines are read until cat's answer is
# among them.
"$py" "$root/tests/scripts/chromium_page.py" "$chromium" "http://$addr/cat?from=console" "
  (() => {
    const state = document.getElementById('state');
    if (!state) return 'no console';
    // (A click in the page's first second is not taken: clicked until it connects.)
    const notes = Array.from(document.querySelectorAll('#log .note'), (e) => e.textContent);
    if (!notes.some((note) => note.startsWith('connecting'))) {
      document.getElementById('connect').click();
    }
    if (!window.sentOnce && state.textContent === 'open') {
      document.getElementById('message').value = 'hello from chromium';
      document.getElementById('submit').click();
      window.sentOnce = true;
    }
    return Array.from(document.querySelectorAll('#log .in'), (e) => e.textContent).join('|');
  })()" "hello from chromium"
grep -q '"GET /cat?from=console HTTP/1.1" 200' "$daemon_log" \
  || { cat "$daemon_log" >&2; echo "the console page was not served" >&2; exit 1; }
# The WebSocket's line comes when it ends, as the browser closes.
for _ in $(seq 100); do
  grep -q '"GET /cat?from=console HTTP/1.1" 101 proto=websocket' "$daemon_log" && break
  sleep 0.1
done
grep -q '"GET /cat?from=console HTTP/1.1" 101 proto=websocket' "$daemon_log" \
  || { cat "$daemon_log" >&2; echo "the console's WebSocket was not logged" >&2; exit 1; }
echo "console: the page from the daemon, its WebSocket to exec:/bin/cat, the answer shown"
