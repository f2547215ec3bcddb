"""The serial side of the hub: real pyserial on pseudo-terminals, VID:PID lookup through the
port-listing seam, and unplugging."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from gateway.app import SerialOpener
from gateway.hub.config import DeviceConfig, UsbSelector
from gateway.sdk import SerialSettings
from gateway.sessions.core import DeviceUnavailable
from gateway.transport.serial import PortInfo, find_usb_port

CMS50D = SerialSettings(19200, 8, "O", 1)


def usb_device(serial_number: str | None) -> DeviceConfig:
    return DeviceConfig(
        id="oximeter",
        driver="contec.cms50d",
        patient="pt-0001",
        usb=UsbSelector(0x10C4, 0xEA60, serial_number),
    )


def test_find_usb_port_by_vid_pid_and_serial() -> None:
    ports = [
        PortInfo("/dev/ttyUSB1", 0x10C4, 0xEA60, "B"),
        PortInfo("/dev/ttyS0", None, None),
        PortInfo("/dev/ttyUSB0", 0x10C4, 0xEA60, "A"),
    ]
    assert find_usb_port(lambda: ports, 0x10C4, 0xEA60, None) == "/dev/ttyUSB0"
    assert find_usb_port(lambda: ports, 0x10C4, 0xEA60, "B") == "/dev/ttyUSB1"
    assert find_usb_port(lambda: ports, 0x10C4, 0xEA60, "C") is None
    assert find_usb_port(lambda: ports, 0x0403, 0x6001, None) is None


def test_a_usb_device_is_opened_where_the_lister_finds_it() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)

    async def scenario() -> bytes:
        opener = SerialOpener(lambda: [PortInfo(path, 0x10C4, 0xEA60, "A")])
        stream = await opener(usb_device("A"), CMS50D)  # odd parity on a pty: handled
        try:
            os.write(master, b"\x81\x02\x03\x48\x61")
            async with asyncio.timeout(5):
                return await stream.read()
        finally:
            await stream.close()

    try:
        assert asyncio.run(scenario()) == b"\x81\x02\x03\x48\x61"
    finally:
        os.close(master)
        os.close(slave)


def test_a_missing_usb_device_is_unavailable_with_the_reason() -> None:
    opener = SerialOpener(lambda: [PortInfo("/dev/ttyUSB0", 0x10C4, 0xEA60, "A")])
    with pytest.raises(DeviceUnavailable, match="10c4:ea60:Z"):
        asyncio.run(opener(usb_device("Z"), CMS50D))


def test_unplugging_ends_the_read_with_device_unavailable(tmp_path: Path) -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    device = DeviceConfig(id="oximeter", driver="contec.cms50d", patient="pt-0001", port=path)

    async def scenario() -> None:
        stream = await SerialOpener()(device, CMS50D)
        os.close(slave)
        os.close(master)  # the other end goes away, as when a cable is pulled
        try:
            with pytest.raises(DeviceUnavailable, match="went away"):
                async with asyncio.timeout(5):
                    await stream.read()
        finally:
            await stream.close()

    asyncio.run(scenario())


def test_a_port_that_does_not_exist_is_unavailable(tmp_path: Path) -> None:
    device = DeviceConfig(
        id="x", driver="contec.cms50d", patient="pt-0001", port=str(tmp_path / "ttyNothing")
    )
    with pytest.raises(DeviceUnavailable, match="cannot open"):
        asyncio.run(SerialOpener()(device, CMS50D))


def test_another_usb_device_behind_a_configured_one_is_signed_as_an_identity_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A device configured by VID:PID alone is opened wherever the lister finds one; when the
    one found has another serial number (another oximeter, or another patient's), the hub says
    so in a signed event and a WARNING, and still serves it."""
    from gateway.drivers import contec_cms50d
    from gateway.hub.outbox import Outbox
    from gateway.sessions.serial import DeviceSession
    from tests.test_journal_and_serial_session import journal_for, payloads

    ports: list[PortInfo] = []
    outbox = Outbox.open(tmp_path / "outbox.sqlite")
    journal, key = journal_for(outbox)
    device = usb_device(None)
    driver = contec_cms50d.DRIVER
    session = DeviceSession(
        device, driver, CMS50D, SerialOpener(lambda: list(ports)), journal, stored=outbox.get_meta
    )

    async def plug(serial_number: str) -> None:
        master, slave = os.openpty()
        ports[:] = [PortInfo(os.ttyname(slave), 0x10C4, 0xEA60, serial_number)]
        task = asyncio.create_task(session.run())
        try:
            async with asyncio.timeout(10):
                while not session.connected:  # noqa: ASYNC110  # the session task's flag
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            os.close(master)
            os.close(slave)
        while journal.pending:
            journal.commit_once()

    try:
        with caplog.at_level("WARNING", "gateway.sessions.device_identity"):
            asyncio.run(plug("A"))
            assert "changed" not in caplog.text  # the first identity is stored silently
            asyncio.run(plug("A"))  # the same device again: nothing
            asyncio.run(plug("B"))
        events = [p for p in payloads(outbox, key) if p.get("event") == "device-identity-changed"]
        assert [e["detail"] for e in events] == [
            {"device": "oximeter", "changed": "serial", "from": "A", "to": "B"}
        ]
        assert "device oximeter: its serial changed from A to B" in caplog.text
    finally:
        outbox.close()
