"""The read-only view of an outbox for ``rtm-gateway status``, whether the daemon runs or not.

What lives here: `read_status` and the `StatusSnapshot` it returns. It opens the file read-only
(immutable when there is no WAL, so it never leaves -wal/-shm files behind for the daemon to
trip over) and reads one committed snapshot. What may not: any write, and the writer `Outbox`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.hub.outbox_file import (
    DeviceStats,
    MetaValue,
    OutboxNotFoundError,
    OutboxStats,
    file_size,
    lock_path,
    meta_value,
    read_devices,
    translate_error,
)


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """What `read_status` saw in the committed state of the file."""

    path: Path
    stats: OutboxStats
    last_hash: str
    devices: Mapping[str, DeviceStats]
    meta: Mapping[str, MetaValue]
    writer_pid: int | None
    """Pid recorded by the process holding the state dir, if it is still alive (a hint)."""


def _writer_pid(path: Path) -> int | None:
    try:
        text = lock_path(path).read_text(encoding="ascii").strip()
        pid = int(text)
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return pid


def read_status(path: Path) -> StatusSnapshot:
    """Read the committed state without writing anything, whether the daemon runs or not.

    WAL lets this reader run beside the writer; it sees the last committed transaction.
    """
    path = Path(path)
    if not path.exists():
        raise OutboxNotFoundError(
            f"no outbox yet at {path}: the daemon has not run with this state dir"
        )
    # With no WAL file there is nothing uncommitted to merge, and opening read-only in WAL mode
    # would leave -wal/-shm files behind, owned by whoever ran `status` (often root): the daemon
    # could then not open its own database. `immutable` creates nothing.
    wal = path.with_name(path.name + "-wal")
    uri = path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=1.0)
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "read") from exc
    try:
        conn.execute("BEGIN")  # one snapshot for all the queries below
        meta = {
            key: meta_value(value)
            for key, value in conn.execute("SELECT key, value FROM meta").fetchall()
        }
        depth, oldest = conn.execute(
            "SELECT count(*), (SELECT created FROM outbox ORDER BY seq LIMIT 1) FROM outbox"
        ).fetchone()
        devices = read_devices(conn)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise translate_error(exc, path, "read") from exc
    finally:
        conn.close()
    last_ack = meta.get("last_ack")
    stats = OutboxStats(
        depth=int(depth),
        oldest_created=None if oldest is None else float(oldest),
        newest_seq=int(meta.get("last_seq", 0)),
        last_ack=None if last_ack is None else float(last_ack),
        db_bytes=file_size(path),
        wal_bytes=file_size(path.with_name(path.name + "-wal")),
    )
    return StatusSnapshot(
        path=path,
        stats=stats,
        last_hash=str(meta.get("last_hash", "")),
        devices=devices,
        meta=meta,
        writer_pid=_writer_pid(path),
    )
