"""Hub identity (Ed25519), JWS signing with the per-hub hash chain, and checking one entry.

What lives here: the hub's private key on disk (`HubIdentity`), its public JWK and RFC 7638
`kid` (`PublicKey`), the `Signer` that turns a payload body into one signed log entry — a JWS in
the flattened JSON serialization (RFC 7515 §7.2.2), alg "Ed25519" (RFC 9864) — linked to the
previous entry by `prev`, and the checks a receiver makes on a single entry (`parse_jws`,
`verify_entry`, `chain_hash`). Bookkeeping over many entries (sequence, duplicates, gaps) lives
in `gateway.tools.verify`; docs/protocol.md describes the wire format.

What may not: MQTT, the outbox, logging of payloads. Only the standard library and the Ed25519
part of `cryptography` are imported at start-up, because the daemon imports this module on a
512 MB Pi; the heavier `cryptography` serialization package is imported only for key files we
did not write ourselves.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG: Final = "Ed25519"
"""The JWS alg we sign with: the fully-specified name of RFC 9864."""
ACCEPTED_ALGS: Final = frozenset({"Ed25519", "EdDSA"})
"""What a verifier accepts: RFC 9864's name and RFC 8037's deprecated polymorphic one."""
PAYLOAD_VERSION: Final = 1
KINDS: Final = frozenset({"reading", "event"})
KEY_FILE: Final = "identity.key"

_RESERVED: Final = frozenset({"v", "hub", "seq", "prev"})
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
# RFC 8410 §7: an Ed25519 PKCS#8 v1 private key is this fixed DER prefix plus the 32-byte seed.
# Writing and reading it directly keeps `cryptography`'s serialization package (~30 ms of
# imports, more on a Pi) off the daemon's start-up path; `openssl pkey` reads the result.
_PKCS8_ED25519_PREFIX: Final = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN: Final = "-----BEGIN PRIVATE KEY-----"
_PEM_END: Final = "-----END PRIVATE KEY-----"
# One encoder built once: json.dumps would build a new one with these options on every call.
# No cycle check (it costs ~1 us an entry): bodies are trees built from Reading.wire(), and a
# cycle still fails, as a RecursionError.
_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), check_circular=False
)


def _encode_stdlib(payload: Mapping[str, object], checked: bool = False) -> bytes:
    """Raises TypeError/ValueError/RecursionError for what is not plain JSON (NaN included)."""
    return _ENCODER.encode(payload).encode("utf-8")


try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; stay correct without it
    orjson = None  # type: ignore[assignment]

if orjson is not None:
    # Only dicts, lists, str, int, float, bool and None: everything else (datetimes,
    # dataclasses, subclasses...) goes to the stdlib encoder, which refuses it as before.
    _ORJSON_OPTIONS: Final = (
        orjson.OPT_PASSTHROUGH_DATETIME
        | orjson.OPT_PASSTHROUGH_DATACLASS
        | orjson.OPT_PASSTHROUGH_SUBCLASS
    )
    _orjson_dumps = orjson.dumps
    _OrjsonError: type[Exception] = orjson.JSONEncodeError

    def _encode_orjson(payload: Mapping[str, object], checked: bool = False) -> bytes:
        """orjson is ~10x faster than json here (about 15 us an entry), but writes NaN and
        infinity as null; where a null appears, the body is checked for them, unless the
        caller has `checked` its floats already (a walk costs as much as the encoding)."""
        try:
            text: bytes = _orjson_dumps(payload, option=_ORJSON_OPTIONS)
        except _OrjsonError:
            return _encode_stdlib(payload)  # refuses it with the stdlib's message, or encodes
        if not checked and b"null" in text and not _finite(payload):
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


PAYLOAD_ENCODERS: Final[Mapping[str, Callable[[Mapping[str, object], bool], bytes]]] = (
    {"stdlib json": _encode_stdlib, "orjson": _encode_orjson}
    if orjson is not None
    else {"stdlib json": _encode_stdlib}
)
"""The payload encoders available, the default last. Both produce valid compact JSON; the
bytes may differ (float spelling), which is fine: the signature covers the bytes sent."""
_encode_payload = list(PAYLOAD_ENCODERS.values())[-1]


def use_payload_encoder(name: str) -> None:
    """Pick the payload encoder by its `PAYLOAD_ENCODERS` name (benchmarks compare them)."""
    global _encode_payload  # noqa: PLW0603 - one process-wide choice, made before signing
    _encode_payload = PAYLOAD_ENCODERS[name]


class SigningError(Exception):
    """Base of this module's errors; also raised for a body that cannot be signed."""


class IdentityError(SigningError):
    """The hub's key (or a verifier's JWK) is missing, unsafe or corrupt. Says what to do."""


