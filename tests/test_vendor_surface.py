"""The vendor surface holds: the example packages and what `rtm-gateway driver new` writes
import nothing from `gateway` but `gateway.sdk` and the kit's facade, `gateway.kit.vendor`;
and the facade's names are what it promises."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.kit import vendor
from gateway.kit.scaffold import Transport, new_driver_package

ROOT = Path(__file__).resolve().parent.parent
VENDOR_SURFACE = {"gateway.sdk", "gateway.kit.vendor"}
TRANSPORTS: list[Transport] = ["ble", "serial"]


def _gateway_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import of a `gateway` module in the file, lazy ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from gateway import sim` imports gateway.sim: name the submodules too.
            base = node.module
            modules = [base] if base != "gateway" else [f"gateway.{a.name}" for a in node.names]
        else:
            continue
        for module in modules:
            if module == "gateway" or module.startswith("gateway."):
                yield node.lineno, module


def _outside_the_surface(files: list[Path]) -> list[str]:
    return [
        f"{path}:{line}: {module}"
        for path in files
        for line, module in _gateway_imports(path)
        if module not in VENDOR_SURFACE
    ]


def test_the_checker_sees_every_way_of_importing(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import gateway.sim.lab\n"
        "from gateway import sim\n"
        "from gateway.sdk import Reading\n"
        "from gateway.kit.vendor import virtual_lab\n"
        "def later():\n    from gateway.hub.registry import Registry\n",
        encoding="utf-8",
    )
    assert [module for _, module in _gateway_imports(probe)] == [
        "gateway.sim.lab",
        "gateway.sim",
        "gateway.sdk",
        "gateway.kit.vendor",
        "gateway.hub.registry",
    ]
    assert len(_outside_the_surface([probe])) == 3


def test_the_examples_import_only_the_sdk_and_the_facade() -> None:
    files = sorted(ROOT.glob("examples/*/**/*.py"))
    assert len(files) >= 8, files  # both packages: driver, simulator, __init__, tests
    assert _outside_the_surface(files) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_scaffold_imports_only_the_sdk_and_the_facade(
    tmp_path: Path, transport: Transport
) -> None:
    root = new_driver_package("acme.surface", tmp_path, transport=transport)
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 3
    assert _outside_the_surface(files) == []


def test_the_facade_exports_what_it_names() -> None:
    assert sorted(vendor.__all__) == sorted(set(vendor.__all__))
    missing = [name for name in vendor.__all__ if not hasattr(vendor, name)]
    assert missing == []
    public = {name for name in vars(vendor) if not name.startswith("_")} - {"annotations"}
    assert public == set(vendor.__all__)
