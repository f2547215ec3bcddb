"""`rtm-gateway driver new` (gateway.kit.scaffold): the packages it makes work as they are made.

The packages are generated once per module into a temporary directory and checked with real
parts: the driver and simulator load through entry points read from the package's own
pyproject.toml, the fixtures run through the registry's validation and the hub's fixture
format, the package's own test file runs under pytest in a subprocess, the conformance kit
passes it, and ruff checks the whole tree with this repository's configuration. Nothing is
installed: the package root goes on `sys.path` (or `PYTHONPATH`) and comes off again.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.driver_match import ble_claims
from gateway.hub.registry import AnyDriver, Registry, characteristic_uuid
from gateway.kit.conformance import check_driver
from gateway.kit.scaffold import MAX_NAME, TEMPLATES, ScaffoldError, new_driver_package
from gateway.sdk import DecodeError, Driver, FeedResult, parse_hex
from gateway.sim.ble_base import SimulatedBleDevice

REPO = Path(__file__).resolve().parent.parent

BLE_NAME = "scaffoldtest.ble-goniometer"
SERIAL_NAME = "scaffoldtest.serial-goniometer"
# As long as a name may be, with as few separators as possible: the generated lines that spell
# it out (the simulator's class line is the longest) must still pass ruff's line length.
LONG_NAME = "scaffoldtest." + "x" * (MAX_NAME - len("scaffoldtest."))


@dataclass(frozen=True, slots=True)
class Generated:
    name: str
    root: Path

    @property
    def pkg(self) -> str:
        return "rtm_" + self.name.replace(".", "_").replace("-", "_")

    def entry_points(self, group: str) -> list[EntryPoint]:
        """The entry points the package's pyproject.toml declares in `group`, unresolved."""
        project = tomllib.loads((self.root / "pyproject.toml").read_text(encoding="utf-8"))
        declared = project["project"].get("entry-points", {}).get(group, {})
        return [EntryPoint(name, value, group) for name, value in declared.items()]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Generated]:
    dest = tmp_path_factory.mktemp("drivers")
    return {
        "ble": Generated(BLE_NAME, new_driver_package(BLE_NAME, dest)),
        "serial": Generated(SERIAL_NAME, new_driver_package(SERIAL_NAME, dest, transport="serial")),
        "long": Generated(LONG_NAME, new_driver_package(LONG_NAME, dest)),
    }


@contextmanager
def on_path(package: Generated) -> Iterator[None]:
    """The package importable, as if installed; afterwards no trace of it in this process."""
    root = str(package.root)
    sys.path.insert(0, root)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(root)
        for module in [
            m for m in sys.modules if m == package.pkg or m.startswith(package.pkg + ".")
        ]:
            del sys.modules[module]


def _registry(package: Generated) -> Registry:
    """A registry of the built-ins plus the package's driver, loaded through its entry point."""
    registry = Registry(entry_points=package.entry_points("rtm_gateway.drivers"))
    assert registry.problems == ()
    assert package.name in registry
    return registry


def _collect(results: Iterable[FeedResult]) -> tuple[list[object], int]:
    """(readings through JSON, as a platform sees them; how many errors)."""
    readings: list[object] = []
    errors: list[DecodeError] = []
    for result in results:
        readings += [reading.as_dict() for reading in result.readings]
        errors += result.errors
    assert all(isinstance(error, DecodeError) for error in errors)
    return json.loads(json.dumps(readings)), len(errors)


def _outcomes(driver: AnyDriver, case: dict[str, Any]) -> list[tuple[list[object], int]]:
    """A fixture case's outcome for each way of feeding it: a Bluetooth LE case's values in
    order to one decoder; a serial case's bytes whole and byte by byte."""
    options = case.get("options", {})
    if isinstance(driver, Driver):
        data = parse_hex(case["hex"])
        return [
            _collect(map(driver.decoder(options).feed, chunks))
            for chunks in ([data], [data[i : i + 1] for i in range(len(data))])
        ]
    decoder = driver.gatt_decoder(options)
    return [
        _collect(
            decoder.value(characteristic_uuid(value["char"]), parse_hex(value["hex"]))
            for value in case["values"]
        )
    ]


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "spirometer",
        "Acme.Spirometer",
        "acme.",
        ".spirometer",
        "acme..spirometer",
        "acme/x.spirometer",
        "acme.spiro meter",
        "acme.spirömeter",
        LONG_NAME + "x",
    ],
)
def test_a_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ScaffoldError, match="driver name"):
        new_driver_package(name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_transport_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScaffoldError, match="transport"):
        new_driver_package("acme.spirometer", tmp_path, transport="usb")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_an_existing_package_is_not_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "rtm-driver-acme-spirometer"
    target.mkdir()
    (target / "driver.py").write_text("# the vendor's work\n", encoding="utf-8")
    with pytest.raises(ScaffoldError, match="not an empty directory"):
        new_driver_package("acme.spirometer", tmp_path)
    assert [p.name for p in target.iterdir()] == ["driver.py"]
    assert (target / "driver.py").read_text(encoding="utf-8") == "# the vendor's work\n"


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rtm-driver-acme-spirometer").write_text("", encoding="utf-8")
    with pytest.raises(ScaffoldError, match="not an empty directory"):
        new_driver_package("acme.spirometer", tmp_path, transport="serial")


