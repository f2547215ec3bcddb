"""The driver registry: built-in drivers plus the vendor drivers (plugins of the
`rtm_gateway.drivers` entry-point group) that were asked for.

What lives here: loading drivers, lookup by id, and choosing the driver for a USB serial device
or a BLE advertisement (the rules are ranked in `gateway.hub.driver_match`; the rows of
`rtm-gateway drivers` are built in `gateway.hub.driver_description`; what makes a driver valid,
and the errors, are in `gateway.hub.driver_validation`). A broken or invalid plugin is logged
and skipped; the other drivers go on, but a hub whose config names it does not start (a
config error, exit status 2: `check-config` says so first).

Which plugins are imported is chosen before any is: `Registry.for_config` imports only those a
configured device or `[drivers] allow` names (checked against the allow entry's distribution
and version by `gateway.hub.plugins`), `Registry.with_plugins` only those named on a command
line. `Registry.load()` imports every installed plugin: it is the vendor kit's view, for a
driver author's machine and tests, and no hub command uses it. The sessions get a vendor
driver wrapped in its decode budget (`gateway.hub.plugin_budget`); what vendor code does while
the hub runs it is logged by an audit hook (`gateway.hub.plugin_audit`).

Nothing here opens a device. Keep imports light: the daemon imports this on every start, so
`importlib.metadata` is only imported when the installed plugins are actually looked up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.drivers import BUILTIN_DRIVERS, decode_bytes, serial_settings_for
from gateway.hub.driver_description import DriverDescription, describe_driver
from gateway.hub.driver_match import ble_rank
from gateway.hub.driver_validation import (
    AmbiguousMatchError,
    AnyDriver,
    DriverTransportError,
    InvalidDriverError,
    RegistryError,
    UnknownDriverError,
    characteristic_uuid,
    validate_driver,
)
from gateway.hub.plugin_audit import running, watch
from gateway.hub.plugins import (
    ENTRY_POINT_GROUP,
    EntryPointLike,
    PluginProblem,
    Provenance,
    distribution_name,
    provenance,
    sources_only,
)
from gateway.sdk import (
    SDK_VERSION,
    TRACE,
    BleMatch,
    Driver,
    FeedResult,
    GattDriver,
    SerialSettings,
    UsbMatch,
)

if TYPE_CHECKING:
    from gateway.hub.config import Config

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "AmbiguousMatchError",
    "AnyDriver",
    "DriverTransportError",
    "EntryPointLike",
    "InvalidDriverError",
    "PluginProblem",
    "Registry",
    "RegistryError",
    "UnknownDriverError",
    "characteristic_uuid",
    "validate_driver",
]

BUILTIN = "builtin"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    driver: AnyDriver
    source: str


def _installed_entry_points() -> Iterable[EntryPointLike]:
    from importlib.metadata import entry_points

    return entry_points(group=ENTRY_POINT_GROUP)


def _distribution(entry_point: EntryPointLike) -> str:
    return distribution_name(entry_point) or f"entry point {entry_point.value}"


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
    """The loaded drivers, indexed by id and by USB match rule.

    `builtins` defaults to `gateway.drivers.BUILTIN_DRIVERS` and `entry_points` to every
    installed `rtm_gateway.drivers` entry point; the hub's commands pass the chosen ones (see
    the module's docstring), tests their own. Built-ins load first, so a plugin cannot take
    over a built-in id. `by_name`: the entry points were chosen by name, so a plugin whose
    driver id is not its entry point's name is refused. `decode_budget`: seconds a plugin's
    decoder may take per input in the drivers `get_serial`/`get_ble` hand to sessions (None:
    unbounded).
    """

    def __init__(
        self,
        builtins: Iterable[AnyDriver] | None = None,
        entry_points: Iterable[EntryPointLike] | None = None,
        *,
        by_name: bool = False,
        decode_budget: float | None = None,
    ) -> None:
        self._entries: dict[str, _Entry] = {}
        self._usb: dict[tuple[int, int], list[tuple[UsbMatch, str]]] = {}
        self._provenance: dict[str, Provenance] = {}
        self._budgeted: dict[str, AnyDriver] = {}  # one budget (and worker) per vendor driver
        self._by_name = by_name
        self.decode_budget = decode_budget
        problems: list[PluginProblem] = []
        for driver in BUILTIN_DRIVERS if builtins is None else builtins:
            # A broken built-in is our bug, not the user's: let it fail loudly in tests.
            self._add(validate_driver(driver), BUILTIN, problems)
        for entry_point in _installed_entry_points() if entry_points is None else entry_points:
            self._load(entry_point, problems)
        self.problems: tuple[PluginProblem, ...] = tuple(problems)

    @classmethod
    def load(cls) -> Registry:
        """The built-in drivers and every installed plugin, each imported: the vendor kit's
        and tests' view (a driver author's machine). No hub command uses it."""
        return cls()

    @classmethod
    def builtin(cls) -> Registry:
        """The built-in drivers alone: no plugin is imported."""
        return cls(entry_points=())

    @classmethod
    def with_plugins(cls, driver_ids: Iterable[str]) -> Registry:
        """The built-ins and the installed plugins with these ids (asked for by name on a
        command line: `decode ID`, `drivers --load ID`); no other plugin is imported."""
        from gateway.hub.plugins import entry_points_named

        builtin_ids = {driver.info.id for driver in BUILTIN_DRIVERS}
        wanted = [driver_id for driver_id in driver_ids if driver_id not in builtin_ids]
        return cls(entry_points=entry_points_named(wanted), by_name=True)

    @classmethod
    def for_config(cls, config: Config, extra: Iterable[str] = ()) -> Registry:
        """The built-ins and the plugins this configuration lets the hub import (a configured
        device or `[drivers] allow` names them), with its decode budget; and those in `extra`
        (named on a command line). Raises `ConfigError` naming the key path when an allow entry
        does not fit what is installed."""
        from gateway.hub.plugins import entry_points_for_config, entry_points_named

        builtin_ids = {driver.info.id for driver in BUILTIN_DRIVERS}
        chosen = entry_points_for_config(config, builtin_ids)
        taken = builtin_ids | {ep.name for ep in chosen}
        chosen += entry_points_named(driver_id for driver_id in extra if driver_id not in taken)
        if chosen:
            watch(config.hub.state_dir)
        return cls(entry_points=chosen, by_name=True, decode_budget=config.drivers.decode_budget)

    def _load(self, entry_point: EntryPointLike, problems: list[PluginProblem]) -> None:
        source = _distribution(entry_point)
        try:
            # The audit hook names the driver for its imports; only checked sources are run.
            with running(entry_point.name), sources_only():
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
        if self._by_name and driver.info.id != entry_point.name:
            _skip(
                problems,
                PluginProblem(
                    entry_point.name,
                    source,
                    f"its entry point is named {entry_point.name!r} but its driver id is "
                    f"{driver.info.id!r} (the hub chooses plugins by entry-point name)",
                ),
                f"report it to the maintainers of {source}, or uninstall it",
            )
            return
        if self._add(driver, source, problems):
            self._provenance[driver.info.id] = provenance(driver.info.id, entry_point)

    def _add(self, driver: AnyDriver, source: str, problems: list[PluginProblem]) -> bool:
        driver_id = driver.info.id
        first = self._entries.get(driver_id)
        if first is not None:
            _skip(
                problems,
                PluginProblem(driver_id, source, f"its id is already provided by {first.source}"),
                "uninstall one of the two",
            )
            return False
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
                        return False
        self._entries[driver_id] = _Entry(driver, source)
        for rule in driver.info.match:
            if isinstance(rule, UsbMatch):
                self._usb.setdefault((rule.vid, rule.pid), []).append((rule, driver_id))
        return True

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

    def _for_session(self, driver_id: str) -> AnyDriver:
        """The driver for a device session: a plugin under its decode budget, if one is set."""
        driver = self.get(driver_id)
        if self.decode_budget is None or self._entries[driver_id].source == BUILTIN:
            return driver
        wrapped = self._budgeted.get(driver_id)
        if wrapped is None:
            from gateway.hub.plugin_budget import budgeted

            wrapped = self._budgeted[driver_id] = budgeted(driver, self.decode_budget)
        return wrapped

    def plugins(self) -> tuple[Provenance, ...]:
        """Where each loaded plugin came from (for `hub-started`), sorted by id."""
        return tuple(self._provenance[driver_id] for driver_id in sorted(self._provenance))

    def get_serial(self, driver_id: str) -> Driver:
        """A serial driver by id (for a session: a plugin comes under its decode budget);
        `DriverTransportError` for a Bluetooth LE one."""
        driver = self._for_session(driver_id)
        if not isinstance(driver, Driver):
            raise DriverTransportError(
                f'{driver_id} is a Bluetooth LE driver: give the device address = "AA:BB:..." '
                'or serial = "..." instead of a serial port (rtm-gateway scan lists nearby '
                "devices)"
            )
        return driver

    def get_ble(self, driver_id: str) -> GattDriver:
        """A Bluetooth LE driver by id (for a session: a plugin comes under its decode budget);
        `DriverTransportError` for a serial one."""
        driver = self._for_session(driver_id)
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
