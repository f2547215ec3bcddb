"""The daemon: builds every part from the configuration and runs them in one TaskGroup.

This is where concrete things are wired together (cli.py only parses and calls): the serial
transport into the device sessions, the MQTT client into the uplink. It owns start-up (state
dir, identity, outbox), signals (SIGTERM/SIGINT drain and stop) and systemd notification
(READY, WATCHDOG from the event loop, STOPPING). The log's set-up is `gateway.hub.logs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.app.devices import BleRadio, SerialOpener, ble_companions
from gateway.hub.clock import clock_state
from gateway.hub.config import Config, DeviceConfig
from gateway.hub.config_mqtt import is_loopback
from gateway.hub.identity import HubIdentity, IdentityError
from gateway.hub.journal import Journal
from gateway.hub.log_head import HeadFile
from gateway.hub.log_start import open_log
from gateway.hub.logs import loop_exception
from gateway.hub.machine import Binding, MachineMovedError, bind_state_dir, boot_id
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import OutboxError
from gateway.hub.outbox_space import SpaceLimits
from gateway.hub.registry import AnyDriver, Registry
from gateway.hub.signer import ChainHead, Signer
from gateway.hub.systemd import Notifier
from gateway.hub.uplink import Uplink
from gateway.sessions.serial import DeviceSession
from gateway.transport.mqtt import publisher_factory
from gateway.transport.mqtt_connect import MqttSettings

if TYPE_CHECKING:
    from gateway.sessions.ble import BleDeviceSession
    from gateway.sessions.ble_ports import Advertisement

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The hub cannot start: the message names the cause and what to do. `exit_status` 2 is
    a state a person must resolve (systemd does not restart on it)."""

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


def run_hub(config: Config, registry: Registry | None = None, *, moved: bool = False) -> int:
    """Run the daemon until SIGTERM/SIGINT. Returns the process exit status. `moved`: the state
    dir was moved to this machine deliberately (see `gateway.hub.machine`)."""
    with asyncio.Runner() as runner:
        runner.get_loop().set_exception_handler(loop_exception)
        return runner.run(Hub(config, registry=registry, moved=moved).run())


@dataclass(frozen=True, slots=True)
class HubState:
    """What start-up opened. `log` and `head` are where signing goes on (`head_file` keeps up
    with them); `log_started` is the detail of the `log-started` event signed at this start,
    None when the log went on."""

    identity: HubIdentity
    outbox: Outbox
    binding: Binding
    log: str
    head: ChainHead
    head_file: HeadFile
    log_started: dict[str, object] | None


def open_state(
    state_dir: Path,
    outbox_path: Path,
    max_rows: int,
    *,
    hub_id: str,
    moved: bool = False,
    space: SpaceLimits | None = None,
) -> HubState:
    """Create the state dir if needed, check it belongs to this machine, load (or create) the
    identity, open the outbox and decide the log (`gateway.hub.log_start`: a damaged outbox
    is set aside and a new, announced log started, rather than a failed start)."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"cannot create the state dir {state_dir}: {exc.strerror}; "
            "create it and make it writable by the hub's user"
        ) from exc
    for folder in dict.fromkeys((state_dir, outbox_path.parent)):
        _make_private(folder)
    try:
        with _in_state_dir("record this machine in", state_dir):
            binding = bind_state_dir(state_dir, moved=moved)
        with _in_state_dir("create the hub identity in", state_dir):
            identity = HubIdentity.load_or_create(state_dir)
        with _in_state_dir("start the log in", state_dir):
            opened = open_log(state_dir, outbox_path, max_rows, identity, hub_id, space=space)
    except MachineMovedError as exc:
        raise StartupError(str(exc), exit_status=2) from exc
    except (IdentityError, OutboxError) as exc:
        raise StartupError(str(exc)) from exc
    return HubState(
        identity,
        opened.outbox,
        binding,
        opened.log,
        opened.head,
        opened.head_file,
        opened.started,
    )


@contextlib.contextmanager
def _in_state_dir(doing: str, state_dir: Path) -> Iterator[None]:
    """A start-up step in the state dir: an OSError becomes a StartupError saying what failed
    and what to check."""
    try:
        yield
    except OSError as exc:
        raise StartupError(
            f"cannot {doing} {state_dir}: {exc.strerror}; is the state dir writable and the "
            "disk not full?"
        ) from exc


def _make_private(folder: Path) -> None:
    """Readings and the key are the patient's and the hub's: whatever the umask or how the folder
    was made, only the service user may enter it."""
    try:
        info = folder.stat()
        mode = info.st_mode
        if mode & 0o077 and info.st_uid == os.getuid():
            folder.chmod(mode & 0o700)
            log.info("%s was open to other users; it is now private to the hub's user", folder)
    except OSError as exc:
        log.warning(
            "cannot make %s private to the hub's user (%s); chmod 700 it", folder, exc.strerror
        )


def mqtt_settings(config: Config) -> MqttSettings:
    """Connection settings; the uplink adds the last will (status "offline") itself."""
    mqtt = config.mqtt
    return MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        tls=mqtt.tls,
        ca_file=mqtt.ca_file,
        cert_file=mqtt.cert_file,
        key_file=mqtt.key_file,
        username=mqtt.username,
        password=mqtt.password,
        client_id=mqtt.client_id or f"rtm-gateway-{config.hub.id}",
        protocol=mqtt.protocol,
        keepalive=mqtt.keepalive,
    )


async def _cancel_all(tasks: list[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Cancel and wait. Cancel again if a task swallowed it, so shutdown cannot hang on one."""
    deadline = asyncio.get_running_loop().time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending and asyncio.get_running_loop().time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for task in pending:
        log.error("task %s did not stop when asked; stopping without it", task.get_name())


