"""Shared fixtures: a real mosquitto broker (plain, TLS, mutual TLS), a test PKI, a subscriber.

`mosquitto(mode)` starts /usr/sbin/mosquitto on a free loopback port with its config in the test's
tmp_path; `stop()` and `start()` make outages on the same port. Every broker is stopped at
teardown. `mqtt_subscriber(broker, topic)` records what a plain paho client receives.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.transport.mqtt_connect import MqttSettings
from tests.blelab import bluez  # noqa: F401  (a fixture, shared by the BLE tests)
from tests.certs import TestPki, make_pki

MOSQUITTO = "/usr/sbin/mosquitto"
BrokerMode = Literal["plain", "tls", "mtls"]


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    """No daemon or simulator outlives the test that started it, even when the test fails."""
    yield
    from tests.harness import close_all

    close_all()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A throwaway CA with server (127.0.0.1, localhost) and client certificates."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Write users in mosquitto's format: mosquitto_passwd when present, else the same $7$ hash."""
    path.write_text("")
    passwd = shutil.which("mosquitto_passwd")
    for user, password in users.items():
        if passwd:
            subprocess.run([passwd, "-b", str(path), user, password], check=True, timeout=10)
            continue
        # mosquitto 2.0's "$7$": PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, base64.
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
        encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
        with path.open("a") as handle:
            handle.write(f"{user}:$7$101${encoded[0]}${encoded[1]}\n")


@dataclass
class Broker:
    """A running (or stopped) mosquitto. Paths are None where the mode does not use them."""

    mode: BrokerMode
    port: int
    config_file: Path
    log_file: Path
    host: str = "127.0.0.1"
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        scheme = "mqtt" if self.mode == "plain" else "mqtts"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def settings(self, **changes: Any) -> MqttSettings:
        """MqttSettings that reach this broker (with the client certificate under mtls)."""
        base = MqttSettings(
            host=self.host,
            port=self.port,
            tls=self.mode != "plain",
            ca_file=str(self.ca_file) if self.ca_file else None,
            cert_file=str(self.client_cert) if self.mode == "mtls" and self.client_cert else None,
            key_file=str(self.client_key) if self.mode == "mtls" and self.client_key else None,
        )
        return replace(base, **changes)

    def start(self, timeout: float = 10.0) -> None:
        """Start on the same port; return once the port accepts connections."""
        if self.running:
            return
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config_file)], stdout=log, stderr=log
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}; its log:\n"
                    + self.log_file.read_text(errors="replace")
                )
            with contextlib.suppress(OSError), socket.create_connection(self.address, 0.2):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s). Clients see the connection drop."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


BrokerFactory = Callable[..., Broker]


@pytest.fixture
def mosquitto(tmp_path: Path, pki: TestPki) -> Iterator[BrokerFactory]:
    """Factory: `mosquitto(mode="plain"|"tls"|"mtls", users=..., identity_as_username=...,
    extra_config=[...more mosquitto.conf lines])` -> a started `Broker`.

    `users` turns on a password file (anonymous logins are then refused). Persistence is off, so
    a restart forgets retained messages and sessions, like a broker that lost its disk.
    """
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.fail(
            f"{MOSQUITTO} not found: the MQTT tests need a real mosquitto broker. "
            "Run the test command from README.md (.ci/run), which installs it."
        )
    brokers: list[Broker] = []

    def start(
        mode: BrokerMode = "plain",
        *,
        users: Mapping[str, str] | None = None,
        identity_as_username: bool = False,
        extra_config: Sequence[str] = (),
        persistence: bool = False,
    ) -> Broker:
        index = len(brokers)
        port = _free_port()
        store = tmp_path / f"mosquitto-{index}-store"
        store.mkdir()
        lines = [
            "per_listener_settings false",
            # With persistence, sessions and queued messages survive a stop/start: a persistent
            # subscriber then misses nothing published while it was reconnecting.
            *(
                ["persistence true", f"persistence_location {store}/", "max_queued_messages 0"]
                if persistence
                else ["persistence false"]
            ),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            f"user {getpass.getuser()}",
            f"listener {port} 127.0.0.1",
        ]
        if mode != "plain":
            lines += [
                f"cafile {pki.ca_file}",
                f"certfile {pki.server_cert}",
                f"keyfile {pki.server_key}",
            ]
        if mode == "mtls":
            lines.append("require_certificate true")
            if identity_as_username:
                lines.append("use_identity_as_username true")
        if users:
            password_file = tmp_path / f"mosquitto-{index}.passwd"
            _write_password_file(password_file, users)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        lines += extra_config
        config = tmp_path / f"mosquitto-{index}.conf"
        config.write_text("\n".join(lines) + "\n")
        broker = Broker(
            mode=mode,
            port=port,
            config_file=config,
            log_file=tmp_path / f"mosquitto-{index}.log",
            ca_file=pki.ca_file if mode != "plain" else None,
            client_cert=pki.client_cert if mode != "plain" else None,
            client_key=pki.client_key if mode != "plain" else None,
        )
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
            properties = Properties(PacketTypes.CONNECT)
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


@pytest.fixture
def mqtt_subscriber() -> Iterator[Callable[..., Subscriber]]:
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
