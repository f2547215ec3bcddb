"""The command line as a technician, a vendor and the platform use it: real processes."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import serial

from gateway.sim.cms50d import encode_frame
from tests.conftest import BrokerFactory
from tests.harness import (
    CLI,
    Process,
    cms50d_device,
    hub_jwk,
    run_cli,
    start_daemon,
    start_simulator,
    wait_until,
    write_config,
)


def test_drivers_lists_builtins_with_their_match_rules() -> None:
    result = run_cli("drivers", "--json")
    assert result.returncode == 0, result.stderr
    drivers = {d["id"]: d for d in json.loads(result.stdout)}
    assert drivers["contec.cms50d"]["match"] == ["usb 10c4:ea60"]
    assert drivers["contec.cms50d"]["produces"] == ["spo2", "pulse_rate"]
    assert drivers["generic.kv-lines"]["source"] == "builtin"
    text = run_cli("drivers")
    assert "contec.cms50d" in text.stdout
    assert "matches: usb 10c4:ea60" in text.stdout


def test_decode_prints_the_wire_shape() -> None:
    frame = encode_frame(spo2=98, pulse_rate=130)  # PR >= 128 needs bit 7 from byte 2
    result = run_cli("decode", "contec.cms50d", frame.hex(" "), "--json")
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert decoded["errors"] == []
    (reading,) = decoded["readings"]
    values = {o["type"]: o["value"] for o in reading["observations"]}
    assert values == {"spo2": 98, "pulse_rate": 130}
    assert reading["observations"][0]["mdc"] == 150456
    assert base64.b64decode(reading["raw"]) == frame


def test_decode_errors_are_clear() -> None:
    unknown = run_cli("decode", "acme.nothing", "00")
    assert unknown.returncode == 2
    assert "acme.nothing" in unknown.stderr
    assert "contec.cms50d" in unknown.stderr  # it lists what is installed
    not_hex = run_cli("decode", "contec.cms50d", "zz")
    assert not_hex.returncode == 2
    assert "hex" in not_hex.stderr
    garbage = run_cli("decode", "contec.cms50d", "81 01")  # a frame cut short
    assert garbage.returncode == 1
    assert "Traceback" not in garbage.stderr


def test_decode_flushes_a_record_held_open_at_the_end_of_its_input() -> None:
    # Indoor Bike Data with More Data set: cadence, power and elapsed time, the rest to follow.
    result = run_cli("decode", "gatt.ftms", "4508AA0096005802", "--char", "2ad2", "--json")
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert decoded["errors"] == []
    (reading,) = decoded["readings"]
    values = {o["type"]: o["value"] for o in reading["observations"]}
    assert values == {"cadence": 85.0, "power": 150, "elapsed_time": 600}
    assert reading["status"]["record_complete"] is False
    text = run_cli("decode", "gatt.ftms", "45 08 aa 00 96 00 58 02", "--char", "2AD2")
    assert text.returncode == 0, text.stderr
    assert json.loads(text.stdout)["observations"] == reading["observations"]


def test_identity_is_created_once_and_kept(tmp_path: Path, mosquitto: BrokerFactory) -> None:
    config = write_config(tmp_path, mosquitto("plain"))
    first = hub_jwk(config)
    assert hub_jwk(config) == first
    assert first["kty"] == "OKP"
    assert first["crv"] == "Ed25519"
    assert first["alg"] == "Ed25519"
    key_file = tmp_path / "state" / "identity.key"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_simulate_streams_on_a_pty_link(tmp_path: Path) -> None:
    link = tmp_path / "ttyPeakFlow"
    process = start_simulator(link, tmp_path / "sim.log", rate=20, driver="generic.kv-lines")
    try:
        with serial.Serial(str(link), timeout=2) as port:
            lines = [port.readline() for _ in range(3)]
    finally:
        process.close()
    assert all(line.startswith(b"pef=") and line.endswith(b"\r\n") for line in lines)
    unknown = run_cli("simulate", "acme.nothing", "--link", str(tmp_path / "x"))
    assert unknown.returncode == 2
    assert "no simulator" in unknown.stderr


def test_demo_runs_on_the_embedded_broker() -> None:
    result = run_cli("demo", "--seconds", "4", "--broker", "embedded", timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verdict: OK" in result.stdout
    sent_line = re.search(r"signed and sent by the hub\s*: (\d+)", result.stdout)
    verified_line = re.search(r"signatures verified\s*: (\d+)", result.stdout)
    assert sent_line and verified_line, result.stdout
    sent, verified = int(sent_line[1]), int(verified_line[1])
    assert sent > 5
    assert verified == sent


def test_the_demo_live_view_writes_dimensionless_units_as_people_do(tmp_path: Path) -> None:
    from gateway.tools.demo import _Receiver
    from gateway.tools.readout import observation_text, unit_text

    assert [unit_text(u) for u in ("1", "{floors}", "W", "/min", "%", "{beats}/min")] == [
        "",
        "floors",
        "W",
        "/min",
        "%",
        "{beats}/min",
    ]
    assert observation_text("spo2", None, "%") == "spo2 — %"
    receiver = _Receiver("mqtt://127.0.0.1:1", "5", tmp_path / "hub.jwk")  # never started
    observations = [
        {"type": "resistance_level", "value": 7, "unit": "1"},
        {"type": "power", "value": 150, "unit": "W"},
        {"type": "stride_count", "value": 12, "unit": "{strides}"},
    ]
    entry = {"kind": "reading", "device": {"id": "bike"}, "observations": observations}
    receiver.on_entry("t", entry)
    assert receiver.last == {"bike": "resistance_level 7, power 150 W, stride_count 12 strides"}


def test_verify_command_checks_a_running_hub(tmp_path: Path, mosquitto: BrokerFactory) -> None:
    broker = mosquitto("mtls")
    link = tmp_path / "ttyCMS"
    simulator = start_simulator(link, tmp_path / "sim.log")
    config = write_config(tmp_path, broker, [cms50d_device(link, interval=0.1)])
    jwk_file = tmp_path / "hub.jwk"
    jwk_file.write_text(json.dumps(hub_jwk(config)))
    verify = Process(
        [
            "verify",
            "--url",
            broker.url,
            "--hub",
            "hub-test",
            "--jwk",
            str(jwk_file),
            "--ca-file",
            str(broker.ca_file),
            "--cert-file",
            str(broker.client_cert),
            "--key-file",
            str(broker.client_key),
            "--count",
            "30",
            "--seconds",
            "40",
            "--json",
        ],
        tmp_path / "verify.log",
    )
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:
        verify.popen.wait(60)
        assert verify.popen.returncode == 0, verify.log()
    finally:
        verify.close()
        daemon.close()
        simulator.close()
    report = json.loads(verify.log())
    (hub,) = report["hubs"]
    assert hub["verified"] >= 30
    assert hub["bad_signatures"] == 0
    assert hub["chain_breaks"] == 0


def test_systemd_notify_ready_watchdog_stopping(tmp_path: Path, mosquitto: BrokerFactory) -> None:
    broker = mosquitto("plain")
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(20)
    config = write_config(tmp_path, broker)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), WATCHDOG_USEC="400000")
    with (tmp_path / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen(
            [*CLI, "run", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    try:
        messages: list[str] = []

        def receive_until(word: str) -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(word in m for m in messages):
                messages.append(sock.recv(4096).decode())

        receive_until("READY=1")
        assert any("READY=1" in m for m in messages)
        receive_until("WATCHDOG=1")
        count_before = sum("WATCHDOG=1" in m for m in messages)
        time.sleep(1.0)
        daemon.terminate()
        receive_until("STOPPING=1")
        assert any("STOPPING=1" in m for m in messages)
        assert daemon.wait(20) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sock.close()
    assert count_before >= 1
    assert sum("WATCHDOG=1" in m for m in messages) >= count_before + 2  # pinged every 0.2 s


def test_status_before_the_first_run_and_while_running(
    tmp_path: Path, mosquitto: BrokerFactory
) -> None:
    broker = mosquitto("plain")
    link = tmp_path / "ttyCMS"
    simulator = start_simulator(link, tmp_path / "sim.log")
    config = write_config(tmp_path, broker, [cms50d_device(link, interval=0.1)])
    before = run_cli("status", "-c", str(config))
    assert before.returncode == 0, before.stderr
    assert "never run" in before.stdout
    daemon = start_daemon(config, tmp_path / "daemon.log")
    try:

        def running_with_readings() -> bool:
            if not (tmp_path / "state" / "outbox.sqlite").exists():
                return False
            report = json.loads(run_cli("status", "-c", str(config), "--json").stdout)
            return bool(
                report["daemon_running"]
                and report["devices"][0]["readings"] > 5
                and report["uplink"]["last_ack"]
            )

        wait_until(running_with_readings, 30, "status to show a running hub with readings")
        text = run_cli("status", "-c", str(config)).stdout
        assert f"running (pid {daemon.popen.pid})" in text
        assert f"oximeter (contec.cms50d on {link})" in text
        assert "last acknowledged publish" in text
    finally:
        daemon.close()
        simulator.close()


def test_decode_a_ble_characteristic_value() -> None:
    result = run_cli("decode", "gatt.hrs", "16 48 00 04", "--char", "2A37", "--json")
    assert result.returncode == 0, result.stderr
    (reading,) = json.loads(result.stdout)["readings"]
    assert {o["type"]: o["value"] for o in reading["observations"]} == {
        "heart_rate": 72,
        "rr_interval": 1.0,
    }
    assert reading["status"] == {"sensor_contact": "detected"}
    missing = run_cli("decode", "gatt.hrs", "16 48")
    assert missing.returncode == 2
    assert "--char" in missing.stderr
