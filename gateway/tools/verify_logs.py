"""One log of one hub as the verifier holds it, in bounded memory (`LogState`).

A hub's entries are keyed on (hub, log, seq): a hub starts a new log, announced by a signed
`log-started` event, when it cannot prove its outbox is the newest (docs/protocol.md). Per log
the verifier keeps only what its checks need:

- the chain hashes of the last `WINDOW` entries received (a duplicate, a conflict and a chain
  link are checked against them; an entry older than the window is counted, not compared);
- the seqs received as merged ranges (gaps are the holes between them; a log with gaps every
  other seq holds one range per gap, at most `MAX_RANGES`, then the oldest are merged and
  counted as unchecked);
- its announced gaps, its head, and where a later log-started closed it (exactly, or at a
  lower bound when the hub's head file lagged: then it ends at the highest seq it reaches).

So a hub costs at most about `MAX_LOGS` x (`WINDOW` hashes + `MAX_RANGES` ranges) whatever the
stream's length: about 3 MB. Pure: no I/O, no clock, no keys.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from gateway.tools.verify_report import SeqRange

WINDOW: Final = 4096
"""Chain hashes kept per log."""
MAX_RANGES: Final = 4096
"""Received-seq ranges kept per log (one per hole); beyond it the oldest holes are closed."""
MAX_LOGS: Final = 16
"""Logs kept per hub; the oldest closed ones are forgotten beyond it."""


_TOP: Final = 2**62


@dataclass(frozen=True, slots=True)
class Seen:
    """One entry's chain hash and its `prev`."""

    hash: str
    prev: str


@dataclass(slots=True)
class LogState:
    """One log: `anchor` is the seq an earlier run verified last (its hash is in the window
    but it is not one of this run's seqs); `start` the seq of its `log-started` entry;
    `announced_by` the log its log-started named before it ("" when none: a first start);
    `closed_by` the next log, whose announcement named `last_named` as this one's last seq:
    exact, then also `closed_at` (a later entry is a conflict), or a lower bound (`closed_at`
    None: later entries that chain still belong to it, see `end`). `set_aside_from` is where
    the entries the announcement says were set aside (and never arrived) may begin."""

    log: str
    anchor: int | None = None
    start: int | None = None
    announced_by: str | None = None
    closed_at: int | None = None
    closed_by: str | None = None
    last_named: int | None = None
    set_aside_from: int | None = None
    max_seq: int = 0
    forgotten_holes: int = 0
    announced: list[SeqRange] = field(default_factory=list)
    _hashes: dict[int, Seen] = field(default_factory=dict)
    _order: deque[int] = field(default_factory=deque)
    _ranges: list[list[int]] = field(default_factory=list)

    def hash_at(self, seq: int) -> Seen | None:
        return self._hashes.get(seq)

    def holds(self, seq: int) -> bool:
        """Whether `seq` was received in this run (or is the earlier run's anchor)."""
        if seq == self.anchor:
            return True
        i = bisect.bisect_right(self._ranges, [seq, _TOP]) - 1
        return i >= 0 and self._ranges[i][0] <= seq <= self._ranges[i][1]

    def remember(self, seq: int, seen: Seen, *, received: bool = True) -> None:
        self._hashes[seq] = seen
        self._order.append(seq)
        if len(self._order) > WINDOW:
            old = self._order.popleft()
            if old != self.anchor:
                self._hashes.pop(old, None)
        self.max_seq = max(self.max_seq, seq)
        if received:
            self._add_range(seq)

    def _add_range(self, seq: int) -> None:
        ranges = self._ranges
        i = bisect.bisect_right(ranges, [seq, _TOP])
        joins_left = i > 0 and ranges[i - 1][1] >= seq - 1
        joins_right = i < len(ranges) and ranges[i][0] <= seq + 1
        if joins_left and joins_right:
            ranges[i - 1][1] = ranges[i][1]
            del ranges[i]
        elif joins_left:
            ranges[i - 1][1] = max(ranges[i - 1][1], seq)
        elif joins_right:
            ranges[i][0] = min(ranges[i][0], seq)
        else:
            ranges.insert(i, [seq, seq])
        if len(ranges) > MAX_RANGES:  # bound the memory: close the oldest hole, count it
            ranges[0][1] = ranges[1][1]
            del ranges[1]
            self.forgotten_holes += 1

    def received(self) -> list[SeqRange]:
        """This run's seqs as inclusive ranges (the anchor is not among them)."""
        return [(first, last) for first, last in self._ranges]

    def missing(self) -> list[SeqRange]:
        """Holes between what was received, from the anchor (or the log's start) on."""
        points = [(first, last) for first, last in self._ranges]
        if self.anchor is not None:
            points.append((self.anchor, self.anchor))
        points.sort()
        holes: list[SeqRange] = []
        for (_, last), (first, _) in itertools.pairwise(points):
            if first > last + 1:
                holes.append((last + 1, first - 1))
        if points and self.start is not None and points[0][0] > self.start:
            holes.insert(0, (self.start, points[0][0] - 1))
        return holes

    def sizes(self) -> tuple[int, int]:
        """(chain hashes kept, seq ranges kept): at most (`WINDOW` + 1, `MAX_RANGES`)."""
        return len(self._hashes), len(self._ranges)

    def end(self) -> int | None:
        """The last seq of a closed log (None while open): `closed_at` when the announcement
        was exact, else the highest of its lower bound and every seq of the log held."""
        if self.closed_at is not None or self.last_named is None:
            return self.closed_at
        return max(self.last_named, self.max_seq, self.anchor or 0)

    def set_aside(self) -> SeqRange | None:
        """The seqs whose missing entries the closing announcement says were set aside."""
        end = self.end()
        if self.set_aside_from is None or end is None or end < self.set_aside_from:
            return None
        return self.set_aside_from, end

    def head(self) -> tuple[int, str] | None:
        """The highest seq whose hash is known, and the hash."""
        if not self._hashes:
            return None
        seq = max(self._hashes)
        return seq, self._hashes[seq].hash
