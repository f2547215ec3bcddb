"""The platform-side check: signatures, duplicates, conflicts, chain breaks, gaps — fed by hand
to the pure `Verifier`, and once end to end through a real mosquitto with `run_verify`."""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey
from paho.mqtt.enums import CallbackAPIVersion

from gateway.hub.identity import HubIdentity, b64url
from gateway.hub.signer import ChainHead, SignedEntry, Signer
from gateway.sim.broker import configure, find_mosquitto, free_port
from gateway.sim.pki import Pki
from gateway.tools.verifier import Verifier
from gateway.tools.verify import ConnectError, VerifyError, VerifyUsageError, run_verify
from gateway.tools.verify_report import LogHead, VerifyReport
from tests.conftest import BrokerFactory
from tests.test_identity_and_signer import event_body, reading_body

HUB = "hub-0001"
READINGS = f"rtm/v1/{HUB}/readings"
EVENTS = f"rtm/v1/{HUB}/events"


@pytest.fixture
def identity() -> HubIdentity:
    return HubIdentity.generate()


def batch(*entries: SignedEntry | Mapping[str, object]) -> bytes:
    """What the uplink publishes: a JSON array of JWS flattened objects."""
    items = [json.loads(e.jws) if isinstance(e, SignedEntry) else e for e in entries]
    return json.dumps(items).encode()


def sign_log(identity: HubIdentity, count: int) -> list[SignedEntry]:
    signer = Signer(identity, HUB)
    return [signer.sign(reading_body()) for _ in range(count)]


def only_hub(report: VerifyReport) -> dict[str, object]:
    assert len(report.hubs) == 1
    return report.hubs[0].to_dict()


def test_a_clean_log_verifies(identity: HubIdentity) -> None:
    signer = Signer(identity, HUB)
    seen: list[tuple[str, object]] = []
    verifier = Verifier(
        {HUB: identity.public},
        HUB,
        check_schema=True,
        on_entry=lambda topic, payload: seen.append((topic, payload["seq"])),
    )
    verifier.feed(f"rtm/v1/{HUB}/status", b'{"state":"online"}')
    verifier.feed(READINGS, batch(signer.sign(reading_body()), signer.sign(reading_body())))
    verifier.feed(EVENTS, batch(signer.sign(event_body())))
    verifier.feed(f"rtm/v1/{HUB}/cmd/ping", b"ignored")
    verifier.feed("rtm/v1/other-hub/readings", b"[]")  # not the hub we follow
    report = verifier.report()
    assert report.ok
    assert report.key_pinned
    hub = only_hub(report)
    assert hub["received"] == hub["verified"] == 3
    assert (hub["readings"], hub["events"], hub["first_seq"], hub["last_seq"]) == (2, 1, 1, 3)
    assert hub["status"] == {"state": "online"}
    assert hub["schema_errors"] == 0
    assert seen == [(READINGS, 1), (READINGS, 2), (EVENTS, 3)]
    json.dumps(report.to_dict())  # --json output is plain JSON
    assert report.render().startswith("OK: 3 entries from 1 hub(s)")


def test_tampering_is_a_bad_signature(identity: HubIdentity) -> None:
    entries = sign_log(identity, 2)
    forged = json.loads(entries[1].jws)
    text = forged["payload"]
    forged["payload"] = text[:60] + ("A" if text[60] != "A" else "B") + text[61:]
    verifier = Verifier({HUB: identity.public})
    verifier.feed(READINGS, batch(entries[0], forged))
    report = verifier.report()
    assert not report.ok
    hub = report.hubs[0]
    assert (hub.received, hub.verified, hub.bad_signatures) == (2, 1, 1)
    assert "does not verify" in hub.problems[0].reason
    assert "FAILED" in report.render()


def test_duplicates_are_counted_and_harmless(identity: HubIdentity) -> None:
    entries = sign_log(identity, 3)
    calls: list[object] = []
    verifier = Verifier({HUB: identity.public}, on_entry=lambda _t, p: calls.append(p["seq"]))
    verifier.feed(READINGS, batch(*entries))
    verifier.feed(READINGS, batch(*entries[1:]))  # a QoS 1 redelivery
    report = verifier.report()
    assert report.ok
    hub = report.hubs[0]
    assert (hub.received, hub.duplicates, hub.conflicts, hub.gaps) == (5, 2, 0, ())
    assert calls == [1, 2, 3]


