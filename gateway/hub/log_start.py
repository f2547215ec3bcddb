"""Which log the hub signs into at start: the same one, or a new, announced one.

A log is identified by a random id (`signer.new_log_id`) stored in the outbox's meta table; a
seq is unique within its log. At start `open_log` compares the outbox with the head file
(`gateway.hub.log_head`):

- the outbox holds the head file's log, at or past its seq: the log goes on;
- no outbox yet, or one the hub cannot prove is the newest (older than the head file, of
  another log, no head file), or a damaged one: a new log starts, and its first entry is a
  signed `log-started` event naming the previous log's last seq and hash where known, and
  whether that seq is `exact` (from the kept outbox, or a head file written final on shutdown)
  or a lower bound (a head file written while groups committed, before a crash: later entries
  of that log may have been sent).

A damaged outbox (or one superseded by the head file) is set aside under
``outbox.sqlite.damaged-<UTC time>`` (``superseded-``), never deleted, and a fresh outbox
opened, so the daemon goes on serving devices instead of failing at every start. A new log in
a fresh outbox starts at seq 1 with prev ""; only an outbox kept without a head file (an
upgrade from a hub without one) keeps its numbering, and the new log's first seq follows it.
What may not live here: the journal's work, MQTT, device sessions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from gateway.hub.clock import clock_state
from gateway.hub.entry_bodies import event_body
from gateway.hub.identity import HubIdentity
from gateway.hub.log_head import HeadFile, LogPosition, read_head_file
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import Entry, OutboxCorruptError
from gateway.hub.outbox_space import SpaceLimits
from gateway.hub.signer import ChainHead, Signer, new_log_id

log = logging.getLogger(__name__)

LOG_META: Final = "log_id"
"""The outbox meta key holding the id of the log its newest entries belong to."""
PREVIOUS_META: Final = "log_previous"
"""The outbox meta key holding (JSON) the `previous` its log's `log-started` named."""


@dataclass(frozen=True, slots=True)
class OpenedLog:
    """The open outbox and where signing goes on: `log` and `head` for the `Signer`.
    `started` is the detail of the `log-started` event signed now (None: the log goes on);
    `head_file` is for the journal to keep up to date."""

    outbox: Outbox
    log: str
    head: ChainHead
    started: dict[str, object] | None
    head_file: HeadFile


@dataclass(frozen=True, slots=True)
class _SetAside:
    file: str
    entries: int | None

    def as_detail(self) -> dict[str, object]:
        return {
            "file": self.file,
            "entries": self.entries,
            "unsent_unknown": self.entries is None,
        }


def open_log(
    state_dir: Path,
    outbox_path: Path,
    max_rows: int,
    identity: HubIdentity,
    hub_id: str,
    *,
    space: SpaceLimits | None = None,
) -> OpenedLog:
    """Open the outbox and decide the log (see the module's docstring). Raises OutboxError
    for what a person must fix (locked, not writable, full disk), never for a damaged file."""
    head = read_head_file(state_dir)
    set_aside: _SetAside | None = None
    damage: OutboxCorruptError | None = None
    try:
        outbox = Outbox.open(outbox_path, max_rows=max_rows, space=space)
    except OutboxCorruptError as exc:
        damage = exc
    if damage is not None:
        moved = _move_aside(outbox_path, "damaged")
        set_aside = _SetAside(moved, _count_rows(outbox_path.with_name(moved)))
        log.error(
            "the outbox was damaged (%s); it was moved to %s for inspection and a new outbox "
            "and log started. Entries not yet sent may be in that file.",
            damage,
            outbox_path.with_name(set_aside.file),
        )
        outbox = Outbox.open(outbox_path, max_rows=max_rows, space=space)
    try:
        return _decide(state_dir, outbox, head, set_aside, _Signing(identity, hub_id, space))
    except BaseException:
        with contextlib.suppress(Exception):  # it may be closed already: keep the first error
            outbox.close()
        raise


@dataclass(frozen=True, slots=True)
class _Signing:
    identity: HubIdentity
    hub_id: str
    space: SpaceLimits | None = None  # for an outbox opened again after one is set aside


