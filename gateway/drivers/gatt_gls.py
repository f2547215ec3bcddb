"""Glucose Service (0x1808): the pure decoders and the `gatt.gls` driver.

What lives here: `decode_glucose_measurement` (0x2A18), `decode_measurement_context` (0x2A34),
`decode_glucose_feature` (0x2A51), the per-connection decoder and `DRIVER`, whose
`StoredRecords` declaration says how the hub fetches stored records through the Record Access
Control Point (bytes in gateway/drivers/racp.py): the records after the highest `sequence_number`
stored, a Measurement Context kept with its measurement. No I/O.

Glucose Measurement, little-endian, optional fields in this order when their flag is set:

    flags            uint8   bit 0 time offset, bit 1 concentration + type/location,
                             bit 2 units (0 kg/L, 1 mol/L), bit 3 sensor status, bit 4 context
    sequence number  uint16
    base time        Date Time (7 bytes)
    time offset      sint16  minutes; the reading's time is base time + offset
    concentration    SFLOAT
    type/location    uint8   type in the low nibble, sample location in the high nibble
    sensor status    uint16  see `_ANNUNCIATIONS`

Units: kg/L is sent as mg/dL and mol/L as mmol/L. The conversion moves the SFLOAT's decimal
exponent (+5 and +3) instead of multiplying floats, so the device's significant digits are kept
exactly: mantissa 80, exponent -5 (kg/L) becomes 80 mg/dL, never 80.00000000000001.

Observation `glucose`: MDC 160184 for capillary whole blood (type 1), 160188 for capillary plasma
(type 2). The other sample types (venous, arterial, undetermined, ISF, control solution) have
their own MDC terms that domain.md §3.4 has not verified, so they are sent without an MDC code;
status `sample_type` says which it was, and a platform should drop `control_solution` readings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta

from gateway.drivers import racp
from gateway.sdk import (
    BleMatch,
    BleSession,
    Characteristic,
    DecodeError,
    DriverInfo,
    Float11073,
    Observation,
    Reading,
    StatusValue,
    StoredRecords,
    TableGattDecoder,
    bit_names,
    flags_reading,
    no_options,
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
_ANNUNCIATIONS: tuple[tuple[str, int], ...] = (
    ("battery_low", 0x0001),
    ("sensor_malfunction", 0x0002),
    ("sample_size_insufficient", 0x0004),
    ("strip_insertion_error", 0x0008),
    ("strip_type_incorrect", 0x0010),
    ("result_too_high", 0x0020),
    ("result_too_low", 0x0040),
    ("temperature_too_high", 0x0080),
    ("temperature_too_low", 0x0100),
    ("read_interrupted", 0x0200),
    ("general_device_fault", 0x0400),
    ("time_fault", 0x0800),
)
_FEATURES: tuple[tuple[str, int], ...] = (
    ("low_battery_detection_supported", 0x0001),
    ("sensor_malfunction_detection_supported", 0x0002),
    ("sample_size_detection_supported", 0x0004),
    ("strip_insertion_error_detection_supported", 0x0008),
    ("strip_type_error_detection_supported", 0x0010),
    ("result_high_low_detection_supported", 0x0020),
    ("temperature_high_low_detection_supported", 0x0040),
    ("read_interrupt_detection_supported", 0x0080),
    ("general_device_fault_supported", 0x0100),
    ("time_fault_supported", 0x0200),
    ("multiple_bond_supported", 0x0400),
)

# Measurement Context tables.
CARBOHYDRATES: Mapping[int, str] = {
    1: "breakfast",
    2: "lunch",
    3: "dinner",
    4: "snack",
    5: "drink",
    6: "supper",
    7: "brunch",
}
MEALS: Mapping[int, str] = {
    1: "preprandial",
    2: "postprandial",
    3: "fasting",
    4: "casual",
    5: "bedtime",
}
TESTERS: Mapping[int, str] = {
    1: "self",
    2: "health_care_professional",
    3: "lab_test",
    15: "not_available",
}
HEALTH: Mapping[int, str] = {
    1: "minor_health_issues",
    2: "major_health_issues",
    3: "during_menses",
    4: "under_stress",
    5: "no_health_issues",
    15: "not_available",
}
MEDICATIONS: Mapping[int, str] = {
    1: "rapid_acting_insulin",
    2: "short_acting_insulin",
    3: "intermediate_acting_insulin",
    4: "long_acting_insulin",
    5: "pre_mixed_insulin",
}


def _name(table: Mapping[int, str], code: int) -> str:
    return table.get(code, "reserved")


def _shifted(value: Float11073, shift: int) -> Float11073:
    """The same number in a unit 10**shift times smaller, with the same significant digits."""
    if value.absent is not None:
        return value
    return Float11073(value.mantissa, value.exponent + shift)


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
        concentration = _shifted(sfloat_from(data, offset), shift)
        kind = uint_from(data, offset + 2, 1)
        status["sample_type"] = _name(SAMPLE_TYPES, kind & 0x0F)
        status["sample_location"] = _name(SAMPLE_LOCATIONS, kind >> 4)
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
        status.update(bit_names(bits, _ANNUNCIATIONS))
        if bits & 0x0800:
            clock = "not-set"
    return Reading(observations, bytes(data), status, reading_time, clock)


def _context_amount(
    data: bytes, offset: int, name: str, shift: int, status: dict[str, StatusValue]
) -> None:
    """An SFLOAT amount into status under `name`, scaled by 10**shift; left out if special."""
    value = _shifted(sfloat_from(data, offset), shift).value
    if value is not None:
        status[name] = value


def decode_measurement_context(data: bytes) -> Reading:
    """Decode a Glucose Measurement Context (0x2A34): what the patient reported with a reading
    (meal, tester, health, exercise, medication, HbA1c), all into status. It is matched to its
    measurement by `sequence_number`."""
    flags = uint_from(data, 0, 1)
    status: dict[str, StatusValue] = {"sequence_number": uint_from(data, 1, 2)}
    offset = 3
    if flags & 0x80:  # extended flags: all bits reserved, but the byte is there
        uint_from(data, offset, 1)
        offset += 1
    if flags & 0x01:
        status["carbohydrate"] = _name(CARBOHYDRATES, uint_from(data, offset, 1))
        _context_amount(data, offset + 1, "carbohydrate_g", 3, status)  # kg on the wire
        offset += 3
    if flags & 0x02:
        status["meal"] = _name(MEALS, uint_from(data, offset, 1))
        offset += 1
    if flags & 0x04:
        tester_health = uint_from(data, offset, 1)
        status["tester"] = _name(TESTERS, tester_health & 0x0F)
        status["health"] = _name(HEALTH, tester_health >> 4)
        offset += 1
    if flags & 0x08:
        status["exercise_duration_s"] = uint_from(data, offset, 2)  # 65535: overrun
        status["exercise_intensity_percent"] = uint_from(data, offset + 2, 1)
        offset += 3
    if flags & 0x10:
        status["medication"] = _name(MEDICATIONS, uint_from(data, offset, 1))
        # Flag bit 5: kilograms (sent as mg) or litres (sent as mL).
        name, shift = ("medication_ml", 3) if flags & 0x20 else ("medication_mg", 6)
        _context_amount(data, offset + 1, name, shift, status)
        offset += 3
    if flags & 0x40:
        _context_amount(data, offset, "hba1c_percent", 0, status)
    return Reading((), bytes(data), status)


def decode_glucose_feature(data: bytes) -> Reading:
    """Decode the Glucose Feature (0x2A51): what the meter detects, into status."""
    return flags_reading(data, 2, _FEATURES, "Glucose Feature")


_DECODERS: Mapping[str, Callable[[bytes], Reading]] = {
    GLUCOSE_MEASUREMENT: decode_glucose_measurement,
    MEASUREMENT_CONTEXT: decode_measurement_context,
    GLUCOSE_FEATURE: decode_glucose_feature,
}


class GlsDriver:
    """The Bluetooth SIG Glucose profile: measurements, and stored records through RACP."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Bluetooth Glucose (0x1808)",
        transport="ble",
        match=(BleMatch(service_uuid=uuid16(0x1808)),),
        service=uuid16(0x1808),
        characteristics=(
            Characteristic(GLUCOSE_FEATURE, "glucose-feature", "read"),
            Characteristic(GLUCOSE_MEASUREMENT, "glucose-measurement", "notify"),
            Characteristic(
                MEASUREMENT_CONTEXT, "glucose-measurement-context", "notify", optional=True
            ),
        ),
        produces=("glucose",),
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
            )
        ),
    )

    def gatt_decoder(self, options: Mapping[str, object]) -> TableGattDecoder:
        no_options(DRIVER_ID, options)
        return TableGattDecoder(DRIVER_ID, _DECODERS)


DRIVER = GlsDriver()
