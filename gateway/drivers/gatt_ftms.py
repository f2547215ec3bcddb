"""Fitness Machine Service (FTMS, 0x1826), read only: the machines' data characteristics, the
feature read, training status and machine status.

What lives here: the per-machine field tables, the one generic record parser they drive, the
per-connection decoder that merges records split over several notifications, and `DRIVER`.
Nothing here writes to the machine: the control point (0x2AD9) is never touched, because
controlling a connected device would take the hub out of the MDDS exemption.

Record layout (all machines): flags (uint16, 24-bit for the cross trainer), then the fields each
flag bit announces, in table order, little-endian. Bit 0 is "More Data" and works the other way
round: the first field group is present when bit 0 is 0.

Split records: a machine may send one record as several notifications, "More Data" = 1 on all
but the last. The decoder keeps the parts per characteristic and emits ONE reading when the last
part arrives; its `raw` is the parts' bytes concatenated in arrival order. If a part brings a
field that the pending parts already hold, the previous record was never completed: the pending
parts are emitted as their own reading with `status["record_complete"] = False` and the new part
starts the next record, so nothing is lost and nothing is counted twice. `flush()` does the same
for parts still pending when the connection ends.

Trailing bytes after the flagged fields are an error (a flag-polarity quirk would otherwise give
wrong numbers silently), unless a reserved flag bit is set: then they belong to a field this
driver does not know and are ignored. Fields whose value is the spec's "data not available"
marker are left out, as if their flag were clear; a heart rate of 0 (no strap) is null with
`absent = "error"`, as in gatt.hrs.

Layouts: domain.md §3.2.2 (the 2017 GATT XML). Resistance level has resolution 1 on the bike
and rower and 0.1 on the cross trainer, as that XML says; check against the current GSS. Treadmill
pace is km/min (uint8, 0.1) as the spec defines it; the rower's pace is seconds per 500 m
(`pace_500m`). Training Status and Machine Status come as status only; Machine Status parameters
stay in `raw`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.sdk import (
    OBSERVATION_TYPES,
    BleMatch,
    Characteristic,
    DecodeError,
    DriverInfo,
    FeedResult,
    Observation,
    ObservationType,
    OptionError,
    Reading,
    StatusValue,
    sint_from,
    uint_from,
    uuid16,
)

DRIVER_ID = "gatt.ftms"

# Observation types: one unit and one set of codes per name. MDC codes from the 11073 H&F
# partition (129) where the concept matches; averages and derived rates have none.
TYPES: Mapping[str, ObservationType] = {
    t.name: t
    for t in (
        OBSERVATION_TYPES["heart_rate"],
        OBSERVATION_TYPES["steps"],
        ObservationType("speed", "km/h", 8454254),
        ObservationType("average_speed", "km/h"),
        ObservationType("cadence", "/min", 8454255),
        ObservationType("average_cadence", "/min"),
        ObservationType("distance", "m", 8454247),
        ObservationType("resistance_level", "1", 8454260),
        ObservationType("power", "W", 8454259),
        ObservationType("average_power", "W"),
        ObservationType("energy", "kcal", 8454263),
        ObservationType("energy_per_hour", "kcal/h"),
        ObservationType("energy_per_minute", "kcal/min"),
        ObservationType("metabolic_equivalent", "{MET}"),
        ObservationType("elapsed_time", "s", 8454269),
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
    size: int
    signed: bool = False
    resolution: float = 1.0
    decimals: int = 0
    unavailable: int | None = None
    """The raw value the spec reserves for "data not available"."""
    zero_is_error: bool = False
    """0 is the machine saying it has no value (heart rate without a strap), never a reading."""

    def observation(self, raw: int) -> Observation:
        kind = TYPES[self.type]
        if self.zero_is_error and raw == 0:
            return Observation(self.type, None, kind.unit, kind.mdc, kind.loinc, "error")
        value: int | float = round(raw * self.resolution, self.decimals) if self.decimals else raw
        return Observation(self.type, value, kind.unit, kind.mdc, kind.loinc)


def _u(
    type_: str,
    size: int = 2,
    resolution: float = 1.0,
    decimals: int = 0,
    unavailable: int | None = None,
) -> Field:
    return Field(type_, size, False, resolution, decimals, unavailable)


def _s(
    type_: str,
    size: int = 2,
    resolution: float = 1.0,
    decimals: int = 0,
    unavailable: int | None = None,
) -> Field:
    return Field(type_, size, True, resolution, decimals, unavailable)


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


_SPEED = (_u("speed", 2, 0.01, 2),)
_AVG_SPEED = (_u("average_speed", 2, 0.01, 2),)
_DISTANCE = (_u("distance", 3),)
_ENERGY = (
    _u("energy", 2, unavailable=0xFFFF),
    _u("energy_per_hour", 2, unavailable=0xFFFF),
    _u("energy_per_minute", 1, unavailable=0xFF),
)
_HR = (Field("heart_rate", 1, zero_is_error=True),)
_MET = (_u("metabolic_equivalent", 1, 0.1, 1),)
_ELAPSED = (_u("elapsed_time"),)
_REMAINING = (_u("remaining_time"),)
_POWER = (_s("power"),)
_AVG_POWER = (_s("average_power"),)
_INCLINE = (_s("inclination", 2, 0.1, 1, 0x7FFF), _s("ramp_angle", 2, 0.1, 1, 0x7FFF))

INDOOR_BIKE = Machine(
    "indoor_bike",
    2,
    (
        (0, _SPEED),
        (1, _AVG_SPEED),
        (2, (_u("cadence", 2, 0.5, 1),)),
        (3, (_u("average_cadence", 2, 0.5, 1),)),
        (4, _DISTANCE),
        (5, (_s("resistance_level"),)),
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
        (4, (_u("elevation_gain", 2, 0.1, 1), _u("elevation_loss", 2, 0.1, 1))),
        (5, (_u("pace", 1, 0.1, 1),)),
        (6, (_u("average_pace", 1, 0.1, 1),)),
        (7, _ENERGY),
        (8, _HR),
        (9, _MET),
        (10, _ELAPSED),
        (11, _REMAINING),
        (12, (_s("force_on_belt"), _s("power"))),
    ),
)
ROWER = Machine(
    "rower",
    2,
    (
        (0, (_u("stroke_rate", 1, 0.5, 1), _u("stroke_count"))),
        (1, (_u("average_stroke_rate", 1, 0.5, 1),)),
        (2, _DISTANCE),
        (3, (_u("pace_500m"),)),
        (4, (_u("average_pace_500m"),)),
        (5, _POWER),
        (6, _AVG_POWER),
        (7, (_s("resistance_level"),)),
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
        (3, (_u("step_rate"), _u("average_step_rate"))),
        (4, (_u("stride_count", 2, 0.1, 1),)),
        (5, (_u("elevation_gain"), _u("elevation_loss"))),
        (6, _INCLINE),
        (7, (_s("resistance_level", 2, 0.1, 1),)),
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
        (0, (_u("floors"), _u("steps"))),
        (1, (_u("step_rate"),)),
        (2, (_u("average_step_rate"),)),
        (3, (_u("elevation_gain"),)),
        (4, _ENERGY),
        (5, _HR),
        (6, _MET),
        (7, _ELAPSED),
        (8, _REMAINING),
    ),
)


@dataclass(frozen=True, slots=True)
class Part:
    """One notification of a machine record."""

    more_data: bool
    observations: tuple[Observation, ...]
    status: Mapping[str, StatusValue]
    raw: bytes


def parse_part(machine: Machine, data: bytes) -> Part:
    """Decode one data notification by the machine's table. Raises only `DecodeError`."""
    flags = uint_from(data, 0, machine.flags_size)
    offset = machine.flags_size
    observations: list[Observation] = []
    for bit, fields in machine.groups:
        # Bit 0 ("More Data") is inverted: the first group is present when it is 0.
        if bool(flags >> bit & 1) == (bit == 0):
            continue
        for field in fields:
            read = sint_from if field.signed else uint_from
            raw = read(data, offset, field.size)
            offset += field.size
            if raw != field.unavailable:
                observations.append(field.observation(raw))
    if offset != len(data) and not flags & ~machine.known_bits:
        raise DecodeError(
            f"FTMS {machine.name} data: {len(data) - offset} bytes after the "
            f"fields its flags {flags:#x} announce"
        )
    status = {name: (on if flags >> bit & 1 else off) for bit, name, off, on in machine.flag_status}
    return Part(bool(flags & 1), tuple(observations), status, bytes(data))


