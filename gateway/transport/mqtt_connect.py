"""Opening one MQTT connection with paho-mqtt 2.x: settings, TLS, and what each failure means.

What lives here: `MqttSettings` (with the last will), the error classes with their `kind`, the
TLS context, `paho_client` and `open_connection` (the blocking TCP connect and TLS handshake)
and the mapping of socket errors, CONNACK reason codes and early hang-ups to errors that say
what to check. The `kind` tells a caller how long retrying is worth waiting for: a stable
refusal ("auth", "tls"), a certificate judged by the hub's clock ("tls-clock": only as stable
as that clock), or a passing fault ("unreachable", which includes a TLS handshake cut short by
a broker or load balancer restarting). Both the daemon's asyncio client
(`gateway.transport.mqtt`) and the verify command's subscriber (`gateway.tools.verify`)
connect through here, so they fail alike.

What may not: driving a connection (the callers own their loops), drivers, the hub core, the
tools. Only the standard library and paho are imported.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

ProtocolName = Literal["5", "3.1.1"]
ErrorKind = Literal[
    "auth", "tls", "tls-clock", "unreachable", "protocol", "disconnected", "rejected"
]

# paho's own window is set far above the callers': they bound what is in flight, and a second,
# smaller limit inside paho would silently queue messages in memory instead.
_PAHO_MAX_INFLIGHT = 65535
_PAHO_MAX_QUEUED = 65535
# CONNACK reason codes (MQTT 5 numbering; paho maps 3.1.1 return codes onto them).
# Bad credentials, not authorised, banned, bad authentication method:
_AUTH_REASONS = frozenset({0x86, 0x87, 0x8A, 0x8C})
_BUSY_REASONS = frozenset({0x88, 0x89, 0x9F})  # server unavailable, busy, connection rate exceeded
# OpenSSL's verify codes for a certificate outside its validity period, as judged by this
# machine's clock (X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED).
_NOT_YET_VALID, _EXPIRED = 9, 10


class MqttError(Exception):
    """Base of every MQTT error. `kind` lets callers pick a retry policy."""

    kind: ClassVar[ErrorKind] = "protocol"


class MqttConnectError(MqttError):
    """The connection could not be established."""


class MqttAuthError(MqttConnectError):
    """The broker refused the credentials. Retrying with the same ones will not help."""

    kind: ClassVar[ErrorKind] = "auth"


class MqttTlsError(MqttConnectError):
    """A certificate or TLS problem: wrong CA, host name mismatch, client certificate refused,
    bad files. Retrying the same settings won't help."""

    kind: ClassVar[ErrorKind] = "tls"


class MqttCertificateTimeError(MqttTlsError):
    """The broker's certificate is expired or not yet valid by this machine's clock. Stable if
    the clock is right; a hub without a real-time clock that has not synchronised yet sees it
    until NTP corrects the clock, so the caller decides by the clock's state."""

    kind: ClassVar[ErrorKind] = "tls-clock"


class MqttProtocolViolation(MqttConnectError):
    """The broker sent what this client never asked for (an unrequested PUBLISH, a packet over
    the announced maximum size): the connection is dropped and retried with the normal backoff."""

    kind: ClassVar[ErrorKind] = "protocol"


class MqttUnreachable(MqttConnectError):
    """The broker refused the TCP connection, did not answer in time, or is unavailable."""

    kind: ClassVar[ErrorKind] = "unreachable"


class MqttDisconnected(MqttError):
    """The connection is gone (or was never up) before the operation completed."""

    kind: ClassVar[ErrorKind] = "disconnected"


class MqttPublishRejected(MqttError):
    """The broker answered a publish with a failure reason code (MQTT 5), e.g. not authorised."""

    kind: ClassVar[ErrorKind] = "rejected"


@dataclass(frozen=True, slots=True)
class SettingNames:
    """How the user spells the settings an error message asks them to check: the config file's
    keys for the daemon (the default), command-line flags for a tool."""

    ca_file: str = "mqtt ca_file"
    client_cert: str = "mqtt cert_file/key_file"
    login: str = "mqtt username/password_file"


