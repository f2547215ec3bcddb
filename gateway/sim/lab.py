"""The virtual Bluetooth lab for tests, the hub's and a vendor's: one import instead of forty
lines copied into every driver package.

- `virtual_lab(**options)`: a private D-Bus bus with the virtual BlueZ on it; yields the
  `BluezThread` and points this process at the bus (`DBUS_SYSTEM_BUS_ADDRESS`, restored after),
  so bleak here, and any process started meanwhile, see the lab. With a `bin_dir`, a stand-in
  `bluetoothctl` reporting Debian 12's BlueZ is put first on PATH (bleak runs
  `bluetoothctl --version` on connect; the stand-in keeps runs the same with and without the
  real one).
- `bleak_session()`: wrap bleak use in an `asyncio.run`; it closes bleak's per-loop BlueZ
  manager at the end, which otherwise keeps its bus socket open (a ResourceWarning).
- `lab_available()`: whether `dbus-daemon` is installed (skip the lab's tests when not).

A pytest fixture is three lines:

    @pytest.fixture
    def lab(tmp_path):
        with virtual_lab(bin_dir=tmp_path / "bin") as bluez:
            yield bluez
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from gateway.sim.bluez import BluezThread
from gateway.sim.dbus_bus import dbus_daemon_available, private_bus

BUS_VARIABLE = "DBUS_SYSTEM_BUS_ADDRESS"


def lab_available() -> bool:
    return dbus_daemon_available()


def fake_bluetoothctl(bin_dir: Path) -> Path:
    """Write a `bluetoothctl` that only answers `--version` with 5.66."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "bluetoothctl"
    fake.write_text("#!/bin/sh\necho 5.66\n", encoding="utf-8")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return fake


@contextlib.contextmanager
def _environment(**changes: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def virtual_lab(*, bin_dir: Path | None = None, **options: Any) -> Iterator[BluezThread]:
    """A private bus and the virtual BlueZ on it; `options` go to `BluezThread.start`."""
    changes = {}
    if bin_dir is not None:
        fake = fake_bluetoothctl(bin_dir)
        changes["PATH"] = f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with private_bus() as address, _environment(**changes, **{BUS_VARIABLE: address}):
        bluez = BluezThread.start(address, **options)
        try:
            yield bluez
        finally:
            bluez.stop()


@contextlib.asynccontextmanager
async def bleak_session() -> AsyncIterator[None]:
    """Close bleak's per-loop BlueZ manager on the way out (see the module doc)."""
    try:
        yield
    finally:
        from bleak.backends.bluezdbus import manager as bluez_manager

        # bleak keeps one manager per event loop and offers no public way to close it.
        instance = bluez_manager._global_instances.pop(asyncio.get_running_loop(), None)
        bus = getattr(instance, "_bus", None)
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await bus.wait_for_disconnect()
            watcher = getattr(instance, "_bus_watcher_task", None)
            if watcher is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await watcher
