"""The platform side's check of what hubs published, pure: no I/O, no clock.

`Verifier` takes MQTT messages (topic, payload bytes) in arrival order and gives a
`VerifyReport`. It trusts only what it was told to trust: each hub's entries are checked with
the key pinned for that hub id (`keys`, hub -> key), so an entry signed with another hub's key
fails; a key from a hub's unsigned status message is used only with `trust_status_keys`, and
then that hub fails all the same (the report says why). Per hub it checks each entry's
signature (`gateway.hub.jws`), then each of the hub's logs of readings and events, keyed on
(hub, log, seq): duplicates (same seq, same content — harmless, QoS 1 is at-least-once),
conflicts (same seq, different content, or an entry after its log was closed),
chain breaks (`prev` is not the hash of the entry before), replays (seqs before the head
an earlier run verified, `earlier`), gaps (seqs never seen, apart from ranges a signed gap
event announced; a cut tail when an expected last seq is given), out-of-order arrivals and the
payload schema. A `log-started` entry switches logs (`gateway.tools.verify_switch`); what
one log keeps, and its memory bound, is `gateway.tools.verify_logs`. What fails is decided in
`gateway.tools.verify_verdict`.

What may not live here: sockets, MQTT, files other than the packaged schema (the key map and
the state file are read by `gateway.tools.verify_files`), anything of the hub's own pipeline.
The daemon never imports it. Health values go into the report, never into log lines.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable, Mapping
from importlib import resources
from typing import Any, Final

from gateway.hub.identity import IdentityError, PublicKey
from gateway.hub.jws import JWSEntry, SignatureError, parse_jws
from gateway.tools.verify_logs import LogState, Seen
from gateway.tools.verify_report import KeySource, LogHead, StoppedBy, VerifyReport
from gateway.tools.verify_switch import log_switch
from gateway.tools.verify_verdict import HubLog, Policy, hub_report

DEFAULT_PREFIX: Final = "rtm/v1"

EntryCallback = Callable[[str, Mapping[str, object]], None]
"""`on_entry(topic, payload)`: called once for each newly verified entry, duplicates not."""


class Verifier:
    """Checks a stream of MQTT messages from hubs. Pure: no I/O, no clock.

    `keys` maps hub id -> pinned key; a hub without one has every entry rejected, unless
    `trust_status_keys`: then the first key in its retained status message is used (a later,
    different one is a problem, never a second key), entries that arrive before it wait for
    it, and the hub fails anyway. Give `hub` to look at one hub only. `earlier` maps hub id ->
    the head an earlier run verified (`--state`); `expected_last` hub id -> the last seq that
    must have arrived. `strict` fails unexplained gaps, a first seq other than the expected
    next one, schema errors, a new log no `log-started` announced and an announcement that
    contradicts what was verified. `check_schema`: None means "if jsonschema is installed" (strict
    then fails when it is not). `feed` may be called from another thread than `report`.
    """

    def __init__(
        self,
        keys: Mapping[str, PublicKey] | None = None,
        hub: str | None = None,
        *,
        trust_status_keys: bool = False,
        strict: bool = False,
        earlier: Mapping[str, LogHead] | None = None,
        expected_last: Mapping[str, int] | None = None,
        topic_prefix: str = DEFAULT_PREFIX,
        check_schema: bool | None = None,
        on_entry: EntryCallback | None = None,
    ) -> None:
        self._keys = dict(keys or {})
        self._owners = {key.kid: owner for owner, key in self._keys.items()}
        self._trust_status = trust_status_keys
        self._strict = strict
        self._earlier = dict(earlier or {})
        self._expected_last = dict(expected_last or {})
        self._hub = hub
        self._prefix = topic_prefix.rstrip("/") + "/"
        self._on_entry = on_entry
        self._logs: dict[str, HubLog] = {}
        self._notes: list[str] = []
        self._lock = threading.RLock()  # RLock: on_entry may call report() from feed
        self._validator = _schema_validator(
            check_schema if check_schema is not None or not strict else True, self._notes
        )

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
            for hub in self._expected_last:  # a hub expected but silent is reported too
                if self._hub is None or hub == self._hub:
                    self._log(hub)
            hubs = tuple(
                hub_report(self._logs[hub], self._key_source(hub), self._policy(hub))
                for hub in sorted(self._logs)
            )
            return VerifyReport(
                hubs,
                all(h.key_source != "status" for h in hubs),
                tuple(self._notes),
                stopped_by,
                self._strict,
            )

    def _key_source(self, hub: str) -> KeySource:
        if hub in self._keys:
            return "pinned"
        return "status" if self._logs[hub].status_key is not None else "none"

    def _policy(self, hub: str) -> Policy:
        return Policy(self._strict, self._validator is not None, self._expected_last.get(hub))

    # --- per message ----------------------------------------------------------------------------

    def _log(self, hub: str) -> HubLog:
        hub_log = self._logs.get(hub)
        if hub_log is None:
            hub_log = self._logs[hub] = HubLog(hub, self._earlier.get(hub))
        return hub_log

    def _status(self, hub_log: HubLog, topic: str, payload: bytes | bytearray) -> None:
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
        self._status_key(hub_log, topic, key)

    def _status_key(self, hub_log: HubLog, topic: str, key: PublicKey) -> None:
        pinned = self._keys.get(hub_log.hub)
        if pinned is not None:
            note = (
                f"hub {hub_log.hub} announces key {key.kid} in its status, which is not "
                "the key pinned for it"
            )
            if key.kid != pinned.kid and note not in self._notes:  # retained: repeats
                self._notes.append(note)
            return
        if not self._trust_status:
            return
        if hub_log.status_key is not None:
            if key.kid != hub_log.status_key.kid:
                # Never a second key: whoever can publish the status could add one.
                hub_log.key_changes += 1
                hub_log.problem(
                    "key-change",
                    None,
                    topic,
                    f"the status message announces key {key.kid} after "
                    f"{hub_log.status_key.kid}; the new key is not trusted",
                )
            return
        hub_log.status_key = key
        waiting, hub_log.pending = hub_log.pending, []
        for waiting_topic, entry in waiting:
            self._entry(hub_log, waiting_topic, entry)

    def _batch(self, hub_log: HubLog, topic: str, payload: bytes | bytearray) -> None:
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
            no_key_yet = hub_log.hub not in self._keys and hub_log.status_key is None
            if self._trust_status and no_key_yet:
                hub_log.pending.append((topic, entry))  # its key may come with the status
                continue
            self._entry(hub_log, topic, entry)

    def _key_for(self, hub: str, entry: JWSEntry, hub_log: HubLog) -> PublicKey:
        """The one key this hub's entries may be signed with, or SignatureError."""
        key = self._keys.get(hub) or hub_log.status_key
        if key is None:
            raise SignatureError(
                f"no key is pinned for hub {hub} (give it in --keys, or --jwk with --hub)"
            )
        kid = entry.kid
        if kid is not None and kid != key.kid:
            owner = self._owners.get(kid)
            raise SignatureError(
                f"signed with the key pinned for hub {owner}, not hub {hub}'s"
                if owner is not None
                else f"kid {kid} is not the key of hub {hub} ({key.kid})"
            )
        return key

    def _entry(self, hub_log: HubLog, topic: str, entry: JWSEntry) -> None:
        try:
            payload = entry.verify(self._key_for(hub_log.hub, entry, hub_log))
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
        log_id = payload.get("log")
        key = log_id if isinstance(log_id, str) else ""
        earlier = hub_log.earlier
        if earlier is not None and key == (earlier.log or "") and seq < earlier.seq:
            # The earlier run keeps only its head: an older seq cannot be told apart from a
            # replayed capture or a log rewound to a backup, so it is never accepted.
            hub_log.replayed += 1
            hub_log.problem(
                "replay",
                seq,
                topic,
                f"seq {seq} is before seq {earlier.seq}, the last one an earlier run verified: "
                "a replayed or rewound log",
            )
            return
        state = hub_log.log_state(key)
        if state.closed_at is not None and seq > state.closed_at and not state.holds(seq):
            hub_log.conflicts += 1
            hub_log.problem(
                "conflict",
                seq,
                topic,
                f"log {key} was closed at seq {state.closed_at} by the hub's log-started "
                f"in log {state.closed_by}: a later entry in it is a replay or a fork",
            )
            return
        self._link(hub_log, state, topic, seq, Seen(entry.chain_hash(), prev), payload)

    def _link(  # noqa: PLR0917 - the entry's parts, checked once in _entry
        self,
        hub_log: HubLog,
        state: LogState,
        topic: str,
        seq: int,
        seen: Seen,
        payload: Mapping[str, object],
    ) -> None:
        known = state.hash_at(seq)
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
        if state.holds(seq):  # received long ago: its hash left the window (see verify_logs)
            hub_log.duplicates += 1
            hub_log.unchecked += 1
            return
        if seq < state.max_seq:
            hub_log.out_of_order += 1
        state.remember(seq, seen)
        self._check_chain(hub_log, state, topic, seq, seen)
        if payload.get("kind") == "reading":
            hub_log.readings += 1
        else:
            hub_log.events += 1
            event = payload.get("event")
            if event == "gap":
                self._announce(hub_log, state, topic, seq, payload.get("detail"))
            elif event == "log-started":
                log_switch(hub_log, state, topic, seq, payload.get("detail"))
        if self._validator is not None:
            error = next(iter(self._validator.iter_errors(payload)), None)
            if error is not None:
                hub_log.schema_errors += 1
                hub_log.problem("schema", seq, topic, f"{error.json_path}: {error.message}")
        if self._on_entry is not None:
            self._on_entry(topic, payload)

    @staticmethod
    def _check_chain(hub_log: HubLog, state: LogState, topic: str, seq: int, seen: Seen) -> None:
        """Check the links to both neighbours in the same log, whichever arrived first."""
        before = state.hash_at(seq - 1)
        if before is not None and seen.prev != before.hash:
            hub_log.chain_breaks += 1
            earlier = state.anchor == seq - 1
            why = " that an earlier run verified: the log was rewound or forked"
            reason = f"prev is not the hash of seq {seq - 1}{why if earlier else ''}"
            hub_log.problem("chain-break", seq, topic, reason)
        elif seq == 1 and seen.prev:
            hub_log.chain_breaks += 1
            hub_log.problem("chain-break", seq, topic, "the first entry's prev is not empty")
        elif before is None and seq > 1 and not seen.prev:
            hub_log.chain_breaks += 1
            hub_log.problem(
                "chain-break", seq, topic, "empty prev after seq 1: the hub's log was restarted"
            )
        after = state.hash_at(seq + 1)
        if after is not None and after.prev != seen.hash:
            hub_log.chain_breaks += 1
            hub_log.problem("chain-break", seq + 1, topic, f"prev is not the hash of seq {seq}")

    @staticmethod
    def _announce(hub_log: HubLog, state: LogState, topic: str, seq: int, detail: object) -> None:
        first = detail.get("first_seq") if isinstance(detail, Mapping) else None
        last = detail.get("last_seq") if isinstance(detail, Mapping) else None
        if isinstance(first, int) and isinstance(last, int) and 1 <= first <= last < seq:
            state.announced.append((first, last))
        else:
            hub_log.malformed += 1
            hub_log.problem(
                "malformed",
                seq,
                topic,
                "gap event without a valid first_seq..last_seq before its own seq",
            )


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
