#!/usr/bin/env python3
"""Write N legacy billing customers as CSV (an account, a contact and an order
each), with a bad record every BAD_EVERY records: alternately a duplicate
customer id (refused by the unique key of the first patch) and a negative
order total (refused by a CHECK on the third patch, after the first two
were written).

usage: generate.py N BAD_EVERY OUT.csv
"""
import csv
import sys

n, bad_every, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["customer_id", "name", "email", "plan", "contact_name",
                "contact_email", "contact_phone", "order_number", "order_total",
                "currency"])
    bad = 0
    for i in range(1, n + 1):
        cid, total = f"C-{i}", f"{(i * 37) % 10000 / 100:.2f}"
        if bad_every and i % bad_every == 0:
            bad += 1
            if bad % 2:
                cid = f"C-{i - 1}"
            else:
                total = "-1.00"
        w.writerow([cid, f"Customer {i}", f"billing{i}@example.com",
                    ["basic", "pro", "enterprise"][i % 3], f"Contact {i}",
                    f"contact{i}@example.com", f"+1 555 {i % 10000:04d}",
                    f"SO-{i}", total, ["EUR", "USD", "GBP"][i % 3]])
print(f"{out}: {n} records, {bad} bad", file=sys.stderr)
