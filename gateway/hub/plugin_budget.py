"""A time budget, and a size bound, around a vendor driver's decoding.

What lives here: `budgeted` (a vendor driver seen through the SDK's `Driver`/`GattDriver`
protocols, whose decoders and stored-record callbacks run each call on the driver's worker
thread and give up waiting after the budget; the event loop waits for the call, so the budget
also bounds how long one input holds up the hub), `DecodeBudgetExceeded`, and
`DecodeOutputTooLarge` for a call that returns more than `MAX_RESULTS` results, or a reading
over `MAX_OBSERVATIONS` observations or `MAX_RAW` raw bytes. The registry hands sessions the
wrapped driver, so the sessions need no change: a call over budget (or over size) raises, and
`ReadingPath` counts it as a driver failure (logged by exception type only), gives the device
a fresh decoder and carries on.

What it cannot do: stop a thread. A call over budget keeps running on its worker, which is
abandoned (its result, if it ever comes, is dropped); a driver with `MAX_STUCK` abandoned calls
gets no new worker, and its calls fail at once. A call that never releases the interpreter lock
(a C loop) stalls the event loop itself; the systemd watchdog, pinged from the loop, is the
backstop for that: the service is restarted. Running vendor drivers in a child process would
bound that too; see "Vendor drivers" in docs/operations.md.

Built-in drivers are not wrapped: they are our code, fuzzed in CI, and cost nothing extra.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from gateway.hub.plugin_audit import running
from gateway.sdk import (
    AfterCommit,
    Driver,
    DriverInfo,
    FeedResult,
    Flushable,
    GattDecoder,
    GattDriver,
    RecordCount,
    StoredRecords,
    StreamDecoder,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")

MAX_STUCK = 2
"""Abandoned calls per driver before its calls fail without a worker."""
MAX_RESULTS = 1000
"""Readings plus errors one decode call may return."""
MAX_OBSERVATIONS = 64
MAX_RAW = 64 * 1024


class DecodeBudgetExceeded(Exception):
    """A vendor driver's decoder did not return within its budget."""


class DecodeOutputTooLarge(Exception):
    """A vendor driver's decoder returned more than one input can mean."""


class _Call:
    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[], object]) -> None:
        self.work = work
        self.done = threading.Event()
        self.result: object = None
        self.error: BaseException | None = None


class _Worker:
    """One daemon thread running one driver's calls in turn (a daemon thread, so a stuck call
    never holds up the process's exit). Once retired it ends after the call it is running."""

    def __init__(self, driver_id: str) -> None:
        self._driver_id = driver_id
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"driver {driver_id}", daemon=True)
        self._thread.start()

    def submit(self, call: _Call) -> None:
        self._calls.put(call)

    def retire(self) -> None:
        self._calls.put(None)

    def _serve(self) -> None:
        with running(self._driver_id):  # the audit hook names the driver for what it does
            while (call := self._calls.get()) is not None:
                try:
                    call.result = call.work()
                except BaseException as exc:  # handed back to the caller's thread
                    call.error = exc
                call.done.set()


class _Budget:
    """One vendor driver's budget and its worker (shared by all its decoders: the hub calls
    them from the one event loop, one at a time)."""

    def __init__(self, driver_id: str, seconds: float) -> None:
        self.driver_id = driver_id
        self.seconds = seconds
        self._worker: _Worker | None = None
        self._abandoned: list[_Call] = []

    def run(self, work: Callable[[], FeedResult]) -> FeedResult:
        """One decode call: bounded in time, its result bounded in size."""
        result = self.call(work)
        _check_size(self.driver_id, result)
        return result

    def call(self, work: Callable[[], _T]) -> _T:
        """Any of the driver's calls, bounded in time. What the driver raises comes back as
        it is, except what is not an `Exception` (a vendor's `sys.exit()`), which would get
        past the sessions' guards and end the hub: that becomes a RuntimeError."""
        self._abandoned = [call for call in self._abandoned if not call.done.is_set()]
        if len(self._abandoned) >= MAX_STUCK:
            raise DecodeBudgetExceeded(
                f"driver {self.driver_id} has {len(self._abandoned)} decodes still running"
            )
        if self._worker is None:
            self._worker = _Worker(self.driver_id)
        call = _Call(work)
        self._worker.submit(call)
        if not call.done.wait(self.seconds):
            # The worker is busy with a call that may never end: the next call gets a new one,
            # and this one ends when (if) the call does.
            self._worker.retire()
            self._worker = None
            self._abandoned.append(call)
            log.warning(
                "driver %s: a decode took longer than its budget of %d ms; the input is "
                "dropped and counted as a decode error (%d call(s) still running). Report it "
                "to the driver's maintainer, or raise [drivers] decode_budget_ms",
                self.driver_id,
                round(self.seconds * 1000),
                len(self._abandoned),
            )
            raise DecodeBudgetExceeded(f"driver {self.driver_id} exceeded its decode budget")
        error = call.error
        if error is not None:
            if isinstance(error, Exception):
                raise error
            raise RuntimeError(f"driver {self.driver_id} raised {type(error).__name__}") from error
        return call.result  # type: ignore[return-value]  # what `work` returned


