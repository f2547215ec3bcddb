"""The head file's lag and the honest `log-started` (real open_state, Journal, Outbox, head
file and verifier): `head.json` is written at most once per `HEAD_INTERVAL` while groups
commit (`"final": false`, a lower bound) and final on shutdown; a new log names the previous
log's last seq with `exact`, and the verifier closes the old log there (exact) or at the
highest seq it reaches (a lower bound), still failing what genuinely contradicts it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.log_head import HEAD_FILE, HEAD_INTERVAL, HeadFile, LogPosition, read_head_file
from gateway.hub.signer import ChainHead, Signer
from gateway.tools.verifier import Verifier
from gateway.tools.verify_report import LogHead
from tests.harness import wait_until
from tests.test_log_identity import (
    HUB,
    Run,
    _chain_hash,
    corrupt_pages,
    feed,
    payload,
    payload_body,
    start,
    start_forked_tail,
    started,
)


def _head(state_dir: Path) -> dict[str, Any]:
    head: dict[str, Any] = json.loads((state_dir / HEAD_FILE).read_text())
    return head


def _seq(run: Run, obj: dict[str, Any]) -> int:
    seq: int = payload(obj, run.state)["seq"]
    return seq


def _of_log(run: Run, log: str) -> list[dict[str, Any]]:
    return [o for o in run.entries if payload(o, run.state)["log"] == log]


# --- the head file --------------------------------------------------------------------------


def test_two_commits_within_the_interval_write_once_and_flush_writes_the_last_final(
    tmp_path: Path,
) -> None:
    one, two, three = (LogPosition("L", seq, f"h{seq}") for seq in (1, 2, 3))
    head = HeadFile(tmp_path, interval=3600)
    try:
        head.committed(one)  # nothing written yet: at once
        assert _head(tmp_path) == {"log": "L", "seq": 1, "hash": "h1", "final": False}
        head.committed(two)  # within the interval: it waits
        head.write_due()
        assert _head(tmp_path)["seq"] == 1
        assert head.due() is not None
        head.flush()  # shutdown: the waiting position, final
        assert _head(tmp_path) == {"log": "L", "seq": 2, "hash": "h2", "final": True}
        assert head.due() is None
        head.committed(three)  # after a final write: at once, not final, whatever the interval
        assert _head(tmp_path) == {"log": "L", "seq": 3, "hash": "h3", "final": False}
        head.flush()  # nothing waits: the written position becomes final
        assert _head(tmp_path) == {"log": "L", "seq": 3, "hash": "h3", "final": True}
    finally:
        head.close()
    assert read_head_file(tmp_path) == LogPosition("L", 3, "h3", exact=True)


def test_the_waiting_position_is_written_by_write_due_once_the_interval_passed(
    tmp_path: Path,
) -> None:
    head = HeadFile(tmp_path)  # the daemon's interval
    try:
        head.committed(LogPosition("L", 1, "h1"))
        head.committed(LogPosition("L", 2, "h2"))
        assert _head(tmp_path)["seq"] == 1
        due = head.due()
        assert due is not None and due <= time.monotonic() + HEAD_INTERVAL
        wait_until(lambda: time.monotonic() >= due, HEAD_INTERVAL + 5, "the head write is due")
        head.write_due()
        assert _head(tmp_path) == {"log": "L", "seq": 2, "hash": "h2", "final": False}
        assert head.due() is None
    finally:
        head.close()
    assert read_head_file(tmp_path) == LogPosition("L", 2, "h2", exact=False)


def test_a_final_head_file_that_cannot_be_rewritten_is_withdrawn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a clean start the file says final; if the next group's rewrite fails (a full
    disk), the entries are still published, so the file must not keep claiming the log's end:
    it is removed (which needs no free space) and the next start announces from the outbox."""
    head = HeadFile(tmp_path, interval=3600)
    try:
        head.write(LogPosition("L", 5, "h5"), final=True)
        assert _head(tmp_path)["final"] is True
        (tmp_path / f".{HEAD_FILE}.tmp").mkdir()  # the rewrite's temporary file cannot be made
        head.committed(LogPosition("L", 6, "h6"))
        assert not (tmp_path / HEAD_FILE).exists()
        assert "cannot write the head file" in caplog.text
        (tmp_path / f".{HEAD_FILE}.tmp").rmdir()  # room again: the waiting position is written
        head.flush()
        assert _head(tmp_path) == {"log": "L", "seq": 6, "hash": "h6", "final": True}
    finally:
        head.close()


