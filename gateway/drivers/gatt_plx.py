"""Bluetooth SIG Pulse Oximeter profile (service 0x1822): spot-check, continuous and features.

What lives here: the pure codecs `decode_spot_check` (0x2A5E), `decode_continuous` (0x2A5F) and
`decode_features` (0x2A60), the per-connection `PlxDecoder` and the `DRIVER` object. Nothing
here talks to a radio. Layouts: domain.md §3.2.1. Optional fields follow in the order of their
flag bits; reserved flag bits are ignored, and bytes after the last field a flag announces are
ignored too (later versions of a characteristic append fields).

Status bits of the Measurement Status and Device & Sensor Status fields become booleans named
in the tables below, all of them whenever the field is present, so "not demo data" can be told
from "the device did not say". Bits 10/11 (demo, test data) must reach the platform: readings
carrying them do not count toward days with data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from gateway.drivers import racp
from gateway.sdk import (
    OBSERVATION_TYPES,
    AfterCommit,
    BleMatch,
    BleSession,
    Characteristic,
    ClockStatus,
    DecodeError,
    DriverInfo,
    Float11073,
    Observation,
    ObservationType,
    Reading,
    StatusValue,
    StoredRecords,
    TableGattDecoder,
    date_time_from,
    no_options,
    sfloat_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.plx"
SPOT_CHECK = uuid16(0x2A5E)
CONTINUOUS = uuid16(0x2A5F)
FEATURES = uuid16(0x2A60)

# Fast and slow averages are the same quantity as the normal one, averaged differently: same
# unit and codes (the PHD IG marks the modality separately, not in the type code).
_NEW_TYPES: Mapping[str, ObservationType] = {
    f"{base}_{speed}": ObservationType(f"{base}_{speed}", known.unit, known.mdc, known.loinc)
    for base, known in (
        ("spo2", OBSERVATION_TYPES["spo2"]),
        ("pulse_rate", OBSERVATION_TYPES["pulse_rate"]),
    )
    for speed in ("fast", "slow")
}

MEASUREMENT_STATUS: Mapping[int, str] = {
    5: "measurement_ongoing",
    6: "early_estimated_data",
    7: "validated_data",
    8: "fully_qualified_data",
    9: "data_from_storage",
    10: "demo_data",
    11: "test_data",
    12: "calibration_ongoing",
    13: "measurement_unavailable",
    14: "questionable_measurement",
    15: "invalid_measurement",
}
DEVICE_SENSOR_STATUS: Mapping[int, str] = {
    0: "extended_display_update_ongoing",
    1: "equipment_malfunction",
    2: "signal_processing_irregularity",
    3: "inadequate_signal",
    4: "poor_signal",
    5: "low_perfusion",
    6: "erratic_signal",
    7: "non_pulsatile_signal",
    8: "questionable_pulse",
    9: "signal_analysis_ongoing",
    10: "sensor_interference",
    11: "sensor_unconnected_to_user",
    12: "unknown_sensor_connected",
    13: "sensor_displaced",
    14: "sensor_malfunctioning",
    15: "sensor_disconnected",
}
SUPPORTED_FEATURES: Mapping[int, str] = {
    0: "supports_measurement_status",
    1: "supports_device_sensor_status",
    2: "supports_spot_check_storage",
    3: "supports_spot_check_timestamp",
    4: "supports_spo2pr_fast",
    5: "supports_spo2pr_slow",
    6: "supports_pulse_amplitude_index",
    7: "supports_multiple_bonds",
}

_CLOCK_NOT_SET = 0x10


def _observation(type_name: str, number: Float11073) -> Observation:
    known = OBSERVATION_TYPES.get(type_name) or _NEW_TYPES[type_name]
    return Observation(type_name, number.value, known.unit, known.mdc, known.loinc, number.absent)


def _bits(value: int, names: Mapping[int, str], prefix: str = "") -> dict[str, StatusValue]:
    return {prefix + name: bool(value >> bit & 1) for bit, name in names.items()}


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
        status |= _bits(fields.uint(2), MEASUREMENT_STATUS)
    if flags & 0x04:
        status |= _bits(fields.uint(3), DEVICE_SENSOR_STATUS)
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
        status |= _bits(fields.uint(2), MEASUREMENT_STATUS)
    if flags & 0x08:
        status |= _bits(fields.uint(3), DEVICE_SENSOR_STATUS)
    if flags & 0x10:
        observations.append(_observation("perfusion_index", fields.sfloat()))
    return Reading(tuple(observations), bytes(data), status)


def decode_features(data: bytes) -> Reading:
    """PLX Features (0x2A60): what the oximeter supports, as status only."""
    fields = _Fields(data)
    features = fields.uint(2)
    status = _bits(features, SUPPORTED_FEATURES)
    if features & 0x01:
        status |= _bits(fields.uint(2), MEASUREMENT_STATUS, "supports_")
    if features & 0x02:
        status |= _bits(fields.uint(3), DEVICE_SENSOR_STATUS, "supports_")
    return Reading((), bytes(data), status)


_DECODERS: Mapping[str, Callable[[bytes], Reading]] = {
    SPOT_CHECK: decode_spot_check,
    CONTINUOUS: decode_continuous,
    FEATURES: decode_features,
}


class PlxDriver:
    """The Bluetooth SIG Pulse Oximeter profile driver."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Bluetooth Pulse Oximeter profile (0x1822): spot-check, continuous, features",
        transport="ble",
        category="respiratory",
        match=(BleMatch(service_uuid=uuid16(0x1822)),),
        service=uuid16(0x1822),
        characteristics=(
            Characteristic(FEATURES, "plx-features", "read"),
            Characteristic(SPOT_CHECK, "plx-spot-check", "indicate", optional=True),
            Characteristic(CONTINUOUS, "plx-continuous", "notify", optional=True),
        ),
        produces=("spo2", "pulse_rate", "perfusion_index", *_NEW_TYPES),
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

    def gatt_decoder(self, options: Mapping[str, object]) -> TableGattDecoder:
        no_options(DRIVER_ID, options)
        return TableGattDecoder(DRIVER_ID, _DECODERS)


DRIVER = PlxDriver()
