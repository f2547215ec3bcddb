"""One configured Bluetooth LE device, from advertisement to signed readings, for months.

What lives here: `BleDeviceSession` (find the device's advertisement, connect, check the
service table, learn its identity from Device Information, set its clock, read its battery,
subscribe to the driver's characteristics, fetch stored records, and start again after a lost
link), and the two stored-record strategies of the Record Access Control Point:

- `SequenceSync` (Glucose): records carry a sequence number. The hub asks for those after the
  highest one already stored, and the position moves in the same outbox transaction as the
  reading (`Journal.submit(cursor=...)`), so a crash or a lost link mid-transfer resumes on the
  next connection without a duplicate or a hole.
- `DigestSync` (Pulse Oximeter spot-checks): records carry no sequence number, so the hub asks for
  all of them, skips those whose digest it has already stored (kept with the readings, as above),
  and asks the device to delete its records only once every one of them is in the outbox.

The BLE transport is reached through the small protocols below, so this module stays free of
bleak (app.py passes the real one; tests may too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from functools import partial
from typing import Protocol, TypeVar

from gateway.drivers.gatt_bas import BATTERY_LEVEL, decode_battery_level
from gateway.drivers.gatt_bas import DRIVER as BAS_DRIVER
from gateway.drivers.gatt_cts import CURRENT_TIME, encode_current_time
from gateway.hub.clock import HubClock, clock_state
from gateway.hub.config import DeviceConfig
from gateway.hub.journal import Journal
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import MetaValue
from gateway.sdk import (
    TRACE,
    DecodeError,
    Flushable,
    GattDecoder,
    GattDriver,
    Reading,
    uuid16,
)
from gateway.sessions import racp
from gateway.sessions.core import DeviceUnavailable
from gateway.sessions.records import Cursor, RecordSync, record_sync_for

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SERIAL_NUMBER = uuid16(0x2A25)
MODEL_NUMBER = uuid16(0x2A24)
RECORD_TIMEOUT = 30.0
"""Seconds a transfer may go without a record or an answer before the hub gives up on it."""


# --- what the session needs of the BLE transport -----------------------------------------------


class Advertisement(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def name(self) -> str | None: ...


class Link(Protocol):
    address: str
    lost: asyncio.Event
    lost_reason: str
    services: frozenset[str]

    def has(self, uuid: str, *properties: str) -> bool: ...
    async def read(self, uuid: str, timeout: float = ...) -> bytes: ...
    async def write(
        self, uuid: str, data: bytes, timeout: float = ..., *, response: bool = ...
    ) -> None: ...
    async def subscribe(
        self, uuid: str, callback: Callable[[bytes], None], timeout: float = ...
    ) -> None: ...
    async def close(self) -> None: ...


class Radio(Protocol):
    """The scanner and connector of one adapter. `connect` raises `DeviceUnavailable` (with
    `retry_after` when the adapter asks for a longer wait) instead of the transport's errors."""

    async def wait_for(self, predicate: Callable[[Advertisement], bool]) -> Advertisement: ...
    def forget(self, address: str) -> None: ...
    async def connect(self, advert: Advertisement, name: str) -> Link: ...
    async def close_stale(self, address: str) -> None: ...
    async def clear_cache(self, address: str) -> None: ...


