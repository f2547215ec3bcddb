"""F-PLUGIN through the real commands: a vendor package installed beside the hub is imported only
when a configured device or `[drivers] allow` names it; `drivers` lists the others from their
metadata; an allow entry's distribution and version must be what is installed; a loaded one's
provenance is signed into `hub-started`; its decoder runs under a time budget.

Each test installs fake vendor distributions (tests/vendor_site.py) into a folder on the
subprocesses' PYTHONPATH; their driver modules leave a marker file when imported.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import py_compile
import struct
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BrokerFactory, Received, SubscriberFactory
from tests.harness import hub_jwk, run_cli, start_daemon, verify_messages, wait_until, write_config
from tests.vendor_site import VendorPackage, install_vendor_package


@pytest.fixture
def markers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    monkeypatch.setenv("ACME_MARKERS", str(folder))
    # The file the driver's `peek` opens: the outbox in write_config's state dir.
    monkeypatch.setenv("ACME_PEEK", str(tmp_path / "state" / "outbox.sqlite"))
    return folder


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    return folder


@pytest.fixture
def probe(site: Path) -> VendorPackage:
    return install_vendor_package(site, "acme.probe", "acme-rtm-probe", "1.0.0", "acme_probe")


@pytest.fixture
def both(site: Path, probe: VendorPackage) -> tuple[VendorPackage, VendorPackage]:
    """acme.probe and a second vendor package, acme.other, that no config names."""
    other = install_vendor_package(site, "acme.other", "acme-rtm-other", "2.0.0", "acme_other")
    return probe, other


def _config(tmp_path: Path, mosquitto: BrokerFactory, extra: str = "", devices: str = "") -> Path:
    return write_config(tmp_path, mosquitto("plain"), [devices] if devices else [], extra=extra)


def _allow(distribution: str = "acme-rtm-probe", version: str = "1.0.0") -> str:
    return (
        f'[drivers]\nallow = [{{ id = "acme.probe", distribution = "{distribution}", '
        f'version = "{version}" }}]\ndecode_budget_ms = 200\n'
    )


def test_unconfigured_vendor_packages_are_listed_from_metadata_and_never_imported(
    tmp_path: Path,
    mosquitto: BrokerFactory,
    markers: Path,
    both: tuple[VendorPackage, VendorPackage],
) -> None:
    probe, other = both
    config = _config(tmp_path, mosquitto)
    checked = run_cli("check-config", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    listed = run_cli("drivers", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows["acme.probe"] == {
        "id": "acme.probe",
        "source": "acme-rtm-probe",
        "distribution": "acme-rtm-probe",
        "version": "1.0.0",
        "target": "acme_probe.driver:DRIVER",
        "status": "not loaded",
    }
    assert rows["contec.cms50d"]["status"] == "loaded"  # the built-ins are described as before
    against = run_cli("drivers", "-c", str(config))
    assert against.returncode == 0, against.stderr
    assert "acme.probe  (acme-rtm-probe 1.0.0; installed, not allowed)" in against.stdout
    assert "acme.other  (acme-rtm-other 2.0.0; installed, not allowed)" in against.stdout
    assert not probe.imported(markers) and not other.imported(markers)

    # Asked for by name, a vendor's own tools import that driver and no other.
    decoded = run_cli("decode", "acme.probe", "6f6b20330a", "--json")  # "ok 3\n"
    assert decoded.returncode == 0, decoded.stderr
    assert json.loads(decoded.stdout)["readings"][0]["observations"][0]["value"] == 93
    assert probe.imported(markers) and not other.imported(markers)
    described = run_cli("drivers", "--load", "acme.probe", "--json")
    rows = {row["id"]: row for row in json.loads(described.stdout)}
    assert rows["acme.probe"]["status"] == "loaded"
    assert rows["acme.probe"]["category"] == "respiratory"
    assert rows["acme.other"]["status"] == "not loaded"
    assert not other.imported(markers)


def test_an_allow_entry_that_does_not_fit_what_is_installed_exits_2_naming_its_key(
    tmp_path: Path, mosquitto: BrokerFactory, markers: Path, probe: VendorPackage
) -> None:
    cases = {
        _allow(distribution="acme-rtm-impostor"): "drivers.allow[0].distribution",
        _allow(version="1.0.1"): "drivers.allow[0].version",
    }
    said = []
    for extra, key in cases.items():
        config = _config(tmp_path, mosquitto, extra)
        for command in ("check-config", "run"):
            refused = run_cli(command, "-c", str(config))
            assert refused.returncode == 2, refused.stderr
            assert f"{config}: {key}: " in refused.stderr
            said.append(refused.stderr)
    assert (
        "driver acme.probe is not installed from acme-rtm-impostor but from acme-rtm-probe "
        in (said[0])
    )
    assert "acme-rtm-probe 1.0.0 is installed, this entry allows 1.0.1" in said[2]
    assert not probe.imported(markers)
    # The distribution's name is compared as pip compares them.
    spelled = _config(tmp_path, mosquitto, _allow(distribution="Acme_RTM.Probe"))
    accepted = run_cli("check-config", "-c", str(spelled))
    assert accepted.returncode == 0, accepted.stderr
    assert probe.imported(markers)


def test_an_installed_file_that_differs_from_its_record_is_refused_before_import(
    tmp_path: Path, mosquitto: BrokerFactory, markers: Path, probe: VendorPackage
) -> None:
    probe.driver_file.write_text(probe.driver_file.read_text() + "\n# changed after install\n")
    config = _config(tmp_path, mosquitto, _allow())
    refused = run_cli("check-config", "-c", str(config))
    assert refused.returncode == 2, refused.stderr
    assert "drivers.allow[0]: driver acme.probe from acme-rtm-probe 1.0.0 is refused: " in (
        refused.stderr
    )
    assert "acme_probe/driver.py differs from the hash in its RECORD" in refused.stderr
    assert not probe.imported(markers)


def test_a_compiled_file_beside_a_checked_source_is_not_what_runs(
    tmp_path: Path, mosquitto: BrokerFactory, markers: Path, probe: VendorPackage
) -> None:
    """A `.pyc` RECORD does not list, stamped with its source's time and size (what Python
    checks before using it), would run instead of the source RECORD vouches for."""
    source = probe.driver_file
    tampered = tmp_path / "tampered.py"
    tampered.write_text(
        'import os\nfrom pathlib import Path\nPath(os.environ["ACME_MARKERS"], '
        '"tampered").write_text("ran")\n' + source.read_text()
    )
    cached = Path(importlib.util.cache_from_source(str(source)))
    py_compile.compile(str(tampered), cfile=str(cached), doraise=True)
    stat = source.stat()
    header = struct.pack("<II", int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF)
    data = cached.read_bytes()
    cached.write_bytes(data[:8] + header + data[16:])  # as if compiled from the source
    config = _config(tmp_path, mosquitto, _allow())
    checked = run_cli("check-config", "-c", str(config))
    assert checked.returncode == 0, checked.stderr
    assert probe.imported(markers)  # the plugin was imported, from its source
    assert not (markers / "tampered").exists()
    assert cached.read_bytes()[8:16] == header  # and nothing was written beside it


def _plugin_readings(messages: list[Received], jwk: dict[str, Any]) -> list[bytes]:
    return [
        base64.b64decode(e.payload["raw"])
        for e in verify_messages(messages, jwk)
        if e.payload["kind"] == "reading" and e.payload["device"]["driver"] == "acme.probe"
    ]


def test_an_allowed_driver_runs_signed_into_hub_started_and_a_slow_decode_is_cut_off(
    tmp_path: Path,
    mosquitto: BrokerFactory,
    mqtt_subscriber: SubscriberFactory,
    markers: Path,
    both: tuple[VendorPackage, VendorPackage],
) -> None:
    probe, other = both
    broker = mosquitto("plain")
    subscriber = mqtt_subscriber(broker, "rtm/v1/#")
    master, slave = os.openpty()
    link = tmp_path / "ttyProbe"
    link.symlink_to(os.ttyname(slave))
    device = (
        f'[[devices]]\nid = "probe"\ndriver = "acme.probe"\nport = "{link}"\npatient = "pt-0001"\n'
    )
    config = write_config(tmp_path, broker, [device], extra=_allow())
    jwk = hub_jwk(config)
    daemon = start_daemon(config, tmp_path / "daemon.log")
    stop = threading.Event()

    def device_writes() -> None:
        # A line a second until the hub has a reading, so the first is not lost to the port
        # opening; the test's later lines are written by the test itself.
        while not stop.wait(0.5):
            try:
                os.write(master, b"ok 1\n")
            except OSError:
                return

    writer = threading.Thread(target=device_writes, daemon=True)
    writer.start()
    try:
        assert subscriber.wait_for(lambda m: b"ok 1" in _plugin_readings(m, jwk), 30), daemon.log()
        stop.set()
        writer.join(5)
        os.write(master, b"slow\n")
        wait_until(lambda: "exceeded" in daemon.log() or "budget" in daemon.log(), 20, "budget")
        os.write(master, b"ok 7\n")
        assert subscriber.wait_for(lambda m: b"ok 7" in _plugin_readings(m, jwk), 20), daemon.log()
        # What a driver must not do is logged by the audit hook, naming the driver.
        os.write(master, b"peek\nnet\nok 8\n")
        assert subscriber.wait_for(lambda m: b"ok 8" in _plugin_readings(m, jwk), 20), daemon.log()
        assert daemon.running
        assert daemon.stop() == 0, daemon.log()
    finally:
        stop.set()
        daemon.close()
        os.close(master)
        os.close(slave)
    log = daemon.log()
    assert "driver acme.probe: a decode took longer than its budget of 200 ms" in log
    assert "driver acme.probe raised DecodeBudgetExceeded instead of DecodeError" in log
    assert b"ok 0" not in _plugin_readings(subscriber.snapshot(), jwk)  # the slow input dropped
    state = tmp_path / "state"
    assert f"driver acme.probe opened {state / 'outbox.sqlite'} in the hub's state dir" in log
    assert "driver acme.probe network access (socket.connect to ('127.0.0.1', 9))" in log
    assert "acme_probe" not in log  # importing it opened files outside the state dir only
    assert probe.imported(markers) and not other.imported(markers)
    entries = verify_messages(subscriber.snapshot(), jwk)
    started = next(e.payload["detail"] for e in entries if e.payload.get("event") == "hub-started")
    assert started["plugins"] == [
        {
            "id": "acme.probe",
            "distribution": "acme-rtm-probe",
            "version": "1.0.0",
            "sha256": hashlib.sha256(probe.record.read_bytes()).hexdigest(),
        }
    ]
