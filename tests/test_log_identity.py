"""Log identity through the real start-up path (open_state, Signer, Journal, Outbox, head
file): a new log for a lost, restored or damaged outbox, announced by a signed log-started,
and never two contents under one (hub, log, seq); the verifier follows an announced switch
and fails what contradicts it. Also the clock's boot id, boottime and clock-stepped."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import OKPKey

from gateway.app import HubState, open_state
from gateway.hub.clock import BOOT_ID, boottime_ms
from gateway.hub.journal import Journal
from gateway.hub.jws import verify_entry
from gateway.hub.log_head import HEAD_FILE, HeadFile
from gateway.hub.signer import ChainHead, Signer
from gateway.sdk import Observation, Reading
from gateway.tools.verifier import Verifier
from gateway.tools.verify_logs import MAX_RANGES, WINDOW, LogState, Seen
from gateway.tools.verify_report import LogHead
from tests.harness import VALIDATOR

HUB = "hub-0001"
DEVICE = {"id": "oximeter", "driver": "contec.cms50d", "driver_version": "1.0.0"}


@dataclass
class Run:
    """One start of the hub: what it signed (JWS objects in seq order) and its log."""

    log: str
    entries: list[dict[str, Any]]
    state: HubState


def _reading(value: float) -> Reading:
    return Reading((Observation.known("spo2", value),), raw=b"\x01", status={})


def start(
    state_dir: Path,
    readings: int,
    *,
    groups: int = 1,
    clean: bool = False,
    head_interval: float | None = None,
    **journal_options: Any,
) -> Run:
    """open_state as the daemon does, sign `readings` readings in each of `groups` commit
    groups, close: as on shutdown (`clean`: Journal.drain writes the head file final) or as
    after a crash (the head file as the last group left it). `head_interval` gives the journal
    a head file with that interval instead of the one open_state made."""
    state = open_state(state_dir, state_dir / "outbox.sqlite", 10_000, hub_id=HUB)
    head_file = state.head_file if head_interval is None else HeadFile(state_dir, head_interval)
    try:
        signer = Signer(state.identity, HUB, state.head, log=state.log)
        journal = Journal(
            state.outbox,
            signer,
            on_commit=lambda: None,
            commit_interval=0,
            head_file=head_file,
            **journal_options,
        )
        for _ in range(groups):
            for i in range(readings):
                journal.submit(DEVICE, "oximeter", "pt-1", _reading(90 + i % 10), time.time())
            assert journal.commit_once()
        if clean:
            asyncio.run(journal.drain())
        bodies = [json.loads(e.body) for e in state.outbox.lease(0, 100_000)]
        return Run(state.log, bodies, state)
    finally:
        state.outbox.close()
        state.head_file.close()
        head_file.close()


def payload(obj: dict[str, Any], state: HubState) -> dict[str, Any]:
    return verify_entry(json.dumps(obj).encode(), state.identity.public)


def by_key(runs: list[Run]) -> dict[tuple[str, int], set[str]]:
    """(log, seq) -> the distinct signed contents seen under it, over every run."""
    seen: dict[tuple[str, int], set[str]] = {}
    for run in runs:
        for obj in run.entries:
            body = payload(obj, run.state)
            seen.setdefault((body["log"], body["seq"]), set()).add(obj["payload"])
    return seen


def batch(objs: list[dict[str, Any]]) -> bytes:
    return json.dumps(objs).encode()


def feed(verifier: Verifier, run: Run, objs: list[dict[str, Any]] | None = None) -> None:
    for obj in objs if objs is not None else run.entries:
        leaf = "readings" if payload(obj, run.state)["kind"] == "reading" else "events"
        verifier.feed(f"rtm/v1/{HUB}/{leaf}", batch([obj]))


def started(run: Run) -> dict[str, Any]:
    (event,) = [
        payload(o, run.state)
        for o in run.entries
        if payload(o, run.state).get("event") == "log-started"
        and payload(o, run.state)["log"] == run.log
    ]
    return event


def test_a_first_start_signs_log_started_and_a_restart_goes_on_in_the_same_log(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    first = start(state_dir, 3)
    event = started(first)
    assert (event["seq"], event["prev"]) == (1, "")
    assert event["detail"] == {"reason": "new-outbox", "previous": None, "set_aside": None}
    head = json.loads((state_dir / HEAD_FILE).read_text())
    # No drain: as after a crash, the position is a lower bound (see tests/test_log_head.py).
    assert head == {"log": first.log, "seq": 4, "hash": head["hash"], "final": False}
    second = start(state_dir, 2)
    assert second.log == first.log
    assert [payload(o, second.state)["seq"] for o in second.entries] == [1, 2, 3, 4, 5, 6]
    assert json.loads((state_dir / HEAD_FILE).read_text())["seq"] == 6


def test_restoring_a_backup_starts_an_announced_log_and_never_reuses_a_log_seq(
    tmp_path: Path,
) -> None:
    state_dir, backup = tmp_path / "state", tmp_path / "backup"
    one = start(state_dir, 4)  # log A: 1..5
    shutil.copytree(state_dir, backup)
    two = start(state_dir, 5, clean=True)  # log A: 6..10, not in the backup; a clean stop
    # Restore the backup's outbox; the head file stays (operations.md: never restore it).
    for name in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm"):
        if (backup / name).exists():
            shutil.copy2(backup / name, state_dir / name)
    three = start(state_dir, 3)
    assert three.log != one.log == two.log
    event = started(three)
    assert event["seq"] == 1 and event["detail"]["reason"] == "outbox-older-than-head"
    assert payload(two.entries[-1], two.state)["seq"] == 10
    assert event["detail"]["previous"] == {
        "log": one.log,
        "last_seq": 10,
        "last_hash": _chain_hash(two.entries[-1]),
        "exact": True,  # `two` stopped cleanly: its head file is final
    }
    set_aside = event["detail"]["set_aside"]
    assert set_aside["entries"] == 5 and (state_dir / set_aside["file"]).exists()
    # No (log, seq) carries two different contents, over every entry ever signed.
    contents = by_key([one, two, three])
    assert all(len(texts) == 1 for texts in contents.values())
    # The platform verified log A up to 10; the announced switch to log B passes --strict.
    first_run = Verifier({HUB: one.state.identity.public}, strict=True, check_schema=True)
    feed(first_run, two)
    report = first_run.report()
    assert report.ok, report.render()
    head = report.hubs[0].head
    assert head is not None and (head.log, head.seq) == (one.log, 10)
    next_run = Verifier(
        {HUB: one.state.identity.public}, strict=True, earlier={HUB: head}, check_schema=True
    )
    feed(next_run, three)
    report = next_run.report()
    assert report.ok, report.render()
    hub = report.hubs[0]
    assert hub.log_switches == 1 and hub.head is not None and hub.head.log == three.log
    # A replay of log A after the switch fails: a late entry beyond where A was closed...
    replay = Verifier({HUB: one.state.identity.public}, strict=True)
    feed(replay, two)
    feed(replay, three)
    forged_tail = start_forked_tail(two)
    feed(replay, two, forged_tail)
    assert not replay.report().ok
    # ... and in a later run, anything of log A at all.
    later = Verifier({HUB: one.state.identity.public}, strict=True, earlier={HUB: hub.head})
    feed(later, one)
    failed = later.report().hubs[0]
    assert not failed.ok and failed.replayed == 0 and "log-started" in " ".join(failed.failures)


def start_forked_tail(run: Run) -> list[dict[str, Any]]:
    """A log-A entry with seq 11, signed by the hub's key, after log A was closed at 10."""
    last = payload(run.entries[-1], run.state)
    signer = Signer(run.state.identity, HUB, log=run.log)
    signer.head = ChainHead(last["seq"], _chain_hash(run.entries[-1]))
    body = {k: v for k, v in last.items() if k not in ("v", "hub", "log", "seq", "prev")}
    return [json.loads(signer.sign(body).jws)]


