"""The conformance kit's checks of what a driver says it emits: its declared observation types
(names snake_case, units valid UCUM, `produces` and `observation_types` agreeing) and the
observations its fixtures produce (valid units and codes, every type and unit declared).
Pure; no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from gateway.kit.report import Check
from gateway.kit.ucum import ucum_error
from gateway.sdk import DriverInfo, ObservationType

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_LOINC = re.compile(r"^([0-9]{1,7})-([0-9])$")


def loinc_ok(code: str) -> bool:
    """A LOINC code's form and its mod-10 check digit."""
    match = _LOINC.match(code)
    if not match:
        return False
    digits = [int(d) for d in match[1]]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        # Luhn: every other digit from the right, starting with the rightmost, is doubled.
        doubled = digit * 2 if position % 2 == 0 else digit
        total += doubled // 10 + doubled % 10
    return (10 - total % 10) % 10 == int(match[2])


def declared_type_problems(info: DriverInfo) -> list[str]:
    """What is wrong with the observation types a driver declares."""
    problems = []
    for type_name in info.produces:
        if not SNAKE.match(type_name):
            problems.append(f"observation type {type_name!r} is not snake_case")
    declared: set[str] = set()
    for kind in info.observation_types:
        if not isinstance(kind, ObservationType):
            problems.append(f"{kind!r} in `observation_types` is not a gateway.sdk ObservationType")
            continue
        declared.add(kind.name)
        if not SNAKE.match(kind.name) and kind.name not in info.produces:
            problems.append(f"observation type {kind.name!r} is not snake_case")
        if (reason := ucum_error(kind.unit)) is not None:
            problems.append(f"declared {kind.name}: unit {kind.unit!r} is not valid UCUM: {reason}")
    if info.observation_types and set(info.produces) != declared:
        only = sorted(set(info.produces) - declared)
        problems.append(
            f"`produces` names {', '.join(only) or 'no type'} that `observation_types` does not "
            "declare: give `observation_types` alone (`produces` is filled from it)"
        )
    return problems


def _undeclared(info: DriverInfo, type_name: object, unit: object) -> str | None:
    """Why an observation of this type and unit is not covered by the declaration, or None."""
    if info.observation_types:
        units = [k.unit for k in info.observation_types if k.name == type_name]
        if not units:
            return f"{type_name} is produced but not declared in `observation_types`"
        if unit not in units:
            declared = ", ".join(repr(u) for u in units)
            return (
                f"{type_name} is produced in {unit!r} but declared in {declared} only: declare "
                f"`ObservationType({type_name!r}, {unit!r}, ...)` too, or fix the unit"
            )
        return None
    if info.produces and type_name not in info.produces:
        return f"{type_name} is produced but not declared in `produces`"
    return None


def units_check(info: DriverInfo, observations: Iterable[dict[str, Any]]) -> Check:
    """The "units and codes" check over the observations the fixtures produced."""
    observations = list(observations)
    problems = set()
    for observation in observations:
        type_name, unit = observation.get("type"), observation.get("unit")
        if not isinstance(type_name, str) or not SNAKE.match(type_name):
            problems.add(f"observation type {type_name!r} is not snake_case")
        if (reason := ucum_error(unit)) is not None:  # type: ignore[arg-type]
            problems.add(f"{type_name}: unit {unit!r} is not valid UCUM: {reason}")
        mdc = observation.get("mdc")
        if mdc is not None and not (isinstance(mdc, int) and 0 < mdc < 2**32):
            problems.add(f"{type_name}: MDC code {mdc!r} is not a 32-bit code")
        loinc = observation.get("loinc")
        if loinc is not None and not (isinstance(loinc, str) and loinc_ok(loinc)):
            problems.add(f"{type_name}: LOINC code {loinc!r} is malformed or fails its check digit")
        if (reason := _undeclared(info, type_name, unit)) is not None:
            problems.add(reason)
    units = sorted({str(o.get("unit")) for o in observations})
    detail = (
        f"{len(observations)} observation(s) from the fixtures, units "
        f"{', '.join(units) or '(none)'}"
    )
    return Check("units and codes", not problems, detail, tuple(sorted(problems)))
