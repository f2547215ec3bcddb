"""Health Thermometer Service (0x1809): the pure decoders and the `gatt.hts` driver.

What lives here: `decode_temperature_measurement` (0x2A1C, and 0x2A1E which has the same
layout), `decode_temperature_type` (0x2A1D), the per-connection decoder and `DRIVER`. No I/O.

Temperature Measurement, little-endian, optional fields in this order when their flag is set:

    flags      uint8   bit 0 unit (0 °C, 1 °F), bit 1 time stamp, bit 2 temperature type
    value      FLOAT   32-bit IEEE 11073
    time stamp Date Time (7 bytes)
    type       uint8   where the body the temperature was taken (see `TEMPERATURE_TYPES`)

The unit the device sent is kept (°F is not converted): converting would invent precision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from gateway.sdk import (
    BleMatch,
    Characteristic,
    ClockStatus,
    DecodeError,
    DriverInfo,
    Observation,
    Reading,
    StatusValue,
    TableGattDecoder,
    float_from,
    no_options,
    timestamp_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.hts"
TEMPERATURE_MEASUREMENT = uuid16(0x2A1C)
TEMPERATURE_TYPE = uuid16(0x2A1D)
INTERMEDIATE_TEMPERATURE = uuid16(0x2A1E)

# Flag bit 0 picks the UCUM unit.
_UNITS: Mapping[int, str] = {0: "Cel", 1: "[degF]"}
_MDC_TEMP_BODY = 150364
_LOINC_BODY_TEMPERATURE = "8310-5"

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
    observation = Observation(
        "body_temperature",
        temperature.value,
        _UNITS[flags & 0x01],
        _MDC_TEMP_BODY,
        _LOINC_BODY_TEMPERATURE,
        temperature.absent,
    )
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


_DECODERS: Mapping[str, Callable[[bytes], Reading]] = {
    TEMPERATURE_MEASUREMENT: decode_temperature_measurement,
    INTERMEDIATE_TEMPERATURE: decode_intermediate_temperature,
    TEMPERATURE_TYPE: decode_temperature_type,
}


class HtsDriver:
    """The Bluetooth SIG Health Thermometer profile."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Bluetooth Health Thermometer (0x1809)",
        transport="ble",
        match=(BleMatch(service_uuid=uuid16(0x1809)),),
        service=uuid16(0x1809),
        characteristics=(
            Characteristic(TEMPERATURE_TYPE, "temperature-type", "read", optional=True),
            Characteristic(TEMPERATURE_MEASUREMENT, "temperature-measurement", "indicate"),
            Characteristic(
                INTERMEDIATE_TEMPERATURE, "intermediate-temperature", "notify", optional=True
            ),
        ),
        produces=("body_temperature",),
    )

    def gatt_decoder(self, options: Mapping[str, object]) -> TableGattDecoder:
        no_options(DRIVER_ID, options)
        return TableGattDecoder(DRIVER_ID, _DECODERS)


DRIVER = HtsDriver()
