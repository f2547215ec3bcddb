"""Bluetooth LE through the whole hub: virtual straps -> real bleak -> daemon -> broker.

Prints numbers, asserts nothing. Run from the repository root:

    .venv/bin/python bench/ble_bench.py [--quick]

`--quick` makes one short run (under a minute). Without it you get three runs with longer
phases (under five minutes), and the figures are medians over them. The machine may be shared
and noisy, so compare runs with care and repeat before you believe a small difference.

What it starts: a plain mosquitto on a free loopback port (`max_inflight_messages` raised as in
pipeline_bench.py), a private D-Bus system bus (`gateway.sim.dbus_bus.private_bus`), the virtual
BlueZ (`BluezThread`) in this process with five virtual Heart Rate straps (service 0x180D,
Heart Rate Measurement 0x2A37 notify, plus Device Information and Battery as real straps have),
and the real daemon as a child process (`python -m gateway.cli run -c CONFIG`, the five straps
configured by address, `[ble] passive = false`, log level INFO), pointed at the private bus with
DBUS_SYSTEM_BUS_ADDRESS. A subscriber in another process takes everything under
`rtm/v1/<hub id>/#` and decodes each JWS payload; gatt.hrs is not a continuous driver, so every
notification should become one signed reading. Each notification carries a sequence number as
its (uint16) heart rate, so every loss and duplicate is counted per device.

It measures:

1. Connection set-up, per strap: from the moment the strap is added (it starts advertising)
   until the daemon logs "device X: connected" (its log timestamp, ms resolution), until the
   first reading reaches the broker (the battery level, read right after connecting), and until
   the first heart-rate reading does (the strap notifies every 50 ms from the start, so that one
   includes up to 50 ms of waiting for the next notification). All five straps are switched on
   at once. Median and max over the straps (and over the runs).
2. Notification throughput through the whole pipeline: with all five connected, each strap
   notifies at a paced rate (in total 1,000/s and 2,000/s, i.e. 200/s and 400/s per strap, and
   in the full run also 4,000/s to show the headroom; `--rates` picks others) in 10 ms ticks,
   then a drain period. Reported: the rate offered (asked for, and achieved by the notifier), the
   rate delivered at the broker, notification-to-broker latency (split at the daemon's capture
   time, the reading's `time.hub`: notifier + D-Bus + bleak vs journal + outbox + MQTT), loss
   and duplicates (notifications sent vs distinct readings received, per strap), and the CPU
   each process used meanwhile, so a saturated core shows. Before that, the notifier alone:
   five straps connected by a bare D-Bus client that asks for notifications and then never
   listens (dbus-daemon drops the signals), notifying flat out, so the reader can tell which side
   limits. After each tick the notifier waits for a D-Bus Ping round trip to the virtual BlueZ
   (see `Bus.barrier`): a notification counts as offered once dbus-daemon has taken it.
3. The daemon's memory (VmRSS and VmHWM from /proc/PID/status) idle with five connected straps
   and at the end of the throughput phases, and its CPU per reading (utime + stime from
   /proc/PID/stat, phase start until the last reading arrived, divided by readings delivered).

Targets: >= 1,000 notifications/s from five simultaneous straps delivered with no loss; daemon
RSS <= 80 MB. Connection set-up has no target here.

Everything is cleaned up (daemon SIGTERM, subscriber, virtual BlueZ, bus, mosquitto) also on
Ctrl-C or an error. For digging: `--phase-s` sets how long each rate runs, `--commit-interval-ms`
sets the daemon's `[outbox] commit_interval_ms`, and `--py-spy FILE` records the daemon with
py-spy (folded stacks, `--format raw`) during the last rate of the last run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline_bench import BROKER_INFLIGHT, cpu_ticks, start_broker, vm_kb

from gateway.sdk import uuid16
from gateway.sim.bluez import BluezThread, CharSpec, VirtualPeripheral
from gateway.sim.broker import Broker
from gateway.sim.dbus_bus import private_bus

ROOT = Path(__file__).resolve().parent.parent
HUB = "ble-bench"
PREFIX = "rtm/v1"
PATIENT = "pt-0001"
STRAPS = 5
HRS = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
DIS = uuid16(0x180A)
SERIAL_NUMBER = uuid16(0x2A25)
BAS = uuid16(0x180F)
BATTERY_LEVEL = uuid16(0x2A19)
TICK = 0.01
"""The paced notifier sends each tick's share every 10 ms."""
WARMUP_PERIOD = 0.05
"""While connecting, each strap notifies every 50 ms (a real strap: about once a second)."""
RSS_TARGET_MB = 80.0
RATE_TARGET = 1000.0
HZ = os.sysconf("SC_CLK_TCK")
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\w+) ([\w.]+): (.*)$")


# --- the subscriber, in its own process -----------------------------------------------------------


