#!/usr/bin/env bash
# The order webhook (bench/serve/flows: POST an order, answer {orderId, sum}
# synchronously, every run recorded) side by side in one run, on:
#   sqlite     one `sluice serve` on a SQLite store (the embedded default)
#   pg1        one `sluice serve` on a PostgreSQL store
#   pg3        three `sluice serve` sharing one PostgreSQL store (a wrk per
#              process, the connections split between them)
# Figures: requests (each a run, recorded) per second; CPU per request of
# Sluice's processes and of PostgreSQL's (all its processes); then a check
# that the store holds one succeeded run per answer. Published peers for
# runs per second: Kestra (open-source edition) about 1,500 executions a
# minute (25/s), n8n 220/s on one instance in queue mode.
#
# usage: bench/shared/run.sh [DURATION=15s] [CONNECTIONS=16]
#   SLUICE_BENCH_POSTGRES  the server (default postgres://root@127.0.0.1:5432)
# Needs wrk (bash ../shared/peers/setup_tools.sh, or apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DUR=${1:-15s}
CONNS=${2:-16}
PG=${SLUICE_BENCH_POSTGRES:-postgres://root@127.0.0.1:5432}
LUA=$ROOT/../shared/peers/order_post.lua
command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 2; }
command -v psql >/dev/null || { echo "psql is missing" >&2; exit 2; }
cargo build --release -q -p sluice
WORK=$(mktemp -d)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
cleanup() { stop_all; rm -rf "$WORK"; psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS sluice_bench WITH (FORCE)" >/dev/null 2>&1 || true; }
trap cleanup EXIT
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0))); done; echo $t; }
pg_pids() { pgrep -x postgres || true; }
fresh_pg() {
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS sluice_bench WITH (FORCE)" >/dev/null 2>&1
  psql "$PG/postgres" -qc "CREATE DATABASE sluice_bench" >/dev/null
}

# run NAME N STORE: N servers on STORE under wrk for DUR.
run() {
  local name=$1 n=$2 store=$3 i ports=()
  for i in $(seq 1 "$n"); do
    local port=$((18300 + i))
    "$ROOT/target/release/sluice" serve --flows bench/serve/flows --listen 127.0.0.1:$port \
      --store "$store" 2>> "$WORK/$name.log" &
    PIDS+=($!)
    ports+=($port)
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/api/health" && break; sleep 0.1; done
    wrk -t1 -c2 -d2s -s "$LUA" "http://127.0.0.1:$port/hooks/order" > /dev/null
  done
  local s0 p0 s1 p1
  s0=$(ticks "${PIDS[@]}"); p0=$(ticks $(pg_pids))
  local loads=()
  for port in "${ports[@]}"; do
    wrk -t1 -c$((CONNS / n)) -d"$DUR" -s "$LUA" "http://127.0.0.1:$port/hooks/order" > "$WORK/$name.$port.wrk" &
    loads+=($!)
  done
  wait "${loads[@]}"
  s1=$(ticks "${PIDS[@]}"); p1=$(ticks $(pg_pids))
  stop_all
  python3 - "$name" "$n" "$DUR" "$s0" "$s1" "$p0" "$p1" "$(getconf CLK_TCK)" "$WORK"/$name.*.wrk <<'PY'
import re, sys
name, n, dur, s0, s1, p0, p1, hz = sys.argv[1:9]
reqs = errs = 0
for f in sys.argv[9:]:
    t = open(f).read()
    reqs += int(re.search(r"(\d+) requests in", t).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    errs += int(m.group(1)) if m else 0
secs = float(dur.rstrip("s"))
hz = int(hz)
sl = (int(s1) - int(s0)) / hz
pg = (int(p1) - int(p0)) / hz
print(f"{name:7} {n} process(es): {reqs / secs:8.0f} runs/s  ({reqs} answers, {errs} not 2xx)  "
      f"Sluice {sl * 1000 / reqs:.3f} ms CPU/run  PostgreSQL {pg * 1000 / reqs:.3f} ms CPU/run  "
      f"= {reqs / secs * 60:,.0f} runs/min")
PY
}

echo "== order webhook, $CONNS connections, $DUR each, $(nproc) CPUs shared by servers, PostgreSQL and wrk"
run sqlite 1 "$WORK/store.db"
fresh_pg; run pg1 1 "$PG/sluice_bench"
psql "$PG/sluice_bench" -Atc "SELECT 'pg1 store: ' || string_agg(status || ' ' || n, ', ') FROM (SELECT status, count(*) n FROM runs GROUP BY status) s"
fresh_pg; run pg3 3 "$PG/sluice_bench"
psql "$PG/sluice_bench" -Atc "SELECT 'pg3 store: ' || string_agg(status || ' ' || n, ', ') FROM (SELECT status, count(*) n FROM runs GROUP BY status) s"
echo "peers (published): Kestra OSS ~1,500 executions/min (25/s); n8n 220/s on one instance"
