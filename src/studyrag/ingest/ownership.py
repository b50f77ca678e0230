"""Which process owns an in-flight document, and whether that process is still alive.

Every CLI command and every server worker repairs half-done documents at start-up. Without
ownership, `studyrag documents list` would "repair" (undo) an upload the server is ingesting
right now. An owner is "host:pid:start-time"; on the same host a dead or reused pid is
detected exactly, elsewhere a row counts as abandoned only after a long lease.
"""

from __future__ import annotations

import functools
import os
import socket
from datetime import UTC, datetime, timedelta

# Rows owned by a process on another host are repaired only when untouched this long.
FOREIGN_LEASE = timedelta(hours=1)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            # Field 22; the command name (field 2) may contain spaces, so split after ")".
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@functools.cache
def process_owner() -> str:
    """This process's owner token."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def owner_gone(owner: str | None, updated_at: datetime | None) -> bool:
    """Whether the process that owns a row has stopped (so its work can be repaired)."""
    if not owner:
        return True  # rows from before ownership existed, or released ones
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        if not os.path.exists(f"/proc/{pid}") and not _pid_alive(pid):
            return True
        # Same pid but another start time: the pid was reused by a new process.
        current = _start_time(pid)
        return bool(started and current and current != started)
    if updated_at is None:
        return True
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=UTC)
    return datetime.now(UTC) - updated_at > FOREIGN_LEASE


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive_elsewhere_here(owner: str | None) -> bool:
    """Whether another live process on this host owns the row (known exactly, no lease)."""
    if not owner or owner == process_owner():
        return False
    host, _, _ = owner.partition(":")
    return host == socket.gethostname() and not owner_gone(owner, None)
