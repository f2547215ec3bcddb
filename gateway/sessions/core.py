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
  stream or connection ends, and what it returns is signed;
- the per-device rate limit: a token bucket of `max_rate` live readings a second holding
  `burst` (defaults: 10/s and 20 for a driver that is not continuous, none for one that is,
  since those are summarised). A reading over the limit is dropped before it is signed, counted,
  and reported once per `RATE_REPORT_INTERVAL` (and when the stream ends) as a signed
  `rate-limited` event and a WARNING with counts only. Stored records are never limited: they
  are the device's memory, acknowledged to it only once stored.

No I/O lives here, and no transport or driver is imported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Final, Generic, TypeVar

from gateway.hub.config import DeviceConfig
from gateway.hub.journal import Journal
from gateway.hub.outbox_file import MetaValue
from gateway.sdk import TRACE, DecodeError, FeedResult, Flushable, Reading

log = logging.getLogger(__name__)

DecoderT = TypeVar("DecoderT")

# Live readings a second a device that is not `continuous` may sign, unless configured.
DEFAULT_MAX_RATE: Final = 10.0
# Seconds between `rate-limited` events (and WARNINGs) while a device is over its rate.
RATE_REPORT_INTERVAL = 60.0


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
        rate = (
            device.max_rate
            if device.max_rate is not None
            else (None if continuous else DEFAULT_MAX_RATE)
        )
        self.max_rate = rate or None  # 0 is no limit
        self._burst = float(device.burst or max(1, round(2 * (rate or 0))))
        self._tokens, self._filled = self._burst, time.monotonic()
        self.rate_dropped = 0
        self._unreported = 0
        self._window_start = 0.0

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
        if self._unreported:
            self._report_rate(time.monotonic())

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
        """Hand a reading to the journal (under `identity`, for a companion service's value),
        unless the device is over its rate: then it is only counted."""
        if self.max_rate is not None and not self._admit():
            return
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

    def _admit(self) -> bool:
        """Take a token from the bucket; report the dropped count when an interval is over."""
        now = time.monotonic()
        rate = self.max_rate or 0.0
        self._tokens = min(self._burst, self._tokens + (now - self._filled) * rate)
        self._filled = now
        admitted = self._tokens >= 1.0
        if admitted:
            self._tokens -= 1.0
        else:
            if not self._unreported:
                self._window_start = now
            self._unreported += 1
            self.rate_dropped += 1
        if self._unreported and now - self._window_start >= RATE_REPORT_INTERVAL:
            self._report_rate(now)
        return admitted

    def _report_rate(self, now: float) -> None:
        dropped, self._unreported = self._unreported, 0
        interval = max(now - self._window_start, 0.0)
        log.warning(
            "device %s: %d readings over its rate of %g/s dropped in the last %.0f s; check "
            "the device (it sends more than it should) or raise its max_rate",
            self.device.id,
            dropped,
            self.max_rate,
            interval,
        )
        self._journal.event(
            "rate-limited",
            {
                "device": self.device.id,
                "dropped": dropped,
                "interval_s": round(interval, 3),
                "max_rate": self.max_rate,
            },
        )

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
