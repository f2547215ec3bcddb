"""Hub identity, JWS signing and the hash chain, checked by an independent JOSE library
(joserfc) and the published JSON Schema (jsonschema), not only by our own verifier."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey
from jsonschema import Draft202012Validator

from gateway.hub.identity import HubIdentity, IdentityError, PublicKey, b64url, load_public_jwk
from gateway.hub.jws import SignatureError, chain_hash, parse_jws, verify_entry
from gateway.hub.signer import ChainHead, Signer, SigningError
from gateway.sdk import Observation

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = ROOT / "docs" / "schema" / "payload.schema.json"


def reading_body(**changes: Any) -> dict[str, object]:
    """A reading body as `hub.entry_bodies.reading_body` builds it (wire-form observations)."""
    body: dict[str, object] = {
        "kind": "reading",
        "patient": "p-7f3a9c",
        "device": {
            "id": "oxi-1",
            "driver": "contec.cms50d",
            "driver_version": "1.0.0",
            "model": "CMS50D+",
            "port": "/dev/ttyUSB0",
        },
        "time": {
            "hub": "2025-03-01T10:15:30.123Z",
            "hub_clock": "synced",
            "boot": "6f1c2a4e-3b7d-4c1e-9a52-0d8e7f6a5b4c",
            "mono": 81_234_567,
            "device": "2025-03-01T11:15:29.000",
            "device_clock": "set",
        },
        "observations": [
            Observation.known("spo2", 97).wire(),
            Observation.known("pulse_rate", 72).wire(),
            Observation.known("perfusion_index", None, "not-a-number").wire(),
        ],
        "status": {"finger_out": False, "signal_strength": 4},
        "raw": base64.b64encode(b"\x81\x04\x48\x61").decode("ascii"),
    }
    body.update(changes)
    return body


def event_body(
    event: str = "hub-started", detail: dict[str, object] | None = None
) -> dict[str, object]:
    return {
        "kind": "event",
        "event": event,
        "time": {
            "hub": "2025-03-01T10:15:31Z",
            "hub_clock": "unsynced",
            "boot": "6f1c2a4e-3b7d-4c1e-9a52-0d8e7f6a5b4c",
            "mono": 81_235_001,
        },
        "detail": detail if detail is not None else {"version": "0.1.0"},
    }


@pytest.fixture
def identity() -> HubIdentity:
    return HubIdentity.generate()


@pytest.fixture
def joserfc_key(identity: HubIdentity) -> OKPKey:
    jwk: dict[str, str | list[str]] = {**identity.public_jwk()}
    return OKPKey.import_key(jwk)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# --- identity -----------------------------------------------------------------------------------


def test_key_file_is_created_0600_and_reloaded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = HubIdentity.load_or_create(state)
    key_file = state / "identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.path == key_file
    assert HubIdentity.load_or_create(state).public == first.public
    assert [p.name for p in state.iterdir()] == ["identity.key"]  # no temporary file left


def test_key_file_is_standard_pkcs8_pem(tmp_path: Path) -> None:
    identity = HubIdentity.load_or_create(tmp_path)
    loaded = load_pem_private_key((tmp_path / "identity.key").read_bytes(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    assert PublicKey.from_key(loaded.public_key()) == identity.public


def test_key_written_by_another_tool_is_loaded(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "identity.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    assert HubIdentity.load_or_create(tmp_path).public == PublicKey.from_key(key.public_key())


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    HubIdentity.load_or_create(tmp_path)
    key_file = tmp_path / "identity.key"
    key_file.chmod(0o644)
    with pytest.raises(IdentityError, match=r"chmod 600") as info:
        HubIdentity.load_or_create(tmp_path)
    assert str(key_file) in str(info.value)
    assert "-rw-r--r--" in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_corrupt_key_is_refused_not_replaced(tmp_path: Path, content: bytes) -> None:
    key_file = tmp_path / "identity.key"
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    with pytest.raises(IdentityError, match=r"not an Ed25519 private key.*Restore it"):
        HubIdentity.load_or_create(tmp_path)
    assert key_file.read_bytes() == content


def test_kid_is_the_rfc7638_thumbprint(identity: HubIdentity, joserfc_key: OKPKey) -> None:
    jwk = identity.public_jwk()
    assert jwk == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": identity.public.x,
        "kid": identity.kid,
        "alg": "Ed25519",
        "use": "sig",
    }
    assert identity.kid == joserfc_key.thumbprint()
    assert not joserfc_key.is_private


def test_load_public_jwk_from_file_and_dict(tmp_path: Path, identity: HubIdentity) -> None:
    path = tmp_path / "hub.jwk"
    path.write_text(json.dumps(identity.public_jwk()))
    assert load_public_jwk(path) == identity.public
    assert load_public_jwk({"keys": [identity.public_jwk()]}) == identity.public
    with pytest.raises(IdentityError, match="does not exist"):
        load_public_jwk(tmp_path / "missing.jwk")
    with pytest.raises(IdentityError, match="thumbprint"):
        load_public_jwk({**identity.public_jwk(), "kid": "someone-else"})
    with pytest.raises(IdentityError, match="Ed25519"):
        load_public_jwk({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"})


# --- signing ------------------------------------------------------------------------------------


def test_joserfc_verifies_flattened_jws(identity: HubIdentity, joserfc_key: OKPKey) -> None:
    signer = Signer(identity, "hub-0001")
    entry = signer.sign(reading_body())
    obj = json.loads(entry.jws)
    assert set(obj) == {"protected", "payload", "signature"}
    verified = jws.deserialize_json(obj, joserfc_key, algorithms=["Ed25519"])
    assert verified.headers() == {"alg": "Ed25519", "kid": identity.kid}
    payload = json.loads(verified.payload)
    assert payload == {
        "v": 1,
        "hub": "hub-0001",
        "log": signer.log,
        "seq": 1,
        "prev": "",
        **reading_body(),
    }
    assert list(payload)[:6] == ["v", "hub", "log", "seq", "prev", "kind"]
    assert verify_entry(entry.jws, identity.public) == payload


def test_chain_links_entries(identity: HubIdentity, joserfc_key: OKPKey) -> None:
    signer = Signer(identity, "hub-0001")
    entries = [signer.sign(reading_body()), signer.sign(event_body()), signer.sign(reading_body())]
    assert [e.seq for e in entries] == [1, 2, 3]
    assert [e.kind for e in entries] == ["reading", "event", "reading"]
    prev = ""
    for entry in entries:
        obj = json.loads(entry.jws)
        payload = json.loads(jws.deserialize_json(obj, joserfc_key, algorithms=["Ed25519"]).payload)
        assert payload["prev"] == prev
        signing_input = f"{obj['protected']}.{obj['payload']}".encode("ascii")
        assert entry.hash == b64url(hashlib.sha256(signing_input).digest()) == chain_hash(obj)
        prev = entry.hash
    assert signer.head == ChainHead(3, entries[-1].hash) == entries[-1].head


def test_signer_continues_from_a_head_and_rolls_back(identity: HubIdentity) -> None:
    first = Signer(identity, "hub-0001")
    for _ in range(4):
        first.sign(reading_body())
    resumed = Signer(identity, "hub-0001", first.head)  # as after a restart
    before = resumed.head
    attempt = resumed.sign(event_body())
    assert attempt.seq == 5
    assert parse_jws(attempt.jws).verify(identity.public)["prev"] == before.hash
    resumed.head = before  # the outbox commit failed: sign the same seq again
    again = resumed.sign(event_body())
    assert again == attempt  # Ed25519 is deterministic


def test_signer_refuses_bad_bodies(identity: HubIdentity) -> None:
    signer = Signer(identity, "hub-0001")
    with pytest.raises(SigningError, match="kind"):
        signer.sign({"kind": "note"})
    with pytest.raises(SigningError, match="seq"):
        signer.sign({**reading_body(), "seq": 7})
    with pytest.raises(SigningError, match="not plain JSON"):
        signer.sign(reading_body(status={"temperature": float("nan")}))
    assert signer.head == ChainHead()  # nothing was signed
    with pytest.raises(SigningError, match="inconsistent"):
        signer.head = ChainHead(3, "")


def test_non_ascii_text_is_kept_as_utf8(identity: HubIdentity, joserfc_key: OKPKey) -> None:
    entry = Signer(identity, "hub-0001").sign(reading_body(patient="p-Ümlaut-π"))
    payload = jws.deserialize_json(
        json.loads(entry.jws), joserfc_key, algorithms=["Ed25519"]
    ).payload
    assert "p-Ümlaut-π".encode() in payload


# --- verifying one entry ------------------------------------------------------------------------


def test_eddsa_from_another_library_is_accepted(identity: HubIdentity) -> None:
    private = OKPKey.import_key(identity.private_key)
    with pytest.warns(SecurityWarning, match="deprecated"):  # RFC 9864 deprecates "EdDSA"
        obj = jws.serialize_json(
            {"protected": {"alg": "EdDSA", "kid": identity.kid}},
            b'{"v":1,"kind":"event"}',
            private,
            algorithms=["EdDSA"],
        )
    assert verify_entry(obj, identity.public) == {"v": 1, "kind": "event"}


@pytest.mark.parametrize("alg", ["none", "HS256", "ES256"])
def test_other_algs_are_rejected(identity: HubIdentity, alg: str) -> None:
    entry = json.loads(Signer(identity, "hub-0001").sign(reading_body()).jws)
    entry["protected"] = b64url(json.dumps({"alg": alg, "kid": identity.kid}).encode())
    if alg == "none":
        entry["signature"] = ""
    with pytest.raises(SignatureError, match=f"alg '{alg}' is not accepted"):
        verify_entry(entry, identity.public)


def test_tampered_payload_wrong_key_and_wrong_kid_are_rejected(identity: HubIdentity) -> None:
    entry = json.loads(Signer(identity, "hub-0001").sign(reading_body()).jws)
    tampered = dict(entry)
    text = entry["payload"]
    tampered["payload"] = text[:40] + ("A" if text[40] != "A" else "B") + text[41:]
    with pytest.raises(SignatureError, match="does not verify"):
        verify_entry(tampered, identity.public)
    other = HubIdentity.generate()
    with pytest.raises(SignatureError, match="signed with key"):
        verify_entry(entry, other.public)
    no_kid = dict(entry, protected=b64url(b'{"alg":"Ed25519"}'))
    with pytest.raises(SignatureError, match="does not verify"):
        verify_entry(no_kid, identity.public)  # the header is covered by the signature
    with pytest.raises(SignatureError, match="flattened"):
        verify_entry({"payload": entry["payload"], "signatures": []}, identity.public)
    with pytest.raises(SignatureError, match="base64url"):
        verify_entry(dict(entry, signature=entry["signature"] + "="), identity.public)


# --- the schema ---------------------------------------------------------------------------------


def test_schema_shipped_in_the_package_is_the_documented_one() -> None:
    shipped = ROOT / "gateway" / "schema" / "payload.schema.json"
    assert shipped.read_bytes() == SCHEMA_PATH.read_bytes()


def _signed_payloads(
    identity: HubIdentity, bodies: list[dict[str, object]]
) -> list[dict[str, object]]:
    signer = Signer(identity, "hub-0001")
    return [verify_entry(signer.sign(body).jws, identity.public) for body in bodies]


def test_schema_accepts_signed_readings_and_events(
    identity: HubIdentity, validator: Draft202012Validator
) -> None:
    payloads = _signed_payloads(
        identity,
        [
            event_body(),
            reading_body(),
            reading_body(
                time={
                    "hub": "2025-03-01T10:15:30Z",
                    "hub_clock": "unknown",
                    "boot": "",
                    "mono": 0,
                    "device": None,
                    "device_clock": "unknown",
                },
                observations=[],
                status={},
                raw="",
            ),
            event_body("gap", {"first_seq": 1, "last_seq": 2, "count": 2, "reason": "outbox-cap"}),
            event_body("device-lost", {"device": "oxi-1"}),
            event_body(
                "log-started", {"reason": "new-outbox", "previous": None, "set_aside": None}
            ),
            event_body(
                "log-started",
                {
                    "reason": "outbox-damaged",
                    "previous": {"log": "AAAAAAAAAAAAAAAAAAAAAA", "last_seq": 9, "last_hash": "x"},
                    "set_aside": {
                        "file": "outbox.sqlite.damaged-x",
                        "entries": None,
                        "unsent_unknown": True,
                    },
                },
            ),
            event_body(
                "clock-stepped",
                {
                    "by_s": -3600.5,
                    "from": "2025-03-01T10:15:31.000Z",
                    "to": "2025-03-01T09:15:30.500Z",
                    "hub_clock": "synced",
                },
            ),
            {**reading_body(), "future_field": {"x": 1}},  # open for additions within v1
        ],
    )
    for payload in payloads:
        assert list(validator.iter_errors(payload)) == []


def _mutated(
    payload: dict[str, object], path: tuple[str | int, ...], value: object
) -> dict[str, object]:
    copy: Any = json.loads(json.dumps(payload))
    target = copy
    for step in path[:-1]:
        target = target[step]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return copy  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("observations", 0, "absent"), "not-a-number"),  # a value of 97 with absent set
        (("observations", 2, "value"), 0),  # value 0 with absent set
        (("observations", 0, "value"), None),  # null without saying why
        (("observations", 0, "type"), "SpO2"),
        (("observations", 0, "loinc"), "59408"),
        (("patient",), KeyError),
        (("device", "driver_version"), KeyError),
        (("time", "device_clock"), KeyError),
        (("time", "hub"), "2025-03-01T10:15:30+01:00"),  # hub time is UTC
        (("time", "hub_clock"), "maybe"),
        (("raw",), "not base64!"),
        (("status", "finger_out"), [1]),
        (("v",), 2),
        (("seq",), 0),
        (("prev",), "not-a-hash"),
        (("hub",), "a/b"),
        (("kind",), "note"),
    ],
)
def test_schema_rejects_bad_readings(
    identity: HubIdentity,
    validator: Draft202012Validator,
    path: tuple[str | int, ...],
    value: object,
) -> None:
    _, second = _signed_payloads(identity, [reading_body(), reading_body()])
    assert list(validator.iter_errors(second)) == []
    assert not validator.is_valid(_mutated(second, path, value))


def test_schema_ties_empty_prev_to_seq_1(
    identity: HubIdentity, validator: Draft202012Validator
) -> None:
    first, second = _signed_payloads(identity, [event_body(), event_body()])
    assert not validator.is_valid(dict(first, prev=second["prev"]))
    assert not validator.is_valid(dict(second, prev=""))


@pytest.mark.parametrize(
    "detail",
    [
        {},
        {"first_seq": 0, "last_seq": 1, "count": 2, "reason": "outbox-cap"},
        {"first_seq": 1, "last_seq": 1, "count": 1},
    ],
)
def test_schema_rejects_bad_gap_events(
    identity: HubIdentity, validator: Draft202012Validator, detail: dict[str, object]
) -> None:
    (payload,) = _signed_payloads(identity, [event_body("gap", detail)])
    assert not validator.is_valid(payload)
    (payload,) = _signed_payloads(identity, [event_body("note", detail)])
    assert validator.is_valid(payload)  # other events' detail is free-form
