#!/usr/bin/env bash
# Checks the unit files as systemd reads them (systemd-analyze verify): every directive
# known and well-formed, the socket and service consistent. Any warning fails, but one:
# Type=notify-reload needs systemd 253, and a machine with an older systemd says so (the
# unit's comment tells those users what to write instead); that line is reported, not
# failed, and only there.
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
allowed='Failed to parse service type, ignoring: notify-reload'
unexpected=$(echo "$out" | grep -v '^$' | { if [ "$version" -lt 253 ]; then grep -vF "$allowed"; else cat; fi; } || true)
if [ -n "$unexpected" ]; then
  echo "systemd $version finds fault with the unit files:" >&2
  echo "$unexpected" >&2
  exit 1
fi
if [ "$version" -lt 253 ] && echo "$out" | grep -qF "$allowed"; then
  echo "units: ok with systemd $version, but for Type=notify-reload, which needs 253"
else
  echo "units: ok with systemd $version"
fi
