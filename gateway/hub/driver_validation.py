"""What makes an object a usable driver for this hub, and the registry's errors.

What lives here: the registry's exception tree (`RegistryError` and its kinds),
`validate_driver` (the declaration checks the hub makes when it loads a driver, and the
conformance kit repeats), and `characteristic_uuid`. What may not: loading or choosing drivers
(that is `gateway.hub.registry`). Standard library and the SDK only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.hub.driver_match import name_pattern_problem
from gateway.sdk import (
    SDK_VERSION,
    BleMatch,
    DecodeError,
    Driver,
    DriverInfo,
    GattDriver,
    ObservationType,
    UsbMatch,
)

AnyDriver = Driver | GattDriver

_ID = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+")


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
    _check_name_rules(info)
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


def _check_name_rules(info: DriverInfo) -> None:
    for rule in info.match:
        if isinstance(rule, BleMatch) and rule.local_name is not None:
            problem = name_pattern_problem(rule.local_name)
            if problem is not None:
                raise InvalidDriverError(f"match rule {rule.describe()}: {problem}")
