"""The outbox's SQLite file: how it is opened, what it holds, and what its failures mean.

What lives here: the exclusive lock on ``<outbox>.lock`` (`take_lock`); the connection with WAL,
``synchronous=FULL`` and no auto-checkpoint, since the writer runs its own (`connect`); the
schema and its migrations (`SCHEMA_VERSION`); the checks every open makes (`read_head`,
`probe_write`); the row records (`Entry`, `Kind`, `Dropped`, `DeviceDelta`, `MetaValue`,
`DeviceStats`, `OutboxStats`); the exception tree; `is_disk_full`; and `translate_error`, which
turns an sqlite3 or OS error into the outbox error that says what to do (read-only, disk full,
damaged, locked). What may not: writing entries (that is `gateway.hub.outbox`) or reading for
`status` (that is `gateway.hub.outbox_status`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

log = logging.getLogger(__name__)

Kind = Literal["reading", "event"]
MetaValue = str | int | float

SCHEMA_VERSION: Final = 2
# Truncate a WAL that a burst grew beyond this once it has been checkpointed.
WAL_SIZE_LIMIT: Final = 16 * 1024 * 1024

_SQLITE_FULL: Final = 13

# The current schema for a new file (schema 1 had no `device` column).
_SCHEMA: Final = (
    """CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        kind INTEGER NOT NULL CHECK (kind IN (0, 1)),
        body BLOB NOT NULL,
        created REAL NOT NULL,
        device TEXT
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    """CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        readings INTEGER NOT NULL,
        decode_errors INTEGER NOT NULL,
        last_reading REAL,
        last_error TEXT
    ) WITHOUT ROWID""",
)

# The cap drops the oldest readings of the device holding the most (`Outbox.device_oldest`).
# Partial: events are never dropped, and an index entry per event would only cost writes.
_DEVICE_INDEX: Final = "CREATE INDEX outbox_device ON outbox (device, seq) WHERE kind = 0"


def _add_device_column(conn: sqlite3.Connection) -> None:
    """Schema 2: each reading names its device, so the cap can take from the chattiest. Rows
    stored before have none; they share one bucket (device null) at the cap."""
    conn.execute("ALTER TABLE outbox ADD COLUMN device TEXT")
    conn.execute(_DEVICE_INDEX)


# user_version N -> function that upgrades a database from N to N + 1, inside one transaction.
_MIGRATIONS: Final[Mapping[int, Callable[[sqlite3.Connection], None]]] = {1: _add_device_column}


class OutboxError(Exception):
    """Base of the outbox's errors. Every message names the file and says what to do."""


class OutboxLockedError(OutboxError):
    """Another process holds this state directory."""


class OutboxNotWritableError(OutboxError):
    """The file or its directory cannot be written (permissions, read-only filesystem, ...)."""


class OutboxFullError(OutboxError):
    """The disk is full. Everything committed before is intact; the failed batch is not stored."""


class OutboxCorruptError(OutboxError):
    """The file is not an outbox or is damaged. It is left in place for inspection."""


class OutboxNotFoundError(OutboxError):
    """`read_status` found no outbox: the daemon has not run with this state directory."""