class SignatureError(SigningError):
    """An entry that does not verify or is not a well-formed JWS. The message says why."""


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly: the stdlib decoder skips stray characters, which
    would let two different strings stand for one signature."""
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwk_thumbprint(x: str) -> str:
    """RFC 7638 thumbprint of an Ed25519 public JWK: SHA-256 over its required members
    (crv, kty, x) in lexicographic order without whitespace, base64url."""
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


# --- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key with its JWK `x` and RFC 7638 `kid`. Equal when `x` is equal."""

    key: Ed25519PublicKey = field(repr=False, compare=False)
    x: str
    kid: str

    @classmethod
    def from_key(cls, key: Ed25519PublicKey) -> PublicKey:
        x = b64url(key.public_bytes_raw())
        return cls(key, x, jwk_thumbprint(x))

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, object]) -> PublicKey:
        """From an OKP/Ed25519 JWK. A `kid` in it, if any, must be the RFC 7638 thumbprint."""
        if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            raise IdentityError(
                f"not an Ed25519 public JWK (kty={jwk.get('kty')!r}, "
                f"crv={jwk.get('crv')!r}); expected kty 'OKP', crv 'Ed25519'"
            )
        x = jwk.get("x")
        try:
            if not isinstance(x, str):
                raise ValueError("missing")  # noqa: TRY004, TRY301 - one message for all
            raw = b64url_decode(x)
            if len(raw) != 32:
                raise ValueError("not 32 bytes")  # noqa: TRY301
            key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise IdentityError(
                f"the JWK's 'x' is not a 32-byte base64url Ed25519 key ({exc})"
            ) from exc
        public = cls(key, x, jwk_thumbprint(x))
        kid = jwk.get("kid")
        if kid is not None and kid != public.kid:
            raise IdentityError(
                f"the JWK's kid {kid!r} is not its RFC 7638 thumbprint "
                f"{public.kid!r}; the file was edited or belongs to another key"
            )
        return public

    def jwk(self) -> dict[str, str]:
        return {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.x,
            "kid": self.kid,
            "alg": ALG,
            "use": "sig",
        }


