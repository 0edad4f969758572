#!/usr/bin/env bash
# switchyard's benchmark suite: builds the daemon, its plugins, the load generator and the
# peers, installs nginx, HAProxy and wrk if missing, then runs bench/run.py (all loads, all servers,
# interleaved rounds) and prints one table. Whole default run: under 10 minutes.
#
#   bash bench/run.sh            # 3 rounds, medians
#   bash bench/run.sh --quick    # 1 round, shorter loads
#   bash bench/run.sh --only ws-echo-64x50   # one load
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v taskset >/dev/null \
  || ! command -v haproxy >/dev/null; then
  apt-get update -q >/dev/null && apt-get install -y -q nginx-light wrk util-linux haproxy >/dev/null
fi
(cd "$root" && cargo build --release --quiet)
(cd "$here" && cargo build --release --quiet)
ulimit -n "$(ulimit -Hn)" # 10,000 idle connections need as many descriptors on each side
exec python3 "$here/run.py" --root "$root" "$@"
