#!/usr/bin/env bash
# Checks the unit files as systemd reads them (systemd-analyze verify): every directive
# known and well-formed, the socket and service consistent, with the systemd of this
# machine (Debian 12's is 252, older than some directives: the units use none of those).
# Any warning fails.
#
#   bash contrib/systemd/verify.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
command -v systemd-analyze >/dev/null || {
  echo "systemd-analyze (Debian's systemd) is needed to check the unit files" >&2
  exit 1
}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# ExecStart must name an executable that exists: the daemon as built here.
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p switchyard
sed "s#^ExecStart=/usr/local/lib/switchyard/switchyard#ExecStart=$root/target/release/switchyard#" \
  "$here/switchyard.service" >"$work/switchyard.service"
cp "$here/switchyard.socket" "$work/"
version=$(systemctl --version | awk 'NR == 1 { print $2 }')
out=$(cd "$work" && systemd-analyze verify --man=no ./switchyard.service ./switchyard.socket 2>&1) || {
  echo "$out" >&2
  exit 1
}
if [ -n "$(echo "$out" | grep -v '^$' || true)" ]; then
  echo "systemd $version finds fault with the unit files:" >&2
  echo "$out" >&2
  exit 1
fi
echo "units: ok with systemd $version"
