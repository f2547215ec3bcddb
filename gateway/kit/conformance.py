"""The conformance kit: `rtm-gateway driver check ID_OR_MODULE` tells a driver's author whether
the hub will accept the driver and trust what it produces.

What lives here: `check_driver` (find the driver, run every check, return a `Report`), the
fixture runner shared with the hub's own tests (`fixture_problems`), and the checks:

- declaration: a valid `DriverInfo` for this hub's SDK (id, version, SDK version, transport,
  match rules, category, characteristics, observation type names);
- fixtures: every `fixtures/<driver id>/*.json` beside the driver's module decodes to exactly
  the readings it records, fed whole, byte by byte and in random chunks (a driver ships at
  least one);
- units and codes: every observation the fixtures produce has a valid UCUM unit, a snake_case
  type, a 32-bit MDC code and a LOINC code with a good check digit;
- fuzz: random bytes into every decode entry point raise nothing but come back as
  `DecodeError`s, each input within a time bound;
- match rules: none matches everything, and none ties with an installed driver's rule.

It imports drivers' modules, so it is not on the daemon's path; it does no network or device
I/O.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
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
from gateway.kit.ucum import ucum_error
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
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_LOINC = re.compile(r"^([0-9]{1,7})-([0-9])$")
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*([a-z0-9.+-]*)$")


class ConformanceError(Exception):
    """The driver could not be found or imported: nothing to check."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    problems: tuple[str, ...] = ()


