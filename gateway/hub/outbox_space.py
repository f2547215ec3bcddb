"""The outbox's room on disk: what it stores (a running count), its byte cap, and a ballast.

What lives here:

- `Usage`: the rows and bytes the outbox holds, in total and rows per device, kept as a running
  sum by the writer (one query when the file is opened, none per commit), with the committed
  values kept apart so a rolled-back transaction can be undone.
- `derive_max_bytes`: the default byte cap, from the free space of the outbox's filesystem at
  start (see its docstring for the formula).
- `Ballast`: a file of reserved space next to the outbox. It is deleted the first time the
  disk is found full, so deleting acknowledged rows, the checkpoint and the cap's drop (all of
  them writes) can still run; it is made again once the filesystem has room.
- `SpaceLimits` (the configured values) and `Room`: the byte cap in force and the ballast, and
  what a full disk does to them.

What may not: SQL writes or the rows themselves (that is `gateway.hub.outbox`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gateway.hub.outbox_file import Entry

log = logging.getLogger("gateway.hub.outbox")

MIB: Final = 1024 * 1024
# Stored bytes of a row beyond its body: seq, kind, created, the device id, the cell and the
# device index entry. The file is larger still by page slack; the default cap leaves room.
ROW_OVERHEAD: Final = 64
BALLAST_MAX: Final = 32 * MIB
BALLAST_SHARE: Final = 16  # at most 1/16 of the filesystem's room on a small disk
MIN_MAX_BYTES: Final = 1 * MIB
# How often a missing ballast is tried again (a statvfs each time).
BALLAST_RETRY_S: Final = 1.0


def stored_size(body: bytes) -> int:
    """What one row counts against the byte cap."""
    return len(body) + ROW_OVERHEAD


def outbox_files_size(path: Path) -> int:
    """The database, its WAL and shared-memory file: what the outbox occupies now."""
    total = 0
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        with contextlib.suppress(OSError):
            total += path.with_name(name).stat().st_size
    return total


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on `folder`'s filesystem."""
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def ballast_size(room: int) -> int:
    """32 MiB, or a sixteenth of `room` (free space plus what the outbox holds) if smaller."""
    return max(0, min(BALLAST_MAX, room // BALLAST_SHARE))


def derive_max_bytes(room: int, reserve: int) -> int:
    """The default byte cap: half of `room` (the filesystem's free space at start plus what the
    outbox and its ballast already occupy there), minus `reserve`, and at least 1 MiB.

    The other half is headroom for what the cap does not count: the WAL until a checkpoint,
    page slack, and other writers on the same filesystem."""
    return max(MIN_MAX_BYTES, room // 2 - reserve)


class Usage:
    """Rows and bytes the outbox holds, as a running sum (`rows`, `bytes`, `device_rows`).

    `add`, `remove` and `remove_counted` change the live values inside a transaction; `commit`
    makes them the committed ones and `rollback` goes back to those."""

    __slots__ = ("_committed", "bytes", "device_rows", "rows")

    def __init__(self, rows: int, nbytes: int, device_rows: dict[str | None, int]) -> None:
        self.rows = rows
        self.bytes = nbytes
        self.device_rows = device_rows
        self._committed = (rows, nbytes, dict(device_rows))

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> Usage:
        """Count what the file holds: one scan when the outbox is opened."""
        rows = nbytes = 0
        device_rows: dict[str | None, int] = {}
        for kind, device, count, size in conn.execute(
            "SELECT kind, device, count(*), coalesce(sum(length(body)), 0) FROM outbox "
            "GROUP BY kind, device"
        ):
            rows += count
            nbytes += size + count * ROW_OVERHEAD
            if kind == 0:
                device_rows[device] = device_rows.get(device, 0) + count
        return cls(rows, nbytes, device_rows)

    def add(self, device: str | None, reading: bool, size: int) -> None:
        self.rows += 1
        self.bytes += size
        if reading:
            self.device_rows[device] = self.device_rows.get(device, 0) + 1

    def add_entries(self, entries: Iterable[Entry]) -> int:
        """New rows; returns the bytes they count."""
        added = 0
        for e in entries:
            size = len(e.body) + ROW_OVERHEAD
            added += size
            self.add(e.device, e.kind == "reading", size)
        return added

    def remove(self, gone: Iterable[tuple[int, str | None, int]]) -> None:
        """Rows deleted: (kind code, device, body length) as the DELETE returned them."""
        device_rows = self.device_rows
        for kind, device, length in gone:
            self.rows -= 1
            self.bytes -= length + ROW_OVERHEAD
            if kind == 0:
                left = device_rows.get(device, 0) - 1
                if left > 0:
                    device_rows[device] = left
                else:
                    device_rows.pop(device, None)

    def remove_counted(self, groups: Iterable[tuple[int, str | None, int, int]]) -> None:
        """Rows about to be deleted, counted: (kind code, device, rows, body bytes)."""
        device_rows = self.device_rows
        for kind, device, count, size in groups:
            self.rows -= count
            self.bytes -= size + count * ROW_OVERHEAD
            if kind == 0:
                left = device_rows.get(device, 0) - count
                if left > 0:
                    device_rows[device] = left
                else:
                    device_rows.pop(device, None)

    def commit(self) -> None:
        self._committed = (self.rows, self.bytes, dict(self.device_rows))

    def rollback(self) -> None:
        rows, nbytes, device_rows = self._committed
        self.rows, self.bytes, self.device_rows = rows, nbytes, dict(device_rows)


class Ballast:
    """A file of `size` reserved bytes beside the outbox, given up when the disk is full."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._next_try = 0.0

    @property
    def present(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def release(self) -> bool:
        """Delete the ballast; True if that freed space (it was there)."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("cannot delete the ballast file %s (%s)", self.path, exc)
            return False
        log.warning(
            "the disk is full: released the %d-byte ballast file %s so acknowledgements, "
            "checkpoints and the cap's drop can still be written; free space on that "
            "filesystem",
            self.size,
            self.path,
        )
        self._next_try = time.monotonic() + BALLAST_RETRY_S
        return True

    def ensure(self, *, force: bool = False) -> bool:
        """Make the ballast if it is missing and the filesystem has room for it and a quarter.
        Checks at most every few seconds unless `force`. True when the ballast is there."""
        if self.size <= 0:
            return False
        if self.present:
            return True
        now = time.monotonic()
        if not force and now < self._next_try:
            return False
        self._next_try = now + BALLAST_RETRY_S
        try:
            if free_bytes(self.path.parent) < self.size + self.size // 4:
                return False
            self._write()
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                log.warning("cannot create the ballast file %s (%s)", self.path, exc)
            return False
        return True

    def _write(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, self.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                # No fallocate here: write real blocks, so the space is truly taken.
                chunk = bytes(MIB)
                written = 0
                while written < self.size:
                    written += os.write(fd, chunk[: self.size - written])
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class SpaceLimits:
    """The outbox's byte cap and ballast as configured (``[outbox]``); None is derived.

    `max_bytes` None derives the cap from the free space (`derive_max_bytes`, less `reserve`,
    which defaults to the ballast's size); `ballast_bytes` None sizes the ballast from it
    (`ballast_size`), 0 goes without."""

    max_bytes: int | None = None
    reserve: int | None = None
    ballast_bytes: int | None = None


class Room:
    """The outbox's byte cap and ballast, and what a full disk does to them."""

    def __init__(self, path: Path, limits: SpaceLimits) -> None:
        max_bytes, reserve, ballast_bytes = limits.max_bytes, limits.reserve, limits.ballast_bytes
        self._path = path
        ballast = path.with_name(path.name + ".ballast")
        # Room: free space plus what is already ours on that filesystem (outbox and ballast).
        ours = outbox_files_size(path)
        with contextlib.suppress(OSError):
            ours += ballast.stat().st_size
        room = free_bytes(path.parent) + ours
        size = ballast_size(room) if ballast_bytes is None else ballast_bytes
        self.ballast = Ballast(ballast, size)
        self.configured = (
            derive_max_bytes(room, size if reserve is None else reserve)
            if max_bytes is None
            else max_bytes
        )
        # Lowered when the outbox itself filled its disk; lifted once the ballast is back.
        self._full_cap: int | None = None
        self.refusals = 0  # writes the full disk refused (commits, checkpoints, reads' spills)

    @property
    def max_bytes(self) -> int:
        """The configured or derived cap, lower while the outbox itself has filled its disk."""
        if self._full_cap is None:
            return self.configured
        return min(self.configured, self._full_cap)

    @property
    def full(self) -> bool:
        """The cap is lowered because the outbox filled its disk."""
        return self._full_cap is not None

    @property
    def full_step(self) -> int:
        """Bytes dropped at a time while the disk is full: a drop is itself written to the
        WAL (the pages it empties), so it must fit in the ballast's room with a batch."""
        if not self.ballast.size:
            return self.configured // 20
        return max(64 * 1024, self.ballast.size // 4)

    @property
    def wal_budget(self) -> int:
        """WAL bytes between checkpoints: a sixteenth of the cap, and at most a quarter of the
        ballast, so that on a full disk the ballast's room can take the checkpoint."""
        budget = self.configured // 16
        if self.ballast.size:
            budget = min(budget, self.ballast.size // 4)
        return max(256 * 1024, budget)

    @property
    def ack_budget(self) -> int:
        """Bytes of acknowledged rows one transaction deletes at most: deleting rewrites
        pages, about half a byte of WAL per byte deleted, so half the WAL budget."""
        return self.wal_budget // 2

    def start(self) -> None:
        if not self.ballast.ensure(force=True) and self.ballast.size:
            log.warning(
                "outbox %s: no room for the %d-byte ballast file %s; a full disk is then "
                "handled by dropping readings only",
                self._path,
                self.ballast.size,
                self.ballast.path,
            )

    def disk_full(self, held: int) -> None:
        """SQLITE_FULL or ENOSPC was seen; the outbox holds `held` bytes. The ballast is given
        up: that room lets acks, the checkpoint and the cap's drop be written. When the outbox
        is what filled the disk (its files take half of their filesystem, or it holds half of
        its byte cap), the byte cap is also lowered below what it holds: the
        journal's next try then drops the oldest readings under signed gap events, in the
        ballast's room, instead of only retrying. A small outbox on a disk that something else
        filled would gain little by dropping: the journal keeps its readings and retries."""
        self.refusals += 1
        self.ballast.release()
        try:
            st = os.statvfs(self._path.parent)
        except OSError:
            return
        fills_disk = outbox_files_size(self._path) * 2 >= st.f_blocks * st.f_frsize
        if not fills_disk and held * 2 < self.configured:
            return
        # Room for the ballast to come back (twice its size), taken `full_step` at a time.
        step = 2 * self.ballast.size if self.ballast.size else self.configured // 20
        cap = max(held // 2, held - step)
        if self._full_cap is None or cap < self._full_cap:
            log.warning(
                "outbox %s: the outbox filled its disk; its byte cap is lowered to %d bytes "
                "until there is room again (the oldest readings go under a signed gap event)",
                self._path,
                cap,
            )
            self._full_cap = cap

    def recover(self, held: int) -> None:
        """Between commits (`held` bytes stored): make a missing ballast again when there is
        room (checked every few seconds); lift a lowered cap once the outbox has drained to
        half of it (the broker is back)."""
        if not self.ballast.present:
            self.ballast.ensure()
        if self._full_cap is not None and held <= self._full_cap // 2:
            log.info("outbox %s: the outbox has drained; its byte cap is lifted", self._path)
            self._full_cap = None
