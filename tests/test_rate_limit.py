"""The per-device rate limit (F-FLOOD): a line device on a real pseudo-terminal floods lines;
the session keeps `max_rate` readings a second (plus its burst), drops the rest before they are
signed, and says so in a signed `rate-limited` event and a WARNING with counts only."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.app import SerialOpener
from gateway.hub.config import DeviceConfig
from gateway.hub.identity import HubIdentity
from gateway.hub.journal import Journal
from gateway.hub.outbox import Outbox
from gateway.hub.registry import Registry
from gateway.hub.signer import ChainHead, Signer
from gateway.sessions import core
from gateway.sessions.core import DEFAULT_MAX_RATE, ReadingPath
from gateway.sessions.serial import DeviceSession
from gateway.sim.kv_lines import KV_OPTIONS, start_pty
from tests.harness import run, until

RATE, BURST = 5.0, 5


def _payloads(outbox: Outbox) -> list[dict[str, Any]]:
    out = []
    for entry in outbox.lease(0, 1_000_000):
        jws = json.loads(entry.body)
        out.append(json.loads(base64.urlsafe_b64decode(jws["payload"] + "==")))
    return out


def test_a_flooding_serial_device_is_held_to_its_rate_with_a_signed_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(core, "RATE_REPORT_INTERVAL", 0.5)
    link = tmp_path / "ttyFLOOD"
    device = DeviceConfig(
        id="flood",
        driver="generic.kv-lines",
        patient="pt-1",
        port=str(link),
        options=KV_OPTIONS,
        max_rate=RATE,
        burst=BURST,
    )
    registry = Registry.load()
    driver = registry.get_serial(device.driver)
    settings = registry.serial_settings(device.driver, device.options)
    outbox = Outbox.open(tmp_path / "outbox.sqlite")
    signer = Signer(HubIdentity.generate(), "hub-rate", ChainHead(*outbox.head()))
    journal = Journal(outbox, signer, on_commit=lambda: None)
    session = DeviceSession(device, driver, settings, SerialOpener(), journal)
    simulator = start_pty(link, rate_hz=2000)  # a buggy device: thousands of lines a second
    caplog.set_level(logging.WARNING, logger="gateway.sessions.core")

    def events() -> list[dict[str, Any]]:
        return [p for p in _payloads(outbox) if p.get("event") == "rate-limited"]

    async def scenario() -> tuple[float, int]:
        tasks = [asyncio.create_task(journal.run()), asyncio.create_task(session.run())]
        started = time.monotonic()
        try:
            await until(lambda: session.connected, timeout=10)
            await until(lambda: len(events()) >= 2, timeout=15)  # once per interval
            peak_pending = 0
            for _ in range(50):  # memory stays bounded while the flood goes on
                peak_pending = max(peak_pending, journal.pending)
                await asyncio.sleep(0.02)
            return time.monotonic() - started, peak_pending
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    try:
        elapsed, peak_pending = run(scenario())
        stored = _payloads(outbox)
    finally:
        simulator.stop()
        outbox.close()
    readings = [p for p in stored if p["kind"] == "reading"]
    assert len(readings) <= BURST + RATE * elapsed + 2
    assert len(readings) >= RATE * 0.5  # the limit keeps readings, it does not stop them
    assert peak_pending < 50
    reported = [p["detail"] for p in stored if p.get("event") == "rate-limited"]
    assert len(reported) >= 2
    for detail in reported:
        assert detail["device"] == "flood"
        assert detail["dropped"] > 0
        assert detail["max_rate"] == RATE
        assert detail["interval_s"] >= 0.5
    # Many more lines came than were kept, and every dropped one is counted.
    assert sum(d["dropped"] for d in reported) > 5 * len(readings)
    warnings = [r.getMessage() for r in caplog.records if "over its rate" in r.getMessage()]
    assert warnings
    assert all("pef" not in w and "fev1" not in w for w in warnings)  # counts, not values


@pytest.mark.parametrize(
    ("continuous", "max_rate", "expected"),
    [(False, None, DEFAULT_MAX_RATE), (True, None, None), (False, 0.0, None), (True, 3.0, 3.0)],
)
def test_the_default_rate_depends_on_whether_the_driver_is_summarised(
    tmp_path: Path, continuous: bool, max_rate: float | None, expected: float | None
) -> None:
    device = DeviceConfig(id="d", driver="x.y", patient="p", port="/dev/x", max_rate=max_rate)
    with Outbox.open(tmp_path / "outbox.sqlite") as outbox:
        journal = Journal(outbox, Signer(HubIdentity.generate(), "h"), on_commit=lambda: None)
        path = ReadingPath(device, "x.y", object, journal, {}, continuous=continuous)
        assert path.max_rate == expected
