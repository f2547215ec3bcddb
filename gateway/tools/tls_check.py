"""`check-config`'s look at the TLS files of an mqtts:// uplink, without connecting.

What lives here: building the TLS context with the transport's own builder
(`gateway.transport.mqtt_connect.tls_context`), one file at a time so a failure names the
setting at fault: the CA file parses, the client certificate parses and matches its key, and how
many days the client certificate has left. A problem the daemon would only meet at connect time
is a `ConfigError` on the key at fault (check-config exits 2); a client certificate with less
than `WARN_DAYS` left is a warning line. What may not: opening a connection.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from gateway.hub.config_mqtt import MqttConfig
from gateway.hub.config_reader import ConfigError
from gateway.transport.mqtt_connect import MqttSettings, MqttTlsError, tls_context

WARN_DAYS = 30
"""A client certificate with fewer days left than this is reported as a warning."""


@dataclass(slots=True)
class TlsCheck:
    """What check-config prints about TLS: facts, then warnings."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_tls(mqtt: MqttConfig, file: Path | str, now: datetime.datetime | None = None) -> TlsCheck:
    """Builds the uplink's TLS context as the daemon will. Raises `ConfigError` naming the key
    (`mqtt.ca_file`, `mqtt.cert_file`, `mqtt.key_file`) whose file would fail the connection."""
    report = TlsCheck()
    if not mqtt.tls:
        return report
    now = now or datetime.datetime.now(datetime.UTC)
    base = MqttSettings(mqtt.host, mqtt.port, tls=True, ca_file=mqtt.ca_file)
    _build(base, file, "mqtt.ca_file", f"{mqtt.ca_file or 'the system CAs'}: cannot be loaded")
    if mqtt.ca_file is None:
        report.lines.append('tls: CA: this machine\'s trusted CAs (ca_file = "system")')
    else:
        report.lines.append(f"tls: CA {mqtt.ca_file}: {_ca_count(mqtt.ca_file)} certificate(s)")
    if mqtt.cert_file is None or mqtt.key_file is None:
        report.lines.append("tls: no client certificate")
        return report
    cert = _client_certificate(mqtt.cert_file, file)
    _build(
        MqttSettings(
            mqtt.host,
            mqtt.port,
            tls=True,
            ca_file=mqtt.ca_file,
            cert_file=mqtt.cert_file,
            key_file=mqtt.key_file,
        ),
        file,
        "mqtt.key_file",
        f"{mqtt.key_file} is not the private key of {mqtt.cert_file}",
    )
    expires = cert.not_valid_after_utc
    days = (expires - now).days
    subject = cert.subject.rfc4514_string()
    if expires <= now:
        raise ConfigError(
            file,
            "mqtt.cert_file",
            f"the client certificate {mqtt.cert_file} ({subject}) expired on "
            f"{expires:%Y-%m-%d} (by this machine's clock): the broker will refuse it; install "
            f"a renewed certificate with its key (mqtt.key_file {mqtt.key_file})",
        )
    if cert.not_valid_before_utc > now:
        report.warnings.append(
            f"warning: mqtt.cert_file: {mqtt.cert_file} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check this machine's clock"
        )
    report.lines.append(
        f"tls: client certificate {mqtt.cert_file} ({subject}) matches mqtt.key_file "
        f"{mqtt.key_file}; expires {expires:%Y-%m-%d} ({days} day(s) left)"
    )
    if days < WARN_DAYS:
        report.warnings.append(
            f"warning: mqtt.cert_file: {mqtt.cert_file} expires in {days} day(s), on "
            f"{expires:%Y-%m-%d}: renew it (and mqtt.key_file {mqtt.key_file}) before then"
        )
    return report


def _build(settings: MqttSettings, file: Path | str, key: str, what: str) -> ssl.SSLContext:
    try:
        return tls_context(settings)
    except MqttTlsError as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(file, key, f"{what} ({cause})") from exc


def _ca_count(path: Path) -> int:
    try:
        return len(x509.load_pem_x509_certificates(path.read_bytes()))
    except ValueError:
        return 0  # OpenSSL took it (it was just loaded): a form cryptography does not list


def _client_certificate(path: Path, file: Path | str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            file, "mqtt.cert_file", f"{path} is not a PEM certificate ({exc})"
        ) from exc
