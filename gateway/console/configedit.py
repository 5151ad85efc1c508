"""Staged configuration changes: edit, show, diff, check, apply, roll back.

How a change reaches the kitchen, and why it cannot leave a broken file behind:

1. Edits (``detector add``, ``valve set`` ...) change a staged copy held in memory, parsed with
   ``tomlkit`` so the technician's comments and layout stay as they were. Every edit is checked
   at once with the real validator (``gateway.config.load_config`` on the staged text, written
   to a temporary file beside the config so relative paths resolve the same): an edit that adds
   a problem is refused and the staged copy is unchanged. Only problems that can need several
   edits to resolve (a new zone needs a detector *and* a valve) are let through, and shown.
2. ``apply`` validates the whole staged text again, refuses if the file changed on disk since
   staging began, then writes it atomically: the new text goes to a temporary file in the same
   directory and is fsynced; the current file is hard-linked to ``NAME.prev`` (the previous
   version, kept); then the temporary file is renamed over the config and the directory is
   fsynced. A crash or SIGKILL at any point leaves the old file or the new one, never a mix.
3. The caller then asks the controller to ``reload``. The controller keeps every latch and
   valve lock-out across a reload (nothing opens); changes to valves, annunciator pins, data
   directory, control socket or uplinks take effect only at a restart (``restart_fields``).

``rollback`` puts ``NAME.prev`` back the same way (the current file becomes the new ``.prev``).
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Table
from tomlkit.toml_document import TOMLDocument

from gateway.config import Config, restart_fields
from gateway.uplinks.config import load_site
from gateway.validate import ConfigError, Problem

PREVIOUS_SUFFIX = ".prev"
# Problems that may need several edits to resolve (a zone needs a detector and a valve; a
# detector may be added before its bus): shown after an edit, refused only at apply.
DEFERRED = (
    "a zone listed in some valve's zones",
    "zones that have at least one detector",
    "at least one",
    "the name of a [[bus]]",
)
# Without a running config to compare with, everything that could need a restart.
RESTART_FIELDS = ("valves", "fans", "power", "annunciator", "storage.data_dir", "control.socket",
                  "uplink")  # fmt: skip
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")

# What each table accepts from the console and how a typed value is read:
# str, int, num (int or float as typed), bool, strs (comma-separated list), date (YYYY-MM-DD or
# "today"), int? / date? (none removes).
SCHEMAS: dict[str, dict[str, str]] = {
    "detector": {
        "name": "str",
        "label": "str",
        "zone": "str",
        "bus": "str",
        "address": "int",
        "profile": "str",
        "gas": "str",
        "low_lel": "num",
        "high_lel": "num",
        "installed": "date?",
        "calibrated": "date?",
    },
    "valve": {
        "name": "str",
        "label": "str",
        "kind": "str",
        "output_pin": "int",
        "pulse_ms": "int?",
        "feedback_pin": "int?",
        "feedback_closed_level": "str",
        "close_confirm_s": "num",
        "zones": "strs",
    },
    "bus": {
        "name": "str",
        "port": "str",
        "baud": "int",
        "parity": "str",
        "stop_bits": "int",
        "timeout_s": "num",
        "gap_ms": "num",
        "rs485": "bool",
        "retries": "int",
    },
    "site": {"id": "str", "name": "str", "address": "str"},
    "timings": {
        "poll_period_s": "num",
        "comm_fault_timeout_s": "num",
        "confirm_count": "int",
        "confirm_at_once": "bool",
    },
    "annunciator": {
        "sounder_pin": "int",
        "red_pin": "int",
        "yellow_pin": "int",
        "green_pin": "int",
        "silence_pin": "int",
        "reset_pin": "int",
        "reset_hold_s": "num",
    },
    # Uplinks: the keys a technician sets on site; the rest keep their defaults.
    "uplink.mqtt": {
        "enabled": "bool",
        "host": "str",
        "port": "int",
        "tls": "bool",
        "ca_file": "str?",
        "username": "str?",
        "password_file": "str?",
        "topic_prefix": "str",
    },
    "uplink.gb26875": {
        "enabled": "bool",
        "host": "str",
        "port": "int",
        "device_address": "int",
        "centre_address": "int",
    },
    "uplink.sms": {
        "enabled": "bool",
        "port": "str",
        "baud": "int",
        "numbers": "strs",
    },
}
ARRAYS = ("detector", "valve", "bus")
UPLINKS = ("mqtt", "gb26875", "sms")
REQUIRED = {
    "detector": ("zone", "bus", "address", "profile", "gas", "low_lel", "high_lel"),
    "valve": ("output_pin", "zones"),
    "bus": ("port",),
}


class ConfigEditError(Exception):
    """An edit, apply or rollback that was refused; nothing changed. ``problems`` lists each
    reason (file, key, value, allowed range)."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = problems or []
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# Typed values from the console
# ---------------------------------------------------------------------------------------------

