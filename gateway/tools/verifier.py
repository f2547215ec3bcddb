"""The platform side's check of what hubs published, pure: no I/O, no clock.

`Verifier` takes MQTT messages (topic, payload bytes) in arrival order and gives a
`VerifyReport`. Per hub it checks each entry's signature (`gateway.hub.jws`), then the hub's
one log of readings and events: duplicates (same seq, same content — harmless, QoS 1 is
at-least-once), conflicts (same seq, different content — serious), chain breaks (`prev` is not
the hash of the entry before), gaps (seqs never seen, apart from ranges a signed gap event
announced), out-of-order arrivals and, if jsonschema is installed, the payload schema.

What may not live here: sockets, MQTT, files other than the packaged schema, anything of the
hub's own pipeline (`gateway.tools.verify` subscribes to a broker and feeds this). The daemon
never imports it. Health values go into the report, never into log lines.
"""

from __future__ import annotations

import importlib
import itertools
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Final, Literal

from gateway.hub.identity import IdentityError, PublicKey
from gateway.hub.jws import JWSEntry, SignatureError, parse_jws
from gateway.tools.verify_report import (
    HubReport,
    Problem,
    ProblemKind,
    SeqRange,
    StoppedBy,
    VerifyReport,
)

DEFAULT_PREFIX: Final = "rtm/v1"
MAX_PROBLEMS: Final = 100
"""Problems kept per hub in a report; the counters go on counting past it."""

EntryCallback = Callable[[str, Mapping[str, object]], None]
"""`on_entry(topic, payload)`: called once for each newly verified entry, duplicates not."""


@dataclass(frozen=True, slots=True)
class _Seen:
    hash: str
    prev: str


@dataclass(slots=True)
class _HubLog:
    """Mutable per-hub state behind a `HubReport`."""

    hub: str
    entries: dict[int, _Seen] = field(default_factory=dict)
    keys: dict[str, PublicKey] = field(default_factory=dict)
    pending: list[tuple[str, JWSEntry]] = field(default_factory=list)
    announced: list[SeqRange] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    status: Mapping[str, object] | None = None
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
    out_of_order: int = 0
    schema_errors: int = 0

    def problem(self, kind: ProblemKind, seq: int | None, topic: str, reason: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind, seq, topic, reason))