@dataclass(slots=True)
class Report:
    driver_id: str
    source: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "driver": self.driver_id,
            "source": self.source,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "ok": c.ok, "detail": c.detail, "problems": list(c.problems)}
                for c in self.checks
            ],
        }

    def render(self) -> str:
        lines = [f"driver check: {self.driver_id} ({self.source})"]
        for check in self.checks:
            lines.append(f"  {'pass' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
            lines += [f"          - {problem}" for problem in check.problems[:20]]
            if len(check.problems) > 20:
                lines.append(f"          ... and {len(check.problems) - 20} more")
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


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
        return _Found(driver, source, _fixtures_beside(type(driver).__module__, target))
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
    report.checks.append(_units(driver, observations))
    report.checks.append(_fuzz(driver, _fuzz_options(driver, cases), fuzz_inputs, seed, time_limit))
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
    for type_name in info.produces:
        if not _SNAKE.match(type_name):
            problems.append(f"observation type {type_name!r} is not snake_case")
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
        readings += [r.wire() for r in result.readings]
        errors += result.errors
    if flush and isinstance(decoder, Flushable):
        result = decoder.flush()
        readings += [r.wire() for r in result.readings]
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
        readings += [r.wire() for r in result.readings]
        errors += result.errors
    if case.get("flush") and isinstance(decoder, Flushable):  # the connection ended
        result = decoder.flush()
        readings += [r.wire() for r in result.readings]
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


def _units(driver: AnyDriver, observations: list[dict[str, Any]]) -> Check:
    problems = set()
    for observation in observations:
        type_name, unit = observation.get("type"), observation.get("unit")
        if not isinstance(type_name, str) or not _SNAKE.match(type_name):
            problems.add(f"observation type {type_name!r} is not snake_case")
        if (reason := ucum_error(unit)) is not None:  # type: ignore[arg-type]
            problems.add(f"{type_name}: unit {unit!r} is not valid UCUM: {reason}")
        mdc = observation.get("mdc")
        if mdc is not None and not (isinstance(mdc, int) and 0 < mdc < 2**32):
            problems.add(f"{type_name}: MDC code {mdc!r} is not a 32-bit code")
        loinc = observation.get("loinc")
        if loinc is not None and not (isinstance(loinc, str) and loinc_ok(loinc)):
            problems.add(f"{type_name}: LOINC code {loinc!r} is malformed or fails its check digit")
        if type_name not in driver.info.produces and driver.info.produces:
            problems.add(f"{type_name} is produced but not declared in `produces`")
    units = sorted({str(o.get("unit")) for o in observations})
    detail = (
        f"{len(observations)} observation(s) from the fixtures, units "
        f"{', '.join(units) or '(none)'}"
    )
    return Check("units and codes", not problems, detail, tuple(sorted(problems)))


def _fuzz_options(driver: AnyDriver, cases: list[Path]) -> Mapping[str, object]:
    """Options to fuzz with: none, unless the driver needs some; then a fixture's."""
    candidates: list[Mapping[str, object]] = [{}]
    for path in cases:
        with contextlib.suppress(ValueError, OSError):
            case = json.loads(path.read_text(encoding="utf-8"))
            if "option_error" not in case and isinstance(case.get("options"), dict):
                candidates.append(case["options"])
    for options in candidates:
        try:
            (driver.decoder if isinstance(driver, Driver) else driver.gatt_decoder)(options)
        except OptionError:
            continue
        return options
    return {}


def _entry_points(
    driver: AnyDriver, options: Mapping[str, object]
) -> Iterator[tuple[str, Callable[[bytes], object]]]:
    """(name, a function of one input) for each way bytes reach the driver."""
    if isinstance(driver, Driver):
        decoder = driver.decoder(options)

        def feed(data: bytes) -> object:
            result = decoder.feed(data)
            if isinstance(decoder, Flushable) and data[:1] == b"\x00":
                return decoder.flush()  # now and then: finish whatever is open
            return result

        yield "feed", feed
        return
    decoder_g = driver.gatt_decoder(options)
    for char in driver.info.characteristics:
        yield f"value({char.name})", partial(_value, decoder_g, char.uuid)
    flush = getattr(decoder_g, "flush", None)
    if callable(flush):
        yield "flush", lambda _data: flush()


def _value(decoder: Any, uuid: str, data: bytes) -> object:
    return decoder.value(uuid, data)


def _fuzz(
    driver: AnyDriver, options: Mapping[str, object], inputs: int, seed: int, time_limit: float
) -> Check:
    try:
        points = list(_entry_points(driver, options))
    except OptionError as exc:
        return Check(
            "fuzz",
            False,
            f"the driver refuses empty options ({exc}) and no fixture "
            "gives options it accepts: add a fixture with options",
        )
    rng = random.Random(seed)  # noqa: S311  # reproducible fuzz, not secrets
    problems: list[str] = []
    slowest = 0.0
    for name, call in points:
        for _ in range(inputs):
            size = rng.choice((0, 1, 2, 3, 4, 5, 8, 13, 20, 32, 64, 200))
            data = bytes(rng.getrandbits(8) for _ in range(size))
            started = time.perf_counter()
            try:
                result = call(data)
            except Exception as exc:  # exactly what the check is for
                problems.append(
                    f"{name} raised {type(exc).__name__}: {exc} on {data.hex() or '(no bytes)'}"
                )
                break
            took = time.perf_counter() - started
            slowest = max(slowest, took)
            if took > time_limit:
                problems.append(
                    f"{name} took {took * 1000:.0f} ms on {len(data)} bytes "
                    f"({data.hex()[:60]}); the limit is {time_limit * 1000:.0f} ms"
                )
                break
            errors = getattr(result, "errors", None)
            if not isinstance(errors, list) or not all(isinstance(e, DecodeError) for e in errors):
                problems.append(
                    f"{name} returned {type(result).__name__} without a list of "
                    f"DecodeErrors on {data.hex()}"
                )
                break
    detail = (
        f"{inputs} random inputs into each of {', '.join(n for n, _ in points)}; "
        f"slowest {slowest * 1000:.2f} ms"
    )
    return Check("fuzz", not problems, detail, tuple(problems))


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
    detail = f"{len(info.match)} rule(s) checked against {len(registry)} installed driver(s)"
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
