"""Transient TLS failures retry at the network backoff; stable ones wait long (F-TLS-BACKOFF).

Against a real mosquitto over TLS: a broker killed in the middle of the hub's handshake and
started again, an untrusted CA, a host name mismatch, a refused client certificate, and broker
certificates outside their validity period judged by a synchronised or unsynchronised clock.
The uplink's long pause is 600 s in every test here, so a test that waits for a retry would
run into its deadline if the failure were taken as stable.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.clock import HubClock
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import Entry
from gateway.hub.uplink import Uplink
from gateway.hub.uplink_connection import Publisher
from gateway.sim.broker import Broker, configure
from gateway.sim.pki import Pki, make_pki
from gateway.transport.mqtt import MqttClient, publisher_factory
from gateway.transport.mqtt_connect import MqttSettings, MqttUnreachable
from tests.conftest import BrokerFactory
from tests.harness import run, until

HUB = "hub-0001"
LONG = 600.0
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "rtm-gateway.service"
DAY = datetime.timedelta(days=1)


def append(outbox: Outbox, count: int) -> None:
    entries = [
        Entry(seq, "reading", b'{"seq":%d}' % seq, time.time()) for seq in range(1, count + 1)
    ]
    outbox.append(entries, last_hash=f"hash-{count}")


def kinds(errors: list[BaseException]) -> list[str | None]:
    return [getattr(error, "kind", None) for error in errors]


@dataclass
class Attempts:
    """A publisher factory that counts connect attempts and keeps their errors."""

    settings: MqttSettings
    errors: list[BaseException] = field(default_factory=list)
    count: int = 0

    async def __call__(self, will_topic: str, will_payload: bytes) -> Publisher:
        self.count += 1
        try:
            return await publisher_factory(self.settings, connect_timeout=5)(
                will_topic, will_payload
            )
        except Exception as exc:
            self.errors.append(exc)
            raise


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(tmp_path / "outbox.db")
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def odd_broker(tmp_path: Path) -> Iterator[Any]:
    """Factory: a TLS mosquitto whose server certificate comes from `make_pki(**options)`."""
    brokers: list[Broker] = []

    def start(**options: Any) -> tuple[Broker, Pki]:
        pki = make_pki(tmp_path / f"pki-{len(brokers)}", **options)
        broker = configure(tmp_path, "tls", pki=pki, name=f"odd-{len(brokers)}")
        brokers.append(broker)
        broker.start()
        return broker, pki

    try:
        yield start
    finally:
        for broker in brokers:
            broker.stop()


def _uplink(outbox: Outbox, attempts: Attempts, clock: HubClock, **options: Any) -> Uplink:
    options = {"backoff_initial": 0.01, "backoff_max": 0.05, **options}
    return Uplink(outbox, attempts, HUB, auth_backoff=LONG, clock=lambda: clock, **options)


@pytest.mark.parametrize(
    "case",
    [
        "wrong CA",
        "host name mismatch",
        "expired, clock synced",
        "not yet valid, clock synced",
        "client cert refused",
    ],
)
def test_stable_tls_failures_back_off_long(
    case: str,
    *,
    mosquitto: BrokerFactory,
    pki: Pki,
    odd_broker: Any,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if case == "wrong CA":
        settings = mosquitto("tls").settings(ca_file=str(pki.other_ca_file))
    elif case == "host name mismatch":
        broker, _ = odd_broker(server_names=("broker.example",))
        settings = broker.settings()
    elif case == "expired, clock synced":
        broker, _ = odd_broker(server_window=(-3 * DAY, -DAY))
        settings = broker.settings()
    elif case == "not yet valid, clock synced":
        broker, _ = odd_broker(server_window=(DAY, 3 * DAY))
        settings = broker.settings()
    else:
        settings = mosquitto("mtls").settings(cert_file=None, key_file=None)
    attempts = Attempts(settings)
    append(outbox, 3)
    uplink = _uplink(outbox, attempts, "synced")

    async def scenario() -> None:
        task = asyncio.create_task(uplink.run())
        await until(lambda: bool(uplink.stats.last_error))
        # Long enough for many retries at the 10-50 ms network backoff used here.
        await asyncio.sleep(0.5)
        await uplink.stop(drain_timeout=1)
        await task

    with caplog.at_level(logging.WARNING, logger="gateway.hub.uplink_connection"):
        run(scenario())
    assert attempts.count == 1, attempts.errors
    clock_dependent = "expired" in case or "not yet valid" in case
    assert kinds(attempts.errors) == ["tls-clock" if clock_dependent else "tls"]
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 1
    assert "mqtt TLS failed" in refusals[0]
    assert "Next try in 600 s" in refusals[0]
    assert outbox.depth() == 3


@pytest.mark.parametrize(
    ("case", "window"),
    [("not yet valid", (DAY, 3 * DAY)), ("expired", (-3 * DAY, -DAY))],
)
@pytest.mark.parametrize("clock", ["unsynced", "unknown"])
def test_certificate_dates_wait_for_the_clock_not_the_long_pause(
    case: str,
    window: tuple[datetime.timedelta, datetime.timedelta],
    clock: HubClock,
    *,
    odd_broker: Any,
    outbox: Outbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, _ = odd_broker(server_window=window)
    attempts = Attempts(broker.settings())
    append(outbox, 3)
    uplink = _uplink(outbox, attempts, clock)

    async def scenario() -> None:
        task = asyncio.create_task(uplink.run())
        await until(lambda: attempts.count >= 3)  # a 600 s pause would time out here
        await uplink.stop(drain_timeout=1)
        await task

    with caplog.at_level(logging.WARNING, logger="gateway.hub.uplink_connection"):
        run(scenario())
    assert set(kinds(attempts.errors)) == {"tls-clock"}
    assert f"certificate {'is not yet valid' if case == 'not yet valid' else 'has expired'}" in str(
        attempts.errors[0]
    )
    lines = [r.getMessage() for r in caplog.records]
    assert lines
    assert all("not synchronised yet" in line and "600 s" not in line for line in lines)


def _established_to(port: int) -> bool:
    """A TCP connection to 127.0.0.1:`port` is established (the kernel completes it even while
    the listening process is stopped)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            return True
    return False


