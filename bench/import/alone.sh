#!/usr/bin/env bash
# PostgreSQL alone: the import's good rows written by PostgreSQL itself, with
# no client work per record, the baseline the import is measured against.
#
# usage: bench/import/alone.sh CSV SESSIONS
# The CSV (as generate.py writes it) is staged into an unlogged table first,
# without the clock: its good records (a customer id seen first, a total not
# negative: what the import lands), each with the key the import would give
# it. Then, timed, SESSIONS sessions at once (each a share of the records,
# one transaction) insert the customers, their contacts and their orders into
# the benchmark's tables with `INSERT ... SELECT`: the same rows, keys,
# foreign keys, unique keys and checks as the import, the best case for the
# database (keys given, no round trip per chunk). Prints the seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
CSV=$1
SESSIONS=${2:-1}
PG=${BENCH_PG_URL:-postgres://root@127.0.0.1:5432/test}
sed 's/INTEGER PRIMARY KEY/SERIAL PRIMARY KEY/' bench/import/schema.sql | psql -q "$PG" 2>&1 | grep -v NOTICE || true
psql -q -v ON_ERROR_STOP=1 "$PG" <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_staged, bench_good;
CREATE UNLOGGED TABLE bench_staged (line BIGSERIAL, customer_id TEXT, name TEXT, email TEXT,
  plan TEXT, contact_name TEXT, contact_email TEXT, contact_phone TEXT, order_number TEXT,
  order_total TEXT, currency TEXT);
\copy bench_staged (customer_id, name, email, plan, contact_name, contact_email, contact_phone, order_number, order_total, currency) FROM '$CSV' WITH (FORMAT csv, HEADER)
CREATE UNLOGGED TABLE bench_good AS
  SELECT row_number() OVER (ORDER BY line) AS id, s.* FROM (
    SELECT *, row_number() OVER (PARTITION BY customer_id ORDER BY line) AS seen
    FROM bench_staged) s
  WHERE seen = 1 AND order_total::numeric >= 0;
SQL
N=$(psql -tA "$PG" -c "SELECT count(*) FROM bench_good")
share() { # session
  local from=$(( N * $1 / SESSIONS + 1 )) to=$(( N * ($1 + 1) / SESSIONS ))
  psql -q -v ON_ERROR_STOP=1 "$PG" <<SQL
BEGIN;
INSERT INTO customers (id, external_id, name, email, plan)
  SELECT id, customer_id, name, email, plan FROM bench_good WHERE id BETWEEN $from AND $to ORDER BY id;
INSERT INTO contacts (customer_id, name, email, phone)
  SELECT id, contact_name, contact_email, contact_phone FROM bench_good WHERE id BETWEEN $from AND $to ORDER BY id;
INSERT INTO orders (customer_id, number, total, currency)
  SELECT id, order_number, order_total::numeric, currency FROM bench_good WHERE id BETWEEN $from AND $to ORDER BY id;
COMMIT;
SQL
}
# The staging's dirty pages written out before the clock starts, as the
# import's are before its own (see run.sh).
psql -q "$PG" -c CHECKPOINT
start=$(date +%s.%N)
pids=()
for s in $(seq 0 $(( SESSIONS - 1 ))); do share "$s" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p"; done
end=$(date +%s.%N)
for t in customers contacts orders; do
  got=$(psql -tAc "SELECT count(*) FROM $t" "$PG")
  if [ "$got" != "$N" ]; then echo "alone: $t has $got rows, expected $N" >&2; exit 1; fi
done
psql -q "$PG" -c "DROP TABLE bench_staged, bench_good"
echo "$end - $start" | bc
