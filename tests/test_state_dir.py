"""The state dir holds the hub's key and the patient's readings: it is private to the service user
whatever the umask or however the folder was made."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.app import open_state


def test_an_open_state_dir_is_made_private_and_the_lock_file_is_the_users_alone(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)  # as a umask of 022 would leave it
    old = os.umask(0o022)
    try:
        opened = open_state(state, state / "outbox.sqlite", max_rows=1000, hub_id="hub-0001")
    finally:
        os.umask(old)
    opened.outbox.close()
    opened.head_file.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    lock = next(p for p in state.iterdir() if p.name.endswith(".lock"))
    assert stat.S_IMODE(lock.stat().st_mode) & 0o077 == 0


def test_a_new_state_dir_is_private(tmp_path: Path) -> None:
    state = tmp_path / "new" / "state"
    old = os.umask(0o022)
    try:
        opened = open_state(state, state / "outbox.sqlite", max_rows=1000, hub_id="hub-0001")
    finally:
        os.umask(old)
    opened.outbox.close()
    opened.head_file.close()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
