"""Checking one signed log entry as a receiver does: parse the JWS, verify it, hash it.

What lives here: `parse_jws` (a JWS in the flattened JSON serialization, RFC 7515 §7.2.2, as
an object or its text) into a `JWSEntry`, whose `verify` checks alg (Ed25519 or EdDSA), kid
and signature and returns the payload, and `chain_hash`, what the next entry's `prev` must be.
Bookkeeping over many entries (sequence, duplicates, gaps) lives in `gateway.tools.verifier`;
docs/protocol.md describes the wire format.

What may not: the private key, signing, I/O. The daemon never imports this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.hub.identity import B64URL_TEXT, PublicKey, b64url, b64url_decode

ACCEPTED_ALGS: Final = frozenset({"Ed25519", "EdDSA"})
"""What a verifier accepts: RFC 9864's name and RFC 8037's deprecated polymorphic one."""


class SignatureError(Exception):
    """An entry that does not verify or is not a well-formed JWS. The message says why."""


@dataclass(frozen=True, slots=True)
class JWSEntry:
    """A flattened JWS as received, its protected header decoded, not yet verified."""

    protected: str
    payload: str
    signature: str
    header: Mapping[str, object]

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    def signing_input(self) -> bytes:
        return (self.protected + "." + self.payload).encode("ascii")

    def chain_hash(self) -> str:
        """What the next entry's `prev` must be: base64url SHA-256 of the signing input."""
        return b64url(hashlib.sha256(self.signing_input()).digest())

    def verify(self, public_key: PublicKey | Ed25519PublicKey) -> dict[str, object]:
        """Check alg, kid and signature; return the payload object. Raises SignatureError."""
        key = public_key if isinstance(public_key, PublicKey) else PublicKey.from_key(public_key)
        alg = self.header.get("alg")
        if alg not in ACCEPTED_ALGS:
            raise SignatureError(f"alg {alg!r} is not accepted (only 'Ed25519' or 'EdDSA')")
        if "crit" in self.header:
            raise SignatureError(
                "the header lists critical extensions ('crit'); none are understood here"
            )
        kid = self.header.get("kid")
        if kid is not None and kid != key.kid:
            raise SignatureError(f"signed with key {kid!r}, not with key {key.kid!r}")
        try:
            signature = b64url_decode(self.signature)
            key.key.verify(signature, self.signing_input())
        except (ValueError, InvalidSignature) as exc:
            raise SignatureError(
                "the signature does not verify: the entry was altered or signed by another key"
            ) from exc
        try:
            payload = json.loads(b64url_decode(self.payload), parse_constant=_no_constant)
        except ValueError as exc:  # includes UnicodeDecodeError and JSONDecodeError
            raise SignatureError(f"the signed payload is not JSON: {exc}") from exc
        if not isinstance(payload, dict):
            raise SignatureError("the signed payload is not a JSON object")
        return payload


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_jws(jws: Mapping[str, object] | bytes | str) -> JWSEntry:
    """Parse a JWS in the flattened JSON serialization, as an object or its JSON text.

    Only the protected header counts; an unprotected "header" member is ignored, because
    nothing in it is covered by the signature.
    """
    if isinstance(jws, bytes | str):
        try:
            obj: object = json.loads(jws)
        except ValueError as exc:
            raise SignatureError(f"not JSON: {exc}") from exc
    else:
        obj = jws
    if not isinstance(obj, Mapping):
        raise SignatureError("not a JWS object")
    if "signatures" in obj:
        raise SignatureError("general JWS JSON serialization; expected the flattened one")
    parts = [obj.get(name) for name in ("protected", "payload", "signature")]
    if not all(isinstance(part, str) and B64URL_TEXT.fullmatch(part) for part in parts):
        raise SignatureError(
            "not a flattened JWS: 'protected', 'payload' and 'signature' must be base64url strings"
        )
    protected, payload, signature = (str(part) for part in parts)
    try:
        header = json.loads(b64url_decode(protected))
    except ValueError as exc:
        raise SignatureError(f"the protected header is not base64url JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SignatureError("the protected header is not a JSON object")
    return JWSEntry(protected, payload, signature, header)


def verify_entry(
    jws: Mapping[str, object] | bytes | str, public_key: PublicKey | Ed25519PublicKey
) -> dict[str, object]:
    """Verify one entry (alg Ed25519 or EdDSA, kid if present) and return its payload."""
    return parse_jws(jws).verify(public_key)


def chain_hash(jws: Mapping[str, object] | bytes | str) -> str:
    """The chain hash of an entry: base64url SHA-256 of its ASCII signing input
    (protected + "." + payload). The next entry's `prev` carries it."""
    return parse_jws(jws).chain_hash()
