"""The platform side's check of what hubs published (DESIGN.md step 8; `rtm-gateway verify`).

`Verifier` is pure: feed it MQTT messages (topic, payload bytes) in arrival order, then ask for
a `VerifyReport`. Per hub it checks each entry's signature, then the hub's one log of readings
and events: duplicates (same seq, same content — harmless, QoS 1 is at-least-once), conflicts
(same seq, different content — serious), chain breaks (`prev` is not the hash of the entry
before), gaps (seqs never seen, apart from ranges a signed gap event announced) and
out-of-order arrivals. `run_verify` subscribes to a broker with paho-mqtt and feeds a
`Verifier` until a count or a time limit.

What may not live here: anything of the hub's own pipeline. This module only reads; the
daemon never imports it. Health values go into the report, never into log lines.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import secrets
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from gateway.hub.identity import IdentityError, PublicKey, load_public_jwk
from gateway.hub.jws import JWSEntry, SignatureError, parse_jws
from gateway.transport.mqtt_url import MqttUrl, parse_mqtt_url

if TYPE_CHECKING:
    from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "rtm/v1"
MAX_PROBLEMS: Final = 100
"""Problems kept per hub in a report; the counters go on counting past it."""

EntryCallback = Callable[[str, Mapping[str, object]], None]
"""`on_entry(topic, payload)`: called once for each newly verified entry, duplicates not."""
ProblemKind = Literal["bad-signature", "malformed", "conflict", "chain-break", "schema"]
SeqRange = tuple[int, int]


class VerifyError(Exception):
    """`run_verify` could not run: bad arguments, key file, TLS setup. The message says why."""


class ConnectError(VerifyError):
    """The broker could not be reached, refused us, or the TLS handshake failed."""


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    seq: int | None
    topic: str
    reason: str


@dataclass(frozen=True, slots=True)
class HubReport:
    """What was seen from one hub. `gaps` are inclusive seq ranges nobody explained;
    `announced_gaps` are ranges the hub itself reported dropped in signed gap events."""

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
    out_of_order: int
    schema_errors: int
    first_seq: int | None
    last_seq: int | None
    gaps: tuple[SeqRange, ...]
    announced_gaps: tuple[SeqRange, ...]
    key_source: Literal["pinned", "status", "none"]
    status: Mapping[str, object] | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """Nothing forged, altered or contradictory was seen. Gaps and duplicates are
        reported, but they are what QoS 1 and a full outbox may honestly produce."""
        return not (self.bad_signatures or self.malformed or self.conflicts or self.chain_breaks)

    def to_dict(self) -> dict[str, object]:
        return {
            "hub": self.hub,
            "ok": self.ok,
            "received": self.received,
            "verified": self.verified,
            "readings": self.readings,
            "events": self.events,
            "bad_signatures": self.bad_signatures,
            "malformed": self.malformed,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "chain_breaks": self.chain_breaks,
            "out_of_order": self.out_of_order,
            "schema_errors": self.schema_errors,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "gaps": [list(r) for r in self.gaps],
            "announced_gaps": [list(r) for r in self.announced_gaps],
            "key_source": self.key_source,
            "status": dict(self.status) if self.status is not None else None,
            "problems": [
                {"kind": p.kind, "seq": p.seq, "topic": p.topic, "reason": p.reason}
                for p in self.problems
            ],
        }


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The result over all hubs. `ok` means nothing wrong was seen — check `received` too:
    a report of nothing is ok. `key_pinned` is False when keys came from status messages."""

    hubs: tuple[HubReport, ...]
    key_pinned: bool
    notes: tuple[str, ...] = ()
    stopped_by: Literal["count", "time", "interrupted", ""] = ""

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
        ]
        for hub in self.hubs:
            seqs = f"seq {hub.first_seq}..{hub.last_seq}" if hub.first_seq is not None else "no seq"
            lines.append(
                f"hub {hub.hub}: {'ok' if hub.ok else 'FAILED'}, {seqs}, "
                f"{hub.verified}/{hub.received} verified ({hub.readings} readings, "
                f"{hub.events} events), key {hub.key_source}"
            )
            counts = [
                (hub.bad_signatures, "bad signatures"),
                (hub.malformed, "malformed"),
                (hub.conflicts, "CONFLICTS"),
                (hub.chain_breaks, "chain breaks"),
                (hub.duplicates, "duplicates"),
                (hub.out_of_order, "out of order"),
                (hub.schema_errors, "schema errors"),
            ]
            shown = [f"{n} {label}" for n, label in counts if n]
            if shown:
                lines.append("  " + ", ".join(shown))
            if hub.gaps:
                lines.append("  gaps (missing, unexplained): " + _ranges(hub.gaps))
            if hub.announced_gaps:
                lines.append(
                    "  announced gaps (dropped by the hub): " + _ranges(hub.announced_gaps)
                )
            lines.extend(
                f"  {p.kind} at seq {p.seq if p.seq is not None else '?'}: {p.reason}"
                for p in hub.problems[:10]
            )
            if len(hub.problems) > 10:
                lines.append(f"  ... {len(hub.problems) - 10} more problems (see --json)")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _ranges(ranges: tuple[SeqRange, ...]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in ranges)


# --- the verifier -------------------------------------------------------------------------------


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

    def report(self, stopped_by: Literal["count", "time", "interrupted", ""] = "") -> VerifyReport:
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


# --- against a broker ---------------------------------------------------------------------------


