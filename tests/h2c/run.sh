#!/usr/bin/env bash
# The h2c plugin with real clients and real backends: Python's `h2` on raw sockets (the
# upgrade, prior knowledge, bad frames, per-stream errors, the daemon stopping), curl
# (--http2 and --http2-prior-knowledge), nghttp -u, and gRPC end to end with grpcio as
# both client and backend. Backends: an HTTP/1.1 keep-alive server and a gRPC server,
# both Python, on ports of their own choosing.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/h2c"
mkdir -p "$work"
# shellcheck source=../scripts/python-env.sh
. "$root/tests/scripts/python-env.sh"
# Pinned: the versions this check was written against.
python_env "$work" 'h2==4.4.1' 'grpcio==1.85.3'
cargo build --release --quiet -p switchyard -p switchyard-h2c
rm -rf "$work/plugins" && mkdir -p "$work/plugins"
cp "$root/target/release/libswitchyard_h2c.so" "$work/plugins/"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  kill "${daemon:-}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
# Starts a backend script; sets `port` to the port it reports.
start_backend() {
  local out
  out=$(mktemp)
  "$py" "$@" >"$out" &
  pids+=($!)
  port=""
  for _ in $(seq 200); do
    port=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$out")
    [ -n "$port" ] && return 0
    sleep 0.05
  done
  echo "backend $* did not start" >&2
  return 1
}
start_backend "$root/tests/h2c/backend_http1.py"
http1=$port
start_backend "$root/tests/h2c/grpc_backend.py"
grpc=$port
start_backend "$root/tests/h2c/full_backend.py"
full=$port
start_backend "$root/tests/h2c/h2_backend.py"
h2backend=$port

export SWITCHYARD_H2C_ROUTES="/switchyard.test.Echo/=127.0.0.1:$grpc,/web/=http1://127.0.0.1:$http1,/refused/=127.0.0.1:1,/full/=127.0.0.1:$full,/reset/=127.0.0.1:$h2backend,/trailers/=127.0.0.1:$h2backend"
export SWITCHYARD_H2C_CONNECT_TIMEOUT_MS=500
# shellcheck source=../scripts/start-daemon.sh
. "$root/tests/scripts/start-daemon.sh"
start_daemon "$work/plugins"
trap cleanup EXIT

# curl: the upgrade and prior knowledge, each answered by the HTTP/1.1 backend.
out=$(curl -sS --http2 -w '\n%{http_version} %{http_code}' "http://$addr/web/curl-upgrade")
echo "$out" | grep -q '"path": "/web/curl-upgrade"' || { echo "curl --http2: $out" >&2; exit 1; }
echo "$out" | tail -n 1 | grep -qx '2 200' || { echo "curl --http2 did not switch: $out" >&2; exit 1; }
out=$(curl -sS --http2-prior-knowledge -w '\n%{http_version} %{http_code}' "http://$addr/web/curl-pk")
echo "$out" | grep -q '"path": "/web/curl-pk"' || { echo "curl --http2-prior-knowledge: $out" >&2; exit 1; }
echo "$out" | tail -n 1 | grep -qx '2 200' || { echo "curl prior knowledge: $out" >&2; exit 1; }
code=$(curl -sS --http2-prior-knowledge -o /dev/null -w '%{http_code}' "http://$addr/nowhere")
[ "$code" = 404 ] || { echo "curl: no route gave $code, not 404" >&2; exit 1; }
echo "curl: upgrade, prior knowledge and 404 passed"

# nghttp -u: the upgrade, two requests at once.
out=$(nghttp -u -v -n "http://$addr/web/nghttp-1" "http://$addr/web/nghttp-2" 2>&1)
echo "$out" | grep -q 'HTTP Upgrade success' || { echo "nghttp -u did not switch: $out" >&2; exit 1; }
[ "$(nghttp -u "http://$addr/web/nghttp-3" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["path"])')" = /web/nghttp-3 ] \
  || { echo "nghttp -u: wrong answer" >&2; exit 1; }
echo "nghttp: upgrade passed"

"$py" "$root/tests/h2c/grpc_client.py" "$addr"
# Last: it stops the daemon.
"$py" "$root/tests/h2c/h2_client.py" "$addr" "$daemon"
wait "$daemon" 2>/dev/null || true
echo "all of the above passed on the hyper engine (a route is http1://)"

# The same checks against the frame relay (the engine when every route is HTTP/2): /web/
# reaches the HTTP/1.1 backend through a second daemon on the hyper engine, an HTTP/2
# backend with prior knowledge to the first.
SWITCHYARD_H2C_ROUTES="/web/=http1://127.0.0.1:$http1" start_daemon "$work/plugins"
hop=$addr hop_daemon=$daemon
pids+=("$hop_daemon")
export SWITCHYARD_H2C_ROUTES="/switchyard.test.Echo/=127.0.0.1:$grpc,/web/=$hop,/refused/=127.0.0.1:1,/full/=127.0.0.1:$full,/reset/=127.0.0.1:$h2backend,/trailers/=127.0.0.1:$h2backend"
SWITCHYARD_H2C_ENGINE=relay start_daemon "$work/plugins"
trap cleanup EXIT
out=$(curl -sS --http2 -w '\n%{http_version} %{http_code}' "http://$addr/web/curl-upgrade")
echo "$out" | grep -q '"path": "/web/curl-upgrade"' || { echo "relay, curl --http2: $out" >&2; exit 1; }
echo "$out" | tail -n 1 | grep -qx '2 200' || { echo "relay, curl --http2 did not switch: $out" >&2; exit 1; }
out=$(curl -sS --http2-prior-knowledge -w '\n%{http_version} %{http_code}' "http://$addr/web/curl-pk")
echo "$out" | tail -n 1 | grep -qx '2 200' || { echo "relay, curl prior knowledge: $out" >&2; exit 1; }
code=$(curl -sS --http2-prior-knowledge -o /dev/null -w '%{http_code}' "http://$addr/nowhere")
[ "$code" = 404 ] || { echo "relay, curl: no route gave $code, not 404" >&2; exit 1; }
out=$(nghttp -u -v -n "http://$addr/web/nghttp-1" "http://$addr/web/nghttp-2" 2>&1)
echo "$out" | grep -q 'HTTP Upgrade success' || { echo "relay, nghttp -u did not switch: $out" >&2; exit 1; }
echo "relay: curl and nghttp passed"
"$py" "$root/tests/h2c/grpc_client.py" "$addr"
H2C_WEB_HOST=$hop "$py" "$root/tests/h2c/h2_client.py" "$addr" "$daemon"
echo "all of the above passed on the frame relay"
