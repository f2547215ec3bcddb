"""The concrete devices' side of the daemon: the serial transport and the Bluetooth LE radio
seen through the sessions' protocols (transport errors become `DeviceUnavailable` or
`Unavailable`), and the companion services every BLE device is served with.

What lives here: `SerialOpener` (a configured device's port found, by path or USB VID:PID,
opened, and who is behind it read from the port listing), `BleRadio` (one scanner and one
connector per adapter), `ble_companions` (battery and clock). Wired here, not in the sessions,
so that sessions import no transport and no driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from gateway.hub.config import BleConfig, DeviceConfig
from gateway.sdk import SerialSettings
from gateway.sessions.core import DeviceUnavailable
from gateway.sessions.serial import ByteStream
from gateway.transport.serial import (
    PortInfo,
    PortLister,
    SerialByteStream,
    SerialPortError,
    find_usb_port,
    list_system_ports,
    open_serial,
    port_info,
)

if TYPE_CHECKING:
    from gateway.sessions.ble_ports import Advertisement, Companions, Link
    from gateway.transport.ble.connector import BleConnector
    from gateway.transport.ble.scanner import BleScanner


class _SerialStream:
    """The serial transport seen through the serial session's `ByteStream` protocol."""

    def __init__(self, stream: SerialByteStream) -> None:
        self._stream = stream
        self.identity: Mapping[str, str | None] = {}  # USB serial and model, when known

    async def read(self) -> bytes:
        try:
            return await self._stream.read()
        except SerialPortError as exc:
            raise DeviceUnavailable(str(exc)) from exc

    async def write(self, data: bytes) -> None:
        try:
            await self._stream.write(data)
        except (SerialPortError, OSError, TimeoutError) as exc:
            raise DeviceUnavailable(str(exc) or type(exc).__name__) from exc

    async def close(self) -> None:
        await self._stream.close()


class SerialOpener:
    """Finds a device's port (by path, or by USB VID:PID) and opens it."""

    def __init__(self, lister: PortLister = list_system_ports) -> None:
        self._lister = lister

    async def __call__(self, device: DeviceConfig, settings: SerialSettings) -> ByteStream:
        try:  # one listing per open: it finds a USB device's port and says who is behind it
            listed: list[PortInfo] = list(await asyncio.to_thread(self._lister))
        except OSError as exc:  # sysfs can vanish under the lister during a hot-plug
            if device.usb is not None:
                raise DeviceUnavailable(f"cannot list serial ports: {exc}") from exc
            listed = []  # a port by path opens anyway; who is behind it is unknown this time
        path = device.port
        if path is None and device.usb is not None:
            usb = device.usb
            path = find_usb_port(lambda: listed, usb.vid, usb.pid, usb.serial)
            if path is None:
                raise DeviceUnavailable(f"no USB serial port {usb.describe()} present")
        if path is None:
            raise DeviceUnavailable("no port configured")
        try:
            stream = _SerialStream(await open_serial(path, settings))
        except (SerialPortError, ValueError) as exc:  # pyserial raises ValueError for settings
            raise DeviceUnavailable(str(exc)) from exc
        info = port_info(lambda: listed, path)
        if info is not None and info.vid is not None and info.pid is not None:
            # Who is behind the port: a replaced adapter or device shows as another serial
            # number or model (the session signs device-identity-changed).
            model = f"usb:{info.vid:04x}:{info.pid:04x}"
            stream.identity = {"serial": info.serial_number, "model": model}
        return stream


class BleRadio:
    """The BLE transport (one scanner, one connector per adapter) seen through the session's
    `Radio` protocol: transport errors become `DeviceUnavailable`."""

    def __init__(self, ble: BleConfig) -> None:
        from gateway.transport.ble.connector import BleConnector
        from gateway.transport.ble.scanner import BleScanner

        self.scanner: BleScanner = BleScanner(
            ble.adapter, passive=ble.passive, watchdog=ble.scanner_watchdog
        )
        self.connector: BleConnector = BleConnector(
            ble.adapter, max_connections=ble.max_connections, connect_timeout=ble.connect_timeout
        )
        self.scanner.watch.listen(self.connector.bluez_restarted)

    async def wait_for(self, predicate: Callable[[Advertisement], bool]) -> Advertisement:
        return await self.scanner.wait_for(predicate)

    def forget(self, address: str) -> None:
        self.scanner.forget(address)

    async def connect(self, advert: Advertisement, name: str) -> Link:
        from gateway.sessions.ble_ports import Unavailable
        from gateway.transport.ble.errors import BleConnectError, BleUnavailable
        from gateway.transport.ble.scanner import Advert

        assert isinstance(advert, Advert)  # noqa: S101  # only the scanner's adverts come here
        try:
            return await self.connector.connect(advert, name)
        except BleConnectError as exc:
            raise Unavailable(str(exc), retry_after=4.0 if exc.out_of_slots else 0.0) from exc
        except BleUnavailable as exc:
            raise Unavailable(str(exc), retry_after=5.0) from exc

    async def close_stale(self, address: str) -> None:
        await self.connector.close_stale(address)

    async def clear_cache(self, address: str) -> None:
        await self.connector.clear_cache(address)


def ble_companions() -> Companions:
    """The services the hub serves on every BLE device beside its own profile: the battery
    level (Battery service) read on each connection and the hub's time written to the Current
    Time service. Wired here so that sessions import no driver."""
    from gateway.drivers import gatt_bas, gatt_cts
    from gateway.sessions.ble_ports import Companions

    return Companions(
        battery=gatt_bas.DRIVER, clock=(gatt_cts.CURRENT_TIME, gatt_cts.encode_current_time)
    )
