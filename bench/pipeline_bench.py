"""The whole hub path under load: decode -> sign -> outbox (FULL group commit) -> QoS 1 -> delete.

Prints numbers, asserts nothing. Run from the repository root:

    .venv/bin/python bench/pipeline_bench.py [--quick]

It starts its own mosquitto with mutual TLS on a free loopback port, with a throwaway PKI
(`gateway.sim.broker` and `gateway.sim.pki`, shared with the tests and the demo), and with
`max_inflight_messages` raised so that the broker's MQTT 5 Receive Maximum (20 by default)
does not cap the uplink's window. Then it measures:

- sustained readings/s through the in-process pipeline (CMS50D frames through the real driver
  decoder, pushed as fast as the pipeline takes them, with backpressure), and the hub's CPU per
  reading (process time; mosquitto is another process and is not counted), beside a variant
  where the signer walks every body for NaN itself instead of trusting the journal's check;
- capture-to-broker latency at a steady 100 readings/s: capture is when the reading is
  submitted, arrival is when a subscriber in a separate process receives it;
- how fast a backlog drains once the broker is back (the outbox prefilled with signed entries
  while the broker is down);
- the real daemon (`rtm-gateway run -c CONFIG`, one generic.kv-lines device on a pty): idle CPU
  with the device quiet, then peak RSS and throughput with the device fed thousands of lines/s.

Targets on the 2-core CI kind of machine: >= 10,000 readings/s sustained, >= 15,000 readings/s
backlog drain, <= 100 us CPU per reading, p99 latency <= 250 ms, idle CPU < 1 %, peak RSS <= 60 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from gateway.drivers.contec_cms50d import DRIVER as CMS50D
from gateway.drivers.kv_lines import DRIVER as KV_LINES
from gateway.hub import journal as journal_module
from gateway.hub.identity import HubIdentity
from gateway.hub.journal import Journal
from gateway.hub.log_head import HeadFile
from gateway.hub.outbox import Outbox
from gateway.hub.signer import ChainHead, Signer
from gateway.hub.uplink import Uplink
from gateway.sim.broker import Broker, configure
from gateway.sim.pki import Pki, make_pki
from gateway.transport.mqtt import MqttClient, publisher_factory

BROKER_INFLIGHT = 1000
"""mosquitto's max_inflight_messages; for MQTT 5 clients it is also the Receive Maximum."""
PREFIX = "rtm/v1"
PATIENT = "pt-0001"
KV_OPTIONS: dict[str, object] = {"keys": {"spo2": {"type": "spo2"}, "pr": {"type": "pulse_rate"}}}
MAX_PENDING = 4_000
"""Backpressure: the producer waits while the journal holds more unsigned readings than this,"""
MAX_DEPTH = 20_000
"""... or the outbox more unacknowledged entries than this."""


# --- the broker ----------------------------------------------------------------------------------


def start_broker(directory: Path, pki: Pki | None) -> Broker:
    """mosquitto on a free loopback port (`gateway.sim.broker`), mutual TLS when given a PKI
    (plain MQTT when not: the BLE bench), with the raised inflight window; stop() and start()
    make outages."""
    broker = configure(
        directory,
        "mtls" if pki is not None else "plain",
        pki=pki,
        extra_config=[f"max_inflight_messages {BROKER_INFLIGHT}", "max_queued_messages 100000"],
    )
    broker.start()
    return broker


def tls_files(broker: Broker) -> tuple[str, str, str]:
    """(CA, client certificate, client key) of a mutual-TLS broker."""
    if broker.ca_file is None or broker.client_cert is None or broker.client_key is None:
        raise RuntimeError("this broker speaks plain MQTT: it has no PKI")
    return str(broker.ca_file), str(broker.client_cert), str(broker.client_key)


# --- a subscriber in its own process ------------------------------------------------------------


