#!/usr/bin/env bash
# TLS with real clients (issue 22), against a test CA made here with openssl: curl over
# HTTP/1.1 and HTTP/2 (ALPN), openssl s_client for SNI and protocol versions, Python's
# websockets over wss://, grpcio over TLS to a gRPC backend, and headless Chromium opening
# wss:// with the test certificate trusted by its public key's hash (as an operator's
# browser would trust it through the CA).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/tls"
mkdir -p "$work"
# shellcheck source=../scripts/python-env.sh
. "$root/tests/scripts/python-env.sh"
# Pinned: the versions this check was written against.
python_env "$work" 'websockets==17.4' 'grpcio==1.85.3'
cargo build --release --quiet -p switchyard -p switchyard-websocket -p switchyard-h2c
rm -rf "$work/plugins" "$work/pki" && mkdir -p "$work/plugins" "$work/pki"
cp "$root/target/release/libswitchyard_websocket.so" "$root/target/release/libswitchyard_h2c.so" "$work/plugins/"

# The CA, a P-256 pair for localhost and a.test (the default), an RSA 2048 pair for b.test.
pki="$work/pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=switchyard tls test CA" -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
issue() { # issue NAME KEYSPEC SUBJECT_ALT_NAMES
  local name=$1 keyspec=$2 sans=$3
  # shellcheck disable=SC2086 # KEYSPEC is several words
  openssl req -newkey $keyspec -nodes -subj "/CN=$name" -keyout "$pki/$name.key" \
    -out "$pki/$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\n' "$sans" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 2 -extfile "$pki/$name.ext" -out "$pki/$name.leaf" 2>/dev/null
  cat "$pki/$name.leaf" "$pki/ca.pem" >"$pki/$name.pem"
}
issue a.test "ec -pkeyopt ec_paramgen_curve:P-256" "DNS:a.test,DNS:localhost"
issue b.test "rsa:2048" "DNS:b.test"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  kill "${daemon:-}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
out=$(mktemp)
"$py" "$root/tests/h2c/grpc_backend.py" >"$out" &
pids+=($!)
grpc=""
for _ in $(seq 200); do
  grpc=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$out")
  [ -n "$grpc" ] && break
  sleep 0.05
done
[ -n "$grpc" ] || { echo "the gRPC backend did not start" >&2; exit 1; }

