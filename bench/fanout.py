"""Answer fan-out across workers: one worker against two sharing Redis, and the Redis broker
against the in-process one, in one run.

Usage: python -m bench.fanout [--clients 400] [--conversations 40] [--tokens 100] [--rate 10]
                              [--rounds 1] [--redis redis://127.0.0.1:6379/0]

Configurations, with the same clients and the same offered load:

- `memory-1`: one worker, MemoryBroker (the single-process default);
- `redis-1`: one worker, RedisBroker (every event also goes into the answer's Redis Stream);
- `redis-2`: two workers sharing Redis, as behind a load balancer without sticky sessions:
  conversation i's answer runs on worker i % 2 and client j of a conversation connects to
  worker j % 2, so half of every answer's clients are served by the worker that does not run
  it (through its mirror, read from the stream).

Each worker is a real uvicorn process running the production chat transport (GenerationHub,
WebSocketManager, the /ws/chat endpoint); only the chat engine is synthetic: it yields
`--tokens` tokens per answer at `--rate` per second, each stamped with the wall clock when the
engine yields it, so a latency covers the hub, the broker, the watch and the socket. This
process runs every client and records delivery latency, delivered frames per second and each
worker's CPU over the streaming phase. Workers are pinned to the first CPU, clients to the
others: on a 2-core machine two workers share one core, which this bench reports as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import websockets

from bench.common import percentile, wait_for_port, write_result
from bench.ws_fanout import CONNECT_CONCURRENCY, DELTA, cpu_seconds, free_port, pin, raise_fd_limit

CONFIGS = {"memory-1": ("memory", 1), "redis-1": ("redis", 1), "redis-2": ("redis", 2)}


class _Event:
    """An engine event as the hub reads it (a fresh dict each time: the hub pops `type`)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)


class SyntheticEngine:
    """Stands in for ChatEngine above the transport: paced, wall-clock-stamped tokens."""

    model = None

    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens = tokens
        self.period = 1.0 / rate

    async def stream_message(
        self, message: str, *, conversation_id: str | None, **_: Any
    ) -> AsyncIterator[_Event]:
        cid = conversation_id or "new"
        yield _Event(
            {
                "type": "start",
                "assistant_message_id": f"m-{cid}",
                "conversation": {"id": cid},
                "user_message": {"id": f"u-{cid}", "content": message},
            }
        )
        start = time.perf_counter()
        for seq in range(1, self.tokens + 1):
            await asyncio.sleep(max(0.0, start + seq * self.period - time.perf_counter()))
            yield _Event({"type": "token", "seq": seq, "delta": str(time.time_ns())})
        yield _Event(
            {
                "type": "done",
                "message": {"id": f"m-{cid}", "status": "complete"},
                "conversation": {"id": cid},
                "metadata": {},
            }
        )

    async def drain(self) -> None:
        """Nothing to wait for."""


class Conversations:
    async def get(self, conversation_id: str, **_: Any) -> SimpleNamespace:
        """Every conversation exists: the bench measures the transport only."""
        return SimpleNamespace(id=conversation_id, metadata={})


class LocalAuth:
    """Local mode, as AuthService is on a loopback bind: the one owner, who sees everything."""

    mode = "local"

    def __init__(self) -> None:
        self.access = self

    async def authenticate(self, conn: Any) -> Any:
        from studyrag.auth.policy import LOCAL

        return LOCAL

    async def conversation(self, principal: Any, conversation_id: str) -> None:
        """Every conversation is the owner's: the bench measures the transport only."""


# --- one worker --------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> None:
    import uvicorn
    from fastapi import FastAPI

    from studyrag.api.generations import GenerationHub
    from studyrag.api.routes import ws
    from studyrag.api.runtime import ChatRuntime
    from studyrag.api.ws.manager import WebSocketManager
    from studyrag.auth.quotas import Limits
    from studyrag.backends.broker.base import Broker
    from studyrag.backends.broker.memory import MemoryBroker
    from studyrag.config import APISettings, Settings

    settings = Settings(
        data_dir=Path(tempfile.gettempdir()) / "studyrag-bench-unused",
        api=APISettings(
            ws_max_clients_per_address=args.clients * 2,
            ws_max_clients_per_conversation=args.clients,
        ),
    )
    cids = [f"c{i:04d}" for i in range(args.conversations)]
    mine = [cid for i, cid in enumerate(cids) if i % args.workers == args.worker]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker: Broker
        if args.broker == "memory":
            broker = MemoryBroker()
        else:
            from studyrag.backends.broker.redis import RedisBroker

            broker = RedisBroker(args.redis, namespace=args.namespace)
        await broker.start()
        conversations = Conversations()
        hub = GenerationHub(
            chat=SyntheticEngine(args.tokens, args.rate),  # type: ignore[arg-type]
            conversations=conversations,  # type: ignore[arg-type]
            broker=broker,
        )
        await hub.start()
        manager = WebSocketManager(broker=broker, hub=hub, settings=settings)
        await manager.start()
        settings.api.rate_limit_per_minute = 0  # fan-out is measured, not the limiter
        app.state.services = SimpleNamespace(
            conversations=conversations,
            settings=settings,
            limits=Limits.open(settings, usage=None, multi_user=False),
            auth=LocalAuth(),
        )
        app.state.chat_runtime = ChatRuntime(broker=broker, hub=hub, ws=manager)

        async def ask_when_ready() -> None:
            ready = Path(args.ready)
            # Another process's signal (the clients make the file once all are connected).
            while not await asyncio.to_thread(ready.exists):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            for cid in mine:
                await hub.start_answer("q", conversation_id=cid, options={"template": "bench"})

        asker = asyncio.create_task(ask_when_ready())
        yield
        asker.cancel()
        await manager.aclose()
        await hub.aclose()
        await broker.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(ws.router)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning")
    config.backlog = 4096
    uvicorn.Server(config).run()


