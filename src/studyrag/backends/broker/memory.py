"""MemoryBroker: in-process pub/sub, event streams, leases and slots (one worker)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable
from contextlib import suppress
from typing import Any

from studyrag.backends.broker.base import Broker
from studyrag.errors import BackendUnavailable

# A subscriber that falls this far behind is a bug upstream; drop rather than grow forever.
_QUEUE_LIMIT = 10_000
# Streams and values are swept of expired ones once there are this many.
_SWEEP_EVERY = 1_000


class MemoryBroker(Broker):
    """Subscribers get their own queue; publish never blocks."""

    backend = "memory"

    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        # group -> member -> deadline; an empty group is dropped, so groups of every
        # address ever seen do not stay in memory.
        self._slots: dict[str, dict[str, float]] = {}
        # stream -> its entries, the deadline of the whole stream, and a wake-up for readers.
        self._streams: dict[str, _Stream] = {}
        self._values: dict[str, tuple[str, float]] = {}  # key -> (value, deadline)
        self._registries: dict[str, dict[str, str]] = defaultdict(dict)

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        for queue in list(self._subs.get(channel, ())):
            if queue.qsize() < _QUEUE_LIMIT:
                queue.put_nowait(message)

    async def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._subs[channel].add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._subs[channel].discard(queue)
            if not self._subs[channel]:
                self._subs.pop(channel, None)

    def subscribers(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    # --- slots -------------------------------------------------------------------------
    def _live(self, group: str, now: float) -> dict[str, float]:
        members = self._slots.get(group, {})
        for member in [m for m, deadline in members.items() if deadline <= now]:
            del members[member]
        return members

    async def take_slot(
        self, group: str, member: str, *, limit: int, ttl: float
    ) -> tuple[bool, int]:
        now = time.monotonic()
        members = self._live(group, now)
        if member not in members and len(members) >= limit:
            return False, len(members)
        members[member] = now + ttl
        self._slots[group] = members
        return True, len(members)

    async def keep_slots(self, slots: Iterable[tuple[str, str]], *, ttl: float) -> None:
        deadline = time.monotonic() + ttl
        for group, member in slots:
            self._slots.setdefault(group, {})[member] = deadline

    async def drop_slot(self, group: str, member: str) -> None:
        members = self._slots.get(group)
        if members is not None:
            members.pop(member, None)
            if not self._live(group, time.monotonic()):
                del self._slots[group]

    def slot_groups(self) -> int:
        """How many groups hold slots now (tests: none is left behind)."""
        return len(self._slots)

    # --- streams -------------------------------------------------------------------------
    def _stream(self, name: str, *, create: bool) -> _Stream | None:
        stream = self._streams.get(name)
        if stream is not None and stream.deadline <= time.monotonic():
            del self._streams[name]
            stream = None
        if stream is None and create:
            stream = self._streams[name] = _Stream()
        return stream

    async def append(
        self, stream: str, entry_id: int, entry: dict[str, Any], *, maxlen: int, ttl: float
    ) -> None:
        target = self._stream(stream, create=True)
        assert target is not None
        if target.ids and entry_id <= target.ids[-1]:
            # As Redis refuses it (XADD: ID equal or smaller than the top item).
            raise BackendUnavailable(
                f"Entry {entry_id} is not above {target.ids[-1]} in stream {stream}."
            )
        target.ids.append(entry_id)
        target.entries.append(entry)
        while len(target.ids) > maxlen:
            target.ids.popleft()
            target.entries.popleft()
        target.deadline = time.monotonic() + ttl
        self._sweep_streams()
        wake, target.wake = target.wake, asyncio.Event()
        wake.set()

    async def read(
        self, stream: str, *, after: int = 0, block: float = 0.0
    ) -> list[tuple[int, dict[str, Any]]]:
        deadline = time.monotonic() + block
        while True:
            target = self._stream(stream, create=block > 0)
            if target is None:
                return []
            found = [(i, e) for i, e in zip(target.ids, target.entries, strict=True) if i > after]
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            with suppress(TimeoutError):
                await asyncio.wait_for(target.wake.wait(), remaining)

    def _sweep_streams(self) -> None:
        if len(self._streams) > _SWEEP_EVERY:
            now = time.monotonic()
            for name in [n for n, s in self._streams.items() if s.deadline <= now]:
                del self._streams[name]

    # --- leases and registries -----------------------------------------------------------
    def _value(self, key: str) -> str | None:
        held = self._values.get(key)
        if held is None:
            return None
        if held[1] <= time.monotonic():
            del self._values[key]
            return None
        return held[0]

    async def claim(self, key: str, owner: str, *, ttl: float) -> bool:
        if self._value(key) is not None:
            return False
        self._values[key] = (owner, time.monotonic() + ttl)
        return True

    async def renew(self, key: str, owner: str, *, ttl: float) -> bool:
        if self._value(key) != owner:
            return False
        self._values[key] = (owner, time.monotonic() + ttl)
        return True

    async def release(self, key: str, owner: str) -> bool:
        if self._value(key) != owner:
            return False
        del self._values[key]
        return True

    async def get(self, key: str) -> str | None:
        return self._value(key)

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        self._values[key] = (value, time.monotonic() + ttl)
        if len(self._values) > _SWEEP_EVERY:
            now = time.monotonic()
            for stale in [k for k, (_, d) in self._values.items() if d <= now]:
                del self._values[stale]

    async def register(self, registry: str, member: str, value: str) -> None:
        self._registries[registry][member] = value

    async def unregister(self, registry: str, member: str) -> None:
        members = self._registries.get(registry)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._registries[registry]

    async def registered(self, registry: str) -> dict[str, str]:
        return dict(self._registries.get(registry, {}))


class _Stream:
    __slots__ = ("ids", "entries", "deadline", "wake")

    def __init__(self) -> None:
        self.ids: deque[int] = deque()
        self.entries: deque[dict[str, Any]] = deque()
        self.deadline = float("inf")
        self.wake = asyncio.Event()
