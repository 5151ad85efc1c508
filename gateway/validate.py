"""Validation of TOML tables: every problem found, with file, key, value and allowed range."""

from __future__ import annotations

import contextlib
import datetime
import math
import tomllib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.regularfile import FileTooLarge, NotARegularFile, read_regular


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

    def explain(self, path: object) -> str:
        """What the commands print: a heading line, then one line per problem."""
        lines = [f"{path}: {len(self.problems)} problem(s), config not used:"]
        return "\n".join(lines + [f"  {p}" for p in self.problems])


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

    def free_text(self, data: dict[str, Any], key: str, max_len: int) -> str:
        """Optional text for people (any language): "" when absent; refused when empty, longer
        than ``max_len`` characters or holding control characters."""
        value = data.get(self._leaf(key))
        if value is None:
            return ""
        if (
            not isinstance(value, str)
            or not value.strip()
            or len(value) > max_len
            or any(unicodedata.category(ch) == "Cc" for ch in value)
        ):
            self.bad(key, value, f"1-{max_len} characters in any language, no control characters")
            return ""
        return value.strip()

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

    def date(self, data: dict[str, Any], key: str, latest: datetime.date) -> datetime.date | None:
        """An optional calendar date: a TOML date (``2026-03-01``) or the same as a string,
        from 2000-01-01 to ``latest`` (a date in the future is a typo)."""
        value = data.get(self._leaf(key))
        if value is None:
            return None
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # reported below as not a date
                value = datetime.date.fromisoformat(value)
        allowed = f"a date YYYY-MM-DD from 2000-01-01 to {latest.isoformat()}"
        if (
            isinstance(value, datetime.datetime)
            or not isinstance(value, datetime.date)
            or not datetime.date(2000, 1, 1) <= value <= latest
        ):
            self.bad(key, value, allowed)
            return None
        return value

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


MAX_FILE_BYTES = 1024 * 1024  # a site config is a few kB
MAX_STRING_CHARS = 4096  # the longest text a config or profile may hold
MAX_DEPTH = 16  # tables and arrays nested in each other


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; anything else is a ConfigError naming it, in one line: not a regular
    file (a FIFO, a device such as /dev/zero), larger than ``MAX_FILE_BYTES``, unreadable,
    malformed, nested deeper than ``MAX_DEPTH`` or holding a text longer than
    ``MAX_STRING_CHARS``."""
    text = _read_regular_file(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _file_problem(path, f"a readable TOML file ({e})") from None
    except RecursionError:
        raise _file_problem(path, f"TOML nested at most {MAX_DEPTH} levels deep") from None
    problems = _bounded(str(path), data)
    if problems:
        raise ConfigError(problems)
    return data


def _file_problem(path: Path, allowed: str) -> ConfigError:
    return ConfigError([Problem(str(path), "(file)", None, allowed)])


def _read_regular_file(path: Path) -> str:
    """The file's text. Opened without blocking (a FIFO must not hang the loader) and checked
    to be a regular file of bounded size before anything is read."""
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except FileTooLarge as e:
        raise _file_problem(path, f"a file of at most {MAX_FILE_BYTES} bytes ({e})") from None
    except NotARegularFile:
        raise _file_problem(path, "a regular file (not a FIFO, device or directory)") from None
    except OSError as e:
        raise _file_problem(path, f"a readable TOML file ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _file_problem(
            path, f"a readable TOML file (not UTF-8: {e.reason} at byte {e.start})"
        ) from None


def _bounded(file: str, data: dict[str, Any]) -> list[Problem]:
    """Every text longer than MAX_STRING_CHARS and every nesting deeper than MAX_DEPTH, found
    without recursion."""
    problems: list[Problem] = []
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        key, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            problems.append(Problem(file, key or "(file)", "...", f"at most {MAX_DEPTH} levels"))
            continue
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            problems.append(
                Problem(
                    file,
                    key,
                    value[:40] + "...",
                    f"text of at most {MAX_STRING_CHARS} characters ({len(value)})",
                )
            )
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((f"{key}.{k}" if key else str(k), v, depth + 1))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                stack.append((f"{key}[{i}]", v, depth + 1))
    return problems[:20]
