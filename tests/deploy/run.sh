#!/usr/bin/env bash
# Past one machine (issue 25): the OCI image deploy/image/build.py writes, its layout and
# digests checked, its file system run with chroot as the image's user (no container
# runtime runs here): `--check`, then a WebSocket and an h2c request through it; and the
# Kubernetes manifests under deploy/k8s validated offline against the Kubernetes schemas
# (PyPI's kubernetes-validate), with the stop's timings checked against each other.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work="$root/target/deploy"
mkdir -p "$work"
# shellcheck source=../scripts/python-env.sh
. "$root/tests/scripts/python-env.sh"
# Pinned: the versions this check was written against.
python_env "$work" 'websockets==17.4' 'kubernetes-validate==1.37.0'

# The manifests, as the API server of Kubernetes 1.30 and 1.34 would take them.
"$py" "$root/tests/deploy/manifests.py" "$root/deploy/k8s"

# The image.
cargo build --release --quiet -p switchyard -p switchyard-websocket -p switchyard-tunnel \
  -p switchyard-h2c -p switchyard-echo
python3 "$root/deploy/image/build.py" --out "$work/image"
rootfs="$work/rootfs"
rm -rf "$rootfs" && mkdir -p "$rootfs"
"$py" "$root/tests/deploy/image.py" "$work/image/switchyard-oci" "$rootfs"

# Its file system runs the daemon, as its user, with only what the image holds.
as_image() {
  env -i SWITCHYARD_PLUGIN_DIR=/usr/lib/switchyard/plugins "$@"
}
run_in_image=("$(command -v chroot)" --userspec=65532:65532 "$rootfs" /usr/local/bin/switchyard)
out=$(as_image "${run_in_image[@]}" --check)
for plugin in websocket tunnel h2c echo; do
  echo "$out" | grep -q "^  $plugin \[" || { echo "--check in the image: no $plugin: $out" >&2; exit 1; }
done
echo "image: --check as user 65532 under chroot loads every plugin"

backend_dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$backend_dir"' EXIT
echo "from the h2 backend" >"$backend_dir/hello.txt"
backend_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nghttpd --no-tls -d "$backend_dir" "$backend_port" >/dev/null 2>&1 &
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$backend_port") 2>/dev/null && break; sleep 0.05; done
log="$work/daemon.log"
env -i SWITCHYARD_PLUGIN_DIR=/usr/lib/switchyard/plugins SWITCHYARD_LISTEN=127.0.0.1:0 \
  SWITCHYARD_H2C_ROUTES="/=127.0.0.1:$backend_port" "${run_in_image[@]}" 2>"$log" &
daemon=$! # env and chroot each exec the next: this is the daemon's pid
addr=""
for _ in $(seq 200); do
  addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$log" | head -n 1)
  [ -n "$addr" ] && break
  sleep 0.05
done
[ -n "$addr" ] || { cat "$log" >&2; echo "the daemon in the image did not start" >&2; exit 1; }
"$py" - "ws://$addr/chat" <<'PY'
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1]) as ws:
        await ws.send("from the image")
        assert await ws.recv() == "from the image"
asyncio.run(main())
PY
out=$(curl -sS --http2-prior-knowledge -w '\n%{http_version} %{http_code}' "http://$addr/hello.txt")
[ "$out" = "$(printf 'from the h2 backend\n\n2 200')" ] || { echo "h2c through the image: $out" >&2; exit 1; }
[ "$(stat -c %u "/proc/$daemon")" = 65532 ] || { echo "the daemon does not run as 65532" >&2; exit 1; }
kill -TERM "$daemon"
wait "$daemon"
echo "image: a WebSocket echo and an h2c request through the daemon run from it, as 65532; stopped with 0"
