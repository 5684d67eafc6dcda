#!/usr/bin/env bash
# Run every fuzz target of fuzz/ (cargo fuzz, nightly): each for SECS seconds
# (default 600) or 10 million executions, whichever comes first, starting
# from the seeds in fuzz/seeds and the corpus kept in fuzz/corpus. A crash,
# a panic, a leak of memory past 4 GiB or an input running past 10 s stops
# the run with the input saved in fuzz/artifacts/TARGET/; the script then
# exits 1. One line of figures per target at the end.
#
#   bench/fuzz.sh [SECS] [TARGET...]
#   FUZZ_SANITIZER=none bench/fuzz.sh 20     # what CI runs: faster, no ASan
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
sanitizer=${FUZZ_SANITIZER:-address}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O -s "$sanitizer"
mkdir -p logs
status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${secs}s or 10M runs"
  if cargo +nightly fuzz run -O -s "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -runs=10000000 -rss_limit_mb=4096 -timeout=10 \
      -max_len=65536 -print_final_stats=1 >"logs/$t.log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    grep -E 'panicked|ERROR|SUMMARY|Test unit written' "logs/$t.log" | head -n 5 || true
  fi
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "logs/$t.log" | grep -oE '[0-9]+$' | tail -n 1 || true)
  took=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "logs/$t.log" | grep -oE 'in [0-9]+' | grep -oE '[0-9]+' | tail -n 1 || true)
  cov=$(grep -oE 'cov: [0-9]+' "logs/$t.log" | tail -n 1 | grep -oE '[0-9]+' || true)
  summary+=("$(printf '%-13s %-6s %10s runs %5s s  cov %s' "$t" "$result" "${runs:-?}" "${took:-$secs}" "${cov:-?}")")
done
printf '%s\n' "${summary[@]}"
exit "$status"
