"""The vendor surface: what a driver package's simulator and tests import from rtm-gateway
besides `gateway.sdk`. Only these two modules are promised to vendors; everything else in
`gateway` may move between releases. A name here keeps its meaning within a major version of
rtm-gateway, as the SDK's names do within SDK 1.x.

What a vendor's package finds here:

- The hub's view of a driver: `Registry` (`Registry.load()` imports every installed driver
  through the entry points; a hub imports only those its configuration allows),
  `validate_driver` (the checks the hub makes when it loads one) and `characteristic_uuid`
  (a fixture's "2a19" or full UUID as the hub spells it).
- A simulated device for the virtual Bluetooth lab: subclass `SimulatedBleDevice` (or host a
  bare `VirtualPeripheral`), declare characteristics with `CharSpec`, encode values with
  `sfloat`, `u16`, `date_time`, refuse writes with `att_error(ATT_...)`, wander with `Walk`;
  `local_now()` is the device's clock. `simulator_classes()` lists the simulators installed
  through `rtm_gateway.simulators`.
- The lab itself, for tests: `virtual_lab()` (a private D-Bus bus with the virtual BlueZ, a
  `BluezThread`), `bleak_session()`, `lab_available()`, and `start_device` / `stop_device` /
  `run_on` to run a device, or code beside it, on the lab's event loop.
- A serial device's bytes on a pseudo-terminal: `serve_pty` (until Ctrl-C or SIGTERM) and
  `PtyThread` (the same inside a test).

The rest of the kit is used from the command line: `rtm-gateway driver check`, `driver new`,
`decode`, `simulate --ble` and `scan`. Nothing here is imported by the daemon.
"""

from __future__ import annotations

from gateway.hub.registry import Registry, characteristic_uuid, validate_driver
from gateway.sim.ble_base import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    ATT_PROCEDURE_IN_PROGRESS,
    SimulatedBleDevice,
    Walk,
    att_error,
    date_time,
    local_now,
    run_on,
    sfloat,
    start_device,
    stop_device,
    u16,
)
from gateway.sim.ble_devices import simulator_classes
from gateway.sim.bluez import BluezThread, CharSpec, VirtualPeripheral
from gateway.sim.lab import bleak_session, lab_available, virtual_lab
from gateway.sim.pty import PtyThread, serve_pty

__all__ = [
    "ATT_CCCD_IMPROPERLY_CONFIGURED",
    "ATT_PROCEDURE_IN_PROGRESS",
    "BluezThread",
    "CharSpec",
    "PtyThread",
    "Registry",
    "SimulatedBleDevice",
    "VirtualPeripheral",
    "Walk",
    "att_error",
    "bleak_session",
    "characteristic_uuid",
    "date_time",
    "lab_available",
    "local_now",
    "run_on",
    "serve_pty",
    "sfloat",
    "simulator_classes",
    "start_device",
    "stop_device",
    "u16",
    "validate_driver",
    "virtual_lab",
]
