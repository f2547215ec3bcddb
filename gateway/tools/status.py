"""`rtm-gateway status`: what the hub has stored, sent and seen, read from its state dir.

It reads the outbox's committed state without writing, so it works whether the daemon is
running or not, and never takes the daemon's lock. Counts and times only: no health values.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.hub.clock import rfc3339
from gateway.hub.config import Config
from gateway.hub.outbox_file import OutboxError, OutboxNotFoundError
from gateway.hub.outbox_status import read_status


class StatusError(Exception):
    """The status cannot be read; the message says why."""


def collect_status(config: Config, now: float | None = None) -> dict[str, Any]:
    """A JSON-ready report of the hub's state."""
    now = time.time() if now is None else now
    try:
        snapshot = read_status(config.hub.outbox_path)
    except OutboxNotFoundError:
        return _never_run(config)
    except OutboxError as exc:
        raise StatusError(str(exc)) from exc
    stats = snapshot.stats
    last_publish = snapshot.meta.get("last_publish")
    devices = []
    for device in config.devices:
        seen = snapshot.devices.get(device.id)
        devices.append(
            {
                "id": device.id,
                "driver": device.driver,
                "where": device.where,
                "readings": seen.readings if seen else 0,
                "decode_errors": seen.decode_errors if seen else 0,
                "last_reading": _time(seen.last_reading if seen else None),
                "last_reading_age_s": _age(seen.last_reading if seen else None, now),
                "last_error": seen.last_error if seen else None,
            }
        )
    return {
        "hub": config.hub.id,
        "state_dir": str(config.hub.state_dir),
        "daemon_running": snapshot.writer_pid is not None,
        "daemon_pid": snapshot.writer_pid,
        "never_run": False,
        "outbox": {
            "depth": stats.depth,
            "oldest": _time(stats.oldest_created),
            "oldest_age_s": _age(stats.oldest_created, now),
            "last_seq": stats.newest_seq,
            "db_bytes": stats.db_bytes,
            "wal_bytes": stats.wal_bytes,
        },
        "uplink": {
            "broker": config.mqtt.url,
            "last_publish": _time(float(last_publish) if last_publish is not None else None),
            "last_ack": _time(stats.last_ack),
            "last_ack_age_s": _age(stats.last_ack, now),
        },
        "devices": devices,
    }


def _never_run(config: Config) -> dict[str, Any]:
    """Before the first start there is nothing stored: say so, with zeros, not an error."""
    return {
        "hub": config.hub.id,
        "state_dir": str(config.hub.state_dir),
        "daemon_running": False,
        "daemon_pid": None,
        "never_run": True,
        "outbox": {
            "depth": 0,
            "oldest": None,
            "oldest_age_s": None,
            "last_seq": 0,
            "db_bytes": 0,
            "wal_bytes": 0,
        },
        "uplink": {
            "broker": config.mqtt.url,
            "last_publish": None,
            "last_ack": None,
            "last_ack_age_s": None,
        },
        "devices": [
            {
                "id": d.id,
                "driver": d.driver,
                "where": d.where,
                "readings": 0,
                "decode_errors": 0,
                "last_reading": None,
                "last_reading_age_s": None,
                "last_error": None,
            }
            for d in config.devices
        ],
    }


def _time(epoch: float | None) -> str | None:
    return None if epoch is None else rfc3339(epoch)


def _age(epoch: float | None, now: float) -> float | None:
    return None if epoch is None else round(max(0.0, now - epoch), 1)


def render_status(report: dict[str, Any]) -> str:
    outbox, uplink = report["outbox"], report["uplink"]
    running = f"running (pid {report['daemon_pid']})" if report["daemon_running"] else "not running"
    lines = [
        f"hub {report['hub']}: daemon {running}"
        + ("; it has never run with this state dir" if report.get("never_run") else ""),
        f"outbox: {outbox['depth']} waiting"
        + (f", oldest {_ago(outbox['oldest_age_s'])}" if outbox["oldest_age_s"] is not None else "")
        + f"; last seq {outbox['last_seq']}",
        f"uplink: {uplink['broker']}; last acknowledged publish "
        + (_ago(uplink["last_ack_age_s"]) if uplink["last_ack_age_s"] is not None else "never"),
        "devices:",
    ]
    for device in report["devices"]:
        last = (
            _ago(device["last_reading_age_s"])
            if device["last_reading_age_s"] is not None
            else "never"
        )
        lines.append(
            f"  {device['id']} ({device['driver']} on {device['where']}): "
            f"{device['readings']} readings, last {last}; "
            f"{device['decode_errors']} decode errors"
        )
    if not report["devices"]:
        lines.append("  (none configured)")
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
