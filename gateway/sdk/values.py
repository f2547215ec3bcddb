"""The SDK's value types: what a driver produces (`Observation`, `Reading`), the observation type
it declares (`ObservationType`) with the table of well-known ones (`OBSERVATION_TYPES`), and the
two errors a driver raises (`DecodeError`, `OptionError`).

Standard library only, no I/O; imported through `gateway.sdk`, never directly by drivers.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

TRACE = 5
"""Log level for raw bytes and health values: they never appear above it."""
logging.addLevelName(TRACE, "TRACE")

ClockStatus = Literal["set", "not-set", "unknown"]
StatusValue = bool | int | float | str
Absent = Literal[
    "not-a-number", "not-at-this-resolution", "positive-infinity", "negative-infinity", "error"
]


class DecodeError(ValueError):
    """Input bytes that the driver cannot turn into a reading. The only exception a decoder
    may raise on bad input."""


class OptionError(ValueError):
    """A device's driver options are wrong. `path` is relative to the device's `options` table."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class ObservationType:
    """An observation type: its fixed name, UCUM unit and standard codes. The well-known ones
    are in `OBSERVATION_TYPES`; a driver declares the ones it produces in
    `DriverInfo.observation_types` (one entry per unit it reports the type in)."""

    name: str
    unit: str
    mdc: int | None = None
    loinc: str | None = None

    def observation(self, value: float | int | None, absent: Absent | None = None) -> Observation:
        """An observation of this type, unit and codes (SDK 1.3)."""
        return Observation(self.name, value, self.unit, self.mdc, self.loinc, absent)

    def in_unit(self, unit: str) -> ObservationType:
        """The same type and codes in another unit the device reports it in, e.g.
        `OBSERVATION_TYPES["speed"].in_unit("km/h")` (SDK 1.3)."""
        return ObservationType(self.name, unit, self.mdc, self.loinc)


@dataclass(frozen=True, slots=True)
class Observation:
    """One measured value. `value` is None exactly when `absent` says why (NaN, NRes, ...)."""

    type: str
    value: float | int | None
    unit: str
    mdc: int | None = None
    loinc: str | None = None
    absent: Absent | None = None

    @classmethod
    def known(
        cls, type_name: str, value: float | int | None, absent: Absent | None = None
    ) -> Observation:
        """An observation of a well-known type, with its unit and codes filled in."""
        return OBSERVATION_TYPES[type_name].observation(value, absent)

    def wire(self) -> dict[str, object]:
        """The JSON shape on the wire: codes only where they exist, `absent` only when set."""
        out: dict[str, object] = {"type": self.type, "value": self.value, "unit": self.unit}
        if self.mdc is not None:
            out["mdc"] = self.mdc
        if self.loinc is not None:
            out["loinc"] = self.loinc
        if self.absent is not None:
            out["absent"] = self.absent
        return out


@dataclass(frozen=True, slots=True)
class Reading:
    """What a driver produces from one frame or record.

    `status` holds the device's status flags decoded to names (`{"finger_out": True}`) and any
    other non-observation values the device reported. `raw` is the bytes it was decoded from.
    """

    observations: tuple[Observation, ...]
    raw: bytes
    status: Mapping[str, StatusValue] = field(default_factory=dict)
    device_time: datetime | None = None
    device_clock: ClockStatus = "unknown"

    def as_dict(self) -> dict[str, object]:
        """The reading as JSON-ready data, flat: `observations` (each in its wire shape),
        `status`, `raw` (base64), `device_time` (RFC 3339 or None) and `device_clock`. This is
        the shape of a fixture's `readings` and of `rtm-gateway decode`'s output. It is not the
        wire payload: there the hub nests the device's time under `time` beside its own and
        adds identity and signature (docs/protocol.md). SDK 1.3; `wire()` is its old name."""
        return {
            "observations": [o.wire() for o in self.observations],
            "status": dict(self.status),
            "raw": base64.b64encode(self.raw).decode("ascii"),
            "device_time": _rfc3339(self.device_time),
            "device_clock": self.device_clock,
        }

    def wire(self) -> dict[str, object]:
        """The name of `as_dict()` before SDK 1.3, kept for drivers' tests written for 1.0-1.2.
        Misnamed: this is not the wire payload's shape. Use `as_dict()`."""
        return self.as_dict()


def _rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # a device's local wall clock: say so by leaving the offset out
        return moment.isoformat(timespec="milliseconds")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# MDC codes of the fitness types: the 11073 Health & Fitness partition (129), where the concept
# matches. Speed is in m/s here (SI); a device reporting km/h declares `.in_unit("km/h")`.
OBSERVATION_TYPES: Mapping[str, ObservationType] = {
    t.name: t
    for t in (
        ObservationType("spo2", "%", 150456, "59408-5"),
        ObservationType("pulse_rate", "/min", 149530, "8867-4"),
        ObservationType("perfusion_index", "%", 150448, None),
        ObservationType("heart_rate", "/min", 147842, "8867-4"),
        ObservationType("respiratory_rate", "/min", 151562, "9279-1"),
        ObservationType("peak_expiratory_flow", "L/min", 152584, "19935-6"),
        ObservationType("fev1", "L", 152586, "20150-9"),
        ObservationType("body_temperature", "Cel", 150364, "8310-5"),
        ObservationType("body_weight", "kg", 188736, "29463-7"),
        ObservationType("steps", "{steps}", None, "55423-8"),
        # Fitness (SDK 1.3): shared by the FTMS, RSCS and CSCS drivers and open to vendors.
        ObservationType("speed", "m/s", 8454254),
        ObservationType("cadence", "/min", 8454255),
        ObservationType("distance", "m", 8454247),
        ObservationType("stride_length", "m", 8454261),
        ObservationType("power", "W", 8454259),
        ObservationType("elapsed_time", "s", 8454269),
    )
}
"""Observation type names are snake_case and fixed once chosen: platforms key on them."""
