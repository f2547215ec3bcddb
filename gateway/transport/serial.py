"""Serial ports: find them (by path or USB VID:PID) and read bytes from them. I/O only.

Port enumeration sits behind `PortLister` so that VID:PID matching and hot-plug can be tested:
`serial.tools.list_ports` never lists pseudo-terminals.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gateway.sdk import SerialSettings

READ_CHUNK = 4096


class SerialPortError(Exception):
    """A port could not be opened, or went away while open (unplugged)."""


@dataclass(frozen=True, slots=True)
class PortInfo:
    device: str
    vid: int | None
    pid: int | None
    serial_number: str | None = None
    product: str | None = None


PortLister = Callable[[], Sequence[PortInfo]]


def list_system_ports() -> list[PortInfo]:
    """The machine's serial ports with their USB ids (pyserial's `list_ports`)."""
    from serial.tools import list_ports

    return [
        PortInfo(p.device, p.vid, p.pid, p.serial_number, p.product) for p in list_ports.comports()
    ]


def find_usb_port(lister: PortLister, vid: int, pid: int, serial_number: str | None) -> str | None:
    """The device path of the first port with this VID:PID (and serial number, when given)."""
    for port in sorted(lister(), key=lambda p: p.device):
        if (
            port.vid == vid
            and port.pid == pid
            and (serial_number is None or port.serial_number == serial_number)
        ):
            return port.device
    return None


def port_info(lister: PortLister, path: str) -> PortInfo | None:
    """What the lister knows of the port at `path` (a symlink such as /dev/serial/by-id/...
    resolved): its USB ids and serial number; None for a port it does not list."""
    real = os.path.realpath(path)
    for port in lister():
        if port.device in (path, real):
            return port
    return None


class SerialByteStream:
    """An open serial port as a stream of byte chunks."""

    def __init__(
        self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer

    async def read(self) -> bytes:
        """The next chunk of bytes. Raises `SerialPortError` when the port goes away."""
        try:
            data = await self._reader.read(READ_CHUNK)
        except OSError as exc:  # pyserial's SerialException is an OSError too
            raise SerialPortError(f"{self.path}: device went away ({exc})") from exc
        if not data:
            raise SerialPortError(f"{self.path}: device went away (end of stream)")
        return data

    async def write(self, data: bytes, timeout: float = 2.0) -> None:
        self._writer.write(data)
        async with asyncio.timeout(timeout):
            await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the inner await finishes, and the session would never stop.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()


async def open_serial(
    path: str, settings: SerialSettings, timeout: float = 5.0
) -> SerialByteStream:
    """Open `path` with the driver's settings. Raises `SerialPortError` with the cause."""
    import serial
    import serial_asyncio_fast

    parity = settings.parity
    if parity != "N" and _is_pseudo_terminal(path):
        # A pseudo-terminal has no line: Linux refuses parity on it (EINVAL), and it would
        # change nothing. Simulators and socat links are ptys; real USB adapters are not.
        parity = "N"
    parities = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=path,
                baudrate=settings.baudrate,
                bytesize=settings.bytesize,
                parity=parities[parity],
                stopbits=settings.stopbits,
                xonxoff=settings.xonxoff,
            )
    except (OSError, TimeoutError, termios.error) as exc:
        raise SerialPortError(f"cannot open {path}: {exc}") from exc
    return SerialByteStream(path, reader, writer)


def _is_pseudo_terminal(path: str) -> bool:
    real = os.path.realpath(path)
    return real.startswith("/dev/pts/") or real == "/dev/ptmx"
