#!/usr/bin/env bash
# Many large bodies at once: CLIENTS (100) requests of a 1 MB JSON order
# each, sent together to a synchronous webhook whose flow runs two
# transforms over the order (`bench/large/flows/order.yaml`), every run
# recorded in a store file. Prints the server's peak memory against what
# the bodies weigh together, and the time until the last answer.
# Goal (issue 26): peak memory at most 3 times what the bodies weigh.
#
#   bench/large/concurrent.sh [CLIENTS=100] [ITEMS=10000]   (builds the release binary)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
clients=${1:-100}
items=${2:-10000}
# SLUICE_BIN=PATH measures that binary instead of building this tree's.
bin=$("$root/bench/sluice_bin.sh")
work=$(mktemp -d)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
python3 - "$items" "$work/order.json" <<'PY'
import json, sys
n, out = int(sys.argv[1]), sys.argv[2]
items = [{"sku": f"SKU-{i:07d}", "qty": i % 7 + 1, "price": round(i * 0.37 % 100, 2),
          "note": "an item of the order"} for i in range(n)]
json.dump({"orderId": "O-1", "customer": "C-1", "items": items}, open(out, "w"))
PY
port=18197
"$bin" serve --flows "$root/bench/large/flows" --listen 127.0.0.1:$port \
  --store "$work/store.db" --max-runs-in-flight 100000 2> "$work/server.log" &
server=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:$port/api/health && break; sleep 0.1; done
base=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
python3 - "$clients" "$work/order.json" "http://127.0.0.1:$port/hooks/order" "$server" "$base" <<'PY'
import sys, threading, time, urllib.request
clients, path, url, pid, base = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
body = open(path, "rb").read()
codes, start = [], threading.Event()
def send():
    start.wait()
    req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            r.read()
            codes.append(r.status)
    except Exception as e:
        codes.append(str(e))
threads = [threading.Thread(target=send) for _ in range(clients)]
for t in threads:
    t.start()
t0 = time.time()
start.set()
for t in threads:
    t.join()
took = time.time() - t0
peak = 0
for line in open(f"/proc/{pid}/status"):
    if line.startswith("VmHWM"):
        peak = int(line.split()[1])
weigh = clients * len(body)
ok = sum(1 for c in codes if c == 200)
print(f"{clients} bodies of {len(body) / 1e6:.2f} MB ({weigh / 1e6:.0f} MB together): {ok} answered 200 in {took:.2f} s")
print(f"server peak memory {peak / 1024:.0f} MB ({(peak - base) / 1024:.0f} MB above its {base / 1024:.0f} MB at rest) = {peak * 1024 / weigh:.2f} x the bodies (goal: at most 3)")
PY
