"""Reading typed values out of one table of the configuration's TOML tree.

What lives here: `ConfigError` (a problem located by file and key path, like `devices[0].port`)
and `ConfigTable`, whose accessors check the type and range of a value and raise a
`ConfigError` that names the key and what was expected. What may not: the meaning of any
section or key (that is `gateway.hub.config`).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping
from pathlib import Path


class ConfigError(Exception):
    """A configuration problem, located by file and key path."""

    def __init__(self, file: Path | str, path: str, message: str) -> None:
        where = f"{file}: {path}" if path else str(file)
        super().__init__(f"{where}: {message}")
        self.file = str(file)
        self.path = path
        self.message = message


class ConfigTable:
    """A TOML table plus where it sits, so every error can name the key path."""

    def __init__(self, file: Path, path: str, data: Mapping[str, object]) -> None:
        self.file, self.path, self.data = file, path, data

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.file, self._key(key), message)

    def check_known(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.error(key, f"unknown key; expected one of: {', '.join(sorted(allowed))}")

    def table(self, key: str, required: bool = False) -> ConfigTable:
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.error(key, "missing table")
            return ConfigTable(self.file, self._key(key), {})
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {kind_of(value)}")
        return ConfigTable(self.file, self._key(key), value)

    def text(
        self,
        key: str,
        default: str | None = None,
        *,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
    ) -> str:
        value = self.optional_str(key)
        if value is None:
            if default is None:
                raise self.error(key, "missing; expected a string" + (f" ({hint})" if hint else ""))
            return default
        if pattern is not None and not pattern.match(value):
            raise self.error(key, f"{value!r} is not valid; expected {hint or pattern.pattern}")
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {kind_of(value)}")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.data.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, f"expected an integer, got {kind_of(value)}")
        if not low <= value <= high:
            raise self.error(key, f"{value} is out of range; expected {low}..{high}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {kind_of(value)}")
        return value

    def private_file(self, key: str, base: Path) -> Path | None:
        """A file holding a secret (a TLS key, a password): it must exist and be readable by
        its owner alone, as the hub's identity key must."""
        path = self.file_path(key, base)
        if path is None:
            return None
        mode = path.stat().st_mode
        if mode & 0o077:
            raise self.error(
                key,
                f"{path} is accessible to group or others ({stat.filemode(mode)}); anyone who "
                f"can read it can act as this hub. Run 'chmod 600 {path}' (and replace the "
                "secret if it may have been copied)",
            )
        return path

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.data.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(key, f"expected a number, got {kind_of(value)}")
        if not low <= value <= high:
            raise self.error(key, f"{value} is out of range; expected {low}..{high}")
        return float(value)

    def file_path(self, key: str, base: Path, must_exist: bool = True) -> Path | None:
        value = self.optional_str(key)
        if value is None:
            return None
        path = Path(value) if Path(value).is_absolute() else base / value
        if must_exist and not path.is_file():
            raise self.error(key, f"file not found: {path}")
        return path


def kind_of(value: object) -> str:
    """How an error message names the TOML type of `value`."""
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return names.get(type(value), type(value).__name__)
