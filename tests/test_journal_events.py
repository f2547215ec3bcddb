"""The hub's own accounting events, through the real Journal, Signer and Outbox: malformed
frames summed into `decode-errors`, readings the journal could not hold while the disk refused
writes counted into `readings-lost`, and drops at the cap split into gap events of at most
`MAX_GAP_RANGES` runs that name exactly the seqs that went."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from gateway.hub.outbox import Outbox
from gateway.hub.outbox_room import MAX_GAP_RANGES
from tests.harness import until
from tests.test_journal_and_serial_session import DEVICE, journal_for, payloads, reading


def _events(outbox: Outbox, key: Any, name: str) -> list[dict[str, Any]]:
    return [p["detail"] for p in payloads(outbox, key) if p.get("event") == name]


def test_malformed_frames_are_summed_into_one_signed_event_per_interval(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path / "outbox.sqlite")
    journal, key = journal_for(outbox)
    journal._error_summary_interval = 0.05  # the daemon's is a minute

    async def scenario() -> None:
        task = asyncio.create_task(journal.run())
        for _ in range(3):
            journal.count_error("oximeter", "bad checksum")
        await until(lambda: _events(outbox, key, "decode-errors") != [], timeout=10)
        task.cancel()

    try:
        asyncio.run(scenario())
        assert _events(outbox, key, "decode-errors") == [
            {"device": "oximeter", "count": 3, "interval_s": 0.05}
        ]
        assert outbox.devices()["oximeter"].decode_errors == 3
    finally:
        outbox.close()


def test_readings_beyond_what_the_journal_holds_are_counted_in_a_signed_event(
    tmp_path: Path,
) -> None:
    """While the disk refuses writes the journal keeps the newest `max_pending` readings; the
    ones it had to let go are counted, and signed as soon as the disk takes writes again."""
    outbox = Outbox.open(tmp_path / "outbox.sqlite")
    journal, key = journal_for(outbox)
    journal._max_pending = 5
    try:
        journal.submit(DEVICE, "oximeter", "pt-1", reading(90), time.time())
        assert journal.commit_once()  # the file has its first pages
        pages = outbox._conn.execute("PRAGMA page_count").fetchone()[0]
        outbox._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLITE_FULL from here
        for value in range(91, 99):
            journal.submit(DEVICE, "oximeter", "pt-1", reading(value), time.time())
        assert not journal.commit_once()
        assert journal.last_error is not None and "full" in journal.last_error
        outbox._conn.execute("PRAGMA max_page_count = 1000000")  # the disk has room again
        while journal.pending:
            assert journal.commit_once()
        spo2 = [
            p["observations"][0]["value"] for p in payloads(outbox, key) if p["kind"] == "reading"
        ]
        assert spo2 == [90, 94, 95, 96, 97, 98]  # the newest five were kept
        assert _events(outbox, key, "readings-lost") == [
            {"count": 3, "reason": "the outbox refused writes for too long"}
        ]
    finally:
        outbox.close()


def test_drops_at_the_cap_are_announced_exactly_in_gap_events_of_bounded_size(
    tmp_path: Path,
) -> None:
    """The chatty device's oldest readings, interleaved one by one with another device's, go
    as single-seq runs: more runs than one event may carry make several gap events."""
    outbox = Outbox.open(tmp_path / "outbox.sqlite", max_rows=5000)
    journal, key = journal_for(outbox)
    chatty = {**DEVICE, "id": "chatty"}
    quiet = {**DEVICE, "id": "quiet"}
    try:
        for n in range(3000):  # 1500 each, interleaved
            device = chatty if n % 2 == 0 else quiet
            journal.submit(device, str(device["id"]), "pt-1", reading(90), time.time())
        while journal.pending:
            assert journal.commit_once()
        for _ in range(2100):  # the chatty device alone, past the cap
            journal.submit(chatty, "chatty", "pt-1", reading(91), time.time())
            if journal.pending >= 500:
                while journal.pending:
                    assert journal.commit_once()
        while journal.pending:
            assert journal.commit_once()
        gaps = _events(outbox, key, "gap")
        assert gaps and all(g["device"] == "chatty" for g in gaps)
        assert max(len(g["ranges"]) for g in gaps) == MAX_GAP_RANGES
        assert all(g["count"] == sum(b - a + 1 for a, b in g["ranges"]) for g in gaps)
        announced = {s for g in gaps for a, b in g["ranges"] for s in range(a, b + 1)}
        held = {p["seq"] for p in payloads(outbox, key)}
        assert not announced & held
        assert announced | held == set(range(1, outbox.head()[0] + 1))
        quiet_held = [p for p in payloads(outbox, key) if p.get("device", {}).get("id") == "quiet"]
        assert len(quiet_held) == 1500  # the quiet device lost nothing
    finally:
        outbox.close()
