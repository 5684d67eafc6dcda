#!/usr/bin/env bash
# A fast start: (1) `sluice check` of a folder of 1,000 flows of 10 steps
# each (every step with templates and a jq filter), goal at most 1 s;
# (2) `sluice run` of a one-step flow, wall time, goal at most 5 ms
# (median of 30, on an in-memory store and on a store file).
#
#   bench/start/run.sh        (builds the release binary first)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cargo build --release -q -p sluice --manifest-path "$root/Cargo.toml"
bin="$root/target/release/sluice"
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
ms() { python3 -c "import sys; print(f'{float(sys.argv[1])*1000:.1f}')" "$1"; }
start=$(date +%s.%N)
"$bin" check "$work"/flows/*.yaml > /dev/null 2>&1
end=$(date +%s.%N)
check=$(python3 -c "print($end - $start)")
echo "check of 1000 flows x 10 steps: $(ms "$check") ms (goal: at most 1000 ms)"
printf 'id: one\ntrigger: {type: manual}\nsteps:\n  - {key: a, type: transform, options: {value: {sum: "{{ .a + .b }}"}}}\n' > "$work/one.yaml"
echo '{"a": 1, "b": 2}' > "$work/in.json"
for store in "sqlite::memory:" "$work/store.db"; do
  times=()
  for _ in $(seq 1 30); do
    s=$(date +%s.%N)
    "$bin" run "$work/one.yaml" --input "$work/in.json" --store "$store" > /dev/null 2>&1
    e=$(date +%s.%N)
    times+=("$(python3 -c "print($e - $s)")")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -g | sed -n 15p)
  echo "sluice run of a one-step flow (--store ${store##*/}): median $(ms "$median") ms of 30 (goal: at most 5 ms)"
done