def epoch(rfc3339: str) -> float:
    """The hub's capture time (ms resolution, UTC) as a Unix time."""
    return datetime.fromisoformat(rfc3339).timestamp()


def b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Received:
    """The subscriber's record: each heart-rate value's first arrival, per strap."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.online = False
        self.first_any: dict[str, float] = {}
        self.first_hr: dict[str, float] = {}
        self.hr: dict[str, dict[int, tuple[float, float]]] = {}
        """strap -> {heart rate (a sequence number): (arrival, the reading's time.hub)}"""
        self.dups: dict[str, int] = {}

    def on_message(self, _c: Any, _u: Any, message: Any) -> None:
        arrival = time.time()  # first: the parsing below is not part of the latency
        if message.topic.endswith("/status"):
            with self.lock:
                self.online = json.loads(message.payload).get("state") == "online"
            return
        if not message.topic.endswith("/readings"):
            return
        bodies = [json.loads(b64url(entry["payload"])) for entry in json.loads(message.payload)]
        with self.lock:
            for body in bodies:
                if body.get("kind") != "reading":
                    continue
                device = body["device"]["id"]
                self.first_any.setdefault(device, arrival)
                if body["device"].get("driver") != "gatt.hrs":
                    continue
                self.first_hr.setdefault(device, arrival)
                value = int(body["observations"][0]["value"])
                seen = self.hr.setdefault(device, {})
                if value in seen:
                    self.dups[device] = self.dups.get(device, 0) + 1
                else:
                    seen[value] = (arrival, epoch(body["time"]["hub"]))

    def answer(self, command: str, rest: list[str]) -> Any:
        with self.lock:
            if command == "stats":
                return {
                    "online": self.online,
                    "first_any": dict(self.first_any),
                    "first_hr": dict(self.first_hr),
                }
            lo, hi = int(rest[0]), int(rest[1])
            if command == "count":
                return sum(1 for values in self.hr.values() for v in values if lo <= v < hi)
            if command == "dump":
                Path(rest[2]).write_text(
                    json.dumps(
                        {
                            "dups": self.dups,
                            "values": {
                                d: [(v, *times) for v, times in values.items() if lo <= v < hi]
                                for d, values in self.hr.items()
                            },
                        }
                    )
                )
                self.dups = {}
                return "ok"
        return f"unknown command {command!r}"


def subscriber_main(port: int, hub: str) -> None:
    """Child process: subscribe to PREFIX/hub/#, keep each reading's arrival, answer commands
    on stdin with one JSON line on stdout: `stats`, `count LO HI`, `dump LO HI PATH`."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; stdin closing ends us
    received = Received()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(f"{PREFIX}/{hub}/#", qos=1)
    client.on_subscribe = lambda *_a: print("ready", flush=True)
    client.on_message = received.on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    for line in sys.stdin:
        command, *rest = line.split()
        print(json.dumps(received.answer(command, rest)), flush=True)
    client.disconnect()
    client.loop_stop()


class Subscriber:
    def __init__(self, broker: Broker) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--subscriber", str(broker.port), HUB],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        if self._readline() != "ready":
            self.close()
            raise RuntimeError("the subscriber did not subscribe")

    def _readline(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def ask(self, command: str) -> Any:
        assert self.process.stdin is not None
        with self._lock:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
            return json.loads(self._readline())

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# --- straps and the notifier ----------------------------------------------------------------------


def strap(address: str, serial: str) -> VirtualPeripheral:
    """A Heart Rate strap as tests/test_ble_session.py defines one."""
    return VirtualPeripheral(
        address,
        "HR Strap",
        services={
            HRS: {HR_MEASUREMENT: CharSpec(("notify",))},
            DIS: {SERIAL_NUMBER: CharSpec(("read",), serial.encode())},
            BAS: {BATTERY_LEVEL: CharSpec(("read", "notify"), b"\x57")},
        },
        service_uuids=[HRS],
        rssi=-50,
    )


def hr(seq: int) -> bytes:
    """A Heart Rate Measurement with a uint16 heart rate (flags bit 0): `seq` in 1..65535."""
    return bytes((0x01, seq & 0xFF, seq >> 8))


@dataclass(slots=True)
class Sent:
    """What one paced (or flat-out) send did: every strap sent the seqs [first, next_seq)."""

    first: int
    next_seq: int = 0
    started: float = 0.0
    finished: float = 0.0
    ticks: list[tuple[int, float]] = field(default_factory=list)
    """(first seq of the tick, wall time it was handed to the notifier)."""
    late_ticks: int = 0

    @property
    def per_strap(self) -> int:
        return self.next_seq - self.first

    def sent_at(self, seq: int) -> float:
        index = bisect.bisect_right(self.ticks, (seq, float("inf"))) - 1
        return self.ticks[index][1]


class Bus:
    """A bare D-Bus client of the virtual BlueZ. It adds no match rules, so it never receives
    the notifications' signals."""

    def __init__(self, bus: Any) -> None:
        self._bus = bus

    @classmethod
    async def open(cls, address: str) -> Bus:
        from dbus_fast.aio import MessageBus

        return cls(await MessageBus(bus_address=address).connect())

    async def call(
        self, path: str, interface: str, member: str, signature: str = "", body: Sequence[Any] = ()
    ) -> list[Any]:
        from dbus_fast import Message, MessageType

        reply = await self._bus.call(
            Message(
                destination="org.bluez",
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=list(body),
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member} on {path}: {None if reply is None else reply.body}")
        return list(reply.body)

    async def barrier(self) -> None:
        """Flow control: a Peer.Ping to the virtual BlueZ. Its reply leaves after the signals
        it emitted before, so once it is back, dbus-daemon has read them all. Without it a
        burst outruns dbus-daemon, the socket fills, and dbus-fast's writer drops the virtual
        BlueZ's connection on EAGAIN (python-dbus-next issue 153, still in dbus-fast 5.2)."""
        await self.call("/", "org.freedesktop.DBus.Peer", "Ping")

    async def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        return dict(
            (await self.call("/", "org.freedesktop.DBus.ObjectManager", "GetManagedObjects"))[0]
        )

    def close(self) -> None:
        self._bus.disconnect()


async def send(
    bluez: BluezThread,
    bus: Bus,
    straps: Sequence[VirtualPeripheral],
    first: int,
    *,
    seconds: float,
    rate: float | None,
) -> Sent:
    """Each strap notifies `rate / len(straps)` times a second (None: as fast as the notifier
    goes), for `seconds`, in ticks: one `gather` of the tick's notifications, then a barrier."""
    sent = Sent(first, first)
    per_strap = None if rate is None else rate / len(straps)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent.started = time.time()
    tick = 0
    while True:
        now = loop.time()
        if now - start >= seconds:
            break
        if per_strap is None:
            count = 10
        else:
            due = start + tick * TICK
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > TICK:
                sent.late_ticks += 1
            count = int(per_strap * (tick + 1) * TICK) - (sent.next_seq - first)
            tick += 1
            if count <= 0:
                continue
        seqs = range(sent.next_seq, sent.next_seq + count)
        sent.ticks.append((sent.next_seq, time.time()))
        await asyncio.gather(
            *(bluez.notify(p, HR_MEASUREMENT, hr(s)) for s in seqs for p in straps)
        )
        await bus.barrier()
        sent.next_seq += count
    sent.finished = time.time()
    return sent


# --- the notifier alone: a bare D-Bus central that never listens ---------------------------------


async def notifier_alone(
    bus_address: str, seconds: float, repeats: int
) -> list[tuple[float, float]]:
    """(notifications/s, this process's CPU us per notification) for each repeat."""
    bluez = BluezThread.start(bus_address)
    bus: Bus | None = None
    straps = [strap(f"AA:BB:CC:EE:00:{i:02X}", f"ALONE-{i}") for i in range(1, STRAPS + 1)]
    addresses = {p.address for p in straps}
    devices: list[str] = []
    try:
        bus = await Bus.open(bus_address)
        for peripheral in straps:
            await bluez.add_peripheral(peripheral)
        await bus.call("/org/bluez/hci0", "org.bluez.Adapter1", "StartDiscovery")
        async with asyncio.timeout(10):
            while len(devices) < STRAPS:
                await asyncio.sleep(0.05)
                devices = [
                    path
                    for path, ifaces in (await bus.objects()).items()
                    if "org.bluez.Device1" in ifaces
                    and ifaces["org.bluez.Device1"]["Address"].value in addresses
                ]
        for path in devices:
            await bus.call(path, "org.bluez.Device1", "Connect")
        chars = [
            path
            for path, ifaces in (await bus.objects()).items()
            if "org.bluez.GattCharacteristic1" in ifaces
            and ifaces["org.bluez.GattCharacteristic1"]["UUID"].value == HR_MEASUREMENT
        ]
        if len(chars) != STRAPS:
            raise RuntimeError(f"found {len(chars)} heart rate characteristics, not {STRAPS}")
        for path in chars:
            await bus.call(path, "org.bluez.GattCharacteristic1", "StartNotify")
        results = []
        seq = 1
        for _ in range(repeats):
            cpu0 = time.process_time()
            sent = await send(bluez, bus, straps, seq, seconds=seconds, rate=None)
            cpu = time.process_time() - cpu0
            total = sent.per_strap * STRAPS
            results.append((total / (sent.finished - sent.started), cpu / total * 1e6))
            seq = 1 if sent.next_seq > 60_000 else sent.next_seq
        return results
    finally:
        if bus is not None:
            for path in devices:
                with contextlib.suppress(Exception):
                    await bus.call(path, "org.bluez.Device1", "Disconnect")
            with contextlib.suppress(Exception):
                await bus.call("/org/bluez/hci0", "org.bluez.Adapter1", "StopDiscovery")
            bus.close()
        bluez.stop()


# --- the daemon -----------------------------------------------------------------------------------


def fake_bluetoothctl(bin_dir: Path) -> None:
    """bleak runs `bluetoothctl --version`; report Debian 12's BlueZ, as tests/blelab.py does."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    fake = bin_dir / "bluetoothctl"
    fake.write_text("#!/bin/sh\necho 5.66\n", encoding="utf-8")
    fake.chmod(0o755)


def daemon_config(run_dir: Path, broker: Broker, addresses: Sequence[str], extra: str = "") -> Path:
    devices = "".join(
        f'\n[[devices]]\nid = "strap{i}"\ndriver = "gatt.hrs"\naddress = "{address}"\n'
        f'patient = "{PATIENT}"\n'
        # Notifications come on purpose at 1,000/s or more: a limit far above that keeps the
        # token bucket on the path without dropping (gatt.hrs is not continuous: 10/s default).
        "max_rate = 100000\n"
        for i, address in enumerate(addresses, 1)
    )
    path = run_dir / "daemon.toml"
    path.write_text(f"""
[hub]
id = "{HUB}"
state_dir = "{run_dir / "state"}"

[mqtt]
url = "mqtt://127.0.0.1:{broker.port}"

[log]
level = "INFO"

[ble]
passive = false
{extra}
{devices}""")
    return path


class Daemon:
    """`python -m gateway.cli run -c CONFIG` on the private bus, its log in a file."""

    def __init__(self, config: Path, log_file: Path, bus_address: str, bin_dir: Path) -> None:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        self.log_file = log_file
        with log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        self.pid = self.process.pid
        self.stop_seconds = float("nan")
        self.exit_code: int | None = None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def lines(self) -> Iterator[tuple[float, str, str, str]]:
        """(wall time, level, logger, message) of each log line that has a timestamp."""
        for line in self.log().splitlines():
            match = _LOG_LINE.match(line)
            if match:
                stamp = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
                yield stamp + int(match[2]) / 1000, match[3], match[4], match[5]

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the daemon exited with {self.process.returncode}:\n{self.log()[-3000:]}"
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            started = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.stop_seconds = time.monotonic() - started
        self.exit_code = self.process.returncode


def sys_ticks(pid: int) -> int:
    """stime alone (field 15 of /proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[12])


def child_pid(comm: str) -> int | None:
    """A child of this process with this command name (the private bus's dbus-daemon)."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            if name == comm and stat.rsplit(")", 1)[1].split()[1] == me:
                return int(entry.name)
    return None


class CpuMeter:
    """CPU seconds of a few processes between two points."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._start = self._read()
        self._t0 = time.monotonic()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = cpu_ticks(pid) / HZ
        return out

    def stop(self) -> tuple[float, dict[str, float]]:
        """(elapsed wall seconds, {process: CPU seconds})."""
        now = self._read()
        return time.monotonic() - self._t0, {
            name: now[name] - self._start.get(name, 0.0) for name in now
        }


# --- one run --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    rate: float
    sent: int
    offered: float
    late_ticks: int
    received: int
    lost: dict[str, int]
    dups: int
    delivered: float
    lag: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    hub_ms: tuple[float, float]
    """p50 and p99 of notification -> the daemon's capture (the reading's time.hub, ms)."""
    broker_ms: tuple[float, float]
    """p50 and p99 of capture -> arrival at the broker's subscriber."""
    daemon_cpu_us: float
    daemon_sys_percent: float
    """The share of the daemon's CPU spent in the kernel (stime)."""
    cpu_share: dict[str, float]
    rss_mb: float
    hwm_mb: float
    warnings: int


@dataclass(slots=True)
class Run:
    connected: dict[str, float] = field(default_factory=dict)
    first_any: dict[str, float] = field(default_factory=dict)
    first_hr: dict[str, float] = field(default_factory=dict)
    startup_s: float = float("nan")
    idle_rss_mb: float = float("nan")
    idle_hwm_mb: float = float("nan")
    idle_cpu_percent: float = float("nan")
    phases: list[Phase] = field(default_factory=list)
    log_problems: list[str] = field(default_factory=list)
    stop_s: float = float("nan")
    exit_code: int | None = None


async def wait_for(
    check: Callable[[], bool], timeout: float, what: str, poll: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(poll)


@dataclass(slots=True)
class Rig:
    """One run's virtual BlueZ with its straps, the subscriber and the daemon."""

    run_dir: Path
    bluez: BluezThread
    straps: dict[str, VirtualPeripheral]
    """By the daemon's device id."""
    subscriber: Subscriber
    daemon: Daemon
    bus: Bus


@contextlib.asynccontextmanager
async def rig(
    index: int, root: Path, broker: Broker, bus_address: str, run: Run, *, extra_config: str = ""
) -> AsyncIterator[Rig]:
    """Start a run's parts; stop them all on the way out, whatever happened."""
    run_dir = root / f"run{index}"
    run_dir.mkdir()
    straps = {
        f"strap{i}": strap(f"AA:BB:CC:00:{index:02X}:{i:02X}", f"HR-{index}-{i}")
        for i in range(1, STRAPS + 1)
    }
    with contextlib.ExitStack() as stack:
        bluez = BluezThread.start(bus_address)
        stack.callback(bluez.stop)
        subscriber = Subscriber(broker)
        stack.callback(subscriber.close)
        config = daemon_config(run_dir, broker, [p.address for p in straps.values()], extra_config)
        daemon = Daemon(config, run_dir / "daemon.log", bus_address, root / "bin")

        def stop_daemon() -> None:
            daemon.stop()
            run.stop_s, run.exit_code = daemon.stop_seconds, daemon.exit_code
            run.log_problems = [
                f"{level} {logger}: {message}"
                for _, level, logger, message in daemon.lines()
                if level in ("WARNING", "ERROR", "CRITICAL")
            ]

        stack.callback(stop_daemon)
        bus = await Bus.open(bus_address)
        stack.callback(bus.close)
        yield Rig(run_dir, bluez, straps, subscriber, daemon, bus)


async def one_run(
    index: int,
    args: argparse.Namespace,
    root: Path,
    broker: Broker,
    bus_address: str,
    *,
    report: Callable[[str], None],
    profile: Path | None,
) -> Run:
    run = Run()
    extra = (
        ""
        if args.commit_interval_ms is None
        else f"[outbox]\ncommit_interval_ms = {args.commit_interval_ms}\n"
    )
    async with rig(index, root, broker, bus_address, run, extra_config=extra) as the_rig:
        t_start = time.monotonic()

        def up() -> bool:
            the_rig.daemon.check()
            return the_rig.subscriber.ask("stats")["online"] and any(
                m.startswith("bluetooth: scanning on") for *_, m in the_rig.daemon.lines()
            )

        await wait_for(up, 30, "the daemon online and scanning", poll=0.1)
        run.startup_s = time.monotonic() - t_start
        seq = await connect_all(the_rig, run)

        # 3. Idle with five connected straps.
        daemon = the_rig.daemon
        idle = CpuMeter({"daemon": daemon.pid})
        await asyncio.sleep(args.idle_s)
        elapsed, cpu = idle.stop()
        run.idle_cpu_percent = cpu["daemon"] / elapsed * 100
        run.idle_rss_mb = vm_kb(daemon.pid, "VmRSS") / 1024
        run.idle_hwm_mb = vm_kb(daemon.pid, "VmHWM") / 1024

        # 2. Throughput, one phase per rate.
        first = (seq // 1000 + 1) * 1000
        for rate_index, rate in enumerate(args.rates):
            if first + args.phase_s * rate / STRAPS * 1.1 > 65_000:
                raise RuntimeError("too many notifications for a uint16 sequence number")
            spy = None
            if profile is not None and rate_index == len(args.rates) - 1:
                spy = start_py_spy(daemon.pid, profile, args.phase_s + 2)
            phase = await throughput(the_rig, rate, first, args.phase_s, args.drain_s)
            if spy is not None:
                spy.wait(60)
            run.phases.append(phase)
            report(
                f"    {rate:>6,.0f}/s offered: {phase.offered:>6,.0f}/s achieved "
                f"({phase.late_ticks} ticks late), "
                f"{phase.delivered:>6,.0f}/s delivered, {phase.received}/{phase.sent} "
                f"received, lost {sum(phase.lost.values())}, dups {phase.dups}, lag "
                f"{phase.lag:.2f} s, latency p50 {phase.p50_ms:.0f} ms p99 "
                f"{phase.p99_ms:.0f} ms max {phase.max_ms:.0f} ms (p50/p99 notification -> "
                f"hub {phase.hub_ms[0]:.0f}/{phase.hub_ms[1]:.0f} ms, hub -> broker "
                f"{phase.broker_ms[0]:.0f}/{phase.broker_ms[1]:.0f} ms), "
                f"daemon {phase.daemon_cpu_us:.0f} us CPU/reading "
                f"({phase.daemon_sys_percent:.0f} % of it in the kernel), "
                f"RSS {phase.rss_mb:.1f} MB; CPU % of a core: "
                + ", ".join(f"{k} {v:.0f}" for k, v in phase.cpu_share.items())
            )
            if any(phase.lost.values()):
                report(f"      lost per strap: {phase.lost}")
            first = ((first + phase.sent // STRAPS) // 1000 + 1) * 1000
    return run


async def connect_all(the_rig: Rig, run: Run) -> int:
    """Switch the five straps on at once; each notifies every 50 ms until its first heart rate
    reached the broker. Fills in the set-up times; returns the next free sequence number."""
    bluez, daemon, names = the_rig.bluez, the_rig.daemon, the_rig.straps
    added: dict[str, float] = {}
    for name, peripheral in names.items():
        added[name] = time.time()
        await bluez.add_peripheral(peripheral)
    seq = 1
    stats: dict[str, Any] = {"first_hr": {}}
    while len(stats["first_hr"]) < STRAPS:
        if time.time() - min(added.values()) > 60:
            raise TimeoutError(
                f"only {sorted(stats['first_hr'])} sent a heart rate "
                f"within 60 s:\n{daemon.log()[-3000:]}"
            )
        daemon.check()
        await asyncio.gather(
            *(
                bluez.notify(p, HR_MEASUREMENT, hr(seq))
                for n, p in names.items()
                if n not in stats["first_hr"]
            )
        )
        seq += 1
        await asyncio.sleep(WARMUP_PERIOD)
        stats = the_rig.subscriber.ask("stats")
    for stamp, _level, _logger, message in daemon.lines():
        match = re.match(r"device (\S+): connected", message)
        if match and match[1] in added:
            run.connected.setdefault(match[1], stamp - added[match[1]])
    run.first_any = {n: stats["first_any"][n] - added[n] for n in names}
    run.first_hr = {n: stats["first_hr"][n] - added[n] for n in names}
    return seq


async def throughput(
    the_rig: Rig, rate: float, first: int, seconds: float, drain_s: float
) -> Phase:
    daemon, subscriber, names = the_rig.daemon, the_rig.subscriber, the_rig.straps
    warnings_before = sum(1 for _, level, *_ in daemon.lines() if level != "INFO")
    pids: dict[str, int | None] = {
        "daemon": daemon.pid,
        "dbus-daemon": child_pid("dbus-daemon"),
        "mosquitto": child_pid("mosquitto"),
        "subscriber": subscriber.process.pid,
        "bench (notifier)": os.getpid(),
    }
    meter = CpuMeter(pids)
    daemon_cpu0, daemon_sys0 = cpu_ticks(daemon.pid), sys_ticks(daemon.pid)
    sent = await send(
        the_rig.bluez, the_rig.bus, list(names.values()), first, seconds=seconds, rate=rate
    )
    send_wall, cpu = meter.stop()
    expected = sent.per_strap * STRAPS
    # Drain: until everything arrived, or nothing more did for a while.
    received, last_change = 0, time.monotonic()
    deadline = time.monotonic() + drain_s
    while received < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        count = subscriber.ask(f"count {first} {sent.next_seq}")
        if count != received:
            received, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > 3.0:
            break
    daemon_cpu = (cpu_ticks(daemon.pid) - daemon_cpu0) / HZ
    daemon_sys = (sys_ticks(daemon.pid) - daemon_sys0) / HZ
    dump = the_rig.run_dir / f"phase-{rate:.0f}.json"
    subscriber.ask(f"dump {first} {sent.next_seq} {dump}")
    data = json.loads(dump.read_text())
    arrivals: list[float] = []
    delays: list[float] = []
    to_hub: list[float] = []
    to_broker: list[float] = []
    lost = {}
    for name in names:
        values = data["values"].get(name, [])
        lost[name] = sent.per_strap - len(values)
        for value, arrival, hub in values:
            arrivals.append(arrival)
            delays.append((arrival - sent.sent_at(value)) * 1000)
            to_hub.append((hub - sent.sent_at(value)) * 1000)
            to_broker.append((arrival - hub) * 1000)
    delays.sort()
    received = len(arrivals)
    last = max(arrivals) if arrivals else float("nan")
    warnings_after = sum(1 for _, level, *_ in daemon.lines() if level != "INFO")
    return Phase(
        rate=rate,
        sent=expected,
        offered=expected / (sent.finished - sent.started),
        late_ticks=sent.late_ticks,
        received=received,
        lost=lost,
        dups=sum(data["dups"].values()),
        delivered=received / (last - sent.started) if arrivals else 0.0,
        lag=last - sent.finished if arrivals else float("nan"),
        p50_ms=statistics.median(delays) if delays else float("nan"),
        p99_ms=statistics.quantiles(delays, n=100)[98] if len(delays) > 1 else float("nan"),
        max_ms=delays[-1] if delays else float("nan"),
        hub_ms=percentiles(to_hub),
        broker_ms=percentiles(to_broker),
        daemon_cpu_us=daemon_cpu / received * 1e6 if received else float("nan"),
        daemon_sys_percent=daemon_sys / daemon_cpu * 100 if daemon_cpu else float("nan"),
        cpu_share={name: seconds_used / send_wall * 100 for name, seconds_used in cpu.items()},
        rss_mb=vm_kb(daemon.pid, "VmRSS") / 1024,
        hwm_mb=vm_kb(daemon.pid, "VmHWM") / 1024,
        warnings=warnings_after - warnings_before,
    )


def percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    return statistics.median(values), statistics.quantiles(values, n=100)[98]


def start_py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return None
    return subprocess.Popen(
        [
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- main -----------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def bench(
    args: argparse.Namespace,
    root: Path,
    broker: Broker,
    bus_address: str,
    report: Callable[[str], None],
) -> tuple[list[tuple[float, float]], list[Run]]:
    alone = await notifier_alone(bus_address, args.alone_s, 3)
    report(
        f"  notifier alone (virtual BlueZ, {STRAPS} straps, nobody listening), flat out: "
        + ", ".join(f"{r:,.0f}/s ({c:.0f} us CPU each)" for r, c in alone)
    )
    runs = []
    for index in range(1, args.runs + 1):
        report(f"  run {index}/{args.runs}:")
        profile = args.py_spy if index == args.runs else None
        run = await one_run(index, args, root, broker, bus_address, report=report, profile=profile)
        runs.append(run)
        report(
            f"    daemon start-up to scanning {run.startup_s:.1f} s; connected (advert -> "
            "log) "
            + ", ".join(f"{v:.2f}" for v in run.connected.values())
            + " s; first reading at broker "
            + ", ".join(f"{v:.2f}" for v in run.first_any.values())
            + " s; first heart rate "
            + ", ".join(f"{v:.2f}" for v in run.first_hr.values())
            + " s"
        )
        report(
            f"    idle with {STRAPS} connected: {run.idle_cpu_percent:.1f} % CPU, RSS "
            f"{run.idle_rss_mb:.1f} MB (HWM {run.idle_hwm_mb:.1f}); stopped in "
            f"{run.stop_s:.1f} s with exit code {run.exit_code}; "
            f"{len(run.log_problems)} warnings/errors in its log"
        )
        for problem in run.log_problems[:5]:
            report(f"      log: {problem[:160]}")
    return alone, runs


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        subscriber_main(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run (under a minute)")
    parser.add_argument(
        "--rates",
        default=None,
        help="total notifications/s to offer, comma-separated (default "
        "1000,2000 with --quick, else 1000,2000,4000)",
    )
    parser.add_argument(
        "--phase-s",
        type=float,
        default=None,
        help="seconds each rate is offered (default 4 with --quick, else 10)",
    )
    parser.add_argument(
        "--commit-interval-ms",
        type=float,
        default=None,
        help="the daemon's [outbox] commit_interval_ms (default: its own, 5)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="record the daemon with py-spy during the last rate of the last run",
    )
    args = parser.parse_args()
    args.rates = [
        float(r)
        for r in (args.rates or ("1000,2000" if args.quick else "1000,2000,4000")).split(",")
    ]
    args.runs = 1 if args.quick else 3
    args.phase_s = args.phase_s or (4.0 if args.quick else 10.0)
    args.drain_s = 15.0 if args.quick else 30.0
    args.idle_s = 2.0 if args.quick else 5.0
    args.alone_s = 1.0 if args.quick else 3.0

    def report(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        fake_bluetoothctl(root / "bin")
        broker = start_broker(root, None)
        stack.callback(broker.stop)
        bus_address = stack.enter_context(private_bus())
        report(
            f"rtm-gateway BLE bench{' (--quick)' if args.quick else ''}: "
            f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]} (a shared machine: "
            "numbers are noisy)"
        )
        report(
            f"broker: mosquitto, plain MQTT on 127.0.0.1:{broker.port}, "
            f"max_inflight_messages {BROKER_INFLIGHT}; private D-Bus bus; virtual BlueZ in "
            f"this process; {STRAPS} Heart Rate straps; daemon `python -m gateway.cli run`"
        )
        try:
            alone, runs = asyncio.run(bench(args, root, broker, bus_address, report))
        except KeyboardInterrupt:
            report("interrupted: stopping everything")
            raise SystemExit(130) from None
    summary(alone, runs, args, time.perf_counter() - started)


def summary(
    alone: list[tuple[float, float]], runs: list[Run], args: argparse.Namespace, total_s: float
) -> None:
    def spread(values: list[float]) -> str:
        return f"median {median(values):.2f} s, max {max(values):.2f} s"

    connected = [v for run in runs for v in run.connected.values()]
    first_any = [v for run in runs for v in run.first_any.values()]
    first_hr = [v for run in runs for v in run.first_hr.values()]
    rows: list[tuple[str, str, str, bool | None]] = [
        (
            f"notifier alone, flat out ({STRAPS} straps)",
            f"{median([r for r, _ in alone]):,.0f} notif/s",
            "",
            None,
        ),
        (
            "  its CPU per notification (this process)",
            f"{median([c for _, c in alone]):.0f} us",
            "",
            None,
        ),
        ("daemon start-up to scanning", f"{median([r.startup_s for r in runs]):.1f} s", "", None),
        ("advert -> 'connected' logged", spread(connected), "", None),
        ("advert -> first reading (battery)", spread(first_any), "", None),
        ("advert -> first heart rate (+<=50 ms)", spread(first_hr), "", None),
        (
            "daemon idle CPU, 5 connected",
            f"{median([r.idle_cpu_percent for r in runs]):.1f} %",
            "",
            None,
        ),
        (
            "daemon RSS idle, 5 connected",
            f"{median([r.idle_rss_mb for r in runs]):.1f} MB",
            f"<= {RSS_TARGET_MB:.0f}",
            median([r.idle_rss_mb for r in runs]) <= RSS_TARGET_MB,
        ),
    ]
    target_met: bool | None = None
    for i, rate in enumerate(args.rates):
        phases = [run.phases[i] for run in runs if len(run.phases) > i]
        if not phases:
            continue
        loss = sum(sum(p.lost.values()) for p in phases)
        sent = sum(p.sent for p in phases)
        offered = median([p.offered for p in phases])
        delivered = median([p.delivered for p in phases])
        kept_up = delivered >= 0.97 * offered and loss == 0
        if rate >= RATE_TARGET:  # met if any rate at or above the target was carried whole
            target_met = bool(target_met) or (kept_up and delivered >= 0.97 * RATE_TARGET)
        limited = "  (notifier-limited)" if offered < 0.97 * rate else ""
        rows += [
            (f"{rate:,.0f}/s asked: offered (achieved){limited}", f"{offered:,.0f}/s", "", None),
            (
                f"{rate:,.0f}/s: delivered at the broker",
                f"{delivered:,.0f}/s",
                "= offered",
                kept_up,
            ),
            (
                f"{rate:,.0f}/s: lost / duplicated (all runs)",
                f"{loss} / {sum(p.dups for p in phases)} of {sent:,}",
                "0",
                loss == 0,
            ),
            (
                f"{rate:,.0f}/s: notif -> broker p50 / p99",
                f"{median([p.p50_ms for p in phases]):.0f} / "
                f"{median([p.p99_ms for p in phases]):.0f} ms",
                "",
                None,
            ),
            (
                "  of which notif -> hub capture p50 / p99",
                f"{median([p.hub_ms[0] for p in phases]):.0f} / "
                f"{median([p.hub_ms[1] for p in phases]):.0f} ms",
                "",
                None,
            ),
            (
                "  and hub capture -> broker p50 / p99",
                f"{median([p.broker_ms[0] for p in phases]):.0f} / "
                f"{median([p.broker_ms[1] for p in phases]):.0f} ms",
                "",
                None,
            ),
            (
                f"{rate:,.0f}/s: daemon CPU per reading",
                f"{median([p.daemon_cpu_us for p in phases]):.0f} us "
                f"({median([p.daemon_sys_percent for p in phases]):.0f} % sys)",
                "",
                None,
            ),
            (
                f"{rate:,.0f}/s: CPU, % of one core",
                ", ".join(
                    f"{name.split()[0]} {median([p.cpu_share.get(name, 0.0) for p in phases]):.0f}"
                    for name in phases[0].cpu_share
                ),
                "",
                None,
            ),
        ]
    rows.append(
        (
            f">= {RATE_TARGET:,.0f}/s from {STRAPS} straps, no loss",
            "met" if target_met else "not shown" if target_met is None else "not met",
            "met",
            target_met,
        )
    )
    hwm = max((p.hwm_mb for run in runs for p in run.phases), default=float("nan"))
    rss_end = median([run.phases[-1].rss_mb for run in runs if run.phases])
    rows += [
        (
            "daemon RSS after the throughput phases",
            f"{rss_end:.1f} MB",
            f"<= {RSS_TARGET_MB:.0f}",
            rss_end <= RSS_TARGET_MB,
        ),
        (
            "daemon peak RSS (VmHWM, max of runs)",
            f"{hwm:.1f} MB",
            f"<= {RSS_TARGET_MB:.0f}",
            hwm <= RSS_TARGET_MB,
        ),
    ]
    print()
    print(
        f"summary ({len(runs)} run(s), medians over runs and straps where repeated; "
        f"total {total_s:.0f} s)"
    )
    print(f"{'measure':<46} {'value':>30}  {'target':>9}  ok")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        if len(value) > 30:
            print(f"{name:<46}   {value}")
        else:
            print(f"{name:<46} {value:>30}  {target:>9}  {mark}")


if __name__ == "__main__":
    main()
