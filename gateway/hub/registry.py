"""The driver registry: built-in drivers plus plugins from the `rtm_gateway.drivers` entry points.

What lives here: loading and validating drivers, lookup by id, and choosing the driver for a USB
serial device or a BLE advertisement (the rules are ranked in `gateway.hub.driver_match`; the
rows of `rtm-gateway drivers` are built in `gateway.hub.driver_description`). A broken or
invalid plugin is logged and skipped; it never stops the hub or the other drivers.

Nothing here opens a device. Keep imports light: the daemon imports this on every start, so
`importlib.metadata` is only imported when the installed plugins are actually looked up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.drivers import BUILTIN_DRIVERS, decode_bytes, serial_settings_for
from gateway.hub.driver_description import DriverDescription, describe_driver
from gateway.hub.driver_match import ble_rank
from gateway.sdk import (
    SDK_VERSION,
    TRACE,
    BleMatch,
    DecodeError,
    Driver,
    DriverInfo,
    FeedResult,
    GattDriver,
    ObservationType,
    SerialSettings,
    UsbMatch,
)

AnyDriver = Driver | GattDriver

ENTRY_POINT_GROUP = "rtm_gateway.drivers"
BUILTIN = "builtin"

_ID = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+")

logger = logging.getLogger(__name__)


class RegistryError(Exception):
    """Base of the registry's errors."""


class UnknownDriverError(RegistryError, KeyError):
    """No installed driver has this id."""

    def __init__(self, driver_id: str, installed: Iterable[str]) -> None:
        self.driver_id = driver_id
        self.installed = tuple(installed)
        super().__init__(
            f"no driver {driver_id!r} is installed; installed drivers: "
            f"{', '.join(self.installed) or 'none'} (see `rtm-gateway drivers`)"
        )

    def __str__(self) -> str:  # KeyError's own __str__ would quote the message
        return str(self.args[0])


class AmbiguousMatchError(RegistryError):
    """Two or more drivers claim the same device equally strongly."""

    def __init__(self, device: str, driver_ids: Iterable[str]) -> None:
        self.device = device
        self.driver_ids = tuple(driver_ids)
        super().__init__(
            f"{device} is claimed by drivers {', '.join(self.driver_ids)}: name the driver for "
            "this device in its configuration, or uninstall the plugin that should not claim it"
        )


class DriverTransportError(RegistryError, LookupError):
    """A device names a driver of the wrong kind (a BLE driver for a serial port)."""


class InvalidDriverError(RegistryError):
    """An object that is not a usable driver for this hub's SDK."""