def merge(parts: list[Part], complete: bool) -> Reading:
    status: dict[str, StatusValue] = {}
    for part in parts:
        status.update(part.status)
    if not complete:
        status["record_complete"] = False
    return Reading(
        observations=tuple(o for p in parts for o in p.observations),
        raw=b"".join(p.raw for p in parts),
        status=status,
    )


FITNESS_MACHINE_FEATURES = (
    "average_speed",
    "cadence",
    "total_distance",
    "inclination",
    "elevation_gain",
    "pace",
    "step_count",
    "resistance_level",
    "stride_count",
    "expended_energy",
    "heart_rate_measurement",
    "metabolic_equivalent",
    "elapsed_time",
    "remaining_time",
    "power_measurement",
    "force_on_belt_and_power_output",
    "user_data_retention",
)
TARGET_SETTING_FEATURES = (
    "speed",
    "inclination",
    "resistance",
    "power",
    "heart_rate",
    "expended_energy",
    "steps",
    "strides",
    "distance",
    "training_time",
    "time_in_two_heart_rate_zones",
    "time_in_three_heart_rate_zones",
    "time_in_five_heart_rate_zones",
    "indoor_bike_simulation",
    "wheel_circumference",
    "spin_down_control",
    "cadence",
)


def decode_feature(data: bytes) -> Reading:
    """Fitness Machine Feature (0x2ACC): two uint32 bit fields, as `<name>_supported` and
    `target_<name>_supported` status flags."""
    machine, target = uint_from(data, 0, 4), uint_from(data, 4, 4)
    status: dict[str, StatusValue] = {
        f"{name}_supported": bool(machine >> bit & 1)
        for bit, name in enumerate(FITNESS_MACHINE_FEATURES)
    }
    status.update(
        {
            f"target_{name}_supported": bool(target >> bit & 1)
            for bit, name in enumerate(TARGET_SETTING_FEATURES)
        }
    )
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


