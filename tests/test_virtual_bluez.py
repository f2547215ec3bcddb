"""The virtual BlueZ driven by the real bleak over a private D-Bus bus (no mocks of bleak).

bleak's BlueZ backend always uses the system bus, so `DBUS_SYSTEM_BUS_ADDRESS` is the only seam.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient, BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError
from dbus_fast import BusType, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from gateway.drivers.gatt_hrs import DRIVER as HRS_DRIVER
from gateway.sdk import uuid16
from gateway.sim.bluez import BluezThread, CharSpec, VirtualPeripheral
from gateway.sim.bluez_monitor import matches, parse_patterns
from gateway.sim.bluez_peripheral import advertising_data
from tests.blelab import OnAir, bleak_session, disconnect_bus, needs_dbus, virtual_lab
from tests.harness import until

pytestmark = needs_dbus

HRS = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
BATTERY = uuid16(0x180F)
NORDIC_UART = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
ADAPTER1 = "org.bluez.Adapter1"
DEVICE1 = "org.bluez.Device1"
MONITOR_MANAGER1 = "org.bluez.AdvertisementMonitorManager1"
MONITOR1 = "org.bluez.AdvertisementMonitor1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
STRAP = "C0:FF:EE:00:00:01"
NAMELESS = "C0:FF:EE:00:00:02"
OTHER = "C0:FF:EE:00:00:03"
BLUEZ_OWNER_CHANGED = "type='signal',member='NameOwnerChanged',arg0='org.bluez'"
ADAPTER = "/org/bluez/hci0"
STRAP_PATH = f"{ADAPTER}/dev_C0_FF_EE_00_00_01"


def _strap() -> VirtualPeripheral:
    return VirtualPeripheral(
        STRAP,
        "HR Strap",
        services={
            HRS: {
                HR_MEASUREMENT: CharSpec(("notify",)),
                BODY_SENSOR_LOCATION: CharSpec(("read",), b"\x01"),
            }
        },
        manufacturer_data={0x0059: b"\x01\x02\x03"},
        service_uuids=[HRS],
        rssi=-55,
    )


async def _scan(seconds: float, *, until: int) -> dict[str, tuple[BLEDevice, AdvertisementData]]:
    seen: dict[str, tuple[BLEDevice, AdvertisementData]] = {}
    done = asyncio.Event()

    def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[device.address] = (device, adv)
        if len(seen) >= until:
            done.set()

    async with BleakScanner(on_advertisement):
        try:
            async with asyncio.timeout(seconds):
                await done.wait()
        except TimeoutError:
            pass
    return seen


def test_scanner_sees_advertisement_data_and_a_device_without_a_name(bluez: BluezThread) -> None:
    async def run() -> dict[str, tuple[BLEDevice, AdvertisementData]]:
        async with bleak_session():
            await bluez.add_peripheral(_strap())
            await bluez.add_peripheral(VirtualPeripheral(NAMELESS, rssi=-80))
            return await _scan(5, until=2)

    seen = asyncio.run(run())

    strap, adv = seen[STRAP]
    assert strap.name == "HR Strap"
    assert adv.local_name == "HR Strap"
    assert adv.manufacturer_data == {0x0059: b"\x01\x02\x03"}
    assert adv.service_uuids == [HRS]
    assert -60 <= adv.rssi <= -55
    nameless, nameless_adv = seen[NAMELESS]
    assert nameless.name is None
    assert nameless_adv.local_name is None
    assert -85 <= nameless_adv.rssi <= -80


def test_rssi_changes_while_advertising_so_bleak_keeps_reporting(bluez: BluezThread) -> None:
    async def run() -> set[int]:
        rssis: set[int] = set()
        three = asyncio.Event()

        def on_advertisement(_device: BLEDevice, adv: AdvertisementData) -> None:
            rssis.add(adv.rssi)
            if len(rssis) >= 3:
                three.set()

        async with bleak_session():
            await bluez.add_peripheral(_strap())
            async with BleakScanner(on_advertisement):
                async with asyncio.timeout(5):
                    await three.wait()
        return rssis

    assert len(asyncio.run(run())) >= 3


def test_nothing_is_reported_without_a_discovery(
    bluez: BluezThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_air = OnAir(bluez, monkeypatch)

    async def run() -> object:
        async with bleak_session():
            await bluez.add_peripheral(_strap())
            await on_air.more(4, STRAP)
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                reply = await bus.call(
                    Message(
                        destination="org.bluez",
                        path="/",
                        member="GetManagedObjects",
                        interface="org.freedesktop.DBus.ObjectManager",
                    )
                )
            finally:
                await disconnect_bus(bus)
            assert reply is not None
            return reply.body[0]

    objects = asyncio.run(run())
    assert isinstance(objects, dict)
    assert list(objects) == ["/org/bluez/hci0"]
    adapter = objects["/org/bluez/hci0"]["org.bluez.Adapter1"]
    assert adapter["Powered"] == Variant("b", True)
    assert adapter["Discovering"] == Variant("b", False)


def test_a_second_start_discovery_from_one_client_is_in_progress(bluez: BluezThread) -> None:
    async def call(bus: MessageBus, member: str) -> str | None:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path="/org/bluez/hci0",
                interface="org.bluez.Adapter1",
                member=member,
            )
        )
        assert reply is not None
        return reply.error_name

    async def run() -> list[str | None]:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            return [
                await call(bus, "StartDiscovery"),
                await call(bus, "StartDiscovery"),
                await call(bus, "StopDiscovery"),
                await call(bus, "StopDiscovery"),
            ]
        finally:
            await disconnect_bus(bus)

    assert asyncio.run(run()) == [
        None,
        "org.bluez.Error.InProgress",
        None,
        "org.bluez.Error.Failed",
    ]


def test_client_reads_and_receives_heart_rate_notifications_end_to_end(bluez: BluezThread) -> None:
    strap = _strap()
    # Flags 0x10: 8-bit rate with RR intervals; 72 bpm, RR 1024/1024 s and 512/1024 s.
    measurement = bytes([0x10, 72, 0x00, 0x04, 0x00, 0x02])

    async def run() -> tuple[list[str], bytes, list[bytes]]:
        received: list[bytes] = []
        got_two = asyncio.Event()

        def on_notify(_char: object, data: bytearray) -> None:
            received.append(bytes(data))
            if len(received) == 2:
                got_two.set()

        async with bleak_session():
            await bluez.add_peripheral(strap)
            device = await BleakScanner.find_device_by_address(STRAP, timeout=5)
            assert device is not None
            async with BleakClient(device, timeout=5) as client:
                chars = sorted(c.uuid for s in client.services for c in s.characteristics)
                location = bytes(await client.read_gatt_char(BODY_SENSOR_LOCATION))
                await client.start_notify(HR_MEASUREMENT, on_notify)
                await bluez.notify(strap, HR_MEASUREMENT, measurement)
                await bluez.notify(strap, HR_MEASUREMENT, measurement)
                async with asyncio.timeout(5):
                    await got_two.wait()
                await client.stop_notify(HR_MEASUREMENT)
            assert not client.is_connected
        return chars, location, received

    chars, location, received = asyncio.run(run())

    assert chars == sorted([HR_MEASUREMENT, BODY_SENSOR_LOCATION])
    assert location == b"\x01"
    assert received == [measurement, measurement]
    assert strap.connect_calls == 1  # connected at once: no retry, no timeout inside bleak
    decoder = HRS_DRIVER.gatt_decoder({})
    readings = decoder.value(HR_MEASUREMENT, received[0]).readings
    assert [(o.type, o.value) for o in readings[0].observations] == [
        ("heart_rate", 72),
        ("rr_interval", 1.0),
        ("rr_interval", 0.5),
    ]


def test_writing_powered_off_over_dbus_drops_links_and_bleak_reports_bluetooth_unavailable(
    bluez: BluezThread,
) -> None:
    async def set_powered(bus: MessageBus, value: bool) -> None:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path=ADAPTER,
                member="Set",
                interface="org.freedesktop.DBus.Properties",
                signature="ssv",
                body=["org.bluez.Adapter1", "Powered", Variant("b", value)],
            )
        )
        assert reply is not None
        assert reply.error_name is None

    async def until_bluetooth_unavailable() -> None:
        # Powering off, bluetoothd reports discovery and links down before the adapter itself
        # (the kernel's order); until bleak has read Powered=False, scans fail with NotReady.
        async with asyncio.timeout(5):
            while True:
                with pytest.raises((BleakBluetoothNotAvailableError, BleakDBusError)) as caught:
                    await BleakScanner.discover(0.1)
                if isinstance(caught.value, BleakBluetoothNotAvailableError):
                    return
                assert isinstance(caught.value, BleakDBusError)
                assert caught.value.dbus_error == "org.bluez.Error.NotReady"
                await asyncio.sleep(0.01)

    async def run() -> None:
        lost = asyncio.Event()
        async with bleak_session():
            await bluez.add_peripheral(_strap())
            client = BleakClient(await _found(STRAP), lambda _c: lost.set(), timeout=5)
            await client.connect()
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                await set_powered(bus, False)
                async with asyncio.timeout(5):
                    await lost.wait()
                await until_bluetooth_unavailable()
                await set_powered(bus, True)
            finally:
                await disconnect_bus(bus)
                await client.disconnect()
            assert (await _found_once_back(STRAP)).address == STRAP

    asyncio.run(run())


async def _found(address: str) -> BLEDevice:
    device = await BleakScanner.find_device_by_address(address, timeout=5)
    assert device is not None
    return device


async def _found_once_back(address: str) -> BLEDevice:
    """`_found` right after the adapter came back (powered on, bluetoothd restarted): until
    bleak has read that signal it raises BleakBluetoothNotAvailableError, so retry as a
    transport has to."""
    async with asyncio.timeout(5):
        while True:
            try:
                return await _found(address)
            except BleakBluetoothNotAvailableError:
                await asyncio.sleep(0.01)


def test_le_connection_abort_by_local_is_retried_inside_bleak_connect(bluez: BluezThread) -> None:
    # BlueZ >= 5.62 toggles Connected before this error; bleak waits for Connected=False and
    # retries within one connect() call, so the caller never sees the error.
    strap = _strap()
    strap.fail_connects(2)
    disconnects: list[float] = []

    async def run() -> None:
        async with bleak_session():
            await bluez.add_peripheral(strap)
            client = BleakClient(await _found(STRAP), lambda _c: disconnects.append(0.0), timeout=5)
            await client.connect()
            try:
                assert client.is_connected
                assert await client.read_gatt_char(BODY_SENSOR_LOCATION) == b"\x01"
            finally:
                await client.disconnect()

    asyncio.run(run())
    assert strap.connect_calls == 3
    assert len(disconnects) >= 2  # one per aborted attempt, as with the real BlueZ


def test_out_of_slots_connect_errors_reach_the_caller_then_connect_succeeds(
    bluez: BluezThread,
) -> None:
    strap = _strap()
    strap.fail_connects(2, "org.bluez.Error.Failed", "No available connection slots")

    async def run() -> list[str]:
        errors: list[str] = []
        async with bleak_session():
            await bluez.add_peripheral(strap)
            client = BleakClient(await _found(STRAP), timeout=5)
            for _ in range(2):
                with pytest.raises(BleakError) as caught:
                    await client.connect()
                errors.append(str(caught.value))
                assert not client.is_connected
            await client.connect()
            try:
                assert client.is_connected
            finally:
                await client.disconnect()
        return errors

    errors = asyncio.run(run())
    assert all("org.bluez.Error.Failed" in e and "available connection" in e for e in errors)
    assert strap.connect_calls == 3


def test_connect_delay_times_out_a_short_connect_and_a_longer_one_succeeds(
    bluez: BluezThread,
) -> None:
    strap = _strap()
    strap.connect_delay = 0.5

    async def run() -> float:
        async with bleak_session():
            await bluez.add_peripheral(strap)
            device = await _found(STRAP)
            with pytest.raises(TimeoutError):
                await BleakClient(device, timeout=0.2).connect()
            client = BleakClient(device, timeout=5)
            started = time.monotonic()
            # bleak's Disconnect cancelled the pending Connect, so this one calls Connect again.
            await client.connect()
            elapsed = time.monotonic() - started
            try:
                assert client.is_connected
            finally:
                await client.disconnect()
        return elapsed

    assert asyncio.run(run()) >= 0.45
    assert strap.connect_calls == 2


def test_link_loss_fires_disconnected_callback_stops_notifications_and_reconnects(
    bluez: BluezThread,
) -> None:
    strap = _strap()
    measurement = bytes([0x00, 70])
    marker = bytes([0x00, 71])

    async def run() -> tuple[list[bytes], list[bytes]]:
        before: list[bytes] = []
        after: list[bytes] = []
        lost = asyncio.Event()
        got = asyncio.Event()

        def on_notify(_char: object, data: bytearray) -> None:
            (after if lost.is_set() else before).append(bytes(data))
            got.set()

        async with bleak_session():
            await bluez.add_peripheral(strap)
            client = BleakClient(await _found(STRAP), lambda _c: lost.set(), timeout=5)
            await client.connect()
            try:
                await client.start_notify(HR_MEASUREMENT, on_notify)
                assert bluez.bluez.link_state(strap) == (True, frozenset({HR_MEASUREMENT}))
                await bluez.notify(strap, HR_MEASUREMENT, measurement)
                async with asyncio.timeout(5):
                    await got.wait()
                await bluez.drop_link(strap)
                async with asyncio.timeout(5):
                    await lost.wait()
                assert not client.is_connected
                assert bluez.bluez.link_state(strap) == (False, frozenset())
                await bluez.notify(strap, HR_MEASUREMENT, measurement)  # dropped: no link
                got.clear()
                # bleak 3.1 keeps the client's own bus open after a link loss until disconnect().
                await client.disconnect()
                await client.connect()
                assert client.is_connected
                await client.start_notify(HR_MEASUREMENT, on_notify)
                # The marker comes after the dropped value on the same path: once it arrived,
                # the dropped one would have too.
                await bluez.notify(strap, HR_MEASUREMENT, marker)
                await until(lambda: marker in after, timeout=5)
            finally:
                await client.disconnect()
        return before, after

    before, after = asyncio.run(run())
    assert before == [measurement]
    assert after == [marker]


def test_a_vanished_device_is_no_longer_reported_and_cannot_be_connected(
    bluez: BluezThread,
) -> None:
    strap = _strap()

    async def run() -> None:
        reports: list[str] = []
        both = asyncio.Event()

        def on_advertisement(device: BLEDevice, _adv: AdvertisementData) -> None:
            reports.append(device.address)
            if {STRAP, NAMELESS} <= set(reports):
                both.set()

        async with bleak_session():
            await bluez.add_peripheral(strap)
            await bluez.add_peripheral(VirtualPeripheral(NAMELESS, rssi=-80))
            async with BleakScanner(on_advertisement) as scanner:
                async with asyncio.timeout(5):
                    await both.wait()
                stale = next(d for d in scanner.discovered_devices if d.address == STRAP)
                await bluez.vanish(strap)
                # InterfacesRemoved comes after every report bluetoothd sent for the strap
                # (one connection, in order): once bleak has it, none is in flight.
                await until(lambda: STRAP not in {d.address for d in scanner.discovered_devices})
                mark = len(reports)
                # The scanner itself is still running: the other device is heard again.
                await until(lambda: reports[mark:].count(NAMELESS) >= 3)
                later = reports[mark:]
                assert STRAP not in later
                assert NAMELESS in later
            # bleak knows from InterfacesRemoved that the object is gone and does not even call
            # Connect; a client racing the removal gets UnknownObject, BleakDeviceNotFoundError.
            with pytest.raises(BleakError, match="not found"):
                await BleakClient(stale, timeout=2).connect()
            assert await BleakScanner.find_device_by_address(STRAP, timeout=0.3) is None

    asyncio.run(run())


# --- adapter power, bluetoothd restarts, passive scanning, changing advertisements, slots ---


def _other() -> VirtualPeripheral:
    """Advertises under another company id than the strap (Apple's), for pattern misses."""
    return VirtualPeripheral(OTHER, "Other", manufacturer_data={0x004C: b"\x02\x15"}, rssi=-70)


async def _bluez_call(
    bus: MessageBus,
    path: str,
    interface: str,
    member: str,
    *,
    signature: str = "",
    body: list[Any] | None = None,
) -> Message:
    reply = await bus.call(
        Message(
            destination="org.bluez",
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    assert reply is not None
    return reply


async def _add_match(bus: MessageBus, rule: str) -> None:
    reply = await bus.call(
        Message(
            destination="org.freedesktop.DBus",
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            member="AddMatch",
            signature="s",
            body=[rule],
        )
    )
    assert reply is not None
    assert reply.error_name is None


def test_power_cycle_drops_links_and_sessions_then_scanning_and_connecting_work_again(
    bluez: BluezThread,
) -> None:
    async def run() -> list[str | None]:
        lost = asyncio.Event()
        async with bleak_session():
            await bluez.add_peripheral(_strap())
            client = BleakClient(await _found(STRAP), lambda _c: lost.set(), timeout=5)
            await client.connect()
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                assert (
                    await _bluez_call(bus, ADAPTER, ADAPTER1, "StartDiscovery")
                ).error_name is None
                assert bluez.bluez.discovering
                await bluez.set_powered(False)
                async with asyncio.timeout(5):
                    await lost.wait()
                assert not client.is_connected
                assert not bluez.bluez.discovering
                refused = [
                    (await _bluez_call(bus, ADAPTER, ADAPTER1, member)).error_name
                    for member in ("StartDiscovery", "StopDiscovery")
                ]
                refused.append((await _bluez_call(bus, STRAP_PATH, DEVICE1, "Connect")).error_name)
                await bluez.set_powered(True)
                # The discovery session ended with the power: there is nothing left to stop.
                stop = await _bluez_call(bus, ADAPTER, ADAPTER1, "StopDiscovery")
                assert (stop.error_name, stop.body) == (
                    "org.bluez.Error.Failed",
                    ["No discovery started"],
                )
            finally:
                await disconnect_bus(bus)
                await client.disconnect()
            async with BleakClient(await _found_once_back(STRAP), timeout=5) as again:
                assert await again.read_gatt_char(BODY_SENSOR_LOCATION) == b"\x01"
        return refused

    assert asyncio.run(run()) == ["org.bluez.Error.NotReady"] * 3


def test_bluetoothd_restart_removes_everything_disconnects_clients_and_comes_back(
    bluez: BluezThread,
) -> None:
    async def run() -> list[tuple[str, list[Any]]]:
        signals: list[tuple[str, list[Any]]] = []
        lost = asyncio.Event()

        def record(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member in (
                "InterfacesRemoved",
                "NameOwnerChanged",
            ):
                signals.append((msg.member, list(msg.body)))

        async with bleak_session():
            await bluez.add_peripheral(_strap())
            client = BleakClient(await _found(STRAP), lambda _c: lost.set(), timeout=5)
            await client.connect()
            watcher = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                watcher.add_message_handler(record)
                await _add_match(watcher, BLUEZ_OWNER_CHANGED)
                await _add_match(watcher, "type='signal',member='InterfacesRemoved'")
                await bluez.restart_daemon(0.05)
                async with asyncio.timeout(5):
                    await lost.wait()
                assert not client.is_connected
                # A new scan works as soon as bleak has seen the adapter come back; the device
                # is back because it advertised during that scan.
                async with BleakClient(await _found_once_back(STRAP), timeout=5) as again:
                    assert await again.read_gatt_char(BODY_SENSOR_LOCATION) == b"\x01"
            finally:
                await disconnect_bus(watcher)
                await client.disconnect()
        return signals

    signals = asyncio.run(run())
    gone = next(i for i, (member, _) in enumerate(signals) if member == "NameOwnerChanged")
    removed = [body[0] for member, body in signals[:gone] if member == "InterfacesRemoved"]
    assert removed[-2:] == [STRAP_PATH, ADAPTER]  # the GATT objects went first, with the link
    assert f"{STRAP_PATH}/service0001" in removed
    name, old_owner, new_owner = signals[gone][1]
    assert (name, new_owner) == ("org.bluez", "")
    back = next(body for member, body in signals[gone + 1 :] if member == "NameOwnerChanged")
    assert back[:2] == ["org.bluez", ""]
    assert back[2] not in ("", old_owner)  # a new process, a new connection


def test_a_scanner_running_across_a_bluetoothd_restart_goes_deaf_and_fails_to_stop(
    bluez: BluezThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_air = OnAir(bluez, monkeypatch)

    async def run() -> tuple[list[str], BleakDBusError]:
        reports: list[str] = []
        async with bleak_session():
            await bluez.add_peripheral(_strap())
            scanner = BleakScanner(lambda device, _adv: reports.append(device.address))
            await scanner.start()
            await until(lambda: len(reports) >= 2)
            await bluez.restart_daemon()
            await on_air.more(2)  # reports sent before the restart are delivered meanwhile
            mark = len(reports)
            await on_air.more(6)
            # bluetoothd forgot the session: nothing is heard and StopDiscovery is refused.
            with pytest.raises(BleakDBusError) as caught:
                await scanner.stop()
        return reports[mark:], caught.value

    after, error = asyncio.run(run())
    assert after == []
    assert error.dbus_error == "org.bluez.Error.Failed"
    assert "No discovery started" in str(error)


def test_a_crashed_bluetoothd_only_loses_its_name_and_bleak_keeps_a_stale_connection(
    bluez: BluezThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_air = OnAir(bluez, monkeypatch)

    # bleak learns of a disconnect only from Connected=False; a crash sends nothing but
    # NameOwnerChanged, so a transport has to watch org.bluez's owner itself.
    async def run() -> tuple[list[tuple[str, list[Any]]], bool, bool, BleakDBusError, bool]:
        signals: list[tuple[str, list[Any]]] = []
        lost = asyncio.Event()

        def record(msg: Message) -> None:
            if msg.message_type is MessageType.SIGNAL and msg.member in (
                "InterfacesRemoved",
                "NameOwnerChanged",
                "PropertiesChanged",
            ):
                signals.append((msg.member, list(msg.body)))

        async with bleak_session():
            await bluez.add_peripheral(_strap())
            client = BleakClient(await _found(STRAP), lambda _c: lost.set(), timeout=5)
            await client.connect()
            watcher = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                watcher.add_message_handler(record)
                await _add_match(watcher, BLUEZ_OWNER_CHANGED)
                await _add_match(watcher, "type='signal',sender='org.bluez'")
                await bluez.stop_daemon(graceful=False)
                await until(lambda: bool(signals))
                await on_air.more(4)  # time for any other signal the crash might have sent
                crash = list(signals)
                stale = (client.is_connected, lost.is_set())
                # Nobody answers the Disconnect; bleak still drops the client (and its bus).
                with pytest.raises(BleakDBusError) as caught:
                    await client.disconnect()
                assert not client.is_connected
                await bluez.start_daemon()
                found = await _found_once_back(STRAP) is not None
            finally:
                await disconnect_bus(watcher)
        return crash, *stale, caught.value, found

    signals, still_connected, told, error, found = asyncio.run(run())
    assert [member for member, _ in signals] == ["NameOwnerChanged"]
    assert signals[0][1][0] == "org.bluez"
    assert signals[0][1][2] == ""
    assert still_connected
    assert not told
    assert error.dbus_error == "org.freedesktop.DBus.Error.ServiceUnknown"
    assert found


def test_passive_scanner_sees_matching_advertisements_without_any_discovery(
    bluez: BluezThread,
) -> None:
    async def run() -> tuple[dict[str, list[AdvertisementData]], list[bool]]:
        seen: dict[str, list[AdvertisementData]] = {}
        discovering: list[bool] = []

        def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
            seen.setdefault(device.address, []).append(adv)
            discovering.append(bluez.bluez.discovering)

        company_0059 = OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x59\x00")
        async with bleak_session():
            await bluez.add_peripheral(_strap())
            await bluez.add_peripheral(_other())
            async with BleakScanner(
                on_advertisement, scanning_mode="passive", bluez={"or_patterns": [company_0059]}
            ):
                await until(lambda: len(seen.get(STRAP, [])) >= 3)
                # Both advertise at the same interval: with three more from the strap heard,
                # the other one would have been heard too, were it let through.
                heard = len(seen[STRAP])
                await until(lambda: len(seen[STRAP]) >= heard + 3)
        return seen, discovering

    seen, discovering = asyncio.run(run())
    assert set(seen) == {STRAP}
    assert seen[STRAP][0].manufacturer_data == {0x0059: b"\x01\x02\x03"}
    assert seen[STRAP][0].local_name == "HR Strap"
    assert discovering
    assert not any(discovering)


def test_monitor_protocol_activate_found_once_lost_and_release_of_an_invalid_monitor(
    bluez: BluezThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_air = OnAir(bluez, monkeypatch)
    # A client written against the BlueZ documentation rather than bleak: it serves its own
    # ObjectManager and answers the calls bluetoothd makes to its monitors.
    strap = _strap()
    root, good, bad = "/rtm/app", "/rtm/app/good", "/rtm/app/bad"
    objects = {
        good: {
            MONITOR1: {
                "Type": Variant("s", "or_patterns"),
                "Patterns": Variant("a(yyay)", [[0, 0xFF, b"\x59\x00"]]),
            }
        },
        # 30 + 2 bytes does not fit in 31 bytes of advertising data: bluetoothd refuses it.
        bad: {
            MONITOR1: {
                "Type": Variant("s", "or_patterns"),
                "Patterns": Variant("a(yyay)", [[30, 0xFF, b"\x59\x00"]]),
            }
        },
    }

    async def monitor_call(bus: MessageBus, member: str) -> Message:
        return await _bluez_call(bus, ADAPTER, MONITOR_MANAGER1, member, signature="o", body=[root])

    async def run() -> tuple[list[str | None], list[tuple[Any, ...]], list[str], bool]:
        calls: list[tuple[Any, ...]] = []

        def serve(msg: Message) -> Message | bool:
            if msg.message_type is not MessageType.METHOD_CALL:
                return False
            if msg.member == "GetManagedObjects" and msg.path == root:
                return Message.new_method_return(msg, "a{oa{sa{sv}}}", [objects])
            if msg.interface != MONITOR1:
                return False
            calls.append((msg.member, msg.path, *msg.body))
            return bool(msg.flags & MessageFlag.NO_REPLY_EXPECTED) or Message.new_method_return(msg)

        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            bus.add_message_handler(serve)
            await bluez.add_peripheral(strap)
            await bluez.add_peripheral(_other())
            replies = [(await monitor_call(bus, "RegisterMonitor")).error_name for _ in range(2)]
            await until(lambda: any(c[0] == "DeviceFound" for c in calls))
            # More advertisements from both: no second DeviceFound, none for OTHER.
            await on_air.more(3, STRAP)
            await on_air.more(3, OTHER)
            paths = sorted(
                (await _bluez_call(bus, "/", OBJECT_MANAGER, "GetManagedObjects")).body[0]
            )
            discovering = bluez.bluez.discovering
            await bluez.vanish(strap)
            await until(lambda: any(c[0] == "DeviceLost" for c in calls))
            replies += [(await monitor_call(bus, "UnregisterMonitor")).error_name for _ in range(2)]
        finally:
            await disconnect_bus(bus)
        return replies, calls, paths, discovering

    replies, calls, paths, discovering = asyncio.run(run())
    assert replies == [None, "org.bluez.Error.AlreadyExists", None, "org.bluez.Error.DoesNotExist"]
    assert sorted(calls[:2]) == [("Activate", good), ("Release", bad)]
    assert calls[2:] == [("DeviceFound", good, STRAP_PATH), ("DeviceLost", good, STRAP_PATH)]
    assert paths == [ADAPTER, STRAP_PATH]  # OTHER never matched, so no object for it
    assert not discovering


@pytest.mark.parametrize(
    ("pattern", "hit"),
    [
        # (start position, AD type, content), the order of BlueZ's Patterns and bleak's OrPattern
        ((0, 0xFF, b"\x59\x00"), True),  # the company id, little-endian, comes first
        ((2, 0xFF, b"\x01\x02\x03"), True),
        ((0, 0xFF, b"\x00\x59"), False),
        ((3, 0xFF, b"\x02\x03\x04"), False),  # runs past the end of the data
        ((0, 0x16, b"\x0f\x18\x64"), True),  # Battery service data: UUID LE, then 100 %
        ((0, 0x09, b"HR St"), True),
        ((0, 0x08, b"HR St"), False),  # the name goes out complete (0x09), never shortened
        ((0, 0x03, b"\x0d\x18"), True),  # Heart Rate in the 16-bit UUID list
        ((0, 0x07, b"\x9e\xca\xdc\x24"), True),  # the Nordic UART UUID, little-endian
        ((0, 0x01, b"\x06"), True),  # flags: LE General Discoverable, no BR/EDR
    ],
)
def test_monitor_patterns_match_the_advertisement_as_it_goes_on_air(
    pattern: tuple[int, int, bytes], hit: bool
) -> None:
    peripheral = VirtualPeripheral(
        STRAP,
        "HR Strap",
        manufacturer_data={0x0059: b"\x01\x02\x03"},
        service_data={BATTERY: b"\x64"},
        service_uuids=[HRS, NORDIC_UART],
    )
    patterns = parse_patterns([list(pattern)])
    assert patterns is not None
    assert matches(patterns, advertising_data(peripheral)) is hit


@pytest.mark.parametrize(
    "patterns",
    [
        [],
        [[0, 0xFF, b""]],
        [[30, 0xFF, b"\x59\x00"]],
        [[0, 0x50, b"\x01"]],
        [[0, 0x00, b"\x01"]],
    ],
)
def test_monitor_patterns_bluetoothd_would_refuse_are_refused(patterns: list[Any]) -> None:
    assert parse_patterns(patterns) is None


def test_a_changed_advertisement_reaches_a_running_scanner_as_bluetoothd_merges_it(
    bluez: BluezThread,
) -> None:
    strap = _strap()
    nameless = VirtualPeripheral(NAMELESS, rssi=-80)

    async def run() -> dict[str, list[tuple[str | None, AdvertisementData]]]:
        reports: dict[str, list[tuple[str | None, AdvertisementData]]] = {}

        def on_advertisement(device: BLEDevice, adv: AdvertisementData) -> None:
            reports.setdefault(device.address, []).append((device.name, adv))

        def last(address: str) -> AdvertisementData:
            return reports[address][-1][1]

        async with bleak_session():
            await bluez.add_peripheral(strap)
            await bluez.add_peripheral(nameless)
            async with BleakScanner(on_advertisement):
                await until(lambda: set(reports) == {STRAP, NAMELESS})
                await bluez.set_advertisement(
                    strap, name="HR Strap 2", manufacturer_data={0x0059: b"\x09"}
                )
                await bluez.set_advertisement(nameless, name="Scale", rssi=-50)
                await until(
                    lambda: (
                        last(STRAP).local_name == "HR Strap 2"
                        and last(NAMELESS).local_name == "Scale"
                    )
                )
                # A key no longer advertised stays in Device1, as bluetoothd keeps it.
                await bluez.set_advertisement(strap, manufacturer_data={0x00E0: b"\x01"})
                await until(lambda: 0x00E0 in last(STRAP).manufacturer_data)
        return reports

    reports = asyncio.run(run())
    assert reports[STRAP][0][1].local_name == "HR Strap"
    assert reports[NAMELESS][0][0] is None
    renamed = next(r for r in reports[STRAP] if r[1].local_name == "HR Strap 2")
    assert renamed[0] == "HR Strap 2"  # BLEDevice.name follows (Alias changed too)
    assert renamed[1].manufacturer_data == {0x0059: b"\x09"}
    name, adv = reports[NAMELESS][-1]
    assert (name, adv.local_name) == ("Scale", "Scale")
    assert -55 <= adv.rssi <= -50
    assert reports[STRAP][-1][1].manufacturer_data == {0x0059: b"\x09", 0x00E0: b"\x01"}
    assert reports[STRAP][-1][1].service_uuids == [HRS]


def test_a_muted_scanner_keeps_discovering_but_hears_nothing_until_discovery_restarts(
    bluez: BluezThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_air = OnAir(bluez, monkeypatch)

    async def run() -> tuple[list[str], bool, BLEDevice | None]:
        reports: list[str] = []
        async with bleak_session():
            await bluez.add_peripheral(_strap())
            async with BleakScanner(lambda device, _adv: reports.append(device.address)):
                await until(lambda: len(reports) >= 2)
                await bluez.mute_scanner()
                await on_air.more(2)  # reports sent before the mute are delivered meanwhile
                mark = len(reports)
                await on_air.more(8)
                silent = reports[mark:]
                discovering = bluez.bluez.discovering
            # Leaving the scanner sent StopDiscovery; the next scan's StartDiscovery hears again.
            again = await BleakScanner.find_device_by_address(STRAP, timeout=5)
        return silent, discovering, again

    silent, discovering, again = asyncio.run(run())
    assert silent == []
    assert discovering
    assert again is not None


def _cuff(index: int) -> VirtualPeripheral:
    return VirtualPeripheral(
        f"C0:FF:EE:00:01:{index:02X}",
        f"Cuff {index}",
        services={HRS: {BODY_SENSOR_LOCATION: CharSpec(("read",), b"\x01")}},
    )


async def _fill_slots(bluez: BluezThread, slots: int) -> BleakDBusError:
    """Connect `slots` peripherals, fail one more, free a slot, then connect that one."""
    cuffs = [_cuff(i) for i in range(slots + 1)]
    async with bleak_session():
        for cuff in cuffs:
            await bluez.add_peripheral(cuff)
        found = await _scan(5, until=len(cuffs))
        clients = [BleakClient(found[c.address][0], timeout=5) for c in cuffs]
        try:
            for client in clients[:slots]:
                await client.connect()
            with pytest.raises(BleakDBusError) as caught:
                await clients[slots].connect()
            assert not clients[slots].is_connected
            await clients[0].disconnect()
            await clients[slots].connect()
            assert await clients[slots].read_gatt_char(BODY_SENSOR_LOCATION) == b"\x01"
        finally:
            for client in clients:
                await client.disconnect()
    return caught.value


def test_a_sixth_connection_finds_no_free_slot_until_one_is_released(bluez: BluezThread) -> None:
    error = asyncio.run(_fill_slots(bluez, 5))  # the default, as on typical controllers
    assert error.dbus_error == "org.bluez.Error.Failed"
    # bleak-retry-connector treats messages with "available connection" as out of slots.
    assert "No available connection slots" in str(error)


@pytest.fixture
def one_slot_bluez(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[BluezThread]:
    with virtual_lab(monkeypatch, tmp_path, max_connections=1) as handle:
        yield handle


def test_max_connections_sets_the_number_of_slots(one_slot_bluez: BluezThread) -> None:
    error = asyncio.run(_fill_slots(one_slot_bluez, 1))
    assert "No available connection slots" in str(error)
