"""F-SEQ against the real daemon (`rtm-gateway run`), a real mosquitto and a simulated serial
oximeter: a damaged outbox is set aside, the daemon stays up and goes on signing into a new,
announced log that `--strict` verification accepts (after a clean stop naming the old log's
exact end, after kill -9 a lower bound); `rtm-gateway verify --strict --state`
follows a switch after a restore and fails the old log after it; a bad config exits 2 (no
restart loop)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.hub.identity import PublicKey
from gateway.tools.verifier import Verifier
from tests.conftest import BrokerFactory, Received, SubscriberFactory
from tests.harness import (
    cms50d_device,
    hub_jwk,
    run_cli,
    start_daemon,
    start_simulator,
    verify_messages,
    write_config,
)
from tests.test_log_identity import HUB, Run, corrupt_pages, payload, start
from tests.test_verify_streams import _publish_retained, _verify


def _bodies(messages: Iterable[Received]) -> list[dict[str, Any]]:
    """The payloads, unverified (verify_messages checks them with joserfc afterwards)."""
    out = []
    for message in messages:
        if message.topic.endswith(("/readings", "/events")):
            for entry in json.loads(message.payload):
                out.append(json.loads(base64.urlsafe_b64decode(entry["payload"] + "==")))
    return out


def _readings_in(messages: Iterable[Received], log: str | None, *, other: bool = False) -> int:
    return sum(
        1
        for body in _bodies(messages)
        if body["kind"] == "reading" and (body["log"] != log if other else body["log"] == log)
    )


def test_a_damaged_outbox_is_set_aside_and_the_daemon_goes_on_in_a_new_log(
    tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    link = tmp_path / "ttyCMS"
    start_simulator(link, tmp_path / "sim.log", rate=60)
    config = write_config(tmp_path, broker, [cms50d_device(link, interval=0.1)])
    jwk = hub_jwk(config)
    state = tmp_path / "state"

    first = start_daemon(config, tmp_path / "hub1.log")
    assert subscriber.wait_for(lambda m: _readings_in(m, None, other=True) >= 5, 30), first.log()
    assert first.stop() == 0
    (log_a,) = {b["log"] for b in _bodies(subscriber.snapshot())}
    corrupt_pages(state / "outbox.sqlite")

    second = start_daemon(config, tmp_path / "hub2.log")
    try:
        arrived = subscriber.wait_for(lambda m: _readings_in(m, log_a, other=True) >= 5, 30)
        assert arrived, second.log()
        assert second.running  # no crash, no restart loop
    finally:
        assert second.stop() == 0
    log_text = second.log()
    aside = [
        p.name
        for p in state.iterdir()
        if p.name.startswith("outbox.sqlite.damaged-") and not p.name.endswith(("-wal", "-shm"))
    ]
    assert aside, sorted(p.name for p in state.iterdir())
    assert "ERROR" in log_text and aside[0] in log_text

    checked = verify_messages(subscriber.snapshot(), jwk)  # joserfc and the schema
    assert all({"boot", "mono"} <= set(c.payload["time"]) for c in checked)
    started = [c.payload for c in checked if c.payload.get("event") == "log-started"]
    assert [s["detail"]["reason"] for s in started[:1]] == ["new-outbox"]
    damaged = next(s for s in started if s["log"] != log_a)
    assert damaged["seq"] == 1 and damaged["detail"]["reason"] == "outbox-damaged"
    assert damaged["detail"]["previous"]["log"] == log_a
    # A clean stop wrote the head file final: the announcement names log A's exact end.
    seqs_a = [c.payload["seq"] for c in checked if c.payload["log"] == log_a]
    assert damaged["detail"]["previous"]["exact"] is True
    assert damaged["detail"]["previous"]["last_seq"] == max(seqs_a)
    assert damaged["detail"]["set_aside"]["file"] == aside[0]
    # Every (log, seq) has one content, and the pinned-key strict check accepts the switch.
    contents: dict[tuple[str, int], set[str]] = {}
    for c in checked:
        contents.setdefault((c.payload["log"], c.payload["seq"]), set()).add(c.jws["payload"])
    assert all(len(v) == 1 for v in contents.values())
    verifier = Verifier({"hub-test": PublicKey.from_jwk(jwk)}, strict=True, check_schema=True)
    for message in subscriber.snapshot():
        verifier.feed(message.topic, message.payload)
    report = verifier.report()
    assert report.ok, report.render()
    assert report.hubs[0].log_switches == 1


def test_after_a_crash_the_lagging_head_file_is_announced_as_a_lower_bound(
    tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    """kill -9 while readings flow: the head file (written at most once a second) may be
    behind what was sent; after a damaged outbox the new log says so (`exact: false`), and
    `--strict` verification of everything sent accepts the switch."""
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    link = tmp_path / "ttyCMS"
    start_simulator(link, tmp_path / "sim.log", rate=60)
    config = write_config(tmp_path, broker, [cms50d_device(link, interval=0.05)])
    jwk = hub_jwk(config)
    state = tmp_path / "state"

    first = start_daemon(config, tmp_path / "hub1.log")
    assert subscriber.wait_for(lambda m: _readings_in(m, None, other=True) >= 20, 30), first.log()
    first.kill9()  # no drain: the head file stays as the last interval write left it
    head = json.loads((state / "head.json").read_text())
    assert head["final"] is False
    (log_a,) = {b["log"] for b in _bodies(subscriber.snapshot())}
    for name in ("outbox.sqlite", "outbox.sqlite-wal"):  # after kill -9 the WAL holds the rest
        path = state / name
        if path.exists():
            path.write_bytes(b"\x55" * path.stat().st_size)

    second = start_daemon(config, tmp_path / "hub2.log")
    try:
        arrived = subscriber.wait_for(lambda m: _readings_in(m, log_a, other=True) >= 5, 30)
        assert arrived, second.log()
    finally:
        assert second.stop() == 0
    checked = verify_messages(subscriber.snapshot(), jwk)
    damaged = next(
        c.payload
        for c in checked
        if c.payload.get("event") == "log-started" and c.payload["log"] != log_a
    )
    assert damaged["detail"]["reason"] == "outbox-damaged"
    assert damaged["detail"]["previous"] == {
        "log": log_a,
        "last_seq": head["seq"],
        "last_hash": head["hash"],
        "exact": False,
    }
    verifier = Verifier({"hub-test": PublicKey.from_jwk(jwk)}, strict=True, check_schema=True)
    for message in subscriber.snapshot():
        verifier.feed(message.topic, message.payload)
    report = verifier.report()
    assert report.ok, report.render()
    assert report.hubs[0].log_switches == 1


def test_a_bad_config_exits_2_so_systemd_does_not_restart_it(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    state = tmp_path / "state"
    config.write_text(f'[hub]\nid = "hub-1"\nstate_dir = "{state}"\nno_such_key = 1\n')
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert "no_such_key" in result.stderr
    assert not state.exists()  # refused before anything was written


def test_verify_strict_state_follows_a_restore_and_fails_the_old_log_after_it(
    tmp_path: Path, mosquitto: BrokerFactory
) -> None:
    """`rtm-gateway verify --strict --state` over a restore: log A, then the announced log B."""
    broker = mosquitto("plain")
    state_dir, backup = tmp_path / "state", tmp_path / "backup"
    start(state_dir, 4)
    shutil.copytree(state_dir, backup)
    log_a = start(state_dir, 5, clean=True)  # log A: 1..10 (the outbox never sent: all of it)
    for name in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm"):
        if (backup / name).exists():
            shutil.copy2(backup / name, state_dir / name)
    log_b = start(state_dir, 3)  # the restored outbox: log B
    jwk = tmp_path / "hub.jwk"
    jwk.write_text(json.dumps(log_a.state.identity.public_jwk()))
    verify_state = tmp_path / "verify-state.json"
    flags = ("--hub", HUB, "--jwk", str(jwk), "--state", str(verify_state), "--strict")

    def publish(run: Run) -> int:
        by_leaf: dict[str, list[dict[str, Any]]] = {"readings": [], "events": []}
        for obj in run.entries:
            kind = payload(obj, run.state)["kind"]
            by_leaf["readings" if kind == "reading" else "events"].append(obj)
        _publish_retained(
            broker,
            [(f"rtm/v1/{HUB}/{leaf}", json.dumps(objs).encode()) for leaf, objs in by_leaf.items()],
        )
        return len(run.entries)

    first = _verify(broker, *flags, count=publish(log_a))
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads(verify_state.read_text())["hubs"][HUB]["log"] == log_a.log
    second = _verify(broker, *flags, "--json", count=publish(log_b))
    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout)["hubs"][0]["log_switches"] == 1
    head = json.loads(verify_state.read_text())["hubs"][HUB]
    assert (head["log"], head["seq"]) == (log_b.log, 4)  # log-started and 3 readings
    replay = _verify(broker, *flags, count=publish(log_a))  # log A again, after the switch
    assert replay.returncode == 1, replay.stdout
    assert "log-started" in replay.stdout
