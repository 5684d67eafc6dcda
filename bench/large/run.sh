#!/usr/bin/env bash
# A large payload: one JSON order of ITEMS items (900,000: about 90 MB)
# through a flow of two transforms (`{{ .items | length }}` and
# `{{ [.items[].qty] | add }}`) with `sluice run`, on an in-memory store and
# on a store file, beside jq doing the same two expressions on the same file
# in the same run. Prints wall time, peak memory (and its ratio to the
# file) and, for the store file, how much the store grew.
# Goals (issue 26): peak memory at most 5 times the file, wall time at
# most jq's, store growth at most the file's size.
#
#   bench/large/run.sh [ITEMS=900000]     (builds the release binary)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
items=${1:-900000}
# SLUICE_BIN=PATH measures that binary instead of building this tree's.
bin=$("$root/bench/sluice_bin.sh")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$items" "$work/order.json" <<'PY'
import json, sys
n, out = int(sys.argv[1]), sys.argv[2]
with open(out, "w") as f:
    f.write('{"orderId": "BIG-1", "customer": "C-1", "items": [')
    for i in range(n):
        if i:
            f.write(",")
        f.write(json.dumps({"sku": f"SKU-{i:07d}", "qty": i % 7 + 1,
                            "price": round(i * 0.37 % 100, 2), "note": "an item of the order"}))
    f.write("]}")
PY
cat > "$work/flow.yaml" <<'YAML'
id: large
trigger: {type: manual}
steps:
  - key: count
    type: transform
    options: {value: {count: "{{ .items | length }}"}}
  - key: total
    type: transform
    options: {value: {total: "{{ [.items[].qty] | add }}"}}
YAML
size=$(stat -c %s "$work/order.json")
measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" > "$work/out" 2> "$work/err" || {
    echo "$label failed:"; tail -5 "$work/err"; return 1; }
  read -r secs kb < "$work/time"
  python3 - "$label" "$secs" "$kb" "$size" <<'PY'
import sys
label, secs, kb, size = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"{label:28} {secs:6.2f} s  peak {kb / 1024:7.0f} MB = {kb * 1024 / size:5.1f} x the file")
PY
}
echo "order: $(python3 -c "print(f'{$size / 1e6:.1f}')") MB, $items items"
measure "jq (both expressions)" jq -c '{count: (.items | length), total: ([.items[].qty] | add)}' "$work/order.json"
measure "sluice run, store in memory" "$bin" run "$work/flow.yaml" --input "$work/order.json" --store sqlite::memory:
measure "sluice run, store file" "$bin" run "$work/flow.yaml" --input "$work/order.json" --store "$work/store.db"
grown=$(du -cb "$work"/store.db* | tail -1 | cut -f1)
python3 -c "print(f'store growth: {$grown / 1e6:.1f} MB = {$grown / $size:.2f} x the file')"
