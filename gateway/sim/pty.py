"""Serve a simulated serial device on a pseudo-terminal, behind a stable symlink.

What lives here: `serve_pty`, a blocking loop that writes frames at a fixed rate into the master
side of a pty whose slave is reachable at `link`, and `PtyThread`, the same in a background
thread for in-process use (the demo, tests). Device-specific frame generators live next to it.

Like a real device, the simulator keeps streaming whether or not anyone has the port open: the
master is non-blocking, and a frame that does not fit in the pty's buffer is dropped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

MAX_CATCH_UP = 1.0
"""Seconds of frames sent at once after a stall (a suspended VM); older ones are skipped."""


@dataclass(frozen=True, slots=True)
class PtyStats:
    """What a run wrote: whole frames, and frames dropped because nobody read the port."""

    written: int
    dropped: int


class _Terminated(BaseException):
    """Raised by our SIGTERM handler to leave the loop the same way Ctrl-C does."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@dataclass(slots=True)
class _Counts:
    written: int = 0
    dropped: int = 0


def serve_pty(
    link: Path,
    frames: Iterator[bytes],
    rate_hz: float,
    seconds: float | None = None,
    *,
    stop: threading.Event | None = None,
    ready: threading.Event | None = None,
) -> PtyStats:
    """Write `frames` at `rate_hz` to a new pty reachable at `link` until `seconds` pass, the
    frames run out, `stop` is set, or Ctrl-C / SIGTERM (in the main thread) arrives.

    A stale symlink at `link` is replaced; the link is removed on exit. `ready` is set once the
    link exists. Raises `FileExistsError` if `link` exists and is not a symlink.
    """
    if not rate_hz > 0:
        raise ValueError(f"rate must be positive, got {rate_hz}")
    stop = stop or threading.Event()
    counts = _Counts()
    master, slave = os.openpty()
    try:
        # Raw: no echo back into the master (which nobody reads), no CR/LF translation, and no
        # XON/XOFF or signal characters taken out of the binary stream.
        tty.setraw(slave)
        os.set_blocking(master, False)
        target = os.ttyname(slave)
        _replace_link(link, target)
        try:
            if ready is not None:
                ready.set()
            with _terminate_on_sigterm():
                _pump(master, frames, 1.0 / rate_hz, seconds, stop=stop, counts=counts)
        except (KeyboardInterrupt, _Terminated):
            pass  # an orderly stop: the finally clauses clean up
        finally:
            _remove_link(link, target)
    finally:
        # We hold the slave open ourselves so the pty lives while no reader has it open.
        os.close(master)
        os.close(slave)
    return PtyStats(counts.written, counts.dropped)


def _pump(
    master: int,
    frames: Iterator[bytes],
    period: float,
    seconds: float | None,
    *,
    stop: threading.Event,
    counts: _Counts,
) -> None:
    start = time.monotonic()
    end = None if seconds is None else start + seconds
    due = start
    while not stop.is_set():
        now = time.monotonic()
        if end is not None and now >= end:
            return
        if due > now:
            stop.wait(min(due, end if end is not None else due) - now)
            continue
        frame = next(frames, None)
        if frame is None:
            return
        _write(master, frame, counts)
        due = max(due + period, now - MAX_CATCH_UP)


def _write(master: int, frame: bytes, counts: _Counts) -> None:
    try:
        sent = os.write(master, frame)
    except BlockingIOError:
        counts.dropped += 1  # the buffer is full: nobody is reading
        return
    # A partial write leaves a cut frame on the line, as a real device's full buffer would.
    if sent == len(frame):
        counts.written += 1
    else:
        counts.dropped += 1


@contextlib.contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install handlers; threads are stopped by their Event
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _replace_link(link: Path, target: str) -> None:
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a symlink: choose another link path")
    # Build the new link beside the old one and rename it over: no moment without a link.
    temporary = link.with_name(f".{link.name}.{os.getpid()}.{threading.get_ident()}")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    temporary.symlink_to(target)
    temporary.replace(link)


def _remove_link(link: Path, target: str) -> None:
    # Leave the link alone if another simulator has taken it over since.
    with contextlib.suppress(OSError):
        if link.is_symlink() and os.readlink(link) == target:
            link.unlink()


class PtyThread:
    """`serve_pty` in a daemon thread: `start()` returns once the link exists, `stop()` ends it.

    Use it as a context manager in the demo and tests.
    """

    def __init__(
        self, link: Path, frames: Iterator[bytes], rate_hz: float, seconds: float | None = None
    ) -> None:
        self.link = link
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._stats: PtyStats | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(frames, rate_hz, seconds),
            name=f"pty-sim {link.name}",
            daemon=True,
        )

    def _run(self, frames: Iterator[bytes], rate_hz: float, seconds: float | None) -> None:
        try:
            self._stats = serve_pty(
                self.link, frames, rate_hz, seconds, stop=self._stop, ready=self._ready
            )
        except BaseException as exc:  # handed to the caller of start() / stop()
            self._error = exc
            self._ready.set()

    def start(self, timeout: float = 5.0) -> None:
        """Start serving (once; later calls return at once). Raises what stopped it starting."""
        if self._thread.ident is not None:
            return
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"simulated port {self.link} did not come up in {timeout} s")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 5.0) -> PtyStats:
        """Stop serving, remove the link, and return what was written."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"simulated port {self.link} did not stop in {timeout} s")
        if self._error is not None:
            raise self._error
        if self._stats is None:
            raise RuntimeError(f"simulated port {self.link} was never started")
        return self._stats

    def __enter__(self) -> PtyThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
