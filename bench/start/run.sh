#!/usr/bin/env bash
# A fast start: (1) `sluice check` of a folder of 1,000 flows of 10 steps
# each (every step with templates and a jq filter), goal at most 1 s;
# (2) `sluice run` of a one-step flow, wall time, goal at most 5 ms
# (median of 30, on an in-memory store and on a store file).
#
#   bench/start/run.sh        (builds the release binary first)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# SLUICE_BIN=PATH measures that binary instead of building this tree's.
bin=$("$root/bench/sluice_bin.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/flows"
for i in $(seq 1 1000); do
  {
    echo "id: flow-$i"
    echo "trigger: {type: webhook, path: flow-$i}"
    echo "steps:"
    for s in $(seq 1 10); do
      echo "  - key: s$s"
      echo "    type: transform"
      echo "    actionDataFilter: {results: \"{ total: .total, n: .n }\"}"
      echo "    options: {value: {total: \"{{ [.items[]? | .qty * .price] | add // 0 }}\", n: \"{{ .n // 0 | . + $s }}\", note: \"step $s of {{ \$trigger.path // \\\"?\\\" }}\"}}"
    done
  } > "$work/flows/flow-$i.yaml"
done
# The functions a one-shot command runs are linked side by side from the
# list crates/sluice/start-order.txt (bench/start/order.sh); names whose
# hashes changed since (new dependencies, another Rust) are passed over.
list="$root/crates/sluice/start-order.txt"
if [ -f "$list" ] && command -v nm > /dev/null; then
  total=$(grep -vc '^#' "$list")
  have=$(comm -12 <(nm --defined-only "$bin" | awk '{print $3}' | sort -u) <(grep -v '^#' "$list" | sort -u) | wc -l)
  echo "start order: $have of the $total functions listed are in the binary (bench/start/order.sh lists them again)"
fi
ms() { python3 -c "import sys; print(f'{float(sys.argv[1])*1000:.1f}')" "$1"; }
start=$(date +%s.%N)
"$bin" check "$work"/flows/*.yaml > /dev/null 2>&1
end=$(date +%s.%N)
check=$(python3 -c "print($end - $start)")
echo "check of 1000 flows x 10 steps: $(ms "$check") ms (goal: at most 1000 ms)"
printf 'id: one\ntrigger: {type: manual}\nsteps:\n  - {key: a, type: transform, options: {value: {sum: "{{ .a + .b }}"}}}\n' > "$work/one.yaml"
echo '{"a": 1, "b": 2}' > "$work/in.json"
# Wall time from the spawn of `sluice run` to its exit, as its parent sees
# it (Python's clock around subprocess.run; timing with `date` before and
# after would count the start of two `date` processes as well).
# The floor of this machine in the same run: a process that does nothing.
for store in none "sqlite::memory:" "$work/store.db"; do
  median=$(python3 - "$bin" "$work" "$store" <<'PY'
import statistics, subprocess, sys, time
bin, work, store = sys.argv[1:4]
cmd = [bin, "run", f"{work}/one.yaml", "--input", f"{work}/in.json", "--store", store]
if store == "none":
    cmd = ["true"]
times = []
for _ in range(30):
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    times.append(time.perf_counter() - start)
print(f"{statistics.median(times) * 1000:.1f}")
PY
)
  if [ "$store" = none ]; then
    echo "a process that does nothing (true): median $median ms of 30"
  else
    echo "sluice run of a one-step flow (--store ${store##*/}): median $median ms of 30 (goal: at most 5 ms)"
  fi
done
