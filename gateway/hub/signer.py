"""The signer: payload bodies in, signed log entries out, linked by the log's hash chain.

What lives here: `Signer`, which sets v, hub, log, seq and prev on a body, encodes it (orjson) and
signs it into one log entry — a JWS in the flattened JSON serialization (RFC 7515 §7.2.2), alg
"Ed25519" (RFC 9864) — whose `prev` is the chain hash of the entry before (`ChainHead`); and
the split of that work into `prepare` / `signatures` / `finish` that the journal batches.
docs/protocol.md describes the wire format; checking an entry lives in `gateway.hub.jws`.

What may not: the key file (`gateway.hub.identity`), MQTT, the outbox, logging of payloads.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

import orjson

from gateway.hub.identity import ALG, HubIdentity, b64url

PAYLOAD_VERSION: Final = 1
KINDS: Final = frozenset({"reading", "event"})

_RESERVED: Final = frozenset({"v", "hub", "log", "seq", "prev"})


class SigningError(Exception):
    """A body that cannot be signed (not plain JSON, a reserved field) or a bad chain head."""


# --- payload encoding ---------------------------------------------------------------------------

# Only dicts, lists, str, int, float, bool and None: everything else (datetimes, dataclasses,
# subclasses...) makes orjson fail, and the stdlib encoder then encodes it or refuses it.
_ORJSON_OPTIONS: Final = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_orjson_dumps = orjson.dumps
# The stdlib encoder, built once (json.dumps would build one per call). No cycle check (it costs
# ~1 us an entry): a cycle still fails, as a RecursionError.
_STDLIB_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
)


def encode_payload(payload: Mapping[str, object], *, floats_finite: bool = False) -> bytes:
    """Compact JSON of a payload. Raises TypeError/ValueError/RecursionError for what is not
    plain JSON, NaN and infinity included.

    orjson is ~10x faster than the stdlib here, but writes NaN and infinity as null; where a
    null appears, the payload is walked for them (a walk costs as much as the encoding), unless
    the caller vouches with `floats_finite` that it has checked every float already.
    """
    try:
        text: bytes = _orjson_dumps(payload, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        # A subclass, a big int, a datetime: the stdlib encodes it, or refuses with its message.
        return _STDLIB_ENCODER.encode(payload).encode("utf-8")
    if not floats_finite and b"null" in text and not _finite(payload):
        raise ValueError("Out of range float values are not JSON compliant")
    return text


def _finite(value: object) -> bool:
    """False if a float in the tree is NaN or infinite. Leaves are tested inline: a call per
    leaf would cost as much as the encoding it guards."""
    items: Iterable[object]
    if type(value) is dict:
        items = value.values()
    elif type(value) is list or type(value) is tuple:
        items = value
    else:
        return not (type(value) is float and not math.isfinite(value))
    for item in items:
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                return False
        elif (kind is dict or kind is list or kind is tuple) and not _finite(item):
            return False
    return True


# --- signing ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last signed entry: its seq (0 if none yet) and chain hash ("" if none yet)."""

    seq: int = 0
    hash: str = ""


@dataclass(frozen=True, slots=True)
class SignedEntry:
    """One signed log entry. `jws` is the compact JSON text of the flattened JWS object."""

    seq: int
    kind: str
    jws: bytes
    hash: str

    @property
    def head(self) -> ChainHead:
        return ChainHead(self.seq, self.hash)


class PreparedEntry(NamedTuple):
    """An entry encoded and chained but not yet signed (see `Signer.prepare`). A tuple: one is
    made per reading, and a frozen dataclass costs several times as much to build."""

    seq: int
    kind: str
    signing_input: bytes
    payload_b64: bytes
    hash: str


def new_log_id() -> str:
    """A fresh log id: 128 random bits, base64url without padding (22 characters)."""
    return _b64url_str(secrets.token_bytes(16))


