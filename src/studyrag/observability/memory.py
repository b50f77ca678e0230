"""How much memory the process may use, how much it uses, and an owned task that warns.

The limit is the cgroup's (`memory.max` on cgroup v2, `memory.limit_in_bytes` on v1) when
one is set, else the machine's physical RAM: a container killed by the OOM killer at its
cgroup limit never sees the host's free memory.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 reports "no limit" as a huge number (a page-rounded 2**63 - 1).
_V1_UNLIMITED = 1 << 60
# After a warning, the next one waits until usage fell below this share of the threshold.
_REARM = 0.95


def memory_limit(root: Path = CGROUP_ROOT) -> tuple[int, str]:
    """(bytes the process may use, where that figure comes from)."""
    for own in _own_cgroups(root):
        for name in ("memory.max", "memory.limit_in_bytes"):
            value = _read(own / name)
            if value and value != "max" and value.isdigit() and int(value) < _V1_UNLIMITED:
                return int(value), str(own / name)
    return physical_memory(), "physical RAM"


def _own_cgroups(root: Path) -> list[Path]:
    """This process's cgroup directories (v2 unified, v1 memory controller), then the root."""
    found: list[Path] = []
    text = _read(Path("/proc/self/cgroup")) or ""
    for line in text.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        rel = path.lstrip("/")
        if controllers == "":
            found.extend([root / rel, root / "unified" / rel])  # v2 (or hybrid's unified)
        elif "memory" in controllers.split(","):
            found.append(root / "memory" / rel)  # v1
    found.extend([root, root / "memory"])
    return [p for p in found if p.is_dir()]


def physical_memory() -> int:
    """The machine's RAM in bytes."""
    return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))


def resident_memory() -> int:
    """This process's resident set size in bytes (Linux /proc; 0 where unknown)."""
    text = _read(Path("/proc/self/statm"))
    if not text:
        return 0
    return int(text.split()[1]) * int(os.sysconf("SC_PAGE_SIZE"))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


class MemoryWatch:
    """Checks the resident memory every `interval` seconds; warns once per excursion past
    `ratio` of the limit. Started and stopped by the app lifespan, which owns its task."""

    def __init__(self, *, ratio: float, interval: float, limit: int | None = None) -> None:
        self.ratio = ratio
        self.interval = interval
        if limit is None:
            limit, source = memory_limit()
        else:
            source = "given"
        self.limit = limit
        self.source = source
        self.warned = False
        self.warnings = 0
        self._task: asyncio.Task[None] | None = None

    def check(self, used: int | None = None) -> bool:
        """One check; True when it logged a warning."""
        used = resident_memory() if used is None else used
        threshold = self.ratio * self.limit
        if used > threshold and not self.warned:
            self.warned = True
            self.warnings += 1
            log.warning(
                "memory use %.0f MiB is over %.0f%% of the %.0f MiB this process may use (%s)",
                used / 2**20,
                self.ratio * 100,
                self.limit / 2**20,
                self.source,
                extra={"memory_used_bytes": used, "memory_limit_bytes": self.limit},
            )
            return True
        if used < threshold * _REARM:
            self.warned = False
        return False

    async def start(self) -> None:
        """Start the periodic check."""
        self._task = asyncio.create_task(self._loop(), name="memory-watch")
        self._task.add_done_callback(_surface)

    async def _loop(self) -> None:
        while True:
            try:
                # What answers, searches and uploads freed goes back to the OS: glibc keeps
                # freed heap in each thread's arena otherwise, and the process only grows.
                release_freed_memory()
                self.check()
            except Exception:  # a failed read must not end the watch
                log.exception("memory check failed")
            await asyncio.sleep(self.interval)

    async def aclose(self) -> None:
        """Stop the task."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _surface(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the memory watch stopped", exc_info=task.exception())


@functools.cache
def _heap_trimmer() -> Callable[[], object] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return functools.partial(trim, 0)


def release_freed_memory() -> None:
    """Hand the heap memory a batch freed back to the OS (glibc keeps it otherwise)."""
    trim = _heap_trimmer()
    if trim is not None:
        trim()
