"""End to end: a simulated oximeter on a pty -> the daemon -> a real mosquitto -> a subscriber
that checks every signature with joserfc, the payload schema, the chain and contiguous seq."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Received
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


def enough(messages: list[Received], jwk: dict) -> bool:
    """20 readings, at least one with a real SpO2 value (the simulator has finger-out spells)."""
    if count_entries(messages) < 20:
        return False
    return any(e.payload["kind"] == "reading" and any(
        o["type"] == "spo2" and o["value"] is not None for o in e.payload["observations"])
        for e in verify_messages(messages, jwk))


@pytest.mark.parametrize("mode", ["plain", "tls", "mtls"])
def test_oximeter_readings_reach_the_broker_signed(tmp_path: Path, mosquitto, mqtt_subscriber,
                                                    mode: str) -> None:
    broker = mosquitto(mode)
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    link = tmp_path / "ttyCMS50D"
    simulator = start_simulator(link, tmp_path / "sim.log", rate=60)
    config = write_config(tmp_path, broker, [cms50d_device(link, interval=0.1)])
    jwk = hub_jwk(config)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        arrived = subscriber.wait_for(lambda m: enough(m, jwk), timeout=40)
        assert arrived, daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
        simulator.close()

    messages = subscriber.snapshot()
    entries = verify_messages(messages, jwk)
    distinct = sorted(set(seqs(entries)))
    assert distinct == list(range(1, distinct[-1] + 1)), "seq must be contiguous from 1"
    assert_chain(entries)

    readings = [e.payload for e in entries if e.payload["kind"] == "reading"]
    assert len(readings) >= 20
    for reading in readings:
        assert reading["hub"] == "hub-test" and reading["patient"] == "pt-0001"
        assert reading["device"]["id"] == "oximeter"
        assert reading["device"]["driver"] == "contec.cms50d"
        for observation in reading["observations"]:
            assert observation["type"] in {"spo2", "pulse_rate"}
            assert (observation["value"] is None) == ("absent" in observation)
    # The simulator spends most of its time with a finger in: real values arrive.
    assert any(o["value"] is not None and o["type"] == "spo2"
               for r in readings for o in r["observations"])
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
    device = report["devices"][0]
    assert device["id"] == "oximeter"
    assert device["readings"] == len({r["seq"] for r in readings})
