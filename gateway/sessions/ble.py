"""One configured Bluetooth LE device, from advertisement to signed readings, for months.

What lives here: `BleDeviceSession` (find the device's advertisement, connect, check the
service table, learn its identity (sessions/ble_identity.py: Device Information and the link's
security; a change is signed by sessions/device_identity.py), set its clock and read its
battery (sessions/ble_companions.py), subscribe to the driver's characteristics, fetch
stored records, and start again after a lost link). Values go through the shared
decode-and-submit path (sessions/core.py); stored records through the driver's `StoredRecords`
declaration (sessions/records.py), in one forward pass: request, records (each with its
position, committed by the journal in the reading's transaction), the answer that ends the
transfer, then, once the journal reports every kept record committed, the driver's after-commit
step (the Pulse Oximeter's delete on the device). Nothing is acknowledged to a device before the
commit, so a crash or a lost link mid-transfer resumes on the next connection without a duplicate
or a hole.

The BLE transport is reached through the small protocols below, and the companion services
through `Companions`, so this module imports neither bleak nor any driver (gateway.app wires both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from operator import methodcaller
from typing import TypeVar

from gateway.hub.clock import HubClock, clock_state
from gateway.hub.config import DeviceConfig
from gateway.hub.journal import Journal
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import OutboxError
from gateway.sdk import TRACE, GattDecoder, GattDriver
from gateway.sessions.ble_companions import gatt_call, read_battery, set_clock
from gateway.sessions.ble_identity import Candidates, read_identity
from gateway.sessions.ble_ports import (
    NO_COMPANIONS,
    Advertisement,
    Companions,
    Link,
    Radio,
    Unavailable,
)
from gateway.sessions.core import DeviceUnavailable, ReadingPath
from gateway.sessions.device_identity import IdentityMemory
from gateway.sessions.records import RecordSync, all_committed, driver_failed, record_sync_for

log = logging.getLogger(__name__)
_T = TypeVar("_T")

RECORD_TIMEOUT = 30.0
"""Seconds a transfer may go without a record or an answer before the hub gives up on it."""
TRANSFER_BUDGET = (600.0, 10_000)
"""Seconds and records one transfer may take in all (the idle timeout restarts with each)."""
MAX_QUEUED_ANSWERS = 64
"""Control-point values kept while a request waits; past that the oldest go."""


# --- the session ----------------------------------------------------------------------------------


class BleDeviceSession:
    """One configured BLE device, reconnected whenever it comes back."""

    def __init__(
        self,
        device: DeviceConfig,
        driver: GattDriver,
        radio: Radio,
        journal: Journal,
        outbox: Outbox,
        *,
        companions: Companions = NO_COMPANIONS,
        claims: Callable[[Advertisement], bool] | None = None,
        clock: Callable[[], HubClock] = clock_state,
        record_timeout: float = RECORD_TIMEOUT,
        transfer_budget: tuple[float, int] = TRANSFER_BUDGET,
        max_backoff: float = 30.0,
        candidates: Candidates | None = None,
    ) -> None:
        self.device = device
        self._driver = driver
        self._radio = radio
        self._journal = journal
        self._outbox = outbox  # read only: the stored-record positions (the journal writes them)
        self._companions = companions
        self._claims = claims or (lambda _advert: True)
        self._clock = clock
        self._record_timeout = record_timeout
        self._transfer_budget = transfer_budget
        self._max_backoff = max_backoff
        info = driver.info
        identity = {"id": device.id, "driver": info.id, "driver_version": info.version}
        self._path: ReadingPath[GattDecoder] = ReadingPath(
            device,
            info.id,
            lambda: driver.gatt_decoder(device.options),
            journal,
            identity,
            continuous=driver.info.continuous,
        )
        self._streams = frozenset(
            c.uuid.lower() for c in driver.info.characteristics if c.mode == "notify"
        )
        self.candidates = candidates or Candidates()  # used when configured by serial
        self._memory = IdentityMemory(device.id, outbox.get_meta, journal)
        self._sync: RecordSync | None = None
        self._committing: list[asyncio.Future[bool]] = []
        self._answers: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(MAX_QUEUED_ANSWERS)
        self._asking = False  # a request waits for its answer: only then are values queued
        self._transfer_activity = 0.0
        self.connected = False
        """Connected and subscribed: values reach the journal."""
        self._announced = False
        self.connects = 0
        self.address: str | None = device.address

    @property
    def readings(self) -> int:
        return self._path.readings

    @property
    def decode_errors(self) -> int:
        return self._path.decode_errors

    def serving(self, connection: int) -> bool:
        """Connected and subscribed on its `connection`-th connection (1 = the first)."""
        return self.connected and self.connects == connection

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.device.address:
            await self._radio.close_stale(self.device.address)
        elif (last := self._memory.last("address")) is not None:
            self.candidates.passed(last)  # it served before this start: preferred from now on
        failures = 0
        while True:
            advert = await self._radio.wait_for(self._wanted)
            try:
                link = await self._radio.connect(advert, self.device.id)
            except DeviceUnavailable as exc:
                failures += 1
                delay = max(
                    getattr(exc, "retry_after", 0.0),
                    min(self._max_backoff, 0.5 * 2 ** min(failures, 6)),
                )
                level = logging.WARNING if failures in (1, 10) else logging.DEBUG
                log.log(
                    level,
                    "device %s: cannot connect to %s (%s); retrying in %.1f s",
                    self.device.id,
                    advert.address,
                    exc,
                    delay,
                )
                self._radio.forget(advert.address)  # wait for a fresh advertisement
                await asyncio.sleep(delay)
                continue
            failures = 0
            try:
                await self._serve(link)
            except DeviceUnavailable as exc:
                self._lost(str(exc))
            except asyncio.CancelledError:
                await self._say_goodbye(link)
                raise
            finally:
                self._path.close()  # what a decoder still holds is kept, marked incomplete
                self.connected = self._announced = False
                self._sync = None
                await link.close()
            await asyncio.sleep(0.5)

    async def _say_goodbye(self, link: Link) -> None:
        """The hub is stopping: the driver's `on_disconnect` writes, briefly, best effort."""
        session = self._driver.info.ble_session
        if session is None or not session.on_disconnect or link.lost.is_set():
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                for step in session.on_disconnect:
                    await link.write(step.uuid, step.data, response=step.response)

    def _wanted(self, advert: Advertisement) -> bool:
        if self.device.address is not None:
            return advert.address == self.device.address
        verdict = self.candidates.verdict(advert.address)
        return self._claims(advert) if verdict is None else verdict

    def _lost(self, reason: str) -> None:
        if self._announced:
            log.warning(
                "device %s: lost (%s); it will be reconnected when it returns",
                self.device.id,
                reason,
            )
            self._journal.event("device-lost", {"device": self.device.id, "reason": reason})
        else:
            log.warning("device %s: connection set-up failed (%s)", self.device.id, reason)

    # --- one connection ------------------------------------------------------------------------

    async def _serve(self, link: Link) -> None:
        await self._check_services(link)
        await self._identify(link)
        self.connects += 1
        self.address = link.address
        log.info("device %s: connected (%s)", self.device.id, link.address)
        self._journal.event("device-connected", {"device": self.device.id, "address": link.address})
        self._announced = True
        await set_clock(self.device.id, link, self._companions, self._clock)
        await read_battery(link, self._path, self._companions)
        self._path.open()
        self._sync = sync = record_sync_for(
            self._driver, link.has, self._path.identity, self._outbox.get_meta, self._journal
        )
        subscribed: set[str] = set()
        for char in self._driver.info.characteristics:
            if not link.has(char.uuid):
                continue  # optional (required ones were checked)
            if char.mode == "read":
                self._on_value(char.uuid, await self._call(link.read(char.uuid), link))
            else:
                await self._call(
                    link.subscribe(char.uuid, partial(self._on_value, char.uuid)), link
                )
                subscribed.add(char.uuid.lower())
        if sync is not None:  # the answers of a control point no decoder reads
            for uuid in sync.done_on - subscribed:
                if link.has(uuid, "notify", "indicate"):
                    await self._call(link.subscribe(uuid, partial(self._on_answer, uuid)), link)
        self.connected = True  # values flow from here on
        session = self._driver.info.ble_session
        for step in session.on_connect if session else ():
            await self._call(link.write(step.uuid, step.data, response=step.response), link)
        if sync is not None:
            await self._fetch_records(link, sync)
        await link.lost.wait()
        raise DeviceUnavailable(link.lost_reason or "link lost")

    async def _call(self, operation: Awaitable[_T], link: Link) -> _T:
        return await gatt_call(operation, link)

    async def _check_services(self, link: Link) -> None:
        """The driver's service and required characteristics must be there; if they are not,
        BlueZ's service cache is stale (or this is the wrong device): clear it and retry."""
        info = self._driver.info
        missing = [c.name for c in info.characteristics if not c.optional and not link.has(c.uuid)]
        if (info.service and info.service not in link.services) or missing:
            what = ", ".join(missing) or f"service {info.service}"
            await self._radio.clear_cache(link.address)
            self._radio.forget(link.address)
            raise Unavailable(
                f"the device lacks {what}; its cached service table was cleared", retry_after=2.0
            )

    async def _identify(self, link: Link) -> None:
        """Read who the device is; pass over one with another serial than the configured one;
        sign a change against the identity seen last time. Readings then carry it."""
        base = {k: self._path.identity[k] for k in ("id", "driver", "driver_version")}
        identity = await read_identity(link, base, lambda uuid: self._call(link.read(uuid), link))
        wanted = self.device.serial
        if wanted is not None:
            if identity.get("serial") != wanted:
                # A neighbour's device of the same kind, or a rotated address of another one.
                # Its serial is the neighbour's business: named only at TRACE.
                serial = identity.get("serial")
                log.log(TRACE, "device %s: %s has serial %r", self.device.id, link.address, serial)
                self.candidates.failed(link.address)
                self._radio.forget(link.address)
                raise DeviceUnavailable(
                    f"{link.address} reports another serial than the configured one; "
                    "looking further"
                )
            self.candidates.passed(link.address)
        self._memory.seen(identity)
        self._path.identity = identity

    # --- values -------------------------------------------------------------------------------

    def _on_answer(self, uuid: str, data: bytes) -> None:
        log.log(TRACE, "device %s: %s = %s", self.device.id, uuid, data.hex())
        if self._asking:
            self._queue_answer(uuid.lower(), data)

    def _queue_answer(self, uuid: str, data: bytes) -> None:
        if self._answers.full():
            self._answers.get_nowait()  # the oldest: a flood must not grow the queue
        self._answers.put_nowait((uuid, data))

    def _on_value(self, uuid: str, data: bytes) -> None:
        log.log(TRACE, "device %s: %s = %s", self.device.id, uuid, data.hex())
        key = uuid.lower()
        sync = self._sync
        if self._asking and sync is not None and key in sync.done_on:
            self._queue_answer(key, data)
        if sync is None or key not in sync.records:
            value = methodcaller("value", uuid, data)
            self._path.feed(value, key if key in self._streams else None)
            return
        self._transfer_activity = time.monotonic()
        for reading in self._path.decode(methodcaller("value", uuid, data)):
            keep, cursor = sync.accept(uuid, reading)  # a skip is counted and reported there
            if not keep:
                continue
            if cursor is None:
                self._path.submit(reading)
            else:
                self._committing.append(self._path.submit_record(reading, cursor))

    # --- stored records: one forward pass ---------------------------------------------------

    async def _fetch_records(self, link: Link, sync: RecordSync) -> None:
        """Ask for the records; take them as they come (`_on_value`); when the answer that
        ends the transfer is in and the journal has committed every kept record, run the
        driver's after-commit step, then store the position it resets, through the journal."""
        self._committing = []
        final, asked = None, sync.next_step(None)  # the report, then what its answer calls for
        while asked is not None:
            if (final := await self._request(link, sync.control, *asked, sync)) is None:
                return
            asked = sync.next_step(final)
        if final is None:  # the driver failed (logged): live values only
            return
        log.info(
            "device %s: stored-record transfer ended: %s (%d records arrived)",
            self.device.id,
            sync.ended(final),
            sync.arrived,
        )
        step = sync.after_commit
        if step is None or not sync.arrived:
            return
        if not await all_committed(self._committing, self._record_timeout):
            log.warning(
                "device %s: stored records not yet committed; they stay on the "
                "device until the next connection",
                self.device.id,
            )
            return

        def answer(value: bytes) -> bool | None:
            try:
                return step.answer(value)
            except Exception:  # a driver bug: take it as a refusal
                driver_failed("AfterCommit.answer")
                return False

        final = await self._request(
            link, sync.control, step.request, lambda v: answer(v) is not None, sync
        )
        if final is None or not answer(final):
            log.warning("device %s: the device kept its stored records", self.device.id)
            return
        reset = sync.forget()
        if reset is None:
            return
        try:
            self._journal.set_cursor(*reset)
        except OutboxError as exc:  # the digests stay: harmless, the device has no records
            log.warning("device %s: cannot store its record position (%s)", self.device.id, exc)

    async def _request(
        self,
        link: Link,
        control: str,
        data: bytes,
        done: Callable[[bytes], bool],
        sync: RecordSync,
    ) -> bytes | None:
        """Write a request to `control` and wait for the value that ends it. While records
        flow, the timeout counts from the last record; a transfer that stalls is given up
        (aborted, when the driver declares how). None on a timeout."""
        while not self._answers.empty():
            self._answers.get_nowait()
        self._transfer_activity = time.monotonic()
        # A control point that takes only write-without-response gets one (BlueZ refuses the
        # other kind for it).
        response = link.has(control, "write") or not link.has(control, "write-without-response")
        self._asking = True
        seconds, records = self._transfer_budget
        ends = time.monotonic() + seconds
        try:
            await self._call(link.write(control, data, response=response), link)
            while (left := self._transfer_activity + self._record_timeout - time.monotonic()) > 0:
                if time.monotonic() > ends or sync.arrived > records:
                    break
                try:
                    async with asyncio.timeout(min(left, 1.0)):
                        uuid, answer = await self._answers.get()
                except TimeoutError:
                    if link.lost.is_set():
                        raise DeviceUnavailable(link.lost_reason or "link lost") from None
                    continue
                if uuid in sync.done_on and done(answer):
                    return answer
        finally:
            self._asking = False
        limit = f"{seconds:.0f} s, {records} records" if left > 0 else "its idle timeout"
        log.warning(
            "device %s: stored-record transfer past %s; the rest comes next time",
            self.device.id,
            limit,
        )
        if sync.abort is not None:
            with contextlib.suppress(DeviceUnavailable):
                await self._call(link.write(control, sync.abort, response=response), link)
        return None
