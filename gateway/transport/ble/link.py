"""One connected Bluetooth LE device, as the BLE session uses it.

What lives here: `GattLink` (read, write, subscribe, the link's security as BlueZ reports it;
`lost` is set when the link goes or `close` ends it; it frees its connection slot exactly once)
and `NotifyCallback`. What may not: making connections (that is `connector`) or scanning.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.exc import BleakDBusError, BleakError

from gateway.transport.ble.link_security import LinkSecurity, read_link_security

NotifyCallback = Callable[[bytes], None]


class GattLink:
    """A connected device. `lost` is set when the link goes (or `close` ends it)."""

    def __init__(
        self,
        client: BleakClient,
        address: str,
        release: Callable[[], None],
        device_path: str | None = None,
    ) -> None:
        self._client = client
        self.address = address
        self.device_path = device_path
        """The device's BlueZ object path (None: its security is not known)."""
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._release = release
        self._closed = False
        self._orphaned = False
        self.characteristics: dict[str, tuple[str, ...]] = {
            char.uuid.lower(): tuple(char.properties)
            for service in client.services
            for char in service.characteristics
        }
        self.services = frozenset(service.uuid.lower() for service in client.services)

    def on_disconnect(self, _client: BleakClient) -> None:
        """bleak's disconnected callback for this link."""
        if not self.lost.is_set():
            self.lost_reason = self.lost_reason or "link lost"
            self.lost.set()
        self._free()

    def _free(self) -> None:
        if not self._closed:
            self._closed = True
            self._release()

    def has(self, uuid: str, *properties: str) -> bool:
        """Whether the device offers this characteristic (with one of `properties`, if given)."""
        props = self.characteristics.get(uuid.lower())
        return props is not None and (not properties or bool(set(properties) & set(props)))

    async def read(self, uuid: str, timeout: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout):
            return bytes(await self._client.read_gatt_char(uuid))

    async def write(
        self, uuid: str, data: bytes, timeout: float = 10.0, *, response: bool = True
    ) -> None:
        async with asyncio.timeout(timeout):
            await self._client.write_gatt_char(uuid, data, response=response)

    async def subscribe(self, uuid: str, callback: NotifyCallback, timeout: float = 10.0) -> None:
        def deliver(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            callback(bytes(data))

        async with asyncio.timeout(timeout):
            await self._client.start_notify(uuid, deliver)

    async def security(self) -> LinkSecurity:
        """BlueZ's `Paired` and `Bonded` for this device now, and whether the link is known
        to be encrypted (link_security's rule)."""
        if self.device_path is None:
            return LinkSecurity()
        return await read_link_security(self.device_path)

    def orphan(self, reason: str) -> None:
        """The link died with bluetoothd: there is nobody left to ask for a disconnect."""
        self._orphaned = True
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    async def close(self) -> None:
        """Disconnect (bounded in time) and free the connection slot."""
        if not self.lost.is_set():
            self.lost_reason = "closed by the hub"
            self.lost.set()
        try:
            with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError, TimeoutError):
                # A new bluetoothd never answers for a link the old one had: do not wait
                # long (bleak still closes its own bus connection for the client).
                async with asyncio.timeout(2 if self._orphaned else 10):
                    await self._client.disconnect()
        finally:
            self._free()
