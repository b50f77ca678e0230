"""RedisBroker: pub/sub, Streams, leases and slots shared by every worker."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import suppress
from typing import Any, TypeVar

from studyrag.backends.broker.base import Broker
from studyrag.errors import BackendUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Compare-and-act on a lease: only its owner may extend or drop it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""
# A slot group is a sorted set of members scored by their deadline (Redis's own clock, so
# the workers' clocks do not matter). Drop the expired, then add unless full; the set
# itself expires with its last member's deadline.
_TAKE_SLOT = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local count = redis.call('zcard', KEYS[1])
if not redis.call('zscore', KEYS[1], ARGV[1]) then
  if count >= tonumber(ARGV[2]) then
    return {0, count}
  end
  count = count + 1
end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('pexpire', KEYS[1], ARGV[3])
return {1, count}
"""
_KEEP_SLOT = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zadd', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if redis.call('pttl', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('pexpire', KEYS[1], ARGV[2])
end
return 1
"""


class RedisBroker(Broker):
    """One connection pool; each subscription gets its own PubSub connection.

    Every key and channel is prefixed with `namespace` (when set), so several deployments
    (or test runs) can share one Redis without seeing each other.
    """

    backend = "redis"

    def __init__(self, url: str, *, namespace: str = "") -> None:
        import redis.asyncio as aioredis

        self.url = url
        self.namespace = namespace
        self._redis = aioredis.from_url(url, decode_responses=True, health_check_interval=10)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._take_slot = self._redis.register_script(_TAKE_SLOT)
        self._keep_slot = self._redis.register_script(_KEEP_SLOT)

    def _name(self, name: str) -> str:
        return f"{self.namespace}:{name}" if self.namespace else name

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """Await one Redis call; its failure becomes BackendUnavailable (the cause kept)."""
        import redis.exceptions

        try:
            return await call
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendUnavailable(
                f"Redis {what} failed at {self.url}: {exc}",
                hint="Check that Redis is running (redis-cli ping).",
            ) from exc

    async def start(self) -> None:
        import redis.exceptions

        try:
            await self._redis.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendUnavailable(
                f"Redis is not reachable at {self.url}: {exc}",
                hint="Start Redis or leave STUDYRAG_BROKER__URL empty for one worker.",
            ) from exc

    async def ping(self) -> None:
        await self._call("PING", self._redis.ping())

    async def health_check(self) -> dict[str, Any]:
        """PING, and the Redis server's version; never raises."""
        import redis.exceptions

        report: dict[str, Any] = {"backend": self.backend}
        try:
            info = await self._redis.info("server")
        except (redis.exceptions.RedisError, OSError) as exc:
            error = BackendUnavailable(
                f"Redis is not reachable at {self.url}: {exc}",
                hint="Start Redis; until it answers this worker refuses new answers (CHAT_011).",
            )
            return {**report, "status": "unavailable", "error": error.to_dict()}
        return {**report, "status": "ok", "version": info.get("redis_version")}

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        payload = json.dumps(message, default=str)
        await self._call("PUBLISH", self._redis.publish(self._name(channel), payload))

    async def subscribe(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        import redis.exceptions

        name = self._name(channel)
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            try:
                await pubsub.subscribe(name)
                async for raw in pubsub.listen():
                    if raw.get("type") == "message":
                        yield json.loads(raw["data"])
            except (redis.exceptions.RedisError, OSError) as exc:
                raise BackendUnavailable(f"Redis subscription to {channel} failed: {exc}") from exc
        finally:
            # After a lost connection these fail too; the caller resubscribes on a new one.
            with suppress(redis.exceptions.RedisError, OSError):
                await pubsub.unsubscribe(name)
            with suppress(redis.exceptions.RedisError, OSError):
                await pubsub.aclose()

    # --- slots: a sorted set per group, scored by deadline (ms, Redis's clock) ------------
    async def take_slot(
        self, group: str, member: str, *, limit: int, ttl: float
    ) -> tuple[bool, int]:
        taken, count = await self._call(
            "slot take",
            self._take_slot(keys=[self._name(group)], args=[member, limit, _ms(ttl)]),
        )
        return bool(taken), int(count)

    async def keep_slots(self, slots: Iterable[tuple[str, str]], *, ttl: float) -> None:
        import redis.exceptions

        slots = list(slots)
        if not slots:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for group, member in slots:
                    await self._keep_slot(
                        keys=[self._name(group)], args=[member, _ms(ttl)], client=pipe
                    )
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis slot renewal failed: {exc}") from exc

    async def drop_slot(self, group: str, member: str) -> None:
        await self._call("ZREM", self._redis.zrem(self._name(group), member))

    # --- streams: entry n is stream id "n-0", so "after n" is exact ----------------------
    async def append(
        self, stream: str, entry_id: int, entry: dict[str, Any], *, maxlen: int, ttl: float
    ) -> None:
        import redis.exceptions

        name = self._name(stream)
        try:
            # One round trip, no MULTI/EXEC: a lost PEXPIRE only leaves the old TTL in place.
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    name,
                    {"e": json.dumps(entry, default=str)},
                    id=f"{entry_id}-0",
                    maxlen=maxlen,
                    approximate=True,
                )
                pipe.pexpire(name, max(1, int(ttl * 1000)))
                await pipe.execute()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendUnavailable(f"Redis XADD to {stream} failed: {exc}") from exc

    async def read(
        self, stream: str, *, after: int = 0, block: float = 0.0
    ) -> list[tuple[int, dict[str, Any]]]:
        name = self._name(stream)
        entries: Any
        if block > 0:
            reply: Any = await self._call(
                "XREAD",
                self._redis.xread({name: f"{after}-0"}, block=max(1, int(block * 1000))),
            )
            entries = reply[0][1] if reply else []  # [[name, entries]] (RESP2)
        else:
            entries = await self._call("XRANGE", self._redis.xrange(name, f"({after}-0", "+"))
        return [
            (int(str(sid).split("-", 1)[0]), json.loads(fields["e"])) for sid, fields in entries
        ]

    # --- leases and registries -----------------------------------------------------------
    async def claim(self, key: str, owner: str, *, ttl: float) -> bool:
        done = await self._call(
            "SET NX", self._redis.set(self._name(key), owner, nx=True, px=int(ttl * 1000))
        )
        return bool(done)

    async def renew(self, key: str, owner: str, *, ttl: float) -> bool:
        done = await self._call(
            "lease renewal", self._renew(keys=[self._name(key)], args=[owner, int(ttl * 1000)])
        )
        return bool(done)

    async def release(self, key: str, owner: str) -> bool:
        done = await self._call(
            "lease release", self._release(keys=[self._name(key)], args=[owner])
        )
        return bool(done)

    async def get(self, key: str) -> str | None:
        value = await self._call("GET", self._redis.get(self._name(key)))
        return None if value is None else str(value)

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        await self._call("SET", self._redis.set(self._name(key), value, px=int(ttl * 1000)))

    async def register(self, registry: str, member: str, value: str) -> None:
        await self._call("HSET", self._redis.hset(self._name(registry), member, value))

    async def unregister(self, registry: str, member: str) -> None:
        await self._call("HDEL", self._redis.hdel(self._name(registry), member))

    async def registered(self, registry: str) -> dict[str, str]:
        found = await self._call("HGETALL", self._redis.hgetall(self._name(registry)))
        return {str(k): str(v) for k, v in found.items()}

    async def aclose(self) -> None:
        await self._redis.aclose()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
