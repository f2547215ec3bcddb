"""A simulated open-profile smart-inhaler sensor for the virtual Bluetooth lab: `rtm-gateway
simulate openrtm.inhaler --ble`, and this package's tests.

What lives here: `Actuation` (one event as the sensor stores it, and its bytes) and
`InhalerSensor` (the profile's GATT server: Sensor Features, Actuation Event, the Record Control
Point, plus Device Information and Battery from `SimulatedBleDevice`). The bytes are encoded from
README.md's tables, not with the driver's code, so a mistake in one is not copied into the other.

By default the sensor holds a realistic day, timed back from now: the controller inhaler's
morning dose (about 08:00, two puffs), its evening dose (about 20:00) missed, and two puffs of the
rescue inhaler in the afternoon (about 15:30). The sensor serves both inhalers (`roles`), as a
docking case would; give `roles=("controller",)` for a clip-on sensor on one inhaler.

Threading: like every simulated device it lives on the virtual BlueZ's event loop; call
`add_actuation` there (`run_on(bluez, sensor.add_actuation())`).
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.kit.vendor import (
    ATT_CCCD_IMPROPERLY_CONFIGURED,
    ATT_PROCEDURE_IN_PROGRESS,
    CharSpec,
    SimulatedBleDevice,
    att_error,
    date_time,
    local_now,
    sfloat,
    u16,
)

from rtm_open_inhaler.driver import (
    ACTUATION_EVENT,
    RECORD_CONTROL_POINT,
    SENSOR_FEATURES,
    SERVICE,
)

Purpose = Literal["controller", "rescue"]
"""Why an inhaler was used: a scheduled controller dose or a rescue use."""

ROLE_CODES: Mapping[str, int] = {"controller": 1, "rescue": 2, "controller_and_rescue": 3}

_FLOW, _DURATION, _CLOCK_NOT_SET, _FROM_STORAGE = 0x01, 0x02, 0x04, 0x08
_FEATURE_FLOW, _FEATURE_DURATION, _FEATURE_CLOCK = 0x0001, 0x0002, 0x0004
_REPORT_AFTER, _REPORT_ALL, _ABORT, _RESPONSE = 0x01, 0x02, 0x03, 0x80
_SUCCESS, _NO_EVENTS, _OP_CODE_NOT_SUPPORTED, _INVALID_OPERAND = 0x01, 0x02, 0x03, 0x04

_UNSET_CLOCK_EPOCH = datetime(2000, 1, 1)  # noqa: DTZ001 (a device's wall clock has no zone)
# (name, hour, minute, jitter in minutes) of the controller's scheduled doses.
_DOSES = (("morning", 8, 0, 25), ("evening", 20, 0, 25))
_RESCUE = (15, 30, 90)
# Peak inspiratory flow (L/min) and inhalation duration (ms): (mean, sd, low, high). A scheduled
# dose is a slow, deep breath; a rescue use comes when breathless, weaker and shorter.
_FLOW_LPM: Mapping[Purpose, tuple[float, float, float, float]] = {
    "controller": (58, 9, 35, 85),
    "rescue": (42, 6, 30, 60),
}
_DURATION_MS: Mapping[Purpose, tuple[float, float, float, float]] = {
    "controller": (2300, 350, 1500, 3000),
    "rescue": (1500, 250, 1000, 2200),
}


@dataclass(frozen=True, slots=True)
class Actuation:
    """One actuation as the sensor stores it."""

    counter: int
    time: datetime
    """By the sensor's clock: local wall time, or counted from 2000-01-01 at power-on while the
    clock is not set."""
    role: int
    flow_tenths: int | None
    """Peak inspiratory flow in 0.1 L/min; None when not measured."""
    duration_ms: int | None
    clock_set: bool = True

    @property
    def peak_flow(self) -> float | None:
        return None if self.flow_tenths is None else self.flow_tenths / 10

    def encode(self, *, from_storage: bool) -> bytes:
        """The Actuation Event value: flags, counter, Date Time, role, then flow and duration."""
        flags = (
            (_FLOW if self.flow_tenths is not None else 0)
            | (_DURATION if self.duration_ms is not None else 0)
            | (0 if self.clock_set else _CLOCK_NOT_SET)
            | (_FROM_STORAGE if from_storage else 0)
        )
        data = (
            bytes((flags,))
            + self.counter.to_bytes(4, "little")
            + date_time(self.time)
            + bytes((self.role,))
        )
        if self.flow_tenths is not None:
            data += sfloat(self.flow_tenths, -1)
        if self.duration_ms is not None:
            data += u16(self.duration_ms)
        return data


class InhalerSensor(SimulatedBleDevice):
    """A smart-inhaler sensor implementing the open profile (see the module doc for its day).

    Every actuation is stored (the oldest go beyond `capacity`); a Record Control Point report
    sends the stored ones, oldest first, `record_interval` seconds apart, then its response. A
    new actuation is also notified live, but only once the central's first report on this
    connection has been answered and while no report runs: so, within a connection, counters
    arrive in increasing order and a hub that keeps the highest one never skips an event.
    `actuate_every` live seconds the patient uses the inhaler (0: never; an inhaler is not a
    stream)."""

    driver_id = "openrtm.inhaler"
    service = SERVICE
    model = "OPEN-INHALER-SIM-1"
    default_rate = 1.0
    what = (
        "a smart-inhaler sensor (open profile): a day of stored actuations over the Record "
        "Control Point, new ones live"
    )

    def __init__(
        self,
        *,
        address: str = "C0:FF:EE:B0:00:01",
        name: str = "Open Inhaler",
        serial: str = "INH-000001",
        seed: int | None = None,
        roles: Sequence[str] = ("controller", "rescue"),
        missed: Literal["morning", "evening"] | None = "evening",
        puffs: int = 2,
        first_counter: int = 137,
        measures_flow: bool = True,
        clock_set: bool = True,
        capacity: int = 500,
        record_interval: float = 0.0,
        actuate_every: int = 0,
        battery_level: int = 90,
    ) -> None:
        unknown = [r for r in roles if r not in ROLE_CODES]
        if not roles or unknown:
            raise ValueError(f"roles must be some of {', '.join(ROLE_CODES)}; got {roles!r}")
        if missed not in (None, "morning", "evening"):
            raise ValueError("missed must be 'morning', 'evening' or None")
        if puffs < 1 or first_counter < 1 or capacity < 1:
            raise ValueError("puffs, first_counter and capacity must be at least 1")
        if record_interval < 0 or actuate_every < 0:
            raise ValueError("record_interval and actuate_every must not be negative")
        features = _FEATURE_CLOCK | (_FEATURE_FLOW | _FEATURE_DURATION if measures_flow else 0)
        role_mask = 0
        for role in roles:
            role_mask |= 1 << (ROLE_CODES[role] - 1)
        super().__init__(
            address=address,
            name=name,
            serial=serial,
            seed=seed,
            battery_level=battery_level,
            profile={
                SENSOR_FEATURES: CharSpec(("read",), u16(features) + bytes((role_mask,))),
                ACTUATION_EVENT: CharSpec(("notify",)),
                RECORD_CONTROL_POINT: CharSpec(("write", "indicate")),
            },
        )
        self.roles = tuple(roles)
        self.missed = missed
        self.measures_flow = measures_flow
        self.clock_set = clock_set
        self.capacity = capacity
        self.record_interval = record_interval
        self.actuate_every = actuate_every
        self.next_counter = first_counter
        self.requests: list[bytes] = []
        """Every value written to the Record Control Point, refused ones too, oldest first."""
        self.responses: list[bytes] = []
        """Every Record Control Point response the sensor sent (delivered or not)."""
        self.events_sent = 0
        """Stored events sent by reports."""
        self.live_sent = 0
        """New actuations notified live."""
        self.transfers_interrupted = 0
        self._procedure: asyncio.Task[None] | None = None
        self._reporting = False
        self._live_for = -1  # the connection (its Connect call count) live events go out on
        now = local_now()
        self._power_on = now - timedelta(days=3)
        self.stored: list[Actuation] = []
        for moment, purpose in self._day(now, puffs):
            self._store(self._actuation(moment, purpose))
        self._handlers[RECORD_CONTROL_POINT] = self._control_point

    # -- the day and new actuations --

    def _day(self, now: datetime, puffs: int) -> list[tuple[datetime, Purpose]]:
        """(real time, purpose) of each actuation in the 24 hours before `now`, oldest first."""
        uses: list[tuple[datetime, Purpose]] = [
            (self._latest(now, hour, minute, jitter), "controller")
            for name, hour, minute, jitter in _DOSES
            if name != self.missed
        ]
        uses.append((self._latest(now, *_RESCUE), "rescue"))
        actuations: list[tuple[datetime, Purpose]] = []
        for start, purpose in uses:
            if self._role_for(purpose) is None:
                continue  # the sensor is not on an inhaler used that way
            moment = start
            for _ in range(puffs):
                actuations.append((moment, purpose))
                moment += timedelta(seconds=self.rng.randint(30, 60))  # the next puff
        return sorted(actuations)

    def _latest(self, now: datetime, hour: int, minute: int, jitter: int) -> datetime:
        """The last time before `now` (and a few puffs' room) near hour:minute."""
        moment = now.replace(hour=hour, minute=minute, second=0) + timedelta(
            seconds=self.rng.randint(-jitter * 60, jitter * 60)
        )
        return moment - timedelta(days=1) if moment > now - timedelta(minutes=10) else moment

    def _role_for(self, purpose: Purpose) -> int | None:
        for role in (purpose, "controller_and_rescue"):
            if role in self.roles:
                return ROLE_CODES[role]
        return None

    def _actuation(self, real_time: datetime, purpose: Purpose) -> Actuation:
        role = self._role_for(purpose)
        if role is None:
            raise ValueError(f"this sensor is not on a {purpose} inhaler (roles {self.roles})")
        if self.next_counter > 0xFFFFFFFF:
            raise ValueError("the event counter is used up (uint32)")
        flow = duration = None
        if self.measures_flow:
            flow = round(self._gauss(_FLOW_LPM[purpose]) * 10)
            duration = round(self._gauss(_DURATION_MS[purpose]))
        sensor_time = (
            real_time if self.clock_set else _UNSET_CLOCK_EPOCH + (real_time - self._power_on)
        )
        event = Actuation(
            self.next_counter,
            sensor_time.replace(microsecond=0),
            role,
            flow,
            duration,
            self.clock_set,
        )
        self.next_counter += 1
        return event

    def _gauss(self, shape: tuple[float, float, float, float]) -> float:
        mean, sd, low, high = shape
        return min(high, max(low, self.rng.gauss(mean, sd)))

    def _store(self, event: Actuation) -> None:
        self.stored.append(event)
        del self.stored[: -self.capacity]

    async def add_actuation(self, purpose: Purpose | None = None) -> Actuation:
        """The patient uses the inhaler now (a rescue use when the sensor serves one): stored,
        and notified live when the module doc's rule allows. On the device's loop."""
        if purpose is None:
            purpose = "rescue" if self._role_for("rescue") is not None else "controller"
        event = self._actuation(local_now(), purpose)
        self._store(event)
        if (
            not self._reporting
            and self._live_for == self.peripheral.connect_calls
            and self.listening(ACTUATION_EVENT)
        ):
            self.live_sent += 1
            await self.send(ACTUATION_EVENT, event.encode(from_storage=False))
        return event

    async def live(self, first: bool) -> None:
        if self.actuate_every and (self.ticks + 1) % self.actuate_every == 0:
            await self.add_actuation()

    # -- the Record Control Point --

    @property
    def transferring(self) -> bool:
        """A Record Control Point procedure (a report and its response) is in progress."""
        return self._procedure is not None and not self._procedure.done()

    def _control_point(self, data: bytes) -> None:
        self.requests.append(data)
        # A report needs somewhere to go and a way to end: both CCCDs must be on.
        if not (self.listening(RECORD_CONTROL_POINT) and self.listening(ACTUATION_EVENT)):
            raise att_error(ATT_CCCD_IMPROPERLY_CONFIGURED)
        if data[:1] == bytes((_ABORT,)):
            procedure = self._procedure
            if procedure is not None and len(data) == 1:
                procedure.cancel()  # at once: no event follows the write's reply
            self.spawn(self._abort(len(data) == 1, procedure))
            return
        if self.transferring:
            raise att_error(ATT_PROCEDURE_IN_PROGRESS)
        self._procedure = self.spawn(self._report(data))

    async def _report(self, data: bytes) -> None:
        op = data[0] if data else 0
        if op == _REPORT_ALL and len(data) == 1:
            last = -1
        elif op == _REPORT_AFTER and len(data) == 5:
            last = int.from_bytes(data[1:], "little")
        else:
            await self._respond(
                op,
                _INVALID_OPERAND if op in (_REPORT_ALL, _REPORT_AFTER) else _OP_CODE_NOT_SUPPORTED,
            )
            return
        sent = 0
        self._reporting = True
        try:
            while True:
                # Looked up afresh each time: an actuation during the report joins its end.
                at = bisect.bisect_right(self.stored, last, key=lambda e: e.counter)
                if at == len(self.stored):
                    # In the same step as the last look-up (no await between), so no new
                    # actuation falls between the report and the live notifications.
                    self._live_for = self.peripheral.connect_calls
                    break
                if not self.connected:  # link lost: the report dies with it, unanswered
                    self.transfers_interrupted += 1
                    return
                event = self.stored[at]
                self.events_sent += 1
                sent += 1
                await self.send(ACTUATION_EVENT, event.encode(from_storage=True))
                last = event.counter
                # Always yield, so an abort (or a test's link loss) can land mid-report.
                await asyncio.sleep(self.record_interval)
        finally:
            self._reporting = False
        await self._respond(op, _SUCCESS if sent else _NO_EVENTS)

    async def _abort(self, valid: bool, procedure: asyncio.Task[None] | None) -> None:
        if not valid:
            await self._respond(_ABORT, _INVALID_OPERAND)
            return
        if procedure is not None:
            await asyncio.gather(procedure, return_exceptions=True)
        await self._respond(_ABORT, _SUCCESS)

    async def _respond(self, op: int, result: int) -> None:
        value = bytes((_RESPONSE, op, result))
        self.responses.append(value)
        await self.send(RECORD_CONTROL_POINT, value)
