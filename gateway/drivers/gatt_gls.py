"""Glucose Service (0x1808): the pure decoders and the `gatt.gls` driver.

What lives here: `decode_glucose_measurement` (0x2A18), `decode_measurement_context` (0x2A34),
`decode_glucose_feature` (0x2A51) and `DRIVER`, whose `StoredRecords` declaration says how the
hub fetches stored records through the Record Access Control Point (bytes in
gateway/drivers/racp.py): the records after the highest `sequence_number` stored (a 16-bit
counter that wraps; its oldest record and its count of records tell a restart), a Measurement
Context (decoded in gatt_gls_context.py) kept with its measurement. No I/O.

Glucose Measurement, little-endian, optional fields in this order when their flag is set:

    flags            uint8   bit 0 time offset, bit 1 concentration + type/location,
                             bit 2 units (0 kg/L, 1 mol/L), bit 3 sensor status, bit 4 context
    sequence number  uint16
    base time        Date Time (7 bytes)
    time offset      sint16  minutes; the reading's time is base time + offset
    concentration    SFLOAT
    type/location    uint8   type in the low nibble, sample location in the high nibble
    sensor status    uint16  see `_ANNUNCIATION_BITS`

Units: kg/L is sent as mg/dL and mol/L as mmol/L. The conversion moves the SFLOAT's decimal
exponent (+5 and +3) instead of multiplying floats, so the device's significant digits are kept
exactly: mantissa 80, exponent -5 (kg/L) becomes 80 mg/dL, never 80.00000000000001.

Observation `glucose`: MDC 160184 for capillary whole blood (type 1), 160188 for capillary plasma
(type 2). The other sample types (venous, arterial, undetermined, ISF, control solution) have
their own MDC terms that are not verified, so they are sent without an MDC code;
status `sample_type` says which it was, and a platform should drop `control_solution` readings.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from gateway.drivers import racp
from gateway.drivers.gatt_gls_context import code_name, decode_measurement_context, shifted
from gateway.sdk import (
    BitNames,
    BleMatch,
    BleSession,
    Characteristic,
    DecodeError,
    GattTableDriver,
    Observation,
    ObservationType,
    Reading,
    RecordCount,
    StatusValue,
    StoredRecords,
    bits_reading,
    name_bits,
    sfloat_from,
    sint_from,
    timestamp_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.gls"
GLUCOSE_MEASUREMENT = uuid16(0x2A18)
MEASUREMENT_CONTEXT = uuid16(0x2A34)
GLUCOSE_FEATURE = uuid16(0x2A51)

# Flag bit 2: (UCUM unit, exponent shift from the SI unit on the wire).
_UNITS: Mapping[int, tuple[str, int]] = {0: ("mg/dL", 5), 1: ("mmol/L", 3)}
# The MDC code depends on the sample type (`_GLUCOSE_MDC`): declared without one.
_GLUCOSE_TYPES = tuple(ObservationType("glucose", unit) for unit, _ in _UNITS.values())
SAMPLE_TYPES: Mapping[int, str] = {
    1: "capillary_whole_blood",
    2: "capillary_plasma",
    3: "venous_whole_blood",
    4: "venous_plasma",
    5: "arterial_whole_blood",
    6: "arterial_plasma",
    7: "undetermined_whole_blood",
    8: "undetermined_plasma",
    9: "interstitial_fluid",
    10: "control_solution",
}
_GLUCOSE_MDC: Mapping[int, int] = {1: 160184, 2: 160188}
SAMPLE_LOCATIONS: Mapping[int, str] = {
    1: "finger",
    2: "alternate_site_test",
    3: "earlobe",
    4: "control_solution",
    15: "not_available",
}
_ANNUNCIATION_BITS: BitNames = {
    0: "battery_low",
    1: "sensor_malfunction",
    2: "sample_size_insufficient",
    3: "strip_insertion_error",
    4: "strip_type_incorrect",
    5: "result_too_high",
    6: "result_too_low",
    7: "temperature_too_high",
    8: "temperature_too_low",
    9: "read_interrupted",
    10: "general_device_fault",
    11: "time_fault",
}
_FEATURE_BITS: BitNames = {
    0: "low_battery_detection_supported",
    1: "sensor_malfunction_detection_supported",
    2: "sample_size_detection_supported",
    3: "strip_insertion_error_detection_supported",
    4: "strip_type_error_detection_supported",
    5: "result_high_low_detection_supported",
    6: "temperature_high_low_detection_supported",
    7: "read_interrupt_detection_supported",
    8: "general_device_fault_supported",
    9: "time_fault_supported",
    10: "multiple_bond_supported",
}


def decode_glucose_measurement(data: bytes) -> Reading:
    """Decode a Glucose Measurement (0x2A18) value."""
    flags = uint_from(data, 0, 1)
    status: dict[str, StatusValue] = {
        "sequence_number": uint_from(data, 1, 2),
        "context_follows": bool(flags & 0x10),
    }
    reading_time, clock = timestamp_from(data, 3)
    offset = 10
    if flags & 0x01:
        minutes = sint_from(data, offset, 2)
        if reading_time is not None:
            try:
                reading_time += timedelta(minutes=minutes)
            except OverflowError as exc:
                raise DecodeError(f"time offset {minutes} min leaves the calendar") from exc
        offset += 2
    observations: tuple[Observation, ...] = ()
    if flags & 0x02:
        unit, shift = _UNITS[(flags >> 2) & 0x01]
        concentration = shifted(sfloat_from(data, offset), shift)
        kind = uint_from(data, offset + 2, 1)
        status["sample_type"] = code_name(SAMPLE_TYPES, kind & 0x0F)
        status["sample_location"] = code_name(SAMPLE_LOCATIONS, kind >> 4)
        observations = (
            Observation(
                "glucose",
                concentration.value,
                unit,
                _GLUCOSE_MDC.get(kind & 0x0F),
                None,
                concentration.absent,
            ),
        )
        offset += 3
    if flags & 0x08:
        bits = uint_from(data, offset, 2)
        status.update(name_bits(bits, _ANNUNCIATION_BITS))
        if bits & 0x0800:
            clock = "not-set"
    return Reading(observations, bytes(data), status, reading_time, clock)


def decode_glucose_feature(data: bytes) -> Reading:
    """Decode the Glucose Feature (0x2A51): what the meter detects, into status."""
    return bits_reading(data, 2, _FEATURE_BITS, "Glucose Feature")


DRIVER = GattTableDriver(
    id=DRIVER_ID,
    version="1.0.0",
    description="Bluetooth Glucose (0x1808)",
    match=(BleMatch(service_uuid=uuid16(0x1808)),),
    service=uuid16(0x1808),
    characteristics=(
        Characteristic(GLUCOSE_FEATURE, "glucose-feature", "read"),
        Characteristic(GLUCOSE_MEASUREMENT, "glucose-measurement", "notify"),
        Characteristic(MEASUREMENT_CONTEXT, "glucose-measurement-context", "notify", optional=True),
    ),
    decoders={
        GLUCOSE_MEASUREMENT: decode_glucose_measurement,
        MEASUREMENT_CONTEXT: decode_measurement_context,
        GLUCOSE_FEATURE: decode_glucose_feature,
    },
    observation_types=_GLUCOSE_TYPES,
    ble_session=BleSession(
        stored=StoredRecords(
            control=racp.RACP,
            records=GLUCOSE_MEASUREMENT,
            companions=(MEASUREMENT_CONTEXT,),
            request=racp.report_after,
            cursor=racp.sequence_number,
            done=racp.transfer_done,
            abort=racp.abort(),
            describe=racp.describe,
            position_key="last-record",  # where hubs before SDK 1.3 kept it
            count=RecordCount(racp.report_count(), racp.record_count),
            oldest=racp.report_first(),
            wrap=racp.MAX_SEQUENCE + 1,
        )
    ),
)
