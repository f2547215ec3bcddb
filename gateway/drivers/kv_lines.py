"""Generic driver for serial devices that print one reading per text line of `key=value` pairs.

What lives here: the pure line codec (`decode_line`), the line-framing stream decoder and the
`DRIVER` object. Nothing here opens the port. A line looks like `spo2=97,pr=72,t=1795718184294`
and ends in `\\n` or `\\r\\n`.

Options (`keys`, `time_key`, `baudrate`) are validated in kv_lines_options.py.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from gateway.drivers.kv_lines_options import DEFAULT_BAUDRATE, KvOptions, parse_options
from gateway.sdk import (
    DecodeError,
    DriverInfo,
    FeedResult,
    Observation,
    Reading,
    SerialSettings,
    StatusValue,
)

DRIVER_ID = "generic.kv-lines"
MAX_LINE = 1024
"""Longest line content in bytes, without its terminator. A device that never sends a newline
must not make us buffer without bound."""

# Python's float() also takes "nan", "inf" and "1_0"; a device value must be a plain decimal.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _number(text: str) -> int | float | None:
    if not _NUMBER.fullmatch(text):
        return None
    if _INTEGER.fullmatch(text):
        return int(text)
    value = float(text)
    return value if math.isfinite(value) else None  # "1e999" overflows to inf: not a value


def decode_line(line: bytes, options: KvOptions) -> Reading:
    """Decode one line (without its terminator). Raises `DecodeError` for a malformed line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"line is not UTF-8 text: {exc.reason}") from exc
    observations: list[Observation] = []
    status: dict[str, StatusValue] = {}
    device_time: datetime | None = None
    seen: set[str] = set()
    for part in text.split(","):
        pair = part.strip()
        if not pair:  # a trailing comma is harmless
            continue
        key, sep, value = (s.strip() for s in pair.partition("="))
        if not sep or not key:
            raise DecodeError(  # no content: it may hold a health value, and errors reach logs
                f"expected key=value, got {len(pair)} characters without '='"
            )
        if key in seen:
            raise DecodeError(f"key {key!r} appears twice in one line")
        seen.add(key)
        number = _number(value)
        if key == options.time_key:
            device_time = _device_time(key, value)
        elif (spec := options.keys.get(key)) is not None:
            if number is None:
                raise DecodeError(f"value of {key!r} is not a number")
            observations.append(spec.observation(number))
        else:
            status[key] = value if number is None else number
    return Reading(
        observations=tuple(observations),
        raw=bytes(line),
        status=status,
        device_time=device_time,
        device_clock="unknown",  # the line does not say whether anyone set the device's clock
    )


def _device_time(key: str, value: str) -> datetime:
    if not _INTEGER.fullmatch(value):
        raise DecodeError(f"time {key!r} is not whole epoch milliseconds")
    try:
        return _EPOCH + timedelta(milliseconds=int(value))
    except OverflowError as exc:
        raise DecodeError(f"time {key!r} is out of range") from exc


@dataclass(slots=True)
class KvLinesDecoder:
    """Splits the stream into lines and decodes each one.

    A line longer than `MAX_LINE` is one `DecodeError`; the rest of it, up to the next newline,
    is discarded. The limit is checked the same way however the stream is chunked.
    """

    options: KvOptions
    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False

    def feed(self, data: bytes) -> FeedResult:
        result = FeedResult()
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            self._line(line.removesuffix(b"\r"), result)
        # One byte of slack: a full-length line may be waiting for the "\n" after its "\r".
        if len(self._buffer) > MAX_LINE + 1:
            if not self._discarding:
                result.errors.append(_too_long())
            self._discarding = True
            self._buffer.clear()
        return result

    def flush(self) -> FeedResult:
        """Decode a last line that has no terminator (the end of a stream, or a one-shot decode),
        and reset."""
        result = FeedResult()
        line = bytes(self._buffer).removesuffix(b"\r")
        if not self._discarding:
            self._line(line, result)
        self._buffer.clear()
        self._discarding = False
        return result

    def _line(self, line: bytes, result: FeedResult) -> None:
        if len(line) > MAX_LINE:
            result.errors.append(_too_long())
        elif line.strip():  # blank lines carry nothing
            try:
                result.readings.append(decode_line(line, self.options))
            except DecodeError as exc:
                result.errors.append(exc)


def _too_long() -> DecodeError:
    return DecodeError(f"line longer than {MAX_LINE} bytes without a newline: discarded")


class KvLinesDriver:
    """Generic `key=value,...` text-line driver."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Generic text lines of key=value pairs; keys mapped to observations by options",
        transport="serial",
        serial=SerialSettings(DEFAULT_BAUDRATE),
        # No observation_types: each device's options say what its keys are.
    )

    def decoder(self, options: Mapping[str, object]) -> KvLinesDecoder:
        return KvLinesDecoder(parse_options(options))

    def serial_settings(self, options: Mapping[str, object]) -> SerialSettings:
        """Port settings for these options: 8N1 at `baudrate`. Raises `OptionError`."""
        return SerialSettings(parse_options(options).baudrate)


DRIVER = KvLinesDriver()