def test_different_content_under_one_seq_is_a_conflict(identity: HubIdentity) -> None:
    signer = Signer(identity, HUB)
    first = signer.sign(reading_body())
    # A hub that reuses seqs within one log (what a restored backup did before logs had ids)
    replay = Signer(identity, HUB, log=signer.log)
    other = replay.sign(reading_body(patient="p-other"))
    verifier = Verifier({HUB: identity.public})
    verifier.feed(READINGS, batch(first, other))
    report = verifier.report()
    assert not report.ok
    hub = report.hubs[0]
    assert (hub.conflicts, hub.duplicates, hub.problems[0].kind, hub.problems[0].seq) == (
        1,
        0,
        "conflict",
        1,
    )


def test_chain_breaks_are_found_in_either_arrival_order(identity: HubIdentity) -> None:
    signer = Signer(identity, HUB)
    one, two = signer.sign(reading_body()), signer.sign(reading_body())
    signer.head = ChainHead(2, b64url(b"\x00" * 32))  # a head that is not seq 2's hash
    three, four = signer.sign(reading_body()), signer.sign(reading_body())
    for order in ([one, two, three, four], [four, three, two, one]):
        verifier = Verifier({HUB: identity.public})
        verifier.feed(READINGS, batch(*order))
        hub = verifier.report().hubs[0]
        assert hub.chain_breaks == 1
        assert [(p.kind, p.seq) for p in hub.problems] == [("chain-break", 3)]
        assert not verifier.report().ok


def test_out_of_order_arrivals_are_counted(identity: HubIdentity) -> None:
    entries = sign_log(identity, 4)
    verifier = Verifier({HUB: identity.public})
    verifier.feed(READINGS, batch(entries[0], entries[2]))
    verifier.feed(READINGS, batch(entries[1], entries[3]))
    report = verifier.report()
    assert report.ok
    assert (report.hubs[0].out_of_order, report.hubs[0].gaps) == (1, ())


def test_gaps_are_reported_apart_from_announced_gaps(identity: HubIdentity) -> None:
    signer = Signer(identity, HUB)
    entries = [signer.sign(reading_body()) for _ in range(9)]  # seq 1..9
    gap = signer.sign(
        event_body("gap", {"first_seq": 3, "last_seq": 4, "count": 2, "reason": "outbox-cap"})
    )  # seq 10
    verifier = Verifier({HUB: identity.public})
    verifier.feed(READINGS, batch(entries[0], entries[1], entries[4], entries[8]))
    verifier.feed(EVENTS, batch(gap))
    report = verifier.report()
    assert report.ok  # gaps are reported, not failures
    hub = report.hubs[0]
    assert hub.announced_gaps == ((3, 4),)
    assert hub.gaps == ((6, 8),)
    assert "gaps (missing, unexplained): 6..8" in report.render()


def test_eddsa_is_accepted_and_a_forged_none_is_rejected(identity: HubIdentity) -> None:
    payload = {"v": 1, "hub": HUB, "log": "A" * 22, "seq": 1, "prev": "", **event_body()}
    with pytest.warns(SecurityWarning, match="deprecated"):
        eddsa = jws.serialize_json(
            {"protected": {"alg": "EdDSA", "kid": identity.kid}},
            json.dumps(payload),
            OKPKey.import_key(identity.private_key),
            algorithms=["EdDSA"],
        )
    second = Signer(identity, HUB, ChainHead(1, "x")).sign(event_body())
    none = dict(
        json.loads(second.jws),
        signature="",
        protected=b64url(json.dumps({"alg": "none", "kid": identity.kid}).encode()),
    )
    verifier = Verifier({HUB: identity.public})
    verifier.feed(EVENTS, batch(eddsa, none))
    hub = verifier.report().hubs[0]
    assert (hub.verified, hub.bad_signatures) == (1, 1)
    assert "alg 'none' is not accepted" in hub.problems[0].reason


def test_wrong_pinned_key_and_malformed_messages(identity: HubIdentity) -> None:
    verifier = Verifier({HUB: HubIdentity.generate().public})
    verifier.feed(READINGS, batch(*sign_log(identity, 1)))
    verifier.feed(READINGS, b"{not json")
    verifier.feed(READINGS, b'[{"payload": "x"}]')
    hub = verifier.report().hubs[0]
    assert (hub.received, hub.bad_signatures, hub.malformed) == (2, 2, 1)
    assert f"kid {identity.kid} is not the key of hub {HUB}" in hub.problems[0].reason


