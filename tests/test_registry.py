"""The registry: built-ins, plugins through injected entry points, validation, USB matching."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from gateway.drivers import BUILTIN_DRIVERS
from gateway.hub.registry import (
    AmbiguousMatchError,
    DriverTransportError,
    InvalidDriverError,
    Registry,
    UnknownDriverError,
    characteristic_uuid,
    validate_driver,
)
from gateway.sdk import (
    BleMatch,
    Characteristic,
    DecodeError,
    DriverInfo,
    FeedResult,
    Observation,
    OptionError,
    Reading,
    UsbMatch,
    uuid16,
)


class _Decoder:
    def feed(self, data: bytes) -> FeedResult:
        return FeedResult()


@dataclasses.dataclass
class FakeDriver:
    info: DriverInfo

    def decoder(self, options: Mapping[str, object]) -> _Decoder:
        return _Decoder()


def driver(driver_id: str, *match: UsbMatch, sdk: tuple[int, int] = (1, 0)) -> FakeDriver:
    return FakeDriver(
        DriverInfo(
            id=driver_id,
            version="0.1",
            description="test",
            transport="serial",
            match=match,
            sdk_version=sdk,
        )
    )


@dataclasses.dataclass
class FakeDist:
    name: str


@dataclasses.dataclass
class FakeEntryPoint:
    """Models importlib.metadata.EntryPoint: `load()` imports, and may fail in any way."""

    name: str
    loader: Callable[[], Any]
    dist: FakeDist | None = dataclasses.field(default_factory=lambda: FakeDist("vendor-pkg"))

    @property
    def value(self) -> str:
        return f"vendor_pkg:{self.name}"

    def load(self) -> Any:
        return self.loader()


def plugin(name: str, obj: object, dist: str = "vendor-pkg") -> FakeEntryPoint:
    return FakeEntryPoint(name, lambda: obj, FakeDist(dist))


def _broken() -> object:
    raise ImportError("No module named 'vendor_pkg.missing'")


def test_builtins_and_installed_plugins_load() -> None:
    registry = Registry.load()
    assert {"contec.cms50d", "generic.kv-lines"} <= set(registry.ids())
    assert registry.source("contec.cms50d") == "builtin"


def test_plugin_is_added_with_its_distribution() -> None:
    registry = Registry(entry_points=[plugin("acme", driver("acme.meter"), dist="acme-rtm")])
    assert registry.get("acme.meter").info.id == "acme.meter"
    assert registry.source("acme.meter") == "acme-rtm"
    assert "acme.meter" in registry
    assert not registry.problems


def test_broken_plugin_is_skipped_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.hub.registry")
    registry = Registry(
        entry_points=[
            FakeEntryPoint("broken", _broken),
            plugin("good", driver("acme.good")),
        ]
    )
    assert "acme.good" in registry  # the broken one does not stop the others
    [record] = caplog.records
    assert "broken" in record.getMessage()
    assert "No module named" in record.getMessage()
    assert "reinstall" in record.getMessage()  # says what to do
    assert [p.name for p in registry.problems] == ["broken"]


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (driver("acme.new", sdk=(2, 0)), "needs driver SDK 2.0"),
        (driver("acme.newer", sdk=(1, 99)), "needs driver SDK 1.99"),
        (driver("acme.old", sdk=(0, 9)), "needs driver SDK 0.9"),
        (driver("Acme.Meter"), "not dotted lower-case"),
        (driver("acme"), "not dotted lower-case"),
        (object(), "not a driver"),
        (FakeDriver(info="acme.meter"), "not a gateway.sdk.DriverInfo"),  # type: ignore[arg-type]
        (driver(123), "not dotted lower-case"),  # type: ignore[arg-type]
        (driver("acme.odd", sdk="1.0"), "not a (major, minor) pair"),  # type: ignore[arg-type]
        (driver("acme.rule", "usb 0403:6001"), "is not a gateway.sdk UsbMatch"),  # type: ignore[arg-type]
    ],
)
def test_invalid_plugin_is_refused(
    obj: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.hub.registry")
    registry = Registry(builtins=(), entry_points=[plugin("bad", obj)])
    assert len(registry) == 0
    assert reason in caplog.text
    assert reason in registry.problems[0].reason
    with pytest.raises(InvalidDriverError, match=re.escape(reason)):
        validate_driver(obj)


class _Hostile:
    @property
    def info(self) -> DriverInfo:
        raise RuntimeError("vendor bug")

    def decoder(self, options: Mapping[str, object]) -> _Decoder:
        return _Decoder()


def test_plugin_whose_declaration_raises_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.hub.registry")
    registry = Registry(entry_points=[plugin("hostile", _Hostile())])
    assert "vendor bug" in caplog.text
    assert len(registry) == len(BUILTIN_DRIVERS)  # the built-ins, and nothing of the plugin


def test_duplicate_id_keeps_the_first(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.hub.registry")
    first, second = driver("acme.meter"), driver("acme.meter")
    registry = Registry(
        builtins=(), entry_points=[plugin("a", first, "pkg-a"), plugin("b", second, "pkg-b")]
    )
    assert registry.get("acme.meter") is first
    assert "pkg-b" in caplog.text
    assert "pkg-a" in caplog.text


def test_plugin_cannot_take_a_builtin_id() -> None:
    registry = Registry(entry_points=[plugin("evil", driver("contec.cms50d"))])
    assert registry.source("contec.cms50d") == "builtin"


def test_unknown_driver_lists_the_installed_ones() -> None:
    registry = Registry(entry_points=())
    with pytest.raises(UnknownDriverError) as excinfo:
        registry.get("acme.nothing")
    assert isinstance(excinfo.value, KeyError)
    assert "contec.cms50d" in str(excinfo.value)
    assert "generic.kv-lines" in str(excinfo.value)
    assert str(excinfo.value) == excinfo.value.args[0]


def test_usb_match() -> None:
    registry = Registry(entry_points=())
    found = registry.match_usb(0x10C4, 0xEA60)
    assert found is not None
    assert found.info.id == "contec.cms50d"
    assert registry.match_usb(0x0403, 0x6001) is None


def test_a_second_identical_usb_claim_is_refused_at_load_so_matching_stays_unambiguous() -> None:
    registry = Registry(
        builtins=(),
        entry_points=[
            plugin("a", driver("acme.a", UsbMatch(0x0403, 0x6001))),
            plugin("b", driver("acme.b", UsbMatch(0x0403, 0x6001))),
        ],
    )
    found = registry.match_usb(0x0403, 0x6001)
    assert found is not None and found.info.id == "acme.a"
    assert [p.name for p in registry.problems] == ["acme.b"]
    assert "0403:6001" in registry.problems[0].reason


def test_product_string_rule_beats_a_bare_vid_pid() -> None:
    registry = Registry(
        entry_points=[
            plugin("foo", driver("acme.foo", UsbMatch(0x10C4, 0xEA60, product="FooMeter"))),
        ]
    )
    found = registry.match_usb(0x10C4, 0xEA60, product="FooMeter")
    assert found is not None
    assert found.info.id == "acme.foo"
    other = registry.match_usb(0x10C4, 0xEA60, product="CP2102 USB to UART")
    assert other is not None
    assert other.info.id == "contec.cms50d"


def test_describe() -> None:
    registry = Registry(entry_points=[plugin("p", driver("acme.x"), dist="acme-x")])
    rows = {row.id: row.as_dict() for row in registry.describe()}
    assert rows["contec.cms50d"] == {
        "id": "contec.cms50d",
        "version": "1.0.0",
        "description": rows["contec.cms50d"]["description"],
        "transport": "serial",
        "match": ["usb 10c4:ea60"],
        "serial": "19200 8O1",
        "produces": ["spo2", "pulse_rate"],
        "continuous": True,
        "source": "builtin",
        "characteristics": [],
        "category": "respiratory",
        "sdk_version": "1.3",
        "session": [],
    }
    assert rows["acme.x"]["source"] == "acme-x"
    assert list(rows) == sorted(rows)


def test_options_and_serial_settings() -> None:
    registry = Registry(entry_points=())
    options = {"keys": {"spo2": {"type": "spo2"}}, "baudrate": 115200}
    registry.check_options("generic.kv-lines", options)
    assert registry.serial_settings("generic.kv-lines", options).baudrate == 115200
    assert registry.serial_settings("contec.cms50d", {}).parity == "O"
    with pytest.raises(OptionError) as excinfo:
        registry.check_options("generic.kv-lines", {"keys": {}})
    assert excinfo.value.path == "keys"


class _EchoGattDecoder:
    def value(self, uuid: str, data: bytes) -> FeedResult:
        if not data:
            return FeedResult(errors=[DecodeError("empty value")])
        return FeedResult(readings=[Reading((Observation.known("heart_rate", data[0]),), data)])


class _GattDriver:
    def __init__(self, info: DriverInfo) -> None:
        self.info = info

    def gatt_decoder(self, options: Mapping[str, object]) -> _EchoGattDecoder:
        return _EchoGattDecoder()


HR = uuid16(0x2A37)


def gatt_info(
    driver_id: str = "acme.hr",
    match: tuple[object, ...] = (),
    characteristics: tuple[Characteristic, ...] = (Characteristic(HR, "hr", "notify"),),
    observation_types: tuple[object, ...] = (),
) -> DriverInfo:
    return DriverInfo(
        driver_id,
        "1.0",
        "a BLE test driver",
        "ble",
        match=match,  # type: ignore[arg-type]
        service=uuid16(0x180D),
        characteristics=characteristics,
        observation_types=observation_types,  # type: ignore[arg-type]
    )


def test_a_gatt_driver_registers_and_decodes_by_characteristic() -> None:
    # The built-in gatt.hrs claims the bare service already: a vendor narrows it by name.
    gatt = _GattDriver(gatt_info(match=(BleMatch(service_uuid=uuid16(0x180D), local_name="Acme"),)))
    registry = Registry(entry_points=[plugin("hr", gatt)])
    assert registry.get("acme.hr") is gatt
    result = registry.decode("acme.hr", b"\x48", {}, char="2A37")
    assert [r.as_dict()["observations"] for r in result.readings] == [
        [{"type": "heart_rate", "value": 72, "unit": "/min", "mdc": 147842, "loinc": "8867-4"}]
    ]
    with pytest.raises(InvalidDriverError, match="--char"):
        registry.decode("acme.hr", b"\x48", {})
    with pytest.raises(InvalidDriverError, match="does not use characteristic"):
        registry.decode("acme.hr", b"\x48", {}, char="2a38")
    with pytest.raises(InvalidDriverError, match="leave out --char"):
        registry.decode("contec.cms50d", b"", {}, char="2a37")
    with pytest.raises(DriverTransportError, match="Bluetooth LE driver"):
        registry.get_serial("acme.hr")
    (row,) = [d for d in registry.describe() if d.id == "acme.hr"]
    assert row.match == (f"ble service {uuid16(0x180D)}, name ~ 'Acme'",)
    assert row.characteristics == (f"{HR} hr (notify)",)


@pytest.mark.parametrize(
    ("info", "words"),
    [
        (gatt_info(match=(UsbMatch(0x0403, 0x6001),)), "BleMatch for a ble driver"),
        (gatt_info(characteristics=()), "must declare its characteristics"),
        (gatt_info(observation_types=("spo2",)), "'spo2' in observation_types is not an"),
    ],
)
def test_invalid_gatt_drivers_are_refused(info: DriverInfo, words: str) -> None:
    with pytest.raises(InvalidDriverError, match=words):
        validate_driver(_GattDriver(info))


def test_characteristic_names() -> None:
    assert characteristic_uuid("0x2A37") == HR
    assert characteristic_uuid(HR.upper()) == HR
    with pytest.raises(DecodeError, match="not a characteristic UUID"):
        characteristic_uuid("heart")


def _ble_driver(driver_id: str, *rules: BleMatch) -> _GattDriver:
    return _GattDriver(gatt_info(driver_id, match=rules))


def test_ble_advertisements_match_the_most_specific_rule() -> None:
    builtin = Registry(entry_points=())
    hr = uuid16(0x180D)
    assert builtin.get("gatt.hrs") is builtin.match_ble(service_uuids=[hr.upper()])
    assert builtin.match_ble(service_uuids=[uuid16(0x1822)]) is builtin.get("gatt.plx")
    # Companion services (battery, device information) claim no device on their own.
    assert builtin.match_ble(service_uuids=[uuid16(0x180F), uuid16(0x180A)]) is None
    with pytest.raises(AmbiguousMatchError, match=r"gatt\.hrs, gatt\.rscs"):
        builtin.match_ble(service_uuids=[hr, uuid16(0x1814)])  # a watch: HR and running

    vendor = _ble_driver(
        "acme.strap", BleMatch(service_uuid=hr, manufacturer_id=0x0059, data_prefix=b"\x01")
    )
    named = _ble_driver("acme.named", BleMatch(local_name=r"Polar H\d"))
    registry = Registry(entry_points=[plugin("strap", vendor), plugin("named", named)])
    assert registry.match_ble(service_uuids=[hr], manufacturer_data={0x0059: b"\x01\x02"}) is vendor
    assert registry.match_ble(service_uuids=[hr], manufacturer_data={0x0059: b"\x02"}) is (
        registry.get("gatt.hrs")
    )
    assert registry.match_ble(local_name="Polar H10") is named
    assert registry.match_ble(local_name="Garmin") is None
    assert registry.match_ble() is None


def test_a_plugin_claiming_another_drivers_exact_rule_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.hub.registry")
    ftdi = UsbMatch(0x0403, 0x6015)
    registry = Registry(
        entry_points=[
            plugin("a", driver("acme.meter", ftdi), "pkg-a"),
            plugin("b", driver("other.meter", ftdi), "pkg-b"),
            plugin("c", driver("other.flowmeter", UsbMatch(0x0403, 0x6015, "Flow")), "pkg-c"),
        ]
    )
    assert "acme.meter" in registry
    assert "other.meter" not in registry  # the same claim: a second one would be a coin toss
    assert "other.flowmeter" in registry  # a more specific claim is fine
    assert "already claimed by acme.meter" in caplog.text
    assert [p.name for p in registry.problems] == ["other.meter"]
