"""What the hub keeps about a numbered stored-record source between connections, beside its
position (the device's identity and a bounded memory of the records it stored), and how it
reports the records it skips.

What lives here (pure: no I/O): `CursorState` (the highest position stored, the records the
device holds as far as the hub knows, its Device Information serial and model, the digests of
the last `MAX_RECENT` records stored), `record_digest`, `newer` (serial-number arithmetic,
RFC 1982, for counters that wrap) and `Skips` (records dropped, counted by reason: a WARNING
with the count, never a value, and a signed `records-skipped` event; and `records-reset`).
sessions/records.py decides with them; the journal stores a state (as JSON,
`CursorState.dump`) in the same transaction as the record it describes.

The digests are what make a re-fetch safe: after a counter restart, a replaced device or a wrap,
the hub asks for every record and skips those whose digest it holds. 1000 digests of 12 hex
characters (48 bits) are about 12 KB; a device holding more records than that may have its
oldest ones signed again after such a re-fetch (a duplicate the platform detects, never a
loss).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.hub.outbox_file import MetaValue
from gateway.sdk import Reading

log = logging.getLogger(__name__)

MAX_RECENT = 1000
DIGEST_CHARS = 12
SKIPPED_REPORT_INTERVAL = 60.0
"""Seconds between two reports of live records skipped outside a transfer."""

Event = Callable[[str, Mapping[str, object]], None]
_SKIP_WORDS = {
    "already-stored": "already stored",
    "before-position": "numbered before the position, content not seen",
}


def record_digest(position: int, reading: Reading) -> str:
    """A record's digest: its position, its device time and its bytes."""
    stamp = "" if reading.device_time is None else reading.device_time.isoformat()
    text = f"{position}|{stamp}|".encode() + reading.raw
    return hashlib.sha256(text).hexdigest()[:DIGEST_CHARS]


def newer(position: int, than: int, wrap: int) -> bool:
    """Whether `position` comes after `than`: plainly, or, for a counter of `wrap` values, by
    serial-number arithmetic (within half the range ahead, so 0 follows 65535)."""
    if wrap <= 0:
        return position > than
    return 0 < (position - than) % wrap < wrap // 2


def state_key(key: str) -> str:
    """Where the state beside a position is kept: `ble.<name>-state:<device id>`."""
    name, colon, device = key.partition(":")
    return f"{name}-state{colon}{device}"


def digest_list(stored: MetaValue | None) -> list[str]:
    """The digests kept for records without a number (`position="digest"`), oldest first."""
    try:
        loaded = json.loads(stored) if isinstance(stored, str) else []
    except ValueError:
        loaded = []
    return [d for d in loaded if isinstance(d, str)] if isinstance(loaded, list) else []


@dataclass(slots=True)
class CursorState:
    high: int | None = None
    """The position of the newest record stored; None: ask for all."""
    known: int | None = None
    """The records the device holds as far as the hub knows (None: not known)."""
    serial: str | None = None
    model: str | None = None
    recent: str = ""
    """The digests of the last records stored, oldest first, `DIGEST_CHARS` each."""
    oldest: tuple[int, str] | None = None
    """The device's oldest record when the hub last saw its whole memory: position, digest."""
    _seen: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, position: MetaValue | None, stored: MetaValue | None) -> CursorState:
        """From the position (a number, as hubs before this state kept it) and the state
        (JSON; missing or damaged: only the position is known)."""
        state = cls()
        if isinstance(position, int | float) and not isinstance(position, bool):
            state.high = int(position)
        try:
            loaded = json.loads(stored) if isinstance(stored, str) else {}
        except ValueError:
            loaded = {}
        if not isinstance(loaded, Mapping):
            return state
        if "high" in loaded:  # stored with the position: it wins (None: ask for all again)
            high = loaded["high"]
            state.high = high if isinstance(high, int) and not isinstance(high, bool) else None
        known = loaded.get("known")
        state.known = known if isinstance(known, int) and not isinstance(known, bool) else None
        for name in ("serial", "model"):
            if isinstance(value := loaded.get(name), str) and value:
                setattr(state, name, value)
        oldest = loaded.get("oldest")
        if isinstance(oldest, list) and len(oldest) == 2:
            position, digest = oldest
            if isinstance(position, int) and isinstance(digest, str):
                state.oldest = (position, digest)
        recent = loaded.get("recent")
        if isinstance(recent, str) and len(recent) % DIGEST_CHARS == 0:
            state.recent = recent[-MAX_RECENT * DIGEST_CHARS :]
        state._seen = {
            state.recent[i : i + DIGEST_CHARS] for i in range(0, len(state.recent), DIGEST_CHARS)
        }
        return state

    def adopt(self, identity: Mapping[str, object]) -> tuple[bool, bool]:
        """Take the connected device's serial and model: (another device than the one this
        state was kept for, replaced under the same configured id?, did the state change?)."""
        replaced = changed = False
        for name in ("serial", "model"):
            now = identity.get(name)
            if isinstance(now, str) and now and now != (before := getattr(self, name)):
                replaced, changed = replaced or before is not None, True
                setattr(self, name, now)
        return replaced, changed

    def knows(self, digest: str) -> bool:
        return digest in self._seen

    def remember(self, digest: str) -> None:
        self.recent = (self.recent + digest)[-MAX_RECENT * DIGEST_CHARS :]
        self._seen.add(digest)  # an evicted digest stays known until the next connection

    def dump(self) -> str:
        state: dict[str, object] = {"high": self.high, "known": self.known}
        state.update(serial=self.serial, model=self.model, oldest=self.oldest, recent=self.recent)
        return json.dumps(state, separators=(",", ":"))


class Skips:
    """The records a device's transfers dropped, by reason (`already-stored`, or
    `before-position`: a number behind the position with content never stored), reported at
    the end of each request (`report`), or at once and then at most once a minute for live
    values (`add(..., live=True)`)."""

    def __init__(self, device: str, event: Event) -> None:
        self.device = device
        self._event = event
        self._unreported = Counter[str]()
        self._reported_at = -SKIPPED_REPORT_INTERVAL

    def add(self, reason: str, *, live: bool) -> None:
        self._unreported[reason] += 1
        if live and time.monotonic() - self._reported_at >= SKIPPED_REPORT_INTERVAL:
            self.report()

    def report(self) -> None:
        if not self._unreported:
            return
        self._reported_at = time.monotonic()
        for reason, count in sorted(self._unreported.items()):
            log.warning(
                "device %s: %d records skipped (%s); nothing to do unless this repeats on "
                "every connection (then check the device's record counter)",
                self.device,
                count,
                _SKIP_WORDS[reason],
            )
            self._event(
                "records-skipped", {"device": self.device, "count": count, "reason": reason}
            )
        self._unreported.clear()

    def reset(
        self, reason: str, previous: int | None, cursor: int | None, kept: int, skipped: int
    ) -> None:
        """A request for every record ended: what was asked for again and why, signed."""
        level = logging.INFO if reason == "counter-wrapped" else logging.WARNING
        log.log(
            level,
            "device %s: stored records %s (%s): %d new, %d already stored",
            self.device,
            "fetched past the wrap" if reason == "counter-wrapped" else "fetched again",
            reason,
            kept,
            skipped,
        )
        detail = {"device": self.device, "reason": reason, "previous": previous, "cursor": cursor}
        self._event("records-reset", {**detail, "refetched": kept, "duplicates": skipped})
