"""`rtm-gateway demo`: simulated devices, the real hub, a broker and the verifier, together.

With no `--url`, a broker is started on a free loopback port: the machine's mosquitto when it
has one, else the embedded amqtt broker of the `demo` extra (MQTT 3.1.1 only). The simulated
devices sit on pseudo-terminals, exactly as a USB serial device would; the hub is the same code
`rtm-gateway run` runs; the receiver checks every signature, the sequence and the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from gateway.hub.config import Config, load_config
from gateway.hub.identity import HubIdentity
from gateway.sim.broker import BrokerError, configure, find_mosquitto, free_port
from gateway.sim.kv_lines import KV_OPTIONS
from gateway.tools.readout import observation_text
from gateway.tools.verify import run_verify
from gateway.tools.verify_report import VerifyReport

if TYPE_CHECKING:
    from gateway.sim.ble_base import SimulatedBleDevice

HUB_ID = "demo-hub"


class DemoError(Exception):
    """The demo cannot run; the message says what to install or change."""


@contextlib.contextmanager
def local_broker(workdir: Path, kind: str = "auto") -> Iterator[tuple[str, str, str]]:
    """A broker on a free loopback port: (url, protocol, description)."""
    mosquitto = find_mosquitto()
    if kind == "mosquitto" and mosquitto is None:
        raise DemoError("mosquitto is not installed; use --broker embedded or auto")
    if mosquitto and kind != "embedded":
        broker = configure(workdir, executable=mosquitto)
        try:
            broker.start()
        except BrokerError as exc:
            raise DemoError(f"mosquitto did not start: {exc}") from exc
        try:
            yield broker.url, "5", "mosquitto (this machine's)"
        finally:
            broker.stop(timeout=10)
        return
    port = free_port()
    with _amqtt_broker(port):
        yield f"mqtt://127.0.0.1:{port}", "3.1.1", "amqtt (embedded, MQTT 3.1.1)"


@contextlib.contextmanager
def _amqtt_broker(port: int) -> Iterator[None]:
    try:
        from amqtt.broker import Broker
    except ImportError as exc:
        raise DemoError(
            "no broker: install the demo extra (pip install 'rtm-gateway[demo]'), "
            "install mosquitto, or pass --url"
        ) from exc
    ready = threading.Event()
    stop: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    failure: list[BaseException] = []

    async def serve() -> None:
        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        stopped = asyncio.Event()
        stop.append((asyncio.get_running_loop(), stopped))
        await broker.start()
        ready.set()
        await stopped.wait()
        await broker.shutdown()

    def thread_main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported to the demo's thread below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=thread_main, name="amqtt-broker", daemon=True)
    thread.start()
    if not ready.wait(15) or failure:
        cause = failure[0] if failure else "timeout"
        raise DemoError(f"the embedded broker did not start: {cause}")
    try:
        yield
    finally:
        loop, stopped = stop[0]
        with contextlib.suppress(RuntimeError):  # the loop may have ended on its own
            loop.call_soon_threadsafe(stopped.set)
        thread.join(5)


@contextlib.contextmanager
def _ble_lab() -> Iterator[dict[str, SimulatedBleDevice]]:
    """Simulated Bluetooth devices on a virtual BlueZ, when dbus-daemon is there: an exercise
    bike streaming, and a spot-check oximeter holding five stored readings to be synced."""
    from gateway.sim.dbus_bus import dbus_daemon_available

    if not dbus_daemon_available():
        yield {}
        return
    from gateway.sim.ble_devices import IndoorBike, PulseOximeter, start_device, stop_device
    from gateway.sim.bluez import BluezThread
    from gateway.sim.dbus_bus import private_bus

    devices: dict[str, SimulatedBleDevice] = {
        "bike": IndoorBike(seed=1),
        "ble-oximeter": PulseOximeter(stored_records=5, spot_check_every=10, seed=1),
    }
    saved = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    with private_bus() as bus:
        # bleak talks to the system bus only; in this process, that is now the lab's bus.
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus
        lab = BluezThread.start(bus)
        try:
            for device in devices.values():
                start_device(lab, device, rate=2.0)
            yield devices
        finally:
            for device in devices.values():
                with contextlib.suppress(Exception):
                    stop_device(lab, device).result(5)
            lab.stop()
            if saved is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = saved


class _Receiver:
    """`run_verify` on a thread: the platform's side of the demo, with what the live view
    shows (counts and the latest values of the simulated devices)."""

    def __init__(self, url: str, protocol: str, jwk_file: Path) -> None:
        self._url, self._jwk_file = url, jwk_file
        self._protocol: Literal["5", "3.1.1"] = "5" if protocol == "5" else "3.1.1"
        self.lock = threading.Lock()
        self.received = 0
        self.last: dict[str, str] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._result: list[VerifyReport | BaseException] = []
        self._thread = threading.Thread(target=self._run, name="demo-verifier", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15) or self._result:
            self._stop.set()
            cause = self._result[0] if self._result else "no subscription acknowledged"
            raise DemoError(f"the verifier could not subscribe at {self._url}: {cause}")

    def stop(self) -> VerifyReport:
        self._stop.set()
        self._thread.join(15)
        result = self._result[0] if self._result else DemoError("the verifier did not stop")
        if isinstance(result, BaseException):
            raise DemoError(f"the verifier failed: {result}") from result
        return result

    def _run(self) -> None:
        try:
            self._result.append(
                run_verify(
                    self._url,
                    hub=HUB_ID,
                    jwk_path=self._jwk_file,
                    protocol=self._protocol,
                    on_entry=self.on_entry,
                    on_ready=self._ready.set,
                    stop=self._stop,
                )
            )
        except Exception as exc:  # handed to the demo's thread by start()/stop()
            self._result.append(exc)
            self._ready.set()

    def on_entry(self, topic: str, payload: Mapping[str, Any]) -> None:
        del topic
        with self.lock:
            self.received += 1
            if payload.get("kind") == "reading":
                device = payload["device"]["id"]
                values = ", ".join(
                    observation_text(o["type"], o["value"], o["unit"])
                    for o in payload["observations"]
                )
                self.last[device] = values or "(no values)"


def _ble_devices_toml(ble: Mapping[str, SimulatedBleDevice]) -> str:
    blocks = [
        f'''
[[devices]]
id = "{device_id}"
driver = "{device.driver_id}"
address = "{device.peripheral.address}"
patient = "pt-demo-0001"
summary_interval = 0.5
'''
        for device_id, device in ble.items()
    ]
    if ble:
        blocks.append("\n[ble]\npassive = false\n")
    return "".join(blocks)


def _transport_line(url: str) -> str:
    """The demo goes where `--url` says: the public CAs for mqtts://, and plain MQTT allowed
    (the hub warns when it is not this machine)."""
    return 'ca_file = "system"' if url.startswith("mqtts://") else "allow_plaintext = true"


def _demo_config(
    workdir: Path,
    url: str,
    protocol: str,
    oximeter: Path,
    spirometer: Path,
    *,
    ble: Mapping[str, SimulatedBleDevice],
) -> Config:
    path = workdir / "demo.toml"
    path.write_text(f"""
