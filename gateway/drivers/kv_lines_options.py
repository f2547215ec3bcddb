"""The options of the `generic.kv-lines` driver: `parse_options` validates a device's `options`
table into `KvOptions`, raising `OptionError` naming the offending path. Pure; no I/O.

    keys      table: device key -> {type = "spo2"} or {type = "grip_force", unit = "kg"}
              (the unit may be left out for the SDK's well-known types, whose unit and MDC /
              LOINC codes are then filled in)
    time_key  optional: the key that carries the device's time, in epoch milliseconds (UTC)
    baudrate  optional int, default 9600 (see `KvLinesDriver.serial_settings`)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.sdk import OBSERVATION_TYPES, Observation, OptionError

DEFAULT_BAUDRATE = 9600

_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*")
_OPTIONS = frozenset({"keys", "time_key", "baudrate"})
_KEY_FIELDS = frozenset({"type", "unit"})


@dataclass(frozen=True, slots=True)
class KeySpec:
    """How one device key becomes an observation."""

    type: str
    unit: str
    mdc: int | None = None
    loinc: str | None = None

    def observation(self, value: float | int) -> Observation:
        return Observation(self.type, value, self.unit, self.mdc, self.loinc)


@dataclass(frozen=True, slots=True)
class KvOptions:
    """Validated options."""

    keys: Mapping[str, KeySpec]
    time_key: str | None = None
    baudrate: int = DEFAULT_BAUDRATE


def parse_options(options: Mapping[str, object]) -> KvOptions:
    """Validate a device's `options` table. Raises `OptionError` naming the offending path."""
    for name in options:
        if name not in _OPTIONS:
            raise OptionError(name, f"unknown option; expected one of {sorted(_OPTIONS)}")
    keys = options.get("keys")
    if not isinstance(keys, Mapping) or not keys:
        raise OptionError("keys", "must be a table of device key -> {type = ..., unit = ...}")
    specs = {str(key): _key_spec(f"keys.{key}", spec) for key, spec in keys.items()}

    time_key = options.get("time_key")
    if time_key is not None and (not isinstance(time_key, str) or not time_key):
        raise OptionError("time_key", 'must be the name of a key, e.g. "t"')
    if time_key in specs:
        raise OptionError("time_key", f"{time_key!r} is also listed in keys; list it once")

    baudrate = options.get("baudrate", DEFAULT_BAUDRATE)
    # bool is an int subclass: `baudrate = true` is a typo, not 1 baud.
    if not isinstance(baudrate, int) or isinstance(baudrate, bool) or not 0 < baudrate <= 4_000_000:
        raise OptionError("baudrate", "must be a whole number of baud, e.g. 9600 or 115200")
    return KvOptions(specs, time_key, baudrate)


def _key_spec(path: str, spec: object) -> KeySpec:
    if not isinstance(spec, Mapping):
        raise OptionError(path, 'must be a table like {type = "spo2"}')
    for name in spec:
        if name not in _KEY_FIELDS:
            raise OptionError(f"{path}.{name}", "unknown field; expected type and unit")
    type_name = spec.get("type")
    if not isinstance(type_name, str) or not _TYPE_NAME.fullmatch(type_name):
        raise OptionError(f"{path}.type", 'must be a snake_case observation type, e.g. "spo2"')
    unit = spec.get("unit")
    if unit is not None and (not isinstance(unit, str) or not unit):
        raise OptionError(f"{path}.unit", 'must be a UCUM unit string, e.g. "kg"')
    known = OBSERVATION_TYPES.get(type_name)
    if known is None:
        if unit is None:
            raise OptionError(
                f"{path}.unit", f"{type_name!r} is not a well-known type: give its UCUM unit"
            )
        return KeySpec(type_name, unit)
    # Platforms key on the type name with its fixed unit; a second unit would mislead them.
    if unit is not None and unit != known.unit:
        raise OptionError(
            f"{path}.unit", f"{type_name!r} is always in {known.unit!r}; leave unit out"
        )
    return KeySpec(type_name, known.unit, known.mdc, known.loinc)
