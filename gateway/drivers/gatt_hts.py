"""Health Thermometer Service (0x1809): the pure decoders and the `gatt.hts` driver.

What lives here: `decode_temperature_measurement` (0x2A1C, and 0x2A1E which has the same
layout), `decode_temperature_type` (0x2A1D) and `DRIVER`. No I/O.

Temperature Measurement, little-endian, optional fields in this order when their flag is set:

    flags      uint8   bit 0 unit (0 °C, 1 °F), bit 1 time stamp, bit 2 temperature type
    value      FLOAT   32-bit IEEE 11073
    time stamp Date Time (7 bytes)
    type       uint8   where the body the temperature was taken (see `TEMPERATURE_TYPES`)

The unit the device sent is kept (°F is not converted): converting would invent precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from gateway.sdk import (
    OBSERVATION_TYPES,
    BleMatch,
    Characteristic,
    ClockStatus,
    DecodeError,
    GattTableDriver,
    Reading,
    StatusValue,
    float_from,
    timestamp_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.hts"
TEMPERATURE_MEASUREMENT = uuid16(0x2A1C)
TEMPERATURE_TYPE = uuid16(0x2A1D)
INTERMEDIATE_TEMPERATURE = uuid16(0x2A1E)

# Flag bit 0 picks the unit.
_TYPES = {
    bit: OBSERVATION_TYPES["body_temperature"].in_unit(unit)
    for bit, unit in ((0, "Cel"), (1, "[degF]"))
}

TEMPERATURE_TYPES: Mapping[int, str] = {
    1: "armpit",
    2: "body",
    3: "ear",
    4: "finger",
    5: "gastrointestinal_tract",
    6: "mouth",
    7: "rectum",
    8: "toe",
    9: "tympanum",
}


def _temperature_type(code: int) -> str:
    return TEMPERATURE_TYPES.get(code, "reserved")


def _measurement(data: bytes, *, intermediate: bool) -> Reading:
    flags = uint_from(data, 0, 1)
    temperature = float_from(data, 1)
    offset = 5
    status: dict[str, StatusValue] = {"intermediate": intermediate}
    reading_time: datetime | None = None
    clock: ClockStatus = "unknown"
    if flags & 0x02:
        reading_time, clock = timestamp_from(data, offset)
        offset += 7
    if flags & 0x04:
        status["temperature_type"] = _temperature_type(uint_from(data, offset, 1))
    observation = _TYPES[flags & 0x01].observation(temperature.value, temperature.absent)
    return Reading((observation,), bytes(data), status, reading_time, clock)


def decode_temperature_measurement(data: bytes) -> Reading:
    """Decode a Temperature Measurement (0x2A1C) value."""
    return _measurement(data, intermediate=False)


def decode_intermediate_temperature(data: bytes) -> Reading:
    """Decode an Intermediate Temperature (0x2A1E): a value still settling, marked as such."""
    return _measurement(data, intermediate=True)


def decode_temperature_type(data: bytes) -> Reading:
    """Decode the Temperature Type (0x2A1D) the device reports for all its measurements."""
    if len(data) != 1:
        raise DecodeError(f"Temperature Type must be 1 byte, got {len(data)}")
    return Reading((), bytes(data), {"temperature_type": _temperature_type(data[0])})


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Health Thermometer (0x1809)",
    match=(BleMatch(service_uuid=uuid16(0x1809)),),
    service=uuid16(0x1809),
    characteristics=(
        Characteristic(TEMPERATURE_TYPE, "temperature-type", "read", optional=True),
        Characteristic(TEMPERATURE_MEASUREMENT, "temperature-measurement", "indicate"),
        Characteristic(
            INTERMEDIATE_TEMPERATURE, "intermediate-temperature", "notify", optional=True
        ),
    ),
    decoders={
        TEMPERATURE_MEASUREMENT: decode_temperature_measurement,
        INTERMEDIATE_TEMPERATURE: decode_intermediate_temperature,
        TEMPERATURE_TYPE: decode_temperature_type,
    },
    observation_types=tuple(_TYPES.values()),
)
