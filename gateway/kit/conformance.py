"""The conformance kit: `rtm-gateway driver check ID_OR_MODULE` tells a driver's author whether
the hub will accept the driver and trust what it produces.

What lives here: `check_driver` (find the driver, run every check, return a `Report`), the
fixture runner shared with the hub's own tests (`fixture_problems`), and the declaration,
fixtures and match-rule checks; the units-and-codes check is in observations.py, the fuzz in
fuzz.py, `Check` and `Report` in report.py. The checks:

- declaration: a valid `DriverInfo` for this hub's SDK (id, version, SDK version, transport,
  match rules, category, characteristics, observation types: names and UCUM units);
- fixtures: every `fixtures/<driver id>/*.json` beside the driver's module decodes to exactly
  the readings it records, fed whole, byte by byte and in random chunks (a driver ships at
  least one);
- units and codes: every observation the fixtures produce has a valid UCUM unit, a snake_case
  type, a 32-bit MDC code and a LOINC code with a good check digit, and a type and unit the
  driver declares (`observation_types`, or the names in `produces`);
- fuzz: random bytes into every decode entry point raise nothing but come back as
  `DecodeError`s, each input within a bound of CPU time;
- match rules: none matches everything, and none ties with a built-in driver's rule (other
  vendor packages are not imported to compare: a hub loads only the ones it allows).

It imports drivers' modules, so it is not on the daemon's path; it does no network or device
I/O.
"""

from __future__ import annotations

import importlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from gateway.drivers import serial_settings_for
from gateway.hub.registry import (
    AmbiguousMatchError,
    AnyDriver,
    InvalidDriverError,
    Registry,
    characteristic_uuid,
    validate_driver,
)
from gateway.kit.fuzz import fuzz_check, fuzz_options
from gateway.kit.observations import declared_type_problems, units_check
from gateway.kit.report import Check, Report
from gateway.sdk import (
    SDK_VERSION,
    BleMatch,
    Category,
    DecodeError,
    Driver,
    Flushable,
    GattDriver,
    OptionError,
    UsbMatch,
    parse_hex,
)

BUILTIN_FIXTURES = Path(__file__).parent.parent / "drivers" / "fixtures"
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)$")


class ConformanceError(Exception):
    """The driver could not be found or imported: nothing to check."""


# --- finding the driver ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    driver: object
    source: str
    fixtures: Path | None


