"""One hub's log as the verifier holds it (`HubLog`), and its verdict (`hub_report`).

What lives here: the mutable per-hub state the `Verifier` fills, the seq-range arithmetic
(missing ranges, announced gaps, a cut tail) and the rules that turn counts into failures:
always a bad signature, malformed entry, conflict, chain break, replay, key change or a key
taken from the status message; with `strict` also unexplained gaps, a first seq other than the
expected next one, schema errors and payloads left unchecked. Pure: no I/O, no clock, no keys
(`gateway.tools.verifier` checks signatures).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from gateway.hub.identity import PublicKey
from gateway.hub.jws import JWSEntry
from gateway.tools.verify_report import (
    HubReport,
    KeySource,
    LogHead,
    Problem,
    ProblemKind,
    SeqRange,
    ranges_text,
)

MAX_PROBLEMS: Final = 100
"""Problems kept per hub in a report; the counters go on counting past it."""


@dataclass(frozen=True, slots=True)
class Seen:
    hash: str
    prev: str


@dataclass(slots=True)
class HubLog:
    """Mutable per-hub state behind a `HubReport`. `earlier` is the head an earlier run
    verified (`--state`): it sits in `entries` as the anchor the next entry must chain to."""

    hub: str
    earlier: LogHead | None = None
    entries: dict[int, Seen] = field(default_factory=dict)
    status_key: PublicKey | None = None
    pending: list[tuple[str, JWSEntry]] = field(default_factory=list)
    announced: list[SeqRange] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    status: Mapping[str, object] | None = None
    log: str | None = None
    max_seq: int = 0
    received: int = 0
    verified: int = 0
    readings: int = 0
    events: int = 0
    bad_signatures: int = 0
    malformed: int = 0
    duplicates: int = 0
    conflicts: int = 0
    chain_breaks: int = 0
    replayed: int = 0
    out_of_order: int = 0
    schema_errors: int = 0
    key_changes: int = 0

    def __post_init__(self) -> None:
        if self.earlier is not None:
            # The earlier run's head: a re-sent copy is a duplicate, other content under its
            # seq a conflict, and the next entry's prev must be its hash.
            self.entries[self.earlier.seq] = Seen(self.earlier.hash, prev="")
            self.max_seq = self.earlier.seq
            self.log = self.earlier.log

    def problem(self, kind: ProblemKind, seq: int | None, topic: str, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind, seq, topic, reason))

    def new_seqs(self) -> list[int]:
        """The seqs held from this run, sorted (the earlier run's head is not one of them)."""
        anchor = self.earlier.seq if self.earlier is not None else None
        return sorted(seq for seq in self.entries if seq != anchor)


@dataclass(frozen=True, slots=True)
class Policy:
    """What fails beyond forgery and contradiction. `schema_checked` is False when the
    payloads could not be checked (jsonschema missing or switched off)."""

    strict: bool = False
    schema_checked: bool = True
    expected_last: int | None = None


def hub_report(hub_log: HubLog, key_source: KeySource, policy: Policy) -> HubReport:
    announced = merge(hub_log.announced)
    held = sorted(hub_log.entries)
    missing = missing_ranges(held)
    if policy.expected_last is not None and policy.expected_last > hub_log.max_seq:
        missing.append((hub_log.max_seq + 1, policy.expected_last))  # a cut tail
    gaps = tuple(r for gap in missing for r in subtract(gap, announced))
    problems = list(hub_log.problems)
    unverified = len(hub_log.pending)
    if unverified:
        problems.append(
            Problem(
                "bad-signature",
                None,
                hub_log.hub,
                f"{unverified} entries could not be checked: the hub's status message "
                "carried no key",
            )
        )
    new = hub_log.new_seqs()
    earlier = hub_log.earlier
    expected_first = earlier.seq + 1 if earlier is not None else None
    head_seq = max(hub_log.entries, default=None)
    head = (
        LogHead(head_seq, hub_log.entries[head_seq].hash, hub_log.log)
        if head_seq is not None
        else None
    )
    failures = _failures(
        hub_log,
        key_source=key_source,
        policy=policy,
        gaps=gaps,
        unverified=unverified,
        new=new,
        expected_first=expected_first,
    )
    return HubReport(
        hub=hub_log.hub,
        received=hub_log.received,
        verified=hub_log.verified,
        readings=hub_log.readings,
        events=hub_log.events,
        bad_signatures=hub_log.bad_signatures + unverified,
        malformed=hub_log.malformed,
        duplicates=hub_log.duplicates,
        conflicts=hub_log.conflicts,
        chain_breaks=hub_log.chain_breaks,
        replayed=hub_log.replayed,
        out_of_order=hub_log.out_of_order,
        schema_errors=hub_log.schema_errors,
        first_seq=new[0] if new else None,
        last_seq=new[-1] if new else None,
        expected_first_seq=expected_first,
        gaps=gaps,
        announced_gaps=tuple(announced),
        key_source=key_source,
        status=hub_log.status,
        problems=tuple(problems),
        failures=tuple(failures),
        head=head,
    )


def _failures(
    hub_log: HubLog,
    *,
    key_source: KeySource,
    policy: Policy,
    gaps: tuple[SeqRange, ...],
    unverified: int,
    new: list[int],
    expected_first: int | None,
) -> list[str]:
    failures = [
        f"{count} {what}"
        for count, what in (
            (hub_log.bad_signatures + unverified, "entries not verified with the hub's key"),
            (hub_log.malformed, "malformed messages or entries"),
            (hub_log.conflicts, "conflicts (a seq reused for different content)"),
            (hub_log.chain_breaks, "chain breaks"),
            (hub_log.replayed, "replayed entries (before an earlier run's last seq)"),
            (hub_log.key_changes, "other keys announced in the status message"),
        )
        if count
    ]
    if key_source == "status":
        failures.append(
            "the key was taken from the hub's unsigned status message (--trust-status-key), "
            "not pinned: anyone allowed to publish there could have forged it"
        )
    if not policy.strict:
        return failures
    if expected_first is not None and new and new[0] != expected_first:
        failures.append(f"first seq {new[0]}, expected {expected_first} (strict)")
    if gaps:
        failures.append(f"unexplained gaps: {ranges_text(gaps)} (strict)")
    if hub_log.schema_errors:
        failures.append(f"{hub_log.schema_errors} schema errors (strict)")
    if not policy.schema_checked and hub_log.verified:
        failures.append("payloads were not checked against the schema (strict)")
    return failures


def missing_ranges(seqs: list[int]) -> list[SeqRange]:
    return [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b > a + 1]


def merge(ranges: list[SeqRange]) -> list[SeqRange]:
    merged: list[SeqRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def subtract(gap: SeqRange, announced: list[SeqRange]) -> list[SeqRange]:
    """The parts of `gap` no announced range covers."""
    left = [gap]
    for first, last in announced:
        left = [
            piece
            for a, b in left
            for piece in ((a, min(b, first - 1)), (max(a, last + 1), b))
            if piece[0] <= piece[1]
        ]
    return left
