"""The common part of the simulated Bluetooth LE health devices (see `gateway.sim.ble_devices`).

What lives here: the byte encoders the devices share (`sfloat`, `date_time`), `SimulatedBleDevice`
(a `VirtualPeripheral` with Device Information and Battery, a live loop and counters) and the
helpers that run a device on a `BluezThread`'s loop (`run_on`, `start_device`, `stop_device`).
Stored records and their Record Access Control Point are in `gateway.sim.ble_racp`.

The encoders are written from the Bluetooth SIG specifications (GATT Specification
Supplement: SFLOAT, Date Time), not shared with the drivers,
so that a mistake in a driver is not copied into the device that tests it.

Threading: a device lives on the virtual BlueZ's event loop. `run`, `halt`, `add_record` and the
write handlers run there; tests on another thread only read the counters, which are plain ints,
lists and Counters updated before the value they count is sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

from dbus_fast import DBusError

from gateway.sdk import uuid16
from gateway.sim.bluez import BluezThread, CharSpec, VirtualBluezError, VirtualPeripheral

_LOGGER = logging.getLogger(__name__)

DEVICE_INFORMATION = uuid16(0x180A)
MANUFACTURER_NAME = uuid16(0x2A29)
MODEL_NUMBER = uuid16(0x2A24)
SERIAL_NUMBER = uuid16(0x2A25)
BATTERY_SERVICE = uuid16(0x180F)
BATTERY_LEVEL = uuid16(0x2A19)

MANUFACTURER = "RTM Simulated Devices"

# ATT application errors (Core Specification Supplement, common profile error codes).
ATT_CCCD_IMPROPERLY_CONFIGURED = 0xFD
ATT_PROCEDURE_IN_PROGRESS = 0xFE

_T = TypeVar("_T")


# --- encoders ------------------------------------------------------------------------------


def sfloat(mantissa: int, exponent: int = 0) -> bytes:
    """An IEEE 11073 SFLOAT, little-endian: 4-bit exponent over a 12-bit mantissa."""
    # +-2046..2047 and -2048 are the special values (NaN, NRes, +-INF, reserved).
    if not -2045 <= mantissa <= 2045 or not -8 <= exponent <= 7:
        raise ValueError(f"SFLOAT cannot hold {mantissa}e{exponent}")
    return ((exponent & 0x0F) << 12 | mantissa & 0x0FFF).to_bytes(2, "little")


def date_time(moment: datetime) -> bytes:
    """A GATT Date Time (0x2A08): year uint16, then month, day, hours, minutes, seconds."""
    return moment.year.to_bytes(2, "little") + bytes(
        (moment.month, moment.day, moment.hour, moment.minute, moment.second)
    )


def u16(value: int) -> bytes:
    return value.to_bytes(2, "little")


def local_now() -> datetime:
    """The wall clock a device shows: local time without a zone, as GATT Date Time has none."""
    return datetime.now(UTC).astimezone().replace(tzinfo=None, microsecond=0)


def att_error(code: int) -> DBusError:
    """What bluetoothd answers a WriteValue with when the device returns ATT error `code` (an
    application error has no D-Bus name of its own, so bluez's gatt-client says "Failed")."""
    return DBusError("org.bluez.Error.Failed", f"Operation failed with ATT error: 0x{code:02x}")


class Walk:
    """A bounded, mean-reverting random walk: vital signs drift, they do not jump."""

    def __init__(
        self, rng: random.Random, mean: float, low: float, high: float, step: float
    ) -> None:
        self._rng, self.mean, self.low, self.high, self.step = rng, mean, low, high, step
        self.value = rng.uniform(mean - step, mean + step)

    def next(self) -> float:
        pull = (self.mean - self.value) * 0.1
        self.value = min(
            self.high, max(self.low, self.value + pull + self._rng.gauss(0.0, self.step))
        )
        return self.value


# --- the virtual BlueZ's view of a peripheral ----------------------------------------------


def _link(peripheral: VirtualPeripheral) -> tuple[bool, frozenset[str]]:
    """(connected, UUIDs a central enabled notifications or indications on)."""
    bluez = peripheral._bluez  # the VirtualBluez hosting it, set by `add`
    if bluez is None:
        return False, frozenset()
    return bluez.link_state(peripheral)


def bluez_loop(bluez: BluezThread) -> asyncio.AbstractEventLoop:
    """The event loop a `BluezThread` runs the virtual BlueZ on."""
    return bluez.loop


def run_on(bluez: BluezThread, coro: Coroutine[Any, Any, _T]) -> concurrent.futures.Future[_T]:
    """Run `coro` on the virtual BlueZ's loop; any thread may wait on the future, or `await
    asyncio.wrap_future(...)` it."""
    return asyncio.run_coroutine_threadsafe(coro, bluez_loop(bluez))


def start_device(
    bluez: BluezThread, device: SimulatedBleDevice, rate: float | None = None, *, add: bool = True
) -> concurrent.futures.Future[None]:
    """Host `device` on `bluez` (unless `add` is False: already hosted) and run its live loop
    at `rate` values a second (the device's default when None). Stop it with `stop_device`, or
    `future.cancel()` when waiting for the end does not matter."""

    async def main() -> None:
        if add:
            bluez.bluez.add(device.peripheral)
        await device.run(device.default_rate if rate is None else rate)

    return run_on(bluez, main())


def stop_device(bluez: BluezThread, device: SimulatedBleDevice) -> concurrent.futures.Future[None]:
    """Stop `device`'s live loop and any record transfer; the future completes once they have
    ended (`.result(timeout)` from a thread, `await asyncio.wrap_future(...)` from a loop)."""
    return run_on(bluez, device.halt())


# --- the device ----------------------------------------------------------------------------


class SimulatedBleDevice:
    """A virtual Bluetooth LE health device: `peripheral` (to add to a VirtualBluez) serving its
    profile, Device Information (manufacturer, model, serial) and Battery (read + notify).

    `run(rate)` sends live values while a central is connected. Each live value stands for one
    second of the device's life, whatever `rate` is: a test may run a device at 50 values a
    second and still get realistic per-second fields (RR intervals, distance, energy).
    """

    driver_id: ClassVar[str]
    service: ClassVar[str]
    model: ClassVar[str]
    default_rate: ClassVar[float] = 1.0
    """Live values a second a real device of this kind sends."""
    what: ClassVar[str] = ""

    def __init__(
        self,
        *,
        address: str,
        name: str,
        serial: str,
        seed: int | None,
        profile: Mapping[str, CharSpec],
        battery_level: int = 90,
    ) -> None:
        if not 0 <= battery_level <= 100:
            raise ValueError("battery_level must be 0..100")
        self.rng = random.Random(seed)  # noqa: S311  (a simulation, not cryptography)
        self.serial = serial
        self.battery_level = battery_level
        self.notifications: Counter[str] = Counter()
        """Values (notifications and indications) delivered to a subscribed central, by UUID."""
        self.dropped: Counter[str] = Counter()
        """Values the device produced while no central was connected and subscribed, by UUID."""
        self.write_log: list[tuple[str, bytes]] = []
        """Every write a central attempted, refused ones too (`peripheral.writes` has only the
        accepted ones)."""
        self.ticks = 0
        """Live values sent (one per `run` period while connected)."""
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._halt: asyncio.Event | None = None
        self._run_task: asyncio.Task[Any] | None = None
        self._was_connected = False
        self.peripheral = VirtualPeripheral(
            address,
            name,
            services={
                self.service: profile,
                DEVICE_INFORMATION: {
                    MANUFACTURER_NAME: CharSpec(("read",), MANUFACTURER.encode()),
                    MODEL_NUMBER: CharSpec(("read",), self.model.encode()),
                    SERIAL_NUMBER: CharSpec(("read",), serial.encode()),
                },
                BATTERY_SERVICE: {
                    BATTERY_LEVEL: CharSpec(("read", "notify"), bytes((battery_level,)))
                },
            },
            service_uuids=[self.service],
            on_write=self._on_write,
        )

    # -- link state --

    @property
    def connected(self) -> bool:
        return _link(self.peripheral)[0]

    def listening(self, uuid: str) -> bool:
        """A central is connected and has notifications or indications on `uuid` enabled."""
        connected, subscribed = _link(self.peripheral)
        return connected and uuid in subscribed

    async def send(self, uuid: str, data: bytes) -> bool:
        """Notify or indicate `data` on `uuid`; False (and counted as dropped) when no central
        listens, as a real device's value goes nowhere then."""
        if not self.listening(uuid):
            self.dropped[uuid] += 1
            return False
        self.notifications[uuid] += 1
        try:
            await self.peripheral.notify(uuid, data)
        except VirtualBluezError:  # removed from the virtual BlueZ meanwhile
            self.notifications[uuid] -= 1
            self.dropped[uuid] += 1
            return False
        return True

    # -- writes --

    def _on_write(self, uuid: str, data: bytes) -> None:
        self.write_log.append((uuid, bytes(data)))
        handler = self._handlers.get(uuid)
        if handler is not None:
            handler(bytes(data))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task on the device's loop that `halt` cancels; its failure is logged, not lost."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error(
                "simulated %s %s failed",
                self.driver_id,
                self.peripheral.address,
                exc_info=task.exception(),
            )

    # -- the live loop --

    async def run(self, rate: float, stop: asyncio.Event | None = None) -> None:
        """Send live values at `rate` a second while connected, until `stop` is set or `halt`
        is called. Runs on the virtual BlueZ's loop."""
        if rate <= 0:
            raise ValueError("rate must be above 0")
        if self._run_task is not None:
            raise RuntimeError(f"{self.peripheral.address} is already running")
        loop = asyncio.get_running_loop()
        self._run_task = asyncio.current_task()
        halt = self._halt = asyncio.Event()
        watcher = None if stop is None else loop.create_task(self._watch(stop, halt))
        period = 1.0 / rate
        due = loop.time()
        try:
            while not halt.is_set():
                connected = self.connected
                if connected:
                    await self.live(first=not self._was_connected)
                    self.ticks += 1
                    if self.ticks % 300 == 0 and self.battery_level > 5:
                        self.battery_level -= 1
                        await self.send(BATTERY_LEVEL, bytes((self.battery_level,)))
                self._was_connected = connected
                due += period
                if due < loop.time() - period:  # fell far behind: skip, do not burst
                    due = loop.time()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, due - loop.time())):
                        await halt.wait()
        finally:
            if watcher is not None:
                watcher.cancel()
            self._halt = None
            self._run_task = None
            await self._cancel_tasks()

    @staticmethod
    async def _watch(stop: asyncio.Event, halt: asyncio.Event) -> None:
        await stop.wait()
        halt.set()

    async def live(self, first: bool) -> None:
        """Send one live value (one second of the device's life). `first`: the first since a
        central connected."""

    async def halt(self) -> None:
        """Stop `run` and every transfer, and wait until they have ended. On the device's loop."""
        task = self._run_task
        if self._halt is not None:
            self._halt.set()
        if task is not None and task is not asyncio.current_task():
            await asyncio.gather(task, return_exceptions=True)
        await self._cancel_tasks()

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def spread_times(
    rng: random.Random, end: datetime, count: int, spacing: timedelta
) -> list[datetime]:
    """`count` strictly increasing times about `spacing` apart, the last about `spacing` before
    `end` (each jittered by a third of it: the order holds and none is after `end`)."""
    jitter = spacing.total_seconds() / 3
    return [
        end - spacing * (count - i) + timedelta(seconds=round(rng.uniform(-jitter, jitter)))
        for i in range(count)
    ]
