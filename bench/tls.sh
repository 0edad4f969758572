#!/usr/bin/env bash
# TLS handshakes per server CPU-second: switchyard (its aws-lc-rs build, and one with ring) against
# nginx on the same certificates (see bench/tls.py). About a minute and a half.
#
#   bash bench/tls.sh              # 3 rounds
#   bash bench/tls.sh --rounds 1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if ! command -v nginx >/dev/null || ! command -v openssl >/dev/null; then
  apt-get update -q >/dev/null
  apt-get install -y -q nginx-light openssl util-linux >/dev/null
fi
(cd "$root" && cargo build --release --quiet -p switchyard)
(cd "$root" && cargo build --release --quiet -p switchyard --no-default-features --target-dir target/ring)
(cd "$here" && cargo build --release --quiet)
exec python3 "$here/tls.py" --root "$root" "$@"
