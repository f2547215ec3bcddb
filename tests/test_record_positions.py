"""F-CURSOR, the decisions without a radio: a stored-record cursor kept per physical device
(sessions/records.py, sessions/records_state.py), reset when the device is replaced or its
counter restarts, carried over a 16-bit wrap and past a forged record, and every skipped record
counted in a signed event. The same, through the virtual BlueZ: test_ble_record_resets.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.drivers import racp
from gateway.drivers.gatt_gls import DRIVER, GLUCOSE_MEASUREMENT
from gateway.hub.outbox_file import MetaValue
from gateway.sdk import Reading, StoredRecords
from gateway.sessions.records import RecordSync, Step
from gateway.sessions.records_state import (
    DIGEST_CHARS,
    MAX_RECENT,
    CursorState,
    newer,
    state_key,
)

assert DRIVER.info.ble_session is not None and DRIVER.info.ble_session.stored is not None
GLS = DRIVER.info.ble_session.stored
KEY = "ble.last-record:meter"
STATE = "ble.last-record-state:meter"
REPORTED = bytes((0x06, 0x00, 0x01, 0x01))  # the response to a report: success
NOTHING = bytes((0x06, 0x00, 0x01, 0x06))  # no records found
BASE = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def record(sequence: int, minutes: int = 0) -> Reading:
    """A glucose record: its number, and bytes and a time that tell it from another meter's."""
    stamp = BASE + timedelta(minutes=minutes)
    raw = bytes((0x03,)) + sequence.to_bytes(2, "little") + minutes.to_bytes(4, "little")
    return Reading((), raw, {"sequence_number": sequence}, stamp, "set")


Answer = tuple[list[Reading], bytes]


def oldest(sequence: int = 1, minutes: int = 1) -> Answer:
    """The answer to "first record": the meter's oldest, then success."""
    return [record(sequence, minutes)], REPORTED


def count_answer(count: int) -> bytes:
    return bytes((racp.COUNT_RESPONSE, 0x00)) + count.to_bytes(2, "little")


class Hub:
    """The hub's side of one device's transfers, as RecordSync hands it over: the positions
    committed with each kept record, those stored alone (the journal's `set_cursor`) and the
    events (the journal's `event`), kept in memory; the journal itself is tested elsewhere."""

    def __init__(self) -> None:
        self.meta: dict[str, MetaValue] = {}
        self.events: list[tuple[str, dict[str, object]]] = []

    def event(self, name: str, detail: Mapping[str, object]) -> None:
        self.events.append((name, dict(detail)))

    def store(self, key: str, value: MetaValue) -> None:
        self.meta[key] = value

    def sync(
        self, identity: Mapping[str, object] | None = None, spec: StoredRecords = GLS
    ) -> RecordSync:
        return RecordSync(
            spec,
            KEY,
            self.meta.get(KEY),
            state=self.meta.get(STATE),
            device="meter",
            identity=identity or {"serial": "GLS-1", "model": "M"},
            event=self.event,
            store=self.store,
        )

    def transfer(self, sync: RecordSync, *answers: Answer) -> list[int]:
        """Run a connection's steps: each answer is the records a request brings, then the
        value that ends it. The requests written, and the sequence numbers kept, come back."""
        self.requests: list[bytes] = []
        kept: list[int] = []
        step: Step | None = sync.next_step(None)
        for records, final in answers:
            assert step is not None, f"no request left for {final.hex()}"
            self.requests.append(step.data)
            for reading in records:
                keep, positions = sync.accept(GLUCOSE_MEASUREMENT, reading)
                if keep:
                    assert isinstance(positions, Mapping)
                    self.meta.update(positions)  # committed with the reading
                    kept.append(int(reading.status["sequence_number"]))
            assert step.done(final)
            step = sync.next_step(final)
        assert step is None, "the transfer asked for more"
        return kept

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def detail(self, name: str) -> dict[str, object]:
        return next(d for n, d in self.events if n == name)


def first_connection(box: Hub, count: int) -> None:
    """The hub fetches `count` records numbered 1.. from a meter it did not know."""
    assert box.transfer(
        box.sync(), ([record(n, n) for n in range(1, count + 1)], REPORTED)
    ) == list(range(1, count + 1))
    assert box.requests == [racp.report_all()]


