"""`rtm-gateway simulate DRIVER... --ble`: the virtual Bluetooth lab as a command.

It starts a private D-Bus bus (a throwaway `dbus-daemon`), the virtual BlueZ on it and one
simulated device per driver named, and prints the bus address. Any process given that address
as `DBUS_SYSTEM_BUS_ADDRESS` (the hub, `rtm-gateway scan`, `bluetoothctl`) sees the devices as if
they were in the room. Runs until `seconds` pass, or SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TextIO

from gateway.sim import SimulatorError
from gateway.sim.ble_devices import make_device, simulator_classes, start_device, stop_device
from gateway.sim.bluez import BluezThread, VirtualBluezError
from gateway.sim.dbus_bus import PrivateBusError, dbus_daemon_available, private_bus


def run_ble_lab(
    drivers: Sequence[str],
    *,
    rate_hz: float | None = None,
    seconds: float | None = None,
    address: str | None = None,
    serial: str | None = None,
    out: TextIO = sys.stdout,
) -> None:
    classes = simulator_classes()
    unknown = [d for d in drivers if d not in classes]
    if unknown:
        raise SimulatorError(
            f"no Bluetooth simulator for {', '.join(unknown)}; there are: "
            f"{', '.join(sorted(classes))}"
        )
    if (address or serial) and len(drivers) > 1:
        raise SimulatorError("--address and --serial name one device; simulate one driver")
    if rate_hz is not None and rate_hz <= 0:
        raise SimulatorError("--rate must be above 0")
    if not dbus_daemon_available():
        raise SimulatorError(
            "the virtual Bluetooth lab needs dbus-daemon (apt-get install "
            "dbus-daemon, or dbus on older systems)"
        )
    overrides = {k: v for k, v in (("address", address), ("serial", serial)) if v}
    devices = [make_device(driver, **overrides) for driver in drivers]
    addresses = [device.peripheral.address for device in devices]
    if len(set(addresses)) != len(addresses):
        raise SimulatorError(
            f"two simulated devices would share an address ({addresses}); "
            "simulate them in separate labs, or give one --address"
        )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with private_bus() as bus:
            lab = BluezThread.start(bus)
            try:
                runs = [start_device(lab, device, rate_hz) for device in devices]
                print(
                    f"virtual Bluetooth lab on a private bus:\n"
                    f"  export DBUS_SYSTEM_BUS_ADDRESS={bus}\n"
                    f"then run the hub or `rtm-gateway scan` in that environment.",
                    file=out,
                )
                for device in devices:
                    peripheral = device.peripheral
                    print(
                        f"  {peripheral.address}  {peripheral.name}  serial "
                        f"{device.serial}: {device.what}",
                        file=out,
                    )
                out.flush()
                stop.wait(seconds)
                for device in devices:
                    with contextlib.suppress(Exception):
                        stop_device(lab, device).result(5)
                for run in runs:
                    run.cancel()
            finally:
                lab.stop()
    except (PrivateBusError, VirtualBluezError) as exc:
        raise SimulatorError(f"cannot start the virtual Bluetooth lab: {exc}") from exc
