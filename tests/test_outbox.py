"""The outbox against a real SQLite file: sequence, lease/ack, cap, counters, crashes, faults."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from gateway.hub import outbox as ob
from gateway.hub import outbox_file, outbox_wal
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import (
    DeviceDelta,
    DeviceStats,
    Entry,
    Kind,
    OutboxCorruptError,
    OutboxError,
    OutboxFullError,
    OutboxLockedError,
    OutboxNotFoundError,
    OutboxNotWritableError,
    OutboxSequenceError,
)
from gateway.hub.outbox_status import read_status
from tests.harness import wait_until

REPO = Path(__file__).resolve().parents[1]


def _committed_or_exited(log: Path, proc: subprocess.Popen[bytes]) -> bool:
    return bool(log.read_text()) or proc.poll() is not None


def entries(first: int, n: int, kind: Kind = "reading", size: int = 300) -> list[Entry]:
    return [
        Entry(s, kind, f"{s}:".encode().ljust(size, b"x"), 1000.0 + s)
        for s in range(first, first + n)
    ]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
def box(db: Path) -> Iterator[Outbox]:
    o = Outbox.open(db)
    yield o
    o.close()


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


# ---- sequence and head --------------------------------------------------------------------------


def test_new_outbox_is_wal_full_incremental_vacuum(box: Outbox, db: Path) -> None:
    assert box.head() == (0, "")
    assert box.depth() == 0
    assert box.lease(0, 10) == []
    assert box.oldest_seqs(5) is None
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert con.execute("PRAGMA user_version").fetchone()[0] == outbox_file.SCHEMA_VERSION
    finally:
        con.close()


def test_seq_never_reused_after_everything_is_deleted(db: Path) -> None:
    with Outbox.open(db) as o:
        o.append(entries(1, 5), "h5")
        o.ack(range(1, 6))
        o.flush()
        assert o.depth() == 0
    with Outbox.open(db) as o:
        assert o.head() == (5, "h5")
        assert o.depth() == 0
        with pytest.raises(OutboxSequenceError, match="expected 6"):
            o.append(entries(1, 1), "again")
        o.append(entries(6, 1), "h6")
        assert o.head() == (6, "h6")
    with Outbox.open(db) as o:
        assert o.head() == (6, "h6")
        assert [e.seq for e in o.lease(0, 10)] == [6]


@pytest.mark.parametrize("first", [0, 1, 2, 4])
def test_append_rejects_non_contiguous_seq(box: Outbox, first: int) -> None:
    box.append(entries(1, 2), "h2")
    with pytest.raises(OutboxSequenceError):
        box.append(entries(first, 2), "bad")
    gap = [*entries(3, 1), *entries(5, 1)]
    with pytest.raises(OutboxSequenceError, match="entry 1 has seq 5"):
        box.append(gap, "bad")
    assert box.head() == (2, "h2")
    assert box.depth() == 2
    assert [e.seq for e in box.lease(0, 10)] == [1, 2]


def test_empty_append_keeps_head_and_refuses_a_new_hash(box: Outbox) -> None:
    box.append(entries(1, 1), "h1")
    box.append([], "h1", devices={"d": DeviceDelta(decode_errors=1)})
    assert box.head() == (1, "h1")
    with pytest.raises(OutboxSequenceError):
        box.append([], "other")


# ---- lease and ack ------------------------------------------------------------------------------


def test_lease_returns_oldest_in_order_after_seq(box: Outbox) -> None:
    box.append(entries(1, 3), "h3")
    box.append([*entries(4, 1, "event"), *entries(5, 5)], "h9")
    leased = box.lease(0, 4)
    assert [e.seq for e in leased] == [1, 2, 3, 4]
    assert leased[3].kind == "event"
    assert leased[0] == entries(1, 1)[0]
    assert [e.seq for e in box.lease(4, 100)] == [5, 6, 7, 8, 9]
    assert box.lease(9, 100) == []


def test_lease_uses_the_primary_key(box: Outbox, db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        plan = " ".join(
            str(row[-1]) for row in con.execute("EXPLAIN QUERY PLAN " + ob._LEASE_SQL, (0, 100))
        )
    finally:
        con.close()
    assert "USING INTEGER PRIMARY KEY" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_ack_deletes_now_for_this_outbox_and_commits_on_flush(box: Outbox, db: Path) -> None:
    box.append(entries(1, 10), "h10")
    box.ack([2, 3, 4, 7, 3])
    assert box.depth() == 6
    assert [e.seq for e in box.lease(0, 100)] == [1, 5, 6, 8, 9, 10]
    assert read_status(db).stats.depth == 10  # not committed yet
    box.flush()
    status = read_status(db).stats
    assert status.depth == 6
    assert status.last_ack is not None
    assert box.stats().last_ack == status.last_ack


def test_ack_is_committed_with_the_next_append(db: Path) -> None:
    with Outbox.open(db) as o:
        o.append(entries(1, 4), "h4")
        o.ack([1, 2], now=123.0)
        o.append(entries(5, 1), "h5")
        assert read_status(db).stats.depth == 3
        assert read_status(db).stats.last_ack == 123.0


def test_acks_compress_to_ranges() -> None:
    assert ob._ranges([9, 1, 2, 3, 5, 6, 2]) == [(1, 3), (5, 6), (9, 9)]
    assert ob._ranges([]) == []


def test_uncommitted_acks_are_lost_on_crash_so_rows_come_back(db: Path) -> None:
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from tests.test_outbox import entries
        from gateway.hub.outbox import Outbox
        o = Outbox.open(Path({str(db)!r}))
        o.append(entries(1, 3), "h3")
        o.ack([1, 2])
        os._exit(0)  # no flush: like kill -9 between the PUBACK and the next commit
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), cwd=REPO)
    with Outbox.open(db) as o:
        assert [e.seq for e in o.lease(0, 10)] == [1, 2, 3]  # resent: duplicates, not loss


# ---- the cap ------------------------------------------------------------------------------------


def test_drop_through_removes_the_oldest_with_the_gap_event(box: Outbox, db: Path) -> None:
    box.append(entries(1, 10), "h10")
    assert box.oldest_seqs(4) == (1, 4, 4)
    box.ack([2])  # an acked row inside the dropped range is counted once
    assert box.oldest_seqs(4) == (1, 5, 4)
    box.append(entries(11, 1, "event"), "h11", drop_through=5)
    assert box.depth() == 6
    assert [e.seq for e in box.lease(0, 100)] == [6, 7, 8, 9, 10, 11]
    assert read_status(db).stats.depth == 6
    assert box.head() == (11, "h11")
    with pytest.raises(OutboxSequenceError, match="drop_through"):
        box.append(entries(12, 1), "h12", drop_through=12)


def test_oldest_seqs_larger_than_depth(box: Outbox) -> None:
    box.append(entries(1, 3), "h3")
    assert box.oldest_seqs(100) == (1, 3, 3)
    assert box.max_rows == 1_000_000


# ---- devices and meta ---------------------------------------------------------------------------


def test_device_counters_accumulate_and_survive_reopen(db: Path) -> None:
    with Outbox.open(db) as o:
        o.append(
            entries(1, 2),
            "h2",
            devices={
                "plx": DeviceDelta(readings=2, last_reading=50.0),
                "inhaler": DeviceDelta(decode_errors=1, last_error="short frame"),
            },
        )
        o.append(
            entries(3, 1),
            "h3",
            devices={"plx": DeviceDelta(readings=1, decode_errors=2, last_error="bad crc")},
        )
    with Outbox.open(db) as o:
        devs = o.devices()
    assert devs["plx"] == DeviceStats(3, 2, 50.0, "bad crc")
    assert devs["inhaler"] == DeviceStats(0, 1, None, "short frame")
    assert read_status(db).devices == devs


def test_meta_is_committed_with_flush_and_reserved_keys_refused(db: Path) -> None:
    with Outbox.open(db) as o:
        o.set_meta("last_publish", 42.5)
        assert o.get_meta("last_publish") == 42.5
        assert "last_publish" not in read_status(db).meta
        o.flush()
        assert read_status(db).meta["last_publish"] == 42.5
        with pytest.raises(ValueError, match="belongs to the outbox"):
            o.set_meta("last_seq", 0)
    with Outbox.open(db) as o:
        assert o.get_meta("last_publish") == 42.5
        assert o.get_meta("missing") is None


# ---- housekeeping -------------------------------------------------------------------------------


def test_checkpoints_bound_the_wal_and_vacuum_returns_space(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_wal, "CHECKPOINT_EVERY_COMMITS", 4)
    monkeypatch.setattr(outbox_wal, "VACUUM_FREE_PAGES", 16)
    wal = db.with_name(db.name + "-wal")
    with Outbox.open(db) as o:
        for i in range(40):  # 4 MB in all, 100 kB per commit
            o.append(entries(1 + 100 * i, 100, size=1000), f"h{i}")
            assert wal.stat().st_size < 1024 * 1024  # checkpointed, so the WAL is reused
        pages = o._conn.execute("PRAGMA page_count").fetchone()[0]
        o.ack(range(1, 4001))
        for _ in range(40):
            o.append([], "h39")
        assert o.depth() == 0
        assert o._conn.execute("PRAGMA page_count").fetchone()[0] < pages // 2
    assert not wal.exists() or wal.stat().st_size == 0  # close() checkpoints with TRUNCATE


# ---- durability ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from tests.test_outbox import entries
    from gateway.hub.outbox import Outbox
    out = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    o = Outbox.open(Path(sys.argv[1]))
    seq, _ = o.head()
    n = 0
    while True:
        k = 1 + n % 17
        o.append(entries(seq + 1, k), f"h{seq + k}")
        seq += k
        n += 1
        # Acks ride along so the crash also hits deletes; seq % 10 == 0 may be gone afterwards.
        o.ack([s for s in range(seq - k + 1, seq + 1) if s % 10 == 0])
        os.write(out, f"{seq}\\n".encode())  # written only after the commit returned
""")


