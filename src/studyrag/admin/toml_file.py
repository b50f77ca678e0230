"""The saved configuration file: read, change some keys, write atomically, keep the rest."""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Any

from studyrag.errors import ConfigError


def read_toml(path: Path) -> dict[str, Any]:
    """The file's tables ({} when it does not exist); CONFIG_001 when it cannot be read."""
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"Cannot read the configuration file {path}: {exc}",
            hint="Fix or delete the file; settings can also come from STUDYRAG_* variables.",
        ) from exc


def update_toml(path: Path, changes: dict[tuple[str, ...], Any]) -> None:
    """Set each dotted key (a tuple of names) in the file; every other key stays.

    Written to a temporary file in the same folder, then renamed over the old one, so a
    crash leaves either the old or the new file, never half of one. (Comments are not kept:
    the standard library reads TOML but has no writer that preserves them.)
    """
    data = read_toml(path)
    for key, value in changes.items():
        table = data
        for name in key[:-1]:
            inner = table.get(name)
            if not isinstance(inner, dict):
                inner = table[name] = {}
            table = inner
        table[key[-1]] = value
    text = dumps(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(
            f"Cannot write the configuration file {path}: {exc}",
            hint="Check that the data directory is writable; nothing was changed.",
        ) from exc


def dumps(data: dict[str, Any]) -> str:
    """TOML text for nested dicts of strings, numbers, booleans and lists."""
    lines: list[str] = []
    _table(data, (), lines)
    return "\n".join(lines).strip() + "\n"


def _table(data: dict[str, Any], prefix: tuple[str, ...], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append("")
        lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
    for key, value in scalars.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in tables.items():
        _table(value, (*prefix, key), lines)


def _key(name: str) -> str:
    bare = name and all(c.isalnum() or c in "-_" for c in name)
    return name if bare else _string(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    return _string(str(value))


def _string(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    out = "".join(c if c >= " " or c in "\\" else f"\\u{ord(c):04x}" for c in out)
    return f'"{out}"'