[hub]
id = "{HUB_ID}"
state_dir = "{workdir / "state"}"

[mqtt]
url = "{url}"
protocol = "{protocol}"
reconnect_max = 2.0
{_transport_line(url)}

[log]
level = "WARNING"

[[devices]]
id = "oximeter"
driver = "contec.cms50d"
port = "{oximeter}"
patient = "pt-demo-0001"
summary_interval = 0.5

[[devices]]
id = "peak-flow"
driver = "generic.kv-lines"
port = "{spirometer}"
patient = "pt-demo-0001"
[devices.options]
{_toml_table(KV_OPTIONS)}
{_ble_devices_toml(ble)}
""")
    return load_config(path)


def _toml_table(options: Mapping[str, object]) -> str:
    """The simulator's options as TOML lines (inline tables for nested mappings)."""

    def value(v: object) -> str:
        if isinstance(v, Mapping):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    return "\n".join(f"{key} = {value(v)}" for key, v in options.items())


def run_demo(
    seconds: float = 20.0,
    url: str | None = None,
    protocol: str | None = None,
    broker: str = "auto",
    out: TextIO = sys.stdout,
) -> int:
    from gateway.sim import cms50d, kv_lines

    with tempfile.TemporaryDirectory(prefix="rtm-demo-") as tmp:
        workdir = Path(tmp)
        with contextlib.ExitStack() as stack:
            if url is None:
                url, default_protocol, broker_name = stack.enter_context(
                    local_broker(workdir, broker)
                )
            else:
                default_protocol, broker_name = "5", url
            protocol = protocol or default_protocol
            oximeter, spirometer = workdir / "ttyCMS50D", workdir / "ttyPeakFlow"
            stack.enter_context(cms50d.start_pty(oximeter, rate_hz=60.0, seed=1, episode_every=8.0))
            stack.enter_context(kv_lines.start_pty(spirometer, rate_hz=0.5, seed=1))
            ble = stack.enter_context(_ble_lab())
            config = _demo_config(workdir, url, protocol, oximeter, spirometer, ble=ble)
            identity = HubIdentity.load_or_create(config.hub.state_dir)
            jwk_file = workdir / "hub.jwk"
            jwk_file.write_text(json.dumps(identity.public_jwk()))
            receiver = _Receiver(url, protocol, jwk_file)
            receiver.start()
            stack.callback(receiver.stop)
            print(
                f"rtm-gateway demo: broker {broker_name} at {url}\n"
                f"  simulated CMS50D+ pulse oximeter on {oximeter}\n"
                f"  simulated peak-flow meter on {spirometer}\n"
                + "".join(
                    f"  simulated {d.what} over Bluetooth LE at "
                    f"{d.peripheral.address} (virtual BlueZ)\n"
                    for d in ble.values()
                )
                + ("" if ble else "  (no Bluetooth devices: dbus-daemon is not installed)\n")
                + f"  running {seconds:.0f} s; every entry is verified on arrival\n",
                file=out,
            )
            sent = asyncio.run(_run_hub(config, seconds, receiver, out))
            deadline = time.monotonic() + 10
            while receiver.received < sent and time.monotonic() < deadline:
                time.sleep(0.1)
            report = receiver.stop()
        return _summary(report, sent, out)


