"""Uplink: the real outbox forwarded to a real mosquitto, through outages, kills and clean stops."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import Entry
from gateway.hub.uplink import Uplink
from gateway.hub.uplink_batches import make_batches
from gateway.hub.uplink_connection import Publisher
from gateway.transport.mqtt import MqttClient, publisher_factory
from gateway.transport.mqtt_connect import MqttUnreachable, MqttWill
from tests.conftest import Broker, BrokerFactory, Received, Subscriber
from tests.harness import run, until

SubscriberFactory = Callable[[Broker, str], Subscriber]
HUB = "hub-0001"
BASE = f"rtm/v1/{HUB}"
REPO = Path(__file__).resolve().parent.parent


def append(outbox: Outbox, count: int, kind: Literal["reading", "event"] = "reading") -> None:
    first = outbox.head()[0] + 1
    entries = [
        Entry(seq, kind, json.dumps({"payload": f"jws-{seq}", "seq": seq}).encode(), time.time())
        for seq in range(first, first + count)
    ]
    outbox.append(entries, last_hash=f"hash-{first + count - 1}")


def factory(broker: Broker, gate: Subscriber | None = None) -> Callable[[str, bytes], Any]:
    """A publisher factory; with `gate`, it refuses until the subscriber is listening again."""

    async def connect(will_topic: str, will_payload: bytes) -> Publisher:
        client = MqttClient(broker.settings(will=MqttWill(will_topic, will_payload)))
        await client.connect(timeout=5)
        if gate is not None and not gate.ready.is_set():
            await client.disconnect()
            raise MqttUnreachable("test: subscriber not listening yet")
        return client

    return connect


def seqs_on(messages: list[Received], topic: str) -> list[int]:
    return [item["seq"] for m in messages if m.topic == topic for item in json.loads(m.payload)]


def statuses(messages: list[Received]) -> list[str]:
    return [json.loads(m.payload)["state"] for m in messages if m.topic == f"{BASE}/status"]


@pytest.fixture
def outbox(tmp_path: Path) -> Any:
    box = Outbox.open(tmp_path / "outbox.db")
    try:
        yield box
    finally:
        box.close()


@dataclass(frozen=True)
class _Fake:
    seq: int
    kind: Literal["reading", "event"]
    body: bytes


def test_make_batches_groups_runs_of_one_kind() -> None:
    reading: Literal["reading", "event"] = "reading"
    event: Literal["reading", "event"] = "event"
    kinds = [reading] * 5 + [event] * 2 + [reading] * 3
    entries = [_Fake(i + 1, kind, b'{"s":%d}' % (i + 1)) for i, kind in enumerate(kinds)]
    batches = make_batches(entries, batch_size=3, max_messages=10, base_topic="p/h")
    assert [(b.topic, b.seqs) for b in batches] == [
        ("p/h/readings", (1, 2, 3)),
        ("p/h/readings", (4, 5)),
        ("p/h/events", (6, 7)),
        ("p/h/readings", (8, 9, 10)),
    ]
    assert batches[2].payload == b'[{"s":6},{"s":7}]'
    assert len(make_batches(entries, batch_size=3, max_messages=2, base_topic="p/h")) == 2


def test_forwards_everything_in_order_and_stops_cleanly(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory, outbox: Outbox
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, f"{BASE}/#")
    append(outbox, 250)
    append(outbox, 3, "event")
    append(outbox, 120)
    uplink = Uplink(
        outbox,
        factory(broker),
        HUB,
        batch_size=100,
        window=4,
        idle_timeout=300,
        status_extra={"version": "0.1.0"},
    )

    async def scenario() -> None:
        task = asyncio.create_task(uplink.run())
        await until(lambda: outbox.depth() == 0)
        assert uplink.stats.connected
        assert uplink.stats.entries_published == 373
        # Idle: no busy polling (CPU time: polling would use the whole second), and
        # new entries go out on wake() without waiting for the idle timeout (300 s).
        cpu = time.process_time()
        await asyncio.sleep(1.0)
        assert time.process_time() - cpu < 0.2
        append(outbox, 2)
        uplink.wake()
        await until(lambda: outbox.depth() == 0, timeout=30)
        await uplink.stop(drain_timeout=2)
        await task
        assert not uplink.stats.connected

    run(scenario(), timeout=90)
    assert subscriber.wait_for(lambda msgs: statuses(msgs)[-1:] == ["offline"], timeout=5)
    messages = subscriber.snapshot()
    readings = seqs_on(messages, f"{BASE}/readings")
    assert readings == [*range(1, 251), *range(254, 376)]
    assert seqs_on(messages, f"{BASE}/events") == [251, 252, 253]
    sizes = [len(json.loads(m.payload)) for m in messages if m.topic.endswith("/readings")]
    assert sizes == [100, 100, 50, 100, 20, 2]
    assert all(not m.retain for m in messages if not m.topic.endswith("/status"))
    assert statuses(messages) == ["online", "offline"]
    online = json.loads(next(m.payload for m in messages if m.topic.endswith("/status")))
    assert online == {"state": "online", "version": "0.1.0"}
    assert outbox.get_meta("last_publish") is not None


def test_broker_outage_loses_nothing_and_deletes_only_after_puback(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory, outbox: Outbox
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, f"{BASE}/#")
    append(outbox, 100)
    uplink = Uplink(
        outbox,
        factory(broker, gate=subscriber),
        HUB,
        batch_size=25,
        window=4,
        backoff_initial=0.1,
        backoff_max=0.5,
    )

    async def scenario() -> None:
        task = asyncio.create_task(uplink.run())
        await until(lambda: outbox.depth() == 0)
        await until(lambda: len(seqs_on(subscriber.snapshot(), f"{BASE}/readings")) == 100)
        await asyncio.to_thread(broker.stop)
        await until(lambda: not uplink.stats.connected, timeout=5)
        for _ in range(10):  # the pipeline keeps appending during the outage
            append(outbox, 20)
            uplink.wake()
            await asyncio.sleep(0.2)
            assert outbox.depth() == outbox.head()[0] - 100  # nothing deleted without PUBACK
        assert outbox.depth() == 200
        assert "lost" in uplink.stats.last_error or "refused" in uplink.stats.last_error
        await asyncio.to_thread(broker.start)
        await until(lambda: outbox.depth() == 0, timeout=15)
        assert uplink.stats.reconnects >= 1
        await uplink.stop(drain_timeout=2)
        await task

    run(scenario())
    expected = list(range(1, 301))
    assert subscriber.wait_for(
        lambda msgs: set(expected) <= set(seqs_on(msgs, f"{BASE}/readings")), timeout=5
    )
    received = seqs_on(subscriber.snapshot(), f"{BASE}/readings")
    first_seen = list(dict.fromkeys(received))
    assert first_seen == expected  # complete and in order; duplicates would be allowed


_KILLED_HUB = """
import asyncio, sys
from gateway.hub.outbox import Outbox
from gateway.transport.mqtt import publisher_factory
from gateway.transport.mqtt_connect import MqttSettings
from gateway.hub.uplink import Uplink

