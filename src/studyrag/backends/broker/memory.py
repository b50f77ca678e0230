"""MemoryBroker: in-process pub/sub and sliding-window counters (one worker)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from typing import Any

from studyrag.backends.broker.base import Broker

# A subscriber that falls this far behind is a bug upstream; drop rather than grow forever.
_QUEUE_LIMIT = 10_000
# Counters are swept after at least this many hits (more when many keys are live, so a
# sweep's cost stays proportional to the hits between sweeps).
_SWEEP_EVERY = 1_000


class MemoryBroker(Broker):
    """Subscribers get their own queue; publish never blocks."""

    backend = "memory"

    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        # key -> (its window, its hit times). Keys are client addresses: a key whose hits
        # have all left their window is dropped, or every address ever seen stays in memory.
        self._hits: dict[str, tuple[float, deque[float]]] = {}
        self._since_sweep = 0
        self._sweep_after = _SWEEP_EVERY

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

    def counters(self) -> int:
        """How many keys hit() currently keeps counts for."""
        return len(self._hits)

    async def hit(self, key: str, *, window: float) -> tuple[int, float]:
        now = time.monotonic()
        self._since_sweep += 1
        if self._since_sweep >= self._sweep_after:
            self._sweep(now)
        entry = self._hits.get(key)
        hits = entry[1] if entry is not None else deque()
        self._hits[key] = (window, hits)
        while hits and hits[0] <= now - window:
            hits.popleft()
        hits.append(now)
        return len(hits), max(0.0, hits[0] + window - now)

    def _sweep(self, now: float) -> None:
        """Forget every key whose newest hit has left its window (its deque would be empty)."""
        stale = [key for key, (window, hits) in self._hits.items() if hits[-1] <= now - window]
        for key in stale:
            del self._hits[key]
        self._since_sweep = 0
        # Amortised: the next sweep waits for as many hits as there are live keys, so the
        # keys kept stay under twice the live ones plus _SWEEP_EVERY.
        self._sweep_after = max(_SWEEP_EVERY, len(self._hits))
