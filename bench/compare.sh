#!/usr/bin/env bash
# Two builds of `sluice` side by side, alternating, on this machine: the
# webhook's server CPU per request (bench/serve/flows/order.yaml, 16
# connections and 1) and an import of N records into PostgreSQL
# (bench/import). For changes that must not move the figures: on a shared
# machine only runs made together, alternating, compare.
#
# usage: bench/compare.sh OLD_BINARY NEW_BINARY [ROUNDS=3] [N=100000]
# Needs wrk (bash ../shared/peers/setup_tools.sh) and PostgreSQL at
# BENCH_PG_URL (default postgres://root@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OLD=$1
NEW=$2
ROUNDS=${3:-3}
N=${4:-100000}
PG=${BENCH_PG_URL:-postgres://root@127.0.0.1:5432/test}
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
LUA=$PEERS_DIR/order_post.lua
DUR=${BENCH_DURATION:-8s}
command -v wrk >/dev/null || { echo "wrk is missing: run bash $PEERS_DIR/setup_tools.sh" >&2; exit 2; }
WORK=$(mktemp -d)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

webhook() { # binary connections -> ms of server CPU per request
  local bin=$1 c=$2 port=18191
  rm -f "$WORK"/store.db*
  taskset -c 1 "$bin" serve --flows bench/serve/flows --listen 127.0.0.1:$port \
    --store "$WORK/store.db" 2>/dev/null &
  SERVER=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$port/api/health && break; sleep 0.1; done
  taskset -c 0 wrk -t1 -c"$c" -d2s -s "$LUA" http://127.0.0.1:$port/hooks/order >/dev/null
  local t0 t1 req
  t0=$(ticks "$SERVER")
  req=$(taskset -c 0 wrk -t1 -c"$c" -d"$DUR" -s "$LUA" http://127.0.0.1:$port/hooks/order |
    grep -oE '^ *[0-9]+ requests in' | grep -oE '[0-9]+')
  t1=$(ticks "$SERVER")
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
  python3 -c "print(f'{($t1-$t0)/$(getconf CLK_TCK)*1000/$req:.4f}')"
}

import() { # binary -> seconds
  local bin=$1 start end
  sed 's/INTEGER PRIMARY KEY/SERIAL PRIMARY KEY/' bench/import/schema.sql | psql -q "$PG" 2>&1 | grep -v NOTICE || true
  rm -f "$WORK"/istore.db* "$WORK"/customers.csv.failures.jsonl
  start=$(date +%s.%N)
  BENCH_DB_URL=$PG "$bin" run bench/import/flow.yaml --records "$WORK/customers.csv" \
    --store "$WORK/istore.db" >/dev/null 2>&1 || [ $? -eq 1 ]
  end=$(date +%s.%N)
  echo "$end - $start" | bc
}

python3 bench/import/generate.py "$N" 1000 "$WORK/customers.csv"
sync
printf '%-6s %-5s %14s %14s %12s\n' round build "ms/req c16" "ms/req c1" "import s"
for r in $(seq 1 "$ROUNDS"); do
  for b in old new; do
    bin=$OLD; [ $b = new ] && bin=$NEW
    printf '%-6s %-5s %14s %14s %12s\n' "$r" "$b" "$(webhook "$bin" 16)" "$(webhook "$bin" 1)" "$(import "$bin")"
  done
done
