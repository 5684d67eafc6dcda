#!/usr/bin/env bash
# The webhook benchmark, side by side with the peers of ../shared/peers in
# one run: the order webhook (POST an order, answer {orderId, sum}
# synchronously) on `sluice serve` with every run recorded in its SQLite
# store, then on Node-RED (and n8n when it is installed), each pinned to one
# CPU with wrk on the other. Figures: requests per second and server CPU per
# request (bench_http.sh). Then checks that the store holds one succeeded run
# per request Sluice answered.
#
# usage: bench/serve/run.sh [DURATION=20s]
# SLUICE_BIN=PATH measures that binary instead of building this tree's.
# Needs the peers' tools: bash ../shared/peers/setup_tools.sh (wrk, node), and
# for Node-RED setup_nodered.sh; n8n is measured when setup_n8n.sh has run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DUR=${1:-20s}
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
. "$PEERS_DIR/env.sh"
command -v wrk >/dev/null || { echo "wrk is missing: run bash $PEERS_DIR/setup_tools.sh" >&2; exit 2; }
SLUICE_BIN=$(bench/sluice_bin.sh)
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
B() { bash "$PEERS_DIR/bench_http.sh" "$@"; }

# --- Sluice ---
PORT=18090
taskset -c "${SERVER_CPUS:-1}" "$SLUICE_BIN" serve --flows bench/serve/flows \
  --listen 127.0.0.1:$PORT --store "$WORK/store.db" 2> "$WORK/sluice.log" &
PIDS+=($!)
echo $! > "$WORK/sluice.pid"
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/api/health && break; sleep 0.1; done
B sluice_c16 http://127.0.0.1:$PORT/hooks/order "$DUR" 16 "$WORK/sluice.pid"
B sluice_c1 http://127.0.0.1:$PORT/hooks/order 10s 1 "$WORK/sluice.pid"
kill -TERM "$(cat "$WORK/sluice.pid")"; wait "$(cat "$WORK/sluice.pid")" || true
python3 - "$WORK/store.db" "$PEERS/results" <<'PY'
import sqlite3, sys, re, glob
db = sqlite3.connect(sys.argv[1])
runs = dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall())
steps = db.execute("SELECT count(*) FROM run_steps").fetchone()[0]
answered = 0
for name in ("sluice_c16", "sluice_c1"):
    text = open(f"{sys.argv[2]}/{name}.txt").read()
    answered += int(re.search(r"(\d+) requests in", text).group(1))
print(f"== store: {runs} runs, {steps} step records; wrk counted {answered} answers (plus sanity and warm-up requests)")
assert set(runs) == {"succeeded"}, runs
assert runs["succeeded"] >= answered and steps == runs["succeeded"], (runs, steps, answered)
PY

# --- Node-RED ---
if [ -d "$PEERS/nodered/node_modules/node-red" ]; then
  bash "$PEERS_DIR/setup_nodered_flow.sh" && bash "$PEERS_DIR/start_nodered.sh"
  PIDS+=("$(cat "$PEERS/nodered/nodered.pid")")
  B nodered_fn_c16 http://127.0.0.1:1880/order-fn "$DUR" 16 "$PEERS/nodered/nodered.pid"
  B nodered_fn_c1 http://127.0.0.1:1880/order-fn 10s 1 "$PEERS/nodered/nodered.pid"
  bash "$PEERS_DIR/stop_pidfile.sh" "$PEERS/nodered/nodered.pid"
else
  echo "Node-RED is not installed (bash $PEERS_DIR/setup_nodered.sh): skipped"
fi

# --- n8n ---
if [ -d "$PEERS/n8n/node_modules/n8n" ]; then
  [ -f "$PEERS/n8n/home/.n8n/database.sqlite" ] || bash "$PEERS_DIR/setup_n8n_flow.sh"
  N8N_EXPRESSION_ENGINE=legacy bash "$PEERS_DIR/start_n8n.sh"
  PIDS+=("$(cat "$PEERS/n8n/n8n.pid")")
  B n8n_legacyexpr_c16 http://127.0.0.1:5678/webhook/order "$DUR" 16 "$PEERS/n8n/n8n.pid"
  bash "$PEERS_DIR/stop_pidfile.sh" "$PEERS/n8n/n8n.pid"
else
  echo "n8n is not installed (bash $PEERS_DIR/setup_n8n.sh): skipped"
fi

echo "== summary (server CPU per request; goal for Sluice: <= 0.1 ms with every run recorded)"
for f in "$PEERS"/results/{sluice,nodered_fn,n8n_legacyexpr}_c*.txt; do
  [ -f "$f" ] || continue
  printf '%-22s %s | %s\n' "$(basename "$f" .txt)" "$(grep -E 'Requests/sec' "$f" | tr -s ' ')" "$(grep -E 'server CPU' "$f" | sed 's/== server CPU: //')"
done