def test_payload_hub_must_match_the_topic(identity: HubIdentity) -> None:
    entry = Signer(identity, "someone-else").sign(reading_body())
    verifier = Verifier({HUB: identity.public})
    verifier.feed(READINGS, batch(entry))
    hub = verifier.report().hubs[0]
    assert (hub.verified, hub.malformed, hub.last_seq) == (1, 1, None)
    assert "differs from the topic's hub" in hub.problems[0].reason


def test_schema_errors_are_reported(identity: HubIdentity) -> None:
    signer = Signer(identity, HUB)
    bad = signer.sign(
        reading_body(
            observations=[{"type": "spo2", "value": 0, "unit": "%", "absent": "not-a-number"}]
        )
    )
    verifier = Verifier({HUB: identity.public}, check_schema=True)
    verifier.feed(READINGS, batch(bad))
    hub = verifier.report().hubs[0]
    assert (hub.verified, hub.schema_errors, hub.problems[0].kind) == (1, 1, "schema")


def test_a_status_key_is_used_only_when_trusted_and_then_fails(identity: HubIdentity) -> None:
    entries = sign_log(identity, 2)
    status = json.dumps({"state": "online", "jwk": identity.public_jwk()}).encode()
    untrusted = Verifier(hub=HUB)  # told to trust nothing: the status key is not a key
    untrusted.feed(f"rtm/v1/{HUB}/status", status)
    untrusted.feed(READINGS, batch(*entries))
    hub = untrusted.report().hubs[0]
    assert (hub.verified, hub.bad_signatures, hub.key_source, hub.ok) == (0, 2, "none", False)
    assert f"no key is pinned for hub {HUB}" in hub.problems[0].reason

    verifier = Verifier(hub=HUB, trust_status_keys=True)
    verifier.feed(READINGS, batch(entries[0]))  # before the key: waits for it
    verifier.feed(f"rtm/v1/{HUB}/status", status)
    verifier.feed(READINGS, batch(entries[1]))
    report = verifier.report()
    assert not report.ok  # every entry verified, and still a failure: nothing was pinned
    assert not report.key_pinned
    hub = report.hubs[0]
    assert (hub.verified, hub.bad_signatures, hub.key_source) == (2, 0, "status")
    assert any("unsigned status message" in failure for failure in hub.failures)
    assert "FAILED: the key was taken from the hub's unsigned status" in report.render()


def test_a_second_status_key_is_never_trusted(identity: HubIdentity) -> None:
    attacker = HubIdentity.generate()
    verifier = Verifier(trust_status_keys=True)
    for key_owner in (identity, attacker):
        jwk = key_owner.public_jwk()
        verifier.feed(f"rtm/v1/{HUB}/status", json.dumps({"jwk": jwk}).encode())
    verifier.feed(READINGS, batch(*sign_log(attacker, 1)))
    hub = verifier.report().hubs[0]
    assert (hub.verified, hub.bad_signatures) == (0, 1)
    assert [p.kind for p in hub.problems] == ["key-change", "bad-signature"]
    assert any("other keys announced" in failure for failure in hub.failures)


def test_no_key_at_all_fails(identity: HubIdentity) -> None:
    verifier = Verifier()
    verifier.feed(READINGS, batch(*sign_log(identity, 2)))
    report = verifier.report()
    assert not report.ok
    assert (report.hubs[0].bad_signatures, report.hubs[0].key_source) == (2, "none")


def test_a_key_is_trusted_only_for_its_own_hub(identity: HubIdentity) -> None:
    other = HubIdentity.generate()
    verifier = Verifier({HUB: identity.public, "hub-B": other.public})
    cross = Signer(identity, "hub-B").sign(reading_body())  # hub-B's entry, hub A's key
    verifier.feed("rtm/v1/hub-B/readings", batch(cross))
    verifier.feed(READINGS, batch(*sign_log(identity, 1)))
    report = verifier.report()
    own, cross_hub = report.hubs
    assert (own.hub, own.ok, own.verified) == (HUB, True, 1)
    assert (cross_hub.hub, cross_hub.ok, cross_hub.verified) == ("hub-B", False, 0)
    assert (
        cross_hub.problems[0].reason == f"signed with the key pinned for hub {HUB}, not hub hub-B's"
    )


