#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) with cargo fuzz (libFuzzer), from the
# seed corpora in fuzz/seeds/, and fails on any crash or failed assertion. Installs
# cargo-fuzz if it is missing.
#
# With a nightly toolchain the targets are built with AddressSanitizer; without one (it
# cannot be fetched on every machine) with the stable toolchain and no sanitizer, which
# libFuzzer's coverage-guided search needs no nightly for: the code under test is safe
# Rust either way. Which one ran is printed.
#
#   bash fuzz/run.sh 20            # what CI runs
#   bash fuzz/run.sh 600 http_head # one target, ten minutes
#   bash fuzz/run.sh --build       # install cargo-fuzz and build the targets, run none
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build_only=false
if [ "${1:-}" = --build ]; then
  build_only=true
  shift
fi
seconds=${1:-20}
shift || true
if rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
  sanitizer=address
else
  toolchain=(+stable)
  sanitizer=none
fi
echo "fuzz: cargo ${toolchain[0]} fuzz, sanitizer: $sanitizer"
command -v cargo-fuzz >/dev/null || cargo install --quiet cargo-fuzz --locked
# A fuzz/Cargo.lock that does not match the manifests fails here (cargo fuzz has no
# --locked of its own).
cargo metadata --locked --format-version 1 --manifest-path "$here/Cargo.toml" >/dev/null
cd "$here"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi
cargo "${toolchain[@]}" fuzz build --release --sanitizer "$sanitizer"
if $build_only; then
  echo "built; run none (--build)"
  exit 0
fi
for target in "${targets[@]}"; do
  corpus="$here/corpus/$target"
  mkdir -p "$corpus"
  seeds="$here/seeds/$target"
  [ -d "$seeds" ] || seeds=""
  echo "== $target: ${seconds}s"
  # The corpus grows in fuzz/corpus (not committed); the seeds are committed.
  cargo "${toolchain[@]}" fuzz run --release --sanitizer "$sanitizer" "$target" "$corpus" $seeds -- \
    -max_total_time="$seconds" -print_final_stats=1 2>&1 |
    grep -E 'stat::number_of_executed_units|stat::peak_rss|cov: |SUMMARY|panicked|ERROR' | tail -n 4
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz target $target failed" >&2; exit 1; }
done
echo "${#targets[@]} passed, 0 failed"