def test_kill_9_loses_nothing_committed(db: Path, tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log = tmp_path / "committed.txt"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    for _ in range(10):
        log.write_text("")
        proc = subprocess.Popen(
            [sys.executable, str(script), str(db), str(log)], env=child_env(), cwd=REPO
        )
        try:
            wait_until(
                partial(_committed_or_exited, log, proc),
                10,
                "the child to commit",
                poll=0.002,  # kill soon after the first commit, at a random moment below
            )
            assert proc.poll() is None, f"child exited with {proc.returncode}"
            time.sleep(rng.uniform(0, 0.04))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        reported = [int(line) for line in log.read_text().splitlines()]
        with Outbox.open(db) as o:  # the flock died with the child
            last_seq, last_hash = o.head()
            assert last_seq >= reported[-1], f"seed {seed}"
            assert last_hash == f"h{last_seq}"
            rows = {e.seq: e.body for e in o.lease(0, 10_000_000)}
            assert o.depth() == len(rows)
        expected = {s for s in range(1, reported[-1] + 1) if s % 10}
        missing = expected - rows.keys()
        assert not missing, f"seed {seed}: committed rows lost: {sorted(missing)[:10]}"
        assert all(body.startswith(f"{s}:".encode()) for s, body in rows.items())


# ---- faults: clear errors -----------------------------------------------------------------------


def test_second_open_is_refused_until_the_first_closes(db: Path) -> None:
    first = Outbox.open(db)
    try:
        with pytest.raises(
            OutboxLockedError,
            match=f"another rtm-gateway is running with this state dir.*pid {os.getpid()}",
        ):
            Outbox.open(db)
    finally:
        first.close()
    Outbox.open(db).close()


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(OutboxNotWritableError, match=r"not a directory.*state dir") as err:
        Outbox.open(tmp_path / "state" / "outbox.db")
    assert str(tmp_path / "state" / "outbox.db") in str(err.value)


def chattr(flag: str, path: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    return (
        subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False).returncode
        == 0
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chattr") is None,
    reason="read-only for root needs chattr +i (CI runs as root)",
)
def test_read_only_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    assert chattr("+i", state), "chattr +i failed on this filesystem"
    try:
        with pytest.raises(OutboxNotWritableError, match="not writable"):
            Outbox.open(state / "outbox.db")
    finally:
        chattr("-i", state)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chattr") is None,
    reason="read-only for root needs chattr +i (CI runs as root)",
)
def test_read_only_database_file(db: Path) -> None:
    with Outbox.open(db) as o:
        o.append(entries(1, 1), "h1")
    assert chattr("+i", db), "chattr +i failed on this filesystem"
    try:
        with pytest.raises(OutboxNotWritableError, match="not writable"):
            Outbox.open(db)
    finally:
        chattr("-i", db)
    with Outbox.open(db) as o:
        assert o.head() == (1, "h1")


