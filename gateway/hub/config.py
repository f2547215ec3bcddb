"""The hub's configuration: TOML in, frozen typed objects out.

Every error names the file, the key path (`devices[0].port`) and what was expected, so a field
technician can fix it without reading code. Nothing here opens a device or a socket; the
per-driver option check takes the driver lookup as an argument.

What lives here: the typed config objects, the meaning of every section and key, `load_config`
and `check_driver_options`. The `[mqtt]` table is read in `gateway.hub.config_mqtt`; reading
typed values out of a TOML table, and `ConfigError`, in `gateway.hub.config_reader`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from gateway.hub.config_drivers import DriversConfig, parse_drivers
from gateway.hub.config_mqtt import MqttConfig, parse_mqtt
from gateway.hub.config_reader import ConfigError, ConfigTable, kind_of
from gateway.hub.outbox_space import SpaceLimits
from gateway.sdk import OptionError

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DRIVER_ID = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$")
_USB = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?::(.+))?$")
_BLE_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
_ADAPTER = re.compile(r"^hci[0-9]{1,3}$")
_TRANSPORT_KEYS = ("port", "usb", "address", "serial")


@dataclass(frozen=True, slots=True)
class HubConfig:
    id: str
    state_dir: Path

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.sqlite"


@dataclass(frozen=True, slots=True)
class UsbSelector:
    vid: int
    pid: int
    serial: str | None = None

    def describe(self) -> str:
        text = f"{self.vid:04x}:{self.pid:04x}"
        return f"{text}:{self.serial}" if self.serial else text


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str
    driver: str
    patient: str
    port: str | None = None
    usb: UsbSelector | None = None
    address: str | None = None
    """BLE: the device's Bluetooth address, upper case (public or static random)."""
    serial: str | None = None
    """BLE: the Device Information serial number, for devices whose address rotates."""
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    summary_interval: float = 1.0
    max_rate: float | None = None
    """Live readings per second kept (a token bucket); 0 is no limit. None: 10/s for a
    driver that is not `continuous` (those are summarised instead), no limit for one that is."""
    burst: int | None = None
    """Readings the bucket holds: how many may come at once. None: twice `max_rate`, at least 1."""

    @property
    def is_ble(self) -> bool:
        return self.address is not None or self.serial is not None

    @property
    def where(self) -> str:
        if self.port:
            return self.port
        if self.usb:
            return f"usb {self.usb.describe()}"
        if self.address:
            return f"ble {self.address}"
        return f"ble serial {self.serial}" if self.serial else "?"


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    max_rows: int = 1_000_000
    commit_interval: float = 0.005
    space: SpaceLimits = field(default_factory=SpaceLimits)
    """`max_bytes`, `reserve_bytes`, `ballast_bytes` (see `outbox_space.SpaceLimits`)."""


@dataclass(frozen=True, slots=True)
class BleConfig:
    """The Bluetooth adapter and how the hub uses it (defaults suit a Raspberry Pi)."""

    adapter: str = "hci0"
    max_connections: int = 5
    """Connections at once on this adapter; typical controllers manage about five."""
    passive: bool = True
    """Scan passively when BlueZ offers advertisement monitors; actively otherwise."""
    scanner_watchdog: float = 90.0
    """Seconds without any advertisement before the scanner is restarted."""
    connect_timeout: float = 20.0


@dataclass(frozen=True, slots=True)
class Config:
    file: Path
    hub: HubConfig
    mqtt: MqttConfig
    devices: tuple[DeviceConfig, ...]
    outbox: OutboxConfig = OutboxConfig()
    log_level: str = "INFO"
    ble: BleConfig = BleConfig()
    drivers: DriversConfig = field(default_factory=DriversConfig)


# --- the sections -------------------------------------------------------------------------------


