"""Connections to Bluetooth LE devices on one adapter, never more than its slots allow.

What lives here: `BleConnector`. It connects through bleak-retry-connector
(`establish_connection` retries by error class: a transient `le-connection-abort-by-local` at
once, out-of-slot errors after ~4 s) under an outer safety timeout (a D-Bus call can stall),
holds a per-adapter slot semaphore, cleans up stale links (BlueZ keeps links up after the process
that made them dies), clears BlueZ's service cache on demand, and orphans every link when
bluetoothd restarts. What may not: scanning (`scanner`) or what is done on a link (`link`).
"""

from __future__ import annotations

import asyncio
import contextlib

from bleak import BleakClient
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError
from bleak_retry_connector import (
    BleakOutOfConnectionSlotsError,
    close_stale_connections_by_address,
    establish_connection,
)
from bleak_retry_connector import clear_cache as clear_bluez_cache

from gateway.transport.ble.errors import BleConnectError, BleUnavailable
from gateway.transport.ble.link import GattLink
from gateway.transport.ble.link_security import device_path
from gateway.transport.ble.scanner import Advert


class BleConnector:
    """Makes connections on one adapter, never more than `max_connections` at once."""

    def __init__(
        self,
        adapter: str = "hci0",
        *,
        max_connections: int = 5,
        connect_timeout: float = 20.0,
        max_attempts: int = 3,
    ) -> None:
        self.adapter = adapter
        self.max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout = connect_timeout
        self._max_attempts = max_attempts
        self._in_use = 0
        self._links: set[GattLink] = set()

    def bluez_restarted(self) -> None:
        """bluetoothd went away or came back: every link it held is gone."""
        for link in list(self._links):
            link.orphan("bluetoothd restarted")

    @property
    def in_use(self) -> int:
        """Connections held now (or being made)."""
        return self._in_use

    async def close_stale(self, address: str) -> None:
        """Disconnect a link BlueZ still holds for `address` from an earlier run."""
        with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError, TimeoutError):
            async with asyncio.timeout(10):
                await close_stale_connections_by_address(address)

    async def clear_cache(self, address: str) -> None:
        """Forget BlueZ's cached services for `address` (Adapter1.RemoveDevice)."""
        with contextlib.suppress(BleakError, BleakDBusError, OSError, EOFError, TimeoutError):
            async with asyncio.timeout(10):
                await clear_bluez_cache(address)

    async def connect(self, advert: Advert, name: str) -> GattLink:
        """Connect with retries; `BleConnectError` when it cannot. Waits for a free slot."""
        await self._slots.acquire()
        self._in_use += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._in_use -= 1
                self._slots.release()

        link: GattLink | None = None

        def disconnected(client: BleakClient) -> None:
            if link is not None:
                link.on_disconnect(client)

        # establish_connection has its own per-attempt timeout (20 s); this one bounds the
        # whole call, since a stalled D-Bus call would otherwise hold the slot forever.
        outer = self._connect_timeout * self._max_attempts + 15.0
        try:
            async with asyncio.timeout(outer):
                client = await establish_connection(
                    BleakClient,
                    advert.device,
                    name,
                    disconnected_callback=disconnected,
                    max_attempts=self._max_attempts,
                )
        except BleakOutOfConnectionSlotsError as exc:
            release()
            raise BleConnectError(
                f"{advert.address}: the controller of {self.adapter} has no free connection "
                f"slot, or the device stopped answering ({exc.__cause__ or exc}); lower "
                "[ble] max_connections if this keeps happening",
                out_of_slots=True,
            ) from exc
        except TimeoutError as exc:
            release()
            raise BleConnectError(f"connecting took longer than {outer:.0f} s") from exc
        except BleakBluetoothNotAvailableError as exc:
            release()
            raise BleUnavailable(f"adapter {self.adapter} is not available ({exc})") from exc
        except (BleakError, BleakDBusError, OSError, EOFError) as exc:
            release()
            raise BleConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            release()
            raise

        def release_link() -> None:
            self._links.discard(link)  # assigned just below, before any call
            release()

        path = device_path(advert.device.details, self.adapter, advert.address)
        link = GattLink(client, advert.address, release_link, path)
        self._links.add(link)
        if not client.is_connected:  # lost between the connect and now
            link.on_disconnect(client)
        return link
