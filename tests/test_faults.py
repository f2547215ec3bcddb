"""Fault injection against the real daemon process: kill -9, broker outages, garbage on the
wire, unplug and replug, the outbox cap, a full disk. Nothing assigned a seq may be lost."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.hub.config import load_config
from gateway.sim.cms50d import encode_frame
from tests.conftest import BrokerFactory, Received, SubscriberFactory
from tests.harness import (
    Process,
    assert_chain,
    cms50d_device,
    hub_jwk,
    run_cli,
    seqs,
    start_daemon,
    start_simulator,
    verify_messages,
    wait_until,
    write_config,
)

SocatLink = tuple[Path, Path, list[subprocess.Popen[bytes]]]
"""(the device end, the feeding end, the socat processes)"""
FAST_RECONNECT = "reconnect_max = 1.0"


def status(config: Path) -> dict[str, Any]:
    outbox = load_config(config).hub.outbox_path
    wait_until(outbox.exists, 20, "the daemon to create its outbox")
    result = run_cli("status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def outbox_drained(config: Path) -> bool:
    return bool(status(config)["outbox"]["depth"] == 0)


def entries_of(messages: list[Received], suffix: str) -> int:
    return sum(len(json.loads(m.payload)) for m in messages if m.topic.endswith(suffix))


def oximeter_hub(
    tmp_path: Path, broker: Any, interval: float, **config: Any
) -> tuple[Process, Path, dict[str, Any]]:
    """A simulated oximeter streaming at 60 Hz and a hub config for it: (simulator, config,
    the hub's public JWK)."""
    link = tmp_path / "ttyCMS"
    simulator = start_simulator(link, tmp_path / "sim.log", rate=60)
    path = write_config(tmp_path, broker, [cms50d_device(link, interval=interval)], **config)
    return simulator, path, hub_jwk(path)


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing(
    tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain", persistence=True)
    subscriber = mqtt_subscriber(broker, "rtm/v1/#", persistent=True)
    simulator, config, jwk = oximeter_hub(tmp_path, broker, 0.02, mqtt_extra=FAST_RECONNECT)
    rng = random.Random(7)
    grew = 0
    last_seen = 0
    try:
        for round_ in range(10):
            if round_ == 3:
                broker.stop()  # rounds 3-5 build a backlog ...
            if round_ == 6:
                broker.start()  # ... which rounds 6-9 drain while being killed
            daemon = start_daemon(config, tmp_path / f"daemon-{round_}.log")
            time.sleep(rng.uniform(0.5, 1.5))
            daemon.kill9()
            now = status(config)["outbox"]["last_seq"]
            grew += now > last_seen
            last_seen = now
        final = start_daemon(config, tmp_path / "daemon-final.log")
        time.sleep(1.0)
        simulator.close()
        wait_until(lambda: outbox_drained(config), 30, "the outbox to drain")
        assert final.stop() == 0, final.log()
    finally:
        simulator.close()

    assert grew >= 8, "most runs must have committed readings before their kill -9"
    last_seq = status(config)["outbox"]["last_seq"]
    assert subscriber.wait_for(
        lambda m: set(range(1, last_seq + 1)) <= set(seqs(verify_messages(m, jwk))), 20
    )
    entries = verify_messages(subscriber.snapshot(), jwk)
    missing = sorted(set(range(1, last_seq + 1)) - set(seqs(entries)))
    assert not missing, f"seqs assigned but never delivered: {missing[:20]}"
    assert_chain(entries)
    starts = {e.payload["seq"] for e in entries if e.payload.get("event") == "hub-started"}
    assert len(starts) >= 8


def test_broker_outage_buffers_then_delivers_in_order(
    tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain", persistence=True)
    subscriber = mqtt_subscriber(broker, "rtm/v1/#", persistent=True)
    simulator, config, jwk = oximeter_hub(tmp_path, broker, 0.05, mqtt_extra=FAST_RECONNECT)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        assert subscriber.wait_for(lambda m: entries_of(m, "/readings") >= 5, 20), daemon.log()
        broker.stop()
        time.sleep(3.0)
        during = status(config)["outbox"]["depth"]
        assert during >= 20, f"readings should wait in the outbox during the outage ({during})"
        broker.start()
        wait_until(lambda: outbox_drained(config), 30, "the outbox to drain after the outage")
        last_seq = status(config)["outbox"]["last_seq"]
        assert subscriber.wait_for(
            lambda m: (
                set(range(1, last_seq + 1)) <= {e.payload["seq"] for e in verify_messages(m, jwk)}
            ),
            20,
        )
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
        simulator.close()
    entries = verify_messages(subscriber.snapshot(), jwk)
    order = seqs(entries)
    first_seen: list[int] = []
    for seq in order:
        if seq not in first_seen:
            first_seen.append(seq)
    assert first_seen == sorted(first_seen), "entries must first arrive in seq order"
    assert_chain(entries)


def test_garbage_and_cut_frames_are_counted_and_skipped(
    tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    master, slave = os.openpty()
    link = tmp_path / "ttyNoisy"
    link.symlink_to(os.ttyname(slave))
    stop = threading.Event()

    def noisy_device() -> None:
        rng = random.Random(3)
        # The protocol has no checksum, so noise shaped exactly like a frame would decode. The
        # noise here is what resynchronisation must catch: runs of stray bytes (all with the
        # sync bit, or all without), and frames cut short by the next frame's sync byte.
        frame = encode_frame(spo2=96, pulse_rate=70)
        while not stop.is_set():
            chunk = frame
            choice = rng.random()
            if choice < 0.1:
                chunk = frame[: rng.randrange(1, 5)] + frame  # cut short, then a whole frame
            elif choice < 0.2:
                chunk += bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 9)))
            elif choice < 0.3:
                chunk += bytes(rng.randrange(0x00, 0x80) for _ in range(rng.randrange(1, 9)))
            try:
                os.write(master, chunk)
            except OSError:
                return
            time.sleep(1 / 120)

    writer = threading.Thread(target=noisy_device, daemon=True)
    writer.start()
    config = write_config(tmp_path, broker, [cms50d_device(link, interval=0.05)])
    jwk = hub_jwk(config)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        assert subscriber.wait_for(lambda m: entries_of(m, "/readings") >= 30, 20), daemon.log()
        assert daemon.running
        assert daemon.stop() == 0, daemon.log()
    finally:
        stop.set()
        writer.join(5)
        daemon.close()
        os.close(master)
        os.close(slave)
    device = status(config)["devices"][0]
    assert device["decode_errors"] > 10
    readings = [
        e.payload
        for e in verify_messages(subscriber.snapshot(), jwk)
        if e.payload["kind"] == "reading"
    ]
    values = {o["value"] for r in readings for o in r["observations"] if o["type"] == "spo2"}
    assert values == {96}, "garbage must never turn into a value"


@pytest.fixture
def socat_link(tmp_path: Path) -> Iterator[SocatLink]:
    if shutil.which("socat") is None:
        pytest.fail("socat is missing: run the README test command, which installs it")
    device, feed = tmp_path / "ttyDevice", tmp_path / "ttyFeed"
    processes: list[subprocess.Popen[bytes]] = []
    yield device, feed, processes
    for process in processes:
        process.kill()
        process.wait(5)


def plug(device: Path, feed: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    processes.append(
        subprocess.Popen(["socat", f"pty,raw,echo=0,link={device}", f"pty,raw,echo=0,link={feed}"])
    )
    wait_until(lambda: device.exists() and feed.exists(), 10, "socat's links")


def test_unplug_and_replug_brings_the_session_back(
    tmp_path: Path,
    mosquitto: BrokerFactory,
    mqtt_subscriber: SubscriberFactory,
    socat_link: SocatLink,
) -> None:
    device, feed, processes = socat_link
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    plug(device, feed, processes)
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                with feed.open("wb", buffering=0) as port:
                    while not stop.is_set():
                        port.write(encode_frame(spo2=95, pulse_rate=66))
                        time.sleep(1 / 60)
            except OSError:
                time.sleep(0.05)  # unplugged: wait for the replug

    writer = threading.Thread(target=stream, daemon=True)
    writer.start()
    config = write_config(tmp_path, broker, [cms50d_device(device, interval=0.05)])
    jwk = hub_jwk(config)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        assert subscriber.wait_for(lambda m: entries_of(m, "/readings") >= 5, 20), daemon.log()
        processes[-1].kill()  # unplug
        processes[-1].wait(5)

        def lost(messages: list[Received]) -> bool:
            return any(
                e.payload.get("event") == "device-lost" for e in verify_messages(messages, jwk)
            )

        assert subscriber.wait_for(lost, 20), daemon.log()
        before = entries_of(subscriber.snapshot(), "/readings")
        plug(device, feed, processes)  # replug on the same path
        assert subscriber.wait_for(lambda m: entries_of(m, "/readings") >= before + 10, 30), (
            daemon.log()
        )
        assert daemon.running
        assert daemon.stop() == 0, daemon.log()
    finally:
        stop.set()
        writer.join(5)
        daemon.close()
    events = [
        e.payload["event"]
        for e in verify_messages(subscriber.snapshot(), jwk)
        if e.payload["kind"] == "event"
    ]
    assert events.count("device-connected") >= 2


def test_outbox_cap_drops_oldest_with_a_signed_gap_event(
    tmp_path: Path, mosquitto: BrokerFactory, mqtt_subscriber: SubscriberFactory
) -> None:
    broker = mosquitto("plain", persistence=True)
    subscriber = mqtt_subscriber(broker, "rtm/v1/#", persistent=True)
    broker.stop()  # the broker is down from the start: the outbox fills up
    simulator, config, jwk = oximeter_hub(
        tmp_path, broker, 0.02, mqtt_extra=FAST_RECONNECT, extra="[outbox]\nmax_rows = 100\n"
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        wait_until(lambda: status(config)["outbox"]["last_seq"] > 250, 30, "250 entries")
        assert status(config)["outbox"]["depth"] <= 100
        simulator.close()
        broker.start()
        wait_until(lambda: outbox_drained(config), 30, "the outbox to drain")
        last_seq = status(config)["outbox"]["last_seq"]
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
        simulator.close()

    def uncovered(messages: list[Received]) -> list[int]:
        entries = verify_messages(messages, jwk)
        seen = {e.payload["seq"] for e in entries}
        for entry in entries:
            if entry.payload.get("event") == "gap":
                detail = entry.payload["detail"]
                seen |= set(range(detail["first_seq"], detail["last_seq"] + 1))
        return sorted(set(range(1, last_seq + 1)) - seen)

    subscriber.wait_for(lambda m: not uncovered(m), 20)
    missing = uncovered(subscriber.snapshot())
    assert not missing, f"neither delivered nor announced by a gap event: {missing[:30]}"
    gaps = [
        e.payload["detail"]
        for e in verify_messages(subscriber.snapshot(), jwk)
        if e.payload.get("event") == "gap"
    ]
    # Events inside a dropped range are kept (and delivered): count is the readings dropped.
    assert gaps
    assert all(0 < g["count"] <= g["last_seq"] - g["first_seq"] + 1 for g in gaps)
    assert all(g["reason"] == "outbox-cap" for g in gaps)


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs for the full-disk test ({result.stderr.strip()}); "
            "these tests run as root in CI"
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI is root)")
def test_full_disk_is_a_clear_error_and_keeps_readings(
    tmp_path: Path, mosquitto: BrokerFactory
) -> None:
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "2m")
    try:
        broker = mosquitto("plain")
        broker.stop()  # keep everything in the outbox
        link = tmp_path / "ttyCMS"
        simulator = start_simulator(link, tmp_path / "sim.log", rate=60)
        config = write_config(
            tmp_path, broker, [cms50d_device(link, interval=0.05)], state_dir=disk / "state"
        )
        daemon = start_daemon(config, tmp_path / "daemon.log")
        try:
            wait_until((disk / "state" / "outbox.sqlite").exists, 20, "the outbox")
            time.sleep(0.5)
            filler = disk / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
            try:  # take every free byte of the filesystem
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * 4096)
            finally:
                os.close(fd)
            wait_until(
                lambda: "cannot store readings" in daemon.log(),
                30,
                "the daemon to report the full disk",
            )
            assert daemon.running, "a full disk must not stop the daemon"
            assert "disk is full" in daemon.log()
            assert "Traceback" not in daemon.log()
            time.sleep(1.0)  # readings keep coming while the disk is full
            filler.unlink()
            wait_until(
                lambda: "takes writes again" in daemon.log(),
                30,
                "the daemon to store again once space is free",
            )
            simulator.close()
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.close()
            simulator.close()
        # The readings taken while the disk was full were kept and stored: seq has no holes.
        report = status(config)
        assert report["outbox"]["depth"] == report["outbox"]["last_seq"] > 20
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chattr") is None,
    reason="making a directory read-only for root needs chattr +i (CI is root)",
)
def test_read_only_state_dir_is_a_clear_error(tmp_path: Path, mosquitto: BrokerFactory) -> None:
    broker = mosquitto("plain")
    state = tmp_path / "state"
    state.mkdir()
    config = write_config(tmp_path, broker)
    subprocess.run(["chattr", "+i", str(state)], check=True)
    try:
        result = run_cli("run", "-c", str(config), timeout=30)
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert str(state) in result.stderr
    assert "writable" in result.stderr


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path, mosquitto: BrokerFactory) -> None:
    broker = mosquitto("plain")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state dir's parent should be")
    config = write_config(tmp_path, broker, state_dir=blocker / "state")
    result = run_cli("run", "-c", str(config), timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "state dir" in result.stderr and str(blocker / "state") in result.stderr
