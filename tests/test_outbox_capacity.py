"""The outbox's capacity (F-DISKFULL, F-FLOOD): the byte cap and its running sum, the schema
migration that records each reading's device, and the per-device share at the cap, through the
real journal, signer and SQLite outbox."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.config import load_config
from gateway.hub.config_reader import ConfigError
from gateway.hub.identity import HubIdentity
from gateway.hub.journal import Journal
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import Entry, OutboxFullError
from gateway.hub.outbox_space import (
    ROW_OVERHEAD,
    SpaceLimits,
    ballast_size,
    derive_max_bytes,
    free_bytes,
    outbox_files_size,
)
from gateway.hub.signer import ChainHead, Signer
from gateway.sdk import Observation, Reading


def _journal(outbox: Outbox) -> Journal:
    signer = Signer(HubIdentity.generate(), "hub-cap", ChainHead(*outbox.head()))
    return Journal(outbox, signer, on_commit=lambda: None, commit_interval=0)


def _submit(journal: Journal, device: str, count: int) -> None:
    identity = {"id": device, "driver": "generic.kv-lines", "driver_version": "1.0.0"}
    for i in range(count):
        reading = Reading((Observation.known("heart_rate", 60 + i % 7),), raw=b"\x00" * 40)
        journal.submit(identity, device, "pt-1", reading, time.time())


def _commit_all(journal: Journal) -> None:
    while journal.pending:
        assert journal.commit_once()


def _payload(entry: Entry) -> dict[str, Any]:
    jws = json.loads(entry.body)
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(jws["payload"] + "=="))
    return payload


def _stored(outbox: Outbox) -> list[dict[str, Any]]:
    return [_payload(e) for e in outbox.lease(0, 1_000_000)]


def _sum_in_file(path: Path) -> int:
    with sqlite3.connect(path) as con:
        count, size = con.execute(
            "SELECT count(*), coalesce(sum(length(body)), 0) FROM outbox"
        ).fetchone()
    return int(size) + int(count) * ROW_OVERHEAD


def test_a_schema_1_outbox_gains_the_device_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with sqlite3.connect(path) as con:  # an outbox as the previous release wrote it
        con.execute("PRAGMA auto_vacuum = INCREMENTAL")
        con.execute(
            "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, kind INTEGER NOT NULL CHECK (kind IN "
            "(0, 1)), body BLOB NOT NULL, created REAL NOT NULL)"
        )
        con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID")
        con.execute(
            "CREATE TABLE devices (id TEXT PRIMARY KEY, readings INTEGER NOT NULL, decode_errors "
            "INTEGER NOT NULL, last_reading REAL, last_error TEXT) WITHOUT ROWID"
        )
        con.executemany(
            "INSERT INTO outbox VALUES (?, ?, ?, ?)",
            [(1, 1, b"e" * 100, 1.0), (2, 0, b"r" * 200, 2.0), (3, 0, b"r" * 300, 3.0)],
        )
        con.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("last_seq", 3), ("last_hash", "h3"), ("created", 1.0)],
        )
        con.execute("PRAGMA user_version = 1")
    con.close()
    with Outbox.open(path, space=SpaceLimits(ballast_bytes=0)) as box:
        assert box.head() == (3, "h3")
        assert [e.seq for e in box.lease(0, 10)] == [1, 2, 3]
        assert box.device_rows() == {None: 2}  # readings from before share one bucket
        assert box.stored_bytes() == 600 + 3 * ROW_OVERHEAD
        box.append([Entry(4, "reading", b"x" * 50, 4.0, "meter")], "h4")
        assert box.device_rows() == {None: 2, "meter": 1}
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 2
        assert con.execute("SELECT device FROM outbox WHERE seq = 4").fetchone()[0] == "meter"
        indexes = [r[1] for r in con.execute("PRAGMA index_list(outbox)")]
        assert "outbox_device" in indexes
    con.close()


def test_the_byte_sum_follows_appends_acks_drops_and_a_failed_write(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox.open(path, space=SpaceLimits(ballast_bytes=0))
    try:
        box.append([Entry(i, "reading", b"a" * (100 + i), 1.0, "d") for i in range(1, 51)], "h50")
        assert box.stored_bytes() == _sum_in_file(path)
        box.ack(range(1, 11))
        box.flush()
        assert box.stored_bytes() == _sum_in_file(path)
        box.append([Entry(51, "event", b"gap", 2.0)], "h51", drop_through=20)
        assert box.stored_bytes() == _sum_in_file(path)
        assert box.device_rows() == {"d": 30}
        box.ack([30])  # pending when the next write fails: kept, and counted as gone
        before = box.stored_bytes()
        pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
        box._conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(OutboxFullError):
            box.append([Entry(52 + i, "reading", b"z" * 3000, 3.0, "d") for i in range(20)], "hx")
        assert box.stored_bytes() == before
        box._conn.execute("PRAGMA max_page_count = 1073741823")
        box.flush()
        assert box.stored_bytes() == _sum_in_file(path)
    finally:
        box.close()
    with Outbox.open(path, space=SpaceLimits(ballast_bytes=0)) as again:
        assert again.stored_bytes() == _sum_in_file(path)


def test_the_default_byte_cap_is_half_the_room_less_the_ballast(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite"
    with Outbox.open(path) as box:
        ballast = box.room.ballast
        assert ballast.present
        assert ballast.size == ballast_size(ballast.size * 16) or ballast.size == 32 * 1024 * 1024
        room = free_bytes(path.parent) + outbox_files_size(path) + ballast.size
        expected = derive_max_bytes(room, ballast.size)
        assert abs(box.max_bytes - expected) <= 4 * 1024 * 1024  # other writers on /tmp
    assert derive_max_bytes(100 * 2**20, 4 * 2**20) == 46 * 2**20
    assert derive_max_bytes(1 * 2**20, 0) == 2**20  # never below 1 MiB
    assert ballast_size(40 * 2**20) == 40 * 2**20 // 16
    assert ballast_size(10 * 2**30) == 32 * 2**20


def test_the_byte_cap_drops_under_a_gap_event_before_the_row_cap(tmp_path: Path) -> None:
    box = Outbox.open(tmp_path / "outbox.sqlite", space=SpaceLimits(max_bytes=300_000))
    try:
        journal = _journal(box)
        for _ in range(10):
            _submit(journal, "meter", 100)
            _commit_all(journal)
        assert box.stored_bytes() <= 300_000
        assert box.depth() < 1000 < box.max_rows
        gaps = [p["detail"] for p in _stored(box) if p.get("event") == "gap"]
        assert gaps
        assert all(g["reason"] == "outbox-cap" and g["device"] == "meter" for g in gaps)
    finally:
        box.close()


def test_a_chatty_device_gives_way_at_the_cap_and_the_glucose_readings_stay(
    tmp_path: Path,
) -> None:
    box = Outbox.open(tmp_path / "outbox.sqlite", max_rows=1000)
    try:
        journal = _journal(box)
        _submit(journal, "glucose", 200)  # stored records waiting for the broker
        _commit_all(journal)
        for _ in range(20):  # then a chatty device sends 2,000 readings
            _submit(journal, "chatty", 100)
            _commit_all(journal)
        stored = _stored(box)
        last = box.head()[0]
    finally:
        box.close()
    readings = [p for p in stored if p["kind"] == "reading"]
    assert sum(p["device"]["id"] == "glucose" for p in readings) == 200
    assert len(stored) <= 1000
    gaps = [p for p in stored if p.get("event") == "gap"]
    assert gaps and all(g["detail"]["device"] == "chatty" for g in gaps)
    announced: set[int] = set()
    for gap in gaps:
        detail = gap["detail"]
        runs = detail["ranges"]
        assert detail["first_seq"] == runs[0][0] and detail["last_seq"] == runs[-1][1]
        assert detail["count"] == sum(b - a + 1 for a, b in runs)
        assert runs[-1][1] < gap["seq"]
        announced |= {s for a, b in runs for s in range(a, b + 1)}
    held = {p["seq"] for p in stored}
    # Exactly the dropped seqs: nothing both held and announced, nothing neither.
    assert not held & announced
    assert held | announced == set(range(1, last + 1))


def test_outbox_and_device_limits_are_read_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    base = '[hub]\nid = "h"\n[mqtt]\nurl = "mqtt://127.0.0.1"\n'
    device = '[[devices]]\nid = "d"\ndriver = "generic.kv-lines"\nport = "/dev/x"\npatient = "p"\n'
    path.write_text(base + device)
    config = load_config(path)
    assert config.outbox.space == SpaceLimits()
    assert config.devices[0].max_rate is None and config.devices[0].burst is None
    path.write_text(
        base
        + "[outbox]\nmax_bytes = 50000000\nreserve_bytes = 0\nballast_bytes = 1048576\n"
        + device
        + "max_rate = 2.5\nburst = 4\n"
    )
    config = load_config(path)
    assert config.outbox.space == SpaceLimits(50_000_000, 0, 1_048_576)
    assert (config.devices[0].max_rate, config.devices[0].burst) == (2.5, 4)
    path.write_text(base + "[outbox]\nmax_bytes = 10\n")
    with pytest.raises(ConfigError, match=r"outbox\.max_bytes"):
        load_config(path)
    path.write_text(base + device + "max_rate = -1\n")
    with pytest.raises(ConfigError, match=r"devices\[0\]\.max_rate"):
        load_config(path)
