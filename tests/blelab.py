"""The virtual Bluetooth lab for the hub's tests, on top of `gateway.sim.lab` (which
`gateway.kit.vendor` hands to vendors' tests): the `bluez` fixture (registered in conftest.py)
yields a running `BluezThread` with `DBUS_SYSTEM_BUS_ADDRESS` set for the test, so a daemon
started from the test sees it; `bleak_session()` wraps bleak use in this process; `OnAir`
counts the advertisements the virtual peripherals send, the marker to wait for before asserting
that something was not heard.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dbus_fast.aio import MessageBus

from gateway.sim import lab
from gateway.sim.bluez import BluezThread
from gateway.sim.lab import bleak_session, fake_bluetoothctl
from tests.harness import until

__all__ = [
    "OnAir",
    "bleak_session",
    "bluez",
    "disconnect_bus",
    "fake_bluetoothctl",
    "needs_dbus",
    "virtual_lab",
]

needs_dbus = pytest.mark.skipif(not lab.lab_available(), reason="needs dbus-daemon")


@contextmanager
def virtual_lab(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **options: Any
) -> Iterator[BluezThread]:
    """`gateway.sim.lab.virtual_lab` with the environment restored by pytest too."""
    for name in ("PATH", lab.BUS_VARIABLE):  # pytest puts them back even if the lab cannot
        monkeypatch.setenv(name, os.environ.get(name, ""))
    with lab.virtual_lab(bin_dir=tmp_path / "bin", **options) as handle:
        yield handle


@pytest.fixture
def bluez(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[BluezThread]:
    with virtual_lab(monkeypatch, tmp_path) as handle:
        yield handle


async def disconnect_bus(bus: MessageBus) -> None:
    bus.disconnect()
    async with asyncio.timeout(5):
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]  # untyped in dbus-fast


class OnAir:
    """Counts the advertisements the virtual peripherals put on air, heard or not: the positive
    marker for "a report would have arrived by now" before a negative assertion, instead of a
    fixed sleep (on a loaded machine the simulator slows down with everything else)."""

    def __init__(self, bluez: BluezThread, monkeypatch: pytest.MonkeyPatch) -> None:
        self.addresses: list[str] = []
        hear = bluez.bluez._hear

        def counting(hosted: Any, rssi: int) -> None:
            hear(hosted, rssi)  # first: a report for this advertisement is already on its way
            self.addresses.append(hosted.peripheral.address)

        monkeypatch.setattr(bluez.bluez, "_hear", counting)

    async def more(self, count: int, address: str | None = None) -> None:
        """Until `count` more advertisements (of `address`, or of any peripheral) went on air."""
        start = len(self.addresses)
        await until(lambda: sum(address in (None, a) for a in self.addresses[start:]) >= count)
