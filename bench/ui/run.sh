#!/usr/bin/env bash
# The UI's pages with many runs in the store: a `sluice serve` (release) on
# SQLite takes RUNS asynchronous webhooks (wrk; one order in ten fails),
# then each API call a page of the UI makes is timed (curl, the median of
# 15, the runs all ended): the first page of the runs list, filtered by
# status and by flow, the flows list (runs and failures of the day, last
# run), one run, and a search by a field that reads back until it fills a
# page or spends its budget. Goal: the runs list's first page in at most
# 200 ms with 100,000 runs.
#
# usage: bench/ui/run.sh [RUNS=100000] [STORE=sqlite]
#   STORE: sqlite, or a PostgreSQL URL of an empty database
# Needs wrk (apt-get install wrk) and curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
RUNS=${1:-100000}
STORE=${2:-sqlite}
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 2; }
cargo build --release -q -p sluice
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
[ "$STORE" = sqlite ] && STORE=$WORK/store.db
"$ROOT/target/release/sluice" serve --flows bench/ui/flows --store "$STORE" \
  --listen 127.0.0.1:0 --max-runs-in-flight 100000 2> "$WORK/serve.log" &
PID=$!
URL=
for _ in $(seq 100); do
  URL=$(grep -oE 'http://127.0.0.1:[0-9]+' "$WORK/serve.log" | head -n 1 || true)
  [ -n "$URL" ] && break
  sleep 0.1
done
[ -n "$URL" ] || { cat "$WORK/serve.log"; exit 1; }
cat > "$WORK/post.lua" <<'LUA'
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local body
  if n % 10 == 0 then
    body = string.format('{"orderId":"O-%d"}', n)
  else
    body = string.format('{"orderId":"O-%d","items":[{"qty":%d,"price":2.5}]}', n, n % 7 + 1)
  end
  return wrk.format(nil, nil, nil, body)
end
response = function(status)
  if status ~= 202 then io.stderr:write("status " .. status .. "\n") end
end
LUA
count() { curl -s "$URL/api/health" | grep -oE '"runsInFlight":[0-9]+' | cut -d: -f2; }
total() { curl -s "$URL/api/flows" | grep -oE '"runs":[0-9]+' | head -n 1 | cut -d: -f2; }
echo "== filling the store with $RUNS runs"
start=$(date +%s.%N)
while [ "$(total)" -lt "$RUNS" ]; do
  left=$((RUNS - $(total)))
  # About 8,000 runs a second here; ask for a little less than is left.
  secs=$(( left / 9000 )); [ "$secs" -lt 1 ] && secs=1
  wrk -t2 -c16 -d${secs}s -s "$WORK/post.lua" "$URL/hooks/orders" > /dev/null
done
while [ "$(count)" != 0 ]; do sleep 0.2; done
echo "   $(total) runs in $(echo "$(date +%s.%N) - $start" | bc) s"

median() { # URL: the median of 15 timings, in ms
  local i
  for i in $(seq 15); do curl -s -o /dev/null -w '%{time_total}\n' "$1"; done |
    sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[8]*1000}'
}
run=$(curl -s "$URL/api/runs?limit=1" | grep -oE '"id":"[^"]+"' | head -n 1 | cut -d'"' -f4)
printf '%-58s %s\n' "API call (what the UI's page asks)" "median ms"
for q in "/api/runs?limit=50" "/api/runs?limit=50&status=failed" "/api/runs?limit=50&flow=orders" \
  "/api/runs?limit=50&after=$(curl -s -D - -o /dev/null "$URL/api/runs?limit=50" | grep -i sluice-next-after | cut -d' ' -f2 | tr -d '\r')" \
  "/api/flows" "/api/runs/$run" "/api/runs?limit=50&field=trigger.body.orderId&value=O-17"; do
  label=${q%%&after=*}; [ "$label" != "$q" ] && label="$label&after=(page 2)"
  printf '%-58s %s\n' "$label" "$(median "$URL$q")"
done
