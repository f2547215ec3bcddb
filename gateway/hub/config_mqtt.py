"""The `[mqtt]` table of the hub's config: where the readings go and how the link is guarded.

The refusals that keep a patient's readings off an unsafe link live here: plaintext only to
loopback unless asked for, no credentials in the URL, a CA for every mqtts:// URL, private key
and password files (see `ConfigTable.private_file`), and a bound on what the uplink holds.
`key_file` and `password_file` may name a systemd credential instead of a path
("credential:mqtt-key"): the file of that name in `$CREDENTIALS_DIRECTORY`, which systemd fills
from `LoadCredential=` (systemd/rtm-gateway.service.d/credentials.conf).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gateway.hub.config_reader import ConfigTable
from gateway.transport.mqtt_url import parse_mqtt_url

_TOPIC_PREFIX = re.compile(r"^[^#+\s]+[^#+/\s]$")

MAX_IN_FLIGHT = 100_000
"""The most entries the uplink may lease at once (`batch_size` x `window`): about 100 MB of
signed entries in memory at the most."""


@dataclass(frozen=True, slots=True)
class MqttConfig:
    url: str
    host: str
    port: int
    tls: bool
    topic_prefix: str = "rtm/v1"
    protocol: Literal["5", "3.1.1"] = "5"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    keepalive: int = 60
    batch_size: int = 100
    window: int = 32
    reconnect_max: float = 60.0
    allow_plaintext: bool = False
    """mqtt:// to a host that is not this machine was allowed explicitly (warned at start)."""


CREDENTIAL_PREFIX = "credential:"
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
_SERVICE_CREDENTIALS = "/run/credentials/rtm-gateway.service"  # where systemd puts them


def secret_file(table: ConfigTable, key: str, base: Path, *, resolve: bool = True) -> Path | None:
    """A key or password file: a private file's path, or "credential:NAME" for the file systemd
    put in `$CREDENTIALS_DIRECTORY` (LoadCredential=NAME:SOURCE in the unit). Without
    `resolve`, a credential is named where the service would find it, unchecked."""
    value = table.optional_str(key)
    if value is None or not value.startswith(CREDENTIAL_PREFIX):
        return table.private_file(key, base)
    name = value.removeprefix(CREDENTIAL_PREFIX)
    if not _CREDENTIAL_NAME.fullmatch(name):
        raise table.error(key, f"{name!r} is not a credential name (letters, digits, '-_.')")
    if not resolve:
        return Path(os.environ.get("CREDENTIALS_DIRECTORY") or _SERVICE_CREDENTIALS) / name
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise table.error(
            key,
            f"credential {name!r}: $CREDENTIALS_DIRECTORY is not set; systemd sets it for a "
            f"service with LoadCredential={name}:/etc/rtm-gateway/credentials/{name} "
            "(systemd/rtm-gateway.service.d/credentials.conf). Outside the service, run as "
            "root with CREDENTIALS_DIRECTORY=/etc/rtm-gateway/credentials",
        )
    path = Path(directory) / name
    if not path.is_file():
        raise table.error(
            key,
            f"credential {name!r} not found: no {path}; add "
            f"LoadCredential={name}:/etc/rtm-gateway/credentials/{name} to the unit",
        )
    mode = path.stat().st_mode
    # systemd grants the service's user alone, by owner or by an ACL (which shows as group
    # bits); a copy readable by everyone is a secret already out.
    if mode & 0o007:
        raise table.error(
            key,
            f"{path} is readable by others ({stat.filemode(mode)}); anyone who can read it "
            f"can act as this hub. Run 'chmod 600 {path}' (and replace the secret)",
        )
    return path


def is_loopback(host: str) -> bool:
    """This machine: plaintext to it never crosses a network."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_mqtt(table: ConfigTable, base: Path, hub_id: str, *, secrets: bool = True) -> MqttConfig:
    """The `[mqtt]` table. `secrets=False` leaves `credential:` files unresolved and the
    password unread (see `load_config`)."""
    table.check_known(
        {
            "url",
            "topic_prefix",
            "protocol",
            "ca_file",
            "cert_file",
            "key_file",
            "username",
            "password_file",
            "client_id",
            "keepalive",
            "batch_size",
            "window",
            "reconnect_max",
            "allow_plaintext",
        }
    )
    url = table.text("url", hint="mqtt://HOST:PORT or mqtts://HOST:PORT")
    try:
        parts = parse_mqtt_url(url)
    except ValueError as exc:
        raise table.error("url", f"{exc}; expected mqtt://HOST:PORT or mqtts://HOST:PORT") from exc
    if parts.username is not None or parts.password is not None:
        raise table.error(
            "url",
            "credentials in the URL are not used (and would be shown wherever the URL is); "
            "put the user in username and the password in a password_file",
        )
    tls = parts.tls
    allow_plaintext = table.boolean("allow_plaintext", False)
    if not tls and not allow_plaintext and not is_loopback(parts.host):
        raise table.error(
            "url",
            f"mqtt:// would send the patient's readings (and any password) to {parts.host} "
            "unencrypted; use mqtts://, or set allow_plaintext = true for a network you trust",
        )
    protocol = table.text("protocol", "5")
    if protocol not in {"5", "3.1.1"}:
        raise table.error("protocol", f'{protocol!r} is not supported; expected "5" or "3.1.1"')
    cert_file = table.file_path("cert_file", base)
    key_file = secret_file(table, "key_file", base, resolve=secrets)
    if (cert_file is None) != (key_file is None):
        raise table.error(
            "key_file" if key_file is None else "cert_file",
            "mutual TLS needs both cert_file and key_file",
        )
    system_ca = table.optional_str("ca_file") == "system"
    ca_file = None if system_ca else table.file_path("ca_file", base)
    if not tls and (ca_file or system_ca or cert_file):
        raise table.error("url", "ca_file/cert_file are set but the url is not mqtts://")
    if tls and ca_file is None and not system_ca:
        raise table.error(
            "ca_file",
            "mqtts:// needs the CA that signed the broker's certificate (a PEM file), or "
            '"system" to trust every public CA this machine trusts',
        )
    password_path = secret_file(table, "password_file", base, resolve=secrets)
    password = None
    if password_path is not None and secrets:
        try:
            password = password_path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise table.error("password_file", f"cannot read {password_path}: {exc}") from exc
    username = table.optional_str("username")
    if password_path is not None and username is None:
        raise table.error("username", "password_file is set but username is missing")
    batch_size = table.integer("batch_size", 100, 1, 10_000)
    window = table.integer("window", 32, 1, 1000)
    if batch_size * window > MAX_IN_FLIGHT:
        # The uplink leases batch_size x window entries at once: bound what it holds in memory.
        raise table.error(
            "window",
            f"batch_size x window is {batch_size * window:,}; at most {MAX_IN_FLIGHT:,} "
            "entries may be in flight (lower one of them)",
        )
    return MqttConfig(
        allow_plaintext=allow_plaintext,
        url=url,
        host=parts.host,
        port=parts.port,
        tls=tls,
        topic_prefix=table.text(
            "topic_prefix",
            "rtm/v1",
            pattern=_TOPIC_PREFIX,
            hint="a topic prefix without '+', '#' or a trailing '/'",
        ),
        protocol="5" if protocol == "5" else "3.1.1",
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=username,
        password=password,
        client_id=table.optional_str("client_id") or f"rtm-gateway-{hub_id}",
        keepalive=table.integer("keepalive", 60, 5, 3600),
        batch_size=batch_size,
        window=window,
        reconnect_max=table.number("reconnect_max", 60.0, 0.1, 3600.0),
    )