# --- the clients -------------------------------------------------------------------------
async def run_clients(
    ports: list[int], pids: list[int], cids: list[str], per: int, ready: Path
) -> dict[str, Any]:
    latencies: list[float] = []
    received = 0
    connected = 0
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    all_in = asyncio.Event()
    total = len(cids) * per
    first_at: list[float] = []
    last_at = 0.0

    async def one(cid: str, port: int) -> None:
        nonlocal received, connected, last_at
        async with limit:
            connection = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws/chat/{cid}", open_timeout=60, max_size=None
            )
            await connection.recv()  # connected
        connected += 1
        if connected == total:
            all_in.set()
        try:
            async for raw in connection:
                text = str(raw)  # no JSON parsing: the client's CPU would blur the latency
                at = text.find(DELTA)
                if at >= 0 and '"stream_chunk"' in text:
                    sent = int(text[at + len(DELTA) : text.index('"', at + len(DELTA))])
                    now = time.time_ns()
                    latencies.append((now - sent) / 1e9)
                    received += 1
                    if not first_at:
                        first_at.append(time.perf_counter())
                    last_at = time.perf_counter()
                elif '"stream_end"' in text:
                    return
        finally:
            await connection.close()

    tasks = [
        asyncio.create_task(one(cid, ports[j % len(ports)])) for cid in cids for j in range(per)
    ]
    await asyncio.wait_for(all_in.wait(), timeout=300)
    await asyncio.sleep(1.0)  # let the last handshakes settle before timing starts
    cpu0 = [cpu_seconds(p) for p in pids]
    t0 = time.perf_counter()
    await asyncio.to_thread(ready.touch)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
    t1 = time.perf_counter()
    cpu1 = [cpu_seconds(p) for p in pids]
    streaming = (last_at - first_at[0]) if first_at else float("nan")
    return {
        "frames_received": received,
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3) if latencies else None,
        "frames_per_second": round(received / streaming, 1) if streaming > 0 else None,
        "worker_cpu_percent": [
            round(100 * (b - a) / (t1 - t0), 1) for a, b in zip(cpu0, cpu1, strict=True)
        ],
        # CPU of all workers per delivered frame: the cost figure least moved by other load.
        "worker_cpu_us_per_frame": round(
            1e6 * sum(b - a for a, b in zip(cpu0, cpu1, strict=True)) / max(received, 1), 2
        ),
        "wall_seconds": round(t1 - t0, 2),
    }


def measure(name: str, args: argparse.Namespace, cids: list[str]) -> dict[str, Any]:
    broker, workers = CONFIGS[name]
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        ports = [free_port() for _ in range(workers)]
        procs = []
        for k, port in enumerate(ports):
            cmd = [
                sys.executable, "-m", "bench.fanout", "--serve", "--port", str(port),
                "--broker", broker, "--redis", args.redis, "--namespace", namespace,
                "--worker", str(k), "--workers", str(workers), "--ready", str(ready),
                "--clients", str(args.clients), "--conversations", str(args.conversations),
                "--tokens", str(args.tokens), "--rate", str(args.rate),
            ]  # fmt: skip
            proc = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.dirname(__file__)))
            pin(proc.pid, client=False)
            procs.append(proc)
        try:
            for port, proc in zip(ports, procs, strict=True):
                wait_for_port(port, proc, f"worker of {name}")
            per = args.clients // args.conversations
            result = asyncio.run(run_clients(ports, [p.pid for p in procs], cids, per, ready))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
    expected = args.clients * args.tokens
    result["frames_expected"] = expected
    print(f"{name:9s} {result}", flush=True)
    if result["frames_received"] != expected:
        raise RuntimeError(f"{name}: {result['frames_received']} of {expected} frames arrived")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--conversations", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="tokens/s per answer")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--broker", choices=["memory", "redis"], default="memory")
    parser.add_argument("--namespace", default="")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--ready", default="")
    args = parser.parse_args()
    raise_fd_limit(args.clients * 2 + 256)
    if args.serve:
        serve(args)
        return
    pin(os.getpid(), client=True)
    load_before = os.getloadavg()
    cids = [f"c{i:04d}" for i in range(args.conversations)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
        for name in order:
            runs[name].append(measure(name, args, cids))

    def med(name: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[name]))

    median = {
        name: {
            k: med(name, k)
            for k in ("p50_ms", "p99_ms", "frames_per_second", "worker_cpu_us_per_frame")
        }
        for name in runs
    }
    write_result(
        "fanout",
        {
            "clients": args.clients,
            "conversations": args.conversations,
            "tokens_per_answer": args.tokens,
            "rate_per_answer": args.rate,
            "offered_frames_per_second": args.rate * args.clients,
            "cpus": len(os.sched_getaffinity(0)),
            # Other work on the machine at the time (1, 5, 15 min load averages).
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "runs": runs,
            "median": median,
            "redis_over_memory_p99": round(
                median["redis-1"]["p99_ms"] / median["memory-1"]["p99_ms"], 3
            ),
            "two_over_one_worker_p99": round(
                median["redis-2"]["p99_ms"] / median["redis-1"]["p99_ms"], 3
            ),
            "redis_over_memory_cpu_per_frame": round(
                median["redis-1"]["worker_cpu_us_per_frame"]
                / median["memory-1"]["worker_cpu_us_per_frame"],
                3,
            ),
            "two_over_one_worker_cpu_per_frame": round(
                median["redis-2"]["worker_cpu_us_per_frame"]
                / median["redis-1"]["worker_cpu_us_per_frame"],
                3,
            ),
        },
    )


if __name__ == "__main__":
    main()