_INT_RE = re.compile(r"^[+-]?\d+$")
_NUM_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
REMOVE = object()  # "key=none" for an optional key: remove it from the table


def parse_value(table: str, key: str, text: str) -> Any:
    """``text`` typed for ``key`` of ``table`` as the TOML value to store (or ``REMOVE``).
    ConfigEditError names the key, the value and what is allowed."""
    schema = SCHEMAS[table]
    kind = schema.get(key)
    if kind is None:
        raise ConfigEditError(
            f"{table}: unknown key {key[:40]!r}; allowed: {', '.join(schema)}",
        )
    optional = kind.endswith("?")
    base = kind.rstrip("?")
    if optional and text.lower() in ("none", ""):
        return REMOVE
    if any(not ch.isprintable() for ch in text):
        raise ConfigEditError(f"{table}.{key}: only printable characters")
    if base == "str":
        if not text.strip():
            raise ConfigEditError(f"{table}.{key}: must not be empty")
        if len(text) > 200:
            raise ConfigEditError(f"{table}.{key}: at most 200 characters (got {len(text)})")
        return text
    if base == "int":
        if not _INT_RE.match(text):
            raise ConfigEditError(f"{table}.{key} = {text[:40]!r}: must be a whole number")
        return int(text)
    if base == "num":
        if _INT_RE.match(text):
            return int(text)
        if not _NUM_RE.match(text):
            raise ConfigEditError(f"{table}.{key} = {text[:40]!r}: must be a number")
        return float(text)
    if base == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ConfigEditError(f"{table}.{key} = {text[:40]!r}: must be true or false")
    if base == "date":
        if text.lower() == "today":
            return datetime.date.today()
        try:
            return datetime.date.fromisoformat(text)
        except ValueError:
            raise ConfigEditError(
                f"{table}.{key} = {text[:40]!r}: must be a date YYYY-MM-DD or 'today'"
            ) from None
    if base == "strs":
        items = [part.strip() for part in text.split(",")]
        if not items or any(not item for item in items):
            raise ConfigEditError(
                f"{table}.{key} = {text[:40]!r}: a comma-separated list like a,b (no empty items)"
            )
        return items
    raise AssertionError(f"schema kind {kind!r}")


def parse_assignments(table: str, words: list[str]) -> dict[str, Any]:
    """``key=value`` words as {key: value}; ConfigEditError for a word without '=', an unknown
    key, a key given twice or a value of the wrong type."""
    out: dict[str, Any] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise ConfigEditError(
                f"{word[:40]!r}: expected key=value; keys for {table}: " + ", ".join(SCHEMAS[table])
            )
        if key in out:
            raise ConfigEditError(f"{table}: key {key!r} given twice")
        out[key] = parse_value(table, key, value)
    return out


# ---------------------------------------------------------------------------------------------
# Edits on a parsed document
# ---------------------------------------------------------------------------------------------


def _array(doc: TOMLDocument, key: str) -> AoT | None:
    value = doc.get(key)
    return value if isinstance(value, AoT) else None


def entry_names(doc: TOMLDocument, key: str) -> list[str]:
    arr = _array(doc, key)
    if arr is None:
        return []
    return [str(t.get("name", "")) for t in arr]


def _find(doc: TOMLDocument, key: str, name: str) -> tuple[AoT, int]:
    arr = _array(doc, key)
    names = entry_names(doc, key)
    if arr is None or name not in names:
        raise ConfigEditError(f"no {key} named {name[:40]!r}; {key}s: {', '.join(names) or 'none'}")
    return arr, names.index(name)


def _assign(table: Table, fields: dict[str, Any]) -> None:
    for key, value in fields.items():
        if value is REMOVE:
            if key in table:
                del table[key]
        else:
            table[key] = value