def test_strict_fails_gaps_a_cut_tail_and_schema_errors(identity: HubIdentity) -> None:
    signer = Signer(identity, HUB)
    entries = [signer.sign(reading_body()) for _ in range(6)]
    for strict in (False, True):
        verifier = Verifier({HUB: identity.public}, strict=strict, expected_last={HUB: 8})
        verifier.feed(READINGS, batch(entries[0], entries[2], entries[3]))
        hub = verifier.report().hubs[0]
        assert hub.gaps == ((2, 2), (5, 8))  # seq 2 lost, the tail 5..8 cut
        assert hub.ok is not strict
    assert hub.failures == ("unexplained gaps: 2, 5..8 (strict)",)
    schema = Verifier({HUB: identity.public}, strict=True, check_schema=True)
    bad = signer.sign(reading_body(observations=[{"type": "spo2", "value": "x", "unit": "%"}]))
    schema.feed(READINGS, batch(bad))
    assert schema.report().hubs[0].failures == ("1 schema errors (strict)",)
    silent = Verifier({HUB: identity.public}, HUB, strict=True, expected_last={HUB: 3})
    (quiet,) = silent.report().hubs  # a hub expected but never heard from
    assert (quiet.received, quiet.gaps, quiet.ok) == (0, ((1, 3),), False)


def test_an_earlier_head_anchors_the_next_run(identity: HubIdentity) -> None:
    signer = Signer(identity, HUB)
    entries = [signer.sign(reading_body()) for _ in range(6)]
    head = LogHead(3, entries[2].hash, signer.log)
    follows = Verifier({HUB: identity.public}, strict=True, earlier={HUB: head})
    follows.feed(READINGS, batch(entries[2], entries[3], entries[4]))  # seq 3: a re-send
    hub = follows.report().hubs[0]
    assert (hub.ok, hub.first_seq, hub.last_seq, hub.duplicates) == (True, 4, 5, 1)
    assert hub.head == LogHead(5, entries[4].hash, signer.log)

    late = Verifier({HUB: identity.public}, strict=True, earlier={HUB: head})
    late.feed(READINGS, batch(entries[5]))
    assert late.report().hubs[0].failures == (
        "first seq 6, expected 4 (strict)",
        "unexplained gaps: 4..5 (strict)",
    )

    replay = Verifier({HUB: identity.public}, earlier={HUB: head})
    replay.feed(READINGS, batch(*entries[:2]))
    hub = replay.report().hubs[0]
    assert (hub.replayed, hub.ok, hub.first_seq, hub.head) == (2, False, None, head)
    assert hub.problems[0].kind == "replay"

    # A hub restored from a backup taken at seq 2 that went on in the same log
    rewound = Signer(identity, HUB, log=signer.log)
    for _ in range(2):
        rewound.sign(reading_body())
    fork = rewound.sign(reading_body(patient="p-other"))  # another seq 3
    forked = Verifier({HUB: identity.public}, earlier={HUB: head})
    forked.feed(READINGS, batch(fork, rewound.sign(reading_body())))
    hub = forked.report().hubs[0]
    assert (hub.conflicts, hub.chain_breaks, hub.ok) == (1, 1, False)


# --- against a real broker ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _VerifyBroker:
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def verify_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_VerifyBroker]:
    """A private plain mosquitto for this module (the per-test ones come from conftest)."""
    with configure(tmp_path_factory.mktemp("verify-broker")) as broker:
        yield _VerifyBroker(broker.port)