class OutboxSequenceError(OutboxError):
    """A caller bug: entries out of sequence, or a drop that would remove the new entries."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One signed log entry. `body` is the JWS (flattened JSON) text; `created` is hub epoch s.
    `device` is the id of a reading's device (None for events), for the per-device share."""

    seq: int
    kind: Kind
    body: bytes
    created: float
    device: str | None = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """Readings of one device dropped at the cap: the inclusive seq `ranges` (runs of dropped
    seqs, in order) that a signed gap event announces in the same transaction."""

    device: str | None
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class DeviceDelta:
    """What one append adds to a device's counters. None leaves the stored value as it is."""

    readings: int = 0
    decode_errors: int = 0
    last_reading: float | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """A device's running totals since the outbox was created."""

    readings: int
    decode_errors: int
    last_reading: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    oldest_created: float | None
    newest_seq: int
    last_ack: float | None
    db_bytes: int
    wal_bytes: int


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL, or ENOSPC/EDQUOT from the OS: the filesystem (or quota) has no room."""
    if isinstance(exc, sqlite3.Error):
        return ((getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF) == _SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def translate_error(exc: BaseException, path: Path, doing: str) -> OutboxError:
    """Turn an sqlite3 or OS error into the outbox error that says what to do about it."""
    if isinstance(exc, sqlite3.Error):
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        full, readonly = code == _SQLITE_FULL, code in (3, 8, 14)  # PERM, READONLY, CANTOPEN

        corrupt, busy = code in (11, 26), code in (5, 6)  # CORRUPT, NOTADB; BUSY, LOCKED
    elif isinstance(exc, OSError):
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        readonly = exc.errno in (
            errno.EROFS,
            errno.EACCES,
            errno.EPERM,
            errno.ENOTDIR,
            errno.EISDIR,
            errno.ENOENT,
        )
        corrupt = busy = False
    else:
        full = readonly = corrupt = busy = False
    if full:
        return OutboxFullError(
            f"cannot {doing} {path}: the disk is full ({exc}). Everything committed before is "
            "intact and this batch was not stored; the hub released its ballast file and drops "
            "the oldest readings under a signed gap event until the batch fits. Free space on "
            "that filesystem, or lower the outbox's max_bytes."
        )
    if readonly:
        return OutboxNotWritableError(
            f"cannot {doing} {path}: it is not writable ({exc}). Make the state directory and "
            "the files in it writable by the rtm-gateway user, or choose another state dir."
        )
    if corrupt:
        return OutboxCorruptError(
            f"cannot {doing} {path}: the file is damaged or not an outbox ({exc}). It has been "
            f"left in place; restart rtm-gateway: at start it will move {path} (with its "
            "-wal and -shm) aside as .damaged-<time> for inspection, create a new outbox and "
            "start a new, announced log."
        )
    if busy:
        return OutboxLockedError(
            f"cannot {doing} {path}: another process has the database locked ({exc}). Another "
            "rtm-gateway is probably running with this state dir; stop it first."
        )
    return OutboxError(f"cannot {doing} {path}: {exc}")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def take_lock(path: Path) -> int:
    lock = lock_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileExistsError as exc:  # mkdir found a file where the directory should be
        raise OutboxNotWritableError(
            f"cannot create the outbox {path}: {path.parent} is not a directory. Move that file "
            "aside, or choose another state dir."
        ) from exc
    except OSError as exc:
        raise translate_error(exc, path, "create the outbox") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        raise OutboxLockedError(
            f"another rtm-gateway is running with this state dir ({path.parent}"
            f"{', pid ' + pid if pid else ''}; it holds {lock}). Stop it first, or give this "
            "one a different state dir."
        ) from exc
    try:
        # The pid is a hint for `status` and for the message above; the lock is what counts.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise translate_error(exc, path, "create the outbox") from exc
    return fd


def connect(path: Path) -> sqlite3.Connection:
    """Connect, configure and create or migrate the schema. Also proves the file is writable."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0.2)
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "open the outbox") from exc
    try:
        _prepare(conn, path)
    except sqlite3.Error as exc:
        conn.close()
        raise translate_error(exc, path, "open the outbox") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise OutboxCorruptError(
                f"{path} is an SQLite database but not an rtm-gateway outbox; it has been "
                "left in place. Move it aside or choose another state dir."
            )
        # Only takes effect before the first table exists; later it would need a VACUUM.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
        raise OutboxNotWritableError(
            f"cannot put {path} in WAL mode; make the state directory writable"
        )
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        _create_or_migrate(conn, path, version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _create_or_migrate(conn: sqlite3.Connection, path: Path, version: int) -> None:
    if version == 0:
        for ddl in _SCHEMA:
            conn.execute(ddl)
        conn.execute(_DEVICE_INDEX)
        conn.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("last_seq", 0), ("last_hash", ""), ("created", time.time())],
        )
        version = SCHEMA_VERSION
    if version > SCHEMA_VERSION:
        raise OutboxError(
            f"{path} was written by a newer rtm-gateway (schema {version}, this one knows "
            f"{SCHEMA_VERSION}); upgrade rtm-gateway, or move the file aside to start afresh."
        )
    while version < SCHEMA_VERSION:
        _MIGRATIONS[version](conn)
        version += 1
    conn.execute(f"PRAGMA user_version = {version}")


def read_head(conn: sqlite3.Connection, path: Path) -> tuple[int, str]:
    """(last_seq, last_hash) from the meta table, checked against the rows."""
    meta = dict(
        conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('last_seq', 'last_hash')"
        ).fetchall()
    )
    max_seq = conn.execute("SELECT max(seq) FROM outbox").fetchone()[0]
    last_seq, last_hash = meta.get("last_seq"), meta.get("last_hash")
    # Rows and head are written in one transaction, so a mismatch means outside damage.
    if (
        not isinstance(last_seq, int)
        or not isinstance(last_hash, str)
        or (max_seq is not None and max_seq > last_seq)
    ):
        raise OutboxCorruptError(
            f"outbox {path}: the stored head (last_seq={last_seq!r}) does not match "
            f"the rows (max seq {max_seq}); the file was changed outside rtm-gateway. Move "
            f"{path} aside for inspection and start again."
        )
    return last_seq, last_hash


def probe_write(conn: sqlite3.Connection, path: Path) -> None:
    """Write at every start, after the reads: a read-only file fails here rather than at the
    first reading, and a damaged file is never written to."""
    try:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('opened', ?)", (time.time(),))
    except sqlite3.Error as exc:
        if (exc.sqlite_errorcode & 0xFF) != _SQLITE_FULL:
            raise
        # On a full disk the stored entries can still be leased and published; `append`
        # reports the full disk for as long as it lasts.
        log.warning("outbox %s: the disk is full; free space on that filesystem", path)


def meta_value(raw: object) -> MetaValue:
    if isinstance(raw, bytes):
        return raw.decode()
    if isinstance(raw, str | int | float):
        return raw
    return str(raw)


def read_devices(conn: sqlite3.Connection) -> dict[str, DeviceStats]:
    rows = conn.execute(
        "SELECT id, readings, decode_errors, last_reading, last_error FROM devices"
    ).fetchall()
    return {
        dev: DeviceStats(readings, errors, last_reading, last_error)
        for dev, readings, errors, last_reading, last_error in rows
    }
