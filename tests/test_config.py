"""Configuration: the documented shape loads; every mistake exits 2 naming file and key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.hub.config import load_config
from gateway.sim.pki import make_pki

GOOD = """
[hub]
id = "hub-0001"
state_dir = "state"

[mqtt]
url = "mqtt://127.0.0.1:1883"
topic_prefix = "rtm/v1"

[[devices]]
driver = "contec.cms50d"
port = "/dev/ttyUSB0"
patient = "pt-0001"

[[devices]]
id = "meter"
driver = "generic.kv-lines"
usb = "2341:0043:A1B2"
patient = "pt-0001"
[devices.options]
time_key = "t"
[devices.options.keys]
spo2 = { type = "spo2" }
pr = { type = "pulse_rate" }

[[devices]]
id = "oximeter"
driver = "gatt.plx"
address = "c0:ff:ee:00:00:01"
patient = "pt-0001"

[[devices]]
id = "bike"
driver = "gatt.ftms"
serial = "BK-2231"
patient = "pt-0001"

[ble]
max_connections = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_documented_shape_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.hub.id == "hub-0001"
    assert config.hub.state_dir == tmp_path / "state"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("127.0.0.1", 1883, False)
    assert config.mqtt.protocol == "5"
    first, second, oximeter, bike = config.devices
    assert (oximeter.address, oximeter.serial, oximeter.is_ble) == ("C0:FF:EE:00:00:01", None, True)
    assert (bike.address, bike.serial, bike.is_ble, first.is_ble) == (None, "BK-2231", True, False)
    assert (config.ble.adapter, config.ble.max_connections, config.ble.passive) == ("hci0", 3, True)
    assert (first.id, first.driver, first.port, first.usb) == (
        "contec.cms50d-0",
        "contec.cms50d",
        "/dev/ttyUSB0",
        None,
    )
    assert second.usb is not None and (second.usb.vid, second.usb.pid, second.usb.serial) == (
        0x2341,
        0x0043,
        "A1B2",
    )
    assert second.options["time_key"] == "t"


def test_the_example_config_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = (Path(__file__).parent.parent / "config" / "example.toml").read_text()
    # Real PEM files: check-config builds the TLS context from them.
    pki = make_pki(tmp_path / "pki")
    for name, source in (("ca.pem", pki.ca_file), ("hub.pem", pki.client_cert)):
        (tmp_path / name).write_bytes(source.read_bytes())
    (tmp_path / "hub.key").write_bytes(pki.client_key.read_bytes())
    (tmp_path / "hub.key").chmod(0o600)  # a secret: the owner's alone, or check-config refuses it
    config = write(tmp_path, example.replace("/etc/rtm-gateway/", f"{tmp_path}/"))
    assert main(["check-config", "-c", str(config)]) == 0, capsys.readouterr().err
    loaded = load_config(config)
    assert loaded.mqtt.tls
    assert loaded.mqtt.cert_file == tmp_path / "hub.pem"
    assert [d.driver for d in loaded.devices] == [
        "contec.cms50d",
        "generic.kv-lines",
        "gatt.plx",
        "gatt.ftms",
    ]


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (('id = "hub-0001"', 'id = "hub/0001"'), "hub.id", "not valid"),
        (('id = "hub-0001"\n', ""), "hub.id", "missing"),
        (("mqtt://127.0.0.1:1883", "http://x"), "mqtt.url", "mqtt://"),
        (('port = "/dev/ttyUSB0"\n', ""), "devices[0].port", "exactly one of"),
        (('usb = "2341:0043:A1B2"', 'usb = "23:43"'), "devices[1].usb", "VID:PID"),
        (
            ('patient = "pt-0001"\n\n[[devices]]', 'patient = "Jane Doe"\n\n[[devices]]'),
            "devices[0].patient",
            "pseudonymous",
        ),
        (("topic_prefix", "topic_prefx"), "mqtt.topic_prefx", "unknown key"),
        (
            ('spo2 = { type = "spo2" }', "spo2 = { type = 7 }"),
            "devices[1].options.keys.spo2.type",
            "",
        ),
        (('driver = "contec.cms50d"', 'driver = "acme.nothing"'), "devices[0].driver", "acme"),
        (
            ('driver = "contec.cms50d"', 'driver = "gatt.hrs"'),
            "devices[0].driver",
            "Bluetooth LE driver",
        ),
        (('driver = "gatt.plx"', 'driver = "contec.cms50d"'), "devices[2].driver", "serial driver"),
        (
            ('address = "c0:ff:ee:00:00:01"', 'address = "c0:ff:ee"'),
            "devices[2].address",
            "not a Bluetooth address",
        ),
        (
            ('serial = "BK-2231"', 'serial = "BK-2231"\naddress = "C0:FF:EE:00:00:02"'),
            "devices[3].serial",
            "exactly one of",
        ),
        (("max_connections = 3", "max_connections = 0"), "ble.max_connections", ""),
        (("max_connections = 3", 'adapter = "bt0"'), "ble.adapter", "hci0"),
        (("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:0"), "mqtt.url", "port 0"),
        (("mqtt://127.0.0.1:1883", "mqtt://broker.example.org:1883"), "mqtt.url", "unencrypted"),
        (
            ("mqtt://127.0.0.1:1883", "mqtt://hub:secret@127.0.0.1:1883"),
            "mqtt.url",
            "password_file",
        ),
        (("mqtt://127.0.0.1:1883", "mqtts://broker.example.org:8883"), "mqtt.ca_file", '"system"'),
        (
            ('topic_prefix = "rtm/v1"', "allow_plaintext = 1"),
            "mqtt.allow_plaintext",
            "true or false",
        ),
        (('topic_prefix = "rtm/v1"', "batch_size = 1000\nwindow = 1000"), "mqtt.window", "100,000"),
    ],
)
def test_mistakes_exit_2_naming_the_key(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    path: str,
    words: str,
) -> None:
    old, new = change
    assert old in GOOD
    config = write(tmp_path, GOOD.replace(old, new, 1))
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: {path}:" in err
    assert words in err


