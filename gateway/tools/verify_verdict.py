"""One hub's log as the verifier holds it (`HubLog`), and its verdict (`hub_report`).

What lives here: the mutable per-hub state the `Verifier` fills, the seq-range arithmetic
(missing ranges, announced gaps, a cut tail) and the rules that turn counts into failures:
always a bad signature, malformed entry, conflict, chain break, replay, key change or a key
taken from the status message; with `strict` also unexplained gaps, a first seq other than the
expected next one, schema errors and payloads left unchecked. Pure: no I/O, no clock, no keys
(`gateway.tools.verifier` checks signatures).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from gateway.hub.identity import PublicKey
from gateway.hub.jws import JWSEntry
from gateway.tools.verify_logs import MAX_LOGS, LogState, Seen
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


@dataclass(slots=True)
class HubLog:
    """Mutable per-hub state behind a `HubReport`: its logs (`LogState`, keyed by log id;
    "" for entries without one), `log` the newest, `base` the one the others must be
    announced from (the earlier run's, or the first seen). `earlier` is the head an earlier
    run verified (`--state`): it sits in its log as the anchor the next entry chains to."""

    hub: str
    earlier: LogHead | None = None
    logs: dict[str, LogState] = field(default_factory=dict)
    log: str | None = None
    base: str | None = None
    status_key: PublicKey | None = None
    pending: list[tuple[str, JWSEntry]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    status: Mapping[str, object] | None = None
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
    log_switches: int = 0
    contradictions: int = 0
    unchecked: int = 0

    def __post_init__(self) -> None:
        if self.earlier is not None:
            # The earlier run's head: a re-sent copy is a duplicate, other content under its
            # seq a conflict, and the next entry's prev must be its hash.
            key = self.earlier.log or ""
            state = self.log_state(key)
            state.anchor = self.earlier.seq
            state.remember(self.earlier.seq, Seen(self.earlier.hash, prev=""), received=False)

    def log_state(self, key: str) -> LogState:
        """The log `key`, made on first sight (the first one seen is the base)."""
        state = self.logs.get(key)
        if state is None:
            if len(self.logs) >= MAX_LOGS:  # forget the oldest closed log
                oldest = next((k for k, v in self.logs.items() if v.closed_by is not None), None)
                if oldest is not None:
                    del self.logs[oldest]
            state = self.logs[key] = LogState(key)
            if self.base is None:
                self.base = self.log = key
        return state

    def problem(self, kind: ProblemKind, seq: int | None, topic: str, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind, seq, topic, reason))

    def unannounced(self) -> list[str]:
        """Logs other than the base that no valid log-started announced."""
        return [k for k, v in self.logs.items() if k != self.base and v.announced_by is None]


@dataclass(frozen=True, slots=True)
class Policy:
    """What fails beyond forgery and contradiction. `schema_checked` is False when the
    payloads could not be checked (jsonschema missing or switched off)."""

    strict: bool = False
    schema_checked: bool = True
    expected_last: int | None = None


def hub_report(hub_log: HubLog, key_source: KeySource, policy: Policy) -> HubReport:
    announced: list[SeqRange] = []
    gaps: list[SeqRange] = []
    newest = hub_log.logs.get(hub_log.log) if hub_log.log is not None else None
    for state in hub_log.logs.values():
        missing = state.missing()
        top = max(state.max_seq, state.anchor or 0)
        end = state.end()
        if end is not None and end > top:
            missing.append((top + 1, end))  # the old log's tail never came
        if state is newest and policy.expected_last is not None and policy.expected_last > top:
            missing.append((top + 1, policy.expected_last))  # a cut tail
        set_aside = state.set_aside()
        log_announced = merge(
            state.announced
            + ([] if set_aside is None else [r for gap in missing for r in _within(gap, set_aside)])
        )
        announced.extend(log_announced)
        gaps.extend(r for gap in missing for r in subtract(gap, log_announced))
    if newest is None and policy.expected_last is not None:
        gaps.append((1, policy.expected_last))  # a hub expected but never heard from
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
    unannounced = hub_log.unannounced()
    problems.extend(
        Problem(
            "log-switch",
            None,
            hub_log.hub,
            f"log {key} began without a log-started event naming the log before it",
        )
        for key in unannounced
    )
    earlier = hub_log.earlier
    expected_first = earlier.seq + 1 if earlier is not None else None
    earlier_new = hub_log.logs[earlier.log or ""].received() if earlier is not None else []
    received = newest.received() if newest is not None else []
    head_at = newest.head() if newest is not None else None
    head = LogHead(head_at[0], head_at[1], hub_log.log or None) if head_at is not None else None
    failures = _failures(
        hub_log,
        key_source=key_source,
        policy=policy,
        gaps=tuple(gaps),
        unverified=unverified,
        earlier_first=earlier_new[0][0] if earlier_new else None,
        expected_first=expected_first,
        unannounced=len(unannounced),
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
        first_seq=received[0][0] if received else None,
        last_seq=received[-1][1] if received else None,
        expected_first_seq=expected_first,
        gaps=tuple(gaps),
        announced_gaps=tuple(merge(announced)),
        key_source=key_source,
        status=hub_log.status,
        problems=tuple(problems),
        failures=tuple(failures),
        head=head,
        logs=tuple(hub_log.logs),
        log_switches=hub_log.log_switches,
    )


def _failures(
    hub_log: HubLog,
    *,
    key_source: KeySource,
    policy: Policy,
    gaps: tuple[SeqRange, ...],
    unverified: int,
    earlier_first: int | None,
    expected_first: int | None,
    unannounced: int,
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
    if expected_first is not None and earlier_first not in (None, expected_first):
        failures.append(f"first seq {earlier_first}, expected {expected_first} (strict)")
    if unannounced:
        failures.append(f"{unannounced} new logs without a log-started announcement (strict)")
    if hub_log.contradictions:
        failures.append(
            f"{hub_log.contradictions} log-started announcements that contradict what was "
            "verified (strict)"
        )
    if gaps:
        failures.append(f"unexplained gaps: {ranges_text(gaps)} (strict)")
    if hub_log.schema_errors:
        failures.append(f"{hub_log.schema_errors} schema errors (strict)")
    if not policy.schema_checked and hub_log.verified:
        failures.append("payloads were not checked against the schema (strict)")
    return failures


def merge(ranges: list[SeqRange]) -> list[SeqRange]:
    merged: list[SeqRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _within(gap: SeqRange, bounds: SeqRange) -> list[SeqRange]:
    """The part of `gap` inside `bounds` (none or one range)."""
    first, last = max(gap[0], bounds[0]), min(gap[1], bounds[1])
    return [(first, last)] if first <= last else []


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
