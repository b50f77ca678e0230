"""Which mode the server runs in: local (no login, one implicit owner) or multi-user."""

from __future__ import annotations

import logging
from typing import Literal

log = logging.getLogger(__name__)

AuthMode = Literal["local", "multi-user"]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """Whether binding to `host` reaches only this machine."""
    name = host.strip().lower().strip("[]")
    return name in LOOPBACK or name.startswith("127.")


def resolve_mode(setting: str, bound_host: str) -> tuple[AuthMode, str | None]:
    """(mode, warning): auto is local on a loopback address, multi-user anywhere else; an
    explicit local on another address runs, with a warning for the log and /health."""
    if setting == "multi-user":
        return "multi-user", None
    if setting == "local":
        if is_loopback(bound_host):
            return "local", None
        return "local", (
            f"Authentication is OFF (STUDYRAG_AUTH__MODE=local) but the server is bound to "
            f"{bound_host!r}: anyone who can reach it reads and changes every notebook and "
            "conversation. Bind to 127.0.0.1 or set STUDYRAG_AUTH__MODE=multi-user."
        )
    return ("local" if is_loopback(bound_host) else "multi-user"), None
