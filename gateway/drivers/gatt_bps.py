"""Blood Pressure Service (0x1810): the pure decoders and the `gatt.bps` driver.

What lives here: `decode_blood_pressure_measurement` (0x2A35), `decode_intermediate_cuff_pressure`
(0x2A36, same layout), `decode_blood_pressure_feature` (0x2A49) and `DRIVER`. No I/O.

Blood Pressure Measurement, little-endian, optional fields in this order when their flag is set:

    flags       uint8      bit 0 units (0 mmHg, 1 kPa), bit 1 time stamp, bit 2 pulse rate,
                           bit 3 user id, bit 4 measurement status
    sys/dia/MAP 3 x SFLOAT
    time stamp  Date Time (7 bytes)
    pulse rate  SFLOAT     beats per minute
    user id     uint8      255 = unknown user
    status      uint16     see `_STATUS_BITS` and `PULSE_RATE_RANGES`

Pressures keep the device's unit. The pulse rate is the well-known `pulse_rate` type (same name,
unit and LOINC as an oximeter's) with the cuff's MDC code, MDC_PULS_RATE_NON_INV (149546), so
a platform keys on one name and can still tell the method. In Intermediate Cuff Pressure the
systolic field carries the current cuff pressure (`cuff_pressure`); diastolic and MAP are NaN
there and are not reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from gateway.sdk import (
    BitNames,
    BleMatch,
    Characteristic,
    ClockStatus,
    GattTableDriver,
    ObservationType,
    Reading,
    StatusValue,
    bits_reading,
    name_bits,
    sfloat_from,
    timestamp_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.bps"
BLOOD_PRESSURE_MEASUREMENT = uuid16(0x2A35)
INTERMEDIATE_CUFF_PRESSURE = uuid16(0x2A36)
BLOOD_PRESSURE_FEATURE = uuid16(0x2A49)

UNKNOWN_USER = 255
_UNITS: Mapping[int, str] = {0: "mm[Hg]", 1: "kPa"}
# The three pressure fields, in their order in the value, in mmHg; `in_unit` gives kPa.
_PRESSURES: tuple[ObservationType, ...] = (
    ObservationType("blood_pressure_systolic", "mm[Hg]", 150021, "8480-6"),
    ObservationType("blood_pressure_diastolic", "mm[Hg]", 150022, "8462-4"),
    ObservationType("blood_pressure_mean", "mm[Hg]", 150023, "8478-0"),
)
# No MDC code for the cuff pressure is verified, so none is sent.
_CUFF_PRESSURE = ObservationType("cuff_pressure", "mm[Hg]")
_PULSE_RATE = ObservationType("pulse_rate", "/min", 149546, "8867-4")

_STATUS_BITS: BitNames = {
    0: "body_movement",
    1: "cuff_too_loose",
    2: "irregular_pulse",
    5: "improper_position",
}
PULSE_RATE_RANGES: Mapping[int, str] = {
    0: "within_range",
    1: "above_upper_limit",
    2: "below_lower_limit",
    3: "reserved",
}
_FEATURE_BITS: BitNames = {
    0: "body_movement_detection_supported",
    1: "cuff_fit_detection_supported",
    2: "irregular_pulse_detection_supported",
    3: "pulse_rate_range_detection_supported",
    4: "position_detection_supported",
    5: "multiple_bonds_supported",
}


def _decode(data: bytes, *, intermediate: bool) -> Reading:
    flags = uint_from(data, 0, 1)
    unit = _UNITS[flags & 0x01]
    pressures = [sfloat_from(data, offset) for offset in (1, 3, 5)]
    offset = 7
    status: dict[str, StatusValue] = {"intermediate": intermediate}
    reading_time: datetime | None = None
    clock: ClockStatus = "unknown"
    if flags & 0x02:
        reading_time, clock = timestamp_from(data, offset)
        offset += 7
    kinds = (_CUFF_PRESSURE,) if intermediate else _PRESSURES
    observations = [
        kind.in_unit(unit).observation(value.value, value.absent)
        for value, kind in zip(pressures, kinds, strict=False)
    ]
    if flags & 0x04:
        pulse = sfloat_from(data, offset)
        observations.append(_PULSE_RATE.observation(pulse.value, pulse.absent))
        offset += 2
    if flags & 0x08:
        user = uint_from(data, offset, 1)
        status.update({"user_unknown": True} if user == UNKNOWN_USER else {"user_id": user})
        offset += 1
    if flags & 0x10:
        bits = uint_from(data, offset, 2)
        status.update(name_bits(bits, _STATUS_BITS))
        status["pulse_rate_range"] = PULSE_RATE_RANGES[(bits >> 3) & 0x03]
    return Reading(tuple(observations), bytes(data), status, reading_time, clock)


def decode_blood_pressure_measurement(data: bytes) -> Reading:
    """Decode a Blood Pressure Measurement (0x2A35) value."""
    return _decode(data, intermediate=False)


def decode_intermediate_cuff_pressure(data: bytes) -> Reading:
    """Decode an Intermediate Cuff Pressure (0x2A36) value: the cuff inflating or deflating."""
    return _decode(data, intermediate=True)


def decode_blood_pressure_feature(data: bytes) -> Reading:
    """Decode the Blood Pressure Feature (0x2A49): what the monitor detects, into status."""
    return bits_reading(data, 2, _FEATURE_BITS, "Blood Pressure Feature")


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Blood Pressure (0x1810)",
    match=(BleMatch(service_uuid=uuid16(0x1810)),),
    service=uuid16(0x1810),
    characteristics=(
        Characteristic(BLOOD_PRESSURE_FEATURE, "blood-pressure-feature", "read"),
        Characteristic(BLOOD_PRESSURE_MEASUREMENT, "blood-pressure-measurement", "indicate"),
        Characteristic(
            INTERMEDIATE_CUFF_PRESSURE, "intermediate-cuff-pressure", "notify", optional=True
        ),
    ),
    decoders={
        BLOOD_PRESSURE_MEASUREMENT: decode_blood_pressure_measurement,
        INTERMEDIATE_CUFF_PRESSURE: decode_intermediate_cuff_pressure,
        BLOOD_PRESSURE_FEATURE: decode_blood_pressure_feature,
    },
    observation_types=(
        *(kind.in_unit(unit) for kind in _PRESSURES for unit in _UNITS.values()),
        _PULSE_RATE,
        *(_CUFF_PRESSURE.in_unit(unit) for unit in _UNITS.values()),
    ),
)
