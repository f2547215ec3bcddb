"""End to end: a simulated oximeter on a pty -> the daemon -> a real mosquitto -> a subscriber
that checks every signature with joserfc, the payload schema, the chain and contiguous seq."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BrokerFactory, Received, SubscriberFactory
from tests.harness import (
    assert_chain,
    cms50d_device,
    hub_jwk,
    run_cli,
    seqs,
    start_daemon,
    start_simulator,
    verify_messages,
    write_config,
)


def count_entries(messages: list[Received], suffix: str = "/readings") -> int:
    return sum(len(json.loads(m.payload)) for m in messages if m.topic.endswith(suffix))


def enough(messages: list[Received], jwk: dict[str, Any]) -> bool:
    """20 oximeter readings, one with a real SpO2 value (the simulator has finger-out spells),
    and a reading from the line device."""
    if count_entries(messages) < 20:
        return False
    readings = [e.payload for e in verify_messages(messages, jwk) if e.payload["kind"] == "reading"]
    oximeter = [r for r in readings if r["device"]["id"] == "oximeter"]
    return (
        len(oximeter) >= 20
        and any(r["device"]["id"] == "peak-flow" for r in readings)
        and any(
            o["type"] == "spo2" and o["value"] is not None
            for r in oximeter
            for o in r["observations"]
        )
    )


KV_DEVICE = """[[devices]]
id = "peak-flow"
driver = "generic.kv-lines"
port = "{port}"
patient = "pt-0001"
[devices.options]
time_key = "t"
[devices.options.keys]
pef = {{ type = "peak_expiratory_flow" }}
fev1 = {{ type = "fev1" }}
"""


@pytest.mark.parametrize(
    ("mode", "protocol"), [("plain", "5"), ("tls", "5"), ("mtls", "5"), ("plain", "3.1.1")]
)
def test_readings_reach_the_broker_signed(
    tmp_path: Path,
    mosquitto: BrokerFactory,
    mqtt_subscriber: SubscriberFactory,
    mode: str,
    protocol: str,
) -> None:
    broker = mosquitto(mode)
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    link = tmp_path / "ttyCMS50D"
    simulator = start_simulator(link, tmp_path / "sim.log", rate=60)
    kv_link = tmp_path / "ttyPeakFlow"
    kv_simulator = start_simulator(kv_link, tmp_path / "kv.log", rate=10, driver="generic.kv-lines")
    config = write_config(
        tmp_path,
        broker,
        [cms50d_device(link, interval=0.1), KV_DEVICE.format(port=kv_link)],
        mqtt_extra=f'protocol = "{protocol}"',
    )
    jwk = hub_jwk(config)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        arrived = subscriber.wait_for(lambda m: enough(m, jwk), timeout=40)
        assert arrived, daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
        simulator.close()
        kv_simulator.close()

    messages = subscriber.snapshot()
    entries = verify_messages(messages, jwk)
    distinct = sorted(set(seqs(entries)))
    assert distinct == list(range(1, distinct[-1] + 1)), "seq must be contiguous from 1"
    assert_chain(entries)

    readings = [e.payload for e in entries if e.payload["kind"] == "reading"]
    oximeter = [r for r in readings if r["device"]["id"] == "oximeter"]
    peak_flow = [r for r in readings if r["device"]["id"] == "peak-flow"]
    assert len(oximeter) >= 20
    assert peak_flow, "the line device's readings arrive too"
    for reading in readings:
        assert reading["hub"] == "hub-test"
        assert reading["patient"] == "pt-0001"
        for observation in reading["observations"]:
            assert (observation["value"] is None) == ("absent" in observation)
    for reading in oximeter:
        assert reading["device"]["driver"] == "contec.cms50d"
        assert {o["type"] for o in reading["observations"]} <= {"spo2", "pulse_rate"}
    # The simulator spends most of its time with a finger in: real values arrive.
    assert any(
        o["value"] is not None and o["type"] == "spo2" for r in oximeter for o in r["observations"]
    )
    for reading in peak_flow:
        assert reading["device"]["driver"] == "generic.kv-lines"
        assert {o["type"]: o["unit"] for o in reading["observations"]} == {
            "peak_expiratory_flow": "L/min",
            "fev1": "L",
        }
        assert reading["time"]["device"] is not None  # from the line's t= key
        assert "batt" in reading["status"]  # an unmapped key is kept
    events = [e.payload["event"] for e in entries if e.payload["kind"] == "event"]
    assert "hub-started" in events and "device-connected" in events

    statuses = [json.loads(m.payload)["state"] for m in messages if m.topic.endswith("/status")]
    assert statuses[0] == "online" and statuses[-1] == "offline"

    # Every seq the outbox ever assigned arrived, and nothing waits after a clean stop.
    status = run_cli("status", "-c", str(config), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["outbox"]["depth"] == 0
    assert report["outbox"]["last_seq"] == distinct[-1]
    assert report["daemon_running"] is False
    # Health data stays out of the log at DEBUG: no raw bytes, no line content, no values.
    log = (tmp_path / "daemon.log").read_text()
    assert "pef=" not in log
    assert "fev1=" not in log
    for reading in readings[:50]:
        raw = base64.b64decode(reading["raw"])
        assert raw.hex() not in log
        assert reading["raw"] not in log
    counted = {d["id"]: d["readings"] for d in report["devices"]}
    assert counted == {
        "oximeter": len({r["seq"] for r in oximeter}),
        "peak-flow": len({r["seq"] for r in peak_flow}),
    }
