"""Cycling Speed and Cadence Service (CSCS, 0x1816): CSC Measurement and CSC Feature.

What lives here: the pure measurement and feature parsers, the per-connection `Counters` that turn
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
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.sdk import (
    OBSERVATION_TYPES,
    BitNames,
    BleMatch,
    Characteristic,
    DecodeError,
    GattTableDriver,
    Observation,
    ObservationType,
    OptionError,
    Reading,
    TableGattDecoder,
    name_bits,
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
        OBSERVATION_TYPES["cadence"],
        OBSERVATION_TYPES["speed"],
        OBSERVATION_TYPES["distance"],
    )
}
_KNOWN_FLAGS = 0x03
_TIME_MODULUS = 1 << 16


@dataclass(frozen=True, slots=True)
class Event:
    """A cumulative revolution count and the time of its last event (1/1024 s, rolls over)."""

    revolutions: int
    time: int


def parse_measurement(data: bytes) -> tuple[Event | None, Event | None]:
    """CSC Measurement (0x2A5B) without any state: (wheel, crank). Raises only `DecodeError`."""
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
    return wheel, crank


def revolution_rate(previous: Event | None, now: Event, modulus: int) -> float | None:
    """Revolutions per minute between two events, or None when there is no rate to give."""
    if previous is None:
        return None
    ticks = (now.time - previous.time) % _TIME_MODULUS
    revolutions = (now.revolutions - previous.revolutions) % modulus
    if ticks == 0 or revolutions >= modulus // 2:
        return None
    return round(revolutions * 60 * 1024 / ticks, 1)


CSC_FEATURES: BitNames = {
    0: "wheel_revolution_data",
    1: "crank_revolution_data",
    2: "multiple_sensor_locations",
}


def decode_feature(data: bytes) -> Reading:
    """CSC Feature (0x2A5C): uint16 bit field, as `<name>_supported` status flags."""
    status = name_bits(uint_from(data, 0, 2), CSC_FEATURES, suffix="_supported")
    return Reading(observations=(), raw=bytes(data), status=status)


MEASUREMENT = uuid16(0x2A5B)
FEATURE = uuid16(0x2A5C)


class Counters:
    """One connection's state: the previous wheel and crank events, for the deltas."""

    __slots__ = ("_circumference", "_crank", "_wheel")

    def __init__(self, circumference: float | None) -> None:
        self._circumference = circumference
        self._wheel: Event | None = None
        self._crank: Event | None = None

    def measurement(self, data: bytes) -> Reading:
        """A CSC Measurement, with rates from the previous one of this connection."""
        wheel, crank = parse_measurement(data)
        observations: list[Observation] = []
        if wheel is not None:
            rate = revolution_rate(self._wheel, wheel, 1 << 32)
            self._wheel = wheel
            observations.append(TYPES["wheel_revolutions"].observation(wheel.revolutions))
            if rate is not None:
                observations.append(TYPES["wheel_revolution_rate"].observation(rate))
            if self._circumference is not None:
                observations.append(
                    TYPES["distance"].observation(round(wheel.revolutions * self._circumference, 2))
                )
                if rate is not None:
                    observations.append(
                        TYPES["speed"].observation(round(rate / 60 * self._circumference, 2))
                    )
        if crank is not None:
            rate = revolution_rate(self._crank, crank, 1 << 16)
            self._crank = crank
            observations.append(TYPES["crank_revolutions"].observation(crank.revolutions))
            if rate is not None:
                observations.append(TYPES["cadence"].observation(rate))
        return Reading(observations=tuple(observations), raw=bytes(data))


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


def _decoder(options: Mapping[str, object]) -> TableGattDecoder:
    """One connection's decoder: the measurement through its own `Counters`."""
    counters = Counters(_circumference(options))
    return TableGattDecoder(DRIVER_ID, {MEASUREMENT: counters.measurement, FEATURE: decode_feature})


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Cycling Speed and Cadence Service (wheel and crank sensors)",
    category="musculoskeletal",
    match=(BleMatch(service_uuid=uuid16(0x1816)),),
    service=uuid16(0x1816),
    characteristics=(
        Characteristic(FEATURE, "csc-feature", "read"),
        Characteristic(MEASUREMENT, "csc-measurement", "notify"),
    ),
    decoder_factory=_decoder,
    observation_types=tuple(TYPES.values()),
)
