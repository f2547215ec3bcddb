"""Bluetooth SIG Heart Rate profile (service 0x180D): measurement and body sensor location.

What lives here: the pure codecs `decode_measurement` (0x2A37) and `decode_body_sensor_location`
(0x2A38) and `DRIVER`. Nothing here talks to a radio. The control point (0x2A39, reset energy
expended) is never written.

RR intervals come one observation each, oldest first, in seconds rounded to the millisecond
(the device counts in 1/1024 s, so a millisecond keeps all it measured).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.sdk import (
    OBSERVATION_TYPES,
    BleMatch,
    Characteristic,
    DecodeError,
    GattTableDriver,
    ObservationType,
    Reading,
    StatusValue,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.hrs"
MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)

HEART_RATE = OBSERVATION_TYPES["heart_rate"]
ENERGY_EXPENDED = ObservationType("energy", "kJ")
RR_INTERVAL = ObservationType("rr_interval", "s")

_SENSOR_CONTACT: Mapping[int, str] = {
    0: "not-supported",
    1: "not-supported",
    2: "not-detected",
    3: "detected",
}
_LOCATIONS: Mapping[int, str] = {
    0: "other",
    1: "chest",
    2: "wrist",
    3: "finger",
    4: "hand",
    5: "ear_lobe",
    6: "foot",
}

# Straps send 0 while they have no skin contact; no wearer has a heart rate of 0.
_NO_HEART_RATE = HEART_RATE.observation(None, absent="error")


def decode_measurement(data: bytes) -> Reading:
    """Heart Rate Measurement (0x2A37). Raises `DecodeError` for a malformed value."""
    flags = uint_from(data, 0, 1)
    size = 2 if flags & 0x01 else 1
    rate = uint_from(data, 1, size)
    offset = 1 + size
    observations = [HEART_RATE.observation(rate) if rate else _NO_HEART_RATE]
    if flags & 0x08:
        observations.append(ENERGY_EXPENDED.observation(uint_from(data, offset, 2)))
        offset += 2
    if flags & 0x10:
        if (len(data) - offset) % 2:
            raise DecodeError(f"RR intervals: {len(data) - offset} bytes is not whole uint16s")
        observations += [
            RR_INTERVAL.observation(round(uint_from(data, at, 2) / 1024, 3))
            for at in range(offset, len(data), 2)
        ]
    status: dict[str, StatusValue] = {"sensor_contact": _SENSOR_CONTACT[flags >> 1 & 0x03]}
    return Reading(tuple(observations), bytes(data), status)


def decode_body_sensor_location(data: bytes) -> Reading:
    """Body Sensor Location (0x2A38): where the sensor sits, as status."""
    code = uint_from(data, 0, 1)
    return Reading((), bytes(data), {"body_sensor_location": _LOCATIONS.get(code, "reserved")})


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Heart Rate profile (0x180D) with energy expended and RR intervals",
    match=(BleMatch(service_uuid=uuid16(0x180D)),),
    service=uuid16(0x180D),
    characteristics=(
        Characteristic(BODY_SENSOR_LOCATION, "hrs-body-sensor-location", "read", optional=True),
        Characteristic(MEASUREMENT, "hrs-measurement", "notify"),
    ),
    decoders={MEASUREMENT: decode_measurement, BODY_SENSOR_LOCATION: decode_body_sensor_location},
    observation_types=(HEART_RATE, ENERGY_EXPENDED, RR_INTERVAL),
    # Not summarised: a strap notifies about once a second, and every notification's RR
    # intervals are distinct beats that a summary would throw away.
    continuous=False,
)