class Unavailable(DeviceUnavailable):
    """A connection could not be made; wait at least `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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
        claims: Callable[[Advertisement], bool] | None = None,
        clock: Callable[[], HubClock] = clock_state,
        record_timeout: float = RECORD_TIMEOUT,
        max_backoff: float = 30.0,
    ) -> None:
        self.device = device
        self._driver = driver
        self._radio = radio
        self._journal = journal
        self._outbox = outbox
        self._claims = claims or (lambda _advert: True)
        self._clock = clock
        self._record_timeout = record_timeout
        self._max_backoff = max_backoff
        self._identity: dict[str, object] = {
            "id": device.id,
            "driver": driver.info.id,
            "driver_version": driver.info.version,
        }
        self._rejected: dict[str, float] = {}  # address -> until when (serial did not match)
        self._next_due: dict[str, float] = {}
        self._decoder: GattDecoder | None = None
        self._sync: RecordSync | None = None
        self._answers: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._link: Link | None = None
        self._transfer_activity = 0.0
        self.connected = False
        """Connected and subscribed: values reach the journal."""
        self._announced = False
        self.connects = 0
        self.readings = 0
        self.decode_errors = 0
        self.records_skipped = 0
        self.address: str | None = device.address
        self.device_id = device.id

    def serving(self, connection: int) -> bool:
        """Connected and subscribed on its `connection`-th connection (1 = the first)."""
        return self.connected and self.connects == connection

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.device.address:
            await self._radio.close_stale(self.device.address)
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
                self._flush_decoder()
                self.connected = self._announced = False
                self._decoder = None
                self._sync = None
                self._link = None
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
        until = self._rejected.get(advert.address)
        if until is not None and until > time.monotonic():
            return False
        return self._claims(advert)

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
        await self._set_clock(link)
        await self._read_battery(link)
        self._decoder = self._driver.gatt_decoder(self.device.options)
        self._link = link
        self._sync = sync = record_sync_for(
            self._driver, link.has, self.device.id, self._outbox.get_meta
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
            final = await self.request(sync.control, sync.request(), sync.done, sync.done_on)
            if final is not None:
                await sync.finish(self, final)
        await link.lost.wait()
        raise DeviceUnavailable(link.lost_reason or "link lost")

    async def _call(self, operation: Awaitable[_T], link: Link) -> _T:
        """Await a GATT operation; a failure while connected is the link's end, not a crash."""
        try:
            return await operation
        except (TimeoutError, OSError, EOFError) as exc:
            raise DeviceUnavailable(f"GATT operation failed: {exc or type(exc).__name__}") from exc
        except Exception as exc:  # bleak's errors (BleakError, BleakDBusError)
            if link.lost.is_set():
                raise DeviceUnavailable(link.lost_reason or "link lost") from exc
            raise DeviceUnavailable(f"GATT operation failed: {exc}") from exc

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
        identity = dict(self._identity, address=link.address)
        for uuid, key in ((SERIAL_NUMBER, "serial"), (MODEL_NUMBER, "model")):
            if link.has(uuid, "read"):
                text = (await self._call(link.read(uuid), link)).decode("utf-8", "replace")
                text = text.rstrip("\x00").strip()
                if text:
                    identity[key] = text
        wanted = self.device.serial
        if wanted is not None and identity.get("serial") != wanted:
            # A neighbour's device of the same kind, or a rotated address of another one.
            self._rejected[link.address] = time.monotonic() + 600.0
            self._radio.forget(link.address)
            raise DeviceUnavailable(
                f"{link.address} has serial {identity.get('serial')!r}, "
                f"not {wanted!r}; looking further"
            )
        self._identity = identity

    async def _set_clock(self, link: Link) -> None:
        """Give the device the hub's time, only while the hub's clock is synchronised."""
        if not link.has(CURRENT_TIME, "write") or self._clock() != "synced":
            return
        try:
            await self._call(
                link.write(CURRENT_TIME, encode_current_time(datetime.now().astimezone())), link
            )
            log.info("device %s: clock set from the hub", self.device.id)
        except DeviceUnavailable as exc:
            if link.lost.is_set():
                raise
            log.warning("device %s: it refused the current time (%s)", self.device.id, exc)

    async def _read_battery(self, link: Link) -> None:
        if not link.has(BATTERY_LEVEL, "read"):
            return
        data = await self._call(link.read(BATTERY_LEVEL), link)
        try:
            reading = decode_battery_level(data)
        except DecodeError as exc:
            self._count_error(exc)
            return
        identity = dict(
            self._identity, driver=BAS_DRIVER.info.id, driver_version=BAS_DRIVER.info.version
        )
        self._submit(identity, reading, None)

    # --- values -------------------------------------------------------------------------------

    def _on_answer(self, uuid: str, data: bytes) -> None:
        log.log(TRACE, "device %s: %s = %s", self.device.id, uuid, data.hex())
        self._answers.put_nowait((uuid.lower(), data))

    def _on_value(self, uuid: str, data: bytes) -> None:
        log.log(TRACE, "device %s: %s = %s", self.device.id, uuid, data.hex())
        sync = self._sync
        if sync is not None and uuid.lower() in sync.done_on:
            self._answers.put_nowait((uuid.lower(), data))
        decoder = self._decoder
        if decoder is None:
            return
        try:
            result = decoder.value(uuid, data)
        except Exception as exc:  # a driver bug must not stop the hub or other devices
            # No traceback above TRACE: the exception's text may carry the device's values.
            log.error(  # noqa: TRY400
                "device %s: driver %s raised %s instead of DecodeError; the value is "
                "counted as a decode error. Report this to the driver's maintainer.",
                self.device.id,
                self._driver.info.id,
                type(exc).__name__,
            )
            log.log(TRACE, "device %s: driver failure: %r", self.device.id, exc)
            self._count_error(DecodeError(f"driver failed: {type(exc).__name__}"))
            self._decoder = self._driver.gatt_decoder(self.device.options)
            return
        for error in result.errors:
            self._count_error(error)
        if sync is not None and uuid.lower() in sync.records:
            self._transfer_activity = time.monotonic()
            for reading in result.readings:
                keep, cursor = sync.accept(uuid, reading)
                if keep:
                    self._submit(self._identity, reading, cursor)
                else:
                    self.records_skipped += 1
            return
        readings = result.readings
        if readings and self._driver.info.continuous and self._is_stream(uuid):
            # Tens of values a second would be as many signed readings: keep one per interval.
            mono = time.monotonic()
            due = self._next_due.get(uuid, 0.0)
            if mono < due:
                return
            self._next_due[uuid] = mono + self.device.summary_interval
            readings = readings[-1:]
        for reading in readings:
            self._submit(self._identity, reading, None)

    def _flush_decoder(self) -> None:
        """A decoder holding part of a record (an FTMS record split over notifications) hands
        it over, marked incomplete, when the link ends: what arrived is kept."""
        decoder = self._decoder
        if not isinstance(decoder, Flushable):
            return
        try:
            result = decoder.flush()
        except Exception as exc:  # a driver bug must not stop the session
            log.error(  # noqa: TRY400
                "device %s: driver %s failed to flush: %s",
                self.device.id,
                self._driver.info.id,
                type(exc).__name__,
            )
            return
        for error in result.errors:
            self._count_error(error)
        for reading in result.readings:
            self._submit(self._identity, reading, None)

    def _is_stream(self, uuid: str) -> bool:
        return any(c.uuid == uuid and c.mode == "notify" for c in self._driver.info.characteristics)

    def _submit(
        self, identity: Mapping[str, object], reading: Reading, cursor: Cursor | None
    ) -> None:
        self.readings += 1
        self._journal.submit(
            identity, self.device.id, self.device.patient, reading, time.time(), cursor=cursor
        )

    def _count_error(self, error: DecodeError) -> None:
        self.decode_errors += 1
        self._journal.count_error(self.device.id, str(error))
        log.log(TRACE, "device %s: decode error: %s", self.device.id, error)

    # --- stored-record transfers (the session is the strategies' `Transfer`) --------------

    async def request(
        self, control: str, data: bytes, done: Callable[[bytes], bool], done_on: frozenset[str]
    ) -> bytes | None:
        """Write a request to `control` and wait for the value that ends it. While records
        flow, the timeout counts from the last record; a transfer that stalls is given up
        (aborted, for an RACP). None on a timeout."""
        link = self._link
        if link is None:
            return None
        while not self._answers.empty():
            self._answers.get_nowait()
        self._transfer_activity = time.monotonic()
        # A control point that takes only write-without-response gets one (BlueZ refuses the
        # other kind for it).
        response = link.has(control, "write") or not link.has(control, "write-without-response")
        await self._call(link.write(control, data, response=response), link)
        while True:
            left = self._transfer_activity + self._record_timeout - time.monotonic()
            if left <= 0:
                log.warning(
                    "device %s: no answer to a stored-record request for %.1f s; "
                    "giving up on it (the rest comes on the next connection)",
                    self.device.id,
                    self._record_timeout,
                )
                if control == racp.RACP:
                    with contextlib.suppress(DeviceUnavailable):
                        await self._call(link.write(racp.RACP, racp.abort()), link)
                return None
            try:
                async with asyncio.timeout(min(left, 1.0)):
                    uuid, answer = await self._answers.get()
            except TimeoutError:
                if link.lost.is_set():
                    raise DeviceUnavailable(link.lost_reason or "link lost") from None
                continue
            if uuid in done_on and done(answer):
                return answer

    # --- the outbox -----------------------------------------------------------------------------

    async def stored(self, key: str, value: MetaValue, timeout: float = 30.0) -> bool:
        """Wait until the outbox holds `value` under `key` (committed with its readings)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._outbox.get_meta(key) == value:
                return True
            await asyncio.sleep(0.02)
        return False

    def set_cursor(self, key: str, value: MetaValue) -> None:
        self._outbox.set_meta(key, value)