def test_a_head_file_from_before_final_is_not_final(tmp_path: Path) -> None:
    (tmp_path / HEAD_FILE).write_text('{"log":"L","seq":7,"hash":"h7"}')
    assert read_head_file(tmp_path) == LogPosition("L", 7, "h7", exact=False)


# --- a clean stop: exact --------------------------------------------------------------------


def test_a_clean_stop_then_a_damaged_or_lost_outbox_announces_an_exact_end(
    tmp_path: Path,
) -> None:
    for damage in ("damaged", "lost"):
        state_dir = tmp_path / damage
        one = start(state_dir, 3, groups=2, clean=True)  # log A: 1..7, drained
        last_hash = _chain_hash(one.entries[-1])
        assert _head(state_dir) == {"log": one.log, "seq": 7, "hash": last_hash, "final": True}
        if damage == "damaged":
            corrupt_pages(state_dir / "outbox.sqlite")
        else:
            (state_dir / "outbox.sqlite").unlink()
        two = start(state_dir, 1)
        event = started(two)
        assert event["detail"]["reason"] == (
            "outbox-damaged" if damage == "damaged" else "new-outbox"
        )
        assert event["detail"]["previous"] == {
            "log": one.log,
            "last_seq": 7,
            "last_hash": last_hash,
            "exact": True,
        }
        verifier = Verifier({HUB: one.state.identity.public}, strict=True, check_schema=True)
        feed(verifier, one)
        feed(verifier, two)
        report = verifier.report()
        assert report.ok, report.render()
        assert report.hubs[0].log_switches == 1
        # Exact: an entry of log A after seq 7 is a conflict, as before.
        feed(verifier, one, start_forked_tail(one))
        assert not verifier.report().ok


# --- a crash: the head file lags, a lower bound ---------------------------------------------


def _crashed_then_damaged(state_dir: Path) -> tuple[Run, Run]:
    """Log A: log-started and two groups of 3 (1..7), the head file written after the first
    group only (the second within its interval), no drain: a crash. Then the outbox is damaged
    and the hub starts again in log B."""
    one = start(state_dir, 3, groups=2, head_interval=3600)
    assert [_seq(one, o) for o in one.entries] == list(range(1, 8))
    assert _head(state_dir) == {
        "log": one.log,
        "seq": 4,
        "hash": _chain_hash(one.entries[3]),
        "final": False,
    }
    corrupt_pages(state_dir / "outbox.sqlite")
    return one, start(state_dir, 1)


def test_a_lagging_head_announces_a_lower_bound_and_strict_accepts_the_later_entries(
    tmp_path: Path,
) -> None:
    one, two = _crashed_then_damaged(tmp_path / "state")
    event = started(two)
    assert event["detail"]["reason"] == "outbox-damaged"
    assert event["detail"]["previous"] == {
        "log": one.log,
        "last_seq": 4,
        "last_hash": _chain_hash(one.entries[3]),
        "exact": False,
    }
    key = {HUB: one.state.identity.public}
    # The platform got all of log A (5..7 were sent before the crash), then log B.
    live = Verifier(key, strict=True, check_schema=True)
    feed(live, one)
    feed(live, two)
    report = live.report()
    assert report.ok, report.render()
    hub = report.hubs[0]
    assert hub.log_switches == 1 and hub.conflicts == hub.chain_breaks == 0
    assert hub.gaps == () and hub.announced_gaps == ()
    # Log A's in-flight entries may arrive after log B's log-started: they chain, no conflict.
    late = Verifier(key, strict=True)
    feed(late, one, one.entries[:5])
    feed(late, two)
    feed(late, one, one.entries[5:])
    report = late.report()
    assert report.ok, report.render()
    assert report.hubs[0].conflicts == 0
    # With --state: an earlier run verified log A up to 7, this one gets log B.
    first = Verifier(key, strict=True)
    feed(first, one)
    earlier = first.report().hubs[0].head
    assert earlier is not None and (earlier.log, earlier.seq) == (one.log, 7)
    next_run = Verifier(key, strict=True, earlier={HUB: earlier}, check_schema=True)
    feed(next_run, two)
    report = next_run.report()
    assert report.ok, report.render()
    assert report.hubs[0].head is not None and report.hubs[0].head.log == two.log


