"""Bluetooth LE end to end: virtual devices on the virtual BlueZ (in the test process) -> the
daemon (a child process running the real bleak) -> a real mosquitto -> a subscriber that checks
every signature with joserfc, the schema, the chain and the sequence."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from gateway.sim.ble_devices import GlucoseMeter, IndoorBike, PulseOximeter, start_device
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
    wait_until,
    write_config,
)

pytestmark = needs_dbus


def ble_device(device_id: str, driver: str, address: str, extra: str = "") -> str:
    return (
        f'[[devices]]\nid = "{device_id}"\ndriver = "{driver}"\naddress = "{address}"\n'
        f'patient = "pt-0001"\n{extra}'
    )


BLE_SECTION = "[ble]\npassive = false\nscanner_watchdog = 10\n"


def readings(messages: list[Received], jwk: dict[str, Any]) -> list[dict[str, Any]]:
    return [e.payload for e in verify_messages(messages, jwk) if e.payload["kind"] == "reading"]


def value_traces(reading: dict[str, Any]) -> set[str]:
    """The ways a characteristic value, or what it decodes to, would show in a log line: as the
    hub's payload has it (base64), as hex, as Python and D-Bus reprs of the bytes (bleak logs
    `bytearray(b'...')` and `Variant('ay', b'...')`), as a list of byte values, and each decoded
    observation written as a log line would (`spo2=97`, `'spo2': 97`, `97 %`)."""
    raw = base64.b64decode(reading["raw"])
    traces = {reading["raw"], repr(raw)}
    if len(raw) >= 3:  # shorter hex could be anything in a log line
        traces |= {raw.hex(), raw.hex(" "), raw.hex(":"), str(list(raw))}
    for o in reading["observations"]:
        name, value = o["type"], o["value"]
        traces |= {f"{name}={value}", f"{name}: {value}", f"'{name}': {value}"}
        traces.add(f'"{name}": {value}')
        if o["unit"] != "1":
            traces.add(f"{value} {o['unit']}")
    return traces


def assert_no_values_in(log: str, got: list[dict[str, Any]]) -> None:
    assert got
    for reading in got:
        leaked = sorted(t for t in value_traces(reading) if t in log)
        assert not leaked, f"health values in the log: {leaked}"


def test_a_pulse_oximeter_and_an_exercise_bike_stream_to_the_broker_signed(
    bluez: BluezThread, tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("mtls")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    oximeter = PulseOximeter(
        address="C0:FF:EE:50:00:01", stored_records=3, seed=1, spot_check_every=0
    )
    bike = IndoorBike(address="C0:FF:EE:70:00:01", seed=1)
    config = write_config(
        tmp_path,
        broker,
        [
            ble_device("oximeter", "gatt.plx", "C0:FF:EE:50:00:01", "summary_interval = 0.2\n"),
            ble_device("bike", "gatt.ftms", "C0:FF:EE:70:00:01"),
        ],
        extra=BLE_SECTION,
    )
    jwk = hub_jwk(config)
    start_device(bluez, oximeter, rate=20)
    start_device(bluez, bike, rate=20)
    daemon = start_daemon(config, tmp_path / "daemon.log")

    def enough(messages: list[Received]) -> bool:
        got = readings(messages, jwk)
        by = {(r["device"]["id"], r["device"]["driver"]) for r in got}
        spot = [
            r for r in got if r["device"]["id"] == "oximeter" and r["time"]["device"] is not None
        ]
        bike_power = [
            r
            for r in got
            if r["device"]["id"] == "bike" and any(o["type"] == "power" for o in r["observations"])
        ]
        return (
            ("oximeter", "gatt.plx") in by
            and len(spot) >= 3
            and len(bike_power) >= 10
            and sum(1 for r in got if r["device"]["id"] == "oximeter") >= 10
        )

    try:
        assert subscriber.wait_for(enough, timeout=40), daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()

    entries = verify_messages(subscriber.snapshot(), jwk)
    distinct = sorted(set(seqs(entries)))
    assert distinct == list(range(1, distinct[-1] + 1))
    assert_chain(entries)
    got = [e.payload for e in entries if e.payload["kind"] == "reading"]
    oximeter_readings = [
        r for r in got if r["device"]["id"] == "oximeter" and r["device"]["driver"] == "gatt.plx"
    ]
    assert {r["device"]["serial"] for r in oximeter_readings} == {"PLX-000001"}
    spot_checks = [r for r in oximeter_readings if r["time"]["device"] is not None]
    assert len({r["raw"] for r in spot_checks}) == len(spot_checks) == 3  # each stored one once
    assert not oximeter.stored  # deleted on the device once stored by the hub
    features = [r for r in oximeter_readings if not r["observations"]]
    # The PLX Features value, read on connect: the simulated oximeter stores spot-checks.
    assert features and all(r["status"]["supports_spot_check_storage"] for r in features)
    for reading in oximeter_readings:
        if not reading["observations"]:
            continue
        types = {o["type"]: o for o in reading["observations"]}
        assert types["spo2"]["unit"] == "%"
        assert 90 <= types["spo2"]["value"] <= 100
    bike_readings = [
        r for r in got if r["device"]["id"] == "bike" and r["device"]["driver"] == "gatt.ftms"
    ]
    assert all(r["device"]["address"] == "C0:FF:EE:70:00:01" for r in bike_readings)
    assert bike.control_point_writes == 0  # the hub never drives a fitness machine
    battery = [r for r in got if r["device"]["driver"] == "gatt.bas"]
    assert {r["device"]["id"] for r in battery} == {"oximeter", "bike"}
    events = [e.payload for e in entries if e.payload["kind"] == "event"]
    connected = {e["detail"]["device"] for e in events if e["event"] == "device-connected"}
    assert connected == {"oximeter", "bike"}
    # Health values stay out of the log at DEBUG: the daemon runs at DEBUG (write_config), and
    # bleak, dbus-fast and bleak-retry-connector log every value they carry at DEBUG.
    log = (tmp_path / "daemon.log").read_text()
    assert_no_values_in(log, got)
    assert " DEBUG bleak" not in log and " DEBUG dbus_fast" not in log


def _glucose_sequences(entries: list[dict[str, Any]]) -> list[int]:
    return [
        r["status"]["sequence_number"]
        for r in entries
        if r["device"]["driver"] == "gatt.gls"
        and any(o["type"] == "glucose" for o in r["observations"])
    ]


def test_200_stored_glucose_records_arrive_once_through_a_kill_9_mid_transfer(
    bluez: BluezThread, tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    # A few ms per record, as over a real link: the transfer takes long enough to be cut.
    meter = GlucoseMeter(
        address="C0:FF:EE:60:00:01", records=200, first_sequence=1, record_interval=0.01, seed=7
    )
    config = write_config(
        tmp_path,
        broker,
        [ble_device("glucose", "gatt.gls", "C0:FF:EE:60:00:01")],
        extra=BLE_SECTION,
    )
    jwk = hub_jwk(config)
    start_device(bluez, meter, rate=0.001)
    first = start_daemon(config, tmp_path / "daemon-1.log")

    def some(messages: list[Received]) -> bool:
        return len(_glucose_sequences(readings(messages, jwk))) >= 20

    try:
        assert subscriber.wait_for(some, timeout=30), first.log()
        first.kill9()  # mid-transfer: records on the air, some signed, some not yet
        sent_before_kill = meter.records_sent
        assert sent_before_kill < 200, "the transfer ended before the kill: make it slower"
        second = start_daemon(config, tmp_path / "daemon-2.log")

        def all_arrived(messages: list[Received]) -> bool:
            return set(_glucose_sequences(readings(messages, jwk))) >= set(range(1, 201))

        assert subscriber.wait_for(all_arrived, timeout=60), second.log()
        assert second.stop() == 0, second.log()
    finally:
        first.close()

    entries = verify_messages(subscriber.snapshot(), jwk)
    assert_chain(entries)
    # At the platform, after de-duplication by seq (MQTT is at-least-once): each record once.
    unique = {e.payload["seq"]: e.payload for e in entries}
    sequences = _glucose_sequences([p for p in unique.values() if p["kind"] == "reading"])
    assert sorted(sequences) == list(range(1, 201))
    # The second connection asked for the records after the last one stored, not for all.
    assert meter.racp_requests[0] == bytes((0x01, 0x01))
    resumed = meter.racp_requests[-1]
    assert resumed[:3] == bytes((0x01, 0x03, 0x01))
    assert 2 <= int.from_bytes(resumed[3:5], "little") <= 200
    status = run_cli("status", "-c", str(config), "--json")
    assert json.loads(status.stdout)["outbox"]["depth"] == 0


def test_an_unpaired_neighbour_is_listed_by_scan_but_never_ingested(
    bluez: BluezThread, tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    mine = PulseOximeter(
        address="C0:FF:EE:50:00:01", serial="PLX-MINE", stored_records=0, spot_check_every=0, seed=1
    )
    neighbour = PulseOximeter(
        address="C0:FF:EE:50:00:02",
        serial="PLX-NEIGHBOUR",
        stored_records=2,
        spot_check_every=0,
        seed=2,
    )
    config = write_config(
        tmp_path,
        broker,
        [ble_device("oximeter", "gatt.plx", "C0:FF:EE:50:00:01", "summary_interval = 0.2\n")],
        extra=BLE_SECTION,
    )
    jwk = hub_jwk(config)
    start_device(bluez, mine, rate=20)
    start_device(bluez, neighbour, rate=20)
    scanned = run_cli("scan", "--seconds", "1", "--json", "-c", str(config))
    assert scanned.returncode == 0, scanned.stderr
    rows = {row["address"]: row for row in json.loads(scanned.stdout)}
    assert rows["C0:FF:EE:50:00:02"]["driver"] == "gatt.plx"
    assert rows["C0:FF:EE:50:00:02"]["paired"] is None
    assert rows["C0:FF:EE:50:00:01"]["paired"] == "oximeter"

    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        assert subscriber.wait_for(lambda m: len(readings(m, jwk)) >= 10, timeout=30), daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    got = readings(subscriber.snapshot(), jwk)
    assert {r["device"]["address"] for r in got} == {"C0:FF:EE:50:00:01"}
    assert {r["device"]["serial"] for r in got} == {"PLX-MINE"}
    assert neighbour.peripheral.connect_calls == 0
    assert len(neighbour.stored) == 2


def test_at_debug_a_neighbour_of_the_same_kind_is_refused_without_its_serial_in_the_log(
    bluez: BluezThread, tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    mine = PulseOximeter(
        address="C0:FF:EE:50:00:01", serial="PLX-MINE", stored_records=2, spot_check_every=5, seed=1
    )
    neighbour = PulseOximeter(
        address="C0:FF:EE:50:00:02",
        serial="PLX-NEIGHBOUR",
        stored_records=2,
        spot_check_every=5,
        seed=2,
    )
    # Named by serial, not address: the hub connects to each oximeter it hears and asks.
    device = (
        '[[devices]]\nid = "oximeter"\ndriver = "gatt.plx"\nserial = "PLX-MINE"\n'
        'patient = "pt-0001"\nsummary_interval = 0.2\n'
    )
    config = write_config(tmp_path, broker, [device], extra=BLE_SECTION)
    jwk = hub_jwk(config)
    start_device(bluez, neighbour, rate=20)  # heard first: connected, asked, refused
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: "reports another serial" in daemon.log(), 30, "the neighbour's refusal")
        start_device(bluez, mine, rate=20)

        def enough(messages: list[Received]) -> bool:
            got = readings(messages, jwk)
            spot = [r for r in got if r["time"]["device"] is not None]
            return len(got) >= 10 and len(spot) >= 3

        assert subscriber.wait_for(enough, timeout=40), daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    got = readings(subscriber.snapshot(), jwk)
    assert {r["device"]["serial"] for r in got} == {"PLX-MINE"}
    assert neighbour.peripheral.connect_calls >= 1
    assert len(neighbour.stored) == 2  # nothing fetched, nothing deleted
    log = (tmp_path / "daemon.log").read_text()
    assert "C0:FF:EE:50:00:02 reports another serial" in log
    assert "PLX-NEIGHBOUR" not in log
    assert_no_values_in(log, got)
