"""A broker outage that lets the outbox fill its disk, then the broker's return: shared by the
in-process variant and the private-tmpfs child of tests/test_disk_full_drain.py.

Real parts only: the outbox (SQLite), the signer and journal, the uplink and its MQTT client,
a mosquitto the caller stops and starts (`Control`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.hub.identity import HubIdentity
from gateway.hub.journal import Journal
from gateway.hub.outbox import Outbox
from gateway.hub.signer import ChainHead, Signer
from gateway.hub.uplink import Uplink
from gateway.sdk import Observation, Reading
from gateway.transport.mqtt import publisher_factory
from gateway.transport.mqtt_connect import MqttSettings
from tests.harness import until

HUB = "hub-full"
TOPIC = f"rtm/v1/{HUB}/#"


@dataclass(frozen=True, slots=True)
class Control:
    """What the scenario asks of whoever owns the broker."""

    broker_back: Callable[[], Awaitable[None]]


def _device(device_id: str) -> dict[str, object]:
    return {"id": device_id, "driver": "generic.kv-lines", "driver_version": "1.0.0"}


def _reading(value: int) -> Reading:
    # A realistic body size (about 1 KiB of JWS), so the disk fills in a few thousand rows.
    return Reading((Observation.known("spo2", 90 + value % 10),), raw=bytes(200))


async def fill_and_drain(
    outbox: Outbox, settings: MqttSettings, control: Control, *, disk_fills: bool = True
) -> dict[str, Any]:
    """Broker away: submit until the disk refused a commit, the outbox lowered its cap and
    readings were stored again after it (`disk_fills`), or until the byte cap dropped readings
    (the disk never filling). Then the broker returns: wait until the outbox is empty and new
    readings are stored and sent again. Returns what happened, for the test to judge."""
    signer = Signer(HubIdentity.generate(), HUB, ChainHead(*outbox.head()))
    uplink = Uplink(
        outbox,
        publisher_factory(settings),
        HUB,
        batch_size=100,
        window=4,
        backoff_initial=0.1,
        backoff_max=0.5,
    )
    journal = Journal(outbox, signer, on_commit=uplink.wake, commit_interval=0.0)
    tasks = [asyncio.create_task(journal.run()), asyncio.create_task(uplink.run())]
    n = 0

    async def submit(count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            device = "meter" if n % 50 == 0 else "chatty"
            journal.submit(_device(device), device, "pt-1", _reading(n), time.time())
        await asyncio.sleep(0.01)

    try:
        deadline = time.monotonic() + 90

        # Until the disk refused a commit, the ballast was given up, the disk filled again
        # and the outbox lowered its byte cap (the cap logic on a full disk).
        def filled() -> bool:
            if disk_fills:
                return outbox.max_bytes < outbox.room.configured
            return outbox.head()[0] > outbox.depth()  # no acks: rows left through a drop

        while not filled():
            await submit(20)
            await until(lambda: journal.pending < 100, timeout=30)
            assert time.monotonic() < deadline, "the disk never filled"
        # A write the disk refused: a commit of the journal's, or a checkpoint's.
        failures = outbox.room.refusals
        committed_at_full = journal.committed
        # Readings are stored again while the disk is still full: the cap logic made room.
        while journal.committed < committed_at_full + 2000:
            await submit(20)
            await until(lambda: journal.pending < 100, timeout=30)
            assert time.monotonic() < deadline, "nothing was stored after the disk filled"
        await until(lambda: journal.pending == 0 and journal.last_error is None, timeout=30)
        # The outage goes on: the drops make room on disk, and the ballast comes back.
        until_ballast = time.monotonic() + 20
        while not outbox.room.ballast.present and time.monotonic() < until_ballast:
            await submit(5)
            await asyncio.sleep(0.1)
        ballast_after_full = outbox.room.ballast.present
        held_at_return = outbox.depth()
        await control.broker_back()
        await until(lambda: outbox.depth() == 0, timeout=60)  # everything stored drains
        head_at_drain = outbox.head()[0]
        await submit(50)  # new readings are stored and sent, without a restart
        await until(lambda: outbox.head()[0] >= head_at_drain + 50, timeout=10)
        await until(lambda: outbox.depth() == 0, timeout=20)
        # The ballast comes back once there is room (checked every few seconds).
        until_ballast = time.monotonic() + 15
        while not outbox.room.ballast.present and time.monotonic() < until_ballast:
            await submit(1)
            await asyncio.sleep(0.2)
        await until(lambda: outbox.depth() == 0, timeout=20)
        return {
            "failures": failures,
            "refusals_at_end": outbox.room.refusals,
            "committed_at_full": committed_at_full,
            "ballast_after_full": ballast_after_full,
            "ballast_at_end": outbox.room.ballast.present,
            "held_at_return": held_at_return,
            "disk_full_at_end": outbox.room.full,
            "last_seq": outbox.head()[0],
            "pending": journal.pending,
        }
    finally:
        await uplink.stop(drain_timeout=2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def entries_of(messages: list[Any]) -> list[dict[str, Any]]:
    """The JWS payloads of the entries in the `readings` and `events` messages (`Received`)."""
    out = []
    for message in messages:
        if not message.topic.endswith(("/readings", "/events")):
            continue
        for jws in json.loads(message.payload):
            out.append(json.loads(base64.urlsafe_b64decode(jws["payload"] + "==")))
    return out


def judge(entries: list[dict[str, Any]], last_seq: int) -> dict[str, Any]:
    """Every seq 1..last_seq delivered or announced by a gap event's `ranges`, never both."""
    received = {e["seq"] for e in entries}
    announced: set[int] = set()
    gaps = [e["detail"] for e in entries if e.get("event") == "gap"]
    for gap in gaps:
        for first, last in gap["ranges"]:
            announced |= set(range(first, last + 1))
    return {
        "gaps": gaps,
        "unexplained": sorted(set(range(1, last_seq + 1)) - received - announced),
        "both": sorted(received & announced),
    }
