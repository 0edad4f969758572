#!/usr/bin/env bash
# HTTP/2 proxying: switchyard's h2c plugin against HAProxy, nginx's grpc_pass and the backend
# itself, under h2load -c50 -m10 (see bench/h2c.py). Installs nghttp2's client and server
# HAProxy and nginx if missing. About 2 minutes.
#
#   bash bench/h2c.sh                 # 3 rounds of 200,000 requests
#   bash bench/h2c.sh --rounds 1
#   bash bench/h2c.sh --many          # 10,000 quiet clients, a stream each now and then
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if ! command -v h2load >/dev/null || ! command -v nghttpd >/dev/null || ! command -v nginx >/dev/null \
  || ! command -v haproxy >/dev/null; then
  apt-get update -q >/dev/null
  apt-get install -y -q nghttp2-client nghttp2-server nginx-light haproxy util-linux >/dev/null
fi
ulimit -n "$(ulimit -Hn)" # --many: 10,000 connections need as many descriptors on each side
(cd "$root" && cargo build --release --quiet)
(cd "$here" && cargo build --release --quiet)
exec python3 "$here/h2c.py" --root "$root" "$@"