def test_bad_toml_and_missing_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, "[hub\nid=")
    assert main(["check-config", "-c", str(config)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    assert main(["check-config", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_values_nested_too_deeply_exit_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, GOOD + "deep = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err
    assert "Traceback" not in err


def test_run_with_a_bad_config_exits_2_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, GOOD.replace("mqtt://127.0.0.1:1883", "mqtt://:99999"))
    assert main(["run", "-c", str(config)]) == 2
    assert "mqtt.url" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_good_config_checks_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(write(tmp_path, GOOD))]) == 0
    assert "ok" in capsys.readouterr().out


def test_plaintext_elsewhere_and_public_cas_only_when_asked(tmp_path: Path) -> None:
    remote = GOOD.replace("mqtt://127.0.0.1:1883", "mqtt://broker.example.org:1883")
    allowed = load_config(
        write(tmp_path, remote.replace("[mqtt]", "[mqtt]\nallow_plaintext = true"))
    )
    assert (allowed.mqtt.tls, allowed.mqtt.allow_plaintext) == (False, True)
    public = GOOD.replace("mqtt://127.0.0.1:1883", "mqtts://broker.example.org:8883").replace(
        "[mqtt]", '[mqtt]\nca_file = "system"'
    )
    loaded = load_config(write(tmp_path, public))
    assert (loaded.mqtt.tls, loaded.mqtt.ca_file) == (True, None)


@pytest.mark.parametrize("key", ["key_file", "password_file"])
def test_a_secret_file_others_can_read_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    pki = make_pki(tmp_path / "pki")  # check-config builds the TLS context from real files
    secret = tmp_path / "secret"
    secret.write_text("s3cret" if key == "password_file" else pki.client_key.read_text())
    secret.chmod(0o644)
    cert, ca = pki.client_cert, pki.ca_file
    extra = {
        "key_file": f'ca_file = "{ca}"\ncert_file = "{cert}"\nkey_file = "{secret}"',
        "password_file": f'username = "hub"\npassword_file = "{secret}"',
    }[key]
    url = "mqtts://broker.example.org:8883" if key == "key_file" else "mqtt://127.0.0.1:1883"
    text = GOOD.replace("mqtt://127.0.0.1:1883", url).replace("[mqtt]", f"[mqtt]\n{extra}")
    config = write(tmp_path, text)
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"mqtt.{key}:" in err
    assert "chmod 600" in err
    assert "s3cret" not in err
    secret.chmod(0o600)
    assert main(["check-config", "-c", str(config)]) == 0
