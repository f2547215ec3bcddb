"""`rtm-gateway verify --url`: subscribe to a broker and check what the hubs publish there.

`run_verify` reads what it is told to trust (the pinned hub -> key map or one hub's JWK, the
state an earlier run left: `gateway.tools.verify_files`), subscribes (QoS 1) with a paho client
on paho's own network thread and feeds every message to a `Verifier` (`gateway.tools.verifier`,
pure) until a count or a time limit, then returns its `VerifyReport` and moves the state on for
the hubs that passed. The connection is opened the way the hub opens its own
(`gateway.transport.mqtt_connect`: TLS set-up, the closing of a socket whose handshake failed,
and what each failure means), with the command's flags named in the messages.

What may not live here: the checks themselves, anything of the hub's own pipeline. The daemon
never imports this module. Health values go into the report, never into log lines.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Final

from paho.mqtt.client import MQTT_LOG_ERR

from gateway.hub.identity import PublicKey
from gateway.tools.verifier import DEFAULT_PREFIX, EntryCallback, Verifier
from gateway.tools.verify_files import (
    VerifyFileError,
    bind_jwk,
    load_keys,
    load_state,
    save_state,
)
from gateway.tools.verify_report import LogHead, StoppedBy, VerifyReport
from gateway.transport.mqtt_connect import (
    MqttConnectError,
    MqttSettings,
    ProtocolName,
    SettingNames,
    connack_error,
    early_close_error,
    open_connection,
    paho_client,
)
from gateway.transport.mqtt_url import parse_mqtt_url

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT: Final = 10.0
_KEEPALIVE: Final = 30
_FLAG_NAMES: Final = SettingNames(
    ca_file="--ca-file",
    client_cert="--cert-file/--key-file",
    login="--username/--password-file (or the user in the URL)",
)


class VerifyError(Exception):
    """`run_verify` could not run: bad arguments, key file, TLS setup. The message says why."""


class VerifyUsageError(VerifyError):
    """The arguments, a key file or the state file cannot be used (the command exits 2)."""


class ConnectError(VerifyError):
    """The broker could not be reached, refused us, or the TLS handshake failed."""


def run_verify(
    url: str,
    *,
    hub: str | None = None,
    keys_path: Path | None = None,
    jwk_path: Path | None = None,
    trust_status_keys: bool = False,
    strict: bool = False,
    expected_last: Mapping[str, int] | None = None,
    state_path: Path | None = None,
    count: int | None = None,
    seconds: float | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    protocol: ProtocolName = "5",
    topic_prefix: str = DEFAULT_PREFIX,
    on_entry: EntryCallback | None = None,
    on_ready: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> VerifyReport:
    """Subscribe to `{prefix}/{hub or +}/#` (QoS 1) and verify until `count` entries were
    received or `seconds` passed (or Ctrl-C, if neither is given), or `stop` is set from
    another thread (the demo's receiver ends this way).

    Keys: `keys_path` (hub id -> JWK) or `jwk_path` bound to `hub`; `trust_status_keys`
    takes a key from the status message of a hub that has none pinned, and fails that hub.
    `state_path` holds each hub's last verified (log, seq, hash): read before, written after
    for the hubs that passed. `on_ready` is called once the broker has acknowledged the
    subscription. Raises `ConnectError` (refused, unreachable, TLS, authentication) or
    `VerifyError` (arguments, key or state file); never a bare traceback for those.
    """
    try:
        target = parse_mqtt_url(url)
    except ValueError as exc:
        raise VerifyUsageError(f"broker URL {exc}") from exc
    if (cert_file is None) != (key_file is None):
        raise VerifyUsageError("mutual TLS needs both a client certificate and its key")
    if (ca_file or cert_file) and not target.tls:
        raise VerifyUsageError("TLS files were given for a plain mqtt:// URL; use mqtts://")
    keys = _pinned_keys(hub, keys_path, jwk_path, trust_status_keys=trust_status_keys)
    try:
        earlier = load_state(state_path) if state_path is not None else {}
    except VerifyFileError as exc:
        raise VerifyUsageError(str(exc)) from exc
    settings = MqttSettings(
        host=target.host,
        port=target.port,
        tls=target.tls,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        username=username if username is not None else target.username,
        password=password if password is not None else target.password,
        client_id=f"rtm-verify-{secrets.token_hex(4)}",
        protocol=protocol,
        keepalive=_KEEPALIVE,
        names=_FLAG_NAMES,
    )
    verifier = Verifier(
        keys,
        hub,
        trust_status_keys=trust_status_keys,
        strict=strict,
        earlier=earlier,
        expected_last=expected_last,
        topic_prefix=topic_prefix,
        on_entry=on_entry,
    )
    topic = f"{topic_prefix.rstrip('/')}/{hub or '+'}/#"
    session = _Session(verifier, topic, count, on_ready, settings)
    if stop is not None:
        session.done = stop
    client = paho_client(settings, _CONNECT_TIMEOUT, reconnect=True)
    session.attach(client)
    try:
        open_connection(client, settings)
    except MqttConnectError as exc:
        raise ConnectError(str(exc)) from exc
    stopped_by: StoppedBy = "time"
    client.loop_start()
    try:
        if session.done.wait(seconds):
            reached = count is not None and verifier.received >= count
            stopped_by = "count" if reached or stop is None else "interrupted"
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    finally:
        client.disconnect()
        client.loop_stop()
    if session.failures:
        raise ConnectError(session.failures[0])
    if session.callback_errors:
        error = session.callback_errors[0]
        raise VerifyError(f"the on_entry callback failed: {error!r}") from error
    report = verifier.report(stopped_by)
    if state_path is not None:
        report = _advance_state(state_path, earlier, report)
    return report


def _pinned_keys(
    hub: str | None,
    keys_path: Path | None,
    jwk_path: Path | None,
    *,
    trust_status_keys: bool,
) -> dict[str, PublicKey]:
    """What the command was told to trust; nothing at all is refused up front."""
    if keys_path is not None and jwk_path is not None:
        raise VerifyUsageError("give either --keys FILE (hub id -> JWK) or --jwk FILE --hub H")
    if jwk_path is not None and hub is None:
        raise VerifyUsageError("--jwk pins one hub's key: name that hub with --hub")
    if keys_path is None and jwk_path is None and not trust_status_keys:
        raise VerifyUsageError(
            "no key to verify with: give --keys FILE (hub id -> public JWK) or --jwk FILE "
            "--hub H; --trust-status-key takes keys from the unsigned status messages and "
            "fails the run"
        )
    try:
        if jwk_path is not None and hub is not None:
            return bind_jwk(jwk_path, hub)
        keys = load_keys(keys_path) if keys_path is not None else {}
    except VerifyFileError as exc:
        raise VerifyUsageError(str(exc)) from exc
    if hub is not None and keys and hub not in keys and not trust_status_keys:
        raise VerifyUsageError(f"--keys {keys_path} pins no key for hub {hub}")
    return keys


def _advance_state(
    path: Path, earlier: Mapping[str, LogHead], report: VerifyReport
) -> VerifyReport:
    """Keep each passing hub's new head; a failing hub keeps its old one, so running again
    does not make a replay, a rewind or a gap look clean."""
    heads = dict(earlier)
    held = []
    for hub in report.hubs:
        if hub.head is None:
            continue
        if hub.ok:
            heads[hub.hub] = hub.head
        else:
            held.append(hub.hub)
    try:
        save_state(path, heads)
    except VerifyFileError as exc:
        raise VerifyError(str(exc)) from exc
    if not held:
        return report
    note = f"the state in {path} was not moved on for the failed hub(s): {', '.join(held)}"
    return dataclasses.replace(report, notes=(*report.notes, note))


class _Session:
    """paho's callbacks for one `run_verify`; they run on paho's network thread."""

    def __init__(
        self,
        verifier: Verifier,
        topic: str,
        count: int | None,
        on_ready: Callable[[], None] | None,
        settings: MqttSettings,
    ) -> None:
        self.verifier = verifier
        self.topic = topic
        self.count = count
        self.on_ready = on_ready
        self.settings = settings
        self.done = threading.Event()
        self.failures: list[str] = []
        self.callback_errors: list[Exception] = []
        self.connected_once = False
        self.last_error = ""

    def attach(self, client: Client) -> None:
        client.on_connect = self.on_connect
        client.on_subscribe = self.on_subscribe
        client.on_message = self.on_message
        client.on_disconnect = self.on_disconnect
        client.on_log = self.on_log

    def on_log(self, _client: Client, _userdata: object, level: int, message: str) -> None:
        if level == MQTT_LOG_ERR:
            self.last_error = message

    def on_connect(
        self,
        client: Client,
        _userdata: object,
        _flags: ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.failures.append(str(connack_error(reason, self.settings)))
            self.done.set()
            return
        self.connected_once = True
        client.subscribe(self.topic, qos=1)  # here, so that a reconnect subscribes again

    def on_subscribe(
        self,
        _client: Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.failures.append(
                f"the broker refused the subscription to {self.topic}: "
                f"{', '.join(map(str, reasons))}; check its ACL"
            )
            self.done.set()
        elif self.on_ready is not None:
            self.on_ready()

    def on_message(self, _client: Client, _userdata: object, message: MQTTMessage) -> None:
        try:
            self.verifier.feed(message.topic, message.payload)
        except Exception as exc:  # an on_entry bug must not kill paho's thread unseen
            self.callback_errors.append(exc)
            self.done.set()
            return
        if self.count is not None and self.verifier.received >= self.count:
            self.done.set()

    def on_disconnect(
        self,
        _client: Client,
        _userdata: object,
        _flags: DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self.done.is_set():
            return
        if not self.connected_once:
            # Hung up before any CONNACK (a client certificate it wanted, say): retrying with
            # the same settings would only hang up again.
            self.failures.append(str(early_close_error(self.settings, self.last_error)))
            self.done.set()
        elif reason.is_failure:
            log.warning("lost the broker (%s); reconnecting", reason)
