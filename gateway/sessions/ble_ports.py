"""What a BLE device session needs from outside: the transport, seen through small protocols
(`Advertisement`, `Link` with its `Security`, `Radio`, and `Unavailable`, the error a connect
raises), and the companion services (`Companions`). gateway.app hands in the real ones (bleak's
transport, the Battery and Current Time drivers); tests may too. Nothing here does I/O or
imports a transport or a driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.sdk import GattDriver
from gateway.sessions.core import DeviceUnavailable


@dataclass(frozen=True, slots=True)
class Companions:
    """Services the hub serves on any device beside its own profile, handed in by the app so
    that sessions import no driver: `battery`, a driver whose readable characteristics are read
    once per connection (signed under that driver's identity), and `clock`, a characteristic
    and the encoder of the hub's time written to it while the hub's clock is synchronised."""

    battery: GattDriver | None = None
    clock: tuple[str, Callable[[datetime], bytes]] | None = None


NO_COMPANIONS = Companions()


class Advertisement(Protocol):
    @property
    def address(self) -> str: ...
    @property
    def name(self) -> str | None: ...


class Security(Protocol):
    """What BlueZ reports about a connected device's link (transport/ble/link_security.py has
    the rule): `encrypted` is True only when it is known to be."""

    @property
    def encrypted(self) -> bool: ...
    @property
    def bonded(self) -> bool: ...


class Link(Protocol):
    address: str
    lost: asyncio.Event
    lost_reason: str
    services: frozenset[str]

    def has(self, uuid: str, *properties: str) -> bool: ...
    async def read(self, uuid: str, timeout: float = ...) -> bytes: ...
    async def write(
        self, uuid: str, data: bytes, timeout: float = ..., *, response: bool = ...
    ) -> None: ...
    async def subscribe(
        self, uuid: str, callback: Callable[[bytes], None], timeout: float = ...
    ) -> None: ...
    async def security(self) -> Security: ...
    async def close(self) -> None: ...


class Radio(Protocol):
    """The scanner and connector of one adapter. `connect` raises `DeviceUnavailable` (with
    `retry_after` when the adapter asks for a longer wait) instead of the transport's errors."""

    async def wait_for(self, predicate: Callable[[Advertisement], bool]) -> Advertisement: ...
    def forget(self, address: str) -> None: ...
    async def connect(self, advert: Advertisement, name: str) -> Link: ...
    async def close_stale(self, address: str) -> None: ...
    async def clear_cache(self, address: str) -> None: ...


class Unavailable(DeviceUnavailable):
    """A connection could not be made; wait at least `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
