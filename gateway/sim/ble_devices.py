"""Simulated Bluetooth LE health devices for the virtual BlueZ: tests, the demo and
`rtm-gateway simulate DRIVER --ble`.

Each device is a `VirtualPeripheral` (`device.peripheral`) serving its profile, Device Information
(manufacturer, model, serial) and Battery, with counters a test can assert on (`notifications`,
`dropped`, `write_log`, and for record stores `records_sent`, `racp_requests`,
`racp_responses`). `SIMULATORS` maps a driver id to its device class.

    device = SIMULATORS["gatt.plx"](seed=1)
    running = start_device(bluez_thread, device, rate=20)   # hosts it, sends 20 values/s
    ...
    stop_device(bluez_thread, device).result(5)             # or: running.cancel()

The devices are here and in `gateway.sim.ble_records` (PLX, GLS); the machinery is in
`gateway.sim.ble_base` and the Record Access Control Point in `gateway.sim.ble_racp`. Layouts
sent by this module (the Fitness Machine and Heart Rate service specifications), little-endian:

- Heart Rate Measurement (0x2A37, notify): flags 0x16 (uint8 rate, sensor contact detected, RR
  intervals) | 0x08 (energy expended, every `energy_every`-th value); 0x06 when no beat ended in
  that second. Heart rate uint8, energy uint16 kJ, RR intervals uint16 1/1024 s, oldest first.
  Body Sensor Location (0x2A38, read) 0x01 chest; the control point 0x2A39 resets energy.
- Indoor Bike Data (0x2AD2, notify): one 20-byte record, flags 0x0974 (speed present as bit 0 is
  clear, cadence, total distance, resistance, power, expended energy, elapsed time): exactly what
  fits a notification at the default ATT MTU. About one record in four (`split_probability`) is
  split as real bikes do: flags 0x0145 ("More Data", cadence, power, energy), then flags 0x0830
  (speed, distance, resistance, elapsed time). Feature (0x2ACC, read) 86 52 00 00 0C 00 00 00;
  Machine Status (0x2ADA, notify) 0x04 "started by user" once per connection, when subscribed; the
  Control Point (0x2AD9, write + indicate) answers like a machine but the hub must never write it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from dbus_fast import DBusError

from gateway.sdk import uuid16
from gateway.sim import SimulatorError
from gateway.sim.ble_base import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    SimulatedBleDevice,
    Walk,
    att_error,
    bluez_loop,
    run_on,
    start_device,
    stop_device,
    u16,
)
from gateway.sim.ble_records import GlucoseMeter, PulseOximeter
from gateway.sim.bluez import CharSpec

_LOGGER = logging.getLogger(__name__)

__all__ = [
    "SIMULATORS",
    "GlucoseMeter",
    "HeartRateStrap",
    "IndoorBike",
    "PulseOximeter",
    "SimulatedBleDevice",
    "bluez_loop",
    "make_device",
    "run_on",
    "start_device",
    "stop_device",
]

HRS_SERVICE = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
HR_CONTROL_POINT = uuid16(0x2A39)

FTMS_SERVICE = uuid16(0x1826)
FTMS_FEATURE = uuid16(0x2ACC)
INDOOR_BIKE_DATA = uuid16(0x2AD2)
RESISTANCE_RANGE = uuid16(0x2AD6)
POWER_RANGE = uuid16(0x2AD8)
FTMS_CONTROL_POINT = uuid16(0x2AD9)
MACHINE_STATUS = uuid16(0x2ADA)

# HRS control point: an unknown value is ATT error 0x80 "Control Point value not supported".
_HRS_VALUE_NOT_SUPPORTED = 0x80


class HeartRateStrap(SimulatedBleDevice):
    """A chest strap: heart rate 60-90 bpm drifting, with the RR intervals of the beats that
    ended in each second (heart-rate variability about 3 %), and energy expended."""

    driver_id = "gatt.hrs"
    service = HRS_SERVICE
    model = "SIM-HRS-1"
    what = "a heart rate strap (heart rate, RR intervals, energy expended)"

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:70:00:01",
        name: str = "Sim HR Strap",
        serial: str = "HRS-000001",
        seed: int | None = None,
        energy_every: int = 10,
        battery_level: int = 90,
    ) -> None:
        super().__init__(
            address=address,
            name=name,
            serial=serial,
            seed=seed,
            battery_level=battery_level,
            profile={
                HR_MEASUREMENT: CharSpec(("notify",)),
                BODY_SENSOR_LOCATION: CharSpec(("read",), b"\x01"),
                HR_CONTROL_POINT: CharSpec(("write",)),
            },
        )
        self.energy_every = energy_every
        self.energy_kj = 0.0
        self._rate = Walk(self.rng, 72, 60, 90, 1.5)
        self._since_beat = self.rng.uniform(0.0, 0.8)
        self._next_beat = 60 / self._rate.value
        self._handlers[HR_CONTROL_POINT] = self._control_point

    def _control_point(self, data: bytes) -> None:
        if data != b"\x01":
            raise att_error(_HRS_VALUE_NOT_SUPPORTED)
        self.energy_kj = 0.0

    async def live(self, first: bool) -> None:
        rate = round(self._rate.next())
        # One second passes: emit every beat that ended in it, each lasting about 60/rate s.
        self._since_beat += 1.0
        rr: list[int] = []
        while self._since_beat >= self._next_beat and len(rr) < 8:
            self._since_beat -= self._next_beat
            rr.append(round(self._next_beat * 1024))
            self._next_beat = 60 / rate * self.rng.gauss(1.0, 0.03)
        self.energy_kj += 0.05 + 0.001 * rate  # resting metabolism, a little more when faster
        with_energy = bool(self.energy_every) and self.ticks % self.energy_every == 0
        flags = 0x06 | (0x08 if with_energy else 0) | (0x10 if rr else 0)
        data = bytes((flags, rate))
        if with_energy:
            data += u16(min(0xFFFF, int(self.energy_kj)))  # stays at 0xFFFF once full
        await self.send(HR_MEASUREMENT, data + b"".join(u16(r) for r in rr))


class IndoorBike(SimulatedBleDevice):
    """An FTMS indoor bike: cadence 60-95 rpm, power 80-220 W, speed from cadence, distance,
    energy and elapsed time accumulating one second per value, resistance 1-20."""

    driver_id = "gatt.ftms"
    service = FTMS_SERVICE
    model = "SIM-FTMS-BIKE-1"
    what = "an indoor bike (FTMS indoor bike data, split records sometimes)"

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:80:00:01",
        name: str = "Sim Bike",
        serial: str = "FTM-000001",
        seed: int | None = None,
        split_probability: float = 0.25,
        machine_status: bool = True,
        battery_level: int = 90,
    ) -> None:
        profile = {
            # Cadence, distance, resistance, energy, elapsed time, power; targets: resistance,
            # power (so the two range characteristics below are mandatory).
            FTMS_FEATURE: CharSpec(
                ("read",), (0x5286).to_bytes(4, "little") + (0x000C).to_bytes(4, "little")
            ),
            INDOOR_BIKE_DATA: CharSpec(("notify",)),
            RESISTANCE_RANGE: CharSpec(("read",), _s16(10) + _s16(200) + u16(10)),
            POWER_RANGE: CharSpec(("read",), _s16(25) + _s16(800) + u16(5)),
            FTMS_CONTROL_POINT: CharSpec(("write", "indicate")),
        }
        if machine_status:
            profile[MACHINE_STATUS] = CharSpec(("notify",))
        super().__init__(
            address=address,
            name=name,
            serial=serial,
            seed=seed,
            battery_level=battery_level,
            profile=profile,
        )
        self.split_probability = split_probability
        self.machine_status = machine_status
        self.elapsed = 0
        self.distance_m = 0.0
        self.energy_kcal = 0.0
        self.resistance = 8
        self.control_point_writes = 0
        """Writes the control point received (accepted or refused): a hub must make none."""
        self._control = False
        self._started_sent = False
        self._cadence = Walk(self.rng, 80, 60, 95, 2.0)
        self._power = Walk(self.rng, 140, 80, 220, 6.0)
        self._handlers[FTMS_CONTROL_POINT] = self._control_point

    def _control_point(self, data: bytes) -> None:
        self.control_point_writes += 1
        if not self.listening(FTMS_CONTROL_POINT):
            raise att_error(ATT_CCCD_IMPROPERLY_CONFIGURED)
        if not data:
            raise DBusError("org.bluez.Error.InvalidArguments", "Invalid Length")
        self.spawn(self._answer(data[0], data[1:]))

    async def _answer(self, op: int, parameter: bytes) -> None:
        # (op, parameter length) this machine accepts once the central has control.
        accepted = {0x01: 0, 0x04: 1, 0x05: 2, 0x07: 0, 0x08: 1}
        if op == 0x00:
            self._control, result = True, 0x01
        elif op not in accepted:
            result = 0x02
        elif not self._control:
            result = 0x05
        elif len(parameter) != accepted[op]:
            result = 0x03
        else:
            result = 0x01
            if op == 0x01:  # a reset ends the central's control too
                self._control = False
        await self.send(FTMS_CONTROL_POINT, bytes((0x80, op, result)))

    async def live(self, first: bool) -> None:
        self._started_sent = self._started_sent and not first
        # "Started or resumed by the user", once a connection's central listens for it (a
        # status sent before it subscribed would be lost, and a hub could never see one).
        if self.machine_status and not self._started_sent and self.listening(MACHINE_STATUS):
            self._started_sent = await self.send(MACHINE_STATUS, b"\x04")
        rng = self.rng
        self.elapsed = min(0xFFFF, self.elapsed + 1)
        cadence = self._cadence.next()
        power = round(self._power.next())
        if rng.random() < 0.05:
            self.resistance = min(20, max(1, self.resistance + rng.choice((-1, 1))))
        speed = cadence * 0.34  # km/h, a road-like gear
        self.distance_m += speed / 3.6
        per_hour = round(power * 3.6)  # 1 W of work costs about 3.6 kcal/h at 24 % efficiency
        self.energy_kcal += per_hour / 3600
        speed_b = u16(round(speed * 100))
        cadence_b = u16(round(cadence * 2))
        distance_b = int(self.distance_m).to_bytes(3, "little")
        resistance_b = _s16(self.resistance)
        power_b = _s16(power)
        energy_b = (
            u16(min(0xFFFE, int(self.energy_kcal)))
            + u16(per_hour)
            + bytes((min(0xFE, round(per_hour / 60)),))
        )
        elapsed_b = u16(self.elapsed)
        if rng.random() < self.split_probability:
            await self.send(INDOOR_BIKE_DATA, u16(0x0145) + cadence_b + power_b + energy_b)
            await self.send(
                INDOOR_BIKE_DATA, u16(0x0830) + speed_b + distance_b + resistance_b + elapsed_b
            )
        else:
            await self.send(
                INDOOR_BIKE_DATA,
                u16(0x0974)
                + speed_b
                + cadence_b
                + distance_b
                + resistance_b
                + power_b
                + energy_b
                + elapsed_b,
            )


def _s16(value: int) -> bytes:
    return value.to_bytes(2, "little", signed=True)


SIMULATORS: Mapping[str, type[SimulatedBleDevice]] = {
    cls.driver_id: cls for cls in (PulseOximeter, GlucoseMeter, IndoorBike, HeartRateStrap)
}
"""Simulated device class by driver id; each class has `default_rate` and `what`."""


SIMULATOR_ENTRY_POINTS = "rtm_gateway.simulators"
"""Vendors register their simulated device classes here, named by driver id."""


@functools.cache
def simulator_classes() -> dict[str, type[SimulatedBleDevice]]:
    """The built-in simulators and every installed vendor simulator (entry point group
    `rtm_gateway.simulators`, name = driver id, value = a `SimulatedBleDevice` subclass). One
    that fails to load is logged and left out."""
    from importlib.metadata import entry_points

    found: dict[str, type[SimulatedBleDevice]] = dict(SIMULATORS)
    for entry_point in entry_points(group=SIMULATOR_ENTRY_POINTS):
        try:
            cls = entry_point.load()
        except Exception as exc:  # a vendor package may fail in any way; the rest still work
            _LOGGER.warning(
                "simulator %r is skipped: it failed to load (%s: %s)",
                entry_point.name,
                type(exc).__name__,
                exc,
            )
            continue
        if not (isinstance(cls, type) and issubclass(cls, SimulatedBleDevice)):
            _LOGGER.warning(
                "simulator %r is skipped: %r is not a SimulatedBleDevice subclass",
                entry_point.name,
                cls,
            )
            continue
        found.setdefault(entry_point.name, cls)
    return found


def make_device(driver_id: str, **options: Any) -> SimulatedBleDevice:
    """A simulated device for `driver_id` with the factory's keyword `options`."""
    classes = simulator_classes()
    cls = classes.get(driver_id)
    if cls is None:
        raise SimulatorError(
            f"no Bluetooth simulator for {driver_id!r}; there are: {', '.join(sorted(classes))}"
        )
    return cls(**options)