def _decide(
    state_dir: Path,
    outbox: Outbox,
    head: LogPosition | None,
    set_aside: _SetAside | None,
    signing: _Signing,
) -> OpenedLog:
    seq, chain_hash = outbox.head()
    stored_log = outbox.get_meta(LOG_META)
    here = LogPosition(stored_log if isinstance(stored_log, str) else None, seq, chain_hash)
    # `here` is exact: the outbox holds its log's last entry (a log's entries go on only here).
    previous: LogPosition | None = head
    if set_aside is not None:
        reason = "outbox-damaged"
    elif head is None:
        fresh = seq == 0 and here.log is None
        reason = "new-outbox" if fresh else "head-missing"
        previous = None if fresh else here
    elif _continues(outbox, here, head):
        head_file = HeadFile(state_dir)
        assert here.log is not None  # _continues checked it  # noqa: S101
        head_file.write(here, final=True)  # a head file behind catches up; nothing follows yet
        return OpenedLog(outbox, here.log, ChainHead(seq, chain_hash), None, head_file)
    elif seq == 0 and here.log is None:
        reason = "new-outbox"
    else:
        if here.log != head.log:
            reason = "outbox-other-log"
        elif seq < head.seq:
            reason = "outbox-older-than-head"
        else:
            reason = "outbox-differs-from-head"
        entries = outbox.depth()
        path = outbox.path
        outbox.close()
        set_aside = _SetAside(_move_aside(path, "superseded"), entries)
        log.error(
            "the outbox does not continue the log the head file %s names (%s: the outbox "
            "holds log %s up to seq %d, the head file log %s up to seq %d), as after restoring "
            "a backup; it was moved to %s (%d entries not sent) and a new log started",
            state_dir / "head.json",
            reason,
            here.log,
            seq,
            head.log,
            head.seq,
            path.with_name(set_aside.file),
            entries,
        )
        outbox = Outbox.open(path, max_rows=outbox.max_rows, space=signing.space)
    return _start(state_dir, outbox, reason, previous, set_aside, signing)


def _continues(outbox: Outbox, here: LogPosition, head: LogPosition) -> bool:
    """Whether the outbox is the newest: it holds the head file's log at or past its seq, or
    it started a new log after the head file's (the head file was not yet rewritten)."""
    if here.log == head.log:
        return here.seq > head.seq or (here.seq == head.seq and here.hash == head.hash)
    previous = outbox.get_meta(PREVIOUS_META)
    with contextlib.suppress(ValueError, TypeError):
        return here.log is not None and head.same_point(json.loads(str(previous)))
    return False


def _start(  # noqa: PLR0917 - one call site, every argument a different thing
    state_dir: Path,
    outbox: Outbox,
    reason: str,
    previous: LogPosition | None,
    set_aside: _SetAside | None,
    signing: _Signing,
) -> OpenedLog:
    """Sign the new log's `log-started` as its first entry and commit it with the log id."""
    log_id = new_log_id()
    seq, chain_hash = outbox.head()
    signer = Signer(signing.identity, signing.hub_id, ChainHead(seq, chain_hash), log=log_id)
    previous_detail = previous.as_detail() if previous is not None else None
    detail: dict[str, object] = {
        "reason": reason,
        "previous": previous_detail,
        "set_aside": set_aside.as_detail() if set_aside is not None else None,
    }
    now = time.time()
    signed = signer.sign(event_body("log-started", detail, now, clock_state()))
    outbox.append(
        [Entry(signed.seq, "event", signed.jws, now)],
        signed.hash,
        meta={LOG_META: log_id, PREVIOUS_META: json.dumps(previous_detail)},
    )
    head_file = HeadFile(state_dir)
    head_file.write(LogPosition(log_id, signed.seq, signed.hash), final=True)
    log.info(
        "signing into a new log %s (%s; previous: %s)",
        log_id,
        reason,
        "none"
        if previous is None
        else f"log {previous.log} up to seq {previous.seq}{'' if previous.exact else ' or later'}",
    )
    return OpenedLog(outbox, log_id, signed.head, detail, head_file)


def _move_aside(path: Path, label: str) -> str:
    """Rename the outbox and its -wal and -shm beside it; the new name (without folder)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = f"{path.name}.{label}-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(path.with_name(path.name + suffix), path.with_name(target + suffix))
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target


def _count_rows(path: Path) -> int | None:
    """Entries left in a damaged outbox, or None when the damage hides the count."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.Error:
        return None
