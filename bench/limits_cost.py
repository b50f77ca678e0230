"""What the shared limits cost per request, side by side in one run.

Usage: python -m bench.limits_cost [--n 2000] [--rounds 3]

1. One chat-message check (`Limits.message`, a moving window of 30 000 per minute so
   nothing is refused): limits' memory storage (one worker) against its Redis storage
   (every worker), at 127.0.0.1:6379.
2. One WebSocket client's slots (take the conversation's and the address's, drop both, as
   `WebSocketManager` does per connection): MemoryBroker against RedisBroker.
Rounds alternate the order; medians of per-call microseconds are reported with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import write_result
from studyrag.auth.quotas import Limits
from studyrag.backends.broker.base import Broker
from studyrag.backends.broker.memory import MemoryBroker
from studyrag.backends.broker.redis import RedisBroker
from studyrag.config import APISettings, BrokerSettings, Settings

REDIS_URL = "redis://127.0.0.1:6379/0"


async def per_call_us(n: int, call: Callable[[int], Awaitable[None]]) -> float:
    for i in range(50):  # warm: connections, scripts loaded
        await call(i)
    start = time.perf_counter()
    for i in range(n):
        await call(i)
    return (time.perf_counter() - start) / n * 1e6


def limits_of(url: str, data_dir: Path, namespace: str) -> Limits:
    settings = Settings(
        data_dir=data_dir,
        api=APISettings(rate_limit_per_minute=30_000),
        broker=BrokerSettings(url=url, namespace=namespace),
    )
    return Limits.open(settings, usage=None, multi_user=False)  # type: ignore[arg-type]


async def slots(broker: Broker, i: int) -> None:
    member = f"c{i}"
    await broker.take_slot("ws-conversation:bench", member, limit=50, ttl=30)
    await broker.take_slot("ws-address:127.0.0.1", member, limit=200, ttl=30)
    await broker.drop_slot("ws-conversation:bench", member)
    await broker.drop_slot("ws-address:127.0.0.1", member)


async def main(n: int, rounds: int) -> dict[str, object]:
    namespace = f"bench-limits-{uuid.uuid4().hex[:8]}"
    results: dict[str, list[float]] = {
        k: [] for k in ("msg_memory", "msg_redis", "ws_memory", "ws_redis")
    }
    with tempfile.TemporaryDirectory() as tmp:
        memory, redis_limits = (
            limits_of("", Path(tmp), namespace),
            limits_of(REDIS_URL, Path(tmp), namespace),
        )
        memory_broker, redis_broker = MemoryBroker(), RedisBroker(REDIS_URL, namespace=namespace)
        await redis_broker.start()
        try:
            for r in range(rounds):
                order = [("memory", memory, memory_broker), ("redis", redis_limits, redis_broker)]
                if r % 2:
                    order.reverse()
                for name, limits, broker in order:
                    key = f"addr:{name}-{r}"
                    results[f"msg_{name}"].append(
                        await per_call_us(n, lambda _i, lim=limits, k=key: lim.message(k))
                    )
                    results[f"ws_{name}"].append(
                        await per_call_us(n, lambda i, b=broker: slots(b, i))
                    )
        finally:
            await memory.aclose()
            await redis_limits.aclose()
            await redis_broker.aclose()
    med = {k: statistics.median(v) for k, v in results.items()}
    report = {
        "n": n,
        "rounds": rounds,
        "per_call_us": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "median_us": {k: round(v, 1) for k, v in med.items()},
        "ratio_msg_redis_over_memory": round(med["msg_redis"] / med["msg_memory"], 2),
        "ratio_ws_redis_over_memory": round(med["ws_redis"] / med["ws_memory"], 2),
    }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report = asyncio.run(main(args.n, args.rounds))
    print(report)
    write_result("limits_cost", report)