def _find(target: str, registry: Registry) -> _Found:
    if target in registry:
        driver = registry.get(target)
        source = registry.source(target)
        if source == "builtin":
            return _Found(driver, source, BUILTIN_FIXTURES / target)
        return _Found(driver, source, _fixtures_beside(_defining_module(driver), target))
    module_name, _, attribute = target.partition(":")
    if not re.fullmatch(r"[A-Za-z_][\w.]*", module_name):
        raise ConformanceError(
            f"{target!r} is neither an installed driver id "
            "(rtm-gateway drivers lists them) nor a module name"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a driver module may fail to import in any way
        raise ConformanceError(
            f"no installed driver {target!r}, and importing module "
            f"{module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    candidate: object = getattr(module, attribute or "DRIVER", None)
    if candidate is None:
        raise ConformanceError(f"module {module_name!r} has no {attribute or 'DRIVER'!r}")
    info = getattr(candidate, "info", None)
    driver_id = getattr(info, "id", "")
    return _Found(
        candidate,
        f"module {module_name}",
        _fixtures_beside(module_name, driver_id if isinstance(driver_id, str) else ""),
    )


def _defining_module(driver: object) -> str:
    """The module a plugin's entry point names for `driver`: its fixtures sit beside it. (The
    driver's class may live elsewhere: an SDK `GattTableDriver` is declared in the vendor's
    module but its class is the SDK's.)"""
    from importlib.metadata import entry_points

    info = getattr(driver, "info", None)
    # Only the entry point named by the driver's id: the others stay unimported.
    for entry_point in entry_points(group="rtm_gateway.drivers", name=getattr(info, "id", "")):
        try:
            loaded = entry_point.load()
        except Exception:  # noqa: S112 - a broken plugin is another driver's problem here
            continue
        if loaded is driver:
            return entry_point.module
    return type(driver).__module__


def _fixtures_beside(module_name: str, driver_id: str) -> Path | None:
    module = importlib.import_module(module_name)
    file = getattr(module, "__file__", None)
    if not file or not driver_id:
        return None
    return Path(file).parent / "fixtures" / driver_id


# --- the checks --------------------------------------------------------------------------------


def check_driver(
    target: str,
    *,
    registry: Registry | None = None,
    fuzz_inputs: int = 3000,
    seed: int = 0,
    time_limit: float = 0.05,
) -> Report:
    """Run every check on the driver named by id (installed) or module (`pkg.mod[:ATTR]`)."""
    registry = registry or Registry.load()
    found = _find(target, registry)
    info = getattr(found.driver, "info", None)
    driver_id = getattr(info, "id", target)
    report = Report(driver_id if isinstance(driver_id, str) else target, found.source)
    try:
        driver: AnyDriver = validate_driver(found.driver)
    except Exception as exc:  # a broken declaration may raise anything
        reason = (
            str(exc) if isinstance(exc, InvalidDriverError) else (f"{type(exc).__name__}: {exc}")
        )
        report.checks.append(Check("declaration", False, reason))
        return report
    report.checks.append(_declaration(driver))
    cases = sorted(found.fixtures.glob("*.json")) if found.fixtures else []
    fixtures_check, observations = _fixtures(driver, cases, found.fixtures)
    report.checks.append(fixtures_check)
    report.checks.append(units_check(driver.info, observations))
    options = fuzz_options(driver, cases)
    report.checks.append(fuzz_check(driver, options, fuzz_inputs, seed, time_limit))
    if driver.info.id not in registry or registry.get(driver.info.id) is not driver:
        # Checked before installing (or against an older installed copy): as if this one
        # were the installed one.
        registry.include(driver, found.source, replace=True)
    report.checks.append(_match_rules(driver, registry))
    return report


def _declaration(driver: AnyDriver) -> Check:
    info = driver.info
    problems = []
    if not _VERSION.match(str(info.version)):
        problems.append(f"version {info.version!r} is not like 1.2.0")
    if not info.description.strip():
        problems.append("the description is empty: say what device it reads")
    if info.category not in get_args(Category):
        problems.append(f"category {info.category!r} is not one of {get_args(Category)}")
    problems += declared_type_problems(info)
    if isinstance(driver, GattDriver) and not isinstance(driver, Driver):
        if not info.service:
            problems.append("a Bluetooth LE driver must name its primary service")
        for uuid in (info.service or "", *(char.uuid for char in info.characteristics)):
            try:
                characteristic_uuid(uuid)
            except DecodeError as exc:
                problems.append(str(exc))
            if uuid != uuid.lower():
                problems.append(
                    f"UUID {uuid} must be written in lower case, as BlueZ and "
                    "`rtm-gateway decode --char` give them"
                )
    detail = (
        f"{info.transport} driver {info.id} {info.version}, category {info.category}, "
        f"SDK {info.sdk_version[0]}.{info.sdk_version[1]} (hub has "
        f"{SDK_VERSION[0]}.{SDK_VERSION[1]})"
    )
    return Check("declaration", not problems, detail, tuple(problems))


def fixture_problems(
    driver: AnyDriver, case: Mapping[str, Any], *, seed: str = ""
) -> tuple[list[str], list[dict[str, Any]]]:
    """Run one fixture case. Returns (what is wrong, the observations it produced)."""
    options = case.get("options", {})
    if "option_error" in case:
        try:
            (driver.decoder if isinstance(driver, Driver) else driver.gatt_decoder)(options)
        except OptionError as exc:
            if exc.path != case["option_error"]:
                return [f"options refused at {exc.path!r}, expected {case['option_error']!r}"], []
            return [], []
        return [
            f"options {options} were accepted; expected a refusal at {case['option_error']!r}"
        ], []
    if isinstance(driver, Driver):
        return _serial_case(driver, options, case, seed)
    return _gatt_case(driver, options, case)


def _compare(
    got: list[dict[str, Any]], errors: Sequence[object], case: Mapping[str, Any], how: str
) -> list[str]:
    problems = []
    expected = case.get("readings", [])
    if got != expected:
        index = next(
            (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
            min(len(got), len(expected)),
        )
        mine = json.dumps(got[index])[:300] if index < len(got) else "(none)"
        theirs = json.dumps(expected[index])[:300] if index < len(expected) else "(none)"
        problems.append(
            f"{how}: {len(got)} reading(s), the fixture has {len(expected)}; "
            f"reading {index} differs: got {mine}, expected {theirs}"
        )
    if len(errors) != case.get("errors", 0):
        problems.append(
            f"{how}: {len(errors)} decode errors, expected "
            f"{case.get('errors', 0)}: {[str(e) for e in errors][:3]}"
        )
    if any(not isinstance(e, DecodeError) for e in errors):
        problems.append(f"{how}: an error in the result is not a DecodeError")
    return problems


def _serial_case(
    driver: Driver, options: Mapping[str, object], case: Mapping[str, Any], seed: str
) -> tuple[list[str], list[dict[str, Any]]]:
    problems = []
    if "serial" in case and serial_settings_for(driver, options).describe() != case["serial"]:
        problems.append(
            f"serial settings {serial_settings_for(driver, options).describe()!r}, "
            f"expected {case['serial']!r}"
        )
    data = parse_hex(case["hex"])
    flush = bool(case.get("flush", False))
    got, errors = _feed(driver, options, [data], flush=flush)
    problems += _compare(got, errors, case, "fed whole")
    rng = random.Random(seed)  # noqa: S311  # reproducible splits, not secrets
    for how, chunks in [
        ("byte by byte", [data[i : i + 1] for i in range(len(data))]),
        *((f"in random chunks ({n})", _chunks(data, rng)) for n in range(5)),
    ]:
        again, again_errors = _feed(driver, options, chunks, flush=flush)
        problems += _compare(again, again_errors, case, how)
    return problems, [o for r in got for o in r.get("observations", [])]


def _feed(
    driver: Driver, options: Mapping[str, object], chunks: Sequence[bytes], *, flush: bool
) -> tuple[list[dict[str, Any]], list[object]]:
    decoder = driver.decoder(options)
    readings: list[object] = []
    errors: list[object] = []
    for chunk in chunks:
        result = decoder.feed(chunk)
        readings += [r.as_dict() for r in result.readings]
        errors += result.errors
    if flush and isinstance(decoder, Flushable):
        result = decoder.flush()
        readings += [r.as_dict() for r in result.readings]
        errors += result.errors
    return json.loads(json.dumps(readings)), errors  # as the platform will see them


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    chunks, start = [], 0
    while start < len(data):
        size = rng.randint(1, 7)
        chunks.append(data[start : start + size])
        start += size
    return chunks


def _gatt_case(
    driver: GattDriver, options: Mapping[str, object], case: Mapping[str, Any]
) -> tuple[list[str], list[dict[str, Any]]]:
    decoder = driver.gatt_decoder(options)
    readings: list[object] = []
    errors: list[object] = []
    for value in case["values"]:
        result = decoder.value(characteristic_uuid(value["char"]), parse_hex(value["hex"]))
        readings += [r.as_dict() for r in result.readings]
        errors += result.errors
    if case.get("flush") and isinstance(decoder, Flushable):  # the connection ended
        result = decoder.flush()
        readings += [r.as_dict() for r in result.readings]
        errors += result.errors
    got = json.loads(json.dumps(readings))
    return _compare(got, errors, case, "values in order"), [
        o for r in got for o in r.get("observations", [])
    ]


def _fixtures(
    driver: AnyDriver, cases: list[Path], where: Path | None
) -> tuple[Check, list[dict[str, Any]]]:
    if not cases:
        return Check(
            "fixtures",
            False,
            f"no fixtures in {where or 'the driver package'}: a "
            "driver ships recorded bytes with the readings they must give "
            "(fixtures/<driver id>/*.json beside the driver module)",
        ), []
    problems: list[str] = []
    observations: list[dict[str, Any]] = []
    for path in cases:
        try:
            case = json.loads(path.read_text(encoding="utf-8"))
            found, seen = fixture_problems(driver, case, seed=path.name)
        except Exception as exc:  # a malformed fixture or a driver that raises: report it
            found, seen = [f"{type(exc).__name__}: {exc}"], []
        problems += [f"{path.name}: {problem}" for problem in found]
        observations += seen
    failing = len({problem.split(":")[0] for problem in problems})
    detail = f"{len(cases)} fixture(s), {len(cases) - failing} pass"
    return Check("fixtures", not problems, detail, tuple(problems)), observations


def _match_rules(driver: AnyDriver, registry: Registry) -> Check:
    info = driver.info
    problems = []
    if not info.match:
        detail = "no match rules: devices are named by driver in the configuration"
        return Check("match rules", True, detail)
    for rule in info.match:
        if isinstance(rule, BleMatch):
            if rule == BleMatch():
                problems.append("a BLE rule with no field matches every device")
                continue
            winner = _ble_winner(registry, rule)
        elif isinstance(rule, UsbMatch):
            winner = _usb_winner(registry, rule)
        else:
            continue
        if winner != info.id:
            problems.append(f"{rule.describe()}: {winner}")
    detail = (
        f"{len(info.match)} rule(s) checked against the built-in drivers ({len(registry)} loaded)"
    )
    return Check("match rules", not problems, detail, tuple(problems))


def _ble_winner(registry: Registry, rule: BleMatch) -> str:
    name = None
    if rule.local_name is not None:
        # A name the rule accepts: the pattern's literal prefix is enough for a plain pattern.
        name = re.sub(r"[\\^$.*+?()\[\]{}|].*", "", rule.local_name) or None
    try:
        winner = registry.match_ble(
            service_uuids=[rule.service_uuid] if rule.service_uuid else [],
            manufacturer_data=(
                {rule.manufacturer_id: rule.data_prefix}
                if rule.manufacturer_id is not None
                else None
            ),
            local_name=name,
            connectable=rule.connectable,
        )
    except AmbiguousMatchError as exc:
        return f"ties with {', '.join(exc.driver_ids)}: make the rule more specific"
    if winner is None:
        return "a device advertising exactly this would match no driver"
    return winner.info.id if isinstance(winner.info.id, str) else "?"


def _usb_winner(registry: Registry, rule: UsbMatch) -> str:
    try:
        winner = registry.match_usb(rule.vid, rule.pid, rule.product)
    except AmbiguousMatchError as exc:
        return f"ties with {', '.join(exc.driver_ids)}: name the product string"
    return winner.info.id if winner is not None else "matches no driver"
