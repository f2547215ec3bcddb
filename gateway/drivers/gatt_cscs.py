"""Cycling Speed and Cadence Service (CSCS, 0x1816): CSC Measurement and CSC Feature.

What lives here: the pure measurement and feature parsers, the per-connection decoder that turns
counter deltas into rates, and `DRIVER`. No I/O.

CSC Measurement (0x2A5B): flags uint8; bit 0: cumulative wheel revolutions uint32 + last wheel
event time uint16 (1/1024 s); bit 1: cumulative crank revolutions uint16 + last crank event time
uint16 (1/1024 s). The sensor sends counters, not rates, so the decoder keeps the previous
values per connection and reports:

- always the cumulative counters (`wheel_revolutions`, `crank_revolutions`), so the platform
  can recompute anything;
- from the second measurement on, `wheel_revolution_rate` and `cadence` (/min) from the deltas,
  counted modulo 2^32 (wheel revolutions) or 2^16 (crank revolutions and both event times), so a
  rollover gives the right delta;
- no rate when the event time did not move (no new revolution since the last notification: a
  rate would be a division by zero), nor when a counter moved back by more than half its range
  (the sensor was reset, not rolled over).

The hub does not know the wheel, so speed is reported only when the device's options give
`wheel_circumference_m` (then also `distance` = wheel revolutions x circumference). Trailing bytes
are an error unless a reserved flag bit is set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.sdk import (
    BleMatch,
    Characteristic,
    DecodeError,
    DriverInfo,
    FeedResult,
    Observation,
    ObservationType,
    OptionError,
    Reading,
    StatusValue,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.cscs"
OPTION = "wheel_circumference_m"
CIRCUMFERENCE_RANGE = (0.1, 5.0)  # metres: from a toy wheel to far beyond any bicycle

TYPES: Mapping[str, ObservationType] = {
    t.name: t
    for t in (
        ObservationType("wheel_revolutions", "{revolutions}"),
        ObservationType("wheel_revolution_rate", "/min"),
        ObservationType("crank_revolutions", "{revolutions}"),
        ObservationType("cadence", "/min", 8454255),
        ObservationType("speed", "m/s", 8454254),
        ObservationType("distance", "m", 8454247),
    )
}
_KNOWN_FLAGS = 0x03
_TIME_MODULUS = 1 << 16


@dataclass(frozen=True, slots=True)
class Event:
    """A cumulative revolution count and the time of its last event (1/1024 s, rolls over)."""

    revolutions: int
    time: int


@dataclass(frozen=True, slots=True)
class Measurement:
    wheel: Event | None
    crank: Event | None


def parse_measurement(data: bytes) -> Measurement:
    """CSC Measurement (0x2A5B) without any state. Raises only `DecodeError`."""
    flags = uint_from(data, 0, 1)
    offset = 1
    wheel = crank = None
    if flags & 0x01:
        wheel = Event(uint_from(data, offset, 4), uint_from(data, offset + 4, 2))
        offset += 6
    if flags & 0x02:
        crank = Event(uint_from(data, offset, 2), uint_from(data, offset + 2, 2))
        offset += 4
    if offset != len(data) and not flags & ~_KNOWN_FLAGS:
        raise DecodeError(
            f"CSC Measurement: {len(data) - offset} bytes after the fields its "
            f"flags {flags:#04x} announce"
        )
    return Measurement(wheel, crank)


def revolution_rate(previous: Event | None, now: Event, modulus: int) -> float | None:
    """Revolutions per minute between two events, or None when there is no rate to give."""
    if previous is None:
        return None
    ticks = (now.time - previous.time) % _TIME_MODULUS
    revolutions = (now.revolutions - previous.revolutions) % modulus
    if ticks == 0 or revolutions >= modulus // 2:
        return None
    return round(revolutions * 60 * 1024 / ticks, 1)


def _observation(type_: str, value: float | int) -> Observation:
    kind = TYPES[type_]
    return Observation(type_, value, kind.unit, kind.mdc, kind.loinc)


CSC_FEATURES = ("wheel_revolution_data", "crank_revolution_data", "multiple_sensor_locations")


def decode_feature(data: bytes) -> Reading:
    """CSC Feature (0x2A5C): uint16 bit field, as `<name>_supported` status flags."""
    bits = uint_from(data, 0, 2)
    status: dict[str, StatusValue] = {
        f"{name}_supported": bool(bits >> bit & 1) for bit, name in enumerate(CSC_FEATURES)
    }
    return Reading(observations=(), raw=bytes(data), status=status)


MEASUREMENT = uuid16(0x2A5B)
FEATURE = uuid16(0x2A5C)


class CscsDecoder:
    """One connection's decoder: keeps the previous wheel and crank events for the deltas."""

    __slots__ = ("_circumference", "_crank", "_wheel")

    def __init__(self, circumference: float | None) -> None:
        self._circumference = circumference
        self._wheel: Event | None = None
        self._crank: Event | None = None

    def value(self, uuid: str, data: bytes) -> FeedResult:
        result = FeedResult()
        decode = _CHARACTERISTICS.get(uuid.lower())
        if decode is None:
            result.errors.append(DecodeError(f"{DRIVER_ID}: no characteristic {uuid}"))
            return result
        try:
            result.readings.append(decode(self, data))
        except DecodeError as exc:
            result.errors.append(exc)
        return result

    def measurement(self, data: bytes) -> Reading:
        """A CSC Measurement, with rates from the previous one of this connection."""
        parsed = parse_measurement(data)
        observations: list[Observation] = []
        wheel, crank = parsed.wheel, parsed.crank
        if wheel is not None:
            rate = revolution_rate(self._wheel, wheel, 1 << 32)
            self._wheel = wheel
            observations.append(_observation("wheel_revolutions", wheel.revolutions))
            if rate is not None:
                observations.append(_observation("wheel_revolution_rate", rate))
            if self._circumference is not None:
                observations.append(
                    _observation("distance", round(wheel.revolutions * self._circumference, 2))
                )
                if rate is not None:
                    observations.append(
                        _observation("speed", round(rate / 60 * self._circumference, 2))
                    )
        if crank is not None:
            rate = revolution_rate(self._crank, crank, 1 << 16)
            self._crank = crank
            observations.append(_observation("crank_revolutions", crank.revolutions))
            if rate is not None:
                observations.append(_observation("cadence", rate))
        return Reading(observations=tuple(observations), raw=bytes(data))