class Verifier:
    """Checks a stream of MQTT messages from hubs. Pure: no I/O, no clock.

    `public_keys` are pinned keys (a `PublicKey` or a mapping kid -> key), trusted for any hub;
    give `hub` to look at one hub only. Without pinned keys, each hub's key is taken from the
    `jwk` of its retained status message — not pinned, and the report says so; entries that
    arrive before their hub's key wait for it. `feed` may be called from another thread than
    `report`. `check_schema` validates payloads against the JSON Schema: None means "if
    jsonschema is installed".
    """

    def __init__(
        self,
        public_keys: Mapping[str, PublicKey] | PublicKey | None = None,
        hub: str | None = None,
        *,
        topic_prefix: str = DEFAULT_PREFIX,
        check_schema: bool | None = None,
        on_entry: EntryCallback | None = None,
    ) -> None:
        if isinstance(public_keys, PublicKey):
            public_keys = {public_keys.kid: public_keys}
        self._pinned = {key.kid: key for key in (public_keys or {}).values()}
        self._hub = hub
        self._prefix = topic_prefix.rstrip("/") + "/"
        self._on_entry = on_entry
        self._logs: dict[str, _HubLog] = {}
        self._notes: list[str] = []
        self._lock = threading.RLock()  # RLock: on_entry may call report() from feed
        self._validator = _schema_validator(check_schema, self._notes)

    @property
    def received(self) -> int:
        """Entries received so far, over all hubs (a cheap counter for `run_verify`)."""
        with self._lock:
            return sum(hub_log.received for hub_log in self._logs.values())

    def feed(self, topic: str, payload: bytes | bytearray) -> None:
        """Take one MQTT message. Topics outside `{prefix}/{hub}/(readings|events|status)`
        are ignored."""
        if not topic.startswith(self._prefix):
            return
        hub, _, leaf = topic[len(self._prefix) :].partition("/")
        if not hub or (self._hub is not None and hub != self._hub):
            return
        with self._lock:
            if leaf == "status":
                self._status(self._log(hub), topic, payload)
            elif leaf in ("readings", "events"):
                self._batch(self._log(hub), topic, payload)

    def report(self, stopped_by: StoppedBy = "") -> VerifyReport:
        with self._lock:
            hubs = tuple(self._hub_report(self._logs[hub]) for hub in sorted(self._logs))
            notes = list(self._notes)
            if not self._pinned and any(h.key_source == "status" for h in hubs):
                notes.append(
                    "keys were taken from the hubs' retained status messages, not "
                    "pinned: anyone allowed to publish there could forge them; pin "
                    "each hub's public JWK (--jwk) to be sure"
                )
            return VerifyReport(hubs, bool(self._pinned), tuple(notes), stopped_by)

    # --- per message ----------------------------------------------------------------------------

    def _log(self, hub: str) -> _HubLog:
        hub_log = self._logs.get(hub)
        if hub_log is None:
            hub_log = self._logs[hub] = _HubLog(hub)
        return hub_log

    def _status(self, hub_log: _HubLog, topic: str, payload: bytes | bytearray) -> None:
        if not payload:  # a retained message being cleared
            hub_log.status = None
            return
        try:
            status = json.loads(payload)
        except ValueError:
            status = None
        if not isinstance(status, dict):
            hub_log.problem("malformed", None, topic, "the status message is not a JSON object")
            return
        hub_log.status = status
        jwk = status.get("jwk")
        if not isinstance(jwk, Mapping):
            return
        try:
            key = PublicKey.from_jwk(jwk)
        except IdentityError as exc:
            hub_log.problem("malformed", None, topic, f"the status message's jwk: {exc}")
            return
        if self._pinned:
            note = (
                f"hub {hub_log.hub} announces key {key.kid} in its status, which is not "
                "the pinned key"
            )
            if key.kid not in self._pinned and note not in self._notes:  # retained: repeats
                self._notes.append(note)
            return
        hub_log.keys[key.kid] = key
        waiting, hub_log.pending = hub_log.pending, []
        for waiting_topic, entry in waiting:
            self._entry(hub_log, waiting_topic, entry)

    def _batch(self, hub_log: _HubLog, topic: str, payload: bytes | bytearray) -> None:
        try:
            batch = json.loads(payload)
        except ValueError:
            batch = None
        if not isinstance(batch, list):
            hub_log.problem(
                "malformed", None, topic, "the message is not a JSON array of JWS objects"
            )
            hub_log.malformed += 1
            return
        for item in batch:
            hub_log.received += 1
            try:
                if not isinstance(item, Mapping):  # not JSON text inside the array, either
                    raise SignatureError("an array element is not a JWS object")  # noqa: TRY301
                entry = parse_jws(item)
            except SignatureError as exc:
                hub_log.bad_signatures += 1
                hub_log.problem("bad-signature", None, topic, str(exc))
                continue
            if not self._pinned and not hub_log.keys:
                hub_log.pending.append((topic, entry))  # its key may come with the status
                continue
            self._entry(hub_log, topic, entry)

    def _entry(self, hub_log: _HubLog, topic: str, entry: JWSEntry) -> None:
        keys = self._pinned or hub_log.keys
        kid = entry.kid
        key = (
            keys.get(kid)
            if kid is not None
            else (next(iter(keys.values())) if len(keys) == 1 else None)
        )
        try:
            if key is None:
                raise SignatureError(  # noqa: TRY301 - reported like any other bad signature
                    f"no key with kid {kid!r}"
                    if kid is not None
                    else "no kid in the header and more than one key to choose from"
                )
            payload = entry.verify(key)
        except SignatureError as exc:
            hub_log.bad_signatures += 1
            hub_log.problem("bad-signature", None, topic, str(exc))
            return
        hub_log.verified += 1
        seq = payload.get("seq")
        prev = payload.get("prev")
        kind = payload.get("kind")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            reason = f"seq {seq!r} is not a positive integer"
        elif not isinstance(prev, str):
            reason = "prev is not a string"
        elif payload.get("v") != 1:
            reason = f"unsupported payload version v={payload.get('v')!r}"
        elif payload.get("hub") != hub_log.hub:
            reason = f"payload hub {payload.get('hub')!r} differs from the topic's hub"
        else:
            reason = ""
        if reason or not isinstance(seq, int) or not isinstance(prev, str):
            # Not placed in the chain: without a trustworthy seq and hub there is no place.
            hub_log.malformed += 1
            hub_log.problem("malformed", None, topic, reason)
            return
        expected_kind = "reading" if topic.endswith("/readings") else "event"
        if kind != expected_kind:
            hub_log.malformed += 1
            hub_log.problem("malformed", seq, topic, f"kind {kind!r} on a {expected_kind}s topic")
        self._link(hub_log, topic, seq, _Seen(entry.chain_hash(), prev), payload)

    def _link(
        self, hub_log: _HubLog, topic: str, seq: int, seen: _Seen, payload: Mapping[str, object]
    ) -> None:
        known = hub_log.entries.get(seq)
        if known is not None:
            if known.hash == seen.hash:
                hub_log.duplicates += 1
            else:
                hub_log.conflicts += 1
                hub_log.problem(
                    "conflict",
                    seq,
                    topic,
                    "two different entries signed with the "
                    "same seq: the hub reused a sequence number",
                )
            return
        if seq < hub_log.max_seq:
            hub_log.out_of_order += 1
        hub_log.max_seq = max(hub_log.max_seq, seq)
        hub_log.entries[seq] = seen
        self._check_chain(hub_log, topic, seq, seen)
        if payload.get("kind") == "reading":
            hub_log.readings += 1
        else:
            hub_log.events += 1
            if payload.get("event") == "gap":
                self._announce(hub_log, topic, seq, payload.get("detail"))
        if self._validator is not None:
            error = next(iter(self._validator.iter_errors(payload)), None)
            if error is not None:
                hub_log.schema_errors += 1
                hub_log.problem("schema", seq, topic, f"{error.json_path}: {error.message}")
        if self._on_entry is not None:
            self._on_entry(topic, payload)

    @staticmethod
    def _check_chain(hub_log: _HubLog, topic: str, seq: int, seen: _Seen) -> None:
        """Check the links to both neighbours, whichever arrived first."""
        before = hub_log.entries.get(seq - 1)
        if before is not None and seen.prev != before.hash:
            hub_log.chain_breaks += 1
            hub_log.problem("chain-break", seq, topic, f"prev is not the hash of seq {seq - 1}")
        elif seq == 1 and seen.prev:
            hub_log.chain_breaks += 1
            hub_log.problem("chain-break", seq, topic, "the first entry's prev is not empty")
        elif before is None and seq > 1 and not seen.prev:
            hub_log.chain_breaks += 1
            hub_log.problem(
                "chain-break", seq, topic, "empty prev after seq 1: the hub's log was restarted"
            )
        after = hub_log.entries.get(seq + 1)
        if after is not None and after.prev != seen.hash:
            hub_log.chain_breaks += 1
            hub_log.problem("chain-break", seq + 1, topic, f"prev is not the hash of seq {seq}")

    @staticmethod
    def _announce(hub_log: _HubLog, topic: str, seq: int, detail: object) -> None:
        first = detail.get("first_seq") if isinstance(detail, Mapping) else None
        last = detail.get("last_seq") if isinstance(detail, Mapping) else None
        if isinstance(first, int) and isinstance(last, int) and 1 <= first <= last < seq:
            hub_log.announced.append((first, last))
        else:
            hub_log.malformed += 1
            hub_log.problem(
                "malformed",
                seq,
                topic,
                "gap event without a valid first_seq..last_seq before its own seq",
            )

    # --- the summary ------------------------------------------------------------------------

    def _hub_report(self, hub_log: _HubLog) -> HubReport:
        announced = _merge(hub_log.announced)
        missing = _missing(sorted(hub_log.entries))
        gaps = tuple(r for gap in missing for r in _subtract(gap, announced))
        unverified = len(hub_log.pending)
        problems = list(hub_log.problems)
        if unverified:
            problems.append(
                Problem(
                    "bad-signature",
                    None,
                    f"{hub_log.hub}",
                    f"{unverified} entries could not be checked: no pinned key "
                    "and no key in the hub's status message",
                )
            )
        source: Literal["pinned", "status", "none"] = (
            "pinned" if self._pinned else "status" if hub_log.keys else "none"
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
            out_of_order=hub_log.out_of_order,
            schema_errors=hub_log.schema_errors,
            first_seq=min(hub_log.entries, default=None),
            last_seq=max(hub_log.entries, default=None),
            gaps=gaps,
            announced_gaps=tuple(announced),
            key_source=source,
            status=hub_log.status,
            problems=tuple(problems),
        )


def _missing(seqs: list[int]) -> list[SeqRange]:
    return [(a + 1, b - 1) for a, b in itertools.pairwise(seqs) if b > a + 1]


def _merge(ranges: list[SeqRange]) -> list[SeqRange]:
    merged: list[SeqRange] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _subtract(gap: SeqRange, announced: list[SeqRange]) -> list[SeqRange]:
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


def load_schema() -> dict[str, Any]:
    """The payload JSON Schema shipped in the package (same as docs/schema/)."""
    text = (resources.files("gateway") / "schema" / "payload.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _schema_validator(check: bool | None, notes: list[str]) -> Any:
    """A jsonschema validator, or None. jsonschema is optional at run time."""
    if check is False:
        return None
    try:
        jsonschema = importlib.import_module("jsonschema")
    except ImportError:
        if check:
            notes.append(
                "payloads were not checked against the schema: jsonschema is not installed"
            )
        return None
    cls = jsonschema.Draft202012Validator
    return cls(load_schema(), format_checker=cls.FORMAT_CHECKER)
