"""The durable store: signed readings and hub events wait here until the broker acknowledges them.

One SQLite file in WAL mode with ``synchronous=FULL``. A batch of entries is one transaction and
one fsync (group commit); once `Outbox.append` returns, the batch survives kill -9 and power loss.
Rows leave only through `Outbox.ack` (after the broker's PUBACK) or through a drop when a cap
(rows or bytes) is reached, and then the caller puts a signed gap event for the dropped seqs in
the same transaction, so nothing disappears silently. The cap drops readings only, never events.
Rows and bytes held are running sums; the byte cap and the ballast are `outbox_space.Room`'s.

What lives here: the `Outbox` writer (append, lease, ack, flush, per-device counters, meta
values; when to checkpoint is `gateway.hub.outbox_wal`'s). Opening the file (lock, WAL, schema,
migrations), the exception tree and the row records (`Entry`, `DeviceDelta`, ...) are in
`gateway.hub.outbox_file`; the read-only `read_status` for ``rtm-gateway status`` is in
`gateway.hub.outbox_status`. What may not:
signing, MQTT, asyncio or threads. The outbox is a plain blocking object whose calls each take a
few milliseconds; the daemon calls it from its event loop in batches. It opens its connection
with ``check_same_thread=False`` so a caller may move it to a worker thread, but the caller must
serialise access: an `Outbox` is not safe for concurrent use.

Acks are deleted in the write transaction that is already open (or one begun for them), and that
transaction is committed by the next `append` or `flush` (or by `ack` itself once it deleted
`Room.ack_budget` bytes): one fsync covers both, and `lease`, `depth` and `oldest_seqs` already
see the deletion. A failed commit keeps its acks; the next write redoes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from gateway.hub.outbox_file import (
    DeviceDelta,
    DeviceStats,
    Dropped,
    Entry,
    MetaValue,
    OutboxSequenceError,
    OutboxStats,
    connect,
    file_size,
    meta_value,
    probe_write,
    read_devices,
    read_head,
    take_lock,
    translate_error,
)
from gateway.hub.outbox_rows import (
    DEVICE_SQL,
    INSERT_SQL,
    KIND_CODES,
    KINDS,
    LEASE_SQL,
    Guard,
    delete_ranges,
    delete_readings,
    device_counter_rows,
    device_oldest,
    oldest_readings,
    ranges,
)
from gateway.hub.outbox_space import ROW_OVERHEAD, Room, SpaceLimits, Usage
from gateway.hub.outbox_wal import WalKeeper

log = logging.getLogger(__name__)
_LEASE_SQL, _ranges = LEASE_SQL, ranges  # the names tests know

# Meta keys the outbox owns; `set_meta` refuses them so a caller cannot rewind the sequence.
_RESERVED_META: Final = frozenset({"last_seq", "last_hash", "last_ack", "created", "opened"})


class Outbox:
    """The open outbox of one state directory. Create it with `Outbox.open`."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        lock_fd: int,
        max_rows: int,
        room: Room,
    ) -> None:
        self._path = path
        self._conn = conn
        self._lock_fd = lock_fd
        self._max_rows = max_rows
        self._in_txn = False
        # Work done in the open transaction; kept so it can be redone if the commit fails.
        self._txn_acks: list[tuple[int, int]] = []
        self._txn_freed = 0  # bytes the open transaction's acks deleted
        self._txn_meta: dict[str, MetaValue] = {}
        self._replay = False
        # A write met a full disk: checkpoint once it is rolled back (see `_abort`).
        self._full_seen = False
        self._last_seq, self._last_hash = read_head(conn, path)
        self._usage = Usage.load(conn)
        self._room = room
        self._wal = WalKeeper(conn, path, room)
        probe_write(conn, path)
        self._room.start()

    # ---- opening and closing -----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        max_rows: int = 1_000_000,
        *,
        space: SpaceLimits | None = None,
    ) -> Outbox:
        """Open the outbox at `path`, creating it (and its directory) on first run.

        Takes an exclusive advisory lock on ``<path>.lock`` so a second daemon on the same state
        dir is refused instead of interleaving sequence numbers. `space` sets the byte cap and the
        ballast (``<path>.ballast``); by default both are derived from the free space.
        """
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        path = Path(path)
        lock_fd = take_lock(path)
        try:
            conn = connect(path)
            try:
                room = Room(path, space or SpaceLimits())
                return cls(path, conn, lock_fd, max_rows, room)
            except sqlite3.Error as exc:
                conn.close()
                raise translate_error(exc, path, "open the outbox") from exc
            except BaseException:
                conn.close()
                raise
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        """Commit what is pending, checkpoint the WAL into the database, close, unlock."""
        try:
            self.flush()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:  # the data is committed; a checkpoint can wait
                log.warning(
                    "outbox %s: final checkpoint failed (%s); it will run next start",
                    self._path,
                    exc,
                )
        finally:
            self._conn.close()
            with contextlib.suppress(OSError):  # the pid is only a hint for `status`
                os.ftruncate(self._lock_fd, 0)
            os.close(self._lock_fd)

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- reading ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_rows(self) -> int:
        return self._max_rows

    @property
    def max_bytes(self) -> int:
        """The byte cap in force: the configured or derived one, lower while the outbox itself
        has filled its disk (until the ballast can be made again)."""
        return self._room.max_bytes

    @property
    def room(self) -> Room:
        return self._room

    def stored_bytes(self) -> int:
        """Bytes the rows count against the cap (bodies plus a fixed overhead per row)."""
        return self._usage.bytes

    def device_rows(self) -> dict[str | None, int]:
        """Readings held per device (None: readings stored before devices were recorded)."""
        return dict(self._usage.device_rows)

    def device_oldest(
        self, device: str | None, after_seq: int, limit: int
    ) -> list[tuple[int, int]]:
        """(seq, stored size) of `device`'s `limit` oldest readings after `after_seq`."""
        with self._guard("read from"):
            rows = device_oldest(self._conn, device, after_seq, limit)
        return [(seq, length + ROW_OVERHEAD) for seq, length in rows]

    def head(self) -> tuple[int, str]:
        """(last_seq, last_hash) of the last committed entry; (0, "") for a new outbox.

        Kept in the meta table, so it survives the deletion of every row and a restart.
        """
        return self._last_seq, self._last_hash

    def depth(self) -> int:
        """Rows waiting for an ack (acks not yet flushed are already subtracted)."""
        return self._usage.rows

    def lease(self, after_seq: int, limit: int) -> list[Entry]:
        """The `limit` oldest entries with seq > `after_seq`, in seq order (a PK range scan)."""
        with self._guard("read from"):
            rows = self._conn.execute(_LEASE_SQL, (after_seq, limit)).fetchall()
        return [Entry(seq, KINDS[kind], body, created) for seq, kind, body, created in rows]

    def oldest_seqs(self, n: int) -> tuple[int, int, int] | None:
        """(first_seq, last_seq, count) of the `n` oldest readings, or None when there are none.

        For the cap: sign a gap event for first..last and pass ``drop_through=last`` with it.
        Only readings are dropped: hub events (the gap events above all) stay until delivered,
        so an announcement of an earlier drop can never itself be dropped unannounced.
        """
        with self._guard("read from"):
            return oldest_readings(self._conn, n)

    def stats(self) -> OutboxStats:
        with self._guard("read from"):
            row = self._conn.execute("SELECT created FROM outbox ORDER BY seq LIMIT 1").fetchone()
            last_ack = self.get_meta("last_ack")
        return OutboxStats(
            depth=self._usage.rows,
            oldest_created=None if row is None else float(row[0]),
            newest_seq=self._last_seq,
            last_ack=None if last_ack is None else float(last_ack),
            db_bytes=file_size(self._path),
            wal_bytes=file_size(self._path.with_name(self._path.name + "-wal")),
        )

    def devices(self) -> dict[str, DeviceStats]:
        with self._guard("read from"):
            return read_devices(self._conn)

    def get_meta(self, key: str) -> MetaValue | None:
        """A meta value, including one set but not yet committed."""
        with self._guard("read from"):
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else meta_value(row[0])

    # ---- writing ------------------------------------------------------------------------------

    def append(
        self,
        entries: Sequence[Entry],
        last_hash: str,
        drop_through: int | Sequence[Dropped] | None = None,
        devices: Mapping[str, DeviceDelta] | None = None,
        meta: Mapping[str, MetaValue] | None = None,
    ) -> None:
        """Store `entries` and everything pending in ONE transaction (one fsync).

        `entries` must continue the sequence: seqs last_seq + 1, + 2, ... `last_hash` is the
        chain hash after the last of them. `drop_through` deletes every reading with seq <= it,
        or given `Dropped` records, the readings of their device in their ranges (the cap; the
        gap events announcing them should be among `entries`; events are kept).
        `devices` is added to the per-device counters. `meta` values are stored in the same
        transaction (positions that must not run ahead of the entries; unlike `set_meta` they are
        not replayed after a failed commit: the caller retries them with the entries). On error
        nothing of this call is stored; pending acks stay pending.
        """
        expected = self._last_seq + 1
        for i, entry in enumerate(entries):
            if entry.seq != expected + i:
                raise OutboxSequenceError(
                    f"outbox {self._path}: entry {i} has seq {entry.seq}, expected "
                    f"{expected + i} (the stored sequence ends at {self._last_seq})"
                )
        if not entries and last_hash != self._last_hash:
            raise OutboxSequenceError(f"outbox {self._path}: last_hash changed without new entries")
        through = drop_through if isinstance(drop_through, int) else None
        drops = () if isinstance(drop_through, int) else drop_through or ()
        top = max((r[1] for d in drops for r in d.ranges), default=through)
        if top is not None and top > self._last_seq:
            raise OutboxSequenceError(
                f"outbox {self._path}: drop_through={drop_through} would drop entries not yet "
                f"stored (the stored sequence ends at {self._last_seq})"
            )
        if meta and (reserved := _RESERVED_META.intersection(meta)):
            raise ValueError(f"meta keys {sorted(reserved)} belong to the outbox")
        new_seq = self._last_seq + len(entries)
        usage = self._usage
        with self._guard("write to", rollback=True):
            self._begin()
            # The drop first: on a full disk the new rows need the pages it frees.
            before = usage.bytes
            delete_readings(self._conn, usage, through, drops)
            dropped = before - usage.bytes
            self._conn.executemany(
                INSERT_SQL,
                [(e.seq, KIND_CODES[e.kind], e.body, e.created, e.device) for e in entries],
            )
            added = usage.add_entries(entries)
            if devices:
                self._conn.executemany(DEVICE_SQL, device_counter_rows(devices))
            if meta:
                self._conn.executemany(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items())
                )
            if entries:
                self._conn.executemany(
                    "UPDATE meta SET value = ? WHERE key = ?",
                    [(new_seq, "last_seq"), (last_hash, "last_hash")],
                )
            self._commit()
        self._last_seq, self._last_hash = new_seq, last_hash
        self._wal.wrote(len(entries), added + dropped)
        self._wal.upkeep(self._usage.bytes)  # checkpoint, vacuum, ballast

    def ack(self, seqs: Iterable[int], now: float | None = None) -> None:
        """The broker acknowledged these: delete them, committed with the next append/flush."""
        runs = _ranges(seqs)
        if not runs:
            return
        usage = self._usage
        # Kept before anything runs: if the delete or the commit fails (a full disk), the next
        # write or flush redoes it. The broker has these; they are not to be sent forever.
        self._txn_acks.extend(runs)
        with self._guard("write to", rollback=True):
            self._begin()
            before = usage.bytes
            delete_ranges(self._conn, usage, runs)
            freed = before - usage.bytes
            self._wal.wrote(0, freed)
            self._txn_freed += freed
            self._set_meta_in_txn("last_ack", time.time() if now is None else now)
            if self._txn_freed < self._room.ack_budget:
                return
            # A fast drain acks thousands of rows between flushes: commit now, so that one
            # transaction's WAL stays within the room a full disk leaves.
            self._commit()
        self._wal.upkeep(self._usage.bytes)  # checkpoint, vacuum, ballast

    def flush(self) -> None:
        """Commit pending acks and meta values now (call it when no appends come)."""
        if not self._in_txn and not self._replay:
            return
        with self._guard("write to", rollback=True):
            self._begin()
            self._commit()
        self._wal.upkeep(self._usage.bytes)  # checkpoint, vacuum, ballast

    def set_meta(self, key: str, value: MetaValue) -> None:
        """Store a meta value (e.g. last publish time), committed with the next append/flush."""
        if key in _RESERVED_META:
            raise ValueError(f"meta key {key!r} belongs to the outbox")
        with self._guard("write to", rollback=True):
            self._begin()
            self._set_meta_in_txn(key, value)

    def checkpoint(self) -> None:
        """Copy the WAL into the database without waiting for readers (PASSIVE)."""
        self.flush()
        with self._guard("checkpoint"):
            self._wal.checkpoint()

    # ---- internals ----------------------------------------------------------------------------

    def _guard(self, doing: str, *, rollback: bool = False) -> Guard:
        def on_full() -> None:
            self._room.disk_full(self._usage.bytes)
            self._full_seen = True

        return Guard(self._path, doing, self._abort if rollback else None, on_full)

    def _begin(self) -> None:
        if self._in_txn and not self._conn.in_transaction:
            self._abort()  # SQLite rolled it back itself (a full disk): redo what it carried
        if self._in_txn:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        if self._replay:
            self._replay = False  # `_abort` sets it again if this fails
            self._redo()

    def _redo(self) -> None:
        """The previous transaction failed: redo the meta values and acks it carried. Acks
        that piled up while the disk was full are committed a budget at a time, each part
        followed by a checkpoint, so no transaction needs more WAL than the disk has."""
        for key, value in self._txn_meta.items():
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        acks, usage, budget = self._txn_acks, self._usage, self._room.ack_budget
        before, start = usage.bytes, 0
        for i, run in enumerate(acks):
            delete_ranges(self._conn, usage, (run,))
            if before - usage.bytes < budget or i + 1 == len(acks):
                continue
            self._txn_acks, start = acks[start : i + 1], i + 1
            try:
                self._commit()
            finally:  # committed or not, the rest stays to be redone
                self._txn_acks += acks[i + 1 :]
            self._wal.after_full()
            self._conn.execute("BEGIN IMMEDIATE")
            self._in_txn = True
            before = usage.bytes
        self._txn_freed = before - usage.bytes

    def _commit(self) -> None:
        self._conn.execute("COMMIT")
        self._in_txn = False
        self._txn_acks.clear()
        self._txn_meta.clear()
        self._txn_freed = 0
        self._usage.commit()
        self._wal.committed()

    def _abort(self) -> None:
        """After a failed statement or commit: roll back, keep acks and meta for the next try."""
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.warning("outbox %s: rollback failed (%s)", self._path, exc)
        self._in_txn = False
        self._txn_freed = 0
        self._usage.rollback()
        if self._full_seen:
            self._full_seen = False
            self._wal.after_full()
        self._replay = bool(self._txn_acks or self._txn_meta)
        if self._replay:
            # Redo them now so lease/depth go on seeing the acks; if that fails too, the next
            # write retries.
            try:
                self._begin()
            except sqlite3.Error as exc:
                log.debug("outbox %s: cannot reapply pending acks yet (%s)", self._path, exc)
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._in_txn = False
                self._usage.rollback()
                self._replay = True

    def _set_meta_in_txn(self, key: str, value: MetaValue) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        self._txn_meta[key] = value
