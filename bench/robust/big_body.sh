#!/usr/bin/env bash
# A 54 MB webhook body (250,000 items) through two transforms under the
# default merge (flows/big.yaml), answered synchronously with every run
# recorded; prints the time to the answer. Goal: at most 2 s.
#
# usage: bench/robust/big_body.sh [ITEMS=250000]
set -euo pipefail
cd "$(dirname "$0")/../.."
ITEMS=${1:-250000}
# SLUICE_BIN=PATH measures that binary instead of building this tree's.
BIN=$(bench/sluice_bin.sh)
WORK=$(mktemp -d)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
python3 - "$ITEMS" "$WORK/body.json" <<'PY'
import json, sys
n, out = int(sys.argv[1]), sys.argv[2]
items = [{"sku": f"SKU-{i:07d}", "qty": i % 7 + 1, "price": round(i * 0.37 % 100, 2),
          "description": "an item of the order, described at some length " * 3} for i in range(n)]
json.dump({"orderId": "BIG-1", "items": items}, open(out, "w"))
PY
PORT=18192
"$BIN" serve --flows bench/robust/flows --listen 127.0.0.1:$PORT \
  --store "$WORK/store.db" 2> "$WORK/server.log" &
SERVER=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/api/health && break; sleep 0.1; done
echo "body: $(du -m "$WORK/body.json" | cut -f1) MB, $ITEMS items"
curl -s -o "$WORK/answer.json" -w 'status %{http_code}, answered in %{time_total} s\n' \
  --max-time 600 -H 'content-type: application/json' --data-binary @"$WORK/body.json" \
  http://127.0.0.1:$PORT/hooks/big
python3 -c "import json,sys; a=json.load(open(sys.argv[1])); print('answer: count', a.get('count'), 'total', a.get('total'), 'items', len(a.get('items', [])))" "$WORK/answer.json"
grep -v '^$' "$WORK/server.log" | tail -3 || true
