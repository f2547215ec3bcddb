"""check-config builds the uplink's TLS context from the configured files, without connecting:
a CA that does not parse, a key that is not the certificate's, an expired client certificate
each exit 2 naming the key at fault; a certificate close to expiry is a warning."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.sim.pki import Pki, make_pki

DAY = datetime.timedelta(days=1)


def config_for(
    tmp_path: Path, pki: Pki, *, key: Path | None = None, ca: Path | None = None
) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[hub]
id = "hub-0001"
state_dir = "state"

[mqtt]
url = "mqtts://127.0.0.1:8883"
ca_file = "{ca or pki.ca_file}"
cert_file = "{pki.client_cert}"
key_file = "{key or pki.client_key}"
"""
    )
    return path


def check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["check-config", "-c", str(config)])
    out, err = capsys.readouterr()
    return status, out, err


def test_good_files_show_the_days_left(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki = make_pki(tmp_path / "pki", client_window=(-DAY, 400 * DAY))
    status, out, err = check(config_for(tmp_path, pki), capsys)
    assert status == 0, err
    assert f"tls: CA {pki.ca_file}: 1 certificate(s)" in out
    assert f"client certificate {pki.client_cert} (CN=hub-test-0001) matches" in out
    assert "(399 day(s) left)" in out
    assert "warning" not in err
    assert ": ok (hub hub-0001" in out


def test_a_certificate_close_to_expiry_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki", client_window=(-DAY, 10 * DAY))
    status, out, err = check(config_for(tmp_path, pki), capsys)
    assert status == 0, err
    assert "(9 day(s) left)" in out
    assert f"warning: mqtt.cert_file: {pki.client_cert} expires in 9 day(s)" in err


def test_an_expired_client_certificate_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki", client_window=(-10 * DAY, -DAY))
    status, out, err = check(config_for(tmp_path, pki), capsys)
    assert status == 2
    assert "mqtt.cert_file: the client certificate" in err
    assert "expired on" in err
    assert str(pki.client_cert) in err
    assert "ok" not in out


def test_a_key_that_is_not_the_certificates_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki")
    # The server's key: a real EC key, the wrong one.
    status, out, err = check(config_for(tmp_path, pki, key=pki.server_key), capsys)
    assert status == 2
    assert f"mqtt.key_file: {pki.server_key} is not the private key of {pki.client_cert}" in err
    assert "ok" not in out


def test_a_ca_file_that_is_not_pem_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki")
    garbage = tmp_path / "garbage-ca.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n"
    )
    status, out, err = check(config_for(tmp_path, pki, ca=garbage), capsys)
    assert status == 2
    assert f"mqtt.ca_file: {garbage}: cannot be loaded" in err
    assert "ok" not in out


def test_a_client_certificate_that_is_not_pem_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(tmp_path / "pki")
    pki.client_cert.write_text("placeholder")
    status, _, err = check(config_for(tmp_path, pki), capsys)
    assert status == 2
    assert f"mqtt.cert_file: {pki.client_cert} is not a PEM certificate" in err


def test_plain_mqtt_to_loopback_has_no_tls_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[hub]\nid = "hub-0001"\nstate_dir = "state"\n[mqtt]\nurl = "mqtt://127.0.0.1"\n'
    )
    status, out, err = check(path, capsys)
    assert status == 0, err
    assert "tls:" not in out
