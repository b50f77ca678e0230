"""Which local server serves a data directory, so the CLI can ask it instead of loading the
models itself (as the `ollama` CLI does): `serve` writes <data dir>/server.json when it is
ready and removes it when it stops."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from studyrag.ingest.ownership import owner_gone, process_owner

FILENAME = "server.json"


def announce(data_dir: Path, *, host: str, port: int) -> Path:
    """Record that this process serves `data_dir` at host:port."""
    reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    path = data_dir / FILENAME
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(
            {"url": f"http://{reachable}:{port}", "owner": process_owner(), "pid": os.getpid()}
        )
    )
    tmp.replace(path)
    return path


def withdraw(data_dir: Path) -> None:
    """Remove the record, if it is this process's."""
    path = data_dir / FILENAME
    info = _read(path)
    if info is not None and info.get("owner") == process_owner():
        path.unlink(missing_ok=True)


def find(data_dir: Path) -> str | None:
    """The URL of a live server for `data_dir`, if its record names a running process."""
    info = _read(data_dir / FILENAME)
    if info is None or owner_gone(str(info.get("owner") or ""), None):
        return None
    url = info.get("url")
    return url if isinstance(url, str) else None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