def _publish(port: int, messages: list[tuple[str, bytes, bool]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for topic, payload, retain in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def _run_in_thread(
    **kwargs: object,
) -> tuple[threading.Thread, threading.Event, list[VerifyReport | BaseException]]:
    ready = threading.Event()
    out: list[VerifyReport | BaseException] = []

    def target() -> None:
        try:
            out.append(run_verify(on_ready=ready.set, **kwargs))  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the test thread
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(10), out
    return thread, ready, out


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
def test_run_verify_against_a_real_broker(
    verify_broker: _VerifyBroker, tmp_path: Path, identity: HubIdentity
) -> None:
    jwk_path = tmp_path / "hub.jwk"
    jwk_path.write_text(json.dumps(identity.public_jwk()))
    signer = Signer(identity, HUB)
    readings = [signer.sign(reading_body()) for _ in range(5)]
    event = signer.sign(event_body("device-lost", {"device": "oxi-1"}))
    status = json.dumps({"state": "online", "jwk": identity.public_jwk()}).encode()
    _publish(verify_broker.port, [(f"rtm/v1/{HUB}/status", status, True)])

    for pinned in (True, False):
        arrived: list[int] = []
        thread, _, out = _run_in_thread(
            url=verify_broker.url,
            hub=HUB,
            jwk_path=jwk_path if pinned else None,
            trust_status_keys=not pinned,
            count=7,
            seconds=20.0,
            protocol="5" if pinned else "3.1.1",
            on_entry=lambda _topic, payload, arrived=arrived: arrived.append(int(payload["seq"])),
        )
        _publish(
            verify_broker.port,
            [
                (READINGS, batch(*readings[:3]), False),
                (EVENTS, batch(event), False),
                (READINGS, batch(*readings[2:]), False),  # seq 3 again: a duplicate
            ],
        )
        thread.join(30)
        (report,) = out
        assert isinstance(report, VerifyReport), report
        assert report.ok is pinned, report.render()  # a status key fails the run
        assert report.stopped_by == "count"
        assert report.key_pinned is pinned
        hub = report.hubs[0]
        assert (hub.received, hub.verified, hub.duplicates, hub.readings, hub.events) == (
            7,
            7,
            1,
            5,
            1,
        )
        assert hub.status is not None
        assert hub.status["state"] == "online"
        assert sorted(arrived) == [1, 2, 3, 4, 5, 6]


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
def test_run_verify_stops_after_seconds_and_fails_clearly(
    verify_broker: _VerifyBroker, tmp_path: Path
) -> None:
    jwk_path = tmp_path / "hub.jwk"
    jwk_path.write_text(json.dumps(HubIdentity.generate().public_jwk()))
    report = run_verify(verify_broker.url, hub="quiet-hub", jwk_path=jwk_path, seconds=0.3)
    assert (report.received, report.stopped_by, report.ok) == (0, "time", True)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"quiet-hub": HubIdentity.generate().public_jwk()}))
    with pytest.raises(ConnectError, match="TLS handshake"):
        run_verify(f"mqtts://127.0.0.1:{verify_broker.port}", keys_path=keys, seconds=0.1)
    with pytest.raises(VerifyError, match="does not exist"):
        run_verify(verify_broker.url, hub=HUB, jwk_path=tmp_path / "missing.jwk", seconds=0.1)
    with pytest.raises(VerifyUsageError, match="no key to verify with"):
        run_verify(verify_broker.url, seconds=0.1)
    with pytest.raises(VerifyUsageError, match="name that hub with --hub"):
        run_verify(verify_broker.url, jwk_path=jwk_path, seconds=0.1)


def test_run_verify_refused_connection_is_a_clear_error() -> None:
    with pytest.raises(ConnectError, match="refused: is the broker running"):
        run_verify(f"mqtt://127.0.0.1:{free_port()}", trust_status_keys=True, seconds=0.1)
    with pytest.raises(VerifyError, match="mqtt:// or mqtts://"):
        run_verify("http://127.0.0.1:1883", seconds=0.1)


@pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")
def test_run_verify_over_mutual_tls_and_its_tls_errors_name_the_flags(
    mosquitto: BrokerFactory, pki: Pki
) -> None:
    broker = mosquitto("mtls")
    url = f"mqtts://localhost:{broker.port}"
    cert, key = pki.client_cert, pki.client_key
    # No hub publishes here: only the connection is checked, so nothing needs pinning.
    verify = functools.partial(run_verify, trust_status_keys=True)
    report = run_verify(
        url, trust_status_keys=True, ca_file=pki.ca_file, seconds=0.3, cert_file=cert, key_file=key
    )
    assert (report.received, report.stopped_by, report.ok) == (0, "time", True)
    with pytest.raises(ConnectError, match="--ca-file"):
        run_verify(
            url,
            trust_status_keys=True,
            ca_file=pki.other_ca_file,
            seconds=5,
            cert_file=cert,
            key_file=key,
        )
    with pytest.raises(ConnectError, match="--cert-file"):  # the broker wants a client cert
        verify(url, ca_file=pki.ca_file, seconds=5)