def test_broker_killed_mid_handshake_is_retried_within_seconds(
    mosquitto: BrokerFactory, outbox: Outbox
) -> None:
    broker = mosquitto("tls")
    pid = broker.pid
    assert pid is not None
    attempts = Attempts(broker.settings())
    append(outbox, 20)
    # The normal network backoff of a hub (1 s, doubling); the long pause would be 600 s.
    uplink = _uplink(outbox, attempts, "synced", backoff_initial=1.0, backoff_max=5.0)

    async def scenario() -> None:
        os.kill(pid, signal.SIGSTOP)  # the broker accepts TCP in the kernel, answers nothing
        task = asyncio.create_task(uplink.run())
        await until(lambda: _established_to(broker.port))  # the client hello waits for an answer
        os.kill(pid, signal.SIGKILL)  # the broker dies with the handshake in progress
        await asyncio.to_thread(broker.stop)  # reaped
        await asyncio.to_thread(broker.start)  # and back on the same port
        await until(lambda: outbox.depth() == 0, timeout=30)
        await uplink.stop(drain_timeout=2)
        await task

    run(scenario(), timeout=60)
    first = attempts.errors[0]
    assert isinstance(first, MqttUnreachable), first
    assert "handshake" in str(first) and "cut short" in str(first)
    assert uplink.stats.reconnects == 0  # one session: the first one that connected


def test_handshake_cut_by_eof_is_a_network_error(pki: Pki) -> None:
    """A peer that reads the client hello and closes (a load balancer restarting)."""

    async def scenario() -> None:
        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.close()

        server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = MqttClient(
                MqttSettings(host="127.0.0.1", port=port, tls=True, ca_file=str(pki.ca_file))
            )
            with pytest.raises(MqttUnreachable, match="cut short") as caught:
                await client.connect(timeout=5)
            assert isinstance(caught.value.__cause__, ssl.SSLError | ConnectionError)

    run(scenario())


def test_the_unit_starts_after_time_sync() -> None:
    directives = [line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line]
    after = " ".join(value for key, value in directives if key == "After").split()
    wants = " ".join(value for key, value in directives if key == "Wants").split()
    assert "time-sync.target" in after
    assert "time-sync.target" in wants
