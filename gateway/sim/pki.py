"""A throwaway PKI for a local broker: a CA, a server certificate for 127.0.0.1/localhost, a
client certificate, and a second, unrelated CA (trusting only it must fail verification). The
server certificate can be made for other names (a host name mismatch) or for a validity window
that does not include now (expired, not yet valid: what a hub with a wrong clock sees); the
client certificate for any window too (expired, or about to expire).

Used by the tests, the benches and anyone trying mutual TLS without a real PKI. Made with
`cryptography`; EC P-256 keys keep generation fast. The keys are written unencrypted: this is
for loopback experiments, never for a hub in the field. What may not live here: starting a
broker (that is `gateway.sim.broker`).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_IDENTITY = "hub-test-0001"
"""The client certificate's default common name (the MQTT username under mosquitto's
`use_identity_as_username`)."""


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of the PEM files. The file names are fixed (ca.pem, server.pem, server.key,
    client.pem, client.key, other-ca.pem), so a child process given the directory finds them."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path
    """A CA that signed nothing here."""

    @property
    def directory(self) -> Path:
        return self.ca_file.parent


def make_pki(
    directory: Path,
    *,
    client_identity: str = CLIENT_IDENTITY,
    valid_days: int = 2,
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    server_window: tuple[datetime.timedelta, datetime.timedelta] | None = None,
    client_window: tuple[datetime.timedelta, datetime.timedelta] | None = None,
) -> Pki:
    """Write a fresh CA, server and client certificates (and an unrelated CA) to `directory`.

    `server_names` go into the server certificate (DNS names or IP addresses).
    `server_window` is the server certificate's (not before, not after), relative to now: e.g.
    (+1 day, +3 days) is not yet valid, (-3 days, -1 day) expired. `client_window` is the same
    for the client certificate (an expired one, or one about to expire). The CA stays valid
    now."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca_file=directory / "other-ca.pem",
    )
    lifetime = datetime.timedelta(days=valid_days)
    ca = _make_ca("rtm-gateway throwaway CA", pki.ca_file, lifetime)
    _make_ca("unrelated throwaway CA", pki.other_ca_file, lifetime)
    _make_leaf(
        ca,
        common_name=server_names[0],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[_general_name(name) for name in server_names],
        paths=(pki.server_cert, pki.server_key),
        lifetime=lifetime,
        window=server_window,
    )
    _make_leaf(
        ca,
        common_name=client_identity,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=None,
        paths=(pki.client_cert, pki.client_key),
        lifetime=lifetime,
        window=client_window,
    )
    return pki


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    # The owner's alone, as the hub requires of its key_file (mosquitto runs as the same user).
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _validity(
    builder: x509.CertificateBuilder,
    lifetime: datetime.timedelta,
    window: tuple[datetime.timedelta, datetime.timedelta] | None = None,
) -> x509.CertificateBuilder:
    # An hour back: a machine whose clock is a little behind still accepts the certificates.
    start, end = window or (-datetime.timedelta(hours=1), lifetime)
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now + start).not_valid_after(now + end)


def _make_ca(
    common_name: str, path: Path, lifetime: datetime.timedelta
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    cert = _validity(builder, lifetime).sign(key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _make_leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None,
    paths: tuple[Path, Path],
    lifetime: datetime.timedelta,
    window: tuple[datetime.timedelta, datetime.timedelta] | None = None,
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = _validity(builder, lifetime, window).sign(ca_key, hashes.SHA256())
    cert_path, key_path = paths
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
