#!/usr/bin/env bash
# The server's own answers while runs compute: 8 clients keep a webhook
# busy whose step computes for its whole 2 s expression limit
# (flows/busy.yaml), while `/api/health` is asked every 20 ms and an
# asynchronous webhook with the same step (flows/quick.yaml) every second.
# Prints the latency of both: p50, p99 and the largest. Goal: /api/health
# p99 at most 50 ms.
#
# usage: bench/robust/health.sh [SECONDS=15] [SLUICE_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-15}
BIN=${2:-}
if [ -z "$BIN" ]; then
  cargo build --release -q -p sluice
  BIN=target/release/sluice
fi
WORK=$(mktemp -d)
SERVER=
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
PORT=18193
"$BIN" serve --flows bench/robust/flows --listen 127.0.0.1:$PORT --store "$WORK/store.db" 2>/dev/null &
SERVER=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/api/health && break; sleep 0.1; done
python3 - "$PORT" "$SECS" <<'PY'
import http.client, sys, threading, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
end = time.time() + secs
busy_done = []
def busy():
    while time.time() < end:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request("POST", "/hooks/busy", "{}", {"content-type": "application/json"})
        c.getresponse().read()
        busy_done.append(1)
def sample(path, method, every, out):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while time.time() < end:
        t = time.time()
        c.request(method, path, "{}" if method == "POST" else None, {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        out.append((time.time() - t) * 1000)
        time.sleep(max(0, every - (time.time() - t)))
workers = [threading.Thread(target=busy) for _ in range(8)]
health, quick = [], []
samplers = [threading.Thread(target=sample, args=("/api/health", "GET", 0.02, health)),
            threading.Thread(target=sample, args=("/hooks/quick", "POST", 1.0, quick))]
for t in workers + samplers: t.start()
for t in workers + samplers: t.join()
def show(name, xs):
    if not xs:
        print(f"{name}: no answer within {secs:.0f} s")
        return
    xs = sorted(xs)
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    print(f"{name}: {len(xs)} answers, p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms, max {xs[-1]:.1f} ms")
show("/api/health", health)
show("async webhook 202", quick)
print(f"busy runs answered: {len(busy_done)}")
PY
