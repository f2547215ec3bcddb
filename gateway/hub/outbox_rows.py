"""The outbox's rows in SQL: the statements the writer runs, and deletes that are counted.

What lives here: the kind codes, the insert, lease and device-counter statements, `ranges`
(seqs to inclusive runs), `delete_readings` (the cap's drop: every reading through a seq, or one
device's readings in given ranges; each deleted row reported to the `Usage` sum), `delete_ranges`
(acks, counted by one aggregate per range), `device_oldest`, `oldest_readings`, `vacuum_some`,
and `Guard`, which turns sqlite3 errors into outbox errors and tells the writer of a failed
write and of a full disk. What may not: transactions, the head, caps or the ballast
(`gateway.hub.outbox`, `outbox_space`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from gateway.hub.outbox_file import DeviceDelta, Dropped, Kind, is_disk_full, translate_error
from gateway.hub.outbox_space import Usage

# Stored as 0/1: smaller rows, and the tuple gives mypy the Literal back on the way out.
KINDS: Final[tuple[Kind, Kind]] = ("reading", "event")
KIND_CODES: Final[Mapping[str, int]] = {"reading": 0, "event": 1}

LEASE_SQL: Final = "SELECT seq, kind, body, created FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?"
INSERT_SQL: Final = "INSERT INTO outbox (seq, kind, body, created, device) VALUES (?, ?, ?, ?, ?)"
DEVICE_SQL: Final = """
INSERT INTO devices (id, readings, decode_errors, last_reading, last_error)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    readings = readings + excluded.readings,
    decode_errors = decode_errors + excluded.decode_errors,
    last_reading = coalesce(excluded.last_reading, last_reading),
    last_error = coalesce(excluded.last_error, last_error)
"""
# The cap's drops say what they removed (RETURNING), so the running sums need no query of their
# own; they run a few times an outage.
# Acks delete whole seq ranges, hundreds of rows each: one aggregate per range, read in the same
# transaction just before its DELETE, counts them without a Python object per row.
_ACKED_SUM_SQL: Final = (
    "SELECT kind, device, count(*), sum(length(body)) FROM outbox WHERE seq BETWEEN ? AND ? "
    "GROUP BY kind, device"
)
_ACKED_SQL: Final = "DELETE FROM outbox WHERE seq BETWEEN ? AND ?"
_DROP_THROUGH_SQL: Final = (
    "DELETE FROM outbox WHERE seq <= ? AND kind = 0 RETURNING kind, device, length(body)"
)
_DROP_DEVICE_SQL: Final = (
    "DELETE FROM outbox WHERE seq BETWEEN ? AND ? AND kind = 0 AND device IS ? "
    "RETURNING kind, device, length(body)"
)
_DEVICE_OLDEST_SQL: Final = (
    "SELECT seq, length(body) FROM outbox WHERE kind = 0 AND device IS ? AND seq > ? "
    "ORDER BY device, seq LIMIT ?"
)


def device_counter_rows(devices: Mapping[str, DeviceDelta]) -> list[tuple[object, ...]]:
    """`DEVICE_SQL`'s parameters for each device's delta."""
    return [
        (dev, d.readings, d.decode_errors, d.last_reading, d.last_error)
        for dev, d in devices.items()
    ]


def ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Compress sequence numbers to inclusive (first, last) runs, so deletes are PK ranges."""
    out: list[tuple[int, int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def delete_ranges(conn: sqlite3.Connection, usage: Usage, runs: Iterable[tuple[int, int]]) -> None:
    """Delete every row in `runs` (acknowledged: readings and events alike)."""
    for first, last in runs:
        usage.remove_counted(conn.execute(_ACKED_SUM_SQL, (first, last)).fetchall())
        conn.execute(_ACKED_SQL, (first, last))


def delete_readings(
    conn: sqlite3.Connection, usage: Usage, through: int | None, drops: Sequence[Dropped]
) -> None:
    """The cap's drop: readings with seq <= `through`, and each `Dropped` device's readings
    in its ranges. Events are never deleted here."""
    if through is not None:
        usage.remove(conn.execute(_DROP_THROUGH_SQL, (through,)))
    for drop in drops:
        for first, last in drop.ranges:
            usage.remove(conn.execute(_DROP_DEVICE_SQL, (first, last, drop.device)))


def device_oldest(
    conn: sqlite3.Connection, device: str | None, after_seq: int, limit: int
) -> list[tuple[int, int]]:
    """(seq, body length) of `device`'s `limit` oldest readings after `after_seq` (the
    partial index on (device, seq) serves it)."""
    return [
        (seq, length)
        for seq, length in conn.execute(_DEVICE_OLDEST_SQL, (device, after_seq, limit))
    ]


def oldest_readings(conn: sqlite3.Connection, n: int) -> tuple[int, int, int] | None:
    """(first_seq, last_seq, count) of the `n` oldest readings, or None when there are none."""
    first, last, count = conn.execute(
        "SELECT min(seq), max(seq), count(*) FROM "
        "(SELECT seq FROM outbox WHERE kind = 0 ORDER BY seq LIMIT ?)",
        (n,),
    ).fetchone()
    return None if count == 0 else (first, last, count)


def vacuum_some(conn: sqlite3.Connection, above_pages: int, step_pages: int) -> None:
    """Give `step_pages` free pages back to the filesystem when more than `above_pages` are."""
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if free > above_pages:
        # The pragma frees one page per step and execute() steps only once; executescript()
        # steps it to the end, in a transaction of its own.
        conn.executescript(f"PRAGMA incremental_vacuum({step_pages})")


class Guard:
    """Translates sqlite3 errors into outbox errors. On any error of a write, `on_abort` runs
    (roll back); on a full disk, `on_full` (give up the ballast, lower the cap)."""

    __slots__ = ("_doing", "_on_abort", "_on_full", "_path")

    def __init__(
        self,
        path: Path,
        doing: str,
        on_abort: Callable[[], None] | None,
        on_full: Callable[[], None],
    ) -> None:
        self._path, self._doing, self._on_abort, self._on_full = path, doing, on_abort, on_full

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            return
        if is_disk_full(exc):
            self._on_full()
        if self._on_abort is not None:
            self._on_abort()
        if isinstance(exc, sqlite3.Error):
            raise translate_error(exc, self._path, self._doing) from exc