async def _run_hub(config: Config, seconds: float, receiver: _Receiver, out: TextIO) -> int:
    from gateway.app import Hub

    hub = Hub(config)
    task = asyncio.create_task(hub.run())
    started = time.monotonic()
    live = _LiveView(out)
    try:
        while time.monotonic() - started < seconds and not task.done():
            await asyncio.sleep(0.5)
            with receiver.lock:
                live.show(time.monotonic() - started, receiver.received, dict(receiver.last))
    finally:
        hub.stop_event.set()
        await task
        live.close()
    from gateway.hub.outbox_status import read_status

    return read_status(config.hub.outbox_path).stats.newest_seq


class _LiveView:
    """A few lines redrawn in place on a terminal; a line now and then otherwise."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._tty = out.isatty()
        self._drawn = 0
        self._last_print = 0.0

    def show(self, elapsed: float, received: int, last: dict[str, str]) -> None:
        lines = [f"  {elapsed:5.1f} s   entries received and verified: {received}"]
        lines += [f"  {device:>10}: {values}" for device, values in sorted(last.items())]
        if self._tty:
            if self._drawn:
                self._out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        elif elapsed - self._last_print >= 5:
            self._out.write("\n".join(lines) + "\n")
            self._last_print = elapsed
        self._out.flush()

    def close(self) -> None:
        self._out.write("\n")


def _summary(report: VerifyReport, sent: int, out: TextIO) -> int:
    hub = report.hubs[0] if report.hubs else None
    received = hub.received if hub else 0
    verified = hub.verified if hub else 0
    duplicates = hub.duplicates if hub else 0
    gaps = hub.gaps if hub else ()
    print("summary", file=out)
    print(f"  entries signed and sent by the hub : {sent}", file=out)
    print(f"  received at the broker's subscriber: {received}", file=out)
    print(f"  signatures verified                : {verified}", file=out)
    print(f"  duplicates                         : {duplicates}", file=out)
    print(f"  gaps                               : {len(gaps)}", file=out)
    schema_errors = hub.schema_errors if hub else 0
    good = report.ok and verified >= sent and not gaps and not schema_errors
    print(f"  verdict: {'OK' if good else 'PROBLEM'}", file=out)
    if not good:
        print(report.render(), file=out)
    return 0 if good else 1