class Hub:
    """The running hub: device sessions, the journal, the uplink, the watchdog."""

    def __init__(
        self,
        config: Config,
        *,
        registry: Registry | None = None,
        opener: Callable[[], SerialOpener] = SerialOpener,
        notifier: Notifier | None = None,
        moved: bool = False,
    ) -> None:
        self.config = config
        self._moved = moved
        self.registry = registry or Registry.for_config(config)
        self._opener = opener()
        self._notifier = notifier or Notifier()
        self.stop_event = asyncio.Event()
        self.radio: BleRadio | None = None
        self.sessions: list[DeviceSession | BleDeviceSession] = []

    async def run(self) -> int:
        config = self.config
        state = open_state(
            config.hub.state_dir,
            config.hub.outbox_path,
            config.outbox.max_rows,
            hub_id=config.hub.id,
            moved=self._moved,
            space=config.outbox.space,
        )
        outbox = state.outbox
        try:
            return await self._run(state)
        finally:
            self._remove_signals()
            outbox.close()
            state.head_file.close()

    async def _run(self, state: HubState) -> int:
        config = self.config
        signer = Signer(state.identity, config.hub.id, state.head, log=state.log)
        uplink = Uplink(
            state.outbox,
            publisher_factory(mqtt_settings(config)),
            config.hub.id,
            topic_prefix=config.mqtt.topic_prefix,
            batch_size=config.mqtt.batch_size,
            window=config.mqtt.window,
            backoff_initial=min(1.0, config.mqtt.reconnect_max),
            backoff_max=config.mqtt.reconnect_max,
            status_extra={"version": __version__, "jwk": state.identity.public_jwk()},
        )
        journal = Journal(
            state.outbox,
            signer,
            on_commit=uplink.wake,
            commit_interval=config.outbox.commit_interval,
            head_file=state.head_file,
        )
        sessions = [
            self._session(device, journal, state.outbox)
            for device in config.devices
            if not device.is_ble
        ]
        ble_sessions = self._ble_sessions(journal, state.outbox)
        self.sessions = [*sessions, *ble_sessions]
        binding = state.binding
        if binding.moved_from is not None:
            log.warning("hub moved: state dir rebound to this machine (was %s)", binding.moved_from)
            journal.event("hub-moved", {"from": binding.moved_from, "to": binding.machine})
        journal.event(
            "hub-started",
            {
                "version": __version__,
                "devices": len(self.sessions),
                "clock": clock_state(),
                "machine": binding.machine,
                "boot": boot_id(),
                "plugins": [plugin.as_dict() for plugin in self.registry.plugins()],
            },
        )
        self._install_signals()
        log.info(
            "hub %s: started with %d device(s); outbox holds %d entries (log %s, last seq %d)",
            config.hub.id,
            len(self.sessions),
            state.outbox.depth(),
            state.log,
            state.head.seq,
        )
        mqtt = config.mqtt
        if not mqtt.tls and not is_loopback(mqtt.host):
            log.warning(
                "mqtt: readings go to %s unencrypted (allow_plaintext = true); use mqtts:// "
                "unless this network is trusted end to end",
                mqtt.host,
            )
        async with asyncio.TaskGroup() as group:
            journal_task = group.create_task(journal.run(), name="journal")
            uplink_task = group.create_task(uplink.run(), name="uplink")
            workers = [
                group.create_task(s.run(), name=f"device {s.device.id}") for s in self.sessions
            ]
            if self.radio is not None:
                workers.append(group.create_task(self.radio.scanner.run(), name="ble scanner"))
            workers.append(group.create_task(self._watchdog(), name="watchdog"))
            self._notifier.ready(f"{len(self.sessions)} device(s)")
            await self.stop_event.wait()
            log.info("stopping: draining in-flight work")
            self._notifier.stopping()
            await _cancel_all(workers)
            await journal.drain()
            journal_task.cancel()
            await uplink.stop(drain_timeout=10.0)
            uplink_task.cancel()
        log.info("stopped cleanly; %d entries wait in the outbox", state.outbox.depth())
        return 0

    def _session(self, device: DeviceConfig, journal: Journal, outbox: Outbox) -> DeviceSession:
        driver = self.registry.get_serial(device.driver)
        settings = self.registry.serial_settings(device.driver, device.options)
        return DeviceSession(
            device, driver, settings, self._opener, journal, stored=outbox.get_meta
        )

    def _ble_sessions(self, journal: Journal, outbox: Outbox) -> list[BleDeviceSession]:
        devices = [device for device in self.config.devices if device.is_ble]
        if not devices:
            return []
        from gateway.hub.driver_match import ble_claims
        from gateway.sessions.ble import BleDeviceSession

        self.radio = BleRadio(self.config.ble)
        sessions = []
        for device in devices:
            driver = self.registry.get_ble(device.driver)

            def claims(advert: Advertisement, driver: AnyDriver = driver) -> bool:
                from gateway.transport.ble.scanner import Advert

                return isinstance(advert, Advert) and ble_claims(
                    driver,
                    service_uuids=advert.service_uuids,
                    manufacturer_data=advert.manufacturer_data,
                    local_name=advert.name,
                )

            sessions.append(
                BleDeviceSession(
                    device,
                    driver,
                    self.radio,
                    journal,
                    outbox,
                    companions=ble_companions(),
                    claims=claims,
                )
            )
        return sessions

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop_event.set)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog from the event loop itself: a stuck loop stops the pings."""
        interval = self._notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)
