"""RedisBroker: pub/sub across workers and shared sliding-window counters."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from studyrag.backends.broker.base import Broker
from studyrag.errors import BackendUnavailable

log = logging.getLogger(__name__)


class RedisBroker(Broker):
    """One connection pool; each subscription gets its own PubSub connection."""

    backend = "redis"

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis

        self.url = url
        self._redis = aioredis.from_url(url, decode_responses=True)

    async def start(self) -> None:
        import redis.exceptions

        try:
            await self._redis.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendUnavailable(
                f"Redis is not reachable at {self.url}: {exc}",
                hint="Start Redis or leave STUDYRAG_BROKER__URL empty for one worker.",
            ) from exc

    async def health_check(self) -> dict[str, Any]:
        """PING, and the Redis server's version; never raises."""
        import redis.exceptions

        report: dict[str, Any] = {"backend": self.backend}
        try:
            info = await self._redis.info("server")
        except (redis.exceptions.RedisError, OSError) as exc:
            error = BackendUnavailable(f"Redis is not reachable: {exc}")
            return {**report, "status": "unavailable", "error": error.to_dict()}
        return {**report, "status": "ok", "version": info.get("redis_version")}

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        import redis.exceptions

        try:
            await self._redis.publish(channel, json.dumps(message, default=str))
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis publish failed: {exc}") from exc

    async def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)
        try:
            async for raw in pubsub.listen():
                if raw.get("type") == "message":
                    yield json.loads(raw["data"])
        finally:
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()

    async def hit(self, key: str, *, window: float) -> tuple[int, float]:
        # A sorted set per key: members are unique ids scored by time; trim, add, count.
        now = time.time()
        name = f"studyrag:rate:{key}"
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(name, 0, now - window)
            pipe.zadd(name, {uuid.uuid4().hex: now})
            pipe.zcard(name)
            pipe.zrange(name, 0, 0, withscores=True)
            pipe.expire(name, int(window) + 1)
            _, _, count, oldest, _ = await pipe.execute()
        first = oldest[0][1] if oldest else now
        return int(count), max(0.0, first + window - now)

    async def aclose(self) -> None:
        await self._redis.aclose()
