"""Making room in a full outbox: the oldest entries go, and a signed `gap` event says so.

Runs inside the journal's commit, so the gap event and the drop land in the new entries'
transaction and nothing disappears silently.
"""

from __future__ import annotations

import logging
import time

from gateway.hub.clock import HubClock
from gateway.hub.entry_bodies import event_body
from gateway.hub.outbox import Outbox
from gateway.hub.outbox_file import Entry
from gateway.hub.signer import Signer

log = logging.getLogger("gateway.hub.journal")  # same logger name as before the split


def make_room(
    outbox: Outbox, signer: Signer, entries: list[Entry], hub_clock: HubClock
) -> int | None:
    """When the new entries would pass the cap, sign a gap event for the oldest readings
    that must go, add it to the batch, and return the last seq to drop.

    A tenth of the cap goes at once, so a long outage makes one gap event per tenth of the
    outbox rather than one per commit."""
    max_rows = outbox.max_rows
    over = outbox.depth() + len(entries) + 1 - max_rows
    if over <= 0:
        return None
    oldest = outbox.oldest_seqs(max(over, max_rows // 10))
    if oldest is None:
        return None
    first, last, count = oldest
    log.warning(
        "outbox full (%d entries): dropping the oldest %d (seq %d..%d) and "
        "signing a gap event; check the uplink (broker reachable?)",
        outbox.max_rows,
        count,
        first,
        last,
    )
    entries.append(Entry(0, "event", b"", 0.0))  # placeholder, replaced below
    now = time.time()
    signed = signer.sign(
        event_body(
            "gap",
            {"first_seq": first, "last_seq": last, "count": count, "reason": "outbox-cap"},
            now,
            hub_clock,
        )
    )
    entries[-1] = Entry(signed.seq, "event", signed.jws, now)
    return last
