#!/usr/bin/env bash
# The chaos test's long form: three `sluice serve` on one PostgreSQL store
# under webhook load (sql.upsert and sql.create with a unique ref per
# request; sleeps, a long step, event waits, synchronous answers), one of
# them killed with SIGKILL every 2-3.5 s and started again, for SECS
# seconds; then every accepted run must have succeeded once, each step be
# recorded once and each ref's rows be there once. The test suite runs the
# same for 20 s (crates/sluice/tests/serve.rs,
# three_processes_on_one_postgres_store_lose_and_repeat_nothing_under_kill_9).
#
# usage: bench/chaos/run.sh [SECS=90]
#   SLUICE_TEST_POSTGRES_URL  the server to use (default: local, database test)
set -euo pipefail
cd "$(dirname "$0")/../.."
export SLUICE_TEST_POSTGRES_URL=${SLUICE_TEST_POSTGRES_URL:-postgres://root@127.0.0.1:5432/test}
export SLUICE_CHAOS_SECS=${1:-90}
cargo nextest run -p sluice --test serve --no-capture \
  -E 'test(three_processes_on_one_postgres_store)' 2>&1 \
  | grep -E '^chaos:|PASS|FAIL|panicked|Summary'
