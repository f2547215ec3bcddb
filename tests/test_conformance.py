"""The conformance kit (`rtm-gateway driver check`): it passes every built-in driver and catches
each kind of broken one, written here as small vendor packages on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.hub.registry import Registry
from gateway.kit.conformance import check_driver
from gateway.kit.observations import loinc_ok
from gateway.kit.report import Check
from gateway.kit.ucum import ucum_error
from gateway.sdk import (
    SDK_VERSION,
    BleSession,
    GattDriver,
    GattTableDriver,
    GattWrite,
    OptionError,
)
from tests.harness import ROOT, run_cli

REGISTRY = Registry(entry_points=())

GOOD_DRIVER = """
from collections.abc import Mapping

from gateway.sdk import (BleMatch, Characteristic, DecodeError, DriverInfo, FeedResult,
                         Observation, Reading, no_options)

SERVICE = "7a1f0000-0000-4000-8000-00000000abcd"
DATA = "7a1f0001-0000-4000-8000-00000000abcd"


class Decoder:
    def value(self, uuid: str, data: bytes) -> FeedResult:
        if len(data) != 2:
            return FeedResult(errors=[DecodeError(f"expected 2 bytes, got {{len(data)}}")])
        {body}
        return FeedResult(readings=[Reading((Observation("{type}", value, "{unit}"),), data)])


class Driver:
    info = DriverInfo("acme.{name}", "1.0.0", "a test device", "ble",
                      match=(BleMatch(service_uuid={rule}),), service=SERVICE,
                      characteristics=(Characteristic(DATA, "data", "notify"),),
                      produces=("{type}",), sdk_version=(1, 2), category="musculoskeletal")

    def gatt_decoder(self, options: Mapping[str, object]) -> Decoder:
        no_options("acme.{name}", options)
        return Decoder()


DRIVER = Driver()
"""

FIXTURE = {
    "description": "one value",
    "values": [{"char": "7a1f0001-0000-4000-8000-00000000abcd", "hex": "1200"}],
    "readings": [
        {
            "observations": [{"type": "grip_force", "value": 18, "unit": "kg"}],
            "status": {},
            "raw": "EgA=",
            "device_time": None,
            "device_clock": "unknown",
        }
    ],
    "errors": 0,
}


def vendor_package(
    root: Path,
    name: str,
    *,
    body: str = "value = data[0]",
    type_name: str = "grip_force",
    unit: str = "kg",
    rule: str = "SERVICE",
    fixture: dict[str, object] | None = FIXTURE,
) -> str:
    """Write package `acme_<name>` with a driver and (unless None) one fixture; return the
    module name. `root` must be on sys.path."""
    package = root / f"acme_{name}"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "driver.py").write_text(
        textwrap.dedent(GOOD_DRIVER).format(
            name=name, body=body, type=type_name, unit=unit, rule=rule
        )
    )
    if fixture is not None:
        folder = package / "fixtures" / f"acme.{name}"
        folder.mkdir(parents=True)
        (folder / "one.json").write_text(json.dumps(fixture))
    return f"acme_{name}.driver"


@pytest.fixture
def vendor_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def failing(report_checks: list[Check]) -> dict[str, tuple[str, ...]]:
    return {c.name: c.problems for c in report_checks if not c.ok}


GENEROUS = 5.0
"""Seconds per fuzz input where a test needs the kit's fuzz to pass: the kit measures CPU time
(`process_time`, 50 ms by default), which a loaded machine can still exceed on an input."""


@pytest.mark.parametrize("driver_id", REGISTRY.ids())
def test_every_builtin_driver_passes(driver_id: str) -> None:
    # The hub's one runner of the built-in drivers' fixtures (and declaration, units, match
    # rules). No fuzz inputs: tests/drivers/test_fuzz.py is the one fuzz of these drivers.
    report = check_driver(
        driver_id, registry=Registry(entry_points=()), fuzz_inputs=0, time_limit=GENEROUS
    )
    assert report.ok, report.render()
    assert [c.name for c in report.checks] == [
        "declaration",
        "fixtures",
        "units and codes",
        "fuzz",
        "match rules",
    ]


def test_a_good_vendor_module_passes(vendor_root: Path) -> None:
    module = vendor_package(vendor_root, "grip")
    report = check_driver(
        module, registry=Registry(entry_points=()), fuzz_inputs=500, time_limit=GENEROUS
    )
    assert report.ok, report.render()
    assert report.driver_id == "acme.grip"


def test_a_decoder_that_raises_fails_the_fuzz(vendor_root: Path) -> None:
    module = vendor_package(
        vendor_root, "crashy", body="value = data[0] // data[1]  # ZeroDivisionError on x00"
    )
    report = check_driver(
        module, registry=Registry(entry_points=()), fuzz_inputs=2000, time_limit=GENEROUS
    )
    problems = failing(report.checks)
    assert "fuzz" in problems
    assert "ZeroDivisionError" in problems["fuzz"][0]
    assert not report.ok


def test_a_wrong_unit_and_a_fixture_mismatch_fail(vendor_root: Path) -> None:
    bad_fixture = json.loads(json.dumps(FIXTURE))
    bad_fixture["readings"][0]["observations"][0]["value"] = 19
    module = vendor_package(vendor_root, "sloppy", unit="kilos", fixture=bad_fixture)
    problems = failing(
        check_driver(module, registry=Registry(entry_points=()), fuzz_inputs=100).checks
    )
    assert "fixtures" in problems and "reading 0 differs" in problems["fixtures"][0]
    assert any("'kilos' is not valid UCUM" in p for p in problems["units and codes"])


TABLE_DRIVER = """
from gateway.sdk import (BleMatch, Characteristic, GattTableDriver, Observation, ObservationType,
                         Reading, uint_from)