def add_entry(doc: TOMLDocument, key: str, name: str, fields: dict[str, Any]) -> str:
    """Append a ``[[key]]`` table named ``name``."""
    if not NAME_RE.match(name):
        raise ConfigEditError(
            f"{key} name {name[:40]!r}: 1-32 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    if name in entry_names(doc, key):
        raise ConfigEditError(f"a {key} named {name!r} already exists; use '{key} set'")
    missing = [k for k in REQUIRED.get(key, ()) if k not in fields]
    if missing:
        raise ConfigEditError(f"{key} add {name}: missing {', '.join(k + '=' for k in missing)}")
    table = tomlkit.table()
    table["name"] = name
    _assign(table, {k: v for k, v in fields.items() if k != "name"})
    table.add(tomlkit.nl())  # a blank line before whatever table follows
    arr = _array(doc, key)
    if arr is None:
        if key in doc:
            raise ConfigEditError(f"{key} in the file is not an array of [[{key}]] tables")
        doc.append(key, tomlkit.aot())
        arr = _array(doc, key)
        assert arr is not None
    elif len(arr):
        # Keep a blank line between tables, as the rest of the file has.
        last = arr[len(arr) - 1]
        if not last.as_string().endswith("\n\n"):
            last.add(tomlkit.nl())
    arr.append(table)
    return f"{key} {name} added"


def set_entry(doc: TOMLDocument, key: str, name: str, fields: dict[str, Any]) -> str:
    if not fields:
        raise ConfigEditError(f"{key} set {name}: nothing to set; keys: {', '.join(SCHEMAS[key])}")
    arr, index = _find(doc, key, name)
    _assign(arr[index], fields)
    return f"{key} {name}: " + ", ".join(
        f"{k} removed" if v is REMOVE else f"{k} = {_show(v)}" for k, v in fields.items()
    )


def remove_entry(doc: TOMLDocument, key: str, name: str) -> str:
    arr, index = _find(doc, key, name)
    del arr[index]
    return f"{key} {name} removed"


def set_table(doc: TOMLDocument, key: str, fields: dict[str, Any]) -> str:
    """Set keys of ``[key]`` (or ``[uplink.NAME]`` for ``key='uplink.NAME'``)."""
    if not fields:
        raise ConfigEditError(f"{key}: nothing to set; keys: {', '.join(SCHEMAS[key])}")
    parts = key.split(".")
    container: Any = doc
    for depth, part in enumerate(parts):
        if part not in container:
            container.append(part, tomlkit.table(is_super_table=depth < len(parts) - 1))
        container = container[part]
        if not isinstance(container, Table):
            raise ConfigEditError(f"{'.'.join(parts[: depth + 1])} in the file is not a table")
    _assign(container, fields)
    return f"{key}: " + ", ".join(
        f"{k} removed" if v is REMOVE else f"{k} = {_show(v)}" for k, v in fields.items()
    )


def remove_table(doc: TOMLDocument, key: str) -> str:
    parts = key.split(".")
    container: Any = doc
    for part in parts[:-1]:
        container = container.get(part) if isinstance(container, dict) else None
    if not isinstance(container, dict) or parts[-1] not in container:
        raise ConfigEditError(f"no [{key}] in the configuration")
    del container[parts[-1]]
    return f"[{key}] removed"


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}.{os.getpid()}.tmp")


def _write_synced(tmp: Path, text: str, mode: int) -> None:
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + PREVIOUS_SUFFIX)


def atomic_write(path: Path, text: str, *, keep_previous: bool) -> None:
    """Replace ``path`` by ``text``: the old content or the new, never a mix, even if the
    process is killed at any point. With ``keep_previous`` the file being replaced becomes
    ``NAME.prev`` (hard link, so no second copy is written). Keeps the file's mode."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o640
    tmp = _tmp_name(path, "new")
    prev_tmp = _tmp_name(path, "prev")
    try:
        _write_synced(tmp, text, mode)
        if keep_previous and path.exists():
            with contextlib.suppress(FileNotFoundError):
                prev_tmp.unlink()
            os.link(path, prev_tmp)
            # When NAME.prev is already a link to NAME (an earlier apply was killed between its
            # two renames) rename(2) does nothing and leaves prev_tmp: removed below.
            os.replace(prev_tmp, previous_path(path))
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, prev_tmp):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    _fsync_dir(path.parent)


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files a killed apply left beside the config (never the config itself)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def validate_text(path: Path, text: str) -> Config:
    """``text`` validated as if it were the file at ``path`` (written to a temporary file
    beside it, so relative paths resolve the same). Raises ConfigError naming ``path``."""
    tmp = _tmp_name(path, "check")
    try:
        _write_synced(tmp, text, 0o600)
        try:
            # The whole file: the safety part and the uplinks' part.
            return load_site(tmp)[0]
        except ConfigError as e:
            raise ConfigError(
                [
                    Problem(str(path), p.key, p.value, p.allowed) if p.file == str(tmp) else p
                    for p in e.problems
                ]
            ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def problems_of(path: Path, text: str) -> list[Problem]:
    try:
        validate_text(path, text)
    except ConfigError as e:
        return list(e.problems)
    return []


def deferred(problem: Problem) -> bool:
    return problem.allowed.startswith(DEFERRED)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated change ready to write: the new text and config, and what needs a restart."""

    old_text: str
    new_text: str
    config: Config
    restart: tuple[str, ...]
    diff: str


