"""The outbox's WAL upkeep: when to checkpoint, and giving freed pages back to the filesystem.

What lives here: the checkpoint schedule (`WalKeeper`: commits, rows and estimated WAL bytes
since the last checkpoint, against `CHECKPOINT_EVERY_*` and `Room.wal_budget`), the upkeep run
between commits (a PASSIVE checkpoint and a few pages of incremental vacuum), and the checkpoint
after a write met a full disk. What may not: transactions, rows or the running sums (that is
`gateway.hub.outbox`), the cap and the ballast (`gateway.hub.outbox_space`).

Why the WAL must stay small on a full disk: a write appends frames to the WAL, and the WAL
starts again from its beginning only after a checkpoint copied every frame. Without one, every
transaction needs new room, and on a full disk none commits, acknowledgements included.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Final

from gateway.hub.outbox_file import is_disk_full
from gateway.hub.outbox_rows import vacuum_some
from gateway.hub.outbox_space import Room

log = logging.getLogger("gateway.hub.outbox")

# Our own checkpoint schedule instead of SQLite's auto-checkpoint: it runs between commits, never
# inside `append`'s own commit, and counts rows as well as commits so a burst is bounded too.
CHECKPOINT_EVERY_COMMITS: Final = 256
CHECKPOINT_EVERY_ROWS: Final = 20_000
# ... and the WAL's estimated bytes (`Room.wal_budget`), so a full disk's ballast can hold it:
# the bytes of rows inserted and deleted (a delete rewrites pages too), and a few pages a commit.
WAL_BYTES_PER_COMMIT: Final = 4 * 4096
# After a long outage drains, give the freed pages back to the filesystem a little at a time.
VACUUM_FREE_PAGES: Final = 2_048
VACUUM_STEP_PAGES: Final = 256


class WalKeeper:
    """Counts what was written since the last checkpoint and runs the checkpoint when due."""

    __slots__ = ("_conn", "_failed", "_path", "_room", "bytes", "commits", "rows")

    def __init__(self, conn: sqlite3.Connection, path: Path, room: Room) -> None:
        self._conn, self._path, self._room = conn, path, room
        self.commits = self.rows = self.bytes = 0
        self._failed = False

    def committed(self) -> None:
        self.commits += 1
        self.bytes += WAL_BYTES_PER_COMMIT

    def wrote(self, rows: int, nbytes: int) -> None:
        """Rows inserted and the bytes of rows inserted or deleted."""
        self.rows += rows
        self.bytes += nbytes

    def checkpoint(self) -> None:
        """A PASSIVE checkpoint now (errors are the caller's)."""
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.commits = self.rows = self.bytes = 0

    def after_full(self) -> None:
        """A write met a full disk and was rolled back: checkpoint, so the next transaction
        writes the WAL from its start, over room its file already has. The room the checkpoint
        needs to extend the database is what the ballast gave back."""
        try:
            self.checkpoint()
        except sqlite3.Error as exc:
            log.debug("outbox %s: checkpoint on a full disk failed (%s)", self._path, exc)

    def upkeep(self, held: int) -> None:
        """Between commits (`held` bytes stored): bound the WAL and give freed pages back;
        failures here lose nothing, so only log. Without the ballast (the disk was full) it
        runs after every commit, so what acks and drops free reaches the filesystem and the
        ballast can come back."""
        room = self._room
        room.recover(held)
        urgent = room.ballast.size > 0 and not room.ballast.present
        if not urgent and (
            self.commits < CHECKPOINT_EVERY_COMMITS
            and self.rows < CHECKPOINT_EVERY_ROWS
            and self.bytes < room.wal_budget
        ):
            return
        try:  # PASSIVE: the WAL file stays, and its room is reused by the next transactions
            self.checkpoint()
            above, step = (0, 64) if urgent else (VACUUM_FREE_PAGES, VACUUM_STEP_PAGES)
            vacuum_some(self._conn, above, step)
            self._failed = False
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            if is_disk_full(exc):
                room.disk_full(held)
            if self._failed:  # once per run of failures: on a full disk it is every commit
                return
            self._failed = True
            log.warning(
                "outbox %s: checkpoint/vacuum failed (%s); will retry later", self._path, exc
            )
