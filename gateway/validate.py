"""Validation of TOML tables: every problem found, with file, key, value and allowed range."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config or profile file: where, what, and what is allowed."""

    file: str
    key: str
    value: object
    allowed: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key} = {self.value!r}: {self.allowed}"


class ConfigError(Exception):
    """A config or profile file that must not be used. Carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class Checker:
    """Collects problems while reading a TOML table, so a file reports all its errors at once.
    Keys are looked up by their last dotted part; the full dotted key is what errors show."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[Problem] = []

    def bad(self, key: str, value: object, allowed: str) -> None:
        self.problems.append(Problem(self.file, key, value, allowed))

    @staticmethod
    def _leaf(key: str) -> str:
        return key.rsplit(".", 1)[-1]

    def table(self, data: dict[str, Any], key: str) -> dict[str, Any]:
        value = data.get(self._leaf(key))
        if not isinstance(value, dict):
            self.bad(key, value, "a table")
            return {}
        return value

    def string(
        self, data: dict[str, Any], key: str, required: bool = True, default: str = ""
    ) -> str:
        value = data.get(self._leaf(key))
        if value is None and not required:
            return default
        if not isinstance(value, str) or not value.strip():
            self.bad(key, value, "a non-empty string")
            return default
        return value

    def choice(
        self,
        data: dict[str, Any],
        key: str,
        allowed: Sequence[str] | dict[str, Any],
        default: str | None = None,
    ) -> str:
        options = list(allowed)
        value = data.get(self._leaf(key), default)
        if value not in options:
            self.bad(key, value, "one of " + ", ".join(repr(o) for o in options))
            return options[0]
        return str(value)

    def integer(
        self,
        data: dict[str, Any],
        key: str,
        lo: int,
        hi: int,
        required: bool = True,
        default: int | None = None,
    ) -> Any:
        value = data.get(self._leaf(key), default)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.bad(key, value, f"a whole number from {lo} to {hi}")
            return lo
        return value

    def number(
        self,
        data: dict[str, Any],
        key: str,
        lo: float,
        hi: float,
        required: bool = True,
        default: float | None = None,
    ) -> Any:
        value = data.get(self._leaf(key), default)
        if value is None and not required:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not lo <= value <= hi
        ):
            self.bad(key, value, f"a number from {lo:g} to {hi:g}")
            return lo
        return float(value)

    def codes(self, data: dict[str, Any], key: str) -> tuple[int, ...]:
        value = data.get(self._leaf(key), [])
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535 for v in value
        ):
            self.bad(key, value, "a list of whole numbers from 0 to 65535")
            return ()
        return tuple(value)

    def boolean(self, data: dict[str, Any], key: str, default: bool) -> bool:
        value = data.get(self._leaf(key), default)
        if not isinstance(value, bool):
            self.bad(key, value, "true or false")
            return default
        return value

    def strings(self, data: dict[str, Any], key: str) -> tuple[str, ...]:
        value = data.get(self._leaf(key))
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, str) and v.strip() for v in value)
        ):
            self.bad(key, value, "a non-empty list of non-empty strings")
            return ()
        return tuple(value)

    def known_keys(self, data: dict[str, Any], prefix: str, allowed: Sequence[str]) -> None:
        """A misspelt key must not be silently ignored: report every key not in ``allowed``."""
        for key in data:
            if key not in allowed:
                where = f"{prefix}.{key}" if prefix else key
                self.bad(where, data[key], "not a known key; allowed: " + ", ".join(allowed))


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; an unreadable or malformed file is a ConfigError naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(
            [Problem(str(path), "(file)", None, f"a readable TOML file ({e})")]
        ) from e
