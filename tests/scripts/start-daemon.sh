# Sourced by the test scripts: starts the release daemon on 127.0.0.1 port 0 with the
# plugin folder "$1" (and any SWITCHYARD_* already exported), and sets `addr` to the
# address it reports once it listens, `daemon` to its pid, `daemon_log` to its log file. The daemon picks its own port,
# so no other process can take it between a choice and the bind. Stops it on exit.
start_daemon() {
  local plugins=$1 log
  log=$(mktemp)
  daemon_log=$log
  SWITCHYARD_LISTEN=127.0.0.1:0 SWITCHYARD_PLUGIN_DIR="$plugins" RUST_LOG="${RUST_LOG:-warn,switchyard=info}" \
    "$root/target/release/switchyard" 2>"$log" &
  daemon=$!
  trap 'kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true' EXIT
  addr=""
  for _ in $(seq 200); do
    addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$addr" ] && break
    if ! kill -0 "$daemon" 2>/dev/null; then
      cat "$log" >&2
      echo "the daemon did not start" >&2
      return 1
    fi
    sleep 0.05
  done
  if [ -z "$addr" ]; then
    cat "$log" >&2
    echo "the daemon did not report its address" >&2
    return 1
  fi
}