def test_disk_full_is_clear_and_loses_nothing(box: Outbox) -> None:
    box.append(entries(1, 10), "h10")
    box.ack([1, 2])
    box.flush()
    box.ack([3])  # pending when the failure comes: must still be applied afterwards
    pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
    box._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(OutboxFullError, match=r"disk is full.*committed before is intact") as e:
        box.append(entries(11, 200, size=2000), "h210")
    assert str(box.path) in str(e.value)
    assert box.head() == (10, "h10")
    assert box.depth() == 7
    assert [x.seq for x in box.lease(0, 100)] == [4, 5, 6, 7, 8, 9, 10]
    box._conn.execute("PRAGMA max_page_count = 1073741823")
    box.append(entries(11, 1), "h11")
    assert read_status(box.path).stats.depth == 8
    assert [x.seq for x in box.lease(0, 100)] == [4, 5, 6, 7, 8, 9, 10, 11]


TMPFS_CHILD = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from tests.test_outbox import entries
    from gateway.hub import outbox_wal
    from gateway.hub.outbox import Outbox
    from gateway.hub.outbox_file import OutboxFullError
    outbox_wal.CHECKPOINT_EVERY_COMMITS = 4  # the daemon's steady state, reached quickly
    mnt = Path(sys.argv[1])
    (mnt / "ballast").write_bytes(bytes(128 * 1024))
    path = mnt / "outbox.db"
    o = Outbox.open(path)
    seq, err = 0, None
    try:
        while True:
            o.append(entries(seq + 1, 20, size=2000), f"h{seq + 20}")
            seq += 20
    except OutboxFullError as exc:
        err = str(exc)
    head = o.head()[0]
    os.remove(mnt / "ballast")  # the technician frees space: the same outbox goes on
    o.ack(range(1, 41))
    o.append(entries(seq + 1, 1), f"h{seq + 1}")
    o.close()
    o = Outbox.open(path)
    present = [e.seq for e in o.lease(0, 100000)]
    print(json.dumps({"seq": seq, "head": head, "err": err, "present": present}))
