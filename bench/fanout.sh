#!/usr/bin/env bash
# Broadcast fan-out: one exec-shared: program (yes, started once every client is there)
# and 1,000 WebSocket clients; the daemon on core 0, the load generator reading all of
# them on core 1. Prints messages a second delivered, in all and per client.
#   bash bench/fanout.sh [--conns 1000] [--secs 5]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
(cd "$root" && cargo build --release --quiet -p switchyard -p switchyard-websocket)
(cd "$here" && cargo build --release --quiet)
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'kill "${daemon:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/plugins"
cp "$root/target/release/libswitchyard_websocket.so" "$work/plugins/"
printf '#!/bin/sh\nread go\nexec yes "tick tick tick tick tick tick tick tick tick tick"\n' >"$work/ticker"
chmod +x "$work/ticker"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SWITCHYARD_LISTEN="127.0.0.1:$port" SWITCHYARD_PLUGIN_DIR="$work/plugins" SWITCHYARD_IO_THREADS=1 \
  SWITCHYARD_WEBSOCKET_ROUTES="/shared=exec-shared:$work/ticker" \
  SWITCHYARD_MAX_CONNECTIONS_PER_CLIENT=10000 RUST_LOG=warn \
  taskset -c 0 "$root/target/release/switchyard" 2>"$work/log" &
daemon=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
taskset -c 1 "$here/target/release/loadgen" ws-fanout --addr "127.0.0.1:$port" --conns 1000 --secs 5 --start go "$@"
echo "clients dropped: $(grep -c 'a client dropped' "$work/log" || true)"
