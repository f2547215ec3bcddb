"""A simulated Tindeq Progressor for the virtual Bluetooth lab (`rtm-gateway simulate
tindeq.progressor --ble`, and this package's tests).

What lives here: `Progressor`, a `SimulatedBleDevice` serving the Progressor service (data:
notify, control: write) beside the Device Information and Battery services of the base, and
`exercise`, the patient it measures. Written from Tindeq's public API description, not from
`rtm_tindeq.driver`, so that a mistake in the driver is not copied into the device testing it.

Behaviour, per command written to the control characteristic:

- 0x65 starts a weight measurement: sample times restart at 0 and every live value is one
  notification `01 20` + four samples (float32 LE kgf, uint32 LE us), 12.5 ms apart: 80 samples
  a second at the default rate of 20 notifications a second. Each notification is 50 ms of the
  device's life whatever the rate, so a test running it at 200 a second sees ten times as much.
- 0x66 stops it; 0x64 tares (the present load, mostly the handle's own weight, becomes zero);
  0x6F answers `00 04` + the battery voltage in mV (uint32 LE), which follows the base's
  battery level from 3300 mV (empty) to 4200 mV (full).
- Any other command is accepted and ignored; an empty write is refused, as BlueZ refuses one.

The stream keeps its state across a lost link (nothing is sent meanwhile) until 0x66: the hub
writes 0x65 again on every connection anyway, which restarts the sample times.

The patient: after a rest of 1-2 s, sets of five pulls, each 3-5 s with a 0.4 s rise and 0.3 s
fall, aiming at a force drawn per set from 15-30 kgf, with tremor and a little fatigue over the
pull; 2-4 s of rest between pulls and 20-30 s between sets. The load cell adds noise of about
0.04 kgf, and reads the handle's 0.3 kgf until tared.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterator

from dbus_fast import DBusError
from gateway.kit.vendor import CharSpec, SimulatedBleDevice

SERVICE = "7e4e1701-1ea6-40c9-9dcc-13d34ffead57"
DATA = "7e4e1702-1ea6-40c9-9dcc-13d34ffead57"
CONTROL = "7e4e1703-1ea6-40c9-9dcc-13d34ffead57"

SAMPLE_PERIOD_US = 12_500
SAMPLES_PER_NOTIFICATION = 4
REPS_PER_SET = 5


def exercise(rng: random.Random, step_s: float) -> Iterator[float]:
    """The force (kgf) a patient puts on the Progressor, one value every `step_s`, forever."""
    yield from _hold(0.0, rng.uniform(1.0, 2.0), step_s)
    while True:
        target = rng.uniform(15.0, 30.0)
        for rep in range(REPS_PER_SET):
            yield from _pull(rng, target * rng.uniform(0.95, 1.05), rng.uniform(3.0, 5.0), step_s)
            last = rep == REPS_PER_SET - 1
            yield from _hold(
                0.0, rng.uniform(20.0, 30.0) if last else rng.uniform(2.0, 4.0), step_s
            )


def _hold(kgf: float, seconds: float, step_s: float) -> Iterator[float]:
    for _ in range(round(seconds / step_s)):
        yield kgf


def _pull(rng: random.Random, target: float, seconds: float, step_s: float) -> Iterator[float]:
    rise, fall = 0.4, 0.3
    tremor_hz = rng.uniform(6.0, 10.0)  # physiological tremor
    steps = round(seconds / step_s)
    for i in range(steps):
        t = i * step_s
        envelope = min(1.0, t / rise, (seconds - t) / fall)
        shape = math.sin(math.pi / 2 * max(0.0, envelope)) ** 2  # smooth rise and fall
        fatigue = 1.0 - 0.06 * t / seconds
        tremor = 0.02 * target * math.sin(2 * math.pi * tremor_hz * t)
        yield max(0.0, target * shape * fatigue + tremor * shape)


class Progressor(SimulatedBleDevice):
    """A Tindeq Progressor: streams force samples of a patient's sets of pulls once started."""

    driver_id = "tindeq.progressor"
    service = SERVICE
    model = "SIM-PROGRESSOR-150"
    what = "a Tindeq Progressor dynamometer (sets of 5 pulls at 15-30 kgf once 0x65 starts it)"
    default_rate = 1_000_000 / (SAMPLE_PERIOD_US * SAMPLES_PER_NOTIFICATION)

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:A0:00:01",
        name: str = "Progressor_0001",
        serial: str = "PRG-000001",
        seed: int | None = None,
        battery_level: int = 90,
        handle_kgf: float = 0.3,
        noise_kgf: float = 0.04,
    ) -> None:
        super().__init__(
            address=address,
            name=name,
            serial=serial,
            seed=seed,
            battery_level=battery_level,
            profile={
                DATA: CharSpec(("notify",)),
                CONTROL: CharSpec(("write", "write-without-response")),
            },
        )
        self.handle_kgf = handle_kgf
        self.noise_kgf = noise_kgf
        self.streaming = False
        self.samples_sent = 0
        """Weight samples in notifications delivered to a subscribed central."""
        self.tare_kgf = 0.0
        self._time_us = 0
        self._load = handle_kgf
        self._patient = exercise(self.rng, SAMPLE_PERIOD_US / 1_000_000)
        self._handlers[CONTROL] = self._command

    @property
    def millivolts(self) -> int:
        """The battery voltage the device reports for its battery level."""
        return 3300 + 9 * self.battery_level

    def _command(self, data: bytes) -> None:
        if not data:
            raise DBusError("org.bluez.Error.InvalidArguments", "Invalid Length")
        op = data[0]
        if op == 0x65:
            self.streaming = True
            self._time_us = 0
        elif op == 0x66:
            self.streaming = False
        elif op == 0x64:
            self.tare_kgf = self._load
        elif op == 0x6F:
            self.spawn(self._answer(b"\x00\x04" + self.millivolts.to_bytes(4, "little")))

    async def _answer(self, data: bytes) -> None:
        await self.send(DATA, data)

    async def live(self, first: bool) -> None:
        if not self.streaming:
            return
        samples = b""
        for _ in range(SAMPLES_PER_NOTIFICATION):
            self._load = next(self._patient) + self.handle_kgf + self.rng.gauss(0.0, self.noise_kgf)
            samples += struct.pack("<fI", self._load - self.tare_kgf, self._time_us)
            self._time_us = (self._time_us + SAMPLE_PERIOD_US) % (1 << 32)
        if await self.send(DATA, bytes((0x01, len(samples))) + samples):
            self.samples_sent += SAMPLES_PER_NOTIFICATION
