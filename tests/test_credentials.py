"""The MQTT key and password as systemd credentials: "credential:NAME" in the config is the file
NAME in $CREDENTIALS_DIRECTORY, and the shipped drop-in loads them under those names."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.hub.config import load_config
from gateway.hub.config_reader import ConfigError
from gateway.sim.pki import make_pki
from tests.test_systemd_unit import exposure_score

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "rtm-gateway.service"
DROP_IN = SYSTEMD / "rtm-gateway.service.d" / "credentials.conf"
PASSWORD = "pw-from-credential"  # noqa: S105 - a test's throwaway value


def write_config(tmp_path: Path, ca: Path, cert: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[hub]
id = "hub-0001"
state_dir = "state"

[mqtt]
url = "mqtts://127.0.0.1:8883"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "credential:mqtt-key"
username = "hub-0001"
password_file = "credential:mqtt-password"
"""
    )
    return path


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A credentials directory as systemd fills it (0400 files), and the config naming it."""
    pki = make_pki(tmp_path / "pki")
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    (directory / "mqtt-key").write_bytes(pki.client_key.read_bytes())
    (directory / "mqtt-password").write_text(PASSWORD + "\n")
    for name in ("mqtt-key", "mqtt-password"):
        (directory / name).chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory, write_config(tmp_path, pki.ca_file, pki.client_cert)


def test_credentials_are_read_from_the_credentials_directory(
    credentials: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    directory, config = credentials
    loaded = load_config(config)
    assert loaded.mqtt.key_file == directory / "mqtt-key"
    assert loaded.mqtt.password == PASSWORD
    # check-config builds the TLS context with the credential as the key.
    assert main(["check-config", "-c", str(config)]) == 0, capsys.readouterr().err
    assert f"matches mqtt.key_file {directory / 'mqtt-key'}" in capsys.readouterr().out


def test_without_credentials_directory_check_config_exits_2(
    credentials: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, config = credentials
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "mqtt.key_file: credential 'mqtt-key': $CREDENTIALS_DIRECTORY is not set" in err
    assert "LoadCredential=mqtt-key:" in err


def test_commands_that_never_connect_run_outside_the_service(
    credentials: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """status and identity need neither the key nor the password: a technician runs them
    without the service's $CREDENTIALS_DIRECTORY, while run still refuses to start."""
    _, config = credentials
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert main(["identity", "-c", str(config)]) == 0, capsys.readouterr().err
    assert '"kty": "OKP"' in capsys.readouterr().out
    assert main(["status", "-c", str(config)]) == 0, capsys.readouterr().err
    loaded = load_config(config, secrets=False)
    assert loaded.mqtt.password is None  # never read
    assert loaded.mqtt.key_file == Path("/run/credentials/rtm-gateway.service/mqtt-key")
    assert main(["run", "-c", str(config)]) == 2
    assert "$CREDENTIALS_DIRECTORY is not set" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mqtt-key", "mqtt-password"])
def test_a_missing_credential_names_its_key_and_the_unit_line(
    credentials: tuple[Path, Path], name: str
) -> None:
    directory, config = credentials
    (directory / name).unlink()
    key = {"mqtt-key": "key_file", "mqtt-password": "password_file"}[name]
    with pytest.raises(ConfigError, match=f"credential '{name}' not found") as caught:
        load_config(config)
    assert caught.value.path == f"mqtt.{key}"
    assert f"LoadCredential={name}:/etc/rtm-gateway/credentials/{name}" in str(caught.value)


def test_a_credential_others_can_read_is_refused(credentials: tuple[Path, Path]) -> None:
    directory, config = credentials
    (directory / "mqtt-password").chmod(0o404)
    with pytest.raises(ConfigError, match="readable by others") as caught:
        load_config(config)
    assert caught.value.path == "mqtt.password_file"
    assert PASSWORD not in str(caught.value)
    # An ACL granting the service's user shows as group bits: that is how systemd shares it.
    (directory / "mqtt-password").chmod(0o440)
    assert load_config(config).mqtt.password == PASSWORD


def test_a_credential_name_cannot_leave_the_directory(credentials: tuple[Path, Path]) -> None:
    _, config = credentials
    config.write_text(config.read_text().replace("credential:mqtt-key", "credential:../key"))
    with pytest.raises(ConfigError, match="is not a credential name"):
        load_config(config)


def test_the_drop_in_loads_what_the_config_names() -> None:
    loaded = re.findall(r"^LoadCredential=([^:]+):(\S+)$", DROP_IN.read_text(), re.MULTILINE)
    assert loaded == [
        ("mqtt-key", "/etc/rtm-gateway/credentials/mqtt-key"),
        ("mqtt-password", "/etc/rtm-gateway/credentials/mqtt-password"),
    ]
    # The generic unit loads none itself: a missing source would fail every hub's start.
    assert "\nLoadCredential=" not in UNIT.read_text()
    assert "\nConfigurationDirectoryMode=0750" in UNIT.read_text()


def _unit_with_drop_in(tmp_path: Path, drop_in: str, exec_path: str) -> Path:
    unit = tmp_path / "rtm-gateway.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/rtm-gateway", exec_path))
    # systemd-analyze reads drop-ins from the directory beside the unit, as systemd does.
    (tmp_path / "rtm-gateway.service.d").mkdir(exist_ok=True)
    (tmp_path / "rtm-gateway.service.d" / "credentials.conf").write_text(drop_in)
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_drop_in_and_the_score_holds(tmp_path: Path) -> None:
    rtm_gateway = str(Path(sys.executable).parent / "rtm-gateway")
    unit = _unit_with_drop_in(tmp_path, DROP_IN.read_text(), rtm_gateway)
    verify = ["systemd-analyze", "verify", str(unit)]
    result = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout + result.stderr == ""
    # The check can fail: a misspelt directive in the drop-in is reported.
    _unit_with_drop_in(tmp_path, DROP_IN.read_text().replace("LoadCredential", "LoadCred"), "x")
    result = subprocess.run(verify, capture_output=True, text=True, timeout=60, check=False)
    assert "LoadCred" in result.stdout + result.stderr
    _unit_with_drop_in(tmp_path, DROP_IN.read_text(), "/usr/bin/true")
    assert exposure_score(unit) <= 2.0
