"""Running Speed and Cadence Service (RSCS, 0x1814): RSC Measurement and RSC Feature.

What lives here: the pure decoders of both characteristics and `DRIVER`. No I/O.

RSC Measurement (0x2A53): flags uint8 (bit 0 stride length present, bit 1 total distance
present, bit 2 walking = 0 / running = 1), speed uint16 in 1/256 m/s, cadence uint8 in steps per
minute, then stride length uint16 in 0.01 m and total distance uint32 in 0.1 m. Values are
converted to SI units (m/s, m). Trailing bytes are an error unless a reserved flag bit is set
(then they belong to a field this driver does not know).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.sdk import (
    OBSERVATION_TYPES,
    BitNames,
    BleMatch,
    Characteristic,
    DecodeError,
    GattTableDriver,
    ObservationType,
    Reading,
    StatusValue,
    name_bits,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.rscs"

MEASUREMENT = uuid16(0x2A53)
FEATURE = uuid16(0x2A54)
TYPES: Mapping[str, ObservationType] = {
    name: OBSERVATION_TYPES[name] for name in ("speed", "cadence", "stride_length", "distance")
}

# (flag bit or None for always present, type, size, resolution, decimals), in wire order.
MEASUREMENT_FIELDS: tuple[tuple[int | None, str, int, float, int], ...] = (
    (None, "speed", 2, 1 / 256, 3),
    (None, "cadence", 1, 1.0, 0),
    (0, "stride_length", 2, 0.01, 2),
    (1, "distance", 4, 0.1, 1),
)
_KNOWN_FLAGS = 0x07


def decode_measurement(data: bytes) -> Reading:
    """RSC Measurement (0x2A53). Raises only `DecodeError`."""
    flags = uint_from(data, 0, 1)
    offset = 1
    observations = []
    for bit, type_, size, resolution, decimals in MEASUREMENT_FIELDS:
        if bit is not None and not flags >> bit & 1:
            continue
        raw = uint_from(data, offset, size)
        offset += size
        value = round(raw * resolution, decimals) if decimals else raw
        observations.append(TYPES[type_].observation(value))
    if offset != len(data) and not flags & ~_KNOWN_FLAGS:
        raise DecodeError(
            f"RSC Measurement: {len(data) - offset} bytes after the fields its "
            f"flags {flags:#04x} announce"
        )
    status: dict[str, StatusValue] = {"gait": "running" if flags & 0x04 else "walking"}
    return Reading(observations=tuple(observations), raw=bytes(data), status=status)


RSC_FEATURES: BitNames = {
    0: "stride_length",
    1: "total_distance",
    2: "walking_or_running_status",
    3: "calibration_procedure",
    4: "multiple_sensor_locations",
}


def decode_feature(data: bytes) -> Reading:
    """RSC Feature (0x2A54): uint16 bit field, as `<name>_supported` status flags."""
    status = name_bits(uint_from(data, 0, 2), RSC_FEATURES, suffix="_supported")
    return Reading(observations=(), raw=bytes(data), status=status)


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Running Speed and Cadence Service (foot pods)",
    category="musculoskeletal",
    match=(BleMatch(service_uuid=uuid16(0x1814)),),
    service=uuid16(0x1814),
    characteristics=(
        Characteristic(FEATURE, "rsc-feature", "read"),
        Characteristic(MEASUREMENT, "rsc-measurement", "notify"),
    ),
    decoders={MEASUREMENT: decode_measurement, FEATURE: decode_feature},
    observation_types=tuple(TYPES.values()),
)
