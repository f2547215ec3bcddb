"""The daemon's log: where it goes, and what may be in it at each level.

Health values leave the hub only at TRACE (a level below DEBUG, `gateway.sdk.TRACE`): at DEBUG
only the hub's own loggers write below INFO, since libraries' debug output carries values (bleak
logs every D-Bus signal body and characteristic read; a vendor driver may log what it decodes).
Standard library only; `gateway.cli` calls `setup_logging` before anything else runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from gateway.sdk import TRACE

log = logging.getLogger(__name__)

LIBRARY_LOGGERS = (
    "asyncio",
    "bleak",
    "bleak_retry_connector",
    "dbus_fast",
    "habluetooth",
    "paho",
    "serial_asyncio_fast",
)
"""Libraries known to log values or D-Bus bodies at DEBUG: capped at the logger, so their debug
lines are not even built. The handler's filter catches every other library and vendor driver."""


class _OnlyTheHubBelowInfo(logging.Filter):
    """Below INFO, only the hub's own lines pass (they never carry values; see sessions/core.py).
    Libraries' debug output carries values: bleak logs every D-Bus signal body and every
    characteristic read, a vendor driver may log what it decodes."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return record.levelno >= logging.INFO or name == "gateway" or name.startswith("gateway.")


def setup_logging(level: str) -> None:
    """The daemon's log to stderr (the journal under systemd). Health values leave only at
    TRACE: at DEBUG the hub's own lines, every other logger at INFO and above."""
    numeric = TRACE if level.upper() == "TRACE" else getattr(logging, level.upper(), logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if numeric > TRACE:
        handler.addFilter(_OnlyTheHubBelowInfo())
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    logging.basicConfig(level=numeric, handlers=[handler])


def loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """An error no task awaited, reported by the event loop. asyncio's own report quotes the
    callback with its arguments (a notification's value, for one), so: the type here, asyncio's
    report at TRACE."""
    error = context.get("exception")
    log.error(
        "the event loop caught %s outside any task; the hub goes on",
        type(error).__name__ if error is not None else "an error",
    )
    if logging.getLogger("asyncio").isEnabledFor(TRACE):
        loop.default_exception_handler(context)
