"""Running Speed and Cadence Service (RSCS, 0x1814): RSC Measurement and RSC Feature.

What lives here: the pure decoders of both characteristics, the per-connection decoder that
dispatches to them by UUID, and `DRIVER`. No I/O.

RSC Measurement (0x2A53): flags uint8 (bit 0 stride length present, bit 1 total distance
present, bit 2 walking = 0 / running = 1), speed uint16 in 1/256 m/s, cadence uint8 in steps per
minute, then stride length uint16 in 0.01 m and total distance uint32 in 0.1 m. Values are
converted to SI units (m/s, m). Trailing bytes are an error unless a reserved flag bit is set
(then they belong to a field this driver does not know).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.sdk import (
    BleMatch,
    Characteristic,
    DecodeError,
    DriverInfo,
    Observation,
    ObservationType,
    Reading,
    StatusValue,
    TableGattDecoder,
    no_options,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.rscs"

TYPES: Mapping[str, ObservationType] = {
    t.name: t
    for t in (
        ObservationType("speed", "m/s", 8454254),
        ObservationType("cadence", "/min", 8454255),
        ObservationType("stride_length", "m", 8454261),
        ObservationType("distance", "m", 8454247),
    )
}

# (flag bit or None for always present, type, size, resolution, decimals), in wire order.
MEASUREMENT_FIELDS: tuple[tuple[int | None, str, int, float, int], ...] = (
    (None, "speed", 2, 1 / 256, 3),
    (None, "cadence", 1, 1.0, 0),
    (0, "stride_length", 2, 0.01, 2),
    (1, "distance", 4, 0.1, 1),
)
_KNOWN_FLAGS = 0x07


def _observation(type_: str, value: float) -> Observation:
    kind = TYPES[type_]
    return Observation(type_, value, kind.unit, kind.mdc, kind.loinc)


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
        observations.append(_observation(type_, value))
    if offset != len(data) and not flags & ~_KNOWN_FLAGS:
        raise DecodeError(
            f"RSC Measurement: {len(data) - offset} bytes after the fields its "
            f"flags {flags:#04x} announce"
        )
    status: dict[str, StatusValue] = {"gait": "running" if flags & 0x04 else "walking"}
    return Reading(observations=tuple(observations), raw=bytes(data), status=status)


RSC_FEATURES = (
    "stride_length",
    "total_distance",
    "walking_or_running_status",
    "calibration_procedure",
    "multiple_sensor_locations",
)


def decode_feature(data: bytes) -> Reading:
    """RSC Feature (0x2A54): uint16 bit field, as `<name>_supported` status flags."""
    bits = uint_from(data, 0, 2)
    status: dict[str, StatusValue] = {
        f"{name}_supported": bool(bits >> bit & 1) for bit, name in enumerate(RSC_FEATURES)
    }
    return Reading(observations=(), raw=bytes(data), status=status)


CHARACTERISTICS: Mapping[str, Callable[[bytes], Reading]] = {
    uuid16(0x2A53): decode_measurement,
    uuid16(0x2A54): decode_feature,
}


class RscsDriver:
    """Running Speed and Cadence Service."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Bluetooth Running Speed and Cadence Service (foot pods)",
        transport="ble",
        category="musculoskeletal",
        match=(BleMatch(service_uuid=uuid16(0x1814)),),
        service=uuid16(0x1814),
        characteristics=(
            Characteristic(uuid16(0x2A54), "rsc-feature", "read"),
            Characteristic(uuid16(0x2A53), "rsc-measurement", "notify"),
        ),
        produces=tuple(TYPES),
    )

    def gatt_decoder(self, options: Mapping[str, object]) -> TableGattDecoder:
        no_options(DRIVER_ID, options)
        return TableGattDecoder(DRIVER_ID, CHARACTERISTICS)


DRIVER = RscsDriver()
