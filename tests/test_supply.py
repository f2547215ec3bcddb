"""The supply chain: the hash-pinned lock the tests and hub images install, the bounds in
pyproject.toml, the CycloneDX bill of materials and the offline-tolerant audit."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import paho.mqtt.client as paho
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "hub.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$")
BIN = Path(sys.executable).parent


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, the sha256 hashes listed for it)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    current = ""
    for line in path.read_text().splitlines():
        match = PIN.match(line)
        if match:
            current = normalise(match.group(1))
            pins[current] = (match.group(2), [])
        elif line.strip().startswith("--hash=sha256:"):
            pins[current][1].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
    return pins


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the lock ---------------------------------------------------------------------------------


def test_the_lock_pins_every_runtime_dependency_within_its_bounds_with_hashes() -> None:
    pins = lock_pins()
    assert pins, "requirements/hub.lock has no pins"
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        version, _ = pins[normalise(requirement.name)]
        assert requirement.specifier.contains(version), (line, version)
    for name, (_, hashes) in pins.items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
    build = lock_pins(ROOT / "requirements" / "build.lock")
    backend = Requirement(PYPROJECT["build-system"]["requires"][0])
    assert backend.specifier.contains(build[normalise(backend.name)][0])


def test_the_tests_run_the_locked_versions() -> None:
    # scripts/test installs the lock with --require-hashes, then the test tools: none moved a pin.
    installed = {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for name, (version, _) in lock_pins().items():
        assert installed.get(name) == version, name
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock_pins.py"), str(LOCK)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_lock_pins_names_a_package_that_moved(tmp_path: Path) -> None:
    moved = tmp_path / "moved.lock"
    moved.write_text(LOCK.read_text().replace(f"paho-mqtt=={paho_version()}", "paho-mqtt==0.0.1"))
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock_pins.py"), str(moved)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert f"lock drift: paho-mqtt: locked 0.0.1, installed {paho_version()}" in result.stderr


def paho_version() -> str:
    return metadata.version("paho-mqtt")


def test_every_dependency_and_the_build_backend_stop_before_a_major() -> None:
    for line in [*PYPROJECT["project"]["dependencies"], *PYPROJECT["build-system"]["requires"]]:
        assert any(spec.operator == "<" for spec in Requirement(line).specifier), line


def test_paho_still_has_the_private_read_the_inbound_guard_overrides() -> None:
    # gateway/transport/mqtt_inbound.py feeds its guard from paho's _sock_recv; the behaviour is
    # proved in test_mqtt_hostile_broker.py, this names the cause when a paho release moves it.
    assert "_sock_recv" in vars(paho.Client)
    assert paho_version().split(".")[0] == "2"


# -- the bill of materials --------------------------------------------------------------------


@pytest.fixture(scope="module")
def sbom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sbom") / "sbom.json"
    subprocess.run([str(BIN / "rtm-gateway"), "sbom", "-o", str(out)], check=True, timeout=120)
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def test_the_sbom_has_the_cyclonedx_1_5_shape(sbom: dict[str, Any]) -> None:
    assert (sbom["bomFormat"], sbom["specVersion"], sbom["version"]) == ("CycloneDX", "1.5", 1)
    assert re.fullmatch(r"urn:uuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", sbom["serialNumber"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sbom["metadata"]["timestamp"])
    hub = sbom["metadata"]["component"]
    assert (hub["type"], hub["name"], hub["purl"]) == (
        "application",
        "rtm-gateway",
        f"pkg:pypi/rtm-gateway@{metadata.version('rtm-gateway')}",
    )
    refs = {hub["bom-ref"]}
    for component in sbom["components"]:
        assert component["type"] == "library"
        assert (
            component["purl"] == f"pkg:pypi/{normalise(component['name'])}@{component['version']}"
        )
        assert component["bom-ref"] == component["purl"]
        refs.add(component["bom-ref"])
    for edge in sbom["dependencies"]:
        assert edge["ref"] in refs
        assert set(edge["dependsOn"]) <= refs


def test_the_sbom_lists_the_locked_dependencies_and_the_installed_plugins(
    sbom: dict[str, Any],
) -> None:
    found = {normalise(c["name"]): c for c in sbom["components"]}
    for name, (version, _) in lock_pins().items():
        assert found[name]["version"] == version, name
    tindeq = found["rtm-driver-tindeq-progressor"]
    assert {"name": "rtm-gateway:drivers", "value": "tindeq.progressor"} in tindeq["properties"]
    assert tindeq["licenses"] == [{"expression": "Apache-2.0"}]
    assert "rtm-driver-open-inhaler" in found
    # Test tools are not part of the hub.
    assert "pytest" not in found and "mypy" not in found
    assert found["paho-mqtt"]["licenses"]


def test_the_sbom_hash_is_the_verified_record(sbom: dict[str, Any]) -> None:
    paho_entry = next(c for c in sbom["components"] if c["name"] == "paho-mqtt")
    dist = metadata.distribution("paho-mqtt")
    record = next(f for f in dist.files or [] if str(f).endswith(".dist-info/RECORD"))
    expected = hashlib.sha256(Path(str(dist.locate_file(record))).read_bytes()).hexdigest()
    assert paho_entry["hashes"] == [{"alg": "SHA-256", "content": expected}]
    # Every file RECORD lists has RECORD's hash, so the digest stands for the installed files.
    for path in dist.files or []:
        if path.hash is not None:
            data = Path(str(dist.locate_file(path))).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest.decode() == path.hash.value


def test_building_the_sbom_imports_no_plugin_code() -> None:
    code = (
        "import sys; from gateway.tools.sbom import build_sbom; build_sbom(); "
        "print(sorted(m for m in sys.modules if m.startswith(('rtm_', 'gateway.drivers'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_sbom_validates_against_the_cyclonedx_1_5_schema(sbom: dict[str, Any]) -> None:
    # The schema ships with cyclonedx-python-lib, which pip-audit (a test tool) brings.
    validation = pytest.importorskip("cyclonedx.validation.json")
    schema = pytest.importorskip("cyclonedx.schema")
    validator = validation.JsonStrictValidator(schema.SchemaVersion.V1_5)
    assert validator.validate_str(json.dumps(sbom)) is None
    broken = dict(sbom, components=[{"name": "x"}])
    assert validator.validate_str(json.dumps(broken)) is not None


# -- the audit --------------------------------------------------------------------------------


def test_the_audit_fails_on_a_known_vulnerability() -> None:
    audit = load_script("audit")
    report = {
        "dependencies": [
            {"name": "paho-mqtt", "version": "2.2.0", "vulns": []},
            {
                "name": "cryptography",
                "version": "41.0.0",
                "vulns": [{"id": "GHSA-test-0001", "fix_versions": ["41.0.2"]}],
            },
        ]
    }
    status, lines = audit.verdict(report, 1, "")
    assert status == 1
    assert "VULNERABLE cryptography 41.0.0: GHSA-test-0001 (fixed in: 41.0.2)" in lines
    assert "audit failed" in lines[-1]


def test_the_audit_says_when_it_looked_nothing_up() -> None:
    audit = load_script("audit")
    skipped = {"dependencies": [{"name": "x", "skip_reason": "not found"}]}
    status, lines = audit.verdict(skipped, 0, "")
    assert (status, lines[0]) == (
        0,
        "audit skipped: the vulnerability database answered for none of the 1 pinned "
        "packages (not found)",
    )
    assert audit.verdict(skipped, 0, "", require=True)[0] == 1  # a release build insists
    offline = "requests.exceptions.ConnectionError: Max retries"
    status, lines = audit.verdict(None, 1, offline)
    assert (status, lines[0].startswith("audit skipped: no network")) == (0, True)
    assert audit.verdict(None, 1, offline, require=True)[0] == 1
    status, lines = audit.verdict(None, 2, "pip-audit: error: unrecognized arguments")
    assert (status, lines[0]) == (1, "audit failed: pip-audit exited 2")
    clean = {"dependencies": [{"name": "x", "version": "1", "vulns": []}]}
    assert audit.verdict(clean, 0, "") == (
        0,
        ["audit: 1 pinned package(s), no known vulnerabilities"],
    )


def test_the_audit_reads_accepted_advisories(tmp_path: Path) -> None:
    audit = load_script("audit")
    ignore = tmp_path / "ignore.txt"
    ignore.write_text("# header\n\nGHSA-aaaa-bbbb-cccc  # not reachable from the hub; 2026-12-08\n")
    assert audit.ignored_advisories(ignore) == ["GHSA-aaaa-bbbb-cccc"]
    assert audit.ignored_advisories(ROOT / "requirements" / "audit-ignore.txt") == []


@pytest.mark.skipif(not (BIN / "pip-audit").exists(), reason="needs pip-audit (scripts/test)")
def test_the_audit_without_network_is_skipped_not_failed(tmp_path: Path) -> None:
    # A proxy on a closed loopback port: what pip-audit meets on a machine without network.
    env = dict(os.environ, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    env["XDG_CACHE_HOME"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "audit.py")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("audit skipped: no network")


def test_sbom_to_a_file_it_cannot_write_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    target = tmp_path / "missing" / "sbom.json"
    assert main(["sbom", "-o", str(target)]) == 1
    assert f"rtm-gateway: cannot write {target}: No such file or directory" in (
        capsys.readouterr().err
    )
    assert main(["sbom", "-o", str(tmp_path / "sbom.json")]) == 0
    assert json.loads((tmp_path / "sbom.json").read_text())["bomFormat"] == "CycloneDX"
