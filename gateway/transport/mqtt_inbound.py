"""What the hub's MQTT client accepts from a broker: a bound on packet size, and no PUBLISH.

The hub only publishes; it subscribes to nothing. So the broker may send it a CONNACK (first),
PUBACKs, PINGRESPs and (MQTT 5) a DISCONNECT, and nothing else. paho-mqtt 2.x checks neither:
it reads any packet up to the protocol's 256 MiB into memory, answers packets a server may not
send (a PUBREL gets a PUBCOMP, queued even when the broker never reads it), and keeps every
unrequested QoS 2 PUBLISH until its PUBREL. A hostile or broken broker, or anyone on an
`mqtt://` link, could so grow the hub's memory until the service's memory limit kills it.

`InboundGuard` follows the packet framing of the byte stream as it is read, and raises
`InboundViolation` at the fixed header of a packet of another type, or of a larger one, before
its body is read. `GuardedPahoClient` feeds it every byte paho reads. The violation is an
`OSError`, so paho handles it like a broken socket: it closes the connection and reports the
loss; the caller then says why (`InboundGuard.violation`) and reconnects with its backoff.

What may not live here: connecting, settings, the event-loop plumbing (`gateway.transport.mqtt`,
`gateway.transport.mqtt_connect`). Only the standard library and paho are imported.
"""

from __future__ import annotations

import paho.mqtt.client as paho

MAX_INCOMING_PACKET = 64 * 1024
"""The largest packet the hub accepts, fixed header included, announced in MQTT 5's CONNECT
(Maximum Packet Size). What the hub is sent is small: a CONNACK or PUBACK is a few bytes, plus
a reason string and user properties when a broker adds them (a few hundred bytes in practice);
a compliant broker leaves those out rather than exceed the client's limit. 64 KiB leaves two
orders of magnitude of room for them, while a packet that is read whole costs at most 64 KiB of
memory, against the 200 MB the service unit allows."""

_PUBLISH, _CONNACK, _PUBACK, _PINGRESP, _DISCONNECT = 3, 2, 4, 13, 14
_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}


class InboundViolation(ConnectionAbortedError):
    """The broker sent a packet the hub did not ask for, or one over the size limit."""


class InboundGuard:
    """Follows the MQTT framing of what is read from one connection; raises on a violation.

    `feed` takes the bytes in the order they were read, in pieces of any size. After a
    violation, `violation` says what happened and what to check; the connection must be
    dropped (everything fed after it is refused again).
    """

    def __init__(self, where: str, *, max_packet: int = MAX_INCOMING_PACKET, v5: bool = True):
        self._where = where
        self._max_packet = max_packet
        self._allowed = {_PUBACK, _PINGRESP} | ({_DISCONNECT} if v5 else set())
        self._connacked = False
        self._header: int | None = None  # the first byte of the packet being framed
        self._length = 0
        self._length_bytes = 0
        self._body_left = 0
        self.violation: str | None = None

    def feed(self, data: bytes) -> None:
        if self.violation is not None:
            raise InboundViolation(self.violation)
        at, end = 0, len(data)
        while at < end:
            if self._body_left:
                taken = min(self._body_left, end - at)
                self._body_left -= taken
                at += taken
            elif self._header is None:
                self._start(data[at])
                at += 1
            else:
                self._length_byte(data[at])
                at += 1

    def _start(self, header: int) -> None:
        kind = header >> 4
        if kind == _PUBLISH:
            self._refuse(
                f"broker {self._where} sent a PUBLISH (QoS {(header >> 1) & 3}) although this hub"
                " subscribes to nothing: a protocol violation. The connection is dropped and"
                " retried with backoff; check the broker's configuration for this hub's client"
                " id (bridges, plugins, a session shared with another client) and that nothing"
                " else answers at this address"
            )
        allowed = kind in self._allowed if self._connacked else kind == _CONNACK
        if not allowed:
            name = _NAMES.get(kind, f"type {kind}")
            self._refuse(
                f"broker {self._where} sent a {name} packet, which a publishing client is never"
                " sent: a protocol violation. The connection is dropped and retried with"
                " backoff; check the broker and that nothing else answers at this address"
            )
        self._connacked = True
        self._header, self._length, self._length_bytes = header, 0, 0

    def _length_byte(self, byte: int) -> None:
        # MQTT's variable-length integer: 7 bits a byte, least significant first. paho refuses
        # a fifth byte itself; stopping here keeps the sum small all the same.
        self._length += (byte & 0x7F) << (7 * self._length_bytes)
        self._length_bytes += 1
        if byte & 0x80 and self._length_bytes < 4:
            return
        size = 1 + self._length_bytes + self._length
        if size > self._max_packet:
            name = _NAMES.get((self._header or 0) >> 4, "packet")
            self._refuse(
                f"broker {self._where} sent a {name} of {size} bytes, over the {self._max_packet}"
                " bytes this hub accepts (announced in CONNECT under MQTT 5): a protocol"
                " violation. The connection is dropped and retried with backoff; check the"
                " broker's configuration and that nothing else answers at this address"
            )
        self._header, self._body_left = None, self._length

    def _refuse(self, why: str) -> None:
        self.violation = why
        raise InboundViolation(why)


class GuardedPahoClient(paho.Client):
    """A paho client whose every read passes through an `InboundGuard` (set `guard` before
    connecting). paho reads a packet's fixed header a byte at a time before asking for its
    body, so a violation is raised before any of an oversized body is buffered.

    `_sock_recv` is paho's one read of the socket (1.6 to 2.2); it is private, so the tests
    drive this class through real paho against a fake broker and fail if paho reads elsewhere.
    """

    guard: InboundGuard | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        data = super()._sock_recv(bufsize)
        if self.guard is not None:
            self.guard.feed(data)
        return data
