"""Shared fixtures: a real mosquitto broker (plain, TLS, mutual TLS), a test PKI, a subscriber.

`mosquitto(mode)` starts the machine's mosquitto on a free loopback port with its config in the
test's tmp_path (`gateway.sim.broker`); `stop()` and `start()` make outages on the same port.
Every broker is stopped at teardown. `mqtt_subscriber(broker, topic)` records what a plain paho
client receives.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.sim.broker import Broker, BrokerMode, configure, find_mosquitto
from gateway.sim.pki import Pki, make_pki
from tests.blelab import bluez

__all__ = [
    "Broker",
    "BrokerFactory",
    "Received",
    "Subscriber",
    "SubscriberFactory",
    "bluez",
]


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """No daemon or simulator outlives the test that started it, even when the test fails."""
    yield
    from tests.harness import close_all

    close_all()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA with server (127.0.0.1, localhost) and client certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


BrokerFactory = Callable[..., Broker]


@pytest.fixture
def mosquitto(tmp_path: Path, pki: Pki) -> Iterator[BrokerFactory]:
    """Factory: `mosquitto(mode="plain"|"tls"|"mtls", users=..., identity_as_username=...,
    extra_config=[...more mosquitto.conf lines], persistence=False)` -> a started `Broker`
    (`gateway.sim.broker`, shared with the benches and the demo).

    `users` turns on a password file (anonymous logins are then refused). Persistence is off by
    default, so a restart forgets retained messages and sessions, like a broker that lost its
    disk; with it, a persistent subscriber misses nothing published while it was reconnecting.
    """
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto not found: the MQTT tests need a real mosquitto broker. "
            "Run the test command from README.md (scripts/test), which installs it."
        )
    brokers: list[Broker] = []

    def start(mode: BrokerMode = "plain", **options: Any) -> Broker:
        broker = configure(tmp_path, mode, pki=pki, name=f"mosquitto-{len(brokers)}", **options)
        brokers.append(broker)
        broker.start()
        return broker

    try:
        yield start
    finally:
        for broker in brokers:
            broker.stop()


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A plain paho client on its own thread that records every message on `topic`."""

    def __init__(self, broker: Broker, topic: str, persistent: bool = False) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._subscribed: queue.Queue[bool] = queue.Queue()
        self.ready = threading.Event()
        """Set while subscribed; cleared when the connection drops (e.g. the broker stopped)."""
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-subscriber-{id(self)}" if persistent else "",
            protocol=paho.MQTTv5,
        )
        client.reconnect_delay_set(1, 1)  # come back quickly after a broker restart
        if broker.mode != "plain":
            client.tls_set(
                ca_certs=str(broker.ca_file),
                certfile=str(broker.client_cert) if broker.mode == "mtls" else None,
                keyfile=str(broker.client_key) if broker.mode == "mtls" else None,
            )
        client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(topic, qos=1)
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = lambda _c, _u, _f, _r, _p: self.ready.clear()
        client.on_message = self._on_message
        self._client = client
        properties = None
        if persistent:  # the broker keeps the session (and queues for it) for an hour
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
            properties.SessionExpiryInterval = 3600
        client.connect(
            broker.host,
            broker.port,
            keepalive=30,
            clean_start=not persistent,
            properties=properties,
        )
        client.loop_start()
        try:
            self._subscribed.get(timeout=10)
        except queue.Empty:
            self.close()
            raise

    def _on_subscribe(self, *_args: Any) -> None:
        self.ready.set()
        self._subscribed.put(True)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        with self._arrived:
            self.messages.append(Received(message.topic, bytes(message.payload), message.retain))
            self._arrived.notify_all()

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> bool:
        """Block until predicate(messages) holds; False on timeout."""
        with self._arrived:
            return self._arrived.wait_for(lambda: predicate(self.messages), timeout)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


SubscriberFactory = Callable[..., Subscriber]
"""`mqtt_subscriber(broker, topic, persistent=False)`."""


@pytest.fixture
def mqtt_subscriber() -> Iterator[SubscriberFactory]:
    """Factory: `mqtt_subscriber(broker, "rtm/v1/#", persistent=False)` -> Subscriber; closed at
    teardown. A persistent subscriber's session outlives broker restarts (with persistence)."""
    subscribers: list[Subscriber] = []

    def make(broker: Broker, topic: str, persistent: bool = False) -> Subscriber:
        subscriber = Subscriber(broker, topic, persistent)
        subscribers.append(subscriber)
        return subscriber

    try:
        yield make
    finally:
        for subscriber in subscribers:
            subscriber.close()
