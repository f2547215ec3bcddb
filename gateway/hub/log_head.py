"""The head file: where the hub's signed log stands, kept beside the key in the state dir.

`head.json` holds the log id, the last seq and the last chain hash the outbox committed, and
whether that position is final. The journal tells it of every commit group; it is rewritten
atomically (a temporary file, fsync, rename, fsync of the directory) at most once per
`HEAD_INTERVAL` with `"final": false`, so after a crash it names a group committed at most that
long before the last one (a lower bound: later entries of its log may exist, and may have been
sent), and on shutdown (and at start, before a group follows) with `"final": true` (the log's
exact last position; the next group's write makes it not final at once). At start the hub
compares it with the outbox (`gateway.hub.log_start`): an outbox that is missing, older or of
another log than the head file is not continued. What may not live here: the outbox, signing,
the decision what to do at start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

HEAD_FILE: Final = "head.json"


@dataclass(frozen=True, slots=True)
class LogPosition:
    """A point in one log: its id, the last seq and that entry's chain hash. `exact` is False
    when `seq` is only a lower bound of the log's last seq (a head file written while groups
    committed: later entries of the log may exist)."""

    log: str | None
    seq: int
    hash: str
    exact: bool = True

    def as_detail(self) -> dict[str, object]:
        """The `previous` member of a `log-started` event."""
        return {"log": self.log, "last_seq": self.seq, "last_hash": self.hash, "exact": self.exact}

    def same_point(self, detail: object) -> bool:
        """Whether a `previous` detail names this point (log, seq and hash; not `exact`)."""
        return isinstance(detail, dict) and (
            detail.get("log"),
            detail.get("last_seq"),
            detail.get("last_hash"),
        ) == (self.log, self.seq, self.hash)


def read_head_file(state_dir: Path) -> LogPosition | None:
    """The head file's position; None when there is none or it cannot be read (both mean the
    hub cannot prove the outbox is the newest, and starts a new log). It is `exact` only when
    the file says `"final": true`: a file from before the member is not final."""
    path = state_dir / HEAD_FILE
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        data = exc
    if isinstance(data, Exception):
        log.error("the head file %s cannot be read (%s); a new log is started", path, data)
        return None
    log_id = data.get("log") if isinstance(data, dict) else None
    seq = data.get("seq") if isinstance(data, dict) else None
    chain_hash = data.get("hash") if isinstance(data, dict) else None
    if (
        not isinstance(log_id, str)
        or not isinstance(seq, int)
        or isinstance(seq, bool)
        or seq < 0
        or not isinstance(chain_hash, str)
    ):
        log.error("the head file %s is not a head record; a new log is started", path)
        return None
    return LogPosition(log_id, seq, chain_hash, exact=data.get("final") is True)


HEAD_INTERVAL: Final = 1.0
"""Seconds between head-file writes while groups commit: each write costs two fsyncs, which
at a few readings a second would double the hub's disk writes. A head file behind the outbox
is safe (`log_start` continues an outbox at or past it); only a restored copy made within the
last interval goes unnoticed. Such a file says `"final": false`, so a `log-started` naming it
tells the receiver its last seq is a lower bound."""


class HeadFile:
    """Writes `head.json` atomically. Keeps the directory open, so each write costs one
    open, write, fsync and rename of the small file plus one fsync of the directory.

    `committed` records a group's position and writes it (not final) if `interval` has passed
    since the last write, or at once when the file says final (it must never claim an end the
    outbox has passed); otherwise the position waits for `write_due` (the journal's loop calls
    it at `due()`) or `flush` (on shutdown, the only final write besides `write(final=True)`)."""

    def __init__(self, state_dir: Path, interval: float = HEAD_INTERVAL) -> None:
        self._path = state_dir / HEAD_FILE
        self._tmp = state_dir / f".{HEAD_FILE}.tmp"
        self._dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._failing = False
        self._interval = interval
        self._waiting: LogPosition | None = None
        self._written: LogPosition | None = None  # what the file holds, as far as known
        self._final = False  # whether the file says final
        self._next = 0.0  # monotonic time from which the next write may go

    def committed(self, position: LogPosition) -> None:
        """A group committed up to `position`: write it now if the interval allows."""
        self._waiting = position
        if self._final:
            self._write_waiting(position, final=False)
            if self._final:  # the rewrite failed (a full disk): the file must not claim an end
                self._withdraw_final()
        else:
            self.write_due()

    def _withdraw_final(self) -> None:
        """Remove a final head file that the log has passed and that cannot be rewritten.
        Unlinking needs no free space; with no head file the next start announces a new log
        (`head-missing`) from the outbox, which is exact, instead of a false end."""
        failure: OSError | None = None
        try:
            os.unlink(self._path)
            os.fsync(self._dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failure = exc
        if failure is not None:
            log.error(
                "cannot remove the head file %s (%s); if the outbox is lost before it is "
                "written again, the new log's announcement names an end the log has passed",
                self._path,
                failure.strerror,
            )
            return
        self._final = False
        self._written = None

    def due(self) -> float | None:
        """When (monotonic) a waiting position should be written; None when none waits."""
        return None if self._waiting is None else self._next

    def write_due(self) -> None:
        """Write the waiting position (not final) if the interval has passed."""
        if self._waiting is not None and time.monotonic() >= self._next:
            self._write_waiting(self._waiting, final=False)

    def flush(self) -> None:
        """Write the last position as final (on shutdown: no entry follows until the next
        commit, whose `committed` rewrites it as not final before anything is sent)."""
        position = self._waiting or self._written
        if position is not None and not (self._final and self._waiting is None):
            self._write_waiting(position, final=True)

    def _write_waiting(self, position: LogPosition, *, final: bool) -> None:
        if self.write(position, final=final):
            self._waiting = None
        self._next = time.monotonic() + self._interval

    def write(self, position: LogPosition, *, final: bool = False) -> bool:
        """Record `position` (`final`: the log's exact last one); whether it was written. An
        OSError is logged (once until a write succeeds), not raised: the outbox already holds
        the entries, and the position waits for the next write."""
        text = json.dumps(
            {"log": position.log, "seq": position.seq, "hash": position.hash, "final": final},
            separators=(",", ":"),
        ).encode("ascii")
        failure = self._replace(text)
        if failure is not None:
            if not self._failing:
                log.error(
                    "cannot write the head file %s (%s): a restored or lost outbox may then "
                    "go unnoticed; free space or fix the state dir's permissions",
                    self._path,
                    failure.strerror,
                )
            self._failing = True
            self._waiting = self._waiting or position
            return False
        if self._failing:
            log.info("the head file %s is written again", self._path)
        self._failing = False
        self._written, self._final = position, final
        return True

    def _replace(self, text: bytes) -> OSError | None:
        try:
            fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, text)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self._tmp, self._path)
            os.fsync(self._dir_fd)
        except OSError as exc:
            return exc
        return None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)
