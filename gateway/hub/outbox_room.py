"""Making room in a full outbox: readings go, and signed `gap` events say exactly which.

Runs inside the journal's commit, so the gap events and the drop land in the new entries'
transaction and nothing disappears silently. The outbox is full when the new entries would pass
either cap, rows (`max_rows`) or bytes (`max_bytes`), whichever comes first. Then a tenth of that
cap goes at once (so a long outage makes one round of gap events per tenth, not one per commit),
and it is taken from the device holding the most readings first: the chattiest device is cut
down to the level of the next one, then both, and so on (a per-device share), each device's
oldest readings first. Hub events are never dropped.

One gap event is signed per device and per `MAX_GAP_RANGES` runs of seqs: its detail keeps
`first_seq`, `last_seq` and `count`, and adds `device` and `ranges` (the inclusive runs of the
seqs dropped), since one device's readings are interleaved with the others'.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Final

from gateway.hub.clock import HubClock
from gateway.hub.entry_bodies import event_body
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import Dropped, Entry
from gateway.hub.outbox_rows import ranges
from gateway.hub.outbox_space import stored_size
from gateway.hub.signer import Signer

log = logging.getLogger("gateway.hub.journal")  # same logger name as before the split

# Bounds a gap event's size (about 20 bytes per run): more runs make more events.
MAX_GAP_RANGES: Final = 256
# What a gap event is counted as before it is signed.
GAP_EVENT_BYTES: Final = 1024


def make_room(
    outbox: Outbox, signer: Signer, entries: list[Entry], hub_clock: HubClock
) -> list[Dropped] | None:
    """When the new entries would pass a cap, choose the readings that must go, sign gap
    events for them, add those to the batch, and return what the outbox is to delete."""
    max_rows, max_bytes = outbox.max_rows, outbox.max_bytes
    new_bytes = sum(stored_size(e.body) for e in entries)
    over_rows = outbox.depth() + len(entries) + 1 - max_rows
    over_bytes = outbox.stored_bytes() + new_bytes + GAP_EVENT_BYTES - max_bytes
    if over_rows <= 0 and over_bytes <= 0:
        return None
    want_rows = max(over_rows, max_rows // 10) if over_rows > 0 else 0
    want_bytes = max(over_bytes, max_bytes // 10) if over_bytes > 0 else 0
    if outbox.room.full:  # the drop itself needs WAL room: at once no more than the ballast's
        want_bytes = min(want_bytes, max(outbox.room.full_step, 2 * new_bytes))
    chosen = _choose(outbox, want_rows, want_bytes)
    if not chosen:
        return None
    dropped: list[Dropped] = []
    for device, seqs in chosen.items():
        runs = ranges(seqs)
        for start in range(0, len(runs), MAX_GAP_RANGES):
            dropped.append(Dropped(device, tuple(runs[start : start + MAX_GAP_RANGES])))
    total = sum(len(s) for s in chosen.values())
    log.warning(
        "outbox full (%d of %d entries, %d of %d bytes): dropping %d readings of %d device(s) "
        "(those holding the most first) and signing gap events; check the uplink (broker "
        "reachable?)",
        outbox.depth(),
        max_rows,
        outbox.stored_bytes(),
        max_bytes,
        total,
        len(chosen),
    )
    now = time.time()
    for drop in dropped:
        count = sum(last - first + 1 for first, last in drop.ranges)
        detail = {
            "first_seq": drop.ranges[0][0],
            "last_seq": drop.ranges[-1][1],
            "count": count,
            "reason": "outbox-cap",
            "device": drop.device,
            "ranges": [list(r) for r in drop.ranges],
        }
        signed = signer.sign(event_body("gap", detail, now, hub_clock))
        entries.append(Entry(signed.seq, "event", signed.jws, now))
    return dropped


def _choose(outbox: Outbox, want_rows: int, want_bytes: int) -> dict[str | None, list[int]]:
    """The seqs to drop, per device: level the devices holding the most readings down until
    `want_rows` rows and `want_bytes` bytes are freed (or nothing is left)."""
    counts = outbox.device_rows()
    after: dict[str | None, int] = {}
    chosen: dict[str | None, list[int]] = {}
    rows = nbytes = 0
    while (rows < want_rows or nbytes < want_bytes) and any(counts.values()):
        depth = max(1, outbox.depth())
        average = max(1, outbox.stored_bytes() // depth)
        need = max(want_rows - rows, -(-(want_bytes - nbytes) // average), 1)
        for device, take in _level(counts, need).items():
            picked = outbox.device_oldest(device, after.get(device, 0), take)
            if not picked:
                counts[device] = 0
                continue
            seqs = chosen.setdefault(device, [])
            for seq, size in picked:
                seqs.append(seq)
                nbytes += size
            rows += len(picked)
            counts[device] -= len(picked)
            after[device] = picked[-1][0]
    return chosen


def _level(counts: Mapping[str | None, int], need: int) -> dict[str | None, int]:
    """How many readings each device gives so that `need` go in all, taking from the device
    holding the most down to the level of the next, then from both, and so on."""
    order = sorted(((n, d) for d, n in counts.items() if n > 0), key=lambda x: -x[0])
    if not order:
        return {}
    total = sum(n for n, _ in order)
    if need >= total:
        return {d: n for n, d in order}
    # The highest level L such that sum(max(0, n - L)) >= need.
    taken, level = 0, order[0][0]
    for i, (n, _) in enumerate(order):
        below = order[i + 1][0] if i + 1 < len(order) else 0
        width = i + 1
        room = (n - below) * width if i + 1 < len(order) else n * width
        if taken + room >= need:
            level = n - -(-(need - taken) // width)
            break
        taken += room
        level = below
    return {d: n - level for n, d in order if n > level}
