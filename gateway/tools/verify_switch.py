"""A hub's switch to a new log: a `log-started` entry checked against what was verified.

The hub starts a new log when it cannot prove its outbox is the newest (docs/protocol.md), and
signs `log-started` as the new log's first entry, naming the log before it and that log's last
seq and chain hash, and whether that seq is `exact`. Signed with the key pinned for the hub, and
agreeing with what the verifier holds (or what `--state` held), it is an announced switch. With
`exact: true` (or no `exact`: a hub from before it) the previous log is closed at that seq, and
an entry after it in the old log is then a conflict. With `exact: false` the seq is a lower
bound (the hub's head file lagged its outbox when it crashed, and later entries may have been
sent): the previous log ends at the highest seq it reaches, and later entries of it are checked
like any log's (a conflict at a seq, a broken chain). What contradicts what was verified is
counted (`HubLog.contradictions`, a failure under `--strict`) and reported: a previous log
other than the one held, a different hash at the named seq (or one the next entry held does
not chain to), entries already held after an exact closing seq, a log closed twice, or "no
previous log" from a hub already known. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.tools.verify_logs import LogState
from gateway.tools.verify_verdict import HubLog


def log_switch(hub_log: HubLog, state: LogState, topic: str, seq: int, detail: object) -> None:
    """Take the log-started entry `seq` of log `state` (already placed in it)."""
    state.start = seq
    previous = detail.get("previous") if isinstance(detail, Mapping) else None
    if previous is None:
        _first_start(hub_log, state, topic, seq)
        return
    key, last_seq, last_hash = _named(previous)
    exact = previous.get("exact", True) if isinstance(previous, Mapping) else None
    if last_seq is None or last_hash is None or not isinstance(exact, bool):
        _contradiction(
            hub_log, topic, seq, "its previous is not {log, last_seq, last_hash[, exact]}"
        )
        return
    old = hub_log.logs.get(key)
    if old is None or old is state:
        others = [k for k in hub_log.logs if k != state.log]
        if others:  # the verifier holds this hub's log, and it is not the one named
            _contradiction(
                hub_log,
                topic,
                seq,
                f"it names log {key!r}, but the hub's log held is {others[-1]!r}",
            )
            return
        _accept(hub_log, state, key)
        return
    why = _disagrees(old, state, (last_seq, last_hash, exact))
    if why:
        _contradiction(hub_log, topic, seq, why)
        return
    old.closed_by, old.last_named = state.log, last_seq
    old.closed_at = last_seq if exact else None  # a lower bound closes it at its highest seq
    set_aside = detail.get("set_aside") if isinstance(detail, Mapping) else None
    if set_aside is not None:
        # Left in a set-aside outbox, announced: what never came of the old log after what
        # is held now (exact: up to last_seq; a lower bound: up to wherever the log ends).
        old.set_aside_from = min(max(old.max_seq, old.anchor or 0), last_seq) + 1
    _accept(hub_log, state, key)


def _named(previous: object) -> tuple[str, int | None, str | None]:
    if not isinstance(previous, Mapping):
        return "", None, None
    log_id, last_seq, last_hash = (previous.get(k) for k in ("log", "last_seq", "last_hash"))
    key = log_id if isinstance(log_id, str) else ""
    seq_ok = isinstance(last_seq, int) and not isinstance(last_seq, bool) and last_seq >= 0
    return (
        key,
        last_seq if seq_ok else None,
        last_hash if isinstance(last_hash, str) else None,
    )


def _disagrees(old: LogState, new: LogState, named: tuple[int, str, bool]) -> str:
    last_seq, last_hash, exact = named
    if old.closed_by is not None and old.closed_by != new.log:
        return f"log {old.log} was already closed at seq {old.last_named} by log {old.closed_by}"
    known = old.hash_at(last_seq)
    if known is not None and known.hash != last_hash:
        return f"the hash it gives for seq {last_seq} of log {old.log} is not the one verified"
    after = old.hash_at(last_seq + 1)
    # (An earlier run's anchor has no `prev` kept: only an entry received here links back.)
    if after is not None and old.anchor != last_seq + 1 and after.prev != last_hash:
        return (
            f"the hash it gives for seq {last_seq} of log {old.log} is not the one seq "
            f"{last_seq + 1} chains to"
        )
    top = max(old.max_seq, old.anchor or 0)
    if exact and top > last_seq:
        return (
            f"it closes log {old.log} at seq {last_seq}, but seq {top} of it was already "
            "verified: the hub was rolled back, or the log forked"
        )
    return ""


def _first_start(hub_log: HubLog, state: LogState, topic: str, seq: int) -> None:
    others = [k for k in hub_log.logs if k != state.log]
    if others:
        _contradiction(
            hub_log,
            topic,
            seq,
            f"it names no previous log, but log {others[-1]!r} of this hub was verified",
        )
        return
    _accept(hub_log, state, "")


def _accept(hub_log: HubLog, state: LogState, previous: str) -> None:
    state.announced_by = previous
    hub_log.log = state.log
    if previous or hub_log.base != state.log:
        hub_log.log_switches += 1


def _contradiction(hub_log: HubLog, topic: str, seq: int, why: str) -> None:
    hub_log.contradictions += 1
    hub_log.problem(
        "log-switch", seq, topic, f"a log-started that contradicts what was verified: {why}"
    )