class ConfigEditor:
    """The staged copy of the configuration at ``path`` for one console session."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._base: str | None = None  # the file's text when staging began
        self._doc: TOMLDocument | None = None

    # -- staging ---------------------------------------------------------------------------------

    @property
    def staged(self) -> bool:
        return self._doc is not None and tomlkit.dumps(self._doc) != self._base

    def current_text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigEditError(f"{self.path}: cannot read the configuration: {e}") from e

    def staged_text(self) -> str:
        return tomlkit.dumps(self._doc) if self._doc is not None else self.current_text()

    def document(self) -> TOMLDocument:
        """A copy of the staged document (of the file, if nothing is staged), to read."""
        return tomlkit.parse(self.staged_text())

    def edit(self, change: Callable[[TOMLDocument], str]) -> tuple[str, list[str]]:
        """Apply ``change`` to a copy of the staged document; keep it only if it adds no
        problem (other than ``DEFERRED`` ones). Returns the change's message and the problems
        the staged text still has (to be fixed before apply)."""
        base = self._base if self._doc is not None else self.current_text()
        try:
            doc = tomlkit.parse(self.staged_text())
        except Exception as e:  # tomlkit's parse errors have no common public base class
            raise ConfigEditError(f"{self.path}: the configuration is not valid TOML: {e}") from e
        before = problems_of(self.path, tomlkit.dumps(doc))
        message = change(doc)
        text = tomlkit.dumps(doc)
        after = problems_of(self.path, text)
        old = {(p.key, repr(p.value), p.allowed) for p in before}
        new = [p for p in after if (p.key, repr(p.value), p.allowed) not in old]
        refused = [p for p in new if not deferred(p)]
        if refused:
            raise ConfigEditError("refused, nothing changed: " + message, [str(p) for p in refused])
        self._doc = doc
        self._base = base
        return message, [str(p) for p in after]

    def discard(self) -> bool:
        """Drop the staged changes; True if there were any."""
        had = self.staged
        self._doc = None
        self._base = None
        return had

    def diff(self) -> str:
        """Unified diff from the file on disk to the staged text ('' when nothing staged)."""
        if not self.staged:
            return ""
        return _diff(self.current_text(), self.staged_text(), self.path, "staged")

    def check(self) -> list[str]:
        return [str(p) for p in problems_of(self.path, self.staged_text())]

    # -- apply / rollback ------------------------------------------------------------------------

    def prepare(self) -> Prepared:
        """Validate the staged text for ``commit``; ConfigEditError if nothing is staged, the
        file changed on disk meanwhile, or the staged text has any problem."""
        if not self.staged:
            raise ConfigEditError("nothing staged: change something first (help config)")
        current = self.current_text()
        if current != self._base:
            raise ConfigEditError(
                f"{self.path} changed on disk since you began editing; 'config discard' and "
                "make the changes again"
            )
        new_text = self.staged_text()
        return self._prepared(current, new_text, "staged")

    def _prepared(self, old_text: str, new_text: str, label: str) -> Prepared:
        try:
            new = validate_text(self.path, new_text)
        except ConfigError as e:
            raise ConfigEditError(
                f"{len(e.problems)} problem(s): nothing written", [str(p) for p in e.problems]
            ) from None
        try:
            old: Config | None = validate_text(self.path, old_text)
        except ConfigError:
            old = None
        restart = tuple(restart_fields(old, new)) if old is not None else RESTART_FIELDS
        return Prepared(
            old_text, new_text, new, restart, _diff(old_text, new_text, self.path, label)
        )

    def commit(self, prepared: Prepared) -> None:
        """Write a prepared change atomically (the current file kept as ``.prev``)."""
        if self.current_text() != prepared.old_text:
            raise ConfigEditError(f"{self.path} changed on disk meanwhile: nothing written")
        remove_stale_temporaries(self.path)
        atomic_write(self.path, prepared.new_text, keep_previous=True)
        self._doc = None
        self._base = None

    def restore(self, text: str) -> None:
        """Put ``text`` back (after a change the controller refused), without touching
        ``.prev``."""
        atomic_write(self.path, text, keep_previous=False)

    def prepare_rollback(self) -> Prepared:
        """The previous version (``NAME.prev``) validated for ``commit``."""
        prev = previous_path(self.path)
        try:
            prev_text = prev.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigEditError(f"no previous version ({prev} does not exist)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigEditError(f"{prev}: cannot read: {e}") from e
        current = self.current_text()
        if prev_text == current:
            raise ConfigEditError("the previous version is the same as the current one")
        return self._prepared(current, prev_text, "previous version")


def _diff(old: str, new: str, path: Path, label: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            f"{path} (in force)",
            f"{path} ({label})",
        )
    )
