#!/usr/bin/env bash
# The `sluice` binary a bench measures, printed: SLUICE_BIN when it is set
# (another build, to alternate with this one), else this tree's release
# build, built first.
#
#   bin=$(bench/sluice_bin.sh)
set -euo pipefail
if [ -n "${SLUICE_BIN:-}" ]; then
  echo "$SLUICE_BIN"
  exit
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release -q -p sluice --manifest-path "$root/Cargo.toml" >&2
echo "$root/target/release/sluice"
