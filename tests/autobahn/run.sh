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
  # Autobahn|Testsuite is Python 2 code. Debian has no python2 package; the machines this
  # project runs on carry pyenv's 2.7.18, looked for here without relying on PATH. Where
  # there is none (pyenv cannot fetch one without the internet), say so and exit 77 (the
  # "cannot run here" of automake's tests): CI fails on it like on any other failure,
  # unless a person skips the check by name (SWITCHYARD_CI_SKIP=autobahn).
  py2=""
  for candidate in "$(pyenv root 2>/dev/null)" "${PYENV_ROOT:-}" "${HOME:-/root}/.pyenv" /root/.pyenv; do
    if [ -n "$candidate" ] && [ -x "$candidate/versions/2.7.18/bin/python2.7" ]; then
      py2="$candidate/versions/2.7.18/bin/python2.7"
      break
    fi
  done
  if [ -z "$py2" ] && command -v python2.7 >/dev/null; then
    py2=$(command -v python2.7)
  fi
  if [ -z "$py2" ]; then
    echo "Autobahn|Testsuite NOT RUN: it needs a Python 2.7 interpreter (pyenv's 2.7.18 under" >&2
    echo "\$(pyenv root)/versions/2.7.18, or python2.7 on PATH); none was found on this machine." >&2
    exit 77
  fi
  # A virtualenv old enough to make Python 2 environments, itself in a Python 3 venv (so
  # that an externally managed system Python is never touched).
  python3 -m venv "$work/tools"
  "$work/tools/bin/pip" install --quiet 'virtualenv==20.21.1'
  "$work/tools/bin/virtualenv" --quiet -p "$py2" "$venv"
  "$venv/bin/pip" install --quiet --no-deps -r "$root/tests/autobahn/requirements-py2.txt" 2>&1 |
    grep -v -e DEPRECATION -e 'WARNING: Running pip as' || true
fi

cargo build --release --quiet -p switchyard -p switchyard-websocket
plugins="$work/plugins"
rm -rf "$plugins" "$work/reports"
mkdir -p "$plugins"
cp "$root/target/release/libswitchyard_websocket.so" "$plugins/"

# shellcheck source=../scripts/start-daemon.sh
. "$root/tests/scripts/start-daemon.sh"
start_daemon "$plugins"

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
  "servers": [{"agent": "switchyard", "url": "ws://$addr/"}],
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