def subscriber_main(port: int, pki_dir: Path, out: Path) -> None:
    """Child process: subscribe to everything under PREFIX, write "n arrival" for each reading
    (n is the kv-lines `n` key, kept in the reading's status) and "s state" for status messages.
    Prints "ready" once subscribed; exits when stdin closes."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    lines: list[str] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.tls_set(
        ca_certs=str(pki_dir / "ca.pem"),
        certfile=str(pki_dir / "client.pem"),
        keyfile=str(pki_dir / "client.key"),
    )

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        arrival = time.time()  # first: the parsing below is not part of the latency
        if message.topic.endswith("/status"):
            lines.append(f"s {json.loads(message.payload)['state']} {arrival:.6f}")
            return
        if not message.topic.endswith("/readings"):
            return
        for entry in json.loads(message.payload):
            payload = entry["payload"]
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            n = body["status"].get("n", -1)
            lines.append(f"r {n} {arrival:.6f}")

    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(f"{PREFIX}/#", qos=1)
    client.on_subscribe = lambda *_a: print("ready", flush=True)
    client.on_message = on_message
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    sys.stdin.read()
    client.disconnect()
    client.loop_stop()
    out.write_text("\n".join(lines) + "\n")


class Subscriber:
    def __init__(self, broker: Broker, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--subscriber",
                str(broker.port),
                str(Path(tls_files(broker)[0]).parent),
                str(out),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the subscriber did not subscribe")

    def finish(self) -> tuple[dict[int, float], list[tuple[str, float]]]:
        """Stop; return {n: first arrival} for readings and [(state, arrival)] for status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)
        readings: dict[int, float] = {}
        statuses: list[tuple[str, float]] = []
        for line in self.out.read_text().splitlines():
            kind, key, arrival = line.split()
            if kind == "r":
                readings.setdefault(int(key), float(arrival))
            else:
                statuses.append((key, float(arrival)))
        return readings, statuses


# --- the in-process pipeline --------------------------------------------------------------------


def cms50d_bytes(frames: int) -> bytes:
    """A live stream of valid CMS50D frames (SpO2 97 %, PR 72, a moving pleth wave)."""
    return b"".join(bytes((0x85, (i * 7) % 100, 0x05, 72, 97)) for i in range(frames))


@dataclass(slots=True)
class Variant:
    label: str
    signer_walks_floats: bool = False
    """True: the journal vouches for no reading's floats, so the signer walks every body with a
    null in it for NaN itself (what the journal's `floats_finite` check saves)."""
    window: int = 32
    batch_size: int = 100
    commit_interval: float = 0.005
    head_file: bool = True
    """False: the journal does not rewrite head.json after each group (what that costs)."""

    def patched(self) -> contextlib.AbstractContextManager[object]:
        """The daemon's code as this variant runs it (a benchmark may patch what it compares)."""
        if not self.signer_walks_floats:
            return contextlib.nullcontext()
        return mock.patch.object(journal_module, "floats_finite", _vouch_for_nothing)


def _vouch_for_nothing(_reading: object) -> bool:
    return False  # a plain function: a Mock would add its own CPU per reading


