"""F-CLONE: a state dir belongs to one machine. A copy on another machine is refused (exit 2,
so systemd does not restart it) unless the move is declared, which is signed as `hub-moved`;
`hub-started` says which machine and which boot signed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from pathlib import Path

import pytest

from gateway.hub.machine import MACHINE_FILE, MachineMovedError, bind_state_dir, machine_hash
from tests.conftest import BrokerFactory, Received, SubscriberFactory
from tests.harness import Process, hub_jwk, run_cli, verify_messages, write_config


def test_the_machine_hash_is_stable_and_does_not_reveal_the_id(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    first = machine_hash((machine_id,))
    assert first == machine_hash((machine_id,))
    assert first is not None and "0123456789abcdef" not in first
    assert machine_hash((tmp_path / "none",)) is None


def test_a_state_dir_from_another_machine_is_refused_unless_the_move_is_declared(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert bind_state_dir(state, moved=False, machine="a" * 32).moved_from is None
    assert (state / MACHINE_FILE).read_text().strip() == "a" * 32
    assert bind_state_dir(state, moved=False, machine="a" * 32).moved_from is None
    with pytest.raises(MachineMovedError, match="--moved"):
        bind_state_dir(state, moved=False, machine="b" * 32)
    moved = bind_state_dir(state, moved=True, machine="b" * 32)
    assert (moved.machine, moved.moved_from) == ("b" * 32, "a" * 32)
    assert bind_state_dir(state, moved=False, machine="b" * 32).moved_from is None


@pytest.mark.skipif(machine_hash() is None, reason="this system has no machine id")
def test_the_daemon_refuses_a_copied_state_dir_then_signs_the_declared_move(
    tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    config = write_config(tmp_path, broker, [])
    state = tmp_path / "state"
    state.mkdir()
    (state / MACHINE_FILE).write_text("f" * 32 + "\n")  # made on another machine
    refused = run_cli("run", "-c", str(config))
    assert refused.returncode == 2, refused.stderr
    assert "another machine" in refused.stderr
    assert not (state / "outbox.sqlite").exists()  # refused before anything was written

    events = mqtt_subscriber(broker, "rtm/v1/+/events")
    daemon = Process(["run", "-c", str(config), "--moved"], tmp_path / "hub.log")
    try:
        started = events.wait_for(lambda messages: "hub-started" in _events(messages), 20)
        assert started, daemon.log()
    finally:
        assert daemon.stop() == 0
    checked = verify_messages(events.messages, hub_jwk(config))
    by_name = {c.payload["event"]: c.payload["detail"] for c in checked}
    assert by_name["hub-moved"] == {"from": "f" * 32, "to": machine_hash()}
    detail = by_name["hub-started"]
    assert detail["machine"] == machine_hash()
    assert isinstance(detail["boot"], str) and len(detail["boot"]) >= 32


def _events(messages: Iterable[Received]) -> list[str]:
    """The event names in the messages, unverified (verify_messages checks them afterwards)."""
    names = []
    for message in messages:
        for entry in json.loads(message.payload):
            body = json.loads(base64.urlsafe_b64decode(entry["payload"] + "=="))
            names.append(body.get("event"))
    return names
