"""How the uplink packs stored entries into MQTT messages: the shape of what it publishes.

What lives here: `StoredEntry` (one signed entry as the store hands it out), `Batch` (one
message: its topic, its payload and the seqs it carries) and `make_batches`. Readings go to
``<prefix>/<hub>/readings`` and events to ``<prefix>/<hub>/events``, each message a JSON array of
JWS bodies. What may not: publishing, acks or the store itself (that is `gateway.hub.uplink`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

_TOPIC_SUFFIX: Mapping[str, str] = {"reading": "readings", "event": "events"}


class StoredEntry(Protocol):
    """One signed log entry as the store hands it out."""

    @property
    def seq(self) -> int: ...

    @property
    def kind(self) -> Literal["reading", "event"]: ...

    @property
    def body(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Batch:
    """One message: its topic, the seqs of the entries it carries, and its payload."""

    topic: str
    seqs: tuple[int, ...]
    payload: bytes


def make_batches(
    entries: Sequence[StoredEntry], batch_size: int, max_messages: int, base_topic: str
) -> list[Batch]:
    """Group consecutive entries of one kind into JSON arrays of at most `batch_size` bodies.

    The bodies are already JSON (JWS objects), so they are joined, never re-encoded. Stops at
    `max_messages`; the entries left over are leased again later.
    """
    batches: list[Batch] = []
    run: list[StoredEntry] = []

    def close_run() -> None:
        topic = f"{base_topic}/{_TOPIC_SUFFIX[run[0].kind]}"
        payload = b"[" + b",".join(e.body for e in run) + b"]"
        batches.append(Batch(topic, tuple(e.seq for e in run), payload))
        run.clear()

    for entry in entries:
        if run and (entry.kind != run[0].kind or len(run) >= batch_size):
            close_run()
            if len(batches) >= max_messages:
                return batches
        run.append(entry)
    if run and len(batches) < max_messages:
        close_run()
    return batches
