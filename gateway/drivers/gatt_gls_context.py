"""Glucose Measurement Context (0x2A34) of the Glucose Service: what the patient reported with a
reading (meal, tester, health, exercise, medication, HbA1c), all into status, and the two
helpers the measurement decoder in gatt_gls.py shares with it (`code_name`, `shifted`). No I/O.

Context, little-endian, optional fields in this order when their flag is set: sequence number
(always), extended flags (bit 7), carbohydrate id + SFLOAT kg (bit 0), meal (bit 1),
tester/health nibbles (bit 2), exercise duration uint16 s + intensity uint8 % (bit 3),
medication id + SFLOAT kg or L (bits 4 and 5), HbA1c SFLOAT % (bit 6).
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.sdk import Float11073, Reading, StatusValue, sfloat_from, uint_from

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


def code_name(table: Mapping[int, str], code: int) -> str:
    """The name of a code in one of the profile's tables; "reserved" for one it does not list."""
    return table.get(code, "reserved")


def shifted(value: Float11073, shift: int) -> Float11073:
    """The same number in a unit 10**shift times smaller, with the same significant digits."""
    if value.absent is not None:
        return value
    return Float11073(value.mantissa, value.exponent + shift)


def _context_amount(
    data: bytes, offset: int, name: str, shift: int, status: dict[str, StatusValue]
) -> None:
    """An SFLOAT amount into status under `name`, scaled by 10**shift; left out if special."""
    value = shifted(sfloat_from(data, offset), shift).value
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
        status["carbohydrate"] = code_name(CARBOHYDRATES, uint_from(data, offset, 1))
        _context_amount(data, offset + 1, "carbohydrate_g", 3, status)  # kg on the wire
        offset += 3
    if flags & 0x02:
        status["meal"] = code_name(MEALS, uint_from(data, offset, 1))
        offset += 1
    if flags & 0x04:
        tester_health = uint_from(data, offset, 1)
        status["tester"] = code_name(TESTERS, tester_health & 0x0F)
        status["health"] = code_name(HEALTH, tester_health >> 4)
        offset += 1
    if flags & 0x08:
        status["exercise_duration_s"] = uint_from(data, offset, 2)  # 65535: overrun
        status["exercise_intensity_percent"] = uint_from(data, offset + 2, 1)
        offset += 3
    if flags & 0x10:
        status["medication"] = code_name(MEDICATIONS, uint_from(data, offset, 1))
        # Flag bit 5: kilograms (sent as mg) or litres (sent as mL).
        name, shift = ("medication_ml", 3) if flags & 0x20 else ("medication_mg", 6)
        _context_amount(data, offset + 1, name, shift, status)
        offset += 3
    if flags & 0x40:
        _context_amount(data, offset, "hba1c_percent", 0, status)
    return Reading((), bytes(data), status)
