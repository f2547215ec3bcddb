"""What every device session shares, whatever the transport: the one decode-and-submit path.

What lives here: `DeviceUnavailable`, and `ReadingPath`, the path from a driver's decoder to the
journal that the serial session (sessions/serial.py) and the BLE session (sessions/ble.py) both
take. It owns one device's decoder and does, in one place:

- driver-failure isolation: a decoder that raises anything but a `DecodeError` in its result
  (a driver bug) has the input counted as a decode error and is restarted; the log names only
  the exception's type above TRACE, since its text may carry the device's values;
- error counting: the session's counters and the journal's per-device counters;
- the summary of continuous streams (`DriverInfo.continuous`): one reading per
  `summary_interval` per stream, on a fixed cadence. The first value of a stream is kept; after
  that, the first value at or after each due time, the due times stepping by the interval (so
  over a minute a 1 s interval keeps 60 readings, whatever the frame rate). When a stream
  pauses for longer than an interval, the cadence starts again at its next value. Of several
  values decoded from one input, the last is kept;
- flush at link end: a decoder that holds part of a record (`Flushable`) hands it over when the
  stream or connection ends, and what it returns is signed.

No I/O lives here, and no transport or driver is imported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from gateway.hub.config import DeviceConfig
from gateway.hub.journal import Journal
from gateway.hub.outbox_file import MetaValue
from gateway.sdk import TRACE, DecodeError, FeedResult, Flushable, Reading

log = logging.getLogger(__name__)

DecoderT = TypeVar("DecoderT")


class DeviceUnavailable(Exception):
    """The device could not be opened, or went away. The session retries with backoff."""


class ReadingPath(Generic[DecoderT]):
    """One device's decode-and-submit path (see the module's docstring).

    `new_decoder` makes a decoder for one stream or connection (`open` calls it, and a driver
    failure calls it again). `identity` is the device object signed into each reading; a
    session may replace it (the BLE session learns the serial number on connecting)."""

    def __init__(
        self,
        device: DeviceConfig,
        driver_id: str,
        new_decoder: Callable[[], DecoderT],
        journal: Journal,
        identity: Mapping[str, object],
        *,
        continuous: bool,
    ) -> None:
        self.device = device
        self.identity = identity
        self._driver_id = driver_id
        self._new_decoder = new_decoder
        self._journal = journal
        self._continuous = continuous
        self._interval = device.summary_interval
        self._decoder: DecoderT | None = None
        self._next_due: dict[str, float] = {}
        self.readings = 0
        self.decode_errors = 0

    def open(self) -> None:
        """A stream or connection starts: a fresh decoder."""
        self._decoder = self._new_decoder()

    def close(self) -> None:
        """The stream or connection ended: sign what the decoder still holds, then drop it."""
        decoder, self._decoder = self._decoder, None
        if isinstance(decoder, Flushable):
            try:
                result = decoder.flush()
            except Exception as exc:  # a driver bug must not stop the session
                self._driver_failed(exc, self._driver_id)
                return
            for reading in self._take(result):
                self.submit(reading)

    def decode(self, call: Callable[[DecoderT], FeedResult]) -> list[Reading]:
        """The readings `call(decoder)` returns, its errors counted. A driver that raises gets
        its input counted as one decode error and a new decoder. Nothing while closed."""
        decoder = self._decoder
        if decoder is None:
            return []
        try:
            result = call(decoder)
        except Exception as exc:  # a driver bug must not stop the hub or other devices
            self._driver_failed(exc, self._driver_id)
            self._decoder = self._new_decoder()
            return []
        return self._take(result)

    def decode_once(self, step: Callable[[], FeedResult], driver_id: str) -> list[Reading]:
        """`decode` for a decoder made for one value (a companion service's, such as the
        battery's), driver `driver_id`'s failure isolated the same way."""
        try:
            result = step()
        except Exception as exc:  # a driver bug must not stop the hub or other devices
            self._driver_failed(exc, driver_id)
            return []
        return self._take(result)

    def feed(self, call: Callable[[DecoderT], FeedResult], stream: str | None = "") -> None:
        """Decode and submit: the common case. `stream` names the stream the input came on
        (a characteristic); None for values that are never summarised (a read, a record)."""
        readings = self.decode(call)
        if readings and self._continuous and stream is not None:
            readings = self._summarise(stream, readings)
        for reading in readings:
            self.submit(reading)

    def _summarise(self, stream: str, readings: list[Reading]) -> list[Reading]:
        # Tens of frames a second would be as many signed readings: keep the values at the
        # moment each interval comes due instead.
        mono = time.monotonic()
        due = self._next_due.get(stream, 0.0)
        if mono < due:
            return []
        due += self._interval
        if due <= mono:  # the stream's first value, or the stream paused
            due = mono + self._interval
        self._next_due[stream] = due
        return readings[-1:]

    def submit(self, reading: Reading, identity: Mapping[str, object] | None = None) -> None:
        """Hand a reading to the journal (under `identity`, for a companion service's value)."""
        self.readings += 1
        self._journal.submit(
            identity or self.identity, self.device.id, self.device.patient, reading, time.time()
        )

    def submit_record(
        self, reading: Reading, cursor: tuple[str, MetaValue] | Mapping[str, MetaValue]
    ) -> asyncio.Future[bool]:
        """Hand a stored record to the journal with its positions, to be committed in one
        transaction; the future is set True once they are (see `Journal.submit`)."""
        committed = asyncio.get_running_loop().create_future()
        self.readings += 1
        self._journal.submit(
            self.identity,
            self.device.id,
            self.device.patient,
            reading,
            time.time(),
            cursor=cursor,
            committed=committed,
        )
        return committed

    def count_error(self, error: DecodeError) -> None:
        self.decode_errors += 1
        self._journal.count_error(self.device.id, str(error))
        log.log(TRACE, "device %s: decode error: %s", self.device.id, error)

    def _take(self, result: FeedResult) -> list[Reading]:
        for error in result.errors:
            self.count_error(error)
        return result.readings

    def _driver_failed(self, exc: Exception, driver_id: str) -> None:
        # No traceback above TRACE: the exception's text may carry the device's values.
        log.error(
            "device %s: driver %s raised %s instead of DecodeError; the input is counted as a "
            "decode error and the decoder restarted. Report this to the driver's maintainer.",
            self.device.id,
            driver_id,
            type(exc).__name__,
        )
        log.log(TRACE, "device %s: driver failure: %r", self.device.id, exc)
        self.count_error(DecodeError(f"driver {driver_id} failed: {type(exc).__name__}"))