class Signer:
    """Signs payload bodies into the hub's one log of readings and events.

    Each `sign` sets v, hub, log, seq (head + 1) and prev (the head's hash) and advances
    `head`. `log` is the log's id (`new_log_id`; a fresh one when not given): receivers key
    on (hub, log, seq), so a seq is unique within its log.
    Not thread-safe: the journal's task owns it. To roll back after a failed outbox commit,
    assign the earlier head back (`signer.head = before`), so the seqs are signed again.
    """

    __slots__ = ("_hash", "_hub", "_json_start", "_log", "_protected", "_seq", "_sign")

    def __init__(
        self,
        identity: HubIdentity,
        hub_id: str,
        head: ChainHead = ChainHead(),
        *,
        log: str | None = None,
    ) -> None:
        self._hub = hub_id
        self._log = new_log_id() if log is None else log
        self.head = head
        header = json.dumps({"alg": ALG, "kid": identity.kid}, separators=(",", ":"))
        # Precomputed: the protected header is the same for every entry this key signs.
        self._protected = b64url(header.encode("ascii")).encode("ascii")
        self._json_start = b'{"protected":"' + self._protected + b'","payload":"'
        self._sign = identity.private_key.sign

    @property
    def log(self) -> str:
        """The id of the log this signer signs into."""
        return self._log

    @property
    def head(self) -> ChainHead:
        # Built on demand: a frozen dataclass costs ~1 us to create, too much for every entry.
        return ChainHead(self._seq, self._hash)

    @head.setter
    def head(self, head: ChainHead) -> None:
        if head.seq < 0 or (head.seq == 0) != (head.hash == ""):
            raise SigningError(
                f"inconsistent chain head {head}: seq 0 has no hash, a later seq always has one"
            )
        self._seq = head.seq
        self._hash = head.hash

    def sign(self, body: Mapping[str, object]) -> SignedEntry:
        """Sign one entry. `body` has "kind" ("reading" or "event") and the kind's fields,
        but not v, hub, log, seq or prev, which the signer owns."""
        prepared = self.prepare(body)
        return self.finish(prepared, self._sign(prepared.signing_input))

    def prepare(self, body: Mapping[str, object], *, floats_finite: bool = False) -> PreparedEntry:
        """The first half of `sign`: encode the payload and advance the head (the chain hash
        covers the signing input, not the signature). Pass the result's `signing_input` to
        `signatures` and then to `finish`, in order.

        `floats_finite`: the caller vouches that no float in `body` is NaN or infinite, so the
        encoder need not walk the body for them (see `encode_payload`)."""
        kind = body.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise SigningError(f"body kind must be 'reading' or 'event', not {kind!r}")
        if not _RESERVED.isdisjoint(body):
            raise SigningError(
                f"body must not set {sorted(_RESERVED.intersection(body))}: the signer owns them"
            )
        seq = self._seq + 1
        payload: dict[str, object] = {
            "v": PAYLOAD_VERSION,
            "hub": self._hub,
            "log": self._log,
            "seq": seq,
            "prev": self._hash,
        }
        payload.update(body)
        try:
            text = encode_payload(payload, floats_finite=floats_finite)
        except (TypeError, ValueError, RecursionError) as exc:  # NaN, a datetime, bytes, a cycle
            raise SigningError(f"{kind} body is not plain JSON: {exc}") from exc
        payload_b64 = _b64url_bytes(text)
        signing_input = self._protected + b"." + payload_b64
        digest = _b64url_str(_sha256(signing_input).digest())
        self._seq = seq
        self._hash = digest
        return PreparedEntry(seq, kind, signing_input, payload_b64, digest)

    def signatures(self, signing_inputs: Sequence[bytes]) -> list[bytes]:
        """Raw Ed25519 signatures. Safe to call from a worker thread: it touches no state, and
        the signing releases the GIL, so a second core can sign while the loop goes on."""
        sign = self._sign
        return [sign(data) for data in signing_inputs]

    def finish(self, prepared: PreparedEntry, signature: bytes) -> SignedEntry:
        """The second half of `sign`: the JWS text from a prepared entry and its signature."""
        return SignedEntry(
            prepared.seq, prepared.kind, self.jws(prepared, signature), prepared.hash
        )

    def jws(self, prepared: PreparedEntry, signature: bytes) -> bytes:
        """Just the JWS text of `finish` (the compact JSON of the flattened JWS object)."""
        # Plain concatenation is exact JSON: base64url text needs no escaping.
        return (
            self._json_start
            + prepared.payload_b64
            + b'","signature":"'
            + _b64url_bytes(signature)
            + b'"}'
        )


_sha256 = hashlib.sha256
_B64_TO_URL: Final = bytes.maketrans(b"+/", b"-_")


def _b64url_bytes(data: bytes) -> bytes:
    # binascii directly: base64.urlsafe_b64encode costs two extra calls and a copy per entry.
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_B64_TO_URL)


def _b64url_str(data: bytes) -> str:
    return _b64url_bytes(data).decode("ascii")
