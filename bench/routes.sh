#!/usr/bin/env bash
# WebSocket routes against websockify (tcp://) and websocketd (exec:), see bench/routes.py.
# Installs websocketd (Debian) and websockify (PyPI, in target/bench-venv) if missing.
#
#   bash bench/routes.sh              # 3 rounds
#   bash bench/routes.sh --rounds 1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if ! command -v websocketd >/dev/null || ! command -v taskset >/dev/null; then
  apt-get update -q >/dev/null
  apt-get install -y -q websocketd util-linux >/dev/null
fi
venv="$root/target/bench-venv"
if [ ! -x "$venv/bin/websockify" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'websockify==0.12.0' # the version this was measured with
fi
(cd "$root" && cargo build --release --quiet)
(cd "$here" && cargo build --release --quiet)
exec python3 "$here/routes.py" --root "$root" --websockify "$venv/bin/websockify" "$@"
