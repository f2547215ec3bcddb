"""Broker URLs: `mqtt://[user[:password]@]host[:port]` (plain, default port 1883) and
`mqtts://...` (TLS, default 8883). One parser for the config, the transport and `verify`.
Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class MqttUrl:
    """What `parse_mqtt_url` found."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_mqtt_url(url: str) -> MqttUrl:
    """Raises ValueError saying what is wrong with the URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{url!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"{url!r} names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{url!r} must be only scheme, host and port")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{url!r} has an invalid port") from exc
    if port == 0:
        raise ValueError(f"{url!r} has port 0, which no broker listens on")
    tls = parts.scheme == "mqtts"
    return MqttUrl(
        parts.hostname,
        port or (8883 if tls else 1883),
        tls,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
    )