class Pipeline:
    """Outbox + Signer + Journal + Uplink over a real MQTT connection, as `Hub` wires them."""

    def __init__(self, broker: Broker, db: Path, identity: HubIdentity, variant: Variant) -> None:
        self.outbox = Outbox.open(db, max_rows=2_000_000)
        seq, last_hash = self.outbox.head()
        self.signer = Signer(identity, "bench-hub", ChainHead(seq, last_hash))
        self.uplink = Uplink(
            self.outbox,
            publisher_factory(broker.settings(client_id="bench-hub")),
            "bench-hub",
            topic_prefix=PREFIX,
            batch_size=variant.batch_size,
            window=variant.window,
        )
        self.head_file = HeadFile(db.parent) if variant.head_file else None
        self.journal = Journal(
            self.outbox,
            self.signer,
            on_commit=self.uplink.wake,
            commit_interval=variant.commit_interval,
            head_file=self.head_file,
        )
        self.identity: dict[str, object] = {
            "id": "oximeter",
            "driver": "contec.cms50d",
            "driver_version": "1.0.0",
            "port": "/dev/ttyUSB0",
        }
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.journal.run(), name="journal"),
            asyncio.create_task(self.uplink.run(), name="uplink"),
        ]
        while not self.uplink.stats.connected:  # noqa: ASYNC110 - a benchmark may poll
            await asyncio.sleep(0.01)

    def receive_maximum(self) -> int:
        publisher = self.uplink._publisher  # a benchmark may look inside
        return publisher.receive_maximum if isinstance(publisher, MqttClient) else -1

    async def wait_empty(self, poll: float = 0.002) -> None:
        while self.journal.pending or self.outbox.depth():  # noqa: ASYNC110 - a benchmark may poll
            await asyncio.sleep(poll)

    async def close(self) -> None:
        await self.journal.drain()
        await self.uplink.stop(drain_timeout=5.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.outbox.close()
        if self.head_file is not None:
            self.head_file.close()


async def sustained(
    broker: Broker, root: Path, identity: HubIdentity, variant: Variant, readings: int
) -> tuple[float, float, int]:
    """(readings/s, CPU us per reading, broker receive maximum) for `readings` CMS50D frames."""
    db = root / f"sustained-{time.monotonic_ns()}.db"
    pipe = Pipeline(broker, db, identity, variant)
    await pipe.start()
    data = cms50d_bytes(readings)
    decoder = CMS50D.decoder({})
    journal, outbox = pipe.journal, pipe.outbox
    chunk = 5 * 50  # 50 frames per read, as a serial read of a busy port would return
    cpu0, t0 = time.process_time(), time.perf_counter()
    for offset in range(0, len(data), chunk):
        result = decoder.feed(data[offset : offset + chunk])
        now = time.time()
        for reading in result.readings:
            journal.submit(pipe.identity, "oximeter", PATIENT, reading, now)
        if journal.pending > MAX_PENDING or outbox.depth() > MAX_DEPTH:
            while journal.pending > MAX_PENDING // 2 or outbox.depth() > MAX_DEPTH // 2:  # noqa: ASYNC110 - backpressure by polling, as a device would
                await asyncio.sleep(0.001)
        else:
            await asyncio.sleep(0)
    await pipe.wait_empty()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    rmax = pipe.receive_maximum()
    await pipe.close()
    db.unlink()
    return readings / elapsed, cpu / readings * 1e6, rmax


async def latency(
    broker: Broker,
    root: Path,
    identity: HubIdentity,
    variant: Variant,
    *,
    seconds: float,
    rate: float,
) -> tuple[float, float, float, int, int]:
    """(p50 ms, p99 ms, max ms, sent, received) at a steady `rate` readings/s."""
    db = root / f"latency-{time.monotonic_ns()}.db"
    subscriber = Subscriber(broker, root / "latency-sub.txt")
    pipe = Pipeline(broker, db, identity, variant)
    await pipe.start()
    decoder = KV_LINES.decoder(KV_OPTIONS)
    captured: dict[int, float] = {}
    count = int(seconds * rate)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(count):
        delay = start + n / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        result = decoder.feed(f"spo2=97,pr=72,n={n}\n".encode())
        now = time.time()
        captured[n] = now
        for reading in result.readings:
            pipe.journal.submit(pipe.identity, "oximeter", PATIENT, reading, now)
    await pipe.wait_empty()
    await asyncio.sleep(0.5)  # let the subscriber receive the last messages
    await pipe.close()
    arrivals, _ = subscriber.finish()
    db.unlink()
    delays = sorted((arrivals[n] - t) * 1000 for n, t in captured.items() if n in arrivals)
    if len(delays) < 2:
        return float("nan"), float("nan"), float("nan"), count, len(delays)
    p99 = statistics.quantiles(delays, n=100)[98]
    return statistics.median(delays), p99, delays[-1], count, len(delays)


async def prefill(db: Path, identity: HubIdentity, entries: int) -> float:
    """Sign `entries` CMS50D readings through the Journal into the outbox while the broker is
    down (no uplink): seconds."""
    outbox = Outbox.open(db, max_rows=2_000_000)
    signer = Signer(identity, "bench-hub")
    journal = Journal(outbox, signer, on_commit=lambda: None)
    task = asyncio.create_task(journal.run(), name="prefill-journal")
    decoder = CMS50D.decoder({})
    identity_map: dict[str, object] = {
        "id": "oximeter",
        "driver": "contec.cms50d",
        "driver_version": "1.0.0",
        "port": "/dev/ttyUSB0",
    }
    block = cms50d_bytes(1000)
    t0 = time.perf_counter()
    for _ in range(entries // 1000):
        now = time.time()
        for reading in decoder.feed(block).readings:
            journal.submit(identity_map, "oximeter", PATIENT, reading, now)
        while journal.pending > 4000:  # noqa: ASYNC110 - backpressure by polling
            await asyncio.sleep(0.002)
    await journal.drain(timeout=60)
    elapsed = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    outbox.close()
    return elapsed


async def drain(
    broker: Broker, db: Path, identity: HubIdentity, variant: Variant
) -> tuple[float, float, int]:
    """Start the uplink on a prefilled outbox: (readings/s, CPU us per reading, entries)."""
    pipe = Pipeline(broker, db, identity, variant)
    depth = pipe.outbox.depth()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await pipe.start()
    await pipe.wait_empty(poll=0.01)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await pipe.close()
    return depth / elapsed, cpu / depth * 1e6, depth


# --- the real daemon ------------------------------------------------------------------------------


class Pty:
    """A pseudo-terminal whose slave the daemon opens; we write the device's bytes to the master."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.master, view)
            view = view[written:]

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def daemon_config(root: Path, broker: Broker, port: str) -> Path:
    ca_file, cert_file, key_file = tls_files(broker)
    text = f"""
[hub]
id = "bench-daemon"
state_dir = "{root / "daemon-state"}"

[mqtt]
url = "mqtts://127.0.0.1:{broker.port}"
ca_file = "{ca_file}"
cert_file = "{cert_file}"
key_file = "{key_file}"

[log]
level = "WARNING"

[[devices]]
id = "kv"
driver = "generic.kv-lines"
port = "{port}"
patient = "{PATIENT}"
# The bench floods on purpose: a limit far above what it sends keeps the token bucket on the
# path (its cost is measured) without dropping anything (the default is 10/s).
max_rate = 100000
[devices.options.keys]
spo2 = {{ type = "spo2" }}
pr = {{ type = "pulse_rate" }}
"""
    path = root / "daemon.toml"
    path.write_text(text)
    return path


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def daemon_command(config: Path) -> list[str]:
    script = Path(sys.executable).parent / "rtm-gateway"
    if script.exists():
        return [str(script), "run", "-c", str(config)]
    found = shutil.which("rtm-gateway")
    return (
        [found, "run", "-c", str(config)]
        if found
        else [sys.executable, "-m", "gateway.cli", "run", "-c", str(config)]
    )


@dataclass(slots=True)
class DaemonResult:
    idle_cpu_percent: float
    idle_rss_mb: float
    steady_rate: float
    steady_sent: int
    steady_received: int
    steady_p50_ms: float
    steady_p99_ms: float
    steady_hwm_mb: float
    flat_out_rate: float
    flat_out_sent: int
    flat_out_hwm_mb: float


def run_daemon(  # noqa: PLR0915
    broker: Broker,
    root: Path,
    *,
    idle_s: float,
    feed_rate: float,
    feed_s: float,
    flat_out_lines: int,
) -> DaemonResult:
    pty = Pty()
    config = daemon_config(root, broker, pty.path)
    subscriber = Subscriber(broker, root / "daemon-sub.txt")
    log = (root / "daemon.log").open("wb")
    process = subprocess.Popen(
        daemon_command(config), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        # Connected once its retained "online" status came through; then let start-up settle.
        deadline = time.monotonic() + 20
        online = root / "daemon-online"
        while time.monotonic() < deadline and not _saw_online(root, broker, online):
            time.sleep(0.2)
        time.sleep(2.0)
        hz = os.sysconf("SC_CLK_TCK")
        t0, c0 = time.monotonic(), cpu_ticks(process.pid)
        time.sleep(idle_s)
        idle = (cpu_ticks(process.pid) - c0) / hz / (time.monotonic() - t0) * 100
        idle_rss = vm_kb(process.pid, "VmRSS") / 1024

        # Steady fast device: `feed_rate` lines/s in 10 ms slices.
        sent: dict[int, float] = {}
        n = 0
        per_slice = max(1, int(feed_rate / 100))
        start = time.monotonic()
        slices = int(feed_s * 100)
        for i in range(slices):
            delay = start + i / 100 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            block = "".join(f"spo2=97,pr=72,n={n + k}\n" for k in range(per_slice)).encode()
            now = time.time()
            pty.write(block)
            for k in range(per_slice):
                sent[n + k] = now
            n += per_slice
        steady_elapsed = time.monotonic() - start
        steady_sent = n
        _wait_quiet(root, process.pid)
        steady_hwm = vm_kb(process.pid, "VmHWM") / 1024

        # Flat out: as fast as the pty takes it (the daemon's reads are the backpressure).
        first = n
        block_lines = 200
        t_flat = time.time()
        while n < first + flat_out_lines:
            pty.write("".join(f"spo2=97,pr=72,n={n + k}\n" for k in range(block_lines)).encode())
            n += block_lines
        _wait_quiet(root, process.pid)
        flat_hwm = vm_kb(process.pid, "VmHWM") / 1024
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        arrivals, _ = subscriber.finish()
        pty.close()
    steady = sorted((arrivals[k] - t) * 1000 for k, t in sent.items() if k in arrivals)
    flat_arrivals = [arrivals[k] for k in range(first, n) if k in arrivals]
    flat_rate = (len(flat_arrivals) / (max(flat_arrivals) - t_flat)) if flat_arrivals else 0.0
    received = len(steady)
    return DaemonResult(
        idle_cpu_percent=idle,
        idle_rss_mb=idle_rss,
        steady_rate=received / steady_elapsed,
        steady_sent=steady_sent,
        steady_received=received,
        steady_p50_ms=statistics.median(steady) if steady else float("nan"),
        steady_p99_ms=statistics.quantiles(steady, n=100)[98] if len(steady) > 1 else float("nan"),
        steady_hwm_mb=steady_hwm,
        flat_out_rate=flat_rate,
        flat_out_sent=n - first,
        flat_out_hwm_mb=flat_hwm,
    )


def _saw_online(root: Path, broker: Broker, marker: Path) -> bool:
    """Peek at the retained status with a short-lived subscriber in this process."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[str] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    ca_file, cert_file, key_file = tls_files(broker)
    client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
    client.on_connect = lambda c, _u, _f, _r, _p: c.subscribe(f"{PREFIX}/bench-daemon/status")
    client.on_message = lambda _c, _u, m: got.append(json.loads(m.payload)["state"])
    client.connect("127.0.0.1", broker.port)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and not got:
        client.loop(0.05)
    client.disconnect()
    return "online" in got


def _wait_quiet(root: Path, pid: int, timeout: float = 60.0) -> None:
    """Wait until the daemon has caught up: its CPU use stays near zero for half a second."""
    hz = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    last = cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu_ticks(pid)
        if (now - last) / hz < 0.05:
            return
        last = now


# --- the signer alone ---------------------------------------------------------------------------


def sign_micro(identity: HubIdentity, n: int) -> float:
    """Signer.sign alone, us per entry, on a typical CMS50D reading body (walked for NaN: it
    has a null, and `sign` takes no word from the caller about its floats)."""
    outbox_less = Signer(identity, "bench-hub")
    reading = CMS50D.decoder({}).feed(cms50d_bytes(2)).readings[0]
    body: dict[str, object] = {
        "kind": "reading",
        "patient": PATIENT,
        "device": {"id": "oximeter", "driver": "contec.cms50d", "driver_version": "1.0.0"},
        "time": {
            "hub": "2026-11-26T20:01:55.123Z",
            "hub_clock": "synced",
            "boot": "6f1c2a4e-3b7d-4c1e-9a52-0d8e7f6a5b4c",
            "mono": 81_234_567,
            "device": None,
            "device_clock": "unknown",
        },
        **{k: v for k, v in reading.as_dict().items() if k in ("observations", "status", "raw")},
    }
    t0 = time.perf_counter()
    for _ in range(n):
        outbox_less.sign(body)
    return (time.perf_counter() - t0) / n * 1e6


# --- main ---------------------------------------------------------------------------------------


def median3(values: Sequence[float]) -> float:
    return statistics.median(values)


async def bench_inprocess(
    args: argparse.Namespace,
    broker: Broker,
    root: Path,
    identity: HubIdentity,
    report: Callable[[str], None],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    # The daemon's way comes last (the default the later measures use).
    variants = [
        Variant("signer walks floats", signer_walks_floats=True),
        Variant("no head file", head_file=False),
        Variant("daemon"),
    ]
    rmax = -1
    per_variant: dict[str, list[tuple[float, float]]] = {v.label: [] for v in variants}
    for _ in range(args.runs):  # interleaved, so drift on a shared machine hits all alike
        for variant in variants:
            with variant.patched():
                rate, cpu, rmax = await sustained(broker, root, identity, variant, args.readings)
            per_variant[variant.label].append((rate, cpu))
    for variant in variants:
        runs = per_variant[variant.label]
        rate = median3([r for r, _ in runs])
        cpu = median3([c for _, c in runs])
        results[f"sustained:{variant.label}"] = (rate, cpu, runs)
        report(
            f"  sustained, {variant.label:<20}: {rate:>7,.0f} readings/s, "
            f"{cpu:>6.1f} us CPU/reading  (runs: "
            + ", ".join(f"{r:,.0f}/s {c:.0f}us" for r, c in runs)
            + ")"
        )
    results["receive_maximum"] = rmax
    default = variants[-1]
    lat = await latency(broker, root, identity, default, seconds=args.latency_s, rate=100.0)
    results["latency"] = lat
    report(
        f"  latency at 100 readings/s for {args.latency_s:.0f} s ({default.label}): "
        f"p50 {lat[0]:.1f} ms, p99 {lat[1]:.1f} ms, max {lat[2]:.1f} ms "
        f"({lat[4]}/{lat[3]} received)"
    )
    db = root / "backlog.db"
    broker.stop()
    prefill_s = await prefill(db, identity, args.backlog)
    report(
        f"  prefill {args.backlog:,} signed entries with the broker down: {prefill_s:.1f} s "
        f"({args.backlog / prefill_s:,.0f} entries/s, {db.stat().st_size / 1e6:.0f} MB)"
    )
    broker.start()
    rate, cpu, depth = await drain(broker, db, identity, default)
    results["drain"] = (rate, cpu, depth, prefill_s)
    report(f"  drain {depth:,} after the outage: {rate:,.0f} readings/s, {cpu:.1f} us CPU/reading")
    _remove_db(db)
    return results


def _remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(str(db) + suffix).unlink(missing_ok=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber":
        subscriber_main(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (under a minute)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files")
    args = parser.parse_args()
    args.runs = 3
    args.readings = 20_000 if args.quick else 80_000
    args.latency_s = 5.0 if args.quick else 20.0
    args.backlog = 50_000 if args.quick else 1_000_000
    idle_s, feed_rate, feed_s, flat_lines = (
        (3.0, 3000.0, 3.0, 10_000) if args.quick else (10.0, 3000.0, 10.0, 50_000)
    )

    def report(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        broker = start_broker(root, make_pki(root / "pki", client_identity="bench-hub"))
        try:
            report(
                f"rtm-gateway pipeline bench{' (--quick)' if args.quick else ''}: "
                f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
            )
            report(
                f"broker: mosquitto, mutual TLS on 127.0.0.1:{broker.port}, "
                f"max_inflight_messages {BROKER_INFLIGHT} (raised from 20 so the broker's "
                "Receive Maximum does not cap the uplink window)"
            )
            report(
                "pipeline: CMS50D frames -> driver decoder -> Journal (sign, outbox "
                "synchronous=FULL group commit) -> Uplink QoS 1 (MQTT 5) -> PUBACK -> delete; "
                "window 32 messages x 100 readings"
            )
            identity = HubIdentity.generate()
            sign_alone = median3([sign_micro(identity, 5000) for _ in range(3)])
            report(f"  Signer.sign alone: {sign_alone:6.1f} us/entry")
            results = asyncio.run(bench_inprocess(args, broker, root, identity, report))
            results["sign_alone"] = sign_alone
            report(f"  (broker Receive Maximum seen by the uplink: {results['receive_maximum']})")
            report("real daemon (rtm-gateway run), one generic.kv-lines device on a pty:")
            daemon = run_daemon(
                broker,
                root,
                idle_s=idle_s,
                feed_rate=feed_rate,
                feed_s=feed_s,
                flat_out_lines=flat_lines,
            )
            report(
                f"  idle {idle_s:.0f} s, device quiet: {daemon.idle_cpu_percent:.2f} % CPU, "
                f"RSS {daemon.idle_rss_mb:.1f} MB"
            )
            report(
                f"  fed {feed_rate:,.0f} lines/s for {feed_s:.0f} s: {daemon.steady_rate:,.0f} "
                f"readings/s delivered ({daemon.steady_received}/{daemon.steady_sent}), "
                f"line-to-broker p50 {daemon.steady_p50_ms:.1f} ms p99 "
                f"{daemon.steady_p99_ms:.1f} ms, peak RSS (VmHWM) "
                f"{daemon.steady_hwm_mb:.1f} MB"
            )
            report(
                f"  fed flat out ({daemon.flat_out_sent:,} lines): {daemon.flat_out_rate:,.0f} "
                f"readings/s delivered, peak RSS (VmHWM) {daemon.flat_out_hwm_mb:.1f} MB"
            )
        finally:
            broker.stop()
    print_table(results, daemon, args, time.perf_counter() - started)


def print_table(
    results: dict[str, Any], daemon: DaemonResult, args: argparse.Namespace, total_s: float
) -> None:
    default = [k for k in results if k.startswith("sustained:")][-1]
    rate, cpu, _ = results[default]
    sign_us = results["sign_alone"]
    p50, p99, *_ = results["latency"]
    drain_rate, _, depth, prefill_s = results["drain"]
    rows = [
        ("sustained throughput", f"{rate:,.0f} readings/s", ">= 10,000", rate >= 10_000),
        ("CPU per reading (hub process)", f"{cpu:.1f} us", "<= 100", cpu <= 100),
        # The machine is shared: Signer.sign alone swings 40-90 us between runs, so read the
        # figures above beside it (measured minutes apart, so no subtraction).
        ("  Signer.sign alone, this run", f"{sign_us:.1f} us", "", None),
        ("capture-to-broker latency p50", f"{p50:.1f} ms", "", None),
        ("capture-to-broker latency p99", f"{p99:.1f} ms", "<= 250", p99 <= 250),
        (
            f"backlog drain ({depth:,})",
            f"{drain_rate:,.0f} readings/s",
            ">= 15,000",
            drain_rate >= 15_000,
        ),
        ("  (prefill, not a target)", f"{prefill_s:.1f} s", "", None),
        ("daemon idle CPU", f"{daemon.idle_cpu_percent:.2f} %", "< 1", daemon.idle_cpu_percent < 1),
        (
            "daemon peak RSS (kv-lines, 3k lines/s)",
            f"{daemon.steady_hwm_mb:.1f} MB",
            "<= 60",
            daemon.steady_hwm_mb <= 60,
        ),
        ("daemon throughput at 3k lines/s", f"{daemon.steady_rate:,.0f} readings/s", "", None),
        ("daemon throughput flat out", f"{daemon.flat_out_rate:,.0f} readings/s", "", None),
        ("daemon peak RSS flat out", f"{daemon.flat_out_hwm_mb:.1f} MB", "", None),
    ]
    print()
    print(
        f"summary ({default.split(':', 1)[1]}; medians of {args.runs} runs where "
        f"repeated; total {total_s:.0f} s)"
    )
    print(f"{'measure':<42} {'value':>20}  {'target':>10}  ok")
    for name, value, target, ok in rows:
        mark = "" if ok is None else ("yes" if ok else "NO")
        print(f"{name:<42} {value:>20}  {target:>10}  {mark}")


if __name__ == "__main__":
    main()
