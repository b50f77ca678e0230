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


class MemoryBroker(Broker):
    """Subscribers get their own queue; publish never blocks."""

    backend = "memory"

    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._hits: dict[str, deque[float]] = defaultdict(deque)

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

    async def hit(self, key: str, *, window: float) -> tuple[int, float]:
        now = time.monotonic()
        hits = self._hits[key]
        while hits and hits[0] <= now - window:
            hits.popleft()
        hits.append(now)
        return len(hits), max(0.0, hits[0] + window - now)
