"""An asyncio MQTT client on paho-mqtt 2.x, driven from the event loop: I/O only.

paho's own network thread competes with the signer for the GIL, so this module runs paho through
its external-loop API instead: the socket is registered with the asyncio loop (`add_reader` /
`add_writer` from paho's socket callbacks) and a one-second timer calls `loop_misc` for keepalive.
Only the blocking TCP connect and TLS handshake run in a worker thread, bounded by a timeout.

A publish is done when the broker acknowledges it (PUBACK for QoS 1, written for QoS 0); if the
connection drops first its future fails with `MqttDisconnected`. Nothing is queued across
connections: the caller's durable store is the source of truth, and it republishes after a
reconnect (duplicates are allowed, loss is not).

What the broker may send is bounded (`gateway.transport.mqtt_inbound`): packets up to 64 KiB,
announced in MQTT 5's CONNECT and enforced on every read for 3.1.1 too, and no PUBLISH, since
the hub subscribes to nothing. Anything else drops the connection with one ERROR line that says
what to check; the caller reconnects with its normal backoff.

Settings, TLS, the blocking connect and the meaning of each failure live in
`gateway.transport.mqtt_connect`, shared with the verify command's subscriber. This module
imports only the standard library, paho and those modules; never drivers, the hub core or the
tools (import-linter checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.transport.mqtt_connect import (
    MqttConnectError,
    MqttDisconnected,
    MqttError,
    MqttProtocolViolation,
    MqttPublishRejected,
    MqttSettings,
    MqttUnreachable,
    MqttWill,
    close_quietly,
    connack_error,
    early_close_error,
    open_connection,
    paho_client,
)
from gateway.transport.mqtt_inbound import MAX_INCOMING_PACKET, GuardedPahoClient, InboundGuard

_LOGGER = logging.getLogger(__name__)

_MISC_INTERVAL = 1.0
_DISCONNECT_WITH_WILL = 0x04


class MqttClient:
    """One MQTT connection at a time, driven by the running asyncio loop.

    `connect()` may be called again after the connection is lost or closed; each connection uses
    a fresh paho client so no state leaks from one connection to the next. `max_packet_size`
    bounds every packet the broker may send (see `gateway.transport.mqtt_inbound`).
    """

    def __init__(
        self, settings: MqttSettings, *, max_packet_size: int = MAX_INCOMING_PACKET
    ) -> None:
        self._settings = settings
        self._max_packet_size = max_packet_size
        self._guard: InboundGuard | None = None
        self._paho: paho.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: Any = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._misc_timer: asyncio.TimerHandle | None = None
        self._connected = False
        self._closing = False
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._last_error = ""
        self._receive_maximum = 65535

    @property
    def settings(self) -> MqttSettings:
        return self._settings

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def receive_maximum(self) -> int:
        """The broker's Receive Maximum from CONNACK (MQTT 5); 65535 when it sets none."""
        return self._receive_maximum

    @property
    def in_flight(self) -> int:
        """Publishes handed to the broker and not yet acknowledged."""
        return len(self._pending)

    @property
    def disconnected(self) -> asyncio.Event:
        """Set while there is no connection; cleared once CONNACK accepted the connection."""
        return self._disconnected

    async def wait_disconnected(self) -> None:
        """Return when the connection is lost or closed."""
        await self._disconnected.wait()

    # The timeout is a parameter rather than the caller's asyncio.timeout because it also bounds
    # the worker thread's blocking connect and handshake, which cancellation cannot reach.
    async def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait for the broker's CONNACK, all within `timeout` seconds."""
        if self._connected:
            raise RuntimeError("MqttClient.connect() called while connected")
        self._teardown()  # whatever a lost connection left behind
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._closing = False
        self._last_error = ""
        self._receive_maximum = 65535
        client = self._make_paho(timeout)
        self._paho = client
        connack: asyncio.Future[ReasonCode] = loop.create_future()
        self._connack = connack
        try:
            async with asyncio.timeout(timeout):
                await self._open_socket(loop, client)
                self._attach(loop, client)
                reason = await connack
        except TimeoutError as exc:
            self._teardown()
            raise MqttUnreachable(
                f"no CONNACK from {self._where()} within {timeout:.0f} s:"
                " check the broker address and the network"
            ) from exc
        except BaseException:
            self._teardown()
            raise
        if reason.is_failure:
            self._teardown()
            raise connack_error(reason, self._settings)
        self._connected = True
        self._disconnected.clear()
        _LOGGER.info("mqtt connected to %s (MQTT %s)", self._where(), self._settings.protocol)

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Hand one message to the broker; the future resolves on PUBACK (QoS 0: when written)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        client = self._paho
        if client is None or not self._connected or self._closing:
            future.set_exception(MqttDisconnected(f"not connected to {self._where()}"))
            return future
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            future.set_exception(
                MqttDisconnected(f"publish to {self._where()} failed: {paho.error_string(info.rc)}")
            )
        elif info.is_published():
            future.set_result(None)
        else:
            self._pending[info.mid] = future
        return future

    async def disconnect(self, drain_timeout: float = 5.0, *, with_will: bool = False) -> None:
        """Publish nothing more, wait (bounded) for in-flight acks, then send DISCONNECT.

        `with_will` asks the broker to publish the last will anyway (MQTT 5 reason code 0x04); on
        MQTT 3.1.1 the connection is closed without DISCONNECT, which has the same effect.
        """
        client = self._paho
        if client is None:
            return
        self._closing = True
        try:
            async with asyncio.timeout(drain_timeout):
                if self._pending:
                    await asyncio.wait(list(self._pending.values()))
                if with_will and self._settings.protocol != "5":
                    self.abort()
                    return
                if self._connected:
                    reason = ReasonCode(
                        PacketTypes.DISCONNECT,
                        identifier=_DISCONNECT_WITH_WILL if with_will else 0,
                    )
                    client.disconnect(reasoncode=reason if self._settings.protocol == "5" else None)
                    await self._disconnected.wait()
        except TimeoutError:
            _LOGGER.warning(
                "mqtt disconnect from %s took over %.1f s; closed the socket instead",
                self._where(),
                drain_timeout,
            )
        finally:
            self._teardown()

    def abort(self) -> None:
        """Close the socket at once without DISCONNECT: the broker will publish the last will."""
        self._teardown()

    # -- connection set-up -------------------------------------------------------------------

    def _make_paho(self, timeout: float) -> paho.Client:
        client = cast(
            GuardedPahoClient,
            paho_client(self._settings, timeout, client_class=GuardedPahoClient),
        )
        guard = InboundGuard(
            self._where(), max_packet=self._max_packet_size, v5=self._settings.protocol == "5"
        )
        client.guard = self._guard = guard
        # Only the log callback is set now: it may run on the connect thread and just stores a
        # string. The others touch asyncio objects and are set on the loop thread in _attach().
        client.on_log = self._on_log
        return client

    async def _open_socket(self, loop: asyncio.AbstractEventLoop, client: paho.Client) -> None:
        # paho's connect() does a blocking TCP connect and TLS handshake, so it runs in a thread.
        # If we are cancelled or time out meanwhile, the thread closes what it opened itself.
        lock = threading.Lock()
        abandoned = False

        def blocking_connect() -> None:
            # Raises MqttConnectError and closes its socket on failure.
            open_connection(client, self._settings, max_packet_size=self._max_packet_size)
            with lock:
                if abandoned:
                    close_quietly(client.socket())

        try:
            await loop.run_in_executor(None, blocking_connect)
        except BaseException:
            with lock:
                abandoned = True
            raise

    def _attach(self, loop: asyncio.AbstractEventLoop, client: paho.Client) -> None:
        sock = client.socket()
        if sock is None:  # the broker hung up while CONNECT was being written
            raise self._early_close_error()
        self._sock = sock
        # paho leaves Nagle on; small PUBLISH packets then wait on the broker's delayed ACKs.
        raw: Any = sock  # paho types it as a SocketLike protocol without setsockopt
        with contextlib.suppress(OSError, AttributeError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        loop.add_reader(sock, self._read)
        if client.want_write():
            loop.add_writer(sock, self._write)
        self._misc_timer = loop.call_later(_MISC_INTERVAL, self._misc)

    def _where(self) -> str:
        return self._settings.where

    # -- loop plumbing (all on the event loop thread) -----------------------------------------

    def _read(self) -> None:
        client = self._paho
        if client is None:
            return
        client.loop_read()
        # TLS may hold decrypted bytes the selector cannot see; read them now.
        sock = self._sock
        loop = self._loop
        pending = getattr(sock, "pending", _zero)() if sock is not None else 0
        if self._paho is client and loop is not None and pending > 0:
            loop.call_soon(self._read)

    def _write(self) -> None:
        if self._paho is not None:
            self._paho.loop_write()

    def _misc(self) -> None:
        client = self._paho
        if client is None or self._loop is None:
            return
        client.loop_misc()
        if self._paho is client:
            self._misc_timer = self._loop.call_later(_MISC_INTERVAL, self._misc)

    def _on_register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.add_writer(sock, self._write)

    def _on_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_writer(sock)

    def _on_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._sock = None

    def _on_log(self, _client: paho.Client, _userdata: Any, level: int, message: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self._last_error = message

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if isinstance(receive_maximum, int):
            self._receive_maximum = receive_maximum
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(reason)

    def _on_publish(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason: ReasonCode,
        _properties: Properties,
    ) -> None:
        future = self._pending.pop(mid, None)
        if future is None or future.done():
            return
        if reason.is_failure:
            future.set_exception(
                MqttPublishRejected(
                    f"broker {self._where()} rejected a publish: {reason.getName()};"
                    " check the broker's ACL for this hub's topics"
                )
            )
        else:
            future.set_result(None)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        violation = self._guard.violation if self._guard is not None else None
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(self._early_close_error())
        elif violation is not None and not self._closing:
            _LOGGER.error("mqtt: %s", violation)  # once: this connection is now gone
        elif self._connected and not self._closing:
            detail = self._last_error or reason.getName()
            _LOGGER.warning(
                "mqtt connection to %s lost (%s); the uplink reconnects with backoff",
                self._where(),
                detail,
            )
        how = "dropped after a protocol violation" if violation else "lost"
        self._lost(MqttDisconnected(f"connection to {self._where()} {how}"))

    def _early_close_error(self) -> MqttConnectError:
        if self._guard is not None and self._guard.violation is not None:
            return MqttProtocolViolation(self._guard.violation)
        return early_close_error(self._settings, self._last_error)

    # -- teardown ---------------------------------------------------------------------------

    def _lost(self, error: MqttError) -> None:
        """Fail everything still waiting; leave the object ready for a new connect()."""
        self._connected = False
        self._disconnected.set()
        if self._misc_timer is not None:
            self._misc_timer.cancel()
            self._misc_timer = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def _teardown(self) -> None:
        client, self._paho = self._paho, None
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        if client is not None:
            for name in ("on_connect", "on_disconnect", "on_publish", "on_socket_close"):
                setattr(client, name, None)
            close_quietly(client.socket())
        if self._connack is not None and not self._connack.done():
            self._connack.cancel()
        self._connack = None
        self._lost(MqttDisconnected(f"connection to {self._where()} closed"))


def publisher_factory(
    settings: MqttSettings, connect_timeout: float = 10.0
) -> Callable[[str, bytes], Awaitable[MqttClient]]:
    """What the uplink wants: `factory(will_topic, will_payload)` -> a connected client.

    The will is retained, QoS 1. Each call makes a new connection with these settings.
    """

    async def connect(will_topic: str, will_payload: bytes) -> MqttClient:
        client = MqttClient(replace(settings, will=MqttWill(will_topic, will_payload)))
        await client.connect(timeout=connect_timeout)
        return client

    return connect


def _zero() -> int:
    return 0
