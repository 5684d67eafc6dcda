#!/usr/bin/env bash
# Records out: 1,000,000 order lines through `{orderId, sum: .totalPrice}`
# with `sluice run --records FILE --output OUT`, beside `jq -c` doing the
# same in the same run (both outputs compared line by line). Goal: at
# least twice jq's records per second (jq uses one core, Sluice may use
# both).
#
#   bench/records_out/run.sh [RECORDS=1000000]   (builds the release binary)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
n=${1:-1000000}
# SLUICE_BIN=PATH measures that binary instead of building this tree's.
bin=$("$root/bench/sluice_bin.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$n" "$work/orders.jsonl" <<'PY'
import json, random, sys
n, out = int(sys.argv[1]), sys.argv[2]
random.seed(1)
with open(out, "w") as f:
    for i in range(n):
        f.write(json.dumps({"orderId": f"O-{i:07d}", "customer": f"C-{i % 5000}",
                            "totalPrice": round(random.random() * 500, 2),
                            "currency": "EUR", "lines": i % 5 + 1}) + "\n")
PY
cat > "$work/flow.yaml" <<'YAML'
id: sums
trigger: {type: manual}
unmappedResults: replace
steps:
  - key: sum
    type: transform
    options:
      value: {orderId: "{{ .orderId }}", sum: "{{ .totalPrice }}"}
YAML
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
s=$(date +%s.%N)
jq -c '{orderId, sum: .totalPrice}' "$work/orders.jsonl" > "$work/jq.jsonl"
e=$(date +%s.%N)
jq_s=$(secs "$s" "$e")
s=$(date +%s.%N)
"$bin" run "$work/flow.yaml" --records "$work/orders.jsonl" --output "$work/out.jsonl" \
  --store sqlite::memory: > /dev/null 2>&1
e=$(date +%s.%N)
sl_s=$(secs "$s" "$e")
cmp -s "$work/jq.jsonl" "$work/out.jsonl" && same=yes || same=NO
python3 - "$n" "$jq_s" "$sl_s" "$same" <<'PY'
import sys
n, jq, sl, same = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"jq -c:  {jq:.2f} s, {n / jq:,.0f} records/s")
print(f"sluice: {sl:.2f} s, {n / sl:,.0f} records/s = {jq / sl:.2f} x jq's (goal: at least 2)")
print(f"outputs identical: {same}")
PY
