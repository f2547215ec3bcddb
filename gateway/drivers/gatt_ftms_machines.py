"""The Fitness Machine Service's data tables, for gatt_ftms.py: the observation types and one
`Machine` per data characteristic (flag size, and the `Field`s each flag bit announces, in
order). Resistance level has resolution 1 on bike and rower and 0.1 on the cross trainer (the
2017 GATT XML); treadmill pace is km/min (uint8, 0.1), the rower's seconds per 500 m.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.sdk import OBSERVATION_TYPES, Observation, ObservationType, StatusValue

# One unit and one set of codes per name; averages and derived rates have no MDC code.
TYPES: Mapping[str, ObservationType] = {
    t.name: t
    for t in (
        OBSERVATION_TYPES["heart_rate"],
        OBSERVATION_TYPES["steps"],
        OBSERVATION_TYPES["speed"].in_unit("km/h"),
        ObservationType("average_speed", "km/h"),
        OBSERVATION_TYPES["cadence"],
        ObservationType("average_cadence", "/min"),
        OBSERVATION_TYPES["distance"],
        ObservationType("resistance_level", "1", 8454260),
        OBSERVATION_TYPES["power"],
        ObservationType("average_power", "W"),
        ObservationType("energy", "kcal", 8454263),
        ObservationType("energy_per_hour", "kcal/h"),
        ObservationType("energy_per_minute", "kcal/min"),
        ObservationType("metabolic_equivalent", "{MET}"),
        OBSERVATION_TYPES["elapsed_time"],
        ObservationType("remaining_time", "s"),
        ObservationType("inclination", "%"),
        ObservationType("ramp_angle", "deg"),
        ObservationType("elevation_gain", "m"),
        ObservationType("elevation_loss", "m"),
        ObservationType("pace", "km/min"),
        ObservationType("average_pace", "km/min"),
        ObservationType("pace_500m", "s"),
        ObservationType("average_pace_500m", "s"),
        ObservationType("stroke_rate", "/min"),
        ObservationType("average_stroke_rate", "/min"),
        ObservationType("stroke_count", "{strokes}"),
        ObservationType("step_rate", "/min"),
        ObservationType("average_step_rate", "/min"),
        ObservationType("floors", "{floors}"),
        ObservationType("stride_count", "{strides}"),
        ObservationType("force_on_belt", "N"),
    )
}


@dataclass(frozen=True, slots=True)
class Field:
    """One field of a machine record: its observation type, size, sign and resolution."""

    type: str
    size: int = 2
    resolution: float = 1.0
    decimals: int = 0
    unavailable: int | None = None
    """The raw value the spec reserves for "data not available"."""
    signed: bool = False
    zero_is_error: bool = False
    """0 is the machine saying it has no value (heart rate without a strap), never a reading."""

    def observation(self, raw: int) -> Observation:
        kind = TYPES[self.type]
        if self.zero_is_error and raw == 0:
            return kind.observation(None, "error")
        value: int | float = round(raw * self.resolution, self.decimals) if self.decimals else raw
        return kind.observation(value)


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine's data characteristic: flag size and the (flag bit, fields) groups in order."""

    name: str
    flags_size: int
    groups: tuple[tuple[int, tuple[Field, ...]], ...]
    flag_status: tuple[tuple[int, str, StatusValue, StatusValue], ...] = ()
    """(bit, status name, value when clear, value when set): flags that carry no field."""

    @property
    def known_bits(self) -> int:
        bits = [bit for bit, _ in self.groups] + [bit for bit, *_ in self.flag_status]
        return sum(1 << bit for bit in set(bits))


_SPEED = (Field("speed", 2, 0.01, 2),)
_AVG_SPEED = (Field("average_speed", 2, 0.01, 2),)
_DISTANCE = (Field("distance", 3),)
_ENERGY = (
    Field("energy", 2, unavailable=0xFFFF),
    Field("energy_per_hour", 2, unavailable=0xFFFF),
    Field("energy_per_minute", 1, unavailable=0xFF),
)
_HR = (Field("heart_rate", 1, zero_is_error=True),)
_MET = (Field("metabolic_equivalent", 1, 0.1, 1),)
_ELAPSED = (Field("elapsed_time"),)
_REMAINING = (Field("remaining_time"),)
_POWER, _AVG_POWER = ((Field(t, signed=True),) for t in ("power", "average_power"))
_INCLINE = tuple(Field(t, 2, 0.1, 1, 0x7FFF, signed=True) for t in ("inclination", "ramp_angle"))

INDOOR_BIKE = Machine(
    "indoor_bike",
    2,
    (
        (0, _SPEED),
        (1, _AVG_SPEED),
        (2, (Field("cadence", 2, 0.5, 1),)),
        (3, (Field("average_cadence", 2, 0.5, 1),)),
        (4, _DISTANCE),
        (5, (Field("resistance_level", signed=True),)),
        (6, _POWER),
        (7, _AVG_POWER),
        (8, _ENERGY),
        (9, _HR),
        (10, _MET),
        (11, _ELAPSED),
        (12, _REMAINING),
    ),
)
TREADMILL = Machine(
    "treadmill",
    2,
    (
        (0, _SPEED),
        (1, _AVG_SPEED),
        (2, _DISTANCE),
        (3, _INCLINE),
        (4, (Field("elevation_gain", 2, 0.1, 1), Field("elevation_loss", 2, 0.1, 1))),
        (5, (Field("pace", 1, 0.1, 1),)),
        (6, (Field("average_pace", 1, 0.1, 1),)),
        (7, _ENERGY),
        (8, _HR),
        (9, _MET),
        (10, _ELAPSED),
        (11, _REMAINING),
        (12, (Field("force_on_belt", signed=True), Field("power", signed=True))),
    ),
)
ROWER = Machine(
    "rower",
    2,
    (
        (0, (Field("stroke_rate", 1, 0.5, 1), Field("stroke_count"))),
        (1, (Field("average_stroke_rate", 1, 0.5, 1),)),
        (2, _DISTANCE),
        (3, (Field("pace_500m"),)),
        (4, (Field("average_pace_500m"),)),
        (5, _POWER),
        (6, _AVG_POWER),
        (7, (Field("resistance_level", signed=True),)),
        (8, _ENERGY),
        (9, _HR),
        (10, _MET),
        (11, _ELAPSED),
        (12, _REMAINING),
    ),
)
CROSS_TRAINER = Machine(
    "cross_trainer",
    3,
    (
        (0, _SPEED),
        (1, _AVG_SPEED),
        (2, _DISTANCE),
        (3, (Field("step_rate"), Field("average_step_rate"))),
        (4, (Field("stride_count", 2, 0.1, 1),)),
        (5, (Field("elevation_gain"), Field("elevation_loss"))),
        (6, _INCLINE),
        (7, (Field("resistance_level", 2, 0.1, 1, signed=True),)),
        (8, _POWER),
        (9, _AVG_POWER),
        (10, _ENERGY),
        (11, _HR),
        (12, _MET),
        (13, _ELAPSED),
        (14, _REMAINING),
    ),
    flag_status=((15, "movement_direction", "forward", "backward"),),
)
STEP_CLIMBER = Machine(
    "step_climber",
    2,
    (
        (0, (Field("floors"), Field("steps"))),
        (1, (Field("step_rate"),)),
        (2, (Field("average_step_rate"),)),
        (3, (Field("elevation_gain"),)),
        (4, _ENERGY),
        (5, _HR),
        (6, _MET),
        (7, _ELAPSED),
        (8, _REMAINING),
    ),
)
