"""The uplink: signed entries leave the outbox over MQTT and are deleted only after PUBACK.

What lives here: `Uplink` (connect and reconnect, retained status with an "offline" last will,
batched QoS 1 publishing under a bounded in-flight window, acks to the store, clean stop), the
protocol of the store it needs (`EntryStore`) and `UplinkStats`. How stored entries become
messages (`make_batches`) is in `gateway.hub.uplink_batches`; the broker side (the `Publisher`
protocols, the `ReconnectPolicy`) is in `gateway.hub.uplink_connection`. What may not: any
concrete transport or store. This module never imports `gateway.transport` or
`gateway.hub.outbox`; the app wires a real MQTT client and outbox in, and tests may hand it the
same against a local broker.

Delivery is at-least-once: after a reconnect everything not yet acknowledged is leased again from
the oldest, so the platform may see duplicates (detectable by `seq`) but never a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.hub.clock import HubClock, clock_state
from gateway.hub.uplink_batches import Batch, StoredEntry, make_batches
from gateway.hub.uplink_connection import Publisher, PublisherFactory, ReconnectPolicy

_LOGGER = logging.getLogger(__name__)

# How soon a failed commit of acks (a full disk) is tried again.
FLUSH_RETRY_S = 1.0


class EntryStore(Protocol):
    """What the uplink needs of the outbox. Calls are short and run on the event loop."""

    def lease(self, after_seq: int, limit: int) -> Sequence[StoredEntry]: ...

    def ack(self, seqs: Iterable[int]) -> None: ...

    def flush(self) -> None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def depth(self) -> int: ...


@dataclass(frozen=True, slots=True)
class UplinkStats:
    connected: bool
    last_publish: float | None
    """Wall-clock time of the last PUBACK for entries, or None."""
    messages_published: int
    entries_published: int
    reconnects: int
    in_flight: int
    last_error: str


class _SessionLost(Exception):
    """The connection is gone or stuck; reconnect."""


class Uplink:
    """Forwards the outbox to the broker until stopped. One `run()` at a time."""

    def __init__(
        self,
        store: EntryStore,
        publisher_factory: PublisherFactory,
        hub_id: str,
        *,
        topic_prefix: str = "rtm/v1",
        batch_size: int = 100,
        window: int = 32,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        auth_backoff: float = 600.0,
        connect_timeout: float = 15.0,
        ack_timeout: float = 60.0,
        flush_interval: float = 0.1,
        idle_timeout: float = 300.0,
        status_extra: Mapping[str, object] | None = None,
        clock: Callable[[], HubClock] = clock_state,
    ) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be at least 1")
        self._store = store
        self._factory = publisher_factory
        self._base = f"{topic_prefix}/{hub_id}"
        self._batch_size = batch_size
        self._window = window
        self._reconnect = ReconnectPolicy(
            initial=backoff_initial, maximum=backoff_max, auth_pause=auth_backoff, clock=clock
        )
        self._connect_timeout = connect_timeout
        self._ack_timeout = ack_timeout
        self._flush_interval = flush_interval
        self._idle_timeout = idle_timeout
        self._status_extra = dict(status_extra or {})

        self._kick = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._drain_timeout = 5.0
        self._publisher: Publisher | None = None
        self._in_flight: set[asyncio.Future[None]] = set()
        self._session_error: BaseException | None = None
        self._last_progress = 0.0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._connects = 0
        self._generation = 0
        self._messages = 0
        self._entries = 0
        self._last_publish: float | None = None
        self._last_error = ""
        self._store_error: str | None = None  # the store's refusal being retried, if any

    @property
    def status_topic(self) -> str:
        return f"{self._base}/status"

    @property
    def stats(self) -> UplinkStats:
        publisher = self._publisher
        return UplinkStats(
            connected=publisher is not None and publisher.is_connected,
            last_publish=self._last_publish,
            messages_published=self._messages,
            entries_published=self._entries,
            reconnects=max(0, self._connects - 1),
            in_flight=len(self._in_flight),
            last_error=self._last_error,
        )

    def wake(self) -> None:
        """New entries were appended: publish them now instead of at the next timeout."""
        self._kick.set()

    async def run(self) -> None:
        """Connect, publish, reconnect after losses; return after `stop()`."""
        if self._running:
            raise RuntimeError("Uplink.run() is already running")
        self._running = True
        self._finished.clear()
        failures = 0  # consecutive connects that failed or sessions that acked nothing
        error: BaseException | None = None
        try:
            while not self._stop_requested.is_set():
                if failures:
                    delay = self._reconnect.delay(failures, error)
                    if error is not None:  # else the session already logged why it ended
                        self._last_error = self._reconnect.report(error, delay)
                    if await self._stop_within(delay):
                        break
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        publisher = await self._factory(
                            self.status_topic, self._status_payload("offline")
                        )
                except Exception as exc:
                    failures, error = failures + 1, exc
                    continue
                self._connects += 1
                if self._connects > 1:
                    _LOGGER.info("uplink reconnected (reconnect %d)", self._connects - 1)
                entries_before = self._entries
                await self._session(publisher)
                error = None  # the session logged why it ended
                # Even after a good session, wait a jittered moment: when a broker restarts,
                # thousands of hubs must not all reconnect in the same second.
                failures = 1 if self._entries > entries_before else failures + 1
        finally:
            self._cancel_flush()
            self._flush(retry=False)  # the store's owner flushes again when it closes
            self._running = False
            self._finished.set()

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Send what the outbox still holds and wait for its acks (bounded by the timeout),
        publish "offline", disconnect. What is not acknowledged by then stays in the outbox."""
        self._drain_timeout = drain_timeout
        self._stop_requested.set()
        self._kick.set()
        if not self._running:
            return
        # Draining, the offline status and DISCONNECT each get the drain timeout; a connect
        # attempt in progress gets its own timeout first.
        limit = self._connect_timeout + 3 * drain_timeout + 1.0
        try:
            async with asyncio.timeout(limit):
                await self._finished.wait()
        except TimeoutError:
            _LOGGER.warning(
                "uplink did not stop within %.0f s; cancel its task (entries stay in the outbox)",
                limit,
            )

    # -- connecting ------------------------------------------------------------------------

    def _status_payload(self, state: str) -> bytes:
        return json.dumps({"state": state, **self._status_extra}, separators=(",", ":")).encode()

    async def _stop_within(self, delay: float) -> bool:
        """Sleep `delay` seconds unless stop() comes first; True if it did."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop_requested.wait()
        return self._stop_requested.is_set()

    # -- one connected session -------------------------------------------------------------

    async def _session(self, publisher: Publisher) -> None:
        """Publish until stopped (then leave cleanly) or until the connection is lost."""
        self._publisher = publisher
        self._session_error = None
        self._generation += 1
        self._in_flight = set()
        watcher = asyncio.create_task(self._watch(publisher), name="uplink-watch")
        clean = False
        try:
            online = self._status_payload("online")
            await self._await_ack(publisher.publish(self.status_topic, online, qos=1, retain=True))
            # Acked entries must not be re-sent, and lease must see their deletion.
            self._flush()
            await self._pump(publisher)
            await self._finish(publisher)
            clean = True
        except _SessionLost as exc:
            self._last_error = str(exc.__cause__ or exc)
            _LOGGER.warning(
                "uplink lost the broker (%s); reconnecting with backoff."
                " Unacknowledged entries will be sent again",
                self._last_error,
            )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if not clean:
                # Without DISCONNECT the broker publishes the retained "offline" will.
                publisher.abort()
            self._forget_in_flight()
            self._publisher = None

    async def _watch(self, publisher: Publisher) -> None:
        await publisher.wait_disconnected()
        if self._session_error is None:
            self._session_error = _SessionLost("connection closed")
        self._kick.set()

    async def _await_ack(self, future: asyncio.Future[None]) -> None:
        try:
            async with asyncio.timeout(self._ack_timeout):
                await future
        except TimeoutError as exc:
            raise _SessionLost(f"no PUBACK within {self._ack_timeout:.0f} s") from exc
        except Exception as exc:
            raise _SessionLost(str(exc)) from exc

    async def _pump(self, publisher: Publisher) -> None:
        loop = asyncio.get_running_loop()
        cursor = -1  # everything unacked, oldest first
        self._last_progress = loop.time()
        # MQTT 5 forbids exceeding the broker's Receive Maximum; some brokers disconnect for it.
        window = max(1, min(self._window, publisher.receive_maximum))
        stop_by: float | None = None  # on stop, send what the outbox holds, within the timeout
        while True:
            if self._stop_requested.is_set():
                if stop_by is None:
                    stop_by = loop.time() + self._drain_timeout
                if loop.time() >= stop_by:
                    return
            self._kick.clear()
            self._raise_if_lost()
            # Refill on every ack rather than in chunks: a broker with Nagle on holds back its
            # PUBACKs until our next packet carries the TCP ACK, so a quiet client stalls.
            leased, sent, cursor = self._refill(publisher, window, cursor)
            if stop_by is not None and not leased and not self._in_flight:
                return  # everything stored has been acknowledged
            if sent and len(self._in_flight) < window:
                continue  # the store may hold more; lease again before waiting
            if self._in_flight:
                timeout = max(0.0, self._last_progress + self._ack_timeout - loop.time())
            else:
                timeout = self._idle_timeout
            if stop_by is not None:
                timeout = min(timeout, max(0.0, stop_by - loop.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._kick.wait()
            if self._in_flight and loop.time() - self._last_progress >= self._ack_timeout:
                raise _SessionLost(f"no PUBACK for {self._ack_timeout:.0f} s")

    def _refill(self, publisher: Publisher, window: int, cursor: int) -> tuple[int, int, int]:
        """Publish leased entries into the free part of the window.

        Returns (entries leased, messages sent, the new lease cursor)."""
        free = window - len(self._in_flight)
        if free <= 0:
            return 0, 0, cursor
        entries = self._lease(cursor, free * self._batch_size)
        if entries and not self._in_flight:
            # The ack clock starts now: a quiet spell before this is not a late PUBACK.
            self._last_progress = asyncio.get_running_loop().time()
        sent = 0
        for batch in make_batches(entries, self._batch_size, free, self._base):
            future = publisher.publish(batch.topic, batch.payload, qos=1)
            self._in_flight.add(future)
            future.add_done_callback(
                functools.partial(self._on_done, batch=batch, generation=self._generation)
            )
            cursor = batch.seqs[-1]
            sent += 1
        return len(entries), sent, cursor

    def _lease(self, after_seq: int, limit: int) -> Sequence[StoredEntry]:
        try:
            return self._store.lease(after_seq, limit)
        except Exception as exc:  # the store is a protocol here: any read failure ends the
            # session, and the reconnect backoff paces the retries instead of a crash.
            raise _SessionLost(f"cannot read the outbox: {exc}") from exc

    def _raise_if_lost(self) -> None:
        error = self._session_error
        if error is not None:
            raise _SessionLost(str(error)) from error

    def _on_done(self, future: asyncio.Future[None], batch: Batch, generation: int) -> None:
        self._in_flight.discard(future)
        self._kick.set()
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            if generation == self._generation and self._session_error is None:
                self._session_error = error
            return
        self._last_progress = asyncio.get_running_loop().time()
        try:
            self._store.ack(batch.seqs)
        except Exception as exc:
            # The store keeps a failed ack and redoes it with its next write, which the flush
            # retry below makes sure comes; a store that does not keeps the entries, and they
            # are sent again after the next reconnect: a duplicate, never a loss.
            self._store_failed(f"outbox ack of {len(batch.seqs)} entries failed", exc)
            self._schedule_flush(FLUSH_RETRY_S)
            return
        self._messages += 1
        self._entries += len(batch.seqs)
        self._last_publish = time.time()
        self._schedule_flush(self._flush_interval)

    def _schedule_flush(self, delay: float) -> None:
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self, *, retry: bool = True) -> None:
        """Commit the acks the store holds. If that fails (a full disk), try again in a
        moment while running: once every entry is acknowledged no new ack would."""
        self._flush_handle = None
        try:
            if self._last_publish is not None:
                self._store.set_meta("last_publish", f"{self._last_publish:.3f}")
            self._store.flush()
        except Exception as exc:
            self._store_failed("outbox flush failed", exc)
            if retry:
                self._schedule_flush(FLUSH_RETRY_S)
            return
        if self._store_error is not None:
            _LOGGER.info("outbox acks are committed again")
            self._store_error = None
            if self._last_error.startswith("outbox "):
                self._last_error = ""

    def _store_failed(self, what: str, exc: Exception) -> None:
        """An ack or flush the store refused: WARNING once per cause (on a full disk the retry
        fails every second for a while), the repeats at DEBUG."""
        cause = str(exc)
        _LOGGER.log(
            logging.DEBUG if cause == self._store_error else logging.WARNING,
            "%s (%s); the acks are kept and retried. Check the state disk",
            what,
            cause,
        )
        self._store_error = cause
        self._last_error = f"{what}: {cause}"

    def _cancel_flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _forget_in_flight(self) -> None:
        in_flight, self._in_flight = self._in_flight, set()
        for future in in_flight:
            if not future.done():
                future.cancel()

    async def _finish(self, publisher: Publisher) -> None:
        """Clean stop: drain in-flight acks, announce "offline", DISCONNECT."""
        drain = self._drain_timeout
        if self._in_flight:
            _done, pending = await asyncio.wait(set(self._in_flight), timeout=drain)
            if pending:
                _LOGGER.warning(
                    "uplink stop: %d messages unacknowledged after %.1f s; they stay in the"
                    " outbox and are sent after the next start",
                    len(pending),
                    drain,
                )
        offline = publisher.publish(
            self.status_topic, self._status_payload("offline"), qos=1, retain=True
        )
        try:
            async with asyncio.timeout(drain):
                await offline
        except Exception as exc:  # the will says "offline" anyway if this fails
            _LOGGER.warning("uplink stop: offline status not acknowledged (%s)", exc or "timeout")
            publisher.abort()
            return
        await publisher.disconnect(drain)
        _LOGGER.info("uplink stopped cleanly")