def test_the_position_keeps_its_key_and_the_state_beside_it_the_meter() -> None:
    box = Hub()
    first_connection(box, 30)
    assert box.meta[KEY] == 30
    state = json.loads(str(box.meta[STATE]))
    assert (state["high"], state["known"], state["serial"], state["model"]) == (
        30,
        30,
        "GLS-1",
        "M",
    )
    assert len(state["recent"]) == 30 * DIGEST_CHARS
    assert box.events == []  # nothing skipped, nothing reset


def test_nothing_new_asks_the_count_and_an_unchanged_count_is_the_end() -> None:
    box = Hub()
    first_connection(box, 30)
    assert box.transfer(box.sync(), oldest(), ([], NOTHING), ([], count_answer(30))) == []
    assert box.requests == [racp.report_first(), racp.report_from(31), racp.report_count()]
    assert box.events == []


def test_a_cleared_meter_is_told_by_its_oldest_record_and_its_new_records_are_kept() -> None:
    box = Hub()
    first_connection(box, 30)
    new = [record(n, 1000 + n) for n in (1, 2, 3)]  # numbered again from 1, later in time
    kept = box.transfer(box.sync(), ([new[0]], REPORTED), (new, REPORTED))
    assert kept == [1, 2, 3]
    assert box.requests == [racp.report_first(), racp.report_all()]
    assert box.detail("records-reset") == {
        "device": "meter",
        "reason": "counter-restarted",
        "previous": 30,
        "cursor": 3,
        "refetched": 3,
        "duplicates": 0,
    }
    assert box.meta[KEY] == 3
    # And the next connection asks after 3, with nothing to reset.
    box.events.clear()
    assert box.transfer(box.sync(), ([new[0]], REPORTED), ([record(4, 1004)], REPORTED)) == [4]
    assert box.requests == [racp.report_first(), racp.report_from(4)] and box.events == []


def test_a_cleared_meter_that_passed_the_old_position_is_still_told() -> None:
    box = Hub()
    first_connection(box, 5)
    new = [record(n, 2000 + n) for n in range(1, 9)]  # 8 new ones: 6..8 are after 5
    kept = box.transfer(box.sync(), ([new[0]], REPORTED), (new, REPORTED))
    assert kept == list(range(1, 9))  # not only 6..8
    assert box.detail("records-reset")["reason"] == "counter-restarted"


def test_a_full_meter_dropping_its_oldest_is_the_same_meter() -> None:
    box = Hub()
    first_connection(box, 5)
    kept = box.transfer(box.sync(), oldest(3, 3), ([record(6, 6)], REPORTED))
    assert kept == [6]
    assert box.requests == [racp.report_first(), racp.report_from(6)] and box.events == []


def test_a_counter_restarted_without_clearing_keeps_only_the_new_content() -> None:
    box = Hub()
    first_connection(box, 5)
    old = [record(n, n) for n in range(1, 6)]
    new = [record(n, 1000 + n) for n in (1, 2)]
    answers: tuple[Answer, ...] = (
        oldest(),
        ([], NOTHING),
        ([], count_answer(7)),
        (old + new, REPORTED),
    )
    kept = box.transfer(box.sync(), *answers)
    assert kept == [1, 2]
    assert box.detail("records-reset")["duplicates"] == 5
    assert box.detail("records-skipped") == {
        "device": "meter",
        "count": 5,
        "reason": "already-stored",
    }


def test_a_replaced_meter_is_asked_for_everything_at_once() -> None:
    box = Hub()
    first_connection(box, 30)
    other = box.sync({"serial": "GLS-2", "model": "M"})
    kept = box.transfer(other, ([record(n, 500 + n) for n in (1, 2, 3)], REPORTED))
    assert kept == [1, 2, 3]
    assert box.requests == [racp.report_all()]
    assert box.detail("records-reset")["reason"] == "device-replaced"
    assert json.loads(str(box.meta[STATE]))["serial"] == "GLS-2"


