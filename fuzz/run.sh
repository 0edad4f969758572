#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) with cargo fuzz (libFuzzer, a
# nightly toolchain, AddressSanitizer), from the seed corpora in fuzz/seeds/, and fails on
# any crash or failed assertion. Installs cargo-fuzz if it is missing.
#
#   bash fuzz/run.sh 20            # what CI runs
#   bash fuzz/run.sh 600 http_head # one target, ten minutes
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-20}
shift || true
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz/run.sh: cargo fuzz needs a nightly toolchain (rustup toolchain list has none)" >&2
  exit 3
fi
command -v cargo-fuzz >/dev/null || cargo install --quiet cargo-fuzz --locked
cd "$here"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build --release
for target in "${targets[@]}"; do
  corpus="$here/corpus/$target"
  mkdir -p "$corpus"
  seeds="$here/seeds/$target"
  [ -d "$seeds" ] || seeds=""
  echo "== $target: ${seconds}s"
  # The corpus grows in fuzz/corpus (not committed); the seeds are committed.
  cargo +nightly fuzz run --release "$target" "$corpus" $seeds -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 |
    grep -E 'stat::number_of_executed_units|stat::peak_rss|cov: |SUMMARY|panicked|ERROR' | tail -n 4
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz target $target failed" >&2; exit 1; }
done
echo "${#targets[@]} passed, 0 failed"
