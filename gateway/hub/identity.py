"""The hub's identity: its Ed25519 key file and its public JWK.

What lives here: the private key on disk (`HubIdentity`: created 0600 on first start, refused
when group or others can read it, never silently replaced), the public half as a JWK with its
RFC 7638 `kid` (`PublicKey`, `load_public_jwk` for a verifier's pinned key) and the base64url
helpers JOSE needs. The signer (`gateway.hub.signer`) and the entry checks (`gateway.hub.jws`)
build on it.

What may not: payloads, the hash chain, MQTT, logging of keys. Only the standard library and
the Ed25519 part of `cryptography` are imported at start-up, because the daemon imports this
module on a 512 MB Pi; the heavier `cryptography` serialization package is imported only for
key files we did not write ourselves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALG: Final = "Ed25519"
"""The JWS alg the hub signs with: the fully-specified name of RFC 9864."""
KEY_FILE: Final = "identity.key"

B64URL_TEXT: Final = re.compile(r"[A-Za-z0-9_-]*")
"""Unpadded base64url text (RFC 7515 §2), nothing else."""
# RFC 8410 §7: an Ed25519 PKCS#8 v1 private key is this fixed DER prefix plus the 32-byte seed.
# Writing and reading it directly keeps `cryptography`'s serialization package (~30 ms of
# imports, more on a Pi) off the daemon's start-up path; `openssl pkey` reads the result.
_PKCS8_ED25519_PREFIX: Final = bytes.fromhex("302e020100300506032b657004220420")
_PEM_BEGIN: Final = "-----BEGIN PRIVATE KEY-----"
_PEM_END: Final = "-----END PRIVATE KEY-----"


class IdentityError(Exception):
    """The hub's key (or a verifier's JWK) is missing, unsafe or corrupt. Says what to do."""


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url strictly: the stdlib decoder skips stray characters, which
    would let two different strings stand for one signature."""
    if not B64URL_TEXT.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwk_thumbprint(x: str) -> str:
    """RFC 7638 thumbprint of an Ed25519 public JWK: SHA-256 over its required members
    (crv, kty, x) in lexicographic order without whitespace, base64url."""
    canonical = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


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