def test_a_replaced_meter_without_records_is_adopted_once() -> None:
    box = Hub()
    first_connection(box, 30)
    assert box.transfer(box.sync({"serial": "GLS-2"}), ([], NOTHING)) == []
    assert box.names() == ["records-reset"]
    state = json.loads(str(box.meta[STATE]))
    assert (state["serial"], state["high"], state["known"]) == ("GLS-2", None, 0)
    box.events.clear()
    # Its first record, numbered 1, is new: the old meter's 30 no longer stand in its way.
    assert box.transfer(box.sync({"serial": "GLS-2"}), ([record(1, 900)], REPORTED)) == [1]
    assert box.requests == [racp.report_all()] and box.events == []


def test_a_position_from_an_older_hub_takes_the_identity_without_a_reset() -> None:
    box = Hub()
    box.meta[KEY] = 41  # a hub before the state kept only this
    assert box.transfer(box.sync(), oldest(), ([], NOTHING), ([], count_answer(41))) == []
    assert box.requests == [racp.report_first(), racp.report_from(42), racp.report_count()]
    state = json.loads(str(box.meta[STATE]))
    assert (state["high"], state["known"], state["serial"]) == (41, 41, "GLS-1")
    assert box.events == []


def test_the_counter_wraps_after_65535_and_the_records_after_it_are_fetched() -> None:
    box = Hub()
    box.transfer(box.sync(), ([record(65533, 1), record(65534, 2)], REPORTED))
    meter = [record(65533, 1), record(65534, 2), record(65535, 3), record(0, 4), record(1, 5)]
    kept = box.transfer(box.sync(), oldest(65533, 1), (meter[2:3], REPORTED), (meter, REPORTED))
    assert kept == [65535, 0, 1]
    assert box.requests == [racp.report_first(), racp.report_from(65535), racp.report_all()]
    assert box.detail("records-reset") == {
        "device": "meter",
        "reason": "counter-wrapped",
        "previous": 65535,
        "cursor": 1,
        "refetched": 2,
        "duplicates": 3,
    }
    assert box.detail("records-skipped")["count"] == 3
    assert box.meta[KEY] == 1


def test_a_position_left_at_65535_does_not_stop_the_path() -> None:
    box = Hub()
    box.meta[KEY] = 65535  # an older hub's, after a forged record: it asked for nothing more
    meter = [record(n, n) for n in (1, 2, 3)]
    assert box.transfer(box.sync(), oldest(), (meter, REPORTED)) == [1, 2, 3]
    assert box.requests == [racp.report_first(), racp.report_all()]
    assert box.meta[KEY] == 3
    assert box.transfer(box.sync(), oldest(), ([record(4, 4)], REPORTED)) == [4]
    assert box.requests == [racp.report_first(), racp.report_from(4)]


def test_a_forged_record_far_ahead_is_refused_and_one_nearer_is_told_by_the_count() -> None:
    box = Hub()
    first_connection(box, 10)
    sync = box.sync()
    assert box.transfer(sync, oldest(), ([], NOTHING), ([], count_answer(10))) == []
    # Live values (forged, or a meter's bug): 65535 is more than half the counter behind 10...
    assert sync.accept(GLUCOSE_MEASUREMENT, record(65535, 99)) == (False, None)
    assert box.detail("records-skipped")["reason"] == "before-position"
    # ...30000 is ahead, and kept: the position jumps.
    keep, positions = sync.accept(GLUCOSE_MEASUREMENT, record(30000, 98))
    assert keep and isinstance(positions, Mapping)
    box.meta.update(positions)
    # Nothing after 30000, and a count that is not the one the hub knows: all, de-duplicated.
    meter = [record(n, n) for n in range(1, 13)]
    answers: tuple[Answer, ...] = (
        oldest(),
        ([], NOTHING),
        ([], count_answer(12)),
        (meter, REPORTED),
    )
    assert box.transfer(box.sync(), *answers) == [11, 12]
    assert box.detail("records-reset")["reason"] == "counter-restarted"
    assert box.transfer(box.sync(), oldest(), ([record(13, 13)], REPORTED)) == [13]
    assert box.requests == [racp.report_first(), racp.report_from(13)]