@dataclass(frozen=True, slots=True)
class MqttWill:
    """The last will: published by the broker if the connection dies without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """Everything needed to open one MQTT connection."""

    host: str
    port: int = 1883
    tls: bool = False
    ca_file: str | os.PathLike[str] | None = None
    cert_file: str | os.PathLike[str] | None = None
    key_file: str | os.PathLike[str] | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = ""
    protocol: ProtocolName = "5"
    keepalive: int = 60
    will: MqttWill | None = None
    names: SettingNames = SettingNames()

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when its handshake fails: paho drops such a socket without closing it,
    and the garbage collector then warns about an unclosed socket."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name (system CAs unless `ca_file`), and
    presents the client certificate if there is one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if settings.ca_file:
            context.load_verify_locations(cafile=settings.ca_file)
        else:
            context.load_default_certs()
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        names = settings.names
        raise MqttTlsError(
            f"cannot load TLS files ({exc}): check {names.ca_file} and {names.client_cert}"
        ) from exc
    context.sslsocket_class = _ClosingSSLSocket
    return context


def paho_client(
    settings: MqttSettings,
    timeout: float,
    *,
    reconnect: bool = False,
    client_class: type[paho.Client] = paho.Client,
) -> paho.Client:
    """A paho client for these settings, not connected. `reconnect` lets paho's own loop
    reconnect after a loss (a subscriber on `loop_start`); the asyncio client reconnects itself
    and brings its own `client_class` (one that guards what it reads)."""
    v5 = settings.protocol == "5"
    client = client_class(
        CallbackAPIVersion.VERSION2,
        client_id=settings.client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
        reconnect_on_failure=reconnect,
    )
    client.connect_timeout = timeout
    client.max_inflight_messages = _PAHO_MAX_INFLIGHT
    client.max_queued_messages = _PAHO_MAX_QUEUED
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.will is not None:
        w = settings.will
        client.will_set(w.topic, w.payload, qos=w.qos, retain=w.retain)
    return client


def open_connection(
    client: paho.Client, settings: MqttSettings, *, max_packet_size: int | None = None
) -> None:
    """paho's blocking TCP connect and TLS handshake, then CONNECT is sent (CONNACK comes
    later, to `on_connect`). Raises an `MqttConnectError` that says what to check; whatever
    socket the failed attempt opened is closed. `max_packet_size` is announced in CONNECT
    (MQTT 5 Maximum Packet Size: a compliant broker sends nothing larger); MQTT 3.1.1 has no
    such property, so a caller that needs the bound enforces it on what it reads."""
    if settings.tls:
        client.tls_set_context(tls_context(settings))
    # paho accepts only its default for MQTT 3.1.1 (where clean_session already says it).
    v5 = settings.protocol == "5"
    clean_start = True if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
    properties = None
    if v5 and max_packet_size is not None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.MaximumPacketSize = max_packet_size
    try:
        client.connect(
            settings.host,
            settings.port,
            keepalive=settings.keepalive,
            clean_start=clean_start,
            properties=properties,
        )
    except Exception as exc:
        close_quietly(client.socket())
        raise socket_error(exc, settings) from exc


def close_quietly(sock: Any) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def socket_error(exc: BaseException, settings: MqttSettings) -> MqttConnectError:
    """What a failed TCP connect or TLS handshake means."""
    if isinstance(exc, MqttConnectError):
        return exc
    return _tls_failure(exc, settings) or _network_failure(exc, settings.where)


def _tls_failure(exc: BaseException, settings: MqttSettings) -> MqttConnectError | None:
    where, names = settings.where, settings.names
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _verification_failure(exc, settings)
    if settings.tls and _handshake_cut(exc):
        # A broker or load balancer restarting drops the handshakes in progress: a passing
        # fault, retried like any network error. A plain MQTT port answers a TLS hello by
        # closing too; that keeps failing at the normal backoff, and the text says to check it.
        return MqttUnreachable(
            f"TLS handshake with {where} cut short ({_reason(exc)}): the broker or the network"
            " restarted; if this persists, check that it is a TLS port"
        )
    if isinstance(exc, ssl.SSLError):
        # An alert from the broker (client certificate refused, no common protocol) or bytes
        # that are not TLS: the same settings will fail the same way.
        return MqttTlsError(
            f"TLS handshake with {where} failed ({exc.reason}): is it a TLS port, and does it "
            f"want a client certificate ({names.client_cert})?"
        )
    return None


def _verification_failure(
    exc: ssl.SSLCertVerificationError, settings: MqttSettings
) -> MqttTlsError:
    where, names = settings.where, settings.names
    if exc.verify_code in (_NOT_YET_VALID, _EXPIRED):
        return MqttCertificateTimeError(
            f"broker {where} certificate not valid at this machine's time ({exc.verify_message}):"
            " check this machine's clock (NTP), then the broker's certificate dates"
        )
    return MqttTlsError(
        f"broker {where} certificate not trusted ({exc.verify_message}): check "
        f"{names.ca_file} (the CA that signed it) and the host name in the certificate"
    )


def _handshake_cut(exc: BaseException) -> bool:
    """The peer went away during the handshake (EOF or reset), without a TLS alert."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return True
    if isinstance(exc, ssl.SSLError):
        return exc.reason == "UNEXPECTED_EOF_WHILE_READING"
    return isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


def _network_failure(exc: BaseException, where: str) -> MqttConnectError:
    if isinstance(exc, ConnectionRefusedError):
        return MqttUnreachable(
            f"connection to {where} refused: is the broker running and listening there?"
        )
    if isinstance(exc, socket.gaierror):
        return MqttUnreachable(f"cannot resolve {where} ({exc}): check the broker host and DNS")
    if isinstance(exc, TimeoutError):
        return MqttUnreachable(
            f"no answer from {where} in time: check the broker address and the network"
        )
    if isinstance(exc, OSError):
        return MqttUnreachable(f"cannot reach {where} ({exc}): check the broker address, network")
    return MqttConnectError(f"connecting to {where} failed ({exc!r})")


def connack_error(reason: ReasonCode, settings: MqttSettings) -> MqttConnectError:
    """What a CONNACK with a failure reason code means."""
    where = settings.where
    if reason.value in _AUTH_REASONS:
        return MqttAuthError(
            f"broker {where} refused the login ({reason.getName()}): check "
            f"{settings.names.login} (or the client certificate's identity)"
        )
    if reason.value in _BUSY_REASONS:
        return MqttUnreachable(f"broker {where} is unavailable ({reason.getName()}); retry later")
    return MqttConnectError(
        f"broker {where} refused the connection ({reason.getName()}): check the broker's log"
    )


def early_close_error(settings: MqttSettings, last_error: str) -> MqttConnectError:
    """What it means when the broker hangs up before CONNACK; `last_error` is paho's last
    error log line, if any."""
    where, detail = settings.where, last_error or "connection closed before CONNACK"
    lowered = detail.lower()
    if settings.tls and any(w in lowered for w in ("ssl", "tls", "certificate", "alert")):
        return MqttTlsError(
            f"broker {where} ended the TLS session ({detail}): check "
            f"{settings.names.client_cert} and that the broker trusts their CA"
        )
    return MqttUnreachable(
        f"broker {where} closed the connection before CONNACK ({detail}): check the broker's log"
    )
