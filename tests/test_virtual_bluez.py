"""The virtual BlueZ driven by the real bleak over a private D-Bus bus (no mocks of bleak).

bleak's BlueZ backend always uses the system bus, so `DBUS_SYSTEM_BUS_ADDRESS` is the only seam.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakError
from dbus_fast import BusType, Message, Variant
from dbus_fast.aio import MessageBus

from gateway.drivers.gatt_hrs import DRIVER as HRS_DRIVER
from gateway.sdk import uuid16
from gateway.sim.bluez import BluezThread, CharSpec, VirtualPeripheral
from tests.blelab import bleak_session, disconnect_bus, needs_dbus

pytestmark = needs_dbus

HRS = uuid16(0x180D)
HR_MEASUREMENT = uuid16(0x2A37)
BODY_SENSOR_LOCATION = uuid16(0x2A38)
STRAP = "C0:FF:EE:00:00:01"
NAMELESS = "C0:FF:EE:00:00:02"


def _strap() -> VirtualPeripheral:
    return VirtualPeripheral(
        STRAP, "HR Strap",
        services={HRS: {HR_MEASUREMENT: CharSpec(("notify",)),
                        BODY_SENSOR_LOCATION: CharSpec(("read",), b"\x01")}},
        manufacturer_data={0x0059: b"\x01\x02\x03"}, service_uuids=[HRS], rssi=-55)


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


def test_nothing_is_reported_without_a_discovery(bluez: BluezThread) -> None:
    async def run() -> object:
        async with bleak_session():
            await bluez.add_peripheral(_strap())
            await asyncio.sleep(0.2)
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                reply = await bus.call(Message(
                    destination="org.bluez", path="/", member="GetManagedObjects",
                    interface="org.freedesktop.DBus.ObjectManager"))
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
        reply = await bus.call(Message(destination="org.bluez", path="/org/bluez/hci0",
                                       interface="org.bluez.Adapter1", member=member))
        assert reply is not None
        return reply.error_name

    async def run() -> list[str | None]:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            return [await call(bus, "StartDiscovery"), await call(bus, "StartDiscovery"),
                    await call(bus, "StopDiscovery"), await call(bus, "StopDiscovery")]
        finally:
            await disconnect_bus(bus)

    assert asyncio.run(run()) == [None, "org.bluez.Error.InProgress", None,
                                  "org.bluez.Error.Failed"]


def test_client_reads_and_receives_heart_rate_notifications_end_to_end(
        bluez: BluezThread) -> None:
    strap = _strap()
    # Flags 0x10: 8-bit rate with RR intervals; 72 bpm, RR 1024/1024 s and 512/1024 s.
    measurement = bytes([0x10, 72, 0x00, 0x04, 0x00, 0x02])

    async def run() -> tuple[list[str], bytes, list[bytes], float]:
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
            started = time.monotonic()
            async with BleakClient(device, timeout=5) as client:
                connect_seconds = time.monotonic() - started
                chars = sorted(c.uuid for s in client.services for c in s.characteristics)
                location = bytes(await client.read_gatt_char(BODY_SENSOR_LOCATION))
                await client.start_notify(HR_MEASUREMENT, on_notify)
                await bluez.notify(strap, HR_MEASUREMENT, measurement)
                await bluez.notify(strap, HR_MEASUREMENT, measurement)
                async with asyncio.timeout(5):
                    await got_two.wait()
                await client.stop_notify(HR_MEASUREMENT)
            assert not client.is_connected
        return chars, location, received, connect_seconds

    chars, location, received, connect_seconds = asyncio.run(run())

    assert chars == sorted([HR_MEASUREMENT, BODY_SENSOR_LOCATION])
    assert location == b"\x01"
    assert received == [measurement, measurement]
    assert connect_seconds < 2
    decoder = HRS_DRIVER.gatt_decoder({})
    readings = decoder.value(HR_MEASUREMENT, received[0]).readings
    assert [(o.type, o.value) for o in readings[0].observations] == [
        ("heart_rate", 72), ("rr_interval", 1.0), ("rr_interval", 0.5)]


def test_adapter_powered_off_makes_bleak_report_bluetooth_unavailable(bluez: BluezThread) -> None:
    async def run() -> None:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        try:
            reply = await bus.call(Message(
                destination="org.bluez", path="/org/bluez/hci0", member="Set",
                interface="org.freedesktop.DBus.Properties", signature="ssv",
                body=["org.bluez.Adapter1", "Powered", Variant("b", False)]))
            assert reply is not None
            assert reply.error_name is None
        finally:
            await disconnect_bus(bus)
        async with bleak_session():
            with pytest.raises(BleakBluetoothNotAvailableError):
                await BleakScanner.discover(0.1)

    asyncio.run(run())


async def _found(address: str) -> BLEDevice:
    device = await BleakScanner.find_device_by_address(address, timeout=5)
    assert device is not None
    return device


def test_le_connection_abort_by_local_is_retried_inside_bleak_connect(bluez: BluezThread) -> None:
    # BlueZ >= 5.62 toggles Connected before this error; bleak waits for Connected=False and
    # retries within one connect() call, so the caller never sees the error.
    strap = _strap()
    strap.fail_connects(2)
    disconnects: list[float] = []

    async def run() -> None:
        async with bleak_session():
            await bluez.add_peripheral(strap)
            client = BleakClient(await _found(STRAP), lambda _c: disconnects.append(0.0),
                                 timeout=5)
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
        bluez: BluezThread) -> None:
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
        bluez: BluezThread) -> None:
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
        bluez: BluezThread) -> None:
    strap = _strap()
    measurement = bytes([0x00, 70])

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
                await bluez.notify(strap, HR_MEASUREMENT, measurement)
                async with asyncio.timeout(5):
                    await got.wait()
                await bluez.drop_link(strap)
                async with asyncio.timeout(5):
                    await lost.wait()
                assert not client.is_connected
                await bluez.notify(strap, HR_MEASUREMENT, measurement)  # dropped: no link
                await asyncio.sleep(0.2)
                assert after == []
                got.clear()
                # bleak 3.1 keeps the client's own bus open after a link loss until disconnect().
                await client.disconnect()
                await client.connect()
                assert client.is_connected
                await client.start_notify(HR_MEASUREMENT, on_notify)
                await bluez.notify(strap, HR_MEASUREMENT, measurement)
                async with asyncio.timeout(5):
                    await got.wait()
            finally:
                await client.disconnect()
        return before, after

    before, after = asyncio.run(run())
    assert before == [measurement]
    assert after == [measurement]


def test_a_vanished_device_is_no_longer_reported_and_cannot_be_connected(
        bluez: BluezThread) -> None:
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
                await asyncio.sleep(0.1)  # signals already in flight
                mark = len(reports)
                await asyncio.sleep(0.3)
                later = reports[mark:]
                assert STRAP not in later
                assert NAMELESS in later  # the scanner itself is still running
                assert STRAP not in {d.address for d in scanner.discovered_devices}
            # bleak knows from InterfacesRemoved that the object is gone and does not even call
            # Connect; a client racing the removal gets UnknownObject, BleakDeviceNotFoundError.
            with pytest.raises(BleakError, match="not found"):
                await BleakClient(stale, timeout=2).connect()
            assert await BleakScanner.find_device_by_address(STRAP, timeout=0.3) is None

    asyncio.run(run())