class EntryPointLike(Protocol):
    """What the registry needs of an `importlib.metadata.EntryPoint` (a seam for tests)."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...

    def load(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class PluginProblem:
    """A plugin that was skipped, and why: for `rtm-gateway doctor`."""

    name: str
    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class _Entry:
    driver: AnyDriver
    source: str


def validate_driver(candidate: object) -> AnyDriver:
    """Return `candidate` as a driver, or raise `InvalidDriverError` saying what is wrong."""
    driver: AnyDriver
    if isinstance(candidate, Driver):
        driver, expected = candidate, "serial"
    elif isinstance(candidate, GattDriver):
        driver, expected = candidate, "ble"
    else:
        raise InvalidDriverError(
            f"{type(candidate).__name__} is not a driver (needs `info` and `decoder(options)`, "
            "or `gatt_decoder(options)` for Bluetooth LE)"
        )
    info = driver.info
    if not isinstance(info, DriverInfo):
        raise InvalidDriverError("its `info` is not a gateway.sdk.DriverInfo")
    if not isinstance(info.id, str) or not _ID.fullmatch(info.id):
        raise InvalidDriverError(f"id {info.id!r} is not dotted lower-case like 'vendor.model'")
    version = info.sdk_version
    if not (
        isinstance(version, tuple)
        and len(version) == 2
        and all(isinstance(part, int) for part in version)
    ):
        raise InvalidDriverError(f"sdk_version {version!r} is not a (major, minor) pair")
    if version[0] != SDK_VERSION[0] or version[1] > SDK_VERSION[1]:
        raise InvalidDriverError(
            f"it needs driver SDK {version[0]}.{version[1]}, this hub has "
            f"{SDK_VERSION[0]}.{SDK_VERSION[1]}"
        )
    if info.transport != expected:
        raise InvalidDriverError(
            f"it declares transport {info.transport!r} but implements a {expected} driver"
        )
    rule_type = UsbMatch if expected == "serial" else BleMatch
    for rule in info.match:
        if not isinstance(rule, rule_type):
            raise InvalidDriverError(
                f"match rule {rule!r} is not a gateway.sdk "
                f"{rule_type.__name__} for a {expected} driver"
            )
    if expected == "ble" and not info.characteristics:
        raise InvalidDriverError("a Bluetooth LE driver must declare its characteristics")
    wrong = [kind for kind in info.observation_types if not isinstance(kind, ObservationType)]
    if wrong:
        raise InvalidDriverError(f"{wrong[0]!r} in observation_types is not an ObservationType")
    return driver


def characteristic_uuid(text: str) -> str:
    """A characteristic named by its 16-bit SIG number ("2A37", "0x2a37") or full UUID."""
    cleaned = text.strip().lower().removeprefix("0x")
    if re.fullmatch(r"[0-9a-f]{4}", cleaned):
        return f"0000{cleaned}-0000-1000-8000-00805f9b34fb"
    if re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", cleaned):
        return cleaned
    raise DecodeError(f"{text!r} is not a characteristic UUID (16-bit like 2A37, or full)")


def _installed_entry_points() -> Iterable[EntryPointLike]:
    from importlib.metadata import entry_points

    return entry_points(group=ENTRY_POINT_GROUP)


def _distribution(entry_point: EntryPointLike) -> str:
    dist = getattr(entry_point, "dist", None)
    name = getattr(dist, "name", None)
    return name if isinstance(name, str) else f"entry point {entry_point.value}"


def _skip(problems: list[PluginProblem], problem: PluginProblem, advice: str) -> None:
    logger.error(
        "Driver plugin %r from %s is skipped: %s; %s",
        problem.name,
        problem.source,
        problem.reason,
        advice,
    )
    problems.append(problem)


class Registry:
    """The installed drivers, indexed by id and by USB match rule.

    `builtins` defaults to `gateway.drivers.BUILTIN_DRIVERS` and `entry_points` to the installed
    `rtm_gateway.drivers` entry points; tests pass their own. Built-ins load first, so a plugin
    cannot take over a built-in id.
    """

    def __init__(
        self,
        builtins: Iterable[AnyDriver] | None = None,
        entry_points: Iterable[EntryPointLike] | None = None,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._usb: dict[tuple[int, int], list[tuple[UsbMatch, str]]] = {}
        problems: list[PluginProblem] = []
        for driver in BUILTIN_DRIVERS if builtins is None else builtins:
            # A broken built-in is our bug, not the user's: let it fail loudly in tests.
            self._add(validate_driver(driver), BUILTIN, problems)
        for entry_point in _installed_entry_points() if entry_points is None else entry_points:
            self._load(entry_point, problems)
        self.problems: tuple[PluginProblem, ...] = tuple(problems)

    @classmethod
    def load(cls) -> Registry:
        """The built-in drivers and every installed plugin."""
        return cls()

    def _load(self, entry_point: EntryPointLike, problems: list[PluginProblem]) -> None:
        source = _distribution(entry_point)
        try:
            candidate = entry_point.load()
        except Exception as exc:  # a plugin may fail to import in any way; it must not stop us
            # The whole traceback only at TRACE: the log line below names the cause, and
            # `rtm-gateway driver check MODULE` shows the rest to the driver's author.
            logger.log(TRACE, "Traceback of driver plugin %r", entry_point.name, exc_info=True)
            _skip(
                problems,
                PluginProblem(
                    entry_point.name, source, f"failed to load ({type(exc).__name__}: {exc})"
                ),
                f"upgrade or reinstall {source}, or uninstall it",
            )
            return
        try:
            driver = validate_driver(candidate)
        except Exception as exc:  # a hostile `info` property may raise anything
            reason = (
                str(exc)
                if isinstance(exc, InvalidDriverError)
                else (f"its declaration fails ({type(exc).__name__}: {exc})")
            )
            advice = (
                f"install a version of {source} built for driver SDK "
                f"{SDK_VERSION[0]}.{SDK_VERSION[1]}, or uninstall it"
                if "driver SDK" in reason
                else f"report it to the maintainers of {source} (`rtm-gateway driver check "
                f"{entry_point.value}` shows what is wrong), or uninstall it"
            )
            _skip(problems, PluginProblem(entry_point.name, source, reason), advice)
            return
        self._add(driver, source, problems)

    def _add(self, driver: AnyDriver, source: str, problems: list[PluginProblem]) -> None:
        driver_id = driver.info.id
        first = self._entries.get(driver_id)
        if first is not None:
            _skip(
                problems,
                PluginProblem(driver_id, source, f"its id is already provided by {first.source}"),
                "uninstall one of the two",
            )
            return
        if source != BUILTIN:
            for rule in driver.info.match:
                for other_id, other in self._entries.items():
                    if rule in other.driver.info.match:
                        _skip(
                            problems,
                            PluginProblem(
                                driver_id,
                                source,
                                f"its match rule ({rule.describe()}) is already "
                                f"claimed by {other_id} from {other.source}",
                            ),
                            "make the rule more specific (a name pattern, manufacturer data), "
                            "or uninstall one of the two",
                        )
                        return
        self._entries[driver_id] = _Entry(driver, source)
        for rule in driver.info.match:
            if isinstance(rule, UsbMatch):
                self._usb.setdefault((rule.vid, rule.pid), []).append((rule, driver_id))

    def include(self, driver: AnyDriver, source: str, *, replace: bool = False) -> None:
        """Add a driver after loading (the conformance kit checks one not yet installed);
        `replace` drops an installed driver with the same id first."""
        problems: list[PluginProblem] = []
        if replace and driver.info.id in self._entries:
            del self._entries[driver.info.id]
            for rules in self._usb.values():
                rules[:] = [(rule, owner) for rule, owner in rules if owner != driver.info.id]
        self._add(validate_driver(driver), source, problems)
        self.problems += tuple(problems)

    def __contains__(self, driver_id: object) -> bool:
        return driver_id in self._entries

    def __iter__(self) -> Iterator[AnyDriver]:
        return (entry.driver for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def get(self, driver_id: str) -> AnyDriver:
        """The driver with this id, or `UnknownDriverError` listing the installed ones."""
        entry = self._entries.get(driver_id)
        if entry is None:
            raise UnknownDriverError(driver_id, self.ids())
        return entry.driver

    def get_serial(self, driver_id: str) -> Driver:
        """A serial driver by id; `InvalidDriverError` for a Bluetooth LE one."""
        driver = self.get(driver_id)
        if not isinstance(driver, Driver):
            raise DriverTransportError(
                f'{driver_id} is a Bluetooth LE driver: give the device address = "AA:BB:..." '
                'or serial = "..." instead of a serial port (rtm-gateway scan lists nearby '
                "devices)"
            )
        return driver

    def get_ble(self, driver_id: str) -> GattDriver:
        """A Bluetooth LE driver by id; `DriverTransportError` for a serial one."""
        driver = self.get(driver_id)
        if isinstance(driver, Driver):
            raise DriverTransportError(
                f'{driver_id} is a serial driver: give the device port = "/dev/..." or '
                'usb = "VID:PID" instead of a Bluetooth address or serial number'
            )
        return driver

    def get_for(self, driver_id: str, *, ble: bool) -> AnyDriver:
        """The driver for a configured device, checked against the device's transport."""
        return self.get_ble(driver_id) if ble else self.get_serial(driver_id)

    def check_options(self, driver_id: str, options: Mapping[str, object]) -> None:
        """Raise `OptionError` (or `UnknownDriverError`) if a device's options are wrong."""
        driver = self.get(driver_id)
        if isinstance(driver, Driver):
            driver.decoder(options)
        else:
            driver.gatt_decoder(options)

    def serial_settings(self, driver_id: str, options: Mapping[str, object]) -> SerialSettings:
        """How to open the port for a device with these options. May raise `OptionError`."""
        return serial_settings_for(self.get_serial(driver_id), options)

    def decode(
        self, driver_id: str, data: bytes, options: Mapping[str, object], char: str | None = None
    ) -> FeedResult:
        """A one-shot decode of recorded bytes (`rtm-gateway decode`): for a serial driver
        feed, then flush; for a BLE driver, one value of characteristic `char`."""
        driver = self.get(driver_id)
        if isinstance(driver, Driver):
            if char is not None:
                raise InvalidDriverError(f"{driver_id} is a serial driver: leave out --char")
            return decode_bytes(driver, data, options)
        uuids = [c.uuid for c in driver.info.characteristics]
        if char is None:
            raise InvalidDriverError(
                f"{driver_id} is a Bluetooth LE driver: say which "
                f"characteristic with --char (one of {', '.join(uuids)})"
            )
        uuid = characteristic_uuid(char)
        if uuid not in uuids:
            raise InvalidDriverError(
                f"{driver_id} does not use characteristic {char}; it uses {', '.join(uuids)}"
            )
        return driver.gatt_decoder(options).value(uuid, data)

    def source(self, driver_id: str) -> str:
        """ "builtin", or the distribution that provided the driver."""
        self.get(driver_id)
        return self._entries[driver_id].source

    def match_usb(self, vid: int, pid: int, product: str | None = None) -> AnyDriver | None:
        """The driver for a USB serial device, or None if no driver claims it.

        A rule naming the product string is a stronger claim than a bare VID:PID (many devices
        share one USB-serial bridge chip), so it wins. Two drivers with equally strong claims
        raise `AmbiguousMatchError`: guessing would feed one device's bytes to another's driver.
        """
        best: set[str] = set()
        best_rank = -1
        for rule, driver_id in self._usb.get((vid, pid), ()):
            if rule.product is not None and rule.product != product:
                continue
            rank = 1 if rule.product is not None else 0
            if rank > best_rank:
                best, best_rank = set(), rank
            if rank == best_rank:
                best.add(driver_id)
        if len(best) > 1:
            device = UsbMatch(vid, pid, product).describe()
            raise AmbiguousMatchError(device, sorted(best))
        return self._entries[best.pop()].driver if best else None

    def match_ble(
        self,
        *,
        service_uuids: Iterable[str] = (),
        manufacturer_data: Mapping[int, bytes] | None = None,
        local_name: str | None = None,
        connectable: bool | None = None,
    ) -> AnyDriver | None:
        """The driver for a BLE advertisement, or None if no driver claims it.

        The most specific rule wins (each field a rule names counts); two drivers with equally
        specific claims raise `AmbiguousMatchError`, as for USB: a watch that advertises both
        Heart Rate and Running Speed must be configured with the driver named."""
        uuids = {uuid.lower() for uuid in service_uuids}
        data = manufacturer_data or {}
        best: set[str] = set()
        best_rank = 0
        for driver_id, entry in self._entries.items():
            for rule in entry.driver.info.match:
                if not isinstance(rule, BleMatch):
                    continue
                rank = ble_rank(rule, uuids, data, local_name, connectable)
                if rank > best_rank:
                    best, best_rank = set(), rank
                if rank and rank == best_rank:
                    best.add(driver_id)
        if len(best) > 1:
            what = local_name or ", ".join(sorted(uuids)) or "an advertisement"
            raise AmbiguousMatchError(f"BLE device {what}", sorted(best))
        return self._entries[best.pop()].driver if best else None

    def describe(self) -> tuple[DriverDescription, ...]:
        """Every installed driver, sorted by id."""
        return tuple(
            describe_driver(self._entries[driver_id].driver.info, self._entries[driver_id].source)
            for driver_id in self.ids()
        )