_CHARACTERISTICS: Mapping[str, Callable[[CscsDecoder, bytes], Reading]] = {
    MEASUREMENT: CscsDecoder.measurement,
    FEATURE: lambda _decoder, data: decode_feature(data),
}


def _circumference(options: Mapping[str, object]) -> float | None:
    for key in options:
        if key != OPTION:
            raise OptionError(key, f"{DRIVER_ID} takes only {OPTION}; remove it")
    value = options.get(OPTION)
    if value is None:
        return None
    low, high = CIRCUMFERENCE_RANGE
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise OptionError(
            OPTION,
            f"must be the wheel's circumference in metres, a number from "
            f"{low} to {high} (e.g. 2.105 for a 700x25C tyre)",
        )
    return float(value)


class CscsDriver:
    """Cycling Speed and Cadence Service."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Bluetooth Cycling Speed and Cadence Service (wheel and crank sensors)",
        transport="ble",
        category="musculoskeletal",
        match=(BleMatch(service_uuid=uuid16(0x1816)),),
        service=uuid16(0x1816),
        characteristics=(
            Characteristic(FEATURE, "csc-feature", "read"),
            Characteristic(MEASUREMENT, "csc-measurement", "notify"),
        ),
        produces=tuple(TYPES),
    )

    def gatt_decoder(self, options: Mapping[str, object]) -> CscsDecoder:
        return CscsDecoder(_circumference(options))


DRIVER = CscsDriver()
