"""One configured serial device, from open to readings, reopened whenever it comes back.

`DeviceSession` opens the device through a `StreamOpener` (the app hands in the real serial
transport), feeds the bytes to the driver's decoder, summarises continuous streams and hands
readings to the `Journal`. When the device goes away it reopens it with backoff, for as long as
the daemon runs. No transport is imported here: the device is seen through the protocols below.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from gateway.hub.config import DeviceConfig
from gateway.hub.journal import Journal
from gateway.sdk import TRACE, DecodeError, Driver, FeedResult, SerialSettings
from gateway.sessions.core import DeviceUnavailable

log = logging.getLogger(__name__)


class ByteStream(Protocol):
    async def write(self, data: bytes) -> None:
        """Send bytes to the device (a start command)."""
        ...

    async def read(self) -> bytes:
        """The next chunk; raises `DeviceUnavailable` when the device goes away."""
        ...

    async def close(self) -> None: ...


class StreamOpener(Protocol):
    async def __call__(self, device: DeviceConfig, settings: SerialSettings) -> ByteStream:
        """Open the device; raises `DeviceUnavailable` with the cause."""
        ...


class DeviceSession:
    """One configured device, from open to readings, reopened whenever it comes back."""

    def __init__(
        self,
        device: DeviceConfig,
        driver: Driver,
        settings: SerialSettings,
        opener: StreamOpener,
        journal: Journal,
        *,
        max_backoff: float = 30.0,
    ) -> None:
        self.device = device
        self._driver = driver
        self._settings = settings
        self._opener = opener
        self._journal = journal
        self._max_backoff = max_backoff
        self._identity: Mapping[str, object] = {
            "id": device.id,
            "driver": driver.info.id,
            "driver_version": driver.info.version,
            "address": device.port or f"usb:{device.usb.describe() if device.usb else '?'}",
        }
        self._next_due = 0.0
        self.connected = False
        self.readings = 0
        self.decode_errors = 0

    async def run(self) -> None:
        while True:
            stream = await self._open()
            session = self._driver.info.serial_session
            try:
                for command in session.on_open if session else ():
                    await stream.write(command)
            except DeviceUnavailable as exc:
                log.warning(
                    "device %s: cannot send its start command (%s); reopening", self.device.id, exc
                )
                await stream.close()
                continue
            self.connected = True
            log.info("device %s: connected on %s", self.device.id, self.device.where)
            self._journal.event("device-connected", {"device": self.device.id})
            try:
                await self._stream(stream)
            except DeviceUnavailable as exc:
                log.warning(
                    "device %s: lost (%s); it will be reopened when it returns", self.device.id, exc
                )
                self._journal.event("device-lost", {"device": self.device.id, "reason": str(exc)})
            finally:
                self.connected = False
                await stream.close()

    async def _open(self) -> ByteStream:
        attempts = 0

        def before_sleep(_: object) -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                log.warning(
                    "device %s: cannot open %s; retrying with backoff until it appears "
                    "(is it plugged in, and is the port right?)",
                    self.device.id,
                    self.device.where,
                )

        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.2, max=self._max_backoff),
            retry=retry_if_exception_type(DeviceUnavailable),
            reraise=True,
            before_sleep=before_sleep,
        )
        async for attempt in retrying:
            with attempt:
                return await self._opener(self.device, self._settings)
        raise AssertionError("unreachable: the retry loop never stops")  # pragma: no cover

    def _driver_failed(self, exc: Exception) -> FeedResult:
        # No traceback above TRACE: the exception's text may carry the device's values.
        name = self._driver.info.id
        log.error(
            "device %s: driver %s raised %s instead of DecodeError; the bytes are counted "
            "as a decode error and the decoder restarted. Report this to the driver's "
            "maintainer.",
            self.device.id,
            name,
            type(exc).__name__,
        )
        log.log(TRACE, "device %s: driver failure: %r", self.device.id, exc)
        return FeedResult(errors=[DecodeError(f"driver {name} failed: {type(exc).__name__}")])

    async def _stream(self, stream: ByteStream) -> None:
        decoder = self._driver.decoder(self.device.options)
        continuous = self._driver.info.continuous
        interval = self.device.summary_interval
        while True:
            data = await stream.read()
            log.log(TRACE, "device %s: %d bytes %s", self.device.id, len(data), data.hex())
            try:
                result = decoder.feed(data)
            except Exception as exc:  # a driver bug must not stop the hub or other devices
                result = self._driver_failed(exc)
                decoder = self._driver.decoder(self.device.options)
            for error in result.errors:
                self.decode_errors += 1
                self._journal.count_error(self.device.id, str(error))
                log.log(TRACE, "device %s: decode error: %s", self.device.id, error)
            if not result.readings:
                continue
            now = time.time()
            if continuous:
                # ~60 frames a second would be 60 signed readings; keep the values at the
                # moment each interval comes due instead.
                mono = time.monotonic()
                if mono < self._next_due:
                    continue
                self._next_due += interval
                if self._next_due <= mono:  # first reading, or the stream paused
                    self._next_due = mono + interval
                readings = result.readings[-1:]
            else:
                readings = result.readings
            for reading in readings:
                self.readings += 1
                self._journal.submit(
                    self._identity, self.device.id, self.device.patient, reading, now
                )
