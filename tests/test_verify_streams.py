"""F-VERIFY through the real path: hostile streams on a real mosquitto, checked by the real
`rtm-gateway verify` process. One test per attack of the security review: a forged stream
(with a forged status key), a cross-hub stream (hub B's entries signed with hub A's key), a
replay of an earlier capture into a fresh run, and a truncated stream (a lost entry and a cut
tail).

The streams are published retained, one batch per topic, before verify starts: the broker hands
them over on subscription, so no test races the subscriber's start (the verifier does not look
at the retain flag).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from gateway.hub.identity import HubIdentity
from gateway.hub.signer import SignedEntry, Signer
from gateway.sim.broker import Broker
from gateway.sim.pki import Pki
from tests.conftest import BrokerFactory
from tests.harness import run_cli
from tests.test_identity_and_signer import reading_body

HUB_A, HUB_B = "hub-A", "hub-B"


def _topic(hub: str, leaf: str) -> str:
    return f"rtm/v1/{hub}/{leaf}"


def _batch(entries: list[SignedEntry]) -> bytes:
    return json.dumps([json.loads(e.jws) for e in entries]).encode()


def _publish_retained(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if broker.mode != "plain":
        client.tls_set(
            ca_certs=str(broker.ca_file),
            certfile=str(broker.client_cert) if broker.mode == "mtls" else None,
            keyfile=str(broker.client_key) if broker.mode == "mtls" else None,
        )
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def _verify(broker: Broker, *flags: str, count: int) -> subprocess.CompletedProcess[str]:
    tls: list[str] = []
    if broker.mode != "plain":
        tls = ["--ca-file", str(broker.ca_file)]
    if broker.mode == "mtls":
        tls += ["--cert-file", str(broker.client_cert), "--key-file", str(broker.client_key)]
    return run_cli(
        "verify", "--url", broker.url, *tls, *flags, "--count", str(count), "--seconds", "20"
    )


def _jwk_file(path: Path, identity: HubIdentity) -> Path:
    path.write_text(json.dumps(identity.public_jwk()))
    return path


def test_a_forged_stream_with_a_forged_status_key_fails(
    tmp_path: Path, mosquitto: BrokerFactory, pki: Pki
) -> None:
    broker = mosquitto("mtls")  # the platform's broker: the attacker only has publish rights
    assert broker.ca_file == pki.ca_file
    hub, forger = HubIdentity.generate(), HubIdentity.generate()
    forged = Signer(forger, HUB_A)
    status = {"state": "online", "jwk": forger.public_jwk()}  # the attacker's key
    _publish_retained(
        broker,
        [
            (_topic(HUB_A, "status"), json.dumps(status).encode()),
            (_topic(HUB_A, "readings"), _batch([forged.sign(reading_body()) for _ in range(3)])),
        ],
    )
    jwk = _jwk_file(tmp_path / "hub-a.jwk", hub)

    nothing_pinned = _verify(broker, "--hub", HUB_A, count=3)
    assert nothing_pinned.returncode == 2, nothing_pinned.stdout
    assert "no key to verify with: give --keys FILE" in nothing_pinned.stderr

    pinned = _verify(broker, "--hub", HUB_A, "--jwk", str(jwk), "--json", count=3)
    assert pinned.returncode == 1, pinned.stderr
    (report,) = json.loads(pinned.stdout)["hubs"]
    assert (report["verified"], report["bad_signatures"], report["key_source"]) == (0, 3, "pinned")
    assert f"kid {forger.kid} is not the key of hub {HUB_A}" in report["problems"][0]["reason"]

    trusted = _verify(broker, "--hub", HUB_A, "--trust-status-key", count=3)
    assert trusted.returncode == 1, trusted.stdout  # every signature checks out, and still 1
    assert "3/3 verified" in trusted.stdout
    assert "FAILED: the key was taken from the hub's unsigned status message" in trusted.stdout


def test_a_cross_hub_stream_fails(tmp_path: Path, mosquitto: BrokerFactory) -> None:
    broker = mosquitto("plain")
    hub_a, hub_b = HubIdentity.generate(), HubIdentity.generate()
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({HUB_A: hub_a.public_jwk(), HUB_B: hub_b.public_jwk()}))
    # Hub A's identity copied onto a box calling itself hub B (F-CLONE): a valid signature,
    # by the wrong hub.
    cloned = Signer(hub_a, HUB_B)
    genuine = Signer(hub_a, HUB_A)
    _publish_retained(
        broker,
        [
            (_topic(HUB_B, "readings"), _batch([cloned.sign(reading_body()) for _ in range(2)])),
            (_topic(HUB_A, "readings"), _batch([genuine.sign(reading_body())])),
        ],
    )
    result = _verify(broker, "--keys", str(keys), "--json", count=3)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    by_hub = {hub["hub"]: hub for hub in report["hubs"]}
    assert (by_hub[HUB_A]["ok"], by_hub[HUB_A]["verified"]) == (True, 1)
    assert (by_hub[HUB_B]["ok"], by_hub[HUB_B]["verified"]) == (False, 0)
    reason = f"signed with the key pinned for hub {HUB_A}, not hub {HUB_B}'s"
    assert by_hub[HUB_B]["problems"][0]["reason"] == reason

    one_hub = _verify(broker, "--hub", HUB_A, "--keys", str(keys), count=1)
    assert one_hub.returncode == 0, one_hub.stdout  # hub A's own log is fine


def test_a_replayed_capture_fails_against_the_state(
    tmp_path: Path, mosquitto: BrokerFactory
) -> None:
    broker = mosquitto("plain")
    hub = HubIdentity.generate()
    jwk = _jwk_file(tmp_path / "hub-a.jwk", hub)
    state = tmp_path / "verify-state.json"
    signer = Signer(hub, HUB_A)
    log = [signer.sign(reading_body()) for _ in range(5)]
    flags = ("--hub", HUB_A, "--jwk", str(jwk), "--state", str(state), "--strict")

    _publish_retained(broker, [(_topic(HUB_A, "readings"), _batch(log[:3]))])
    first = _verify(broker, *flags, count=3)
    assert first.returncode == 0, first.stdout + first.stderr
    heads = json.loads(state.read_text())["hubs"]
    assert heads == {HUB_A: {"log": signer.log, "seq": 3, "hash": log[2].hash}}

    # The same capture again, into a fresh run: without the state it would pass.
    replayed = _verify(broker, *flags, "--json", count=3)
    assert replayed.returncode == 1, replayed.stderr
    (report,) = json.loads(replayed.stdout)["hubs"]
    assert (report["replayed"], report["duplicates"], report["verified"]) == (2, 1, 3)
    assert any("replayed" in failure for failure in report["failures"])
    assert json.loads(state.read_text())["hubs"][HUB_A]["seq"] == 3  # not moved on

    _publish_retained(broker, [(_topic(HUB_A, "readings"), _batch(log[3:]))])
    follows = _verify(broker, *flags, count=2)  # the genuine continuation still passes
    assert follows.returncode == 0, follows.stdout
    assert json.loads(state.read_text())["hubs"][HUB_A]["seq"] == 5


def test_a_truncated_stream_fails_strict(tmp_path: Path, mosquitto: BrokerFactory) -> None:
    broker = mosquitto("plain")
    hub = HubIdentity.generate()
    jwk = _jwk_file(tmp_path / "hub-a.jwk", hub)
    signer = Signer(hub, HUB_A)
    log = [signer.sign(reading_body()) for _ in range(6)]
    # Seq 2 suppressed and the tail 5..6 cut: what reaches the platform is 1, 3, 4.
    _publish_retained(broker, [(_topic(HUB_A, "readings"), _batch([log[0], log[2], log[3]]))])
    flags = ("--hub", HUB_A, "--jwk", str(jwk), "--expect-last-seq", f"{HUB_A}=6")

    lenient = _verify(broker, *flags, count=3)
    assert lenient.returncode == 0, lenient.stdout  # reported, not failed, without --strict
    assert "gaps (missing, unexplained): 2, 5..6" in lenient.stdout

    strict = _verify(broker, *flags, "--strict", "--json", count=3)
    assert strict.returncode == 1, strict.stderr
    (report,) = json.loads(strict.stdout)["hubs"]
    assert report["gaps"] == [[2, 2], [5, 6]]
    assert report["failures"] == ["unexplained gaps: 2, 5..6 (strict)"]
