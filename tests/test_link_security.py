"""Reading a device's pairing state never ends its session: a system bus that refuses the hub
(here one that rejects every authentication, as a bus at its connection limit refuses Hello)
reads as "not known", logged by the error's type."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from pathlib import Path

import pytest

from gateway.transport.ble.link_security import NOT_KNOWN, read_link_security


def _refuse_every_login(server: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            while conn.recv(4096):
                conn.sendall(b"REJECTED EXTERNAL\r\n")


def test_a_bus_that_refuses_the_hub_reads_as_not_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bus"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen(1)
        thread = threading.Thread(target=_refuse_every_login, args=(server,), daemon=True)
        thread.start()
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={path}")
        with caplog.at_level(logging.WARNING, "gateway.transport.ble.link_security"):
            security = asyncio.run(read_link_security("/org/bluez/hci0/dev_00", timeout=5))
        thread.join(5)
    assert security is NOT_KNOWN
    assert not security.encrypted and not security.bonded
    assert "cannot read the pairing state of /org/bluez/hci0/dev_00 (AuthError)" in caplog.text
