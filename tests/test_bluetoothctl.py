"""Debian's real `bluetoothctl` (BlueZ 5.66's own client, a second client besides bleak) driving
the virtual BlueZ: whatever it shows differently from a real bluetoothd is a bug in the fake.

It runs interactively on a pseudo-terminal, as a person would use it: each step sends a command
and waits for the output bluetoothctl prints when the answer or signal arrives. The `bluez`
fixture puts a fake `bluetoothctl` first on PATH (for bleak's version check), so the real one
is called by its absolute path.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdk import uuid16
from gateway.sim.bluez import BluezThread, CharSpec, VirtualPeripheral
from tests.blelab import needs_dbus
from tests.harness import wait_until

BLUETOOTHCTL = Path("/usr/bin/bluetoothctl")

pytestmark = [
    needs_dbus,
    pytest.mark.skipif(
        not BLUETOOTHCTL.exists(),
        reason="needs the real /usr/bin/bluetoothctl: apt-get install bluez",
    ),
]

HRS = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
STRAP = "C0:FF:EE:00:00:01"
NAMELESS = "C0:FF:EE:00:00:02"
STRAP_PATH = "/org/bluez/hci0/dev_C0_FF_EE_00_00_01"
# Colours, readline's cursor movements and its prompt-ignore markers around escapes.
_TERMINAL_NOISE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x01\x02]")


class Session:
    """One interactive bluetoothctl on a pseudo-terminal."""

    def __init__(self) -> None:
        primary, secondary = pty.openpty()
        # Wide enough that readline never wraps or scrolls the lines we look for.
        fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
        self._process = subprocess.Popen(
            [str(BLUETOOTHCTL)],
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env={**os.environ, "TERM": "dumb"},
            close_fds=True,
        )
        os.close(secondary)
        self._fd = primary
        self._raw = b""
        self._since = 0

    def send(self, command: str) -> None:
        """Type `command`; later `expect`s look only at what is printed from now on."""
        self._since = len(self.text)
        os.write(self._fd, command.encode() + b"\n")

    @property
    def text(self) -> str:
        cleaned = _TERMINAL_NOISE.sub("", self._raw.decode(errors="replace"))
        return cleaned.replace("\r\n", "\n").replace("\r", "\n")

    def expect(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        """Wait until `pattern` (a multi-line regex) appears in the output since `send`."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while (found := regex.search(self.text, self._since)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"bluetoothctl never printed {pattern!r}; it printed:\n"
                    + self.text[self._since :]
                )
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                try:
                    self._raw += os.read(self._fd, 65536)
                except OSError as exc:  # EIO: bluetoothctl exited
                    raise AssertionError(f"bluetoothctl exited:\n{self.text}") from exc
        return found

    def close(self) -> None:
        if self._process.poll() is None:
            os.write(self._fd, b"quit\n")
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        os.close(self._fd)


@pytest.fixture
def bluetoothctl(bluez: BluezThread) -> Iterator[Session]:
    session = Session()
    try:
        # bluetoothctl announces the default controller once it has read bluetoothd's objects.
        session.expect(r"\[bluetooth\]#")
        yield session
    finally:
        session.close()


def _strap() -> VirtualPeripheral:
    return VirtualPeripheral(
        STRAP,
        "HR Strap",
        services={
            HRS: {
                HR_MEASUREMENT: CharSpec(("notify",)),
                BODY_SENSOR_LOCATION: CharSpec(("read",), b"\x01"),
            }
        },
        manufacturer_data={0x0059: b"\x01\x02\x03"},
        service_uuids=[HRS],
        rssi=-55,
    )


def _host(bluez: BluezThread, *peripherals: VirtualPeripheral) -> None:
    async def add() -> None:
        for peripheral in peripherals:
            await bluez.add_peripheral(peripheral)

    asyncio.run(add())


def _discover(ctl: Session, *expected: str) -> None:
    ctl.send("scan on")
    for line in expected:
        ctl.expect(re.escape(f"[NEW] Device {line}") + "$")
    ctl.send("scan off")
    ctl.expect(r"^Discovery stopped$")


def test_list_and_show_describe_the_adapter_and_power_off_goes_through(
    bluez: BluezThread, bluetoothctl: Session
) -> None:
    bluetoothctl.send("list")
    bluetoothctl.expect(r"^Controller 00:00:5E:00:53:00 rtm-virtual \[default\]$")
    bluetoothctl.send("show")
    for line in (
        r"Controller 00:00:5E:00:53:00 \(public\)",
        r"\tPowered: yes",
        r"\tPowerState: on",
        r"\tDiscovering: no",
        r"\tRoles: central",
        r"Advertisement Monitor Features:\n\tSupportedMonitorTypes: or_patterns",
    ):
        bluetoothctl.expect(f"^{line}$")
    bluetoothctl.send("power off")
    bluetoothctl.expect(r"^\[CHG\] Controller 00:00:5E:00:53:00 Powered: no$")
    bluetoothctl.expect(r"^Changing power off succeeded$")
    assert not bluez.bluez.powered
    bluetoothctl.send("scan on")
    bluetoothctl.expect(r"^Failed to start discovery: org\.bluez\.Error\.NotReady$")
    bluetoothctl.send("power on")
    bluetoothctl.expect(r"^Changing power on succeeded$")
    assert bluez.bluez.powered


