"""What vendor driver code does beyond decoding, made visible: an audit hook (PEP 578).

What lives here: `watch` (install the hook once per process and name the hub's state dir) and
`running` (mark the current thread as running a vendor driver's code: the registry while it
imports one, the decode budget's worker threads while they decode). While a thread is so
marked, the hook logs at WARNING a network connection or bind, a process started, and a file
opened under the state dir (where the signing key and the outbox are): a driver does no I/O
(DESIGN.md), so each is worth a look.

This is visibility, not a boundary: Python code in the process can do what it likes, before or
around the hook, and code a driver starts on its own threads is not marked. Running vendor
drivers in a child process without the state dir or network is the boundary; see "Vendor
drivers" in docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_NETWORK = frozenset({"socket.connect", "socket.bind", "socket.sendto"})
_PROCESS = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn"})
_EVENTS = _NETWORK | _PROCESS | {"open"}

_local = threading.local()
_watched: list[str] = []
_lock = threading.Lock()
_installed = False


def watch(state_dir: Path) -> None:
    """Install the hook (once per process: an audit hook cannot be removed) and watch opens
    under `state_dir`."""
    global _installed  # noqa: PLW0603 - one hook per process, by nature of audit hooks
    folder = os.path.abspath(state_dir)
    with _lock:
        if folder not in _watched:
            _watched.append(folder)
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True


@contextmanager
def running(driver_id: str) -> Iterator[None]:
    """Mark this thread as running vendor driver `driver_id`'s code, for the duration."""
    previous = getattr(_local, "driver", None)
    _local.driver = driver_id
    try:
        yield
    finally:
        _local.driver = previous


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event not in _EVENTS:
        return
    driver = getattr(_local, "driver", None)
    if driver is None or getattr(_local, "busy", False):
        return
    _local.busy = True  # logging may itself raise audit events on this thread
    try:
        _report(driver, event, args)
    finally:
        _local.busy = False


def _report(driver: str, event: str, args: tuple[object, ...]) -> None:
    if event == "open":
        target = args[0] if args else None
        if not isinstance(target, str | bytes | os.PathLike):
            return
        path = os.path.abspath(os.fsdecode(target))
        if not any(path == folder or path.startswith(folder + os.sep) for folder in _watched):
            return
        what = f"opened {path} in the hub's state dir"
    elif event in _NETWORK:
        what = f"network access ({event} to {args[1] if len(args) > 1 else '?'!r})"
    else:
        what = f"started a process ({event}: {args[0] if args else '?'!r})"
    log.warning(
        "driver %s %s: a driver does no I/O; report it to the driver's maintainer, and remove "
        "it from [drivers] allow until it is explained",
        driver,
        what,
    )
