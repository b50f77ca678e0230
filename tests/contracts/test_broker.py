"""The Broker contract, over every implementation: MemoryBroker always, RedisBroker when Redis
is reachable (each test in its own key namespace, so parallel runs never meet)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, cast

import pytest

from studyrag.backends.broker.base import Broker
from studyrag.backends.broker.memory import MemoryBroker
from studyrag.errors import StudyRAGError

REDIS_URL = "redis://127.0.0.1:6379/0"


async def _redis_available() -> bool:
    try:
        import redis.asyncio as aioredis
    except ModuleNotFoundError:
        return False
    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "memory":
        b: Broker = MemoryBroker()
    else:
        if not await _redis_available():
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: start redis-server")
        from studyrag.backends.broker.redis import RedisBroker

        b = RedisBroker(REDIS_URL, namespace=f"contract-{uuid.uuid4().hex[:10]}")
    async with b:
        yield b


async def test_publish_reaches_every_subscriber_from_subscription_on(broker: Broker) -> None:
    got: list[list[dict[str, Any]]] = [[], []]
    ready = [asyncio.Event(), asyncio.Event()]

    async def listen(i: int) -> None:
        messages = cast(AsyncGenerator[dict[str, Any], None], broker.subscribe("chan"))
        async with aclosing(messages):
            async for message in messages:
                if message.get("hello"):
                    ready[i].set()
                    continue
                got[i].append(message)
                if len(got[i]) == 3:
                    return

    tasks = [asyncio.create_task(listen(i)) for i in range(2)]
    while not all(r.is_set() for r in ready):  # subscribing is asynchronous on Redis
        await broker.publish("chan", {"hello": True})
        await asyncio.sleep(0.02)
    for n in range(3):
        await broker.publish("chan", {"n": n})
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert got == [[{"n": 0}, {"n": 1}, {"n": 2}]] * 2


async def test_stream_entries_are_read_after_an_id_in_order(broker: Broker) -> None:
    for i in range(1, 6):
        await broker.append("s", i, {"i": i, "text": "é"}, maxlen=100, ttl=60)
    assert [i for i, _ in await broker.read("s")] == [1, 2, 3, 4, 5]
    assert await broker.read("s", after=3) == [
        (4, {"i": 4, "text": "é"}),
        (5, {"i": 5, "text": "é"}),
    ]
    assert await broker.read("s", after=5) == []
    assert await broker.read("missing") == []
    with pytest.raises(StudyRAGError):  # an id not above the last is refused
        await broker.append("s", 5, {"i": 5}, maxlen=100, ttl=60)


async def test_stream_read_blocks_until_an_entry_arrives(broker: Broker) -> None:
    await broker.append("s", 1, {"i": 1}, maxlen=100, ttl=60)
    assert await broker.read("s", after=1, block=0.2) == []  # waited, nothing came

    async def later() -> None:
        await asyncio.sleep(0.2)
        await broker.append("s", 2, {"i": 2}, maxlen=100, ttl=60)

    task = asyncio.create_task(later())
    assert await asyncio.wait_for(broker.read("s", after=1, block=5), 10) == [(2, {"i": 2})]
    await task
    # A stream that does not exist yet can be waited on too (an answer not started).
    task = asyncio.create_task(broker.read("fresh", block=5))
    await asyncio.sleep(0.1)
    await broker.append("fresh", 1, {"i": 1}, maxlen=100, ttl=60)
    assert await asyncio.wait_for(task, 10) == [(1, {"i": 1})]


async def test_stream_keeps_its_last_entries_and_expires(broker: Broker) -> None:
    for i in range(1, 201):
        await broker.append("long", i, {"i": i}, maxlen=50, ttl=60)
    kept = [i for i, _ in await broker.read("long")]
    # Redis trims approximately (whole nodes): at least the last 50, never the newest lost.
    assert kept[-50:] == list(range(151, 201)) and kept == sorted(kept) and len(kept) < 200
    await broker.append("short", 1, {"i": 1}, maxlen=10, ttl=0.2)
    await asyncio.sleep(0.4)
    assert await broker.read("short") == []


async def test_lease_has_one_owner_until_released_or_expired(broker: Broker) -> None:
    assert await broker.claim("lease", "a", ttl=30)
    assert not await broker.claim("lease", "b", ttl=30)
    assert await broker.get("lease") == "a"
    assert not await broker.renew("lease", "b", ttl=30)
    assert not await broker.release("lease", "b")
    assert await broker.renew("lease", "a", ttl=30)
    assert await broker.release("lease", "a")
    assert await broker.get("lease") is None
    assert await broker.claim("lease", "b", ttl=0.2)
    await asyncio.sleep(0.4)
    assert await broker.get("lease") is None  # lapsed: its owner stopped renewing
    assert not await broker.renew("lease", "b", ttl=30)
    assert await broker.claim("lease", "c", ttl=30)


async def test_claim_is_won_by_exactly_one_of_many(broker: Broker) -> None:
    won = await asyncio.gather(*(broker.claim("race", f"w{i}", ttl=30) for i in range(20)))
    assert sum(won) == 1


async def test_put_get_and_expiry(broker: Broker) -> None:
    await broker.put("k", "v1", ttl=30)
    await broker.put("k", "v2", ttl=30)
    assert await broker.get("k") == "v2"
    await broker.put("gone", "x", ttl=0.2)
    await asyncio.sleep(0.4)
    assert await broker.get("gone") is None


async def test_registry_members(broker: Broker) -> None:
    assert await broker.registered("reg") == {}
    await broker.register("reg", "a", '{"x": 1}')
    await broker.register("reg", "b", "2")
    await broker.register("reg", "a", "3")
    assert await broker.registered("reg") == {"a": "3", "b": "2"}
    await broker.unregister("reg", "a")
    await broker.unregister("reg", "missing")
    assert await broker.registered("reg") == {"b": "2"}


async def test_slots_hold_at_most_limit_members_until_dropped_or_expired(broker: Broker) -> None:
    assert await broker.take_slot("conv", "a", limit=2, ttl=30) == (True, 1)
    assert await broker.take_slot("conv", "b", limit=2, ttl=30) == (True, 2)
    assert await broker.take_slot("conv", "c", limit=2, ttl=30) == (False, 2)
    # A holder taking its own slot again renews it; it is no new member.
    assert await broker.take_slot("conv", "a", limit=2, ttl=30) == (True, 2)
    # Groups are apart.
    assert await broker.take_slot("other", "c", limit=2, ttl=30) == (True, 1)
    await broker.drop_slot("conv", "a")
    await broker.drop_slot("conv", "never-there")
    assert await broker.take_slot("conv", "c", limit=2, ttl=30) == (True, 2)
    # A slot nobody renews (its worker was killed) frees itself.
    await broker.take_slot("short", "x", limit=1, ttl=0.3)
    assert (await broker.take_slot("short", "y", limit=1, ttl=0.3))[0] is False
    await asyncio.sleep(0.5)
    assert await broker.take_slot("short", "y", limit=1, ttl=0.3) == (True, 1)


async def test_kept_slots_outlive_their_first_ttl(broker: Broker) -> None:
    await broker.take_slot("kept", "a", limit=1, ttl=0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await broker.keep_slots([("kept", "a")], ttl=0.4)
    assert (await broker.take_slot("kept", "b", limit=1, ttl=0.4))[0] is False
    # Kept again after it lapsed (a Redis restarted empty): it counts again.
    await asyncio.sleep(0.6)
    await broker.keep_slots([("kept", "a")], ttl=30)
    assert (await broker.take_slot("kept", "b", limit=1, ttl=30))[0] is False
    await broker.keep_slots([], ttl=30)


async def test_the_last_slot_is_taken_by_exactly_one_of_many(broker: Broker) -> None:
    results = await asyncio.gather(
        *(broker.take_slot("race", f"m{i}", limit=3, ttl=30) for i in range(20))
    )
    assert sum(taken for taken, _ in results) == 3


async def test_memory_broker_forgets_groups_whose_slots_are_all_free() -> None:
    # Groups are named after client addresses: one kept per address ever seen would grow.
    broker = MemoryBroker()
    for i in range(500):
        await broker.take_slot(f"addr:10.0.{i // 256}.{i % 256}", "m", limit=1, ttl=30)
    assert broker.slot_groups() == 500
    for i in range(500):
        await broker.drop_slot(f"addr:10.0.{i // 256}.{i % 256}", "m")
    assert broker.slot_groups() == 0


async def test_ping_and_health(broker: Broker) -> None:
    await broker.ping()
    assert (await broker.health_check())["status"] == "ok"


async def test_namespaces_keep_redis_brokers_apart() -> None:
    if not await _redis_available():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start redis-server")
    from studyrag.backends.broker.redis import RedisBroker

    one = RedisBroker(REDIS_URL, namespace=f"ns-{uuid.uuid4().hex[:8]}")
    two = RedisBroker(REDIS_URL, namespace=f"ns-{uuid.uuid4().hex[:8]}")
    async with one, two:
        await one.append("s", 1, {"i": 1}, maxlen=10, ttl=30)
        assert await one.claim("lease", "a", ttl=30)
        assert await two.read("s") == []
        assert await two.claim("lease", "b", ttl=30)