def test_scan_lists_hosted_peripherals_and_info_shows_what_they_advertise(
    bluez: BluezThread, bluetoothctl: Session
) -> None:
    _host(bluez, _strap(), VirtualPeripheral(NAMELESS, rssi=-80))
    _discover(bluetoothctl, f"{STRAP} HR Strap", f"{NAMELESS} C0-FF-EE-00-00-02")
    bluetoothctl.send(f"info {STRAP}")
    for line in (
        rf"Device {STRAP} \(public\)",
        r"\tName: HR Strap",
        r"\tAlias: HR Strap",
        r"\tConnected: no",
        r"\tUUID: Heart Rate\s+\(0000180d-0000-1000-8000-00805f9b34fb\)",
        r"\tManufacturerData Key: 0x0059",
        r"\tManufacturerData Value:\n\s+01 02 03\s.*",
        r"\tRSSI: -5[5-7]",
    ):
        bluetoothctl.expect(f"^{line}$")
    bluetoothctl.send(f"info {NAMELESS}")
    info = bluetoothctl.expect(rf"^Device {NAMELESS} \(public\)\n(\t.*\n)*\tRSSI: -8\d$")
    # bluetoothd has no Name for a device that never advertised one: only the Alias.
    assert "\tAlias: C0-FF-EE-00-00-02" in info.group(0)
    assert "\tName:" not in info.group(0)
    assert "ManufacturerData" not in info.group(0)
    assert "UUID" not in info.group(0)
    # Scanning stopped with "scan off", and bluetoothd kept the devices.
    wait_until(lambda: not bluez.bluez.discovering, 5, "bluetoothd to stop discovering")
    bluetoothctl.send("devices")
    bluetoothctl.expect(rf"^Device {STRAP} HR Strap$")
    bluetoothctl.expect(rf"^Device {NAMELESS} C0-FF-EE-00-00-02$")


def test_connect_lists_reads_and_receives_notifications_then_disconnects(
    bluez: BluezThread, bluetoothctl: Session
) -> None:
    strap = _strap()
    _host(bluez, strap)
    _discover(bluetoothctl, f"{STRAP} HR Strap")
    bluetoothctl.send(f"connect {STRAP}")
    bluetoothctl.expect(rf"^\[CHG\] Device {STRAP} ServicesResolved: yes$")
    bluetoothctl.expect(r"^Connection successful$")
    bluetoothctl.send("menu gatt")
    bluetoothctl.send(f"list-attributes {STRAP}")
    # A real server's layout: each characteristic's value handle follows its declaration.
    bluetoothctl.expect(
        "\n".join(
            (
                r"^Primary Service \(Handle 0x[0-9a-f]{4}\)",
                rf"\t{STRAP_PATH}/service0001",
                f"\t{HRS}",
                r"\tHeart Rate",
                r"Characteristic \(Handle 0x[0-9a-f]{4}\)",
                rf"\t{STRAP_PATH}/service0001/char0002",
                f"\t{HR_MEASUREMENT}",
                r"\tHeart Rate Measurement",
                r"Descriptor \(Handle 0x[0-9a-f]{4}\)",
                rf"\t{STRAP_PATH}/service0001/char0002/desc0004",
                r"\t00002902-0000-1000-8000-00805f9b34fb",
                r"\tClient Characteristic Configuration",
                r"Characteristic \(Handle 0x[0-9a-f]{4}\)",
                rf"\t{STRAP_PATH}/service0001/char0005",
                f"\t{BODY_SENSOR_LOCATION}",
                r"\tBody Sensor Location$",
            )
        )
    )
    bluetoothctl.send(f"select-attribute {STRAP_PATH}/service0001/char0005")
    bluetoothctl.send("read")
    bluetoothctl.expect(r"^\s+01\s+\.\s*$")
    bluetoothctl.send(f"select-attribute {STRAP_PATH}/service0001/char0002")
    bluetoothctl.send("notify on")
    bluetoothctl.expect(r"^Notify started$")
    asyncio.run(bluez.notify(strap, HR_MEASUREMENT, bytes([0x00, 72])))
    bluetoothctl.expect(rf"^\[CHG\] Attribute {STRAP_PATH}/service0001/char0002 Value:$")
    bluetoothctl.expect(r"^\s+00 48\s+\.H\s*$")  # the hex dump follows on its own line
    bluetoothctl.send("back")
    bluetoothctl.send(f"disconnect {STRAP}")
    bluetoothctl.expect(rf"^\[CHG\] Device {STRAP} Connected: no$")
    bluetoothctl.expect(r"^Successful disconnected$")
    assert strap.connect_calls == 1