def test_skipped_records_are_logged_by_count_and_signed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = Hub()
    first_connection(box, 3)
    caplog.set_level(logging.WARNING, logger="gateway.sessions")
    # A device that ignores the filter and sends everything again.
    replay = [record(n, n) for n in (1, 2, 3)] + [record(4, 4)]
    assert box.transfer(box.sync(), oldest(), (replay, REPORTED)) == [4]
    assert box.detail("records-skipped") == {
        "device": "meter",
        "count": 3,
        "reason": "already-stored",
    }
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [
        "device meter: 3 records skipped (already stored); nothing to do unless this repeats "
        "on every connection (then check the device's record counter)"
    ]


def test_a_live_replay_is_reported_at_once_then_at_most_once_a_minute() -> None:
    box = Hub()
    first_connection(box, 3)
    sync = box.sync()
    assert box.transfer(sync, oldest(), ([], NOTHING), ([], count_answer(3))) == []
    for _ in range(5):
        assert sync.accept(GLUCOSE_MEASUREMENT, record(2, 2)) == (False, None)
    assert [d["count"] for n, d in box.events if n == "records-skipped"] == [1]


def test_a_vendor_cursor_without_count_or_wrap_is_reset_by_identity() -> None:
    def request(last: int | None) -> bytes:
        return b"\x02" if last is None else b"\x01" + last.to_bytes(4, "little")

    def counter(reading: Reading) -> int | None:
        value = reading.status.get("sequence_number")
        return value if isinstance(value, int) else None

    vendor = StoredRecords(
        control="c", records=GLUCOSE_MEASUREMENT, request=request, cursor=counter, done=bool
    )
    box = Hub()
    assert box.transfer(box.sync(spec=vendor), ([record(7, 7)], b"\x80")) == [7]
    # No count: nothing after the position is the end; no wrap: no follow-up at the top.
    assert box.transfer(box.sync(spec=vendor), ([], b"\x80")) == []
    assert box.requests == [request(7)]
    replaced = box.sync({"serial": "GLS-9"}, spec=vendor)
    assert box.transfer(replaced, ([record(1, 500)], b"\x80")) == [1]
    assert box.requests == [b"\x02"]
    assert box.detail("records-reset")["reason"] == "device-replaced"


def test_a_count_the_device_refuses_leaves_the_position_alone() -> None:
    box = Hub()
    first_connection(box, 5)
    refused = bytes((0x06, 0x00, racp.REPORT_COUNT, 0x02))  # op code not supported
    assert racp.record_count(refused) is False
    assert box.transfer(box.sync(), oldest(), ([], NOTHING), ([], refused)) == []
    assert box.events == [] and box.meta[KEY] == 5


def test_a_failing_count_callback_is_a_refusal() -> None:
    def broken(value: bytes) -> int | bool | None:
        raise ValueError(value.hex())

    assert GLS.count is not None
    spec = replace(GLS, count=replace(GLS.count, answer=broken))
    box = Hub()
    first_connection(box, 5)
    answers: tuple[Answer, ...] = (oldest(), ([], NOTHING), ([], count_answer(1)))
    assert box.transfer(box.sync(spec=spec), *answers) == []
    assert box.events == []


def test_serial_number_arithmetic_and_the_racp_count() -> None:
    assert newer(0, 65535, 65536) and newer(1, 65535, 65536) and newer(5, 65530, 65536)
    assert not newer(65535, 0, 65536) and not newer(7, 7, 65536)
    assert not newer(0, 65535, 0) and newer(65535, 0, 0)  # a counter that never wraps
    assert racp.report_count() == bytes((0x04, 0x01))
    assert racp.report_first() == bytes((0x01, 0x05))
    assert racp.record_count(count_answer(513)) == 513
    assert racp.record_count(REPORTED) is None  # a report's answer, not the count's


def test_the_digests_kept_stay_bounded() -> None:
    state = CursorState.load(5, None)
    for n in range(MAX_RECENT + 50):
        state.remember(f"{n:0{DIGEST_CHARS}x}")
    again = CursorState.load(5, state.dump())
    assert len(again.recent) == MAX_RECENT * DIGEST_CHARS
    assert again.knows(f"{MAX_RECENT + 49:0{DIGEST_CHARS}x}") and not again.knows(f"{0:012x}")
    assert CursorState.load("junk", "{not json").high is None
    assert state_key("ble.cursor:inhaler") == "ble.cursor-state:inhaler"
