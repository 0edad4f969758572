#!/usr/bin/env bash
# Runs Autobahn|Testsuite's fuzzingclient against the websocket plugin in a real daemon and
# fails when any case FAILED. Prints a per-section summary of the report.
#
#   tests/autobahn/run.sh            # sections 1-11 (about a minute)
#   tests/autobahn/run.sh '5.*' 6.4.1 # some cases
#
# Autobahn|Testsuite is Python 2: this sets up a Python 2.7 virtualenv (from pyenv's 2.7.18)
# under target/autobahn the first time, with the pinned dependencies beside this script.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/autobahn"
venv="$work/venv"
mkdir -p "$work"

if [ ! -x "$venv/bin/wstest" ]; then
  # pyenv's Python 2.7.18 runs the suite; a pyenv Python 3 (with pip, unlike Debian's
  # externally managed one) makes the virtualenv. Found without relying on PATH.
  pyroot=""
  for candidate in "$(pyenv root 2>/dev/null)" "${PYENV_ROOT:-}" "${HOME:-/root}/.pyenv" /root/.pyenv; do
    if [ -n "$candidate" ] && [ -x "$candidate/versions/2.7.18/bin/python2.7" ]; then
      pyroot=$candidate
      break
    fi
  done
  if [ -z "$pyroot" ]; then
    echo "Autobahn|Testsuite needs pyenv's Python 2.7.18; none found" >&2
    exit 1
  fi
  py2="$pyroot/versions/2.7.18/bin/python2.7"
  py3=$(ls -d "$pyroot"/versions/3.1[0-9]*/bin/python3 2>/dev/null | sort -V | tail -n 1)
  py3=${py3:-python3}
  "$py3" -m pip install --quiet 'virtualenv<20.22'
  "$py3" -m virtualenv --quiet -p "$py2" "$venv"
  "$venv/bin/pip" install --quiet --no-deps -r "$root/tests/autobahn/requirements-py2.txt" 2>&1 |
    grep -v -e DEPRECATION -e 'WARNING: Running pip as' || true
fi

cargo build --release --quiet -p switchyard -p switchyard-websocket
plugins="$work/plugins"
rm -rf "$plugins" "$work/reports"
mkdir -p "$plugins"
cp "$root/target/release/libswitchyard_websocket.so" "$plugins/"

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SWITCHYARD_LISTEN="127.0.0.1:$port" SWITCHYARD_PLUGIN_DIR="$plugins" RUST_LOG="${RUST_LOG:-warn}" \
  "$root/target/release/switchyard" &
daemon=$!
trap 'kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true' EXIT
python3 - "$port" <<'PY'
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        time.sleep(0.05)
PY

cases='"1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*", "11.*"'
# 12-13 (permessage-deflate) only when asked for: 12.3-12.5 and 13.3-13.7 take tens of
# minutes.
exclude='"12.*", "13.*"'
if [ $# -gt 0 ]; then
  cases=$(printf '"%s", ' "$@")
  cases=${cases%, }
  exclude=''
fi
cat >"$work/spec.json" <<JSON
{
  "outdir": "./reports",
  "servers": [{"agent": "switchyard", "url": "ws://127.0.0.1:$port/"}],
  "cases": [$cases],
  "exclude-cases": [$exclude],
  "exclude-agent-cases": {}
}
JSON
(cd "$work" && "$venv/bin/wstest" -m fuzzingclient -s spec.json >"$work/wstest.log" 2>&1) || {
  tail -n 30 "$work/wstest.log"
  exit 1
}
python3 "$root/tests/autobahn/summary.py" "$work/reports/index.json"
