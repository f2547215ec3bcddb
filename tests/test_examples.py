"""The two reference vendor drivers, installed as separate packages (scripts/test does
`pip install -e examples/...`), found through the entry points, driven end to end: their
simulators on the virtual BlueZ -> the daemon -> mosquitto -> a subscriber checking every
signature with joserfc. Also: a deliberately broken vendor package is skipped with a clear log
line while everything else works."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.registry import Registry
from gateway.kit.scaffold import new_driver_package
from gateway.sim.ble_devices import make_device, start_device
from gateway.sim.bluez import BluezThread
from tests.blelab import needs_dbus
from tests.conftest import BrokerFactory, Received, SubscriberFactory
from tests.harness import (
    assert_chain,
    hub_jwk,
    run_cli,
    seqs,
    start_daemon,
    verify_messages,
    write_config,
)

EXAMPLES = {
    "tindeq.progressor": "rtm-driver-tindeq-progressor",
    "openrtm.inhaler": "rtm-driver-open-inhaler",
}
BLE_SECTION = "[ble]\npassive = false\nscanner_watchdog = 10\n"


def _installed(group: str) -> set[str]:
    return {ep.name for ep in entry_points(group=group)}


def test_the_examples_are_installed_and_found_through_entry_points() -> None:
    assert set(EXAMPLES) <= _installed("rtm_gateway.drivers"), (
        "scripts/test installs examples/*; run it, or pip install -e examples/<name>"
    )
    assert set(EXAMPLES) <= _installed("rtm_gateway.simulators")
    registry = Registry.load()
    for driver_id, distribution in EXAMPLES.items():
        assert registry.source(driver_id) == distribution
    listed = run_cli("drivers", "--json", "--load", *EXAMPLES)
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows["tindeq.progressor"]["category"] == "musculoskeletal"
    assert rows["openrtm.inhaler"]["category"] == "respiratory"
    # Not asked for: listed from the packages' metadata, not imported (no declaration to show).
    unasked = run_cli("drivers", "--json")
    assert unasked.returncode == 0, unasked.stderr
    rows = {row["id"]: row for row in json.loads(unasked.stdout)}
    for driver_id, distribution in EXAMPLES.items():
        assert rows[driver_id]["status"] == "not loaded"
        assert rows[driver_id]["distribution"] == distribution
        assert "category" not in rows[driver_id]
    assert "is skipped" not in unasked.stderr  # the broken package was not imported either


@pytest.mark.parametrize("driver_id", sorted(EXAMPLES))
def test_each_example_passes_the_conformance_kit(driver_id: str) -> None:
    checked = run_cli("driver", "check", driver_id, "--inputs", "500", "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["ok"] is True


def test_a_broken_vendor_package_is_skipped_with_the_reason_and_the_rest_works() -> None:
    broken = ("broken.import", "broken.metadata", "broken.future")
    listed = run_cli("drivers", "--load", *broken, "tindeq.progressor")
    assert listed.returncode == 0
    assert "tindeq.progressor" in listed.stdout and "broken." not in listed.stdout
    log = listed.stderr
    assert (
        "'broken.import' from rtm-driver-broken is skipped: failed to load (ModuleNotFoundError"
    ) in log
    assert "'broken.metadata' from rtm-driver-broken is skipped: id 'Broken Meter'" in log
    assert "'broken.future' from rtm-driver-broken is skipped: it needs driver SDK 1.99" in log


def _device(device_id: str, driver: str, address: str) -> str:
    return (
        f'[[devices]]\nid = "{device_id}"\ndriver = "{driver}"\naddress = "{address}"\n'
        'patient = "pt-0001"\n'
    )


def _readings(messages: list[Received], jwk: dict[str, Any], device: str) -> list[dict[str, Any]]:
    return [
        e.payload
        for e in verify_messages(messages, jwk)
        if e.payload["kind"] == "reading" and e.payload["device"]["id"] == device
    ]


def _observed(reading: dict[str, Any]) -> set[str]:
    return {o["type"] for o in reading["observations"]}


@needs_dbus
def test_the_examples_stream_from_their_simulators_to_the_broker_signed(
    bluez: BluezThread, tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    progressor = make_device("tindeq.progressor", seed=3)
    inhaler = make_device("openrtm.inhaler", seed=3)
    config = write_config(
        tmp_path,
        broker,
        [
            _device("dynamometer", "tindeq.progressor", progressor.peripheral.address),
            _device("inhaler", "openrtm.inhaler", inhaler.peripheral.address),
        ],
        extra=BLE_SECTION,
    )
    jwk = hub_jwk(config)
    start_device(bluez, progressor, rate=20)
    start_device(bluez, inhaler)
    daemon = start_daemon(config, tmp_path / "daemon.log")

    def enough(messages: list[Received]) -> bool:
        reps = [r for r in _readings(messages, jwk, "dynamometer") if "peak_force" in _observed(r)]
        events = [
            r for r in _readings(messages, jwk, "inhaler") if "inhaler_actuation" in _observed(r)
        ]
        return len(reps) >= 2 and len(events) >= 4

    try:
        assert subscriber.wait_for(enough, timeout=45), daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()

    # The broken vendor package installed beside them is named by no device and no allow
    # entry: it was never imported, so it had nothing to fail. The two that were imported are
    # in the signed hub-started event, with where they came from.
    log = (tmp_path / "daemon.log").read_text()
    assert "broken" not in log
    entries = verify_messages(subscriber.snapshot(), jwk)
    started = next(e.payload["detail"] for e in entries if e.payload.get("event") == "hub-started")
    plugins = {p["id"]: p for p in started["plugins"]}
    assert set(plugins) == set(EXAMPLES)
    for driver_id, distribution in EXAMPLES.items():
        assert plugins[driver_id]["distribution"] == distribution
        assert plugins[driver_id]["version"]
    assert sorted(set(seqs(entries))) == list(range(1, max(seqs(entries)) + 1))
    assert_chain(entries)
    messages = subscriber.snapshot()
    # The inhaler's stored day arrives once each, in counter order.
    events = [r for r in _readings(messages, jwk, "inhaler") if "inhaler_actuation" in _observed(r)]
    counters = [r["status"]["event_counter"] for r in events]
    assert counters == sorted(set(counters)) and len(counters) >= 4
    assert all(r["device"]["driver"] == "openrtm.inhaler" for r in events)
    # The dynamometer: the hub started the stream (on_connect), and stopped it on SIGTERM
    # (on_disconnect); force samples became a few repetition readings, not thousands.
    control = "7e4e1703-1ea6-40c9-9dcc-13d34ffead57"
    writes = [data for uuid, data in progressor.peripheral.writes if uuid == control]
    assert writes[:2] == [b"\x6f", b"\x65"]  # battery voltage, then start the stream
    assert writes[-1] == b"\x66"
    reps = [r for r in _readings(messages, jwk, "dynamometer") if "peak_force" in _observed(r)]
    assert 2 <= len(reps) < 200
    for rep in reps:
        assert rep["device"]["driver"] == "tindeq.progressor"
        values = {o["type"]: o for o in rep["observations"]}
        assert values["peak_force"]["unit"] == "kgf"
        assert 5 < values["peak_force"]["value"] < 60
        assert 0.5 <= values["time_under_tension"]["value"] < 10


def _as_if_installed(package_root: Path, site: Path) -> None:
    """Make `site` hold the metadata pip would write for the package at `package_root`: with
    both on PYTHONPATH, importlib.metadata finds its entry points as for an installed one."""
    project = tomllib.loads((package_root / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
            for group, points in groups.items()
        )
    )


@needs_dbus
def test_a_scaffolded_driver_passes_the_kit_and_its_simulator_reaches_the_broker(
    bluez: BluezThread,
    tmp_path: Path,
    mosquitto: BrokerFactory,
    mqtt_subscriber: SubscriberFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The vendor's path from docs/writing-a-driver.md: driver new, install, driver check,
    # simulate, and a signed reading at the platform. (Installing is imitated with the
    # metadata pip would write, so the test does not change the shared environment.)
    package = new_driver_package("acme.goniometer", tmp_path / "src")
    site = tmp_path / "site"
    _as_if_installed(package, site)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(site), str(package), os.environ.get("PYTHONPATH", "")])
    )
    checked = run_cli("driver", "check", "acme.goniometer", "--inputs", "300")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "result: PASS" in checked.stdout

    monkeypatch.syspath_prepend(str(package))
    simulator = importlib.import_module("rtm_acme_goniometer.simulator")
    device = simulator.SimulatedAcmeGoniometer(seed=1)
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    config = write_config(
        tmp_path,
        broker,
        [_device("knee", "acme.goniometer", device.peripheral.address)],
        extra=BLE_SECTION,
    )
    jwk = hub_jwk(config)
    start_device(bluez, device, rate=10)
    daemon = start_daemon(config, tmp_path / "daemon.log")

    def arrived(messages: list[Received]) -> bool:
        return any("range_of_motion" in _observed(r) for r in _readings(messages, jwk, "knee"))

    try:
        assert subscriber.wait_for(arrived, timeout=30), daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    reading = next(
        r
        for r in _readings(subscriber.snapshot(), jwk, "knee")
        if "range_of_motion" in _observed(r)
    )
    assert reading["device"]["driver"] == "acme.goniometer"
    assert reading["observations"][0]["unit"] == "deg"
    sys.modules.pop("rtm_acme_goniometer.simulator", None)
    sys.modules.pop("rtm_acme_goniometer", None)
