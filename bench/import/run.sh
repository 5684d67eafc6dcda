#!/usr/bin/env bash
# The import benchmark: N customers (an account, a contact and an order each:
# three patches per envelope) imported into PostgreSQL and into SQLite with
# `sluice run --records`, then counted.
#
# usage: bench/import/run.sh [N=1000000] [BAD_EVERY=10000]
# PostgreSQL: BENCH_PG_URL (default postgres://root@127.0.0.1:5432/test).
# BENCH_ONLY=postgres or BENCH_ONLY=sqlite runs one of the two.
# Before the import into PostgreSQL, the same good rows are written by
# PostgreSQL alone (bench/import/alone.sh), in one session and in two at
# once: the ceiling of this machine's PostgreSQL for these tables, which the
# import's figure is a share of. After it, the import a user writes by hand
# (bench/import/by_hand.py, Python and psycopg 3; installed into a venv under
# ~/.cache/sluice-peers/psycopg unless BENCH_PYTHON names a Python that has it).
# BENCH_ROUNDS=R (default 1) measures PostgreSQL alone and the import R times,
# one after the other, and gives each round's ratio and their median: a machine
# whose speed moves from minute to minute moves both figures of a round alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000000}
BAD=${2:-10000}
PG=${BENCH_PG_URL:-postgres://root@127.0.0.1:5432/test}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cargo build --release -q -p sluice
SLUICE=$PWD/target/release/sluice
python3 bench/import/generate.py "$N" "$BAD" "$WORK/customers.csv"
# The file on disk before the clock starts: its writeback would compete
# with the database's own writes during the import.
sync
BAD_COUNT=$(( BAD > 0 ? N / BAD : 0 ))
GOOD=$(( N - BAD_COUNT ))

check() { # name got
  if [ "$2" != "$GOOD" ]; then echo "$1: $2 rows, expected $GOOD" >&2; exit 1; fi
}

measure() { # label url
  local start end
  start=$(date +%s.%N)
  BENCH_DB_URL=$2 "$SLUICE" run bench/import/flow.yaml --records "$WORK/customers.csv" >/dev/null \
    --store "$WORK/store.db" || [ $? -eq 1 ] # 1: some records failed, as planned
  end=$(date +%s.%N)
  local failed
  failed=$(wc -l < "$WORK/customers.csv.failures.jsonl")
  if [ "$failed" != "$BAD_COUNT" ]; then echo "$1: $failed failures reported, expected $BAD_COUNT" >&2; exit 1; fi
  echo "$1: $N records ($failed bad) in $(echo "$end - $start" | bc) s: $(echo "$N / ($end - $start)" | bc) records/s (wall, process start to end)"
  SECS=$(echo "$end - $start" | bc)
}

ONLY=${BENCH_ONLY:-}
if [ "$ONLY" != sqlite ]; then
# PostgreSQL alone, then the import, ROUNDS times
ROUNDS=${BENCH_ROUNDS:-1}
RATIOS=()
declare -A ALONE
for round in $(seq 1 "$ROUNDS"); do
  [ "$ROUNDS" -gt 1 ] && echo "round $round of $ROUNDS"
  # Two sessions at once: in the first round only.
  for sessions in 1 $([ "$round" = 1 ] && echo 2); do
    ALONE[$sessions]=$(bench/import/alone.sh "$WORK/customers.csv" "$sessions")
    echo "postgres alone, $sessions session(s): $GOOD good records in ${ALONE[$sessions]} s: $(echo "$GOOD / ${ALONE[$sessions]}" | bc) records/s (INSERT ... SELECT of the staged rows)"
  done
  sed 's/INTEGER PRIMARY KEY/SERIAL PRIMARY KEY/' bench/import/schema.sql | psql -q "$PG" 2>&1 | grep -v NOTICE || true
  # What the runs before wrote is written out before the clock starts: a
  # checkpoint during the import would compete with it (alone.sh does the same).
  psql -q "$PG" -c CHECKPOINT
  rm -f "$WORK/store.db"* "$WORK/customers.csv.failures.jsonl"
  measure postgres "$PG"
  RATIO=$(echo "scale=2; $SECS / ${ALONE[1]}" | bc)
  RATIOS+=("$RATIO")
  echo "postgres: the import takes ${RATIO}x the time of PostgreSQL alone in one session$([ "$round" = 1 ] && echo ", $(echo "scale=2; $SECS / ${ALONE[2]}" | bc)x in two")"
  for t in customers contacts orders; do check "postgres $t" "$(psql -tAc "SELECT count(*) FROM $t" "$PG")"; done
  check "postgres orders of their customer" "$(psql -tAc "SELECT count(*) FROM orders o JOIN customers c ON o.customer_id = c.id JOIN contacts k ON k.customer_id = c.id WHERE 'SO-' || substr(c.external_id, 3) = o.number AND 'Contact ' || substr(c.external_id, 3) = k.name" "$PG")"
done
if [ "$ROUNDS" -gt 1 ]; then
  echo "postgres: the import's ratio to PostgreSQL alone in one session, round by round: ${RATIOS[*]}; median $(printf '%s\n' "${RATIOS[@]}" | sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}')x"
fi

# The import a user writes by hand (bench/import/by_hand.py: psycopg 3,
# executemany per table, a transaction per batch of 500, no per-record
# isolation), on the same file into the same fresh tables.
PY=${BENCH_PYTHON:-$HOME/.cache/sluice-peers/psycopg/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv "$(dirname "$(dirname "$PY")")"
  "$PY" -m pip install -q 'psycopg[binary]==3.3.9'
fi
sed 's/INTEGER PRIMARY KEY/SERIAL PRIMARY KEY/' bench/import/schema.sql | psql -q "$PG" 2>&1 | grep -v NOTICE || true
read -r HS HW HL HF < <("$PY" bench/import/by_hand.py "$PG" "$WORK/customers.csv" 500)
echo "by hand (python, psycopg 3, executemany, one transaction per batch of 500): $HW records written in $HS s: $(echo "$HW / $HS" | bc) records/s; $HL records lost with their $HF failed batches (no per-record isolation)"
echo "postgres: the import takes $(printf "%.2f" "$(echo "scale=3; $SECS / $HS" | bc)")x the time of the script by hand"
fi
if [ "$ONLY" != postgres ]; then
# SQLite
rm -f "$WORK/store.db"* "$WORK/customers.csv.failures.jsonl"
sqlite3 "$WORK/bench.db" < bench/import/schema.sql
measure sqlite "sqlite://$WORK/bench.db"
for t in customers contacts orders; do check "sqlite $t" "$(sqlite3 "$WORK/bench.db" "SELECT count(*) FROM $t")"; done
fi
echo "every good record landed once, every bad one reported"
