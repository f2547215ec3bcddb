"""One configured serial device, from open to readings, reopened whenever it comes back.

`DeviceSession` opens the device through a `StreamOpener` (the app hands in the real serial
transport) and feeds the bytes down the shared decode-and-submit path (sessions/core.py: driver
failures isolated, errors counted, continuous streams summarised, flushed when the stream ends)
to the `Journal`. When the device goes away it reopens it with backoff, for as long as
the daemon runs. Who is behind the port (a USB device's serial number and model, as the opened
stream reports them) is remembered per device; a change is a signed `device-identity-changed`
event (sessions/device_identity.py). No transport is imported here: the device is seen through
the protocols below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from operator import methodcaller
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from gateway.hub.config import DeviceConfig
from gateway.hub.journal import Journal
from gateway.hub.outbox_file import MetaValue
from gateway.sdk import TRACE, Driver, SerialSettings, StreamDecoder
from gateway.sessions.core import DeviceUnavailable, ReadingPath
from gateway.sessions.device_identity import IdentityMemory

log = logging.getLogger(__name__)


class ByteStream(Protocol):
    """An open device. A stream that knows who is behind its port may also have `identity`
    (`{"serial", "model"}`: the app's serial stream reads them from the USB listing); the
    session reads it with getattr, so a stream without one (a test's, a pty) needs nothing."""

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
        stored: Callable[[str], MetaValue | None] | None = None,
    ) -> None:
        """`stored` reads the outbox's meta table: with it, the USB serial number and model
        an opened stream reports (`identity`) are remembered, and a change is signed."""
        self.device = device
        self._driver = driver
        self._settings = settings
        self._opener = opener
        self._journal = journal
        self._max_backoff = max_backoff
        identity = {
            "id": device.id,
            "driver": driver.info.id,
            "driver_version": driver.info.version,
            "address": device.port or f"usb:{device.usb.describe() if device.usb else '?'}",
        }
        self._path: ReadingPath[StreamDecoder] = ReadingPath(
            device,
            driver.info.id,
            lambda: driver.decoder(device.options),
            journal,
            identity,
            continuous=driver.info.continuous,
        )
        self.connected = False
        self._memory = None if stored is None else IdentityMemory(device.id, stored, journal)
        self._address = str(identity["address"])

    @property
    def readings(self) -> int:
        return self._path.readings

    @property
    def decode_errors(self) -> int:
        return self._path.decode_errors

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
            found: Mapping[str, str | None] = getattr(stream, "identity", None) or {}
            if self._memory is not None and found:  # a port without USB ids has none
                self._memory.seen({"address": self._address, **found})
            try:
                await self._stream(stream)
            except DeviceUnavailable as exc:
                log.warning(
                    "device %s: lost (%s); it will be reopened when it returns", self.device.id, exc
                )
                self._journal.event("device-lost", {"device": self.device.id, "reason": str(exc)})
            finally:
                self._path.close()  # what the decoder still holds is kept, marked incomplete
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

    async def _stream(self, stream: ByteStream) -> None:
        path = self._path
        path.open()
        while True:
            data = await stream.read()
            log.log(TRACE, "device %s: %d bytes %s", self.device.id, len(data), data.hex())
            path.feed(methodcaller("feed", data))
