"""The identity a configured device had the last time it was served, and the signed
`device-identity-changed` event when it differs.

What lives here: `IdentityMemory`. It keeps the last-seen `address`, `serial` and `model` of
one configured device in the outbox's meta table (read through the outbox, written through the
journal, and only when something changed), so a restart does not forget it. A difference
against what was seen before is signed, one event per identifier, and logged at WARNING
(identifiers only: they are the configured device's own). The first identity ever seen is
stored silently. What may not: deciding whether to serve a device (sessions decide that).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

from gateway.hub.journal import Journal
from gateway.hub.outbox_file import MetaValue, OutboxError

log = logging.getLogger(__name__)

IDENTIFIERS = ("address", "serial", "model")
"""What identifies the device behind a configured id; any of them may be unknown (null)."""


class IdentityMemory:
    """The last-seen identifiers of one configured device, kept across restarts."""

    def __init__(
        self, device_id: str, stored: Callable[[str], MetaValue | None], journal: Journal
    ) -> None:
        self.device_id = device_id
        self.key = f"identity:{device_id}"
        self._stored = stored
        self._journal = journal
        self._last: dict[str, str | None] | None = None
        self._read = False

    def _before(self) -> dict[str, str | None] | None:
        if not self._read:
            self._read = True
            try:
                raw = self._stored(self.key)
            except OutboxError as exc:
                log.warning("device %s: cannot read its last identity (%s)", self.device_id, exc)
                raw = None
            if isinstance(raw, str):
                try:
                    value = json.loads(raw)
                except ValueError:
                    value = None
                if isinstance(value, dict):
                    self._last = {k: _text(value.get(k)) for k in IDENTIFIERS}
        return self._last

    def last(self, identifier: str) -> str | None:
        """The `identifier` ("address", "serial", "model") seen last time; None if not known."""
        before = self._before()
        return None if before is None else before.get(identifier)

    def seen(self, identity: Mapping[str, object]) -> list[tuple[str, str | None, str | None]]:
        """Compare `identity` with the last one seen; sign and log each difference, store the
        new one when it differs. Returns the changes as (identifier, from, to)."""
        now = {k: _text(identity.get(k)) for k in IDENTIFIERS}
        before = self._before()
        if before == now:
            return []
        changes = [] if before is None else [(k, before[k], now[k]) for k in IDENTIFIERS]
        changes = [c for c in changes if c[1] != c[2]]
        stored = json.dumps(now, separators=(",", ":"))
        for index, (what, old, new) in enumerate(changes):
            log.warning(
                "device %s: its %s changed from %s to %s; if the device was not replaced, "
                "another device may be answering in its place: check the device near the "
                "patient",
                self.device_id,
                what,
                old or "(none)",
                new or "(none)",
            )
            # The new identity commits with the last event, never before the events that
            # explain it: a power cut in between must not leave a change unsigned.
            last = index == len(changes) - 1
            self._journal.event(
                "device-identity-changed",
                {"device": self.device_id, "changed": what, "from": old, "to": new},
                meta={self.key: stored} if last else None,
            )
        self._last = now
        if not changes:  # the first identity ever seen: nothing to sign, stored alone
            try:
                self._journal.set_cursor(self.key, stored)
            except OutboxError as exc:  # the next start stores it again
                log.warning("device %s: cannot store its identity (%s)", self.device_id, exc)
        return changes


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
