"""Outbox throughput: group-commit appends and the lease/ack cycle under a 1 M-row backlog.

Prints numbers, asserts nothing. Run from the repository root:

    PYTHONPATH=. .venv/bin/python bench/outbox_bench.py [--backlog 1000000] [--dir DIR]

Targets: append >= 150k rows/s at batch 100 with
synchronous=FULL; lease+ack cycle >= 100k rows/s with a 1 M-row backlog. Medians of 3 runs.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gateway.hub import outbox
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import Entry
from gateway.hub.outbox_status import read_status

BODY = b"x" * 300
RUNS = 3


def batch(first: int, n: int) -> list[Entry]:
    now = time.time()
    return [Entry(s, "reading", BODY, now) for s in range(first, first + n)]


def median_of(runs: int, one: Callable[[], float]) -> float:
    return statistics.median(one() for _ in range(runs))


def bench_raw(root: Path) -> float:
    """Plain sqlite3, same settings, batch 100: the machine's ceiling today (fsync speed varies
    on a shared machine, so compare the outbox with this rather than with old figures)."""

    def one() -> float:
        con = sqlite3.connect(root / f"raw-{time.monotonic_ns()}.db", isolation_level=None)
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
        con.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, kind INT, body BLOB, created REAL)")
        start = time.perf_counter()
        for s in range(1, 200_001, 100):
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                "INSERT INTO t VALUES (?, 0, ?, ?)", [(i, BODY, 1.0) for i in range(s, s + 100)]
            )
            con.execute("COMMIT")
        elapsed = time.perf_counter() - start
        con.close()
        return 200_000 / elapsed

    return median_of(RUNS, one)


def bench_append(root: Path, size: int) -> float:
    rows = {1: 3_000, 10: 30_000, 100: 200_000, 1000: 300_000}[size]

    def one() -> float:
        path = root / f"append-{size}-{time.monotonic_ns()}.db"
        with Outbox.open(path) as box:
            batches = [batch(s, size) for s in range(1, rows + 1, size)]
            start = time.perf_counter()
            for b in batches:
                box.append(b, f"h{b[-1].seq}")
            elapsed = time.perf_counter() - start
        return rows / elapsed

    return median_of(RUNS, one)


def fill(path: Path, backlog: int) -> None:
    with Outbox.open(path, max_rows=backlog * 2) as box:
        for s in range(1, backlog + 1, 1000):
            box.append(batch(s, min(1000, backlog + 1 - s)), f"h{s}")


def cycle_runs(box: Outbox, rows: int, refill: bool) -> tuple[float, float]:
    """lease 100 oldest -> ack them -> commit (with 100 new rows when `refill`)."""
    latencies: list[float] = []
    done = 0
    start = time.perf_counter()
    while done < rows:
        t0 = time.perf_counter()
        leased = box.lease(0, 100)
        box.ack(e.seq for e in leased)
        if refill:
            seq, _ = box.head()
            box.append(batch(seq + 1, 100), f"h{seq + 100}")
        else:
            box.flush()
        latencies.append(time.perf_counter() - t0)
        done += len(leased)
        if not leased:
            break
    rate = done / (time.perf_counter() - start)
    return rate, statistics.quantiles(latencies, n=100)[98] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=1_000_000)
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to put the databases (default: a temporary directory)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(
            f"SQLite {sqlite3.sqlite_version}, synchronous=FULL, WAL, 300-byte bodies, "
            f"median of {RUNS} runs"
        )
        print(f"raw sqlite3 insert, batch 100: {bench_raw(root):>10,.0f} rows/s")
        for size in (1, 10, 100, 1000):
            print(f"append, batch {size:>4}: {bench_append(root, size):>10,.0f} rows/s")

        path = root / "backlog.db"
        t0 = time.perf_counter()
        fill(path, args.backlog)
        print(
            f"filled {args.backlog:,} rows in {time.perf_counter() - t0:.1f} s; "
            f"file {path.stat().st_size / 1e6:.0f} MB"
        )
        t0 = time.perf_counter()
        box = Outbox.open(path, max_rows=args.backlog * 2)
        print(
            f"open with {box.depth():,} rows (count at open): "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms"
        )
        try:
            plan = box._conn.execute("EXPLAIN QUERY PLAN " + outbox._LEASE_SQL, (0, 100)).fetchall()
            print("lease plan:", "; ".join(str(row[-1]) for row in plan))
            for refill, label in (
                (True, "lease 100 + ack + append 100, one commit"),
                (False, "lease 100 + ack + flush (drain)"),
            ):
                results = [cycle_runs(box, 100_000, refill) for _ in range(RUNS)]
                rate = statistics.median(r for r, _ in results)
                p99 = statistics.median(p for _, p in results)
                print(
                    f"{label}: {rate:>10,.0f} rows/s, p99 cycle {p99:.2f} ms "
                    f"(backlog now {box.depth():,})"
                )
            t0 = time.perf_counter()
            snap = read_status(path)
            print(
                f"read_status beside the writer: {(time.perf_counter() - t0) * 1000:.0f} ms "
                f"(depth {snap.stats.depth:,})"
            )
        finally:
            box.close()


if __name__ == "__main__":
    main()
