"""MqttClient against a real mosquitto: plain, TLS, mutual TLS, MQTT 3.1.1, auth and TLS errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.sim.pki import Pki
from gateway.transport.mqtt import MqttClient
from gateway.transport.mqtt_connect import (
    MqttAuthError,
    MqttConnectError,
    MqttDisconnected,
    MqttSettings,
    MqttTlsError,
    MqttUnreachable,
    MqttWill,
)
from gateway.transport.mqtt_url import MqttUrl, parse_mqtt_url
from tests.conftest import Broker, BrokerFactory, Subscriber
from tests.harness import run

SubscriberFactory = Callable[[Broker, str], Subscriber]


def test_parse_mqtt_url() -> None:
    assert parse_mqtt_url("mqtt://broker.example:1884") == MqttUrl("broker.example", 1884, False)
    assert parse_mqtt_url("mqtts://broker.example") == MqttUrl("broker.example", 8883, True)
    assert parse_mqtt_url("mqtt://10.0.0.2") == MqttUrl("10.0.0.2", 1883, False)
    with_login = parse_mqtt_url("mqtts://hub%2D1:s%40cret@broker.example")
    assert (with_login.username, with_login.password) == ("hub-1", "s@cret")
    for bad, says in (
        ("http://x", "must start with"),
        ("mqtt://", "no host"),
        ("mqtt://h:99999", "invalid port"),
        ("mqtt://h/path", "only scheme"),
    ):
        with pytest.raises(ValueError, match=says):
            parse_mqtt_url(bad)


async def _publish_round_trip(settings: MqttSettings, subscriber: Subscriber) -> None:
    client = MqttClient(settings)
    await client.connect(timeout=5)
    assert client.is_connected
    futures = [client.publish("t/data", f"m{i}".encode(), qos=1) for i in range(50)]
    futures.append(client.publish("t/data", b"q0", qos=0))
    await asyncio.gather(*futures)
    assert client.in_flight == 0
    await client.disconnect()
    assert not client.is_connected
    assert subscriber.wait_for(lambda msgs: len(msgs) == 51, timeout=5)
    # QoS 1 messages keep their order; the QoS 0 one may overtake them at the broker.
    qos1 = [m.payload for m in subscriber.snapshot() if m.payload != b"q0"]
    assert qos1 == [f"m{i}".encode() for i in range(50)]


@pytest.mark.parametrize("mode", ["plain", "tls", "mtls"])
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_publish_is_acknowledged(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory, mode: str, protocol: str
) -> None:
    broker = mosquitto(mode)
    subscriber = mqtt_subscriber(broker, "t/#")
    run(_publish_round_trip(broker.settings(protocol=protocol), subscriber))


def test_mtls_identity_as_username(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("mtls", identity_as_username=True)
    subscriber = mqtt_subscriber(broker, "t/#")
    run(_publish_round_trip(broker.settings(), subscriber))


def test_mtls_without_client_certificate_is_refused(mosquitto: BrokerFactory) -> None:
    broker = mosquitto("mtls")
    client = MqttClient(broker.settings(cert_file=None, key_file=None))
    with pytest.raises(MqttTlsError, match="cert_file"):
        run(client.connect(timeout=5))
    assert not client.is_connected


def test_wrong_ca_is_a_tls_error(mosquitto: BrokerFactory, pki: Pki) -> None:
    broker = mosquitto("tls")
    client = MqttClient(broker.settings(ca_file=str(pki.other_ca_file)))
    with pytest.raises(MqttTlsError, match="ca_file"):
        run(client.connect(timeout=5))


def test_missing_tls_file_is_a_tls_error(mosquitto: BrokerFactory, pki: Pki) -> None:
    broker = mosquitto("tls")
    client = MqttClient(broker.settings(ca_file=str(pki.ca_file) + ".missing"))
    with pytest.raises(MqttTlsError, match="cannot load TLS files"):
        run(client.connect(timeout=5))


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_bad_password_is_an_auth_error(mosquitto: BrokerFactory, protocol: str) -> None:
    broker = mosquitto("plain", users={"hub1": "right-password"})
    good = MqttClient(broker.settings(username="hub1", password="right-password"))  # noqa: S106

    async def good_login() -> None:
        await good.connect(timeout=5)
        await good.disconnect()

    run(good_login())
    for username, password in (("hub1", "wrong"), (None, None)):
        client = MqttClient(
            broker.settings(username=username, password=password, protocol=protocol)
        )
        with pytest.raises(MqttAuthError, match="username/password_file") as caught:
            run(client.connect(timeout=5))
        assert caught.value.kind == "auth"


def test_refused_port_is_unreachable(mosquitto: BrokerFactory) -> None:
    broker = mosquitto("plain")
    broker.stop()
    client = MqttClient(broker.settings())
    with pytest.raises(MqttUnreachable):
        run(client.connect(timeout=2))


def test_silent_server_times_out_as_unreachable() -> None:
    import socket

    # A listening socket that never answers: TCP connects, CONNACK never comes.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = MqttClient(MqttSettings(host="127.0.0.1", port=port))
        with pytest.raises(MqttUnreachable, match="no CONNACK"):
            run(client.connect(timeout=0.5))


def test_connection_loss_fails_in_flight_publishes(mosquitto: BrokerFactory) -> None:
    broker = mosquitto("plain")

    async def scenario() -> None:
        client = MqttClient(broker.settings())
        await client.connect(timeout=5)
        await client.publish("t/x", b"before", qos=1)
        waiter = asyncio.ensure_future(client.wait_disconnected())
        await asyncio.to_thread(broker.stop)
        async with asyncio.timeout(5):
            await waiter
        assert not client.is_connected
        with pytest.raises(MqttDisconnected):
            await client.publish("t/x", b"after", qos=1)
        # The same client connects again once the broker is back.
        await asyncio.to_thread(broker.start)
        await client.connect(timeout=5)
        await client.publish("t/x", b"again", qos=1)
        await client.disconnect()

    run(scenario())


def test_abort_triggers_the_will_and_disconnect_does_not(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "will/#")
    will = MqttWill("will/a", b"gone")

    async def scenario() -> None:
        clean = MqttClient(broker.settings(will=MqttWill("will/clean", b"gone")))
        await clean.connect(timeout=5)
        await clean.disconnect()
        dirty = MqttClient(broker.settings(will=will, client_id="dirty"))
        await dirty.connect(timeout=5)
        dirty.abort()
        assert not dirty.is_connected

    run(scenario())
    assert subscriber.wait_for(lambda msgs: any(m.topic == "will/a" for m in msgs), timeout=5)
    assert all(m.topic != "will/clean" for m in subscriber.snapshot())


def test_disconnect_with_will_on_mqtt5(
    mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "will/#")

    async def scenario() -> None:
        client = MqttClient(broker.settings(will=MqttWill("will/b", b"gone")))
        await client.connect(timeout=5)
        await client.disconnect(with_will=True)

    run(scenario())
    assert subscriber.wait_for(lambda msgs: any(m.topic == "will/b" for m in msgs), timeout=5)


def test_errors_share_one_base() -> None:
    for error in (MqttAuthError, MqttTlsError, MqttUnreachable):
        assert issubclass(error, MqttConnectError)
