#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 20) with cargo fuzz (libFuzzer), from the
# seed corpora in fuzz/seeds/, and fails on any crash or failed assertion. Installs
# cargo-fuzz if it is missing.
#
# With a nightly toolchain the targets are built with AddressSanitizer; without one (it
# cannot be fetched on every machine) with the stable toolchain and no sanitizer, which
# libFuzzer's coverage-guided search needs no nightly for: the code under test is safe
# Rust either way, but for the WebSocket masking's AVX2 loop (plain Rust compiled for
# AVX2, reached through one `unsafe` call after the CPU is asked). Which one ran is printed.
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
# Targets run side by side, one a core (a libFuzzer run is one thread), each for its full
# time: CI's nine take half as long on two cores. SWITCHYARD_FUZZ_JOBS=1: one at a time.
jobs=${SWITCHYARD_FUZZ_JOBS:-$(nproc)}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
run_one() {
  local target=$1 corpus="$here/corpus/$1" seeds="$here/seeds/$1"
  mkdir -p "$corpus"
  [ -d "$seeds" ] || seeds=""
  # The corpus grows in fuzz/corpus (not committed); the seeds are committed.
  cargo "${toolchain[@]}" fuzz run --release --sanitizer "$sanitizer" "$target" "$corpus" $seeds -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$logs/$target.log" 2>&1
}
running=0
for target in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  (
    status=0
    run_one "$target" || status=$?
    echo "$status" >"$logs/$target.status"
  ) &
  running=$((running + 1))
done
wait
failed=()
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s"
  grep -E 'stat::number_of_executed_units|stat::peak_rss|cov: |SUMMARY|panicked|ERROR' \
    "$logs/$target.log" | tail -n 4 || true
  if [ "$(cat "$logs/$target.status")" != 0 ]; then
    tail -n 40 "$logs/$target.log"
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
  exit 1
fi
echo "${#targets[@]} passed, 0 failed"