export SWITCHYARD_TLS_CERT="$pki/a.test.pem,$pki/b.test.pem"
export SWITCHYARD_TLS_KEY="$pki/a.test.key,$pki/b.test.key"
export SWITCHYARD_H2C_ROUTES="/switchyard.test.Echo/=127.0.0.1:$grpc"
# The page on the same port (static files) and a route to a program, which takes pages of
# the daemon's own origin only.
rm -rf "$work/site" && mkdir -p "$work/site" && echo pong >"$work/site/ping.txt"
export SWITCHYARD_STATIC_ROUTES="/site=$work/site"
export SWITCHYARD_WEBSOCKET_ROUTES="/chat=echo,/cat=exec:/bin/cat"
# shellcheck source=../scripts/start-daemon.sh
. "$root/tests/scripts/start-daemon.sh"
start_daemon "$work/plugins"
trap cleanup EXIT
port=${addr##*:}
resolve=(--resolve "localhost:$port:127.0.0.1" --resolve "b.test:$port:127.0.0.1")
passed=0
ok() { passed=$((passed + 1)); }
fail() { echo "FAILED: $*" >&2; exit 1; }

# curl: HTTP/1.1 to the daemon's own endpoint, HTTP/2 (ALPN h2) to the h2c route.
[ "$(curl -sS --cacert "$pki/ca.pem" "${resolve[@]}" --http1.1 "https://localhost:$port/healthz")" = ok ] \
  || fail "curl --http1.1 /healthz"; ok
# With static routes, ALPN prefers http/1.1, so that browsers (offering both) load pages
# over it; a client that offers only h2 (gRPC's, s_client below) gets h2.
version=$(curl -sS -o /dev/null -w '%{http_version}' --cacert "$pki/ca.pem" "${resolve[@]}" --http2 \
  "https://localhost:$port/site/ping.txt" || true)
[ "$version" = 1.1 ] || fail "a client offering both got HTTP/$version for a page"; ok

# openssl s_client: SNI picks the chain, ALPN, TLS 1.2 served, TLS 1.1 and 1.0 refused.
s_client() { openssl s_client -connect "127.0.0.1:$port" -CAfile "$pki/ca.pem" "$@" </dev/null 2>&1; }
s_client -servername b.test | grep -q "subject=CN = b.test" || fail "SNI b.test"; ok
s_client -servername a.test | grep -q "subject=CN = a.test" || fail "SNI a.test"; ok
s_client -servername unknown.test | grep -q "subject=CN = a.test" || fail "no match: the default"; ok
s_client -servername a.test -alpn h2 | grep -q "ALPN protocol: h2" || fail "ALPN h2"; ok
s_client -servername a.test -alpn h2,http/1.1 | grep -q "ALPN protocol: http/1.1" \
  || fail "ALPN: both offered, http/1.1 preferred (static routes)"; ok
s_client -servername a.test -tls1_2 | grep -q "^New, TLSv1.2, Cipher is ECDHE" || fail "TLS 1.2"; ok
s_client -servername a.test -tls1_3 | grep -q "^New, TLSv1.3, Cipher is TLS_" || fail "TLS 1.3"; ok
for old in -tls1_1 -tls1; do
  # The client's own floor lowered, so that the refusal is the daemon's.
  if s_client -servername a.test "$old" -cipher 'DEFAULT:@SECLEVEL=0' | grep -Eq "Cipher is [^(]"; then
    fail "$old was served"
  fi
  ok
done
# Bytes that are not TLS: no cleartext answer.
if printf 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n' | timeout 5 curl -s --max-time 4 "telnet://127.0.0.1:$port" | grep -q HTTP/; then
  fail "a cleartext answer on the TLS port"
fi
ok

# Python's websockets over wss://, with permessage-deflate and without.
"$py" "$root/tests/interop/python_websockets.py" "wss://localhost:$port/chat" "$pki/ca.pem" >/dev/null \
  || fail "websockets over wss"; ok

# grpcio over TLS: ALPN h2 to the h2c plugin, the whole gRPC check set.
"$py" "$root/tests/h2c/grpc_client.py" "127.0.0.1:$port" "$pki/ca.pem" >/dev/null || fail "grpcio over TLS"; ok

# Headless Chromium: a page opens wss://, sends, and shows the echo.
chromium=$(command -v chromium || command -v chromium-browser || true)
[ -n "$chromium" ] || fail "chromium is not installed (.ci/run installs it)"
spki=$(openssl x509 -in "$pki/a.test.leaf" -pubkey -noout | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)
page() { # page WEBSOCKET_URL
  cat <<PAGE
<title>waiting</title><script>
const ws = new WebSocket('$1');
ws.onopen = () => ws.send('hello from chromium');
ws.onmessage = (m) => { document.title = 'echoed: ' + m.data; ws.close(); };
ws.onerror = () => { document.title = 'error'; };
</script>
PAGE
}
page "wss://localhost:$port/chat" >"$work/page.html"
title() { # title URL EXPECTED: the page's title becomes EXPECTED in headless Chromium
  "$py" "$root/tests/scripts/chromium_page.py" "$chromium" "$1" document.title "$2" "$spki"
}
echoed="echoed: hello from chromium"
title "file://$work/page.html" "$echoed" || fail "Chromium over wss"; ok
# The page from the daemon itself, over https, and its WebSocket to a program's route with
# the Origin check on (same origin: https://localhost:PORT).
page "wss://localhost:$port/cat" >"$work/site/cat.html"
title "https://localhost:$port/site/cat.html" "$echoed" \
  || fail "Chromium: a page and its WebSocket from one port"; ok
# The same page from elsewhere (a file: its origin is none of ours): refused.
title "file://$work/site/cat.html" error || fail "Chromium: a page of another origin was let in"; ok

echo "tls: $passed checks passed"