def test_a_lower_bound_announces_what_never_came_as_set_aside(tmp_path: Path) -> None:
    one, two = _crashed_then_damaged(tmp_path / "state")
    key = {HUB: one.state.identity.public}
    # Seq 6 was committed, never acknowledged (so in the damaged file), 7 was sent.
    verifier = Verifier(key, strict=True)
    feed(verifier, one, [o for o in one.entries if _seq(one, o) != 6])
    feed(verifier, two)
    report = verifier.report()
    assert report.ok, report.render()
    assert report.hubs[0].announced_gaps == ((6, 6),) and report.hubs[0].gaps == ()
    # Only up to 2 arrived: 3..4 (up to the lower bound) are announced; nothing is known of
    # later entries, so nothing more is counted.
    short = Verifier(key, strict=True)
    feed(short, one, one.entries[:2])
    feed(short, two)
    report = short.report()
    assert report.ok, report.render()
    assert report.hubs[0].announced_gaps == ((3, 4),)


def test_a_lower_bound_still_fails_what_contradicts_it(tmp_path: Path) -> None:
    one, two = _crashed_then_damaged(tmp_path / "state")
    key = {HUB: one.state.identity.public}
    hash_4, hash_7 = _chain_hash(one.entries[3]), _chain_hash(one.entries[6])
    # Another hash at seq 4, which both the platform and the announcement name.
    for wrong in (LogHead(4, "x" * 43, one.log), LogHead(7, hash_7, "another-log-id-000000")):
        verifier = Verifier(key, strict=True, earlier={HUB: wrong})
        feed(verifier, two)
        hub = verifier.report().hubs[0]
        assert not hub.ok, wrong
        assert any("contradict" in f for f in hub.failures), hub.failures
    hash_5 = _chain_hash(one.entries[4])
    for held in (LogHead(4, hash_4, one.log), LogHead(5, hash_5, one.log)):
        right = Verifier(key, strict=True, earlier={HUB: held})
        feed(right, two)
        report = right.report()
        assert report.ok, report.render()
    # Seq 5 held (seq 4 not), and it does not chain to the hash announced for seq 4.
    forked = Verifier(key, strict=True)
    feed(forked, one, one.entries[:3] + _signed_after(one, 4, "x" * 43))
    feed(forked, two)
    hub = forked.report().hubs[0]
    assert not hub.ok
    assert any("chains to" in p.reason for p in hub.problems), hub.problems
    # ... while the real seq 5 chains to it.
    # (Seq 4 is an unannounced gap, as it would be with an exact announcement: it is below
    # what was held, and may still be in flight.)
    real = Verifier(key)
    feed(real, one, [o for o in one.entries if _seq(one, o) != 4])
    feed(real, two)
    hub = real.report().hubs[0]
    assert hub.ok and hub.gaps == ((4, 4),) and hub.log_switches == 1
    assert not any(p.kind == "log-switch" for p in hub.problems), hub.problems
    # A conflict at a seq after the lower bound, and a broken chain, are still caught.
    for tail in (
        _signed_after(one, 6, _chain_hash(one.entries[5])),
        _signed_after(one, 7, "y" * 43),
    ):
        verifier = Verifier(key, strict=True)
        feed(verifier, one)
        feed(verifier, two)
        feed(verifier, one, tail)
        hub = verifier.report().hubs[0]
        assert not hub.ok
        assert hub.conflicts + hub.chain_breaks == 1, hub.failures


def _signed_after(run: Run, seq: int, prev_hash: str) -> list[dict[str, Any]]:
    """An entry of the run's log at `seq + 1`, signed with the hub's key, chained to
    `prev_hash` (a fork when that is not the real hash of `seq`, or when `seq + 1` exists)."""
    signer = Signer(run.state.identity, HUB, log=run.log)
    signer.head = ChainHead(seq, prev_hash)
    body = payload_body(run) | {"patient": "pt-forked"}
    return [json.loads(signer.sign(body).jws)]