def test_an_empty_directory_is_filled(tmp_path: Path) -> None:
    (tmp_path / "rtm-driver-acme-spirometer").mkdir()
    root = new_driver_package("acme.spirometer", tmp_path)
    assert root == tmp_path / "rtm-driver-acme-spirometer"
    assert (root / "pyproject.toml").is_file()


# --- the tree ---------------------------------------------------------------------------------


def _tree(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_the_ble_package_tree(made: dict[str, Generated]) -> None:
    package = made["ble"]
    pkg, fixtures = package.pkg, f"{package.pkg}/fixtures/{BLE_NAME}"
    assert package.root.name == "rtm-driver-scaffoldtest-ble-goniometer"
    assert _tree(package.root) == {
        "pyproject.toml",
        "README.md",
        "tests/test_driver.py",
        f"{pkg}/__init__.py",
        f"{pkg}/py.typed",
        f"{pkg}/driver.py",
        f"{pkg}/simulator.py",
        f"{fixtures}/measurements.json",
        f"{fixtures}/not-a-number.json",
        f"{fixtures}/malformed.json",
    }
    project = tomllib.loads((package.root / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == "rtm-driver-scaffoldtest-ble-goniometer"
    assert project["project"]["version"] == "0.1.0"
    assert project["project"]["dependencies"] == ["rtm-gateway"]
    assert project["project"]["entry-points"] == {
        "rtm_gateway.drivers": {BLE_NAME: f"{pkg}.driver:DRIVER"},
        "rtm_gateway.simulators": {BLE_NAME: f"{pkg}.simulator:SimulatedScaffoldtestBleGoniometer"},
    }
    assert project["tool"]["setuptools"]["package-data"] == {
        pkg: ["py.typed", "fixtures/**/*.json"]
    }
    readme = (package.root / "README.md").read_text(encoding="utf-8")
    for command in (
        f"rtm-gateway driver check {BLE_NAME}",
        f"rtm-gateway simulate {BLE_NAME} --ble",
        "python -m build",
    ):
        assert command in readme


def test_the_serial_package_tree(made: dict[str, Generated]) -> None:
    package = made["serial"]
    pkg, fixtures = package.pkg, f"{package.pkg}/fixtures/{SERIAL_NAME}"
    assert _tree(package.root) == {
        "pyproject.toml",
        "README.md",
        "tests/test_driver.py",
        f"{pkg}/__init__.py",
        f"{pkg}/py.typed",
        f"{pkg}/driver.py",
        f"{fixtures}/measurements.json",
        f"{fixtures}/garbage-line.json",
        f"{fixtures}/malformed.json",
    }
    project = tomllib.loads((package.root / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"] == {
        "rtm_gateway.drivers": {SERIAL_NAME: f"{pkg}.driver:DRIVER"}
    }
    readme = (package.root / "README.md").read_text(encoding="utf-8")
    assert f"rtm-gateway driver check {SERIAL_NAME}" in readme
    assert "simulate" not in readme


# --- the driver, the simulator and the package's own tests -----------------------------------


@pytest.mark.parametrize("kind", ["ble", "serial"])
def test_the_driver_passes_its_fixtures(made: dict[str, Generated], kind: str) -> None:
    package = made[kind]
    folder = package.root / package.pkg / "fixtures" / package.name
    cases = {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(folder.glob("*.json"))
    }
    with on_path(package):
        driver = _registry(package).get(package.name)
        info = driver.info
        assert (info.transport, info.sdk_version, info.category) == (kind, (1, 3), "other")
        for stem, case in cases.items():
            for readings, errors in _outcomes(driver, case):
                assert (readings, errors) == (case["readings"], case["errors"]), stem

    # Good values; a value that is not one (BLE) or a line of garbage between good ones
    # (serial); malformed input. One snake_case type in UCUM, and no invented codes.
    special = "not-a-number" if kind == "ble" else "garbage-line"
    assert set(cases) == {"measurements", special, "malformed"}
    assert (len(cases["measurements"]["readings"]), cases["measurements"]["errors"]) == (2, 0)
    assert (len(cases["malformed"]["readings"]), cases["malformed"]["errors"]) == (0, 3)
    observations = [
        o for case in cases.values() for r in case["readings"] for o in r["observations"]
    ]
    if kind == "ble":
        assert cases[special]["readings"][0]["observations"] == [
            {"type": "range_of_motion", "value": None, "unit": "deg", "absent": "not-a-number"}
        ]
    else:
        assert (len(cases[special]["readings"]), cases[special]["errors"]) == (2, 1)
    assert {(o["type"], o["unit"]) for o in observations} == {("range_of_motion", "deg")}
    assert not any("mdc" in o or "loinc" in o for o in observations)


def test_the_simulator_sends_what_the_driver_decodes(made: dict[str, Generated]) -> None:
    package = made["ble"]
    with on_path(package):
        driver = _registry(package).get_ble(package.name)
        (entry_point,) = package.entry_points("rtm_gateway.simulators")
        simulator = entry_point.load()
        assert issubclass(simulator, SimulatedBleDevice)
        assert entry_point.name == simulator.driver_id == package.name
        device = simulator(seed=7)  # every constructor argument is keyword-only with a default
        peripheral = device.peripheral
        assert ble_claims(
            driver, service_uuids=peripheral.service_uuids, local_name=peripheral.name
        )

        sent: list[tuple[str, bytes]] = []

        async def capture(uuid: str, data: bytes) -> bool:
            sent.append((uuid, data))
            return True

        async def live() -> None:
            for second in range(20):
                await device.live(first=second == 0)

        device.send = capture  # what a subscribed central would receive
        asyncio.run(live())
    decoder = driver.gatt_decoder({})
    results = [decoder.value(uuid, data) for uuid, data in sent]
    assert len(results) == 20
    assert all(not r.errors and len(r.readings) == 1 for r in results)
    values = [r.readings[0].observations[0].value for r in results]
    assert all(isinstance(v, float) and 0 <= v <= 150 for v in values)
    assert len(set(values)) > 1  # it drifts


@pytest.mark.parametrize("kind", ["ble", "serial"])
def test_the_package_tests_pass_under_pytest(made: dict[str, Generated], kind: str) -> None:
    package = made[kind]
    # Plain pytest, as a vendor has it: none of the plugins installed here for the hub's tests.
    env = {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
        "PYTHONPATH": os.pathsep.join(
            filter(None, (str(package.root), os.environ.get("PYTHONPATH")))
        ),
    }
    test_file = package.root / "tests" / "test_driver.py"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=package.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " passed" in proc.stdout
    assert "failed" not in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.parametrize("kind", ["ble", "serial"])
def test_the_driver_passes_the_conformance_kit(made: dict[str, Generated], kind: str) -> None:
    package = made[kind]
    with on_path(package):
        # A generous per-input bound: the kit measures CPU time (50 ms by default).
        report = check_driver(
            f"{package.pkg}.driver",
            registry=Registry(entry_points=()),
            fuzz_inputs=500,
            time_limit=5.0,
        )
    assert report.driver_id == package.name
    assert report.ok, report.render()


def _ruff() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    return [str(Path(sys.executable).with_name("ruff"))]


def test_the_generated_code_passes_ruff(made: dict[str, Generated]) -> None:
    """With this repository's rules, not the tests/** relaxations: the package's test file is
    not under this repository's tests/."""
    dest = made["ble"].root.parent
    proc = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(dest)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", ["ble", "serial"])
def test_the_generated_code_passes_mypy_strict(
    made: dict[str, Generated], kind: str, tmp_path: Path
) -> None:
    """The package and its tests, as a vendor's CI would check them (`gateway` found from this
    checkout, as an installed rtm-gateway would be)."""
    package = made[kind]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "mypy"),
            package.pkg,
            "tests",
        ],
        cwd=package.root,
        env={**os.environ, "MYPYPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_templates_ship_as_package_data() -> None:
    """A non-editable install has the template files: the package-data globs cover each."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["gateway"]
    package = REPO / "gateway"
    templates = sorted((package / "kit" / TEMPLATES).iterdir())
    assert len(templates) >= 10
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    assert [path.name for path in templates if path not in shipped] == []
