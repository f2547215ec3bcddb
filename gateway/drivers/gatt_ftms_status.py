"""The Fitness Machine Service's status characteristics, for gatt_ftms.py: Fitness Machine
Feature (0x2ACC), Training Status (0x2AD3) and Fitness Machine Status (0x2ADA), each decoded to
status only, and their name tables. Pure; no I/O. Machine Status parameters stay in `raw`.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.sdk import BitNames, Reading, StatusValue, name_bits, uint_from

FITNESS_MACHINE_FEATURES: BitNames = {
    0: "average_speed",
    1: "cadence",
    2: "total_distance",
    3: "inclination",
    4: "elevation_gain",
    5: "pace",
    6: "step_count",
    7: "resistance_level",
    8: "stride_count",
    9: "expended_energy",
    10: "heart_rate_measurement",
    11: "metabolic_equivalent",
    12: "elapsed_time",
    13: "remaining_time",
    14: "power_measurement",
    15: "force_on_belt_and_power_output",
    16: "user_data_retention",
}
TARGET_SETTING_FEATURES: BitNames = {
    0: "speed",
    1: "inclination",
    2: "resistance",
    3: "power",
    4: "heart_rate",
    5: "expended_energy",
    6: "steps",
    7: "strides",
    8: "distance",
    9: "training_time",
    10: "time_in_two_heart_rate_zones",
    11: "time_in_three_heart_rate_zones",
    12: "time_in_five_heart_rate_zones",
    13: "indoor_bike_simulation",
    14: "wheel_circumference",
    15: "spin_down_control",
    16: "cadence",
}


def decode_feature(data: bytes) -> Reading:
    """Fitness Machine Feature (0x2ACC): two uint32 bit fields, as `<name>_supported` and
    `target_<name>_supported` status flags."""
    machine, target = uint_from(data, 0, 4), uint_from(data, 4, 4)
    status = name_bits(machine, FITNESS_MACHINE_FEATURES, suffix="_supported")
    status |= name_bits(target, TARGET_SETTING_FEATURES, prefix="target_", suffix="_supported")
    return Reading(observations=(), raw=bytes(data), status=status)


TRAINING_STATUS = (
    "other",
    "idle",
    "warming_up",
    "low_intensity_interval",
    "high_intensity_interval",
    "recovery_interval",
    "isometric",
    "heart_rate_control",
    "fitness_test",
    "speed_outside_control_region_low",
    "speed_outside_control_region_high",
    "cool_down",
    "watt_control",
    "manual_mode",
    "pre_workout",
    "post_workout",
)


def decode_training_status(data: bytes) -> Reading:
    """Training Status (0x2AD3): flags uint8, status uint8, then an optional UTF-8 string."""
    flags, code = uint_from(data, 0, 1), uint_from(data, 1, 1)
    status: dict[str, StatusValue] = {
        "training_status": TRAINING_STATUS[code]
        if code < len(TRAINING_STATUS)
        else f"reserved_{code:#04x}"
    }
    if flags & 0x01 and len(data) > 2:
        status["training_status_text"] = data[2:].decode("utf-8", errors="replace")
    return Reading(observations=(), raw=bytes(data), status=status)


MACHINE_STATUS: Mapping[int, str] = {
    0x01: "reset",
    0x02: "stopped_or_paused_by_user",
    0x03: "stopped_by_safety_key",
    0x04: "started_or_resumed_by_user",
    0x05: "target_speed_changed",
    0x06: "target_incline_changed",
    0x07: "target_resistance_level_changed",
    0x08: "target_power_changed",
    0x09: "target_heart_rate_changed",
    0x0A: "targeted_expended_energy_changed",
    0x0B: "targeted_number_of_steps_changed",
    0x0C: "targeted_number_of_strides_changed",
    0x0D: "targeted_distance_changed",
    0x0E: "targeted_training_time_changed",
    0x0F: "targeted_time_in_two_heart_rate_zones_changed",
    0x10: "targeted_time_in_three_heart_rate_zones_changed",
    0x11: "targeted_time_in_five_heart_rate_zones_changed",
    0x12: "indoor_bike_simulation_parameters_changed",
    0x13: "wheel_circumference_changed",
    0x14: "spin_down_status",
    0x15: "targeted_cadence_changed",
    0xFF: "control_permission_lost",
}


def decode_machine_status(data: bytes) -> Reading:
    """Machine Status (0x2ADA): the op code's name. Its parameters stay in `raw`."""
    code = uint_from(data, 0, 1)
    name = MACHINE_STATUS.get(code, f"reserved_{code:#04x}")
    return Reading(observations=(), raw=bytes(data), status={"machine_status": name})