CHARACTERISTICS: Mapping[str, Machine | Callable[[bytes], Reading]] = {
    uuid16(0x2AD2): INDOOR_BIKE,
    uuid16(0x2ACD): TREADMILL,
    uuid16(0x2AD1): ROWER,
    uuid16(0x2ACE): CROSS_TRAINER,
    uuid16(0x2ACF): STEP_CLIMBER,
    uuid16(0x2ACC): decode_feature,
    uuid16(0x2AD3): decode_training_status,
    uuid16(0x2ADA): decode_machine_status,
}

# Enough for any real split (a record has at most 16 field groups); a machine that sets
# "More Data" forever must not make the decoder hold its bytes forever.
MAX_PARTS = 16


class FtmsDecoder:
    """One connection's decoder: keeps the pending parts of split records per characteristic."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[str, list[Part]] = {}

    def value(self, uuid: str, data: bytes) -> FeedResult:
        result = FeedResult()
        key = uuid.lower()
        entry = CHARACTERISTICS.get(key)
        if entry is None:
            result.errors.append(DecodeError(f"{DRIVER_ID}: no characteristic {uuid}"))
            return result
        try:
            if isinstance(entry, Machine):
                result.readings.extend(self._record(key, parse_part(entry, data)))
            else:
                result.readings.append(entry(data))
        except DecodeError as exc:
            result.errors.append(exc)
        return result

    def flush(self) -> FeedResult:
        """The connection ended: emit every unfinished record as incomplete."""
        result = FeedResult(readings=[merge(p, complete=False) for p in self._pending.values()])
        self._pending.clear()
        return result

    def _record(self, key: str, part: Part) -> list[Reading]:
        out: list[Reading] = []
        pending = self._pending.pop(key, [])
        held = {o.type for p in pending for o in p.observations}
        if pending and (held & {o.type for o in part.observations} or len(pending) >= MAX_PARTS):
            out.append(merge(pending, complete=False))
            pending = []
        pending.append(part)
        if part.more_data:
            self._pending[key] = pending
        else:
            out.append(merge(pending, complete=True))
        return out


class FtmsDriver:
    """Fitness Machine Service: the machine's data, read only."""

    __slots__ = ()

    info = DriverInfo(
        id=DRIVER_ID,
        version="1.0.0",
        description="Bluetooth Fitness Machine Service (bike, treadmill, rower, cross trainer, "
        "step climber), read only",
        transport="ble",
        category="musculoskeletal",
        match=(BleMatch(service_uuid=uuid16(0x1826)),),
        service=uuid16(0x1826),
        characteristics=(
            Characteristic(uuid16(0x2ACC), "fitness-machine-feature", "read"),
            Characteristic(uuid16(0x2AD2), "indoor-bike-data", "notify", optional=True),
            Characteristic(uuid16(0x2ACD), "treadmill-data", "notify", optional=True),
            Characteristic(uuid16(0x2AD1), "rower-data", "notify", optional=True),
            Characteristic(uuid16(0x2ACE), "cross-trainer-data", "notify", optional=True),
            Characteristic(uuid16(0x2ACF), "step-climber-data", "notify", optional=True),
            Characteristic(uuid16(0x2AD3), "training-status", "notify", optional=True),
            Characteristic(uuid16(0x2ADA), "fitness-machine-status", "notify", optional=True),
        ),
        produces=tuple(TYPES),
    )

    def gatt_decoder(self, options: Mapping[str, object]) -> FtmsDecoder:
        if options:
            raise OptionError(next(iter(options)), f"{DRIVER_ID} takes no options; remove it")
        return FtmsDecoder()


DRIVER = FtmsDriver()