SERVICE = "7a1f0000-0000-4000-8000-00000000abcd"
DATA = "7a1f0001-0000-4000-8000-00000000abcd"


def decode(data: bytes) -> Reading:
    return Reading((Observation("{type}", uint_from(data, 0, 2), "{unit}"),), bytes(data))


DRIVER = GattTableDriver(
    id="acme.{name}", version="1.0.0", description="a test device", category="musculoskeletal",
    match=(BleMatch(service_uuid=SERVICE),), service=SERVICE,
    characteristics=(Characteristic(DATA, "data", "notify"),), decoders={{DATA: decode}},
    observation_types=(ObservationType("grip_force", "{declared_unit}"),), sdk_version=(1, 3),
)
"""


def table_package(
    root: Path, name: str, *, type_name: str = "grip_force", unit: str = "kg", declared: str = "kg"
) -> str:
    """Write package `acme_<name>` with a `GattTableDriver` declaring grip_force in `declared`,
    whose decoder emits `type_name` in `unit`, and the one-value fixture."""
    package = root / f"acme_{name}"
    (package / "fixtures" / f"acme.{name}").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    source = TABLE_DRIVER.format(name=name, type=type_name, unit=unit, declared_unit=declared)
    (package / "driver.py").write_text(source)
    fixture = json.loads(json.dumps(FIXTURE))
    fixture["readings"][0]["observations"][0].update(type=type_name, unit=unit)
    (package / "fixtures" / f"acme.{name}" / "one.json").write_text(json.dumps(fixture))
    return f"acme_{name}.driver"


def test_a_table_driver_whose_fixtures_match_its_declared_types_passes(vendor_root: Path) -> None:
    report = check_driver(
        table_package(vendor_root, "table"), registry=Registry(entry_points=()), fuzz_inputs=200
    )
    assert report.ok, report.render()


def test_a_fixture_producing_an_undeclared_type_fails(vendor_root: Path) -> None:
    module = table_package(vendor_root, "undeclared", type_name="pinch_force")
    problems = failing(
        check_driver(module, registry=Registry(entry_points=()), fuzz_inputs=100).checks
    )
    assert problems == {
        "units and codes": ("pinch_force is produced but not declared in `observation_types`",)
    }


def test_a_fixture_producing_a_declared_type_in_another_unit_fails(vendor_root: Path) -> None:
    module = table_package(vendor_root, "pounds", unit="[lb_av]")
    problems = failing(
        check_driver(module, registry=Registry(entry_points=()), fuzz_inputs=100).checks
    )
    assert list(problems) == ["units and codes"]
    (problem,) = problems["units and codes"]
    assert problem.startswith("grip_force is produced in '[lb_av]' but declared in 'kg' only")


def test_a_declared_type_with_a_unit_that_is_not_ucum_fails_the_declaration(
    vendor_root: Path,
) -> None:
    module = table_package(vendor_root, "kilos", unit="kilos", declared="kilos")
    problems = failing(
        check_driver(module, registry=Registry(entry_points=()), fuzz_inputs=100).checks
    )
    assert any(
        "declared grip_force: unit 'kilos' is not valid UCUM" in p for p in problems["declaration"]
    )


def test_a_table_driver_is_a_gatt_driver_that_refuses_options_and_undeclared_uuids() -> None:
    from gateway.drivers import gatt_hts

    assert isinstance(gatt_hts.DRIVER, GattDriver)
    assert gatt_hts.DRIVER.info.transport == "ble"
    assert gatt_hts.DRIVER.info.produces == ("body_temperature",)
    with pytest.raises(OptionError, match=r"gatt\.hts takes no options"):
        gatt_hts.DRIVER.gatt_decoder({"unit": "kg"})
    session = BleSession(on_connect=(GattWrite(gatt_hts.TEMPERATURE_TYPE, b"\x01"),))
    with_session = GattTableDriver(
        id="acme.x",
        version="1.0.0",
        description="x",
        service=gatt_hts.DRIVER.service,
        characteristics=gatt_hts.DRIVER.characteristics,
        decoders=gatt_hts.DRIVER.decoders,
        ble_session=session,
    )
    assert with_session.info.ble_session is session
    with pytest.raises(ValueError, match="not a declared characteristic"):
        GattTableDriver(
            id="acme.x",
            version="1.0.0",
            description="x",
            service=gatt_hts.DRIVER.service,
            characteristics=gatt_hts.DRIVER.characteristics[:1],
            decoders=dict(gatt_hts.DRIVER.decoders),
        )


def test_a_driver_without_fixtures_fails(vendor_root: Path) -> None:
    module = vendor_package(vendor_root, "bare", fixture=None)
    report = check_driver(module, registry=Registry(entry_points=()), fuzz_inputs=100)
    (fixtures,) = [c for c in report.checks if c.name == "fixtures"]
    assert not fixtures.ok
    assert "no fixtures" in fixtures.detail


def test_a_rule_that_ties_with_a_builtin_driver_fails(vendor_root: Path) -> None:
    # The bare Heart Rate service is gatt.hrs's claim already.
    module = vendor_package(vendor_root, "strap", rule='"0000180d-0000-1000-8000-00805f9b34fb"')
    problems = failing(
        check_driver(module, registry=Registry(entry_points=()), fuzz_inputs=100).checks
    )
    assert "match rules" in problems
    assert "gatt.hrs" in problems["match rules"][0]


def test_a_driver_needing_a_newer_sdk_is_refused_by_name(vendor_root: Path) -> None:
    module = vendor_package(vendor_root, "future")
    path = vendor_root / "acme_future" / "driver.py"
    path.write_text(path.read_text().replace("sdk_version=(1, 2)", "sdk_version=(1, 9)"))
    report = check_driver(module, registry=Registry(entry_points=()))
    assert not report.ok
    hub = f"{SDK_VERSION[0]}.{SDK_VERSION[1]}"
    assert f"needs driver SDK 1.9, this hub has {hub}" in report.checks[0].detail


def test_the_cli_exit_status_says_pass_fail_or_not_found(vendor_root: Path) -> None:
    vendor_package(vendor_root, "grip")
    vendor_package(vendor_root, "crashy", body="value = data[0] // data[1]")
    env_path = f"{vendor_root}{os.pathsep}{ROOT}"
    passed = _cli(env_path, "driver", "check", "acme_grip.driver", "--inputs", "200")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "result: PASS" in passed.stdout
    failed = _cli(env_path, "driver", "check", "acme_crashy.driver", "--json")
    assert failed.returncode == 1
    report = json.loads(failed.stdout)
    assert report["ok"] is False
    assert {c["name"]: c["ok"] for c in report["checks"]}["fuzz"] is False
    missing = run_cli("driver", "check", "acme.nowhere")
    assert missing.returncode == 2
    assert "no installed driver 'acme.nowhere'" in missing.stderr


def _cli(pythonpath: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )


@pytest.mark.parametrize(
    ("unit", "valid"),
    [
        ("%", True),
        ("/min", True),
        ("mm[Hg]", True),
        ("kg/m2", True),
        ("{steps}", True),
        ("mL/{beat}", True),
        ("10*3/uL", True),
        ("kgf", True),
        ("1", True),
        ("bpm", False),
        ("mmHg", False),
        ("", False),
        ("kg m", False),
        ("L//min", False),
    ],
)
def test_ucum(unit: str, valid: bool) -> None:
    assert (ucum_error(unit) is None) is valid, ucum_error(unit)


def test_loinc_check_digits() -> None:
    assert all(
        loinc_ok(code)
        for code in (
            "8867-4",
            "59408-5",
            "8310-5",
            "29463-7",
            "2339-0",
            "8302-2",
            "39156-5",
            "8478-0",
        )
    )
    assert not any(loinc_ok(code) for code in ("8867-5", "8867", "ABC-1", "12345678-1"))


def test_upper_case_uuids_and_an_empty_description_fail_the_declaration(vendor_root: Path) -> None:
    module = vendor_package(vendor_root, "shouty")
    path = vendor_root / "acme_shouty" / "driver.py"
    path.write_text(
        path.read_text()
        .replace(
            'DATA = "7a1f0001-0000-4000-8000-00000000abcd"',
            'DATA = "7A1F0001-0000-4000-8000-00000000ABCD"',
        )
        .replace('"a test device"', '"  "')
    )
    problems = failing(
        check_driver(module, registry=Registry(entry_points=()), fuzz_inputs=50).checks
    )["declaration"]
    assert any("must be written in lower case" in p for p in problems)
    assert any("the description is empty" in p for p in problems)