def load_config(path: Path | str, *, secrets: bool = True) -> Config:
    """Read and validate a configuration file. Raises `ConfigError` naming file and key path.

    `secrets=False` (commands that never connect: status, identity, scan, drivers) leaves
    `credential:` secrets unresolved and the password file unread, so they run outside the
    service, where `$CREDENTIALS_DIRECTORY` is not set."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(file, "", "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, "", f"cannot read: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from exc
    except RecursionError as exc:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(file, "", "not valid TOML: values nested too deeply") from exc
    return parse_config(data, file, secrets=secrets)


def parse_config(data: Mapping[str, object], file: Path, *, secrets: bool = True) -> Config:
    root = ConfigTable(file, "", data)
    root.check_known({"hub", "mqtt", "devices", "outbox", "log", "ble", "drivers"})
    base = file.parent
    hub = _hub(root.table("hub", required=True), base)
    mqtt = parse_mqtt(root.table("mqtt", required=True), base, hub.id, secrets=secrets)
    devices = _devices(root, file)
    outbox_table = root.table("outbox")
    outbox_table.check_known(
        {"max_rows", "commit_interval_ms", "max_bytes", "reserve_bytes", "ballast_bytes"}
    )

    def size(key: str, low: int) -> int | None:
        if key not in outbox_table.data:
            return None
        return outbox_table.integer(key, 0, low, 1 << 50)

    outbox = OutboxConfig(
        max_rows=outbox_table.integer("max_rows", 1_000_000, 100, 100_000_000),
        commit_interval=outbox_table.number("commit_interval_ms", 5.0, 0.0, 1000.0) / 1000.0,
        space=SpaceLimits(
            max_bytes=size("max_bytes", 1 << 20),
            reserve=size("reserve_bytes", 0),
            ballast_bytes=size("ballast_bytes", 0),
        ),
    )
    log_table = root.table("log")
    log_table.check_known({"level"})
    level = log_table.text("level", "INFO").upper()
    if level not in {"TRACE", "DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(
            file,
            "log.level",
            f"{level!r} is not a log level; expected TRACE, DEBUG, INFO, WARNING or ERROR",
        )
    drivers = parse_drivers(root.table("drivers"))
    return Config(file, hub, mqtt, devices, outbox, level, _ble(root.table("ble")), drivers)


def _ble(table: ConfigTable) -> BleConfig:
    table.check_known(
        {"adapter", "max_connections", "passive", "scanner_watchdog", "connect_timeout"}
    )
    passive = table.data.get("passive", True)
    if not isinstance(passive, bool):
        raise table.error("passive", f"expected true or false, got {kind_of(passive)}")
    return BleConfig(
        adapter=table.text("adapter", "hci0", pattern=_ADAPTER, hint="hci0, hci1, ..."),
        max_connections=table.integer("max_connections", 5, 1, 32),
        passive=passive,
        scanner_watchdog=table.number("scanner_watchdog", 90.0, 5.0, 3600.0),
        connect_timeout=table.number("connect_timeout", 20.0, 2.0, 120.0),
    )


def _hub(table: ConfigTable, base: Path) -> HubConfig:
    table.check_known({"id", "state_dir"})
    hub_id = table.text("id", pattern=_ID, hint="letters, digits, '.', '_' or '-', at most 64")
    state = Path(table.text("state_dir", "/var/lib/rtm-gateway"))
    return HubConfig(hub_id, state if state.is_absolute() else base / state)


def _devices(root: ConfigTable, file: Path) -> tuple[DeviceConfig, ...]:
    raw = root.data.get("devices", [])
    if not isinstance(raw, list):
        raise root.error("devices", "expected an array of tables: [[devices]]")
    devices: list[DeviceConfig] = []
    seen: dict[str, str] = {}
    for index, item in enumerate(raw):
        path = f"devices[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(file, path, f"expected a table, got {kind_of(item)}")
        device = _device(ConfigTable(file, path, item), index)
        if device.id in seen:
            raise ConfigError(
                file, f"{path}.id", f"{device.id!r} is already used by {seen[device.id]}"
            )
        seen[device.id] = path
        devices.append(device)
    return tuple(devices)


def _device(table: ConfigTable, index: int) -> DeviceConfig:
    table.check_known(
        {
            "id",
            "driver",
            "patient",
            "options",
            "summary_interval",
            "max_rate",
            "burst",
            *_TRANSPORT_KEYS,
        }
    )
    driver = table.text("driver", pattern=_DRIVER_ID, hint="a driver id such as contec.cms50d")
    patient = table.text(
        "patient",
        pattern=_ID,
        hint="a pseudonymous id: letters, digits, '.', '_' or '-' (never a name)",
    )
    given = {key: table.optional_str(key) for key in _TRANSPORT_KEYS}
    present = [key for key, value in given.items() if value is not None]
    if len(present) != 1:
        raise table.error(
            present[1] if len(present) > 1 else "port",
            'set exactly one of port = "/dev/..." or usb = "VID:PID" (serial '
            'devices), address = "AA:BB:CC:DD:EE:FF" or serial = "..." (BLE)',
        )
    usb = None
    if (usb_text := given["usb"]) is not None:
        match = _USB.match(usb_text)
        if not match:
            raise table.error(
                "usb",
                f"{usb_text!r} is not valid; expected VID:PID in hex, "
                'optionally :SERIAL (e.g. "10c4:ea60")',
            )
        usb = UsbSelector(int(match[1], 16), int(match[2], 16), match[3])
    address = given["address"]
    if address is not None and not _BLE_ADDRESS.match(address):
        raise table.error(
            "address",
            f"{address!r} is not a Bluetooth address; expected six "
            'hex pairs such as "C0:FF:EE:00:00:01" (rtm-gateway scan lists them)',
        )
    serial = given["serial"]
    if serial is not None and not serial.strip():
        raise table.error("serial", "must not be empty")
    options = table.table("options")
    return DeviceConfig(
        id=table.text(
            "id", f"{driver}-{index}", pattern=_ID, hint="letters, digits, '.', '_' or '-'"
        ),
        driver=driver,
        patient=patient,
        port=given["port"],
        usb=usb,
        address=address.upper() if address else None,
        serial=serial,
        options=MappingProxyType(dict(options.data)),
        summary_interval=table.number("summary_interval", 1.0, 0.01, 3600.0),
        max_rate=table.number("max_rate", 0.0, 0.0, 100_000.0)
        if "max_rate" in table.data
        else None,
        burst=table.integer("burst", 1, 1, 1_000_000) if "burst" in table.data else None,
    )


def check_driver_options(config: Config, check: Callable[[DeviceConfig], None]) -> None:
    """Run each device's driver option check; turn `OptionError` and unknown drivers into a
    `ConfigError` that points at `devices[i].options.<key>` or `devices[i].driver`."""
    for index, device in enumerate(config.devices):
        try:
            check(device)
        except OptionError as exc:
            where = f"devices[{index}].options" + (f".{exc.path}" if exc.path else "")
            raise ConfigError(config.file, where, exc.message) from exc
        except LookupError as exc:
            raise ConfigError(
                config.file, f"devices[{index}].driver", str(exc.args[0]) if exc.args else str(exc)
            ) from exc