port, path = int(sys.argv[1]), sys.argv[2]

async def main():
    connect = publisher_factory(MqttSettings("127.0.0.1", port), connect_timeout=5)
    with Outbox.open(path) as outbox:
        await Uplink(outbox, connect, "hub-0001").run()

asyncio.run(main())
"""


def test_will_marks_a_killed_hub_offline(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory, tmp_path: Path
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, f"{BASE}/status")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    hub = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_HUB), str(broker.port), str(tmp_path / "o")],
        env=env,
        cwd=REPO,
    )
    try:
        assert subscriber.wait_for(lambda msgs: statuses(msgs) == ["online"], timeout=15)
        assert hub.poll() is None
        hub.send_signal(signal.SIGKILL)
        hub.wait(timeout=5)
        assert subscriber.wait_for(lambda msgs: statuses(msgs) == ["online", "offline"], timeout=5)
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait(timeout=5)
    # Retained: a platform subscribing later still learns the hub is offline.
    late = Subscriber(broker, f"{BASE}/status")
    try:
        assert late.wait_for(lambda msgs: len(msgs) == 1, timeout=5)
        assert late.snapshot()[0].retain
        assert statuses(late.snapshot()) == ["offline"]
    finally:
        late.close()


def test_bad_password_backs_off_with_a_clear_log_and_stop_interrupts(
    mosquitto: BrokerFactory, outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    broker = mosquitto("plain", users={HUB: "right"})
    append(outbox, 5)

    async def wrong_password(will_topic: str, will_payload: bytes) -> Publisher:
        settings = broker.settings(username=HUB, password="wrong")  # noqa: S106
        client = MqttClient(settings)
        await client.connect(timeout=5)
        return client

    uplink = Uplink(outbox, wrong_password, HUB, backoff_initial=0.01, auth_backoff=600)

    async def scenario() -> None:
        task = asyncio.create_task(uplink.run())
        await until(lambda: bool(uplink.stats.last_error))
        await asyncio.sleep(0.3)
        await uplink.stop(drain_timeout=1)
        # Done as stop() returns: stop cut the 600 s pause short; it did not give up on the
        # uplink at its own time limit (which leaves the task running).
        assert task.done()
        await task

    with caplog.at_level(logging.ERROR, logger="gateway.hub.uplink_connection"):
        run(scenario())
    refusals = [r for r in caplog.records if "check mqtt username/password_file" in r.getMessage()]
    assert len(refusals) == 1  # one attempt, then the long pause: never hammered
    assert outbox.depth() == 5
    assert uplink.stats.reconnects == 0
    assert not uplink.stats.connected


def test_mutual_tls_uplink(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory, outbox: Outbox
) -> None:
    broker = mosquitto("mtls", identity_as_username=True)
    subscriber = mqtt_subscriber(broker, f"{BASE}/readings")
    append(outbox, 1000)
    uplink = Uplink(outbox, publisher_factory(broker.settings(), connect_timeout=5), HUB)

    async def scenario() -> None:
        task = asyncio.create_task(uplink.run())
        await until(lambda: outbox.depth() == 0)
        await uplink.stop(drain_timeout=2)
        await task

    run(scenario())
    assert subscriber.wait_for(
        lambda msgs: len(seqs_on(msgs, f"{BASE}/readings")) >= 1000, timeout=5
    )
    assert list(dict.fromkeys(seqs_on(subscriber.snapshot(), f"{BASE}/readings"))) == list(
        range(1, 1001)
    )


def test_a_quiet_spell_longer_than_the_ack_timeout_is_not_a_lost_broker(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory, outbox: Outbox
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, f"{BASE}/#")
    append(outbox, 3)
    uplink = Uplink(outbox, factory(broker), HUB, ack_timeout=0.5, idle_timeout=300)

    async def scenario() -> None:
        task = asyncio.create_task(uplink.run())
        await until(lambda: outbox.depth() == 0)
        await asyncio.sleep(1.0)  # longer than ack_timeout with nothing to send
        append(outbox, 2)
        uplink.wake()
        await until(lambda: outbox.depth() == 0, timeout=3)
        assert uplink.stats.reconnects == 0
        await uplink.stop(drain_timeout=2)
        await task

    run(scenario())
    # The subscriber is another client: the last status reaches it some time after stop().
    assert subscriber.wait_for(lambda msgs: statuses(msgs)[-1:] == ["offline"], timeout=5)
    messages = subscriber.snapshot()
    assert seqs_on(messages, f"{BASE}/readings") == [1, 2, 3, 4, 5]
    assert statuses(messages) == ["online", "offline"]


def test_stop_sends_what_the_outbox_still_holds(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory, outbox: Outbox
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, f"{BASE}/#")
    uplink = Uplink(outbox, factory(broker), HUB, batch_size=50, window=2)

    async def scenario() -> None:
        task = asyncio.create_task(uplink.run())
        await until(lambda: uplink.stats.connected)
        append(outbox, 700)  # committed just before SIGTERM: not yet leased
        await uplink.stop(drain_timeout=5)
        await task

    run(scenario())
    assert outbox.depth() == 0
    assert subscriber.wait_for(lambda m: statuses(m)[-1:] == ["offline"], timeout=5)
    assert seqs_on(subscriber.snapshot(), f"{BASE}/readings") == list(range(1, 701))


def test_acks_the_store_refused_are_kept_and_committed_by_the_retry(
    mosquitto: BrokerFactory,
    mqtt_subscriber: SubscriberFactory,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every entry is published and acknowledged while the store refuses writes (here SQLite's
    query_only; on a hub, a full disk): no further ack comes to trigger a flush, so the uplink
    retries it on its own, and the kept acks are committed once the store takes writes. The
    failure is logged once, however many retries fail."""
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, f"{BASE}/#")
    append(outbox, 120)
    uplink = Uplink(outbox, factory(broker), HUB, batch_size=50, window=4, idle_timeout=300)

    async def scenario() -> None:
        outbox.flush()
        outbox._conn.execute("PRAGMA query_only = 1")
        task = asyncio.create_task(uplink.run())
        # Published and acknowledged by the broker, but the deletes cannot be committed yet.
        await until(
            lambda: seqs_on(subscriber.snapshot(), f"{BASE}/readings") == list(range(1, 121)),
            timeout=30,
        )
        await asyncio.sleep(2.5)  # a few retries fail meanwhile
        assert outbox._conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 120
        outbox._conn.execute("PRAGMA query_only = 0")
        await until(lambda: outbox._conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0)
        await uplink.stop(drain_timeout=2)
        await task

    with caplog.at_level(logging.DEBUG, "gateway.hub.uplink"):
        run(scenario(), timeout=90)
    refused = [r for r in caplog.records if "the acks are kept and retried" in r.getMessage()]
    assert len(refused) >= 3  # refused acks, then flush retries every second
    assert [r.levelno for r in refused] == [logging.WARNING] + [logging.DEBUG] * (len(refused) - 1)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r not in refused]
    assert "outbox acks are committed again" in caplog.text
    assert seqs_on(subscriber.snapshot(), f"{BASE}/readings") == list(range(1, 121))
    assert outbox.depth() == 0
