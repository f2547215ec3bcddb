"""The shipped systemd unit: the directives the hub relies on, checked by systemd itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "rtm-gateway.service"
REQUIRED = [
    "Type=notify",
    "WatchdogSec=",
    "Restart=always",
    "StateDirectory=rtm-gateway",
    "SupplementaryGroups=dialout",
    "ProtectSystem=strict",
    "NoNewPrivileges=yes",
    "PrivateTmp=yes",
    "SystemCallFilter=adjtimex",
    "RestartPreventExitStatus=2",  # a refused config is not fixed by restarting
    "UMask=0077",
    "LimitCORE=0",  # a core dump would hold the signing key
    "SystemCallErrorNumber=EPERM",
    "ProtectProc=invisible",
]


def test_the_unit_has_what_the_daemon_relies_on() -> None:
    lines = UNIT.read_text().splitlines()
    for directive in REQUIRED:
        assert any(line.startswith(directive) for line in lines), directive
    # ProtectClock= would also block reading the NTP state: hub_clock would always be unknown.
    assert not any(line.startswith("ProtectClock=yes") for line in lines)


def _verify(unit_text: str, tmp_path: Path) -> str:
    rtm_gateway = Path(sys.executable).parent / "rtm-gateway"
    unit = tmp_path / "rtm-gateway.service"
    unit.write_text(unit_text.replace("/usr/local/bin/rtm-gateway", str(rtm_gateway)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    assert _verify(UNIT.read_text(), tmp_path) == ""
    # The check can fail: a misspelt directive is reported.
    broken = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes")
    assert "NoNewPrivilege" in _verify(broken, tmp_path)


def exposure_score(unit: Path) -> float:
    """`systemd-analyze security --offline=true`'s overall exposure of a unit file (lower is
    better; the review measured 2.3)."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout[-500:] + result.stderr[-500:]
    return float(found.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemds_exposure_score_stays_below_the_reviewed_2_3(tmp_path: Path) -> None:
    unit = tmp_path / "rtm-gateway.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/rtm-gateway", "/usr/bin/true"))
    assert exposure_score(unit) <= 2.0