def _chain_hash(obj: dict[str, Any]) -> str:
    digest = hashlib.sha256(f"{obj['protected']}.{obj['payload']}".encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_a_whole_backup_without_its_head_file_starts_a_log_the_verifier_flags(
    tmp_path: Path,
) -> None:
    state_dir, backup = tmp_path / "state", tmp_path / "backup"
    one = start(state_dir, 4)
    shutil.copytree(state_dir, backup)
    two = start(state_dir, 5)
    shutil.rmtree(state_dir)
    shutil.copytree(backup, state_dir)
    (state_dir / HEAD_FILE).unlink()  # the head file is never restored
    three = start(state_dir, 2)
    event = started(three)
    assert event["detail"]["reason"] == "head-missing"
    assert event["detail"]["previous"]["last_seq"] == 5  # all the restored outbox knows
    assert event["seq"] == 6  # the kept outbox's numbering goes on, in a new log
    assert all(len(t) == 1 for t in by_key([one, two, three]).values())
    first = Verifier({HUB: one.state.identity.public}, strict=True)
    feed(first, two)
    head = first.report().hubs[0].head
    assert head is not None
    later = Verifier({HUB: one.state.identity.public}, strict=True, earlier={HUB: head})
    feed(later, three, [o for o in three.entries if payload(o, three.state)["log"] == three.log])
    hub = later.report().hubs[0]
    assert not hub.ok  # log A was verified up to 10, the hub says it ended at 5
    assert any("rolled back" in p.reason for p in hub.problems)


def test_an_unannounced_new_log_fails_strict(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    one = start(state_dir, 3)
    other = Signer(one.state.identity, HUB)  # a new log with no log-started
    objs = [json.loads(other.sign(payload_body(one)).jws) for _ in range(2)]
    for strict in (False, True):
        verifier = Verifier({HUB: one.state.identity.public}, strict=strict)
        feed(verifier, one)
        feed(verifier, one, objs)
        hub = verifier.report().hubs[0]
        assert hub.ok is not strict
        assert any(p.kind == "log-switch" for p in hub.problems)


def payload_body(run: Run) -> dict[str, Any]:
    last = payload(run.entries[-1], run.state)
    return {k: v for k, v in last.items() if k not in ("v", "hub", "log", "seq", "prev")}


def test_a_damaged_outbox_is_set_aside_and_a_new_log_names_the_old(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    one = start(state_dir, 200)
    corrupt_pages(state_dir / "outbox.sqlite")
    two = start(state_dir, 2)
    event = started(two)
    assert event["detail"]["reason"] == "outbox-damaged"
    head_of_one = payload(one.entries[-1], one.state)
    assert event["detail"]["previous"]["log"] == one.log
    assert event["detail"]["previous"]["last_seq"] == head_of_one["seq"]
    aside = event["detail"]["set_aside"]
    assert aside["file"].startswith("outbox.sqlite.damaged-")
    assert (state_dir / aside["file"]).exists()
    assert aside["unsent_unknown"] is (aside["entries"] is None)
    # The platform had all of log A but the last 50 (they were in the damaged file): the
    # switch is announced, the lost tail announced with it, and --strict passes.
    first = Verifier({HUB: one.state.identity.public}, strict=True)
    feed(first, one, one.entries[:-50])
    head = first.report().hubs[0].head
    assert head is not None
    later = Verifier({HUB: one.state.identity.public}, strict=True, earlier={HUB: head})
    feed(later, two)
    report = later.report()
    assert report.ok, report.render()
    assert report.hubs[0].announced_gaps == ((head_of_one["seq"] - 49, head_of_one["seq"]),)


def test_a_log_started_whose_previous_contradicts_the_state_fails_strict(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    one = start(state_dir, 3)
    (state_dir / "outbox.sqlite").unlink()
    two = start(state_dir, 1)  # new-outbox: previous is log A at seq 4
    assert started(two)["detail"]["reason"] == "new-outbox"
    wrong = LogHead(4, "x" * 43, one.log)  # the platform holds another hash at seq 4
    verifier = Verifier({HUB: one.state.identity.public}, strict=True, earlier={HUB: wrong})
    feed(verifier, two)
    hub = verifier.report().hubs[0]
    assert not hub.ok
    assert any("contradict" in f for f in hub.failures)
    right = Verifier(
        {HUB: one.state.identity.public},
        strict=True,
        earlier={HUB: LogHead(4, _chain_hash(one.entries[-1]), one.log)},
    )
    feed(right, two)
    assert right.report().ok


def corrupt_pages(path: Path) -> None:
    """Overwrite every page after the first two with garbage (the schema page survives)."""
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.seek(8192)
        file.write(b"\x55" * max(0, size - 8192))


# --- time: boot id, boottime, steps ---------------------------------------------------------


class SteppingClock:
    """Wall time and boottime that advance together until `step` sets the wall clock."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.boot = 5_000_000

    def tick(self, seconds: float) -> None:
        self.wall += seconds
        self.boot += int(seconds * 1000)

    def step(self, seconds: float) -> None:
        self.wall += seconds


def test_entries_carry_boot_and_mono_and_a_clock_step_is_signed(tmp_path: Path) -> None:
    clock = SteppingClock()
    state = open_state(tmp_path / "s", tmp_path / "s" / "outbox.sqlite", 1000, hub_id=HUB)
    try:
        signer = Signer(state.identity, HUB, state.head, log=state.log)
        journal = Journal(
            state.outbox,
            signer,
            on_commit=lambda: None,
            commit_interval=0,
            clock=lambda: "synced",
            wall_clock=lambda: clock.wall,
            boot_clock=lambda: clock.boot,
        )
        key = OKPKey.import_key(dict(state.identity.public_jwk()))

        def commit_one() -> None:
            journal.submit(DEVICE, "oximeter", "pt-1", _reading(97), clock.wall)
            assert journal.commit_once()

        commit_one()
        clock.tick(30.0)
        commit_one()  # no step: 30 s on both clocks
        clock.tick(0.5)
        clock.step(-0.9)  # within a second: not a step (a leap second is 1 s)
        commit_one()
        clock.tick(10.0)
        clock.step(3600.25)  # someone set the clock an hour ahead
        commit_one()
        objs = [json.loads(e.body) for e in state.outbox.lease(0, 100)]
        bodies = [
            json.loads(jws.deserialize_json(o, key, algorithms=["Ed25519"]).payload) for o in objs
        ]
    finally:
        state.outbox.close()
        state.head_file.close()
    for body in bodies:
        assert not list(VALIDATOR.iter_errors(body))
    events = [b["event"] for b in bodies if b["kind"] == "event"]
    assert events == ["log-started", "clock-stepped"]
    steps = [b for b in bodies if b.get("event") == "clock-stepped"]
    assert len(steps) == 1
    assert steps[0]["detail"]["by_s"] == 3600.25
    assert steps[0]["detail"]["hub_clock"] == "synced"
    assert steps[0]["detail"]["to"] > steps[0]["detail"]["from"]
    readings = [b for b in bodies if b["kind"] == "reading"]
    assert [r["time"]["mono"] for r in readings] == [5_000_000, 5_030_000, 5_030_500, 5_040_500]
    assert all(r["time"]["boot"] == BOOT_ID for r in readings)
    started_event = bodies[0]  # signed by open_state with the real clocks
    assert started_event["time"]["boot"] == BOOT_ID
    assert 0 < started_event["time"]["mono"] <= boottime_ms()


def test_boot_id_is_the_kernels() -> None:
    path = Path("/proc/sys/kernel/random/boot_id")
    expected = path.read_text().strip() if path.exists() else ""
    assert expected == BOOT_ID


def test_the_verifiers_memory_per_log_is_bounded() -> None:
    state = LogState("log")
    for seq in range(1, 2 * (MAX_RANGES + 100), 2):  # a hole after every entry
        state.remember(seq, Seen(f"h{seq}", f"h{seq - 1}"))
    hashes, ranges = state.sizes()
    assert hashes <= WINDOW + 1 and ranges == MAX_RANGES
    assert state.forgotten_holes == 100
    last = 2 * (MAX_RANGES + 100) - 1
    assert state.hash_at(last) == Seen(f"h{last}", f"h{last - 1}")  # the recent ones are kept
    assert state.hash_at(1) is None and state.holds(1)  # an old one: held, hash forgotten
    assert not state.holds(last + 1)


def test_a_head_file_one_group_behind_is_not_a_restore(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    one = start(state_dir, 3)  # log A up to seq 4
    old_head = (state_dir / HEAD_FILE).read_bytes()
    two = start(state_dir, 2)  # log A up to seq 6
    (state_dir / HEAD_FILE).write_bytes(old_head)  # as if the last write never reached disk
    assert start(state_dir, 1).log == one.log == two.log  # the outbox is ahead: it goes on
    head_of_a = (state_dir / HEAD_FILE).read_bytes()
    (state_dir / "outbox.sqlite").unlink()
    three = start(state_dir, 1)  # log B, announced after log A's seq 7
    (state_dir / HEAD_FILE).write_bytes(head_of_a)  # B's first head write lost
    four = start(state_dir, 1)  # the outbox says B began after this very head: it goes on
    assert four.log == three.log != one.log
    assert [started(r)["detail"]["reason"] for r in (three, four)] == ["new-outbox"] * 2
