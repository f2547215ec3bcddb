"""The `[drivers]` table: the allow-list's shape, and each mistake exits 2 naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.hub.config import load_config
from gateway.hub.config_drivers import AllowedDriver, normalise_distribution

BASE = """
[hub]
id = "hub-0001"
state_dir = "state"

[mqtt]
url = "mqtt://127.0.0.1:1883"
"""


def write(tmp_path: Path, drivers: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(BASE + "\n[drivers]\n" + drivers)
    return path


def test_the_allow_list_loads(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            'allow = [{ id = "acme.spirometer", distribution = "acme-rtm-spirometer", '
            'version = "1.4.2" }, { id = "acme.scale", distribution = "Acme_Scale" }]\n'
            "decode_budget_ms = 100\n",
        )
    )
    assert config.drivers.allow == (
        AllowedDriver("acme.spirometer", "acme-rtm-spirometer", "1.4.2", "drivers.allow[0]"),
        AllowedDriver("acme.scale", "Acme_Scale", None, "drivers.allow[1]"),
    )
    assert config.drivers.decode_budget == pytest.approx(0.1)
    assert normalise_distribution("Acme_Scale") == normalise_distribution("acme-scale")
    defaults = load_config(write(tmp_path, ""))
    assert defaults.drivers.allow == ()
    assert defaults.drivers.decode_budget == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("drivers", "path", "words"),
    [
        ('allow = "acme.x"\n', "drivers.allow", "array of tables"),
        ('allow = ["acme.x"]\n', "drivers.allow[0]", "expected a table"),
        ('allow = [{ id = "acme.x" }]\n', "drivers.allow[0].distribution", "missing"),
        ('allow = [{ id = "Acme X", distribution = "a" }]\n', "drivers.allow[0].id", "driver id"),
        (
            'allow = [{ id = "acme.x", distribution = "a b" }]\n',
            "drivers.allow[0].distribution",
            "package name",
        ),
        (
            'allow = [{ id = "acme.x", distribution = "a", version = "1 2" }]\n',
            "drivers.allow[0].version",
            "not a version",
        ),
        (
            'allow = [{ id = "acme.x", distribution = "a", sha = "00" }]\n',
            "drivers.allow[0].sha",
            "unknown key",
        ),
        (
            'allow = [{ id = "acme.x", distribution = "a" },\n'
            '         { id = "acme.x", distribution = "b" }]\n',
            "drivers.allow[1].id",
            "allowed twice",
        ),
        ('allow = [{ id = "gatt.plx", distribution = "a" }]\n', "drivers.allow[0].id", "built-in"),
        ("decode_budget_ms = 1\n", "drivers.decode_budget_ms", ""),
        ("budget = 1\n", "drivers.budget", "unknown key"),
    ],
)
def test_mistakes_exit_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], drivers: str, path: str, words: str
) -> None:
    config = write(tmp_path, drivers)
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: {path}:" in err
    assert words in err


def test_an_allowed_driver_that_is_not_installed_exits_2_naming_the_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, 'allow = [{ id = "acme.absent", distribution = "acme-absent" }]\n')
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: drivers.allow[0].distribution: driver acme.absent is not installed" in err
