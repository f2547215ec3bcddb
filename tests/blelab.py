"""The virtual Bluetooth lab for tests: a private D-Bus bus, the virtual BlueZ on it, and the
environment that points the real bleak (in this process or in a daemon child) at it.

`bluez` (a fixture, registered in conftest.py) yields a running `BluezThread`;
`DBUS_SYSTEM_BUS_ADDRESS` is set for the test, so a daemon started from the test inherits it.
`bleak_session()` wraps code that uses bleak in this process: it closes bleak's per-loop BlueZ
manager at the end, which otherwise keeps its bus socket open after `asyncio.run` returns.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.bluezdbus import manager as bluez_manager
from dbus_fast.aio import MessageBus

from gateway.sim.bluez import BluezThread
from gateway.sim.dbus_bus import dbus_daemon_available, private_bus

needs_dbus = pytest.mark.skipif(not dbus_daemon_available(), reason="needs dbus-daemon")


def fake_bluetoothctl(bin_dir: Path) -> Path:
    """bleak runs `bluetoothctl --version` on connect; a stand-in reporting Debian 12's BlueZ
    keeps runs the same on machines with and without the real one."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "bluetoothctl"
    fake.write_text("#!/bin/sh\necho 5.66\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


@contextmanager
def virtual_lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                **options: Any) -> Iterator[BluezThread]:
    """A private bus with the virtual BlueZ on it (`options` go to `BluezThread.start`), and
    this test's environment pointed at it."""
    fake = fake_bluetoothctl(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    with private_bus() as address:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", address)
        handle = BluezThread.start(address, **options)
        try:
            yield handle
        finally:
            handle.stop()


@pytest.fixture
def bluez(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[BluezThread]:
    with virtual_lab(monkeypatch, tmp_path) as handle:
        yield handle


async def disconnect_bus(bus: MessageBus) -> None:
    bus.disconnect()
    async with asyncio.timeout(5):
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]  # untyped in dbus-fast


@asynccontextmanager
async def bleak_session() -> AsyncIterator[None]:
    """Close bleak's per-loop BlueZ manager on the way out (see the module doc)."""
    try:
        yield
    finally:
        manager = bluez_manager._global_instances.pop(asyncio.get_running_loop(), None)
        bus = None if manager is None else manager._bus
        if bus is not None:
            await disconnect_bus(bus)
            async with asyncio.timeout(5):
                if manager is not None and manager._bus_watcher_task is not None:
                    await manager._bus_watcher_task