""")


@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs root and unshare to mount a private tmpfs (CI runs as root)",
)
def test_disk_full_on_a_real_tiny_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "child.py"
    script.write_text(TMPFS_CHILD)
    # A private mount namespace: the tmpfs vanishes with the child, the host never sees it.
    cmd = f"mount -t tmpfs -o size=512k tmpfs {mnt} && exec {sys.executable} {script} {mnt}"
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", cmd],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"the child (or mounting its tmpfs) failed: {proc.stderr}"
    result = json.loads(proc.stdout)
    assert result["seq"] > 0
    assert result["head"] == result["seq"]
    assert "disk is full" in result["err"]
    assert result["present"] == list(range(41, result["seq"] + 2))


def test_not_a_database_is_kept(db: Path) -> None:
    db.parent.mkdir(parents=True)
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    with pytest.raises(OutboxCorruptError, match=r"damaged.*left in place.*move") as err:
        Outbox.open(db)
    assert str(db) in str(err.value)
    assert db.read_bytes() == garbage
    Outbox.open(db.with_name("fresh.db")).close()  # the lock was released


def test_malformed_database_is_kept(db: Path) -> None:
    with Outbox.open(db) as o:
        o.append(entries(1, 2000), "h2000")
    data = bytearray(db.read_bytes())
    page = 4096
    data[page * 3 : page * 6] = os.urandom(page * 3)  # wreck some b-tree pages
    db.write_bytes(bytes(data))
    with pytest.raises(OutboxCorruptError, match="damaged"):
        Outbox.open(db)  # counting the rows at open walks the whole table
    assert db.read_bytes() == bytes(data)


def test_sqlite_database_that_is_not_an_outbox(db: Path) -> None:
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE other (x)")
    con.commit()
    con.close()
    with pytest.raises(OutboxCorruptError, match="not an rtm-gateway outbox"):
        Outbox.open(db)


def test_newer_schema_is_refused(db: Path) -> None:
    Outbox.open(db).close()
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {outbox_file.SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(OutboxError, match="newer rtm-gateway"):
        Outbox.open(db)


# ---- read_status --------------------------------------------------------------------------------


def test_read_status_without_an_outbox(tmp_path: Path) -> None:
    with pytest.raises(OutboxNotFoundError, match=r"no outbox yet at .*has not run"):
        read_status(tmp_path / "outbox.db")


def test_read_status_beside_the_writer_and_after_it(db: Path) -> None:
    o = Outbox.open(db)
    try:
        o.append(entries(1, 5), "h5", devices={"plx": DeviceDelta(readings=5)})
        snap = read_status(db)
        assert snap.stats.depth == 5
        assert snap.stats.newest_seq == 5
        assert snap.stats.oldest_created == 1001.0
        assert snap.last_hash == "h5"
        assert snap.writer_pid == os.getpid()
        o.append(entries(6, 1), "h6")  # the reader did not block the writer
    finally:
        o.close()
    before = sorted(p.name for p in db.parent.iterdir())
    snap = read_status(db)
    assert snap.stats.newest_seq == 6
    assert snap.writer_pid is None
    assert sorted(p.name for p in db.parent.iterdir()) == before  # created no -wal/-shm