def _check_size(driver_id: str, result: FeedResult) -> None:
    """A decoder's result is bounded like its input: a driver that returns more is broken (or
    hostile), and what it returned would be signed and kept for months."""
    if len(result.readings) + len(result.errors) > MAX_RESULTS:
        raise DecodeOutputTooLarge(f"driver {driver_id} returned more than {MAX_RESULTS} results")
    for reading in result.readings:
        if len(reading.observations) > MAX_OBSERVATIONS or len(reading.raw) > MAX_RAW:
            raise DecodeOutputTooLarge(
                f"driver {driver_id} returned a reading over {MAX_OBSERVATIONS} observations "
                f"or {MAX_RAW} raw bytes"
            )


class _Stream:
    __slots__ = ("_budget", "_inner")

    def __init__(self, inner: StreamDecoder, budget: _Budget) -> None:
        self._inner, self._budget = inner, budget

    def feed(self, data: bytes) -> FeedResult:
        return self._budget.run(lambda: self._inner.feed(data))


class _Gatt:
    __slots__ = ("_budget", "_inner")

    def __init__(self, inner: GattDecoder, budget: _Budget) -> None:
        self._inner, self._budget = inner, budget

    def value(self, uuid: str, data: bytes) -> FeedResult:
        return self._budget.run(lambda: self._inner.value(uuid, data))


class _FlushingStream(_Stream):
    __slots__ = ()

    def flush(self) -> FeedResult:
        inner: Any = self._inner
        return self._budget.run(inner.flush)


class _FlushingGatt(_Gatt):
    __slots__ = ()

    def flush(self) -> FeedResult:
        inner: Any = self._inner
        return self._budget.run(inner.flush)


def _bounded(budget: _Budget, fn: Callable[..., _T]) -> Callable[..., _T]:
    return lambda *args: budget.call(lambda: fn(*args))


def _budgeted_info(info: DriverInfo, budget: _Budget) -> DriverInfo:
    """`info` with the driver's stored-record callbacks under the budget too: the session
    calls them on the event loop for every record."""
    session = info.ble_session
    stored = session.stored if session is not None else None
    if session is None or stored is None:
        return info
    after, count = stored.after_commit, stored.count
    bounded: StoredRecords = dataclasses.replace(
        stored,
        request=_bounded(budget, stored.request),
        cursor=_bounded(budget, stored.cursor),
        done=_bounded(budget, stored.done),
        describe=None if stored.describe is None else _bounded(budget, stored.describe),
        after_commit=None
        if after is None
        else AfterCommit(after.request, _bounded(budget, after.answer)),
        count=None if count is None else RecordCount(count.request, _bounded(budget, count.answer)),
    )
    return dataclasses.replace(info, ble_session=dataclasses.replace(session, stored=bounded))


class _BudgetedDriver:
    __slots__ = ("_budget", "_info", "_inner")

    def __init__(self, inner: Driver, budget: _Budget) -> None:
        self._inner, self._budget = inner, budget
        self._info = _budgeted_info(inner.info, budget)

    @property
    def info(self) -> DriverInfo:
        return self._info

    def decoder(self, options: Mapping[str, object]) -> StreamDecoder:
        inner = self._inner.decoder(options)
        kind = _FlushingStream if isinstance(inner, Flushable) else _Stream
        return kind(inner, self._budget)


class _BudgetedGattDriver:
    __slots__ = ("_budget", "_info", "_inner")

    def __init__(self, inner: GattDriver, budget: _Budget) -> None:
        self._inner, self._budget = inner, budget
        self._info = _budgeted_info(inner.info, budget)

    @property
    def info(self) -> DriverInfo:
        return self._info

    def gatt_decoder(self, options: Mapping[str, object]) -> GattDecoder:
        inner = self._inner.gatt_decoder(options)
        kind = _FlushingGatt if isinstance(inner, Flushable) else _Gatt
        return kind(inner, self._budget)


def budgeted(driver: Driver | GattDriver, seconds: float) -> Driver | GattDriver:
    """`driver` with each decode call and each stored-record callback bounded by `seconds`
    (see the module's docstring), all devices of the driver sharing one budget and worker.
    Making a decoder (`decoder(options)`, where options are checked) is not bounded: it runs
    once per connection, not per input."""
    budget = _Budget(driver.info.id, seconds)
    if isinstance(driver, Driver):
        return _BudgetedDriver(driver, budget)
    return _BudgetedGattDriver(driver, budget)