def load_public_jwk(source: Path | str | Mapping[str, object]) -> PublicKey:
    """A verifier's pinned key: a JWK given as a dict or a JSON file (a path). A JWK Set file
    holding exactly one key is accepted too."""
    if isinstance(source, Mapping):
        data: object = source
    else:
        path = Path(source)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise IdentityError(
                f"public key file {path} does not exist; export it on the hub "
                "with the hub's public JWK (its status message carries it)"
            ) from exc
        except OSError as exc:
            raise IdentityError(f"cannot read public key file {path}: {exc.strerror}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise IdentityError(f"public key file {path} is not JSON: {exc}") from exc
    if isinstance(data, Mapping) and "keys" in data:
        keys = data["keys"]
        if not isinstance(keys, list) or len(keys) != 1:
            raise IdentityError("a JWK Set must hold exactly one key here; give one hub's JWK")
        data = keys[0]
    if not isinstance(data, Mapping):
        raise IdentityError("a JWK must be a JSON object")
    return PublicKey.from_jwk(data)


@dataclass(frozen=True, slots=True)
class HubIdentity:
    """The hub's signing key. `path` is where it lives (None for a key made in memory)."""

    private_key: Ed25519PrivateKey = field(repr=False, compare=False)
    public: PublicKey
    path: Path | None = None

    @classmethod
    def generate(cls) -> HubIdentity:
        """A fresh key that is never written anywhere (tests, simulations)."""
        key = Ed25519PrivateKey.generate()
        return cls(key, PublicKey.from_key(key.public_key()))

    @classmethod
    def load_or_create(cls, state_dir: Path) -> HubIdentity:
        """Load `state_dir/identity.key`, creating it (mode 0600) on first start.

        Raises `IdentityError` if the file is readable by group or others, unreadable, or not
        an Ed25519 private key: the message says what to do. A key is never silently replaced,
        because the platform has pinned its public half.
        """
        path = state_dir / KEY_FILE
        try:
            key = _read_key(path)
        except FileNotFoundError:
            try:
                key = _create_key(path)
            except FileExistsError:  # another process created it between our read and create
                key = _read_key(path)
        return cls(key, PublicKey.from_key(key.public_key()), path)

    @property
    def kid(self) -> str:
        return self.public.kid

    def public_jwk(self) -> dict[str, str]:
        """The public JWK with kid, alg and use: what the platform pins for this hub."""
        return self.public.jwk()


def _read_key(path: Path) -> Ed25519PrivateKey:
    """Raises FileNotFoundError when there is no key yet; IdentityError for everything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IdentityError(
            f"cannot read the hub key {path}: {exc.strerror}; run rtm-gateway "
            "as the user that owns it, or fix its ownership"
        ) from exc
    with os.fdopen(fd, "rb") as file:
        mode = os.fstat(file.fileno()).st_mode
        if mode & 0o077:
            # Checked before reading: a key others could read may already be copied.
            raise IdentityError(
                f"the hub key {path} is accessible to group or others "
                f"({stat.filemode(mode)}); anyone who can read it can sign as this hub. Run "
                f"'chmod 600 {path}', and if it may have been copied, move it away, restart to "
                "create a new key and register the new public key with the platform"
            )
        data = file.read(64 * 1024)
    return _parse_private_pem(data, path)


def _parse_private_pem(data: bytes, path: Path) -> Ed25519PrivateKey:
    corrupt = (
        f"the hub key {path} is not an Ed25519 private key (PEM PKCS#8). Restore it "
        "from backup; only if this hub was never registered with the platform, move it "
        "away and restart to create a new one"
    )
    try:
        text = data.decode("ascii").strip()
        if text.startswith(_PEM_BEGIN) and text.endswith(_PEM_END):
            der = base64.b64decode(
                "".join(text[len(_PEM_BEGIN) : -len(_PEM_END)].split()), validate=True
            )
            if len(der) == 48 and der.startswith(_PKCS8_ED25519_PREFIX):
                return Ed25519PrivateKey.from_private_bytes(der[16:])
        # Some other valid encoding (e.g. PKCS#8 v2 from another tool): let cryptography parse.
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:  # binascii.Error and UnicodeError are ValueErrors
        raise IdentityError(f"{corrupt} ({type(exc).__name__})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(corrupt)
    return key


def _create_key(path: Path) -> Ed25519PrivateKey:
    """Write a new key so that a complete key file appears at `path` or none does.

    The key goes to a temporary file created 0600 with O_EXCL (never a moment with a looser
    mode), is fsynced, then hard-linked to its name: link fails rather than overwrite a key
    another process wrote meanwhile (FileExistsError), and a power cut leaves no half file.
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise IdentityError(
            f"cannot create the state directory {path.parent}: "
            f"{exc.strerror}; check the service's StateDirectory"
        ) from exc
    key = Ed25519PrivateKey.generate()
    der = _PKCS8_ED25519_PREFIX + key.private_bytes_raw()
    pem = f"{_PEM_BEGIN}\n{base64.b64encode(der).decode('ascii')}\n{_PEM_END}\n".encode("ascii")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crash of an earlier process with our pid
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        raise IdentityError(
            f"cannot write the hub key {path}: {exc.strerror}; check that "
            "the state directory is writable and the disk is not full"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)  # the new name itself must survive a power cut
    finally:
        os.close(dir_fd)
    return key


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


class Signer:
    """Signs payload bodies into the hub's one log of readings and events.

    Each `sign` sets v, hub, seq (head + 1) and prev (the head's hash) and advances `head`.
    Not thread-safe: one pipeline task owns it. To roll back after a failed outbox commit,
    assign the earlier head back (`signer.head = before`), so the seqs are signed again.
    """

    __slots__ = ("_hash", "_hub", "_json_start", "_protected", "_seq", "_sign")

    def __init__(self, identity: HubIdentity, hub_id: str, head: ChainHead = ChainHead()) -> None:
        self._hub = hub_id
        self.head = head
        header = json.dumps({"alg": ALG, "kid": identity.kid}, separators=(",", ":"))
        # Precomputed: the protected header is the same for every entry this key signs.
        self._protected = b64url(header.encode("ascii")).encode("ascii")
        self._json_start = b'{"protected":"' + self._protected + b'","payload":"'
        self._sign = identity.private_key.sign

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
        but not v, hub, seq or prev, which the signer owns."""
        prepared = self.prepare(body)
        return self.finish(prepared, self._sign(prepared.signing_input))

    def prepare(self, body: Mapping[str, object], *, floats_checked: bool = False) -> PreparedEntry:
        """The first half of `sign`: encode the payload and advance the head (the chain hash
        covers the signing input, not the signature). Pass the result's `signing_input` to
        `signatures` (which may run in a worker thread) and then to `finish`, in order.

        `floats_checked`: the caller has made sure no float in `body` is NaN or infinite, so
        the encoder need not walk the body for them."""
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
            "seq": seq,
            "prev": self._hash,
        }
        payload.update(body)
        try:
            text = _encode_payload(payload, floats_checked)
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


# --- checking one entry -------------------------------------------------------------------------


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
    if not all(isinstance(part, str) and _B64URL.fullmatch(part) for part in parts):
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