def run_verify(
    url: str,
    *,
    hub: str | None = None,
    jwk_path: Path | None = None,
    count: int | None = None,
    seconds: float | None = None,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    protocol: Literal["5", "3.1.1"] = "5",
    topic_prefix: str = DEFAULT_PREFIX,
    on_entry: EntryCallback | None = None,
    on_ready: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> VerifyReport:
    """Subscribe to `{prefix}/{hub or +}/#` (QoS 1) and verify until `count` entries were
    received or `seconds` passed (or Ctrl-C, if neither is given), or `stop` is set from
    another thread (the demo's receiver ends this way).

    `on_ready` is called once the broker has acknowledged the subscription. Raises
    `ConnectError` (refused, unreachable, TLS, authentication) or `VerifyError` (arguments,
    key file); never a bare traceback for those.
    """
    try:
        target = parse_mqtt_url(url)
    except ValueError as exc:
        raise VerifyError(f"broker URL {exc}") from exc
    if (cert_file is None) != (key_file is None):
        raise VerifyError("mutual TLS needs both a client certificate and its key")
    if (ca_file or cert_file) and not target.tls:
        raise VerifyError("TLS files were given for a plain mqtt:// URL; use mqtts://")
    try:
        keys = load_public_jwk(jwk_path) if jwk_path is not None else None
    except IdentityError as exc:
        raise VerifyError(str(exc)) from exc
    verifier = Verifier(keys, hub, topic_prefix=topic_prefix, on_entry=on_entry)
    session = _Session(verifier, f"{topic_prefix.rstrip('/')}/{hub or '+'}/#", count, on_ready)
    if stop is not None:
        session.done = stop
    client = session.client(protocol)
    user = username if username is not None else target.username
    if user is not None:
        client.username_pw_set(user, password if password is not None else target.password)
    if target.tls:
        client.tls_set_context(_tls_context(ca_file, cert_file, key_file))
    _connect(client, target)
    stopped_by: Literal["count", "time", "interrupted", ""] = "time"
    client.loop_start()
    try:
        if session.done.wait(seconds):
            reached = count is not None and verifier.received >= count
            stopped_by = "count" if reached or stop is None else "interrupted"
    except KeyboardInterrupt:
        stopped_by = "interrupted"
    finally:
        client.disconnect()
        client.loop_stop()
    if session.failures:
        raise ConnectError(session.failures[0])
    if session.callback_errors:
        error = session.callback_errors[0]
        raise VerifyError(f"the on_entry callback failed: {error!r}") from error
    return verifier.report(stopped_by)


class _Session:
    """paho's callbacks for one `run_verify`; they run on paho's network thread."""

    def __init__(
        self, verifier: Verifier, topic: str, count: int | None, on_ready: Callable[[], None] | None
    ) -> None:
        self.verifier = verifier
        self.topic = topic
        self.count = count
        self.on_ready = on_ready
        self.done = threading.Event()
        self.failures: list[str] = []
        self.callback_errors: list[Exception] = []

    def client(self, protocol: Literal["5", "3.1.1"]) -> Client:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rtm-verify-{secrets.token_hex(4)}",
            protocol=version,
        )
        client.on_connect = self.on_connect
        client.on_subscribe = self.on_subscribe
        client.on_message = self.on_message
        client.on_disconnect = self.on_disconnect
        return client

    def on_connect(
        self,
        client: Client,
        _userdata: object,
        _flags: ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.failures.append(
                f"the broker refused the connection: {reason}; check the "
                "user name, password and the broker's ACL"
            )
            self.done.set()
            return
        client.subscribe(self.topic, qos=1)  # here, so that a reconnect subscribes again

    def on_subscribe(
        self,
        _client: Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.failures.append(
                f"the broker refused the subscription to {self.topic}: "
                f"{', '.join(map(str, reasons))}; check its ACL"
            )
            self.done.set()
        elif self.on_ready is not None:
            self.on_ready()

    def on_message(self, _client: Client, _userdata: object, message: MQTTMessage) -> None:
        try:
            self.verifier.feed(message.topic, message.payload)
        except Exception as exc:  # an on_entry bug must not kill paho's thread unseen
            self.callback_errors.append(exc)
            self.done.set()
            return
        if self.count is not None and self.verifier.received >= self.count:
            self.done.set()

    def on_disconnect(
        self,
        _client: Client,
        _userdata: object,
        _flags: DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure and not self.done.is_set():
            log.warning("lost the broker (%s); reconnecting", reason)


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails: paho leaves such a socket to the garbage
    collector, which then warns about an unclosed socket."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def _tls_context(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> ssl.SSLContext:
    """Verifies the broker's certificate and host name (system CAs unless `ca_file`)."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise VerifyError(
            f"cannot load the TLS files: {exc}; check --ca-file, --cert-file and --key-file"
        ) from exc
    context.sslsocket_class = _ClosingSSLSocket
    return context


def _connect(client: Client, target: MqttUrl) -> None:
    where = f"{target.host}:{target.port}"
    try:
        client.connect(target.host, target.port, keepalive=30)
    except ssl.SSLCertVerificationError as exc:
        raise ConnectError(
            f"TLS: the certificate of {where} was not accepted "
            f"({exc.verify_message}); give --ca-file with the CA that signed it "
            "and connect by the host name in the certificate"
        ) from exc
    except (ssl.SSLError, ConnectionResetError) as exc:
        if not target.tls:
            raise ConnectError(f"cannot connect to {where}: {exc}") from exc
        # A plain MQTT port answers a TLS hello by closing: a reset, not an SSLError.
        reason = exc.reason if isinstance(exc, ssl.SSLError) else "connection reset"
        raise ConnectError(
            f"TLS handshake with {where} failed ({reason}); is it a TLS "
            "port, and does it want a client certificate?"
        ) from exc
    except ConnectionRefusedError as exc:
        raise ConnectError(
            f"connection to {where} refused: is the broker running and listening there?"
        ) from exc
    except OSError as exc:
        raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}") from exc
