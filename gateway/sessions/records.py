"""Stored-record sync: which records a device is asked for, which of its readings are new, and
the position the hub keeps so that nothing is fetched twice or skipped.

What lives here (pure: no I/O, no driver imported): `RecordSync`, which runs a driver's
`StoredRecords` declaration (gateway.sdk): the same one for the built-in profiles (Glucose,
Pulse Oximeter spot-checks) and for vendors' devices. The BLE session (sessions/ble.py) holds
the conversation, forward only: the steps `next_step` gives (a request, then its answer), the
records (each through `accept`), then, once the journal has committed every kept record, the
driver's after-commit step (`after_commit`, e.g. a delete on the device) and its position reset
(`forget`).

Positions, kept in the outbox under `ble.<name>:<device id>`:

- a cursor (Glucose sequence numbers, a vendor's event counters): the highest one stored; the
  hub asks for the records after it and drops any at or below it (as serial numbers when the
  counter wraps). Beside it, `ble.<name>-state:<device id>` (sessions/records_state.py): the
  device's serial and model, its oldest record and record count, the digests of the last
  records stored. A replaced device, or a counter that restarted (another oldest record, or
  another count when nothing follows the position), is asked for all its records, and those
  whose digest the hub holds are skipped (a signed `records-reset` event); a transfer that
  ends at the counter's last value asks for all once more, for those after the wrap;
- digests (`position="digest"`, Pulse Oximeter spot-checks, whose records carry no number): the
  digests of the last `MAX_DIGESTS` stored records' bytes, one per record, so a digest appears
  as often as records with those bytes were stored; the hub asks for all records and, of the
  records with one digest in a transfer, drops as many as the list holds that digest (two
  identical spot-checks without a time stamp are two measurements: both are kept, and both
  are known on the next transfer).

Each record a sync keeps comes with its positions (key, value pairs), which the journal writes
in the same outbox transaction as the reading: a position can never run ahead of what is
stored. Records dropped as already stored are logged (a count, no values) and counted in a
signed `records-skipped` event, once per request, or at most once a minute for live values.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Literal, NamedTuple

from gateway.hub.journal import Journal
from gateway.hub.outbox_file import MetaValue, OutboxError
from gateway.sdk import TRACE, AfterCommit, GattDriver, Reading, StoredRecords
from gateway.sessions.records_state import (
    CursorState,
    Event,
    Skips,
    digest_list,
    newer,
    record_digest,
    state_key,
)

log = logging.getLogger(__name__)

MAX_DIGESTS = 2000
Cursor = tuple[str, MetaValue]
Positions = Mapping[str, MetaValue]
Store = Callable[[str, MetaValue], None]
_Phase = Literal["start", "oldest", "report", "top", "count", "reset", "done"]


class Step(NamedTuple):
    """A request to write to the control point, and which value answers it."""

    data: bytes
    done: Callable[[bytes], bool]


class RecordSync:
    """One connection's stored-record transfer, as a driver's `StoredRecords` declares it.

    The session runs its steps (`next_step`) and hands it every record (`accept`). `event` and
    `store` are the journal's `event` and `set_cursor`: signed events, and a state that moved
    while no record of the connection was kept (nothing to carry it)."""

    def __init__(
        self,
        spec: StoredRecords,
        key: str,
        stored: MetaValue | None,
        *,
        state: MetaValue | None = None,
        device: str = "",
        identity: Mapping[str, object] | None = None,
        event: Event | None = None,
        store: Store | None = None,
    ) -> None:
        self.spec = spec
        self.key = key
        self.state_key = state_key(key)
        self.device = device or key
        self.control = spec.control.lower()
        self._companions = frozenset(c.lower() for c in spec.companions)
        self.records = frozenset({spec.records.lower(), *self._companions})
        """The characteristics whose readings go through `accept`."""
        self.done_on = frozenset({self.control, spec.records.lower()})
        """The characteristics whose values may end a transfer."""
        self.abort = spec.abort
        self.after_commit: AfterCommit | None = spec.after_commit
        self._event: Event = event or _ignore
        self.skips = Skips(self.device, self._event)
        """Records dropped as already stored: logged (a count) and signed, by reason."""
        self._store: Store = store or _ignore
        self.digests: list[str] | None = None
        self._unmatched = Counter[str]()
        """Digest -> stored records with it that this transfer has not met again yet."""
        self.state = CursorState()
        self._reason: str | None = None
        """Why every record is asked for again (a reset), if it is."""
        self._dirty = False
        """The state moved and no kept record carries it yet."""
        if spec.position == "digest":
            self.digests = digest_list(stored)
            self._unmatched.update(self.digests)
        else:
            self.state = CursorState.load(stored, state)
            replaced, self._dirty = self.state.adopt(identity or {})
            self._reason = "device-replaced" if replaced else None
        self.arrived = 0
        """Records that arrived on this connection, new or already stored."""
        self._kept: set[int] = set()
        self._kept_total = 0
        self._phase: _Phase = "start"
        self._in_step = False
        self._listing_all = False
        self._step_from: int | None = None
        self._step_arrived = self._step_kept = self._step_skipped = 0
        self._last_arrival: int | None = None
        self._wrapped = False
        self._last_report: bytes | None = None
        self._probed: tuple[int, str] | None = None
        """The record the device sent as its oldest (position, digest)."""

    # --- the conversation ------------------------------------------------------------------

    def request(self) -> bytes | None:
        """What to write to ask for the records; None if the driver cannot say (a bug)."""
        last = None if self.digests is not None or self._reason else self.state.high
        try:
            return bytes(self.spec.request(last))
        except Exception:  # a driver bug: live values only on this connection
            driver_failed("StoredRecords.request")
            return None

    def next_step(self, answer: bytes | None) -> Step | None:
        """The next request of this connection's transfer, given the value that ended the
        previous one (None to begin); None when the transfer is over."""
        phase, self._phase = self._phase, "done"
        if phase == "start":
            oldest = self.spec.oldest
            if self._reason or oldest is None or self.state.high is None:
                return self._report("reset" if self._reason else "report")
            self._phase, self._in_step, self._probed = "oldest", True, None
            return Step(oldest, self.done)
        if phase == "oldest":
            self._in_step = False
            return self._after_oldest()
        if phase == "count":
            return self._counted(answer)
        if phase == "done":
            return None
        self._last_report = answer
        self._end_report(phase)
        return self._follow_up() if phase == "report" and self.digests is None else None

    def _after_oldest(self) -> Step | None:
        """The same oldest record as before, or a later one (a full memory dropped its oldest):
        the same memory. Another one at or before it: a memory cleared or replaced."""
        seen, before, wrap = self._probed, self.state.oldest, self.spec.wrap
        if not seen or not before or seen[1] == before[1] or newer(seen[0], before[0], wrap):
            if seen is not None and seen != before:
                self.state.oldest, self._dirty = seen, True
            return self._report("report")
        log.warning(
            "device %s: its oldest stored record is not the one the hub saw: its memory was "
            "cleared or its record counter restarted; asking for all of them",
            self.device,
        )
        self._reason = "counter-restarted"
        return self._report("reset")

    def _follow_up(self) -> Step | None:
        """After the report of the records after the position: what its outcome calls for."""
        state, count, wrap = self.state, self.spec.count, self.spec.wrap
        if not self._step_arrived and state.high is not None and count is not None:
            # Nothing after the position: nothing new, or a counter that restarted below it.
            self._phase = "count"
            return Step(count.request, lambda value: self._count_of(value) is not None)
        if wrap > 0 and state.high == wrap - 1 and self._step_from != wrap - 1:
            return self._report("top")  # the counter's last value: what follows it wrapped
        return None

    def _report(self, phase: _Phase) -> Step | None:
        request = self.request()
        if request is None:
            self._phase = "done"
            return None
        self._phase = phase
        self._in_step = True
        self._step_from = self.state.high
        self._step_arrived = self._step_kept = self._step_skipped = 0
        self._last_arrival = None
        self._wrapped = False
        self._listing_all = self.digests is None and request == self._request_all()
        if self._listing_all:
            self.state.known = 0  # counted again as they arrive
            self._dirty = True
        return Step(request, self.done)

    def _request_all(self) -> bytes | None:
        try:
            return bytes(self.spec.request(None))
        except Exception:  # a driver bug: logged when the request itself is made
            return None

    def _count_of(self, value: bytes | None) -> int | bool | None:
        count = self.spec.count
        if count is None or value is None:
            return None
        try:
            return count.answer(value)
        except Exception:  # a driver bug: taken as a refusal
            driver_failed("RecordCount.answer")
            return False

    def _counted(self, answer: bytes | None) -> Step | None:
        count, state = self._count_of(answer), self.state
        if count is None or isinstance(count, bool):
            return None  # refused: the position alone decides
        if state.known is None:
            state.known = count
            self._dirty = True
            self._store_quietly()
            return None
        if count == state.known:
            return None
        log.warning(
            "device %s: it holds %d stored records where the hub knew of %d and none after "
            "the position: its record counter restarted; asking for all of them",
            self.device,
            count,
            state.known,
        )
        self._reason = "counter-restarted"
        return self._report("reset")

    def _end_report(self, phase: _Phase) -> None:
        self._in_step = False
        self.skips.report()
        if self.digests is not None:
            return
        state = self.state
        last = self._last_arrival
        moved = last is not None and (state.high is None or newer(last, state.high, self.spec.wrap))
        if not self._kept_total and (phase == "reset" or moved) and state.high != last:
            # Every record that arrived was stored before: the newest of them is the position.
            state.high, self._dirty = last, True
        reason = self._reason if phase == "reset" else "counter-wrapped" if self._wrapped else None
        if reason is not None:
            kept, skipped = self._step_kept, self._step_skipped
            self.skips.reset(reason, self._step_from, state.high, kept, skipped)
        self._store_quietly()

    def _store_quietly(self) -> None:
        """Store a state that moved while no record of this connection was kept: every record
        that arrived is stored already, so the state cannot run ahead of the outbox."""
        if not self._dirty or self._kept_total or self.digests is not None:
            return
        self._dirty = False
        try:
            if self.state.high is not None:
                self._store(self.key, self.state.high)
            self._store(self.state_key, self.state.dump())
        except OutboxError as exc:  # kept in memory; the next kept record carries it
            log.warning("device %s: cannot store its record position (%s)", self.device, exc)

    def done(self, value: bytes) -> bool:
        try:
            return bool(self.spec.done(value))
        except Exception:  # a driver bug: end the transfer rather than wait for ever
            driver_failed("StoredRecords.done")
            return True

    # --- the records ------------------------------------------------------------------------

    def accept(self, uuid: str, reading: Reading) -> tuple[bool, Positions | None]:
        """(sign and store it?, the positions to store with it)."""
        companion = uuid.lower() in self._companions
        if self.digests is not None:
            return (True, None) if companion else self._accept_digest(self.digests, reading)
        try:
            position = self.spec.cursor(reading)
        except Exception:  # a driver bug: keep the reading (a duplicate beats a loss)
            driver_failed("StoredRecords.cursor")
            return True, None
        if companion:  # follows its record: kept if that was kept
            return position is None or position in self._kept, None
        self.arrived += 1
        if position is None:
            return True, None
        return self._accept_position(position, reading)

    def _accept_position(self, position: int, reading: Reading) -> tuple[bool, Positions | None]:
        state, wrap = self.state, self.spec.wrap
        if self._in_step:
            self._step_arrived += 1
            self._last_arrival = position
            if self._listing_all and state.known is not None:
                state.known += 1
                self._dirty = True
        digest = record_digest(position, reading)
        if self._in_step and self._phase == "oldest":  # looked at, not taken: fetched next
            self._probed = self._probed or (position, digest)
            return False, None
        if self._listing_all and self._step_arrived == 1:
            state.oldest, self._dirty = (position, digest), True
        resetting = self._in_step and self._phase == "reset"
        new = not state.knows(digest) and (
            resetting or state.high is None or newer(position, state.high, wrap)
        )
        if not new:  # already stored (a replay, a device that ignored the filter), or older
            self._skipped("already-stored" if state.knows(digest) else "before-position")
            return False, None
        if not resetting and state.high is not None and position < state.high:
            self._wrapped = True
        state.high = position
        state.remember(digest)
        if not (self._in_step and self._listing_all) and state.known is not None:
            state.known += 1  # a record the device had not reported yet: it holds one more
        self._kept.add(position)
        self._kept_total += 1
        if self._in_step:
            self._step_kept += 1
        self._dirty = False
        return True, {self.key: position, self.state_key: state.dump()}

    def _accept_digest(self, digests: list[str], reading: Reading) -> tuple[bool, Positions | None]:
        self.arrived += 1
        digest = hashlib.sha256(reading.raw).hexdigest()[:16]
        # The n-th record with these bytes in a transfer is already stored if the list held the
        # digest n times when the transfer began: equal bytes are equal values, not the same
        # measurement (a spot-check without a time stamp repeats 97 % and 72 /min).
        if self._unmatched[digest] > 0:
            self._unmatched[digest] -= 1
            self._skipped("already-stored")
            return False, None
        digests.append(digest)
        del digests[:-MAX_DIGESTS]  # bounded: the oldest records are forgotten
        return True, {self.key: json.dumps(digests, separators=(",", ":"))}

    def _skipped(self, reason: str) -> None:
        if self._in_step:
            self._step_skipped += 1
        self.skips.add(reason, live=not self._in_step)

    def ended(self, final: bytes) -> str:
        """The answer that ended the transfer, in words for the log."""
        describe = self.spec.describe
        if describe is None:
            return "finished"
        try:
            return describe(self._last_report or final)
        except Exception:  # a driver bug: the log line only
            driver_failed("StoredRecords.describe")
            return "finished"

    def forget(self) -> Cursor | None:
        """After the device deleted its records: the digests to store instead (none)."""
        if self.digests is None:
            return None
        self.digests = []
        self._unmatched.clear()
        return (self.key, "[]")


def _ignore(*_args: object) -> None:
    return None


def driver_failed(what: str) -> None:
    """Log a driver callback's failure, from its `except` block: the exception's type only, the
    traceback at TRACE (the exception's text and the frames' locals may carry the device's
    values)."""
    error = sys.exc_info()[1]
    log.error(
        "the driver's %s raised %s; report this to the driver's maintainer",
        what,
        type(error).__name__,
    )
    log.log(TRACE, "the driver's %s failed", what, exc_info=True)


def record_sync_for(
    driver: GattDriver,
    has: Callable[..., bool],
    identity: Mapping[str, object],
    stored: Callable[[str], MetaValue | None],
    journal: Journal | None = None,
) -> RecordSync | None:
    """The transfer for this device, if its driver declares stored records and the device
    offers what fetching them takes. `has(uuid, *properties)` tells whether the connected
    device has a characteristic (with one of the properties); `identity` is what the session
    learnt of the device (its configured `id`, its serial and model); `journal` signs the
    events and stores a position that moved without a record."""
    device_id = str(identity["id"])
    info = driver.info
    spec = info.ble_session.stored if info.ble_session else None
    if spec is None:
        return None
    if not has(spec.records) or not has(spec.control):  # a profile's optional storage
        log.info("device %s: it keeps no stored records; live values only", device_id)
        return None
    if not has(spec.control, "write", "write-without-response"):
        log.warning(
            "device %s: it lacks the characteristics its stored records need; "
            "only live values are read",
            device_id,
        )
        return None
    name = spec.position_key or ("stored-digests" if spec.position == "digest" else "cursor")
    key = f"ble.{name}:{device_id}"
    return RecordSync(
        spec,
        key,
        stored(key),
        state=None if spec.position == "digest" else stored(state_key(key)),
        device=device_id,
        identity=identity,
        event=journal.event if journal else None,
        store=journal.set_cursor if journal else None,
    )


async def all_committed(records: list[asyncio.Future[bool]], timeout: float) -> bool:
    """Whether the journal committed every one of `records` (the futures `Journal.submit` sets)
    within `timeout`. `asyncio.wait` leaves them alone on a timeout: only the journal sets them."""
    if not records:
        return True
    done, pending = await asyncio.wait(records, timeout=timeout)
    return not pending and all(future.result() for future in done)
