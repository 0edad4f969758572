#!/usr/bin/env bash
# Static files against nginx with sendfile on (see bench/files.py). About a minute.
#   bash bench/files.sh [--rounds 3]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  apt-get update -q >/dev/null
  apt-get install -y -q nginx-light wrk util-linux >/dev/null
fi
(cd "$root" && cargo build --release --quiet -p switchyard)
exec python3 "$here/files.py" --root "$root" "$@"
