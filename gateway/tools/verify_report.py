"""What `rtm-gateway verify` found: per hub and over all hubs, as data, JSON and text.

What lives here: `Problem`, `LogHead`, `HubReport` and `VerifyReport` with their `to_dict` and
`render`. The checks that fill them are in `gateway.tools.verifier` and
`gateway.tools.verify_verdict`. Health values may appear in a report, never in log lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

ProblemKind = Literal[
    "bad-signature",
    "malformed",
    "conflict",
    "chain-break",
    "schema",
    "replay",
    "key-change",
    "log-switch",
]
SeqRange = tuple[int, int]
StoppedBy = Literal["count", "time", "interrupted", ""]
KeySource = Literal["pinned", "status", "none"]


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    seq: int | None
    topic: str
    reason: str


@dataclass(frozen=True, slots=True)
class LogHead:
    """The last entry verified from one hub's log: what `--state` keeps between runs. `log` is
    the log's id once payloads carry one (None until then)."""

    seq: int
    hash: str
    log: str | None = None


@dataclass(frozen=True, slots=True)
class HubReport:
    """What was seen from one hub. `gaps` are inclusive seq ranges nobody explained (with
    `--state`, from the earlier run's last seq; with an expected last seq, up to it);
    `announced_gaps` are ranges the hub itself reported dropped in signed gap events. Seqs are
    per log (`logs`); `first_seq`, `last_seq` and `head` are of the newest log.
    `failures` says, in words, why the hub failed; empty means ok. `head` is the highest
    entry held, or the earlier run's when nothing newer came."""

    hub: str
    received: int
    verified: int
    readings: int
    events: int
    bad_signatures: int
    malformed: int
    duplicates: int
    conflicts: int
    chain_breaks: int
    replayed: int
    out_of_order: int
    schema_errors: int
    first_seq: int | None
    last_seq: int | None
    expected_first_seq: int | None
    gaps: tuple[SeqRange, ...]
    announced_gaps: tuple[SeqRange, ...]
    key_source: KeySource
    status: Mapping[str, object] | None
    problems: tuple[Problem, ...]
    failures: tuple[str, ...]
    head: LogHead | None
    logs: tuple[str, ...] = ()
    """The log ids seen, oldest first ("" for entries that carry none)."""
    log_switches: int = 0
    """Announced log switches (log-started events naming the log before) accepted."""

    @property
    def ok(self) -> bool:
        """Nothing forged, altered, replayed or contradictory was seen, every entry was
        checked with the key pinned for this hub, and (with `--strict`) nothing is missing."""
        return not self.failures

    def to_dict(self) -> dict[str, object]:
        return {
            "hub": self.hub,
            "ok": self.ok,
            "failures": list(self.failures),
            "received": self.received,
            "verified": self.verified,
            "readings": self.readings,
            "events": self.events,
            "bad_signatures": self.bad_signatures,
            "malformed": self.malformed,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "chain_breaks": self.chain_breaks,
            "replayed": self.replayed,
            "out_of_order": self.out_of_order,
            "schema_errors": self.schema_errors,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "expected_first_seq": self.expected_first_seq,
            "gaps": [list(r) for r in self.gaps],
            "announced_gaps": [list(r) for r in self.announced_gaps],
            "logs": list(self.logs),
            "log_switches": self.log_switches,
            "key_source": self.key_source,
            "head": (
                {"log": self.head.log, "seq": self.head.seq, "hash": self.head.hash}
                if self.head is not None
                else None
            ),
            "status": dict(self.status) if self.status is not None else None,
            "problems": [
                {"kind": p.kind, "seq": p.seq, "topic": p.topic, "reason": p.reason}
                for p in self.problems
            ],
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result over all hubs. `ok` means every hub is ok — check `received` too: a report
    of nothing is ok. `key_pinned` is False when any hub's key came from its status message
    (which fails that hub). `strict` says whether gaps and schema errors failed."""

    hubs: tuple[HubReport, ...]
    key_pinned: bool
    notes: tuple[str, ...] = ()
    stopped_by: StoppedBy = ""
    strict: bool = False

    @property
    def ok(self) -> bool:
        return all(hub.ok for hub in self.hubs)

    @property
    def received(self) -> int:
        return sum(hub.received for hub in self.hubs)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "received": self.received,
            "key_pinned": self.key_pinned,
            "strict": self.strict,
            "stopped_by": self.stopped_by or None,
            "notes": list(self.notes),
            "hubs": [hub.to_dict() for hub in self.hubs],
        }

    def render(self) -> str:
        """A short human rendering for the terminal."""
        lines = [
            f"{'OK' if self.ok else 'FAILED'}: {self.received} entries from "
            f"{len(self.hubs)} hub(s)"
            + (f", stopped by {self.stopped_by}" if self.stopped_by else "")
            + (", strict" if self.strict else "")
        ]
        for hub in self.hubs:
            lines.extend(_render_hub(hub))
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _render_hub(hub: HubReport) -> list[str]:
    seqs = f"seq {hub.first_seq}..{hub.last_seq}" if hub.first_seq is not None else "no seq"
    lines = [
        f"hub {hub.hub}: {'ok' if hub.ok else 'FAILED'}, {seqs}, "
        f"{hub.verified}/{hub.received} verified ({hub.readings} readings, "
        f"{hub.events} events), key {hub.key_source}"
    ]
    lines.extend(f"  FAILED: {failure}" for failure in hub.failures)
    counts = [
        (hub.bad_signatures, "bad signatures"),
        (hub.malformed, "malformed"),
        (hub.conflicts, "CONFLICTS"),
        (hub.chain_breaks, "chain breaks"),
        (hub.replayed, "replayed"),
        (hub.duplicates, "duplicates"),
        (hub.out_of_order, "out of order"),
        (hub.schema_errors, "schema errors"),
    ]
    shown = [f"{n} {label}" for n, label in counts if n]
    if shown:
        lines.append("  " + ", ".join(shown))
    if hub.log_switches:
        lines.append(f"  announced log switches: {hub.log_switches} ({len(hub.logs)} logs)")
    if hub.gaps:
        lines.append("  gaps (missing, unexplained): " + ranges_text(hub.gaps))
    if hub.announced_gaps:
        lines.append("  announced gaps (dropped by the hub): " + ranges_text(hub.announced_gaps))
    lines.extend(
        f"  {p.kind} at seq {p.seq if p.seq is not None else '?'}: {p.reason}"
        for p in hub.problems[:10]
    )
    if len(hub.problems) > 10:
        lines.append(f"  ... {len(hub.problems) - 10} more problems (see --json)")
    return lines


def ranges_text(ranges: tuple[SeqRange, ...]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in ranges)
