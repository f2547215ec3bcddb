"""The shared session core (sessions/core.py), the journal's commit report, and the stored-record
sync run from a driver's `StoredRecords` declaration (sessions/records.py), without a radio."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.drivers import gatt_plx, racp
from gateway.hub.config import DeviceConfig
from gateway.hub.journal import Journal
from gateway.hub.outbox import Outbox
from gateway.sdk import DecodeError, FeedResult, Reading
from gateway.sessions.core import ReadingPath
from gateway.sessions.records import RecordSync
from tests.test_journal_and_serial_session import DEVICE, journal_for, reading


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox.open(tmp_path / "outbox.sqlite")
    try:
        yield box
    finally:
        box.close()


class _Decoder:
    """Readings from b"ok", a DecodeError from b"bad", a crash from b"boom"; holds b"part"
    until flushed."""

    def __init__(self) -> None:
        self.held = False

    def feed(self, data: bytes) -> FeedResult:
        if data == b"boom":
            raise RuntimeError("a vendor bug, value 97")
        if data == b"bad":
            return FeedResult(errors=[DecodeError("bad frame")])
        if data == b"part":
            self.held = True
            return FeedResult()
        return FeedResult(readings=[reading(97), reading(98)])

    def flush(self) -> FeedResult:
        held, self.held = self.held, False
        return FeedResult(readings=[reading(96)] if held else [])


def _path(outbox: Outbox, *, continuous: bool, interval: float = 0.05) -> tuple[Any, Journal]:
    journal, _ = journal_for(outbox)
    device = DeviceConfig("dev", "acme.x", "pt-1", port="/dev/null", summary_interval=interval)
    made: list[_Decoder] = []

    def new() -> _Decoder:
        made.append(_Decoder())
        return made[-1]

    path: ReadingPath[_Decoder] = ReadingPath(
        device, "acme.x", new, journal, {"id": "dev"}, continuous=continuous
    )
    path.made = made  # type: ignore[attr-defined]
    return path, journal


def _feed(data: bytes) -> Any:
    return lambda decoder: decoder.feed(data)


def test_the_core_isolates_a_failing_driver_counts_errors_and_restarts_its_decoder(
    outbox: Outbox,
) -> None:
    path, journal = _path(outbox, continuous=False)
    path.feed(_feed(b"ok"))  # closed: nothing decoded
    assert (path.readings, path.decode_errors) == (0, 0)
    path.open()
    for data in (b"ok", b"bad", b"boom", b"ok"):
        path.feed(_feed(data))
    assert (path.readings, path.decode_errors) == (4, 2)
    assert len(path.made) == 2  # restarted once, after the crash
    while journal.pending:
        journal.commit_once()
    stats = outbox.devices()["dev"]
    assert stats.last_error == "driver acme.x failed: RuntimeError"


def test_the_core_flushes_what_the_decoder_holds_when_the_link_ends(outbox: Outbox) -> None:
    path, _ = _path(outbox, continuous=False)
    path.open()
    path.feed(_feed(b"part"))
    assert path.readings == 0
    path.close()
    assert path.readings == 1
    path.feed(_feed(b"ok"))  # closed again
    assert path.readings == 1


def test_a_continuous_stream_keeps_one_reading_per_interval_on_a_fixed_cadence(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    path, _ = _path(outbox, continuous=True, interval=1.0)
    path.open()
    kept = []
    for tick in range(60):  # 20 values a second for 3 s
        now[0] = 100.0 + tick * 0.05
        before = path.readings
        path.feed(_feed(b"ok"), "stream-a")
        if path.readings > before:
            kept.append(round(now[0], 2))
    assert kept == [100.0, 101.0, 102.0]  # the cadence, not "an interval after the last"
    path.feed(_feed(b"ok"), "stream-b")  # another stream has its own cadence
    path.feed(_feed(b"ok"), None)  # a read or a record is never summarised
    assert path.readings == 3 + 1 + 2
    now[0] = 110.0  # after a pause the cadence starts again at the next value
    path.feed(_feed(b"ok"), "stream-a")
    now[0] = 110.5
    path.feed(_feed(b"ok"), "stream-a")
    assert path.readings == 7


def test_the_journal_reports_a_records_commit_and_stores_its_cursor_with_it(
    outbox: Outbox,
) -> None:
    async def run() -> None:
        journal, _ = journal_for(outbox)
        committed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        journal.submit(
            DEVICE, "ox", "pt-1", reading(95), time.time(), cursor=("k", 7), committed=committed
        )
        assert not committed.done() and outbox.get_meta("k") is None
        assert journal.commit_once()
        assert committed.result() is True and outbox.get_meta("k") == 7
        journal.set_cursor("k", 0)  # alone, through the journal
        assert outbox.get_meta("k") == 0

    asyncio.run(run())


def _spot_check(spo2: int) -> Reading:
    return Reading((), bytes((0, spo2, 0, 70, 0)), {})


def test_digest_positions_skip_stored_records_and_are_forgotten_after_the_delete() -> None:
    info = gatt_plx.DRIVER.info
    assert info.ble_session is not None and info.ble_session.stored is not None
    spec = info.ble_session.stored
    sync = RecordSync(spec, "k", json.dumps([]))
    assert sync.request() == racp.report_all()
    keep, cursor = sync.accept(gatt_plx.SPOT_CHECK, _spot_check(97))
    assert keep and cursor is not None and len(json.loads(str(cursor["k"]))) == 1
    # The same bytes again in this transfer: a second measurement with the same values (F-DIGEST).
    keep, cursor = sync.accept(gatt_plx.SPOT_CHECK, _spot_check(97))
    assert keep and cursor is not None and len(json.loads(str(cursor["k"]))) == 2
    resumed = RecordSync(spec, "k", cursor["k"])
    assert resumed.accept(gatt_plx.SPOT_CHECK, _spot_check(97)) == (False, None)
    assert resumed.accept(gatt_plx.SPOT_CHECK, _spot_check(97)) == (False, None)
    assert resumed.arrived == 2
    keep, cursor = resumed.accept(gatt_plx.SPOT_CHECK, _spot_check(97))  # a third one: new
    assert keep and cursor is not None and len(json.loads(str(cursor["k"]))) == 3
    assert resumed.after_commit is not None
    assert resumed.after_commit.request == racp.delete_all()
    assert resumed.after_commit.answer(bytes((0x06, 0x00, 0x02, 0x01))) is True
    assert resumed.after_commit.answer(bytes((0x06, 0x00, 0x01, 0x01))) is None  # a report's
    assert resumed.forget() == ("k", "[]")


def test_a_glucose_context_is_kept_only_with_its_measurement() -> None:
    from gateway.drivers.gatt_gls import DRIVER, GLUCOSE_MEASUREMENT, MEASUREMENT_CONTEXT

    info = DRIVER.info
    assert info.ble_session is not None and info.ble_session.stored is not None
    sync = RecordSync(info.ble_session.stored, "k", 10)

    def record(sequence: int) -> Reading:
        return Reading((), bytes(12), {"sequence_number": sequence})

    assert sync.accept(GLUCOSE_MEASUREMENT, record(9)) == (False, None)
    assert sync.accept(MEASUREMENT_CONTEXT, record(9)) == (False, None)
    keep, positions = sync.accept(GLUCOSE_MEASUREMENT, record(11))
    assert keep and isinstance(positions, dict) and positions["k"] == 11  # + "k-state"
    assert sync.accept(MEASUREMENT_CONTEXT, record(11)) == (True, None)
    assert sync.done(bytes((0x06, 0x00, 0x01, 0x01)))  # the report's response
    assert not sync.done(bytes((0x06, 0x00, 0x01, 0x01, 0, 0, 0, 0, 0, 0)))  # a record


class _OximeterLink:
    """A link to a pulse oximeter holding two spot-checks: it answers a report with them and
    success, and a delete with success, recording every write."""

    address = "C0:FF:EE:00:00:01"
    lost_reason = ""
    services: frozenset[str] = frozenset()

    def __init__(self, session: Any) -> None:
        self.session = session
        self.lost = asyncio.Event()
        self.writes: list[bytes] = []

    def has(self, uuid: str, *properties: str) -> bool:
        return True

    async def write(
        self, uuid: str, data: bytes, timeout: float = 0, *, response: bool = True
    ) -> None:
        self.writes.append(data)
        loop = asyncio.get_running_loop()
        if data == racp.report_all():
            for spo2 in (97, 96):
                loop.call_soon(
                    self.session._on_value, gatt_plx.SPOT_CHECK, bytes((0, spo2, 0, 70, 0))
                )
            loop.call_soon(self.session._on_answer, racp.RACP, bytes((6, 0, racp.REPORT, 1)))
        elif data == racp.delete_all():
            loop.call_soon(self.session._on_answer, racp.RACP, bytes((6, 0, racp.DELETE, 1)))


def test_the_oximeter_delete_waits_for_the_journal_to_commit_every_record(
    outbox: Outbox,
) -> None:
    from gateway.sessions.ble import BleDeviceSession

    async def run() -> None:
        journal, _ = journal_for(outbox)
        device = DeviceConfig("plx", "gatt.plx", "pt-1", address="C0:FF:EE:00:00:01")
        session = BleDeviceSession(device, gatt_plx.DRIVER, None, journal, outbox)  # type: ignore[arg-type]
        link = _OximeterLink(session)
        info = gatt_plx.DRIVER.info
        assert info.ble_session is not None and info.ble_session.stored is not None
        sync = RecordSync(info.ble_session.stored, "ble.stored-digests:plx", None)
        session._path.open()
        session._sync = sync
        transfer = asyncio.create_task(session._fetch_records(link, sync))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)
        assert link.writes == [racp.report_all()]  # both records queued, none committed yet
        assert len(json.loads(str(outbox.get_meta("ble.stored-digests:plx") or "[]"))) == 0
        assert journal.commit_once()
        await asyncio.wait_for(transfer, 5)
        assert link.writes == [racp.report_all(), racp.delete_all()]
        assert outbox.get_meta("ble.stored-digests:plx") == "[]"  # reset, through the journal
        assert session.readings == 2

    asyncio.run(run())
