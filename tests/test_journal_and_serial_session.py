"""The journal (sign, chain, group-commit, cap) and device sessions, with the real outbox,
signer, drivers and pseudo-terminals."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import tty
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.app import SerialOpener
from gateway.drivers import contec_cms50d
from gateway.hub.config import DeviceConfig
from gateway.hub.identity import HubIdentity, load_public_jwk
from gateway.hub.journal import Journal
from gateway.hub.jws import verify_entry
from gateway.hub.outbox import Outbox
from gateway.hub.signer import ChainHead, Signer
from gateway.sdk import DriverInfo, FeedResult, Observation, Reading, SerialSession
from gateway.sessions.serial import DeviceSession
from gateway.sim.cms50d import encode_frame

DEVICE = {
    "id": "oximeter",
    "driver": "contec.cms50d",
    "driver_version": "1.0.0",
    "address": "/dev/ttyUSB0",
}


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(tmp_path / "outbox.sqlite", max_rows=100)
    try:
        yield box
    finally:
        box.close()


def journal_for(outbox: Outbox, clock: Any = None) -> tuple[Journal, Any]:
    identity = HubIdentity.generate()
    signer = Signer(identity, "hub-t", ChainHead(*outbox.head()))
    kwargs = {"clock": clock} if clock else {}
    journal = Journal(outbox, signer, on_commit=lambda: None, commit_interval=0, **kwargs)
    return journal, load_public_jwk(identity.public_jwk())


def payloads(outbox: Outbox, key: Any) -> list[dict[str, Any]]:
    return [verify_entry(e.body, key) for e in outbox.lease(0, 10_000)]


def reading(spo2: float | None) -> Reading:
    return Reading((Observation.known("spo2", spo2),), raw=b"\x01\x02", status={"ok": True})


def test_readings_are_signed_chained_and_committed_with_device_counters(outbox: Outbox) -> None:
    journal, key = journal_for(outbox)
    journal.event("hub-started", {"version": "t"})
    for value in (97, 96, 0):  # 0 is a value, kept as one
        journal.submit(DEVICE, "oximeter", "pt-1", reading(value), time.time())
    assert journal.commit_once()
    entries = payloads(outbox, key)
    assert [p["seq"] for p in entries] == [1, 2, 3, 4]
    assert entries[0]["event"] == "hub-started"
    assert [p["observations"][0]["value"] for p in entries[1:]] == [97, 96, 0]
    first = entries[1]
    assert first["device"] == DEVICE
    assert first["patient"] == "pt-1"
    assert first["raw"] == base64.b64encode(b"\x01\x02").decode()
    assert first["time"]["hub"].endswith("Z")
    assert outbox.head()[0] == 4
    stats = outbox.devices()["oximeter"]
    assert stats.readings == 3


def test_a_value_json_cannot_carry_becomes_a_rejected_event(outbox: Outbox) -> None:
    journal, key = journal_for(outbox)
    journal.submit(DEVICE, "oximeter", "pt-1", reading(float("nan")), time.time())
    journal.submit(DEVICE, "oximeter", "pt-1", reading(95), time.time())
    assert journal.commit_once()
    first, second = payloads(outbox, key)
    assert first["kind"] == "event"
    assert first["event"] == "reading-rejected"
    assert first["detail"]["raw"] == base64.b64encode(b"\x01\x02").decode()
    assert second["observations"][0]["value"] == 95
    assert second["seq"] == 2


def test_a_clock_change_is_a_signed_event(outbox: Outbox) -> None:
    states = iter(["unsynced", "unsynced", "synced"])
    journal, key = journal_for(outbox, clock=lambda: next(states))
    for _ in range(3):
        journal.submit(DEVICE, "oximeter", "pt-1", reading(97), time.time())
        assert journal.commit_once()
    entries = payloads(outbox, key)
    changes = [p for p in entries if p.get("event") == "clock-changed"]
    assert [c["detail"] for c in changes] == [{"from": "unsynced", "to": "synced"}]
    assert [p["time"]["hub_clock"] for p in entries if p["kind"] == "reading"] == [
        "unsynced",
        "unsynced",
        "synced",
    ]


def test_the_cap_drops_oldest_readings_with_gap_events_and_keeps_events(outbox: Outbox) -> None:
    journal, key = journal_for(outbox)
    journal.event("hub-started", {})
    for index in range(300):
        journal.submit(DEVICE, "oximeter", "pt-1", reading(90 + index % 10), time.time())
        if index % 7 == 0:
            assert journal.commit_once()
    while journal.pending:
        assert journal.commit_once()
    assert outbox.depth() <= 100
    kept = payloads(outbox, key)
    gaps = [p for p in kept if p.get("event") == "gap"]
    assert gaps, "drops must be announced"
    assert kept[0]["event"] == "hub-started"  # events are never dropped
    announced = {
        s for g in gaps for s in range(g["detail"]["first_seq"], g["detail"]["last_seq"] + 1)
    }
    present = {p["seq"] for p in kept}
    assert set(range(1, outbox.head()[0] + 1)) <= announced | present


def run_session(
    tmp_path: Path, driver: Any, chunks: list[bytes], seconds: float, interval: float = 0.25
) -> tuple[DeviceSession, Journal, Outbox, float]:
    """Feed `chunks` evenly over about `seconds`; returns the session, its journal and outbox,
    and how long the stream really lasted (longer than planned on a loaded machine)."""
    master, slave = os.openpty()
    device = DeviceConfig(
        id="dev",
        driver=driver.info.id,
        patient="pt-1",
        port=os.ttyname(slave),
        summary_interval=interval,
    )
    outbox = Outbox.open(tmp_path / "outbox.sqlite")
    journal, _ = journal_for(outbox)
    session = DeviceSession(device, driver, driver.info.serial, SerialOpener(), journal)

    async def scenario() -> float:
        task = asyncio.create_task(session.run())
        await asyncio.sleep(0.2)
        started = time.monotonic()
        for chunk in chunks:
            os.write(master, chunk)
            await asyncio.sleep(seconds / len(chunks))
        await asyncio.sleep(0.1)
        lasted = time.monotonic() - started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while journal.pending:
            journal.commit_once()
        return lasted

    try:
        lasted = asyncio.run(scenario())
    finally:
        os.close(master)
        os.close(slave)
    return session, journal, outbox, lasted


def test_a_60_hz_stream_becomes_one_reading_per_interval(tmp_path: Path) -> None:
    frames = [encode_frame(spo2=97, pulse_rate=70)] * 90  # 1.5 s at 60 Hz
    session, _, outbox, lasted = run_session(tmp_path, contec_cms50d.DRIVER, frames, 1.5, 0.25)
    try:
        # About one reading per 0.25 s interval of the stream as it really ran (1.5 s + 0.1 s
        # unless the machine is loaded): not one per frame, and none missing.
        assert 4 <= session.readings <= lasted / 0.25 + 2, (session.readings, lasted)
        assert outbox.devices()["dev"].readings == session.readings
    finally:
        outbox.close()


class _BrokenDecoder:
    def __init__(self) -> None:
        self.calls = 0

    def feed(self, data: bytes) -> FeedResult:
        self.calls += 1
        if data.startswith(b"boom"):
            raise RuntimeError("a vendor bug")
        return FeedResult(readings=[reading(97)])


class _BrokenDriver:
    info = DriverInfo("acme.flaky", "0.1", "a driver with a bug", "serial")

    def decoder(self, options: Mapping[str, object]) -> _BrokenDecoder:
        return _BrokenDecoder()


def test_a_driver_that_raises_is_counted_and_the_session_goes_on(tmp_path: Path) -> None:
    chunks = [b"ok", b"boom", b"ok", b"boom", b"ok"]
    session, _, outbox, _ = run_session(tmp_path, _BrokenDriver(), chunks, 1.0)
    try:
        assert session.decode_errors == 2
        assert session.readings == 3
        stats = outbox.devices()["dev"]
        assert stats.decode_errors == 2
        assert stats.last_error == "driver acme.flaky failed: RuntimeError"
    finally:
        outbox.close()


def test_payload_json_is_compact_and_parsable(outbox: Outbox) -> None:
    journal, key = journal_for(outbox)
    journal.submit(DEVICE, "oximeter", "pt-1", reading(97), time.time())
    assert journal.commit_once()
    (entry,) = outbox.lease(0, 10)
    jws = json.loads(entry.body)
    assert set(jws) == {"protected", "payload", "signature"}
    assert verify_entry(jws, key)["seq"] == 1


@pytest.mark.parametrize("status", [{"x": float("inf")}, {"nested": [1.0, float("nan")]}])
def test_non_finite_status_values_are_rejected_too(outbox: Outbox, status: dict[str, Any]) -> None:
    journal, key = journal_for(outbox)
    bad = Reading((Observation.known("spo2", 97),), raw=b"\x07", status=status)
    journal.submit(DEVICE, "oximeter", "pt-1", bad, time.time())
    assert journal.commit_once()
    (entry,) = payloads(outbox, key)
    assert entry["event"] == "reading-rejected"


def test_a_cursor_is_stored_only_with_its_reading(outbox: Outbox) -> None:
    journal, _ = journal_for(outbox)
    for sequence in (7, 8, 9):
        journal.submit(
            DEVICE, "oximeter", "pt-1", reading(95), time.time(), cursor=("racp:oximeter", sequence)
        )
    assert outbox.get_meta("racp:oximeter") is None  # queued, not stored: nothing moved yet
    assert journal.commit_once()
    assert outbox.get_meta("racp:oximeter") == 9
    assert outbox.head()[0] == 3


def test_the_outbox_refuses_a_cursor_named_like_its_own_meta(outbox: Outbox) -> None:
    journal, _ = journal_for(outbox)
    journal.submit(DEVICE, "oximeter", "pt-1", reading(95), time.time(), cursor=("last_seq", 1))
    with pytest.raises(ValueError, match="belong to the outbox"):
        journal.commit_once()
    assert outbox.head()[0] == 0
    assert journal.pending == 1  # kept, not lost


class _QuietUntilStarted:
    """A serial driver for a device that streams only after it is sent "GO\\n"."""

    info = DriverInfo(
        "acme.quiet",
        "0.1",
        "streams after a start command",
        "serial",
        serial_session=SerialSession(on_open=(b"GO\n",)),
    )

    def decoder(self, options: Mapping[str, object]) -> _BrokenDecoder:
        return _BrokenDecoder()


def test_a_serial_start_command_is_sent_each_time_the_port_opens(tmp_path: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    driver = _QuietUntilStarted()
    device = DeviceConfig(id="dev", driver=driver.info.id, patient="pt-1", port=os.ttyname(slave))
    outbox = Outbox.open(tmp_path / "outbox.sqlite")
    journal, _ = journal_for(outbox)
    session = DeviceSession(device, driver, driver.info.serial, SerialOpener(), journal)

    async def scenario() -> bytes:
        task = asyncio.create_task(session.run())
        received = b""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(5):
            while b"GO\n" not in received:
                received += await loop.run_in_executor(None, os.read, master, 64)
        os.write(master, b"ok")
        async with asyncio.timeout(5):
            while session.readings < 1:  # noqa: ASYNC110  # a counter the session task owns
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return received

    try:
        assert asyncio.run(scenario()) == b"GO\n"
        assert session.readings == 1
    finally:
        os.close(master)
        os.close(slave)
        outbox.close()


def test_a_changed_device_identity_is_stored_only_with_its_signed_event(outbox: Outbox) -> None:
    """The identity a change leads to commits in the transaction of the event that says so: a
    power cut between them would otherwise leave a new identity that no event explains."""
    from gateway.sessions.device_identity import IdentityMemory

    journal, key = journal_for(outbox)
    memory = IdentityMemory("strap", outbox.get_meta, journal)
    assert memory.seen({"address": "AA:00:00:00:00:01", "serial": "S1", "model": "M"}) == []
    stored = outbox.get_meta("identity:strap")
    assert stored is not None and "S1" in str(stored)  # the first identity: stored, not signed
    changes = memory.seen({"address": "AA:00:00:00:00:02", "serial": "S2", "model": "M"})
    assert [c[0] for c in changes] == ["address", "serial"]
    assert outbox.get_meta("identity:strap") == stored  # not before the events are committed
    assert journal.commit_once()
    events = [p for p in payloads(outbox, key) if p["kind"] == "event"]
    assert [(e["event"], e["detail"]["changed"]) for e in events] == [
        ("device-identity-changed", "address"),
        ("device-identity-changed", "serial"),
    ]
    assert "S2" in str(outbox.get_meta("identity:strap"))
