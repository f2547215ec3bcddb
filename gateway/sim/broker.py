"""A local mosquitto on a free loopback port: plain MQTT, TLS or mutual TLS, stopped and started
again on the same port to make outages. The tests, the benches and `rtm-gateway demo` use it.

`configure(directory, mode, pki=...)` writes the broker's config beside its log and returns a
stopped `Broker`; `start()` returns once the port accepts connections. What may not live here:
the certificates (`gateway.sim.pki` makes them) and any other broker (the demo's embedded
fallback stays in the demo).
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from gateway.sim.pki import Pki
from gateway.transport.mqtt_connect import MqttSettings

BrokerMode = Literal["plain", "tls", "mtls"]
SYSTEM_MOSQUITTO = "/usr/sbin/mosquitto"


class BrokerError(RuntimeError):
    """mosquitto is missing, exited, or did not listen in time; the message says which."""


def find_mosquitto() -> str | None:
    """The machine's mosquitto: on PATH, else where Debian puts it (/usr/sbin is often not on
    an ordinary user's PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return SYSTEM_MOSQUITTO if os.access(SYSTEM_MOSQUITTO, os.X_OK) else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Broker:
    """A running (or stopped) mosquitto. Paths are None where the mode does not use them."""

    mode: BrokerMode
    port: int
    config_file: Path
    log_file: Path
    executable: str
    host: str = "127.0.0.1"
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        scheme = "mqtt" if self.mode == "plain" else "mqtts"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def settings(self, **changes: Any) -> MqttSettings:
        """MqttSettings that reach this broker (with the client certificate under mtls)."""
        mtls = self.mode == "mtls"
        base = MqttSettings(
            host=self.host,
            port=self.port,
            tls=self.mode != "plain",
            ca_file=str(self.ca_file) if self.ca_file else None,
            cert_file=str(self.client_cert) if mtls and self.client_cert else None,
            key_file=str(self.client_key) if mtls and self.client_key else None,
        )
        return replace(base, **changes)

    def start(self, timeout: float = 10.0) -> None:
        """Start on the same port; return once the port accepts connections."""
        if self.running:
            return
        with self.log_file.open("ab") as log:
            # The machine's own mosquitto, with a config `configure` wrote.
            self._process = subprocess.Popen(  # noqa: S603
                [self.executable, "-c", str(self.config_file)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with {self._process.returncode}; its log:\n"
                    + self.log_file.read_text(errors="replace")
                )
            with contextlib.suppress(OSError), socket.create_connection(self.address, 0.2):
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(
            f"mosquitto did not listen on port {self.port} within {timeout} s; see {self.log_file}"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` s. Clients see the connection drop."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def configure(
    directory: Path,
    mode: BrokerMode = "plain",
    *,
    pki: Pki | None = None,
    name: str = "mosquitto",
    users: Mapping[str, str] | None = None,
    identity_as_username: bool = False,
    persistence: bool = False,
    extra_config: Sequence[str] = (),
    executable: str | None = None,
) -> Broker:
    """Write `<name>.conf` in `directory` and return the (stopped) broker it describes.

    `users` turns on a password file (anonymous logins are then refused). Without
    `persistence`, a restart forgets retained messages and sessions, like a broker that lost
    its disk; with it, sessions and queued messages survive a stop/start. `extra_config` lines
    come last (e.g. `max_inflight_messages 1000`).
    """
    executable = executable or find_mosquitto()
    if executable is None:
        raise BrokerError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    if mode != "plain" and pki is None:
        raise BrokerError(f"a {mode} broker needs a PKI (gateway.sim.pki.make_pki)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    store = directory / f"{name}-store"
    lines = [
        "per_listener_settings false",
        *(
            ["persistence true", f"persistence_location {store}/", "max_queued_messages 0"]
            if persistence
            else ["persistence false"]
        ),
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        # Run as whoever starts it: as root, mosquitto would otherwise switch to a "mosquitto"
        # user that cannot read the test's files.
        f"user {getpass.getuser()}",
        f"listener {port} 127.0.0.1",
    ]
    if pki is not None and mode != "plain":
        lines += [
            f"cafile {pki.ca_file}",
            f"certfile {pki.server_cert}",
            f"keyfile {pki.server_key}",
        ]
    if mode == "mtls":
        lines.append("require_certificate true")
        if identity_as_username:
            lines.append("use_identity_as_username true")
    if users:
        password_file = directory / f"{name}.passwd"
        write_password_file(password_file, users)
        lines += ["allow_anonymous false", f"password_file {password_file}"]
    else:
        lines.append("allow_anonymous true")
    lines += extra_config
    if persistence:
        store.mkdir(exist_ok=True)
    config = directory / f"{name}.conf"
    config.write_text("\n".join(lines) + "\n")
    tls = pki is not None and mode != "plain"
    return Broker(
        mode=mode,
        port=port,
        config_file=config,
        log_file=directory / f"{name}.log",
        executable=executable,
        ca_file=pki.ca_file if tls and pki else None,
        client_cert=pki.client_cert if tls and pki else None,
        client_key=pki.client_key if tls and pki else None,
    )


def write_password_file(path: Path, users: Mapping[str, str]) -> None:
    """Users in mosquitto's format: mosquitto_passwd when present, else the same $7$ hash."""
    path.write_text("")
    passwd = shutil.which("mosquitto_passwd")
    for user, password in users.items():
        if passwd:
            subprocess.run([passwd, "-b", str(path), user, password], check=True, timeout=10)  # noqa: S603
            continue
        # mosquitto 2.0's "$7$": PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, base64.
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
        encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
        with path.open("a") as handle:
            handle.write(f"{user}:$7$101${encoded[0]}${encoded[1]}\n")
