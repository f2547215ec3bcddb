"""The Pulse Oximeter profile's tables, for gatt_plx.py: its observation types and the names of
the bits of Measurement Status, Device & Sensor Status and Supported Features. Data only.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.sdk import OBSERVATION_TYPES, BitNames, ObservationType

# Fast and slow averages are the same quantity as the normal one, averaged differently: same
# unit and codes (the PHD IG marks the modality separately, not in the type code).
TYPES: Mapping[str, ObservationType] = {
    t.name: t
    for t in (
        OBSERVATION_TYPES["spo2"],
        OBSERVATION_TYPES["pulse_rate"],
        OBSERVATION_TYPES["perfusion_index"],
        *(
            ObservationType(f"{known.name}_{speed}", known.unit, known.mdc, known.loinc)
            for known in (OBSERVATION_TYPES["spo2"], OBSERVATION_TYPES["pulse_rate"])
            for speed in ("fast", "slow")
        ),
    )
}

MEASUREMENT_STATUS: BitNames = {
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
DEVICE_SENSOR_STATUS: BitNames = {
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
SUPPORTED_FEATURES: BitNames = {
    0: "supports_measurement_status",
    1: "supports_device_sensor_status",
    2: "supports_spot_check_storage",
    3: "supports_spot_check_timestamp",
    4: "supports_spo2pr_fast",
    5: "supports_spo2pr_slow",
    6: "supports_pulse_amplitude_index",
    7: "supports_multiple_bonds",
}
