"""Weight Scale Service (0x181D): the pure decoders and the `gatt.wss` driver.

What lives here: `decode_weight_measurement` (0x2A9D), `decode_weight_scale_feature` (0x2A9E)
and `DRIVER`. No I/O.

Weight Measurement, little-endian, optional fields in this order when their flag is set:

    flags      uint8   bit 0 units (0 SI, 1 imperial), bit 1 time stamp, bit 2 user id,
                       bit 3 BMI and height
    weight     uint16  SI 0.005 kg, imperial 0.01 lb; 0xFFFF = measurement unsuccessful
    time stamp Date Time (7 bytes)
    user id    uint8   255 = unknown user
    BMI        uint16  0.1 kg/m2
    height     uint16  SI 0.001 m, imperial 0.1 in

Values are kept in the device's units, rounded to the decimals of its resolution. The
status carries `user_id` for a known user, or `user_unknown: true` for user 255.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from gateway.sdk import (
    OBSERVATION_TYPES,
    BitNames,
    BleMatch,
    Characteristic,
    ClockStatus,
    DecodeError,
    GattTableDriver,
    Observation,
    ObservationType,
    Reading,
    StatusValue,
    name_bits,
    timestamp_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.wss"
WEIGHT_MEASUREMENT = uuid16(0x2A9D)
WEIGHT_SCALE_FEATURE = uuid16(0x2A9E)

UNSUCCESSFUL = 0xFFFF
UNKNOWN_USER = 255


@dataclass(frozen=True, slots=True)
class _Quantity:
    """How one uint16 field becomes an observation in one unit system."""

    type: ObservationType
    step: float
    decimals: int

    def observation(self, raw: int) -> Observation:
        return self.type.observation(round(raw * self.step, self.decimals))


_WEIGHT = OBSERVATION_TYPES["body_weight"]
_HEIGHT = ObservationType("body_height", "m", 188740, "8302-2")
_BMI = _Quantity(ObservationType("bmi", "kg/m2", 188752, "39156-5"), 0.1, 1)
# Flag bit 0: (weight, height) per unit system.
_UNIT_SYSTEMS: Mapping[int, tuple[_Quantity, _Quantity]] = {
    0: (_Quantity(_WEIGHT, 0.005, 3), _Quantity(_HEIGHT, 0.001, 3)),
    1: (
        _Quantity(_WEIGHT.in_unit("[lb_av]"), 0.01, 2),
        _Quantity(_HEIGHT.in_unit("[in_i]"), 0.1, 1),
    ),
}

# Weight Scale Feature bits 3-6 and 7-9: resolution codes to (SI, imperial) steps.
_WEIGHT_RESOLUTIONS: Mapping[int, tuple[float, float]] = {
    1: (0.5, 1.0),
    2: (0.2, 0.5),
    3: (0.1, 0.2),
    4: (0.05, 0.1),
    5: (0.02, 0.05),
    6: (0.01, 0.02),
    7: (0.005, 0.01),
}
_HEIGHT_RESOLUTIONS: Mapping[int, tuple[float, float]] = {
    1: (0.01, 1.0),
    2: (0.005, 0.5),
    3: (0.001, 0.1),
}
_FEATURE_BITS: BitNames = {
    0: "time_stamp_supported",
    1: "multiple_users_supported",
    2: "bmi_supported",
}


def decode_weight_measurement(data: bytes) -> Reading:
    """Decode a Weight Measurement (0x2A9D) value."""
    flags = uint_from(data, 0, 1)
    weight_type, height_type = _UNIT_SYSTEMS[flags & 0x01]
    raw_weight = uint_from(data, 1, 2)
    offset = 3
    status: dict[str, StatusValue] = {}
    reading_time: datetime | None = None
    clock: ClockStatus = "unknown"
    if flags & 0x02:
        reading_time, clock = timestamp_from(data, offset)
        offset += 7
    if flags & 0x04:
        user = uint_from(data, offset, 1)
        status.update({"user_unknown": True} if user == UNKNOWN_USER else {"user_id": user})
        offset += 1
    if raw_weight == UNSUCCESSFUL:
        weight = weight_type.type.observation(None, "error")
    else:
        weight = weight_type.observation(raw_weight)
    observations = [weight]
    if flags & 0x08:
        observations.append(_BMI.observation(uint_from(data, offset, 2)))
        observations.append(height_type.observation(uint_from(data, offset + 2, 2)))
    return Reading(tuple(observations), bytes(data), status, reading_time, clock)


def decode_weight_scale_feature(data: bytes) -> Reading:
    """Decode the Weight Scale Feature (0x2A9E): what the scale supports, into status."""
    if len(data) != 4:
        raise DecodeError(f"Weight Scale Feature must be 4 bytes, got {len(data)}")
    features = uint_from(data, 0, 4)
    status: dict[str, StatusValue] = dict(name_bits(features, _FEATURE_BITS))
    for name, code, table in (
        ("weight", (features >> 3) & 0x0F, _WEIGHT_RESOLUTIONS),
        ("height", (features >> 7) & 0x07, _HEIGHT_RESOLUTIONS),
    ):
        steps = table.get(code)  # 0 is "not specified"; others are reserved
        if steps is not None:
            status[f"{name}_resolution_si"], status[f"{name}_resolution_imperial"] = steps
    return Reading((), bytes(data), status)


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Weight Scale (0x181D)",
    match=(BleMatch(service_uuid=uuid16(0x181D)),),
    service=uuid16(0x181D),
    characteristics=(
        Characteristic(WEIGHT_SCALE_FEATURE, "weight-scale-feature", "read"),
        Characteristic(WEIGHT_MEASUREMENT, "weight-measurement", "indicate"),
    ),
    decoders={
        WEIGHT_MEASUREMENT: decode_weight_measurement,
        WEIGHT_SCALE_FEATURE: decode_weight_scale_feature,
    },
    observation_types=(
        *(system[0].type for system in _UNIT_SYSTEMS.values()),
        _BMI.type,
        *(system[1].type for system in _UNIT_SYSTEMS.values()),
    ),
)
