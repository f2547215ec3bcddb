"""The documentation says what the code does: commands, observation types, config keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.cli import _parser
from gateway.sdk import OBSERVATION_TYPES

ROOT = Path(__file__).resolve().parent.parent


def _subcommands() -> set[str]:
    parser = _parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    return set(actions[0].choices or ())


def test_every_command_the_readme_names_exists_and_every_command_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"`rtm-gateway ([a-z-]+)", readme))
    commands = _subcommands()
    assert named <= commands, named - commands
    assert commands <= named, f"undocumented: {commands - named}"


def test_the_protocol_lists_every_known_observation_type() -> None:
    protocol = (ROOT / "docs" / "protocol.md").read_text()
    for known in OBSERVATION_TYPES.values():
        row = f"| `{known.name}` | `{known.unit}` |"
        assert row in protocol, row


def test_the_readme_gives_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "rtm-gateway demo" in readme
    assert "scripts/test" in readme
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_observation_type_the_drivers_produce_is_documented() -> None:
    documented = set(
        re.findall(
            r"^\| `([a-z0-9_]+)` \|", (ROOT / "docs" / "observation-types.md").read_text(), re.M
        )
    )
    produced = set()
    for path in (ROOT / "gateway" / "drivers" / "fixtures").glob("*/*.json"):
        case = json.loads(path.read_text())
        produced |= {o["type"] for r in case.get("readings", []) for o in r["observations"]}
    assert produced, "no fixtures found"
    assert produced <= documented, f"undocumented: {sorted(produced - documented)}"
    assert set(OBSERVATION_TYPES) <= documented


def _modules() -> list[Path]:
    package = ROOT / "gateway"
    return sorted(
        path
        for path in package.rglob("*.py")
        if path.name != "__init__.py" and "fixtures" not in path.parts
    )


def test_the_architecture_map_names_every_module_and_only_modules_that_exist() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    unnamed = [
        str(path.relative_to(ROOT))
        for path in _modules()
        if not re.search(rf"(?<![\w.]){re.escape(path.stem)}(?![\w])", text)
    ]
    assert not unnamed, f"docs/architecture.md does not name: {unnamed}"
    # Every `folder/module.py` and `folder/module.Name` the map points at exists.
    for folder, stem in re.findall(r"`(?:gateway/)?([a-z_]+(?:/[a-z_]+)*)/([a-z_0-9]+)[.`]", text):
        candidates = [
            base / folder / name
            for base in (ROOT / "gateway", ROOT)
            for name in (f"{stem}.py", stem)
        ]
        assert any(c.exists() for c in candidates), f"architecture.md names {folder}/{stem}"
    # Every top-level room in the tree drawing exists.
    for room in re.findall(r"^  ([a-z_]+)/ ", text, re.M):
        assert (ROOT / "gateway" / room).is_dir(), room
