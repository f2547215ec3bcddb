"""Bluetooth SIG Pulse Oximeter profile (service 0x1822): spot-check, continuous and features.

What lives here: the pure codecs `decode_spot_check` (0x2A5E), `decode_continuous` (0x2A5F),
`decode_features` (0x2A60), and `DRIVER`. Nothing here talks to a radio. Optional fields follow
in the order of their flag bits; reserved flag bits are ignored, and bytes after the last field
a flag announces are ignored too (later versions of a characteristic append fields).

Status bits of the Measurement Status and Device & Sensor Status fields become booleans named
in gatt_plx_tables.py, all of them whenever the field is present, so "not demo data" can be told
from "the device did not say". Bits 10/11 (demo, test data) must reach the platform: readings
carrying them do not count toward days with data.
"""

from __future__ import annotations

from datetime import datetime

from gateway.drivers import racp
from gateway.drivers.gatt_plx_tables import (
    DEVICE_SENSOR_STATUS,
    MEASUREMENT_STATUS,
    SUPPORTED_FEATURES,
    TYPES,
)
from gateway.sdk import (
    AfterCommit,
    BleMatch,
    BleSession,
    Characteristic,
    ClockStatus,
    DecodeError,
    Float11073,
    GattTableDriver,
    Observation,
    Reading,
    StatusValue,
    StoredRecords,
    date_time_from,
    name_bits,
    sfloat_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.plx"
SPOT_CHECK = uuid16(0x2A5E)
CONTINUOUS = uuid16(0x2A5F)
FEATURES = uuid16(0x2A60)

_CLOCK_NOT_SET = 0x10


def _observation(type_name: str, number: Float11073) -> Observation:
    return TYPES[type_name].observation(number.value, number.absent)


class _Fields:
    """A cursor over one characteristic value: each read checks the length first."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        if not data:
            raise DecodeError("empty characteristic value: no flags")
        self.data = data
        self.offset = 0

    def uint(self, size: int) -> int:
        value = uint_from(self.data, self.offset, size)
        self.offset += size
        return value

    def sfloat(self) -> Float11073:
        value = sfloat_from(self.data, self.offset)
        self.offset += 2
        return value

    def date_time(self) -> datetime | None:
        value = date_time_from(self.data, self.offset)
        self.offset += 7
        return value


def decode_spot_check(data: bytes) -> Reading:
    """PLX Spot-check Measurement (0x2A5E). Raises `DecodeError` for a malformed value."""
    fields = _Fields(data)
    flags = fields.uint(1)
    observations = [
        _observation("spo2", fields.sfloat()),
        _observation("pulse_rate", fields.sfloat()),
    ]
    device_time = fields.date_time() if flags & 0x01 else None
    status: dict[str, StatusValue] = {}
    if flags & 0x02:
        status |= name_bits(fields.uint(2), MEASUREMENT_STATUS)
    if flags & 0x04:
        status |= name_bits(fields.uint(3), DEVICE_SENSOR_STATUS)
    if flags & 0x08:
        observations.append(_observation("perfusion_index", fields.sfloat()))
    clock: ClockStatus = "unknown"
    if flags & _CLOCK_NOT_SET:
        clock = "not-set"
    elif device_time is not None:
        clock = "set"
    return Reading(tuple(observations), bytes(data), status, device_time, clock)


def decode_continuous(data: bytes) -> Reading:
    """PLX Continuous Measurement (0x2A5F). Raises `DecodeError` for a malformed value."""
    fields = _Fields(data)
    flags = fields.uint(1)
    observations = [
        _observation("spo2", fields.sfloat()),
        _observation("pulse_rate", fields.sfloat()),
    ]
    for bit, speed in ((0x01, "fast"), (0x02, "slow")):
        if flags & bit:
            observations.append(_observation(f"spo2_{speed}", fields.sfloat()))
            observations.append(_observation(f"pulse_rate_{speed}", fields.sfloat()))
    status: dict[str, StatusValue] = {}
    if flags & 0x04:
        status |= name_bits(fields.uint(2), MEASUREMENT_STATUS)
    if flags & 0x08:
        status |= name_bits(fields.uint(3), DEVICE_SENSOR_STATUS)
    if flags & 0x10:
        observations.append(_observation("perfusion_index", fields.sfloat()))
    return Reading(tuple(observations), bytes(data), status)


def decode_features(data: bytes) -> Reading:
    """PLX Features (0x2A60): what the oximeter supports, as status only."""
    fields = _Fields(data)
    features = fields.uint(2)
    status: dict[str, StatusValue] = dict(name_bits(features, SUPPORTED_FEATURES))
    if features & 0x01:
        status |= name_bits(fields.uint(2), MEASUREMENT_STATUS, prefix="supports_")
    if features & 0x02:
        status |= name_bits(fields.uint(3), DEVICE_SENSOR_STATUS, prefix="supports_")
    return Reading((), bytes(data), status)


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Pulse Oximeter profile (0x1822): spot-check, continuous, features",
    category="respiratory",
    match=(BleMatch(service_uuid=uuid16(0x1822)),),
    service=uuid16(0x1822),
    characteristics=(
        Characteristic(FEATURES, "plx-features", "read"),
        Characteristic(SPOT_CHECK, "plx-spot-check", "indicate", optional=True),
        Characteristic(CONTINUOUS, "plx-continuous", "notify", optional=True),
    ),
    decoders={
        SPOT_CHECK: decode_spot_check,
        CONTINUOUS: decode_continuous,
        FEATURES: decode_features,
    },
    observation_types=tuple(TYPES.values()),
    continuous=True,
    # Spot-checks kept on the device carry no number: fetched all, new ones told by digest,
    # deleted on the device once every one is committed.
    ble_session=BleSession(
        stored=StoredRecords(
            control=racp.RACP,
            records=SPOT_CHECK,
            position="digest",
            request=racp.report_after,
            cursor=racp.no_position,
            done=racp.transfer_done,
            after_commit=AfterCommit(racp.delete_all(), racp.deleted),
            abort=racp.abort(),
            describe=racp.describe,
        )
    ),
)
