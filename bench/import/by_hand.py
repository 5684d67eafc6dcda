#!/usr/bin/env python3
"""The import a user writes by hand: the benchmark's CSV into the same three
PostgreSQL tables with psycopg 3, in batches of BATCH records, one
transaction per batch, each table's rows by one executemany (the customers'
with RETURNING, for the ids their contacts and orders point to). No
per-record isolation: a batch holding a bad record is rolled back whole and
its records are not written (counted and reported, as such a script would).

usage: by_hand.py URL CSV [BATCH=500]
Prints: seconds, records written, records lost with their batch, batches
failed (tab-separated). Needs psycopg 3 (pip install 'psycopg[binary]').
"""

import csv
import sys
import time

import psycopg


def batches(path, size):
    with open(path, newline="") as f:
        batch = []
        for row in csv.DictReader(f):
            batch.append(row)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def write(cur, batch):
    cur.executemany(
        "INSERT INTO customers (external_id, name, email, plan) "
        "VALUES (%s, %s, %s, %s) RETURNING id",
        [(r["customer_id"], r["name"], r["email"], r["plan"]) for r in batch],
        returning=True,
    )
    ids = []
    while True:
        ids.append(cur.fetchone()[0])
        if not cur.nextset():
            break
    cur.executemany(
        "INSERT INTO contacts (customer_id, name, email, phone) VALUES (%s, %s, %s, %s)",
        [
            (i, r["contact_name"], r["contact_email"], r["contact_phone"])
            for i, r in zip(ids, batch)
        ],
    )
    cur.executemany(
        "INSERT INTO orders (customer_id, number, total, currency) VALUES (%s, %s, %s, %s)",
        [
            (i, r["order_number"], r["order_total"], r["currency"])
            for i, r in zip(ids, batch)
        ],
    )


def main():
    url, path = sys.argv[1], sys.argv[2]
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    written = lost = failed = 0
    start = time.perf_counter()
    with psycopg.connect(url) as conn:
        for batch in batches(path, size):
            try:
                with conn.transaction():
                    with conn.cursor() as cur:
                        write(cur, batch)
                written += len(batch)
            except psycopg.errors.IntegrityError:
                lost += len(batch)
                failed += 1
    print(f"{time.perf_counter() - start:.2f}\t{written}\t{lost}\t{failed}")


if __name__ == "__main__":
    main()
