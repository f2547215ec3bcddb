"""The journal: the single writer of the hub's signed log.

`Journal` stamps hub time, signs readings and hub events in order (sequence number and hash
chain) and commits them to the outbox in small groups (one fsync per group). When the outbox is
full it drops the oldest entries and signs a `gap` event for them in the same transaction, so
nothing disappears silently. After each group it tells the head file (`log_head`); between
groups it signs `clock-changed` when the clock's sync state moves and `clock-stepped` when the
wall clock was set (`clock.StepDetector`). Sessions hand it readings (`submit`), events
(`event`) and decode errors (`count_error`), and it alone writes their cursors; no device or
transport code here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.hub.clock import HubClock, StepDetector, boottime_ms, clock_state, rfc3339
from gateway.hub.entry_bodies import event_body, floats_finite, reading_body
from gateway.hub.log_head import HeadFile, LogPosition
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import (
    DeviceDelta,
    Entry,
    MetaValue,
    OutboxError,
    OutboxSequenceError,
)
from gateway.hub.outbox_room import make_room
from gateway.hub.signer import ChainHead, PreparedEntry, Signer, SigningError
from gateway.sdk import Reading

log = logging.getLogger(__name__)


# Not frozen: one is made per reading, and a frozen dataclass's __init__ costs ~3x as much.
@dataclass(slots=True)
class _Captured:
    device: Mapping[str, object]
    device_id: str
    patient: str
    reading: Reading
    hub_time: float
    mono: int
    cursor: tuple[str, MetaValue] | Mapping[str, MetaValue] | None = None
    committed: asyncio.Future[bool] | None = None


@dataclass(slots=True)
class _HubEvent:
    name: str
    detail: Mapping[str, object]
    hub_time: float
    mono: int
    meta: Mapping[str, MetaValue] | None = None


@dataclass(slots=True)
class _DeviceCounters:
    readings: int = 0
    decode_errors: int = 0
    last_reading: float | None = None
    last_error: str | None = None
    errors_unreported: int = 0


class Journal:
    """The single writer of the hub's signed log (readings and hub events share one chain)."""

    def __init__(
        self,
        outbox: Outbox,
        signer: Signer,
        *,
        on_commit: Callable[[], None],
        commit_interval: float = 0.005,
        max_batch: int = 2000,
        max_pending: int = 50_000,
        error_summary_interval: float = 60.0,
        clock: Callable[[], HubClock] = clock_state,
        head_file: HeadFile | None = None,
        wall_clock: Callable[[], float] = time.time,
        boot_clock: Callable[[], int] = boottime_ms,
    ) -> None:
        """`clock` says the sync state; `wall_clock` and `boot_clock` (boottime in ms) are
        compared between groups to find steps. `head_file` is told of each group (it writes at
        most once a second, and the rest on `drain`)."""
        self._outbox = outbox
        self._signer = signer
        self._on_commit = on_commit
        self._commit_interval = commit_interval
        self._max_batch = max(1, min(max_batch, outbox.max_rows // 2))
        self._max_pending = max_pending
        self._error_summary_interval = error_summary_interval
        self._clock = clock
        self._head_file = head_file
        self._wall = wall_clock
        self._boot = boot_clock
        self._steps = StepDetector()
        self._pending: deque[_Captured | _HubEvent] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one batch at a time between `run` and `drain`
        self._in_flight = 0
        self._devices: dict[str, _DeviceCounters] = {}
        self._deltas: dict[str, _DeviceCounters] = {}
        self._lost_unsigned = 0
        self._last_clock: HubClock | None = None
        self.committed = 0
        self.commit_failures = 0
        self.last_error: str | None = None

    # --- producers ---------------------------------------------------------------------------

    def submit(
        self,
        device: Mapping[str, object],
        device_id: str,
        patient: str,
        reading: Reading,
        hub_time: float,
        *,
        cursor: tuple[str, MetaValue] | Mapping[str, MetaValue] | None = None,
        committed: asyncio.Future[bool] | None = None,
    ) -> None:
        """Queue a reading for signing and storing. `cursor` (key, value, or a mapping of them)
        is stored in the outbox's meta table in its transaction, so a stored-record position
        never runs ahead of what is stored. `committed` is set True once both are: acknowledge
        the record after."""
        self._enqueue(
            _Captured(
                device, device_id, patient, reading, hub_time, self._boot(), cursor, committed
            )
        )
        delta = self._delta(device_id)
        delta.readings += 1
        delta.last_reading = hub_time

    def set_cursor(self, key: str, value: MetaValue) -> None:
        """Store a position alone (a reset), once the key's queued ones are committed."""
        self._outbox.set_meta(key, value)

    def event(
        self,
        name: str,
        detail: Mapping[str, object],
        *,
        meta: Mapping[str, MetaValue] | None = None,
    ) -> None:
        """Queue a hub event; `meta` (key: value) is stored in the event's transaction, so
        state that the event explains is never committed without it."""
        self._enqueue(_HubEvent(name, detail, self._wall(), self._boot(), meta))

    def count_error(self, device_id: str, message: str) -> None:
        delta = self._delta(device_id)
        delta.decode_errors += 1
        delta.last_error = message
        self._devices.setdefault(device_id, _DeviceCounters()).errors_unreported += 1

    def _delta(self, device_id: str) -> _DeviceCounters:
        delta = self._deltas.get(device_id)
        if delta is None:
            delta = self._deltas[device_id] = _DeviceCounters()
        return delta

    def _enqueue(self, item: _Captured | _HubEvent) -> None:
        if len(self._pending) >= self._max_pending:
            # The disk has refused commits for a long time: keep the newest, count the rest so
            # a signed event can say how many were lost once the disk takes writes again.
            self._pending.popleft()  # a record's `committed` never comes: its waiter times out
            self._lost_unsigned += 1
        self._pending.append(item)
        self._wake.set()

    @property
    def pending(self) -> int:
        """Readings and events not yet committed (including a batch being signed)."""
        return len(self._pending) + self._in_flight

    # --- the writer ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit what is pending every few milliseconds; summarise decode errors now and then.
        Signs on the loop thread: a worker thread cost more CPU and gained no throughput."""
        next_summary = time.monotonic() + self._error_summary_interval
        retry_delay = 0.0
        while True:
            head_due = self._head_file.due() if self._head_file else None
            wake_at = next_summary if head_due is None else min(next_summary, head_due)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake_at - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            if self._head_file is not None:
                self._head_file.write_due()
            if time.monotonic() >= next_summary:
                self._summarise_errors()
                next_summary = time.monotonic() + self._error_summary_interval
            if retry_delay:
                await asyncio.sleep(retry_delay)
            elif self._commit_interval:
                await asyncio.sleep(self._commit_interval)  # let a group gather
            while self._pending or self._deltas:
                async with self._lock:
                    committed = self.commit_once()
                if not committed:
                    retry_delay = min(max(retry_delay * 2, 0.5), 30.0)
                    self._wake.set()
                    break
                retry_delay = 0.0

    def commit_once(self) -> bool:
        """Sign and commit up to one batch. False when the outbox refused it (kept for later)."""
        batch, saved_head, hub_clock, prepared = self._prepare_batch()
        try:
            signatures = self._signer.signatures([p.signing_input for p in prepared])
        except BaseException:
            self._unprepare(batch, saved_head)
            raise
        return self._store_batch(batch, saved_head, hub_clock, prepared, signatures)

    def _prepare_batch(
        self,
    ) -> tuple[list[_Captured | _HubEvent], ChainHead, HubClock, list[PreparedEntry]]:
        """Take up to one batch off the queue and encode and chain it (no signatures yet).

        The batch leaves `_pending` at once, so producers may go on appending meanwhile; it is
        put back in front if it is not committed."""
        if self._lost_unsigned:
            lost, self._lost_unsigned = self._lost_unsigned, 0
            self._pending.appendleft(
                _HubEvent(
                    "readings-lost",
                    {"count": lost, "reason": "the outbox refused writes for too long"},
                    self._wall(),
                    self._boot(),
                )
            )
        pending = self._pending
        batch = [pending.popleft() for _ in range(min(len(pending), self._max_batch))]
        self._in_flight = len(batch)
        saved_head = self._signer.head
        hub_clock = self._clock()
        if hub_clock != self._last_clock:
            if self._last_clock is not None:
                log.info("hub clock: %s -> %s", self._last_clock, hub_clock)
                batch.insert(
                    0,
                    _HubEvent(
                        "clock-changed",
                        {"from": self._last_clock, "to": hub_clock},
                        self._wall(),
                        self._boot(),
                    ),
                )
            self._last_clock = hub_clock
        stepped = self._stepped(hub_clock)
        if stepped is not None:
            batch.insert(0, stepped)
        try:
            prepare = self._signer.prepare
            prepared = []
            for index, item in enumerate(batch):
                event = item
                if type(item) is _Captured:
                    try:
                        body = reading_body(
                            item.device,
                            item.patient,
                            item.reading,
                            item.hub_time,
                            hub_clock,
                            mono=item.mono,
                        )
                        prepared.append(prepare(body, floats_finite=floats_finite(item.reading)))
                        continue
                    except SigningError as exc:
                        batch[index] = event = self._rejected(item, exc)
                prepared.append(
                    prepare(
                        event_body(
                            event.name,  # type: ignore[union-attr]
                            event.detail,  # type: ignore[union-attr]
                            event.hub_time,
                            hub_clock,
                            event.mono,
                        )
                    )
                )
        except BaseException:
            self._unprepare(batch, saved_head)
            raise
        return batch, saved_head, hub_clock, prepared

    def _stepped(self, hub_clock: HubClock) -> _HubEvent | None:
        """A `clock-stepped` event when the wall clock was set since the last group. Steps are
        signed whatever the sync state (`hub_clock` says which): the first NTP sync of a Pi
        without a real-time clock is one, and a step while synced is the one to look at."""
        wall, boot = self._wall(), self._boot()
        step = self._steps.look(wall, boot)
        if step is None:
            return None
        log.warning(
            "the hub clock was stepped by %+.3f s (%s); readings keep their boottime "
            "(time.mono) and a clock-stepped event is signed",
            step.by_s,
            hub_clock,
        )
        detail = {
            "by_s": step.by_s,
            "from": rfc3339(step.before),
            "to": rfc3339(step.after),
            "hub_clock": hub_clock,
        }
        return _HubEvent("clock-stepped", detail, wall, boot)

    @staticmethod
    def _rejected(item: _Captured, exc: SigningError) -> _HubEvent:
        """A reading JSON cannot carry (a plugin driver's NaN, say) must not stop the hub:
        it becomes a signed event that says so, and the raw bytes stay in it."""
        log.error(
            "device %s: a reading could not be encoded (%s); a reading-rejected event "
            "keeps its raw bytes. The driver should report such values as absent.",
            item.device_id,
            exc,
        )
        return _HubEvent(
            "reading-rejected",
            {"device": item.device_id, "reason": str(exc), "raw": item.reading.as_dict()["raw"]},
            item.hub_time,
            item.mono,
        )

    def _unprepare(self, batch: list[_Captured | _HubEvent], saved_head: ChainHead) -> None:
        self._signer.head = saved_head  # nothing was committed: reuse the same seqs
        self._pending.extendleft(reversed(batch))
        self._in_flight = 0

    def _store_batch(
        self,
        batch: list[_Captured | _HubEvent],
        saved_head: ChainHead,
        hub_clock: HubClock,
        prepared: list[PreparedEntry],
        signatures: list[bytes],
    ) -> bool:
        jws = self._signer.jws
        entries = [
            Entry(ready.seq, "reading", jws(ready, signature), item.hub_time, item.device_id)
            if type(item) is _Captured
            else Entry(ready.seq, "event", jws(ready, signature), item.hub_time)
            for item, ready, signature in zip(batch, prepared, signatures, strict=True)
        ]
        deltas = {
            device_id: DeviceDelta(d.readings, d.decode_errors, d.last_reading, d.last_error)
            for device_id, d in self._deltas.items()
        }
        cursors: dict[str, MetaValue] = {}
        for i in batch:
            if type(i) is _Captured and i.cursor:
                cursors.update(i.cursor if isinstance(i.cursor, Mapping) else (i.cursor,))
            elif type(i) is _HubEvent and i.meta:
                cursors.update(i.meta)
        waiting = [i.committed for i in batch if type(i) is _Captured and i.committed]
        try:  # a disk error while making room is a refusal like one while appending
            drop_through = make_room(self._outbox, self._signer, entries, hub_clock)
            self._outbox.append(entries, self._signer.head.hash, drop_through, deltas, meta=cursors)
        except OutboxSequenceError:
            self._unprepare(batch, saved_head)
            raise  # a bug, not a full disk: retrying would loop forever
        except OutboxError as exc:
            self._unprepare(batch, saved_head)
            self._refused(str(exc))
            return False
        except BaseException:
            self._unprepare(batch, saved_head)
            raise
        self._in_flight = 0
        if self._head_file is not None and entries:
            head = self._signer.head
            self._head_file.committed(LogPosition(self._signer.log, head.seq, head.hash))
        if self.last_error is not None:
            log.info("the outbox takes writes again; %d entries committed", len(entries))
            self.last_error = None
        self._deltas.clear()
        self.committed += len(entries)
        for future in waiting:  # set once: only the journal sets them, and waiters never cancel
            future.set_result(True)
        if entries:
            self._on_commit()
        return True

    def _refused(self, reason: str) -> None:
        self.commit_failures += 1
        if self.last_error != reason:  # once per distinct cause, not once per retry
            log.error(
                "cannot store readings (%d kept in memory; the write is retried): %s",
                len(self._pending),
                reason,
            )
        self.last_error = reason

    def _summarise_errors(self) -> None:
        for device_id, counters in self._devices.items():
            if counters.errors_unreported:
                log.warning(
                    "device %s: %d malformed frames in the last %.0f s; check the cable "
                    "and the driver's serial settings",
                    device_id,
                    counters.errors_unreported,
                    self._error_summary_interval,
                )
                self.event(
                    "decode-errors",
                    {
                        "device": device_id,
                        "count": counters.errors_unreported,
                        "interval_s": self._error_summary_interval,
                    },
                )
                counters.errors_unreported = 0

    async def drain(self, timeout: float = 5.0) -> None:
        """Commit everything pending (on shutdown), retrying briefly if the disk refuses."""
        deadline = time.monotonic() + timeout
        async with self._lock:  # after a batch that `run` is signing right now
            await self._drain_locked(deadline)
            if self._head_file is not None:
                self._head_file.flush()

    async def _drain_locked(self, deadline: float) -> None:
        while self._pending or self._deltas:
            if not self.commit_once():
                if time.monotonic() > deadline:
                    log.error(
                        "stopping with %d readings not stored: %s",
                        len(self._pending),
                        self.last_error,
                    )
                    return
                await asyncio.sleep(0.2)
