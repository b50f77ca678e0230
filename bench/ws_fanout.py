"""WebSocket fan-out: 1,000 clients over 100 conversations, StudyRAG against bare `websockets`.

Usage: python -m bench.ws_fanout [--clients 1000] [--conversations 100] [--tokens 100]
                                 [--rate 10] [--rounds 2]

Each server runs in its own process on 127.0.0.1; this process runs every client. Once all
clients are connected, the server publishes `--tokens` synthetic stream_chunk frames per
conversation at `--rate` per second, each round stamped with the wall clock when it starts, and
the clients record delivery latency. StudyRAG's frames take the production path: the hub's
buffer and broker stream (in-process) → the answer's watch → per-client bounded queue and
writer → uvicorn. The reference is the minimal broadcast server of the `websockets` docs
(`broadcast()` straight to the transports). Server CPU is read from /proc over the streaming phase.
Target: StudyRAG p99 ≤ 1.5 × the bare server's p99. Rounds alternate the order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import websockets

from bench.common import percentile, wait_for_port, write_result

TICK = os.sysconf("SC_CLK_TCK")
CONNECT_CONCURRENCY = 50
DELTA = '"delta":"'


def raise_fd_limit(need: int) -> None:
    """1,000 sockets on each side need more descriptors than some shells allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def pin(pid: int, *, client: bool) -> None:
    """Server on the first CPU, clients on the others, the same for both servers."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(pid, set(cpus[1:]) if client else {cpus[0]})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def chunk(cid: str, seq: int, stamp: int) -> dict[str, Any]:
    return {"seq": seq, "delta": str(stamp), "message_id": f"m-{cid}"}


async def publish_when_ready(
    connected: Any, expected: int, tokens: int, rate: float, send: Any, cids: list[str]
) -> None:
    """Wait for every client, then `tokens` rounds of one frame per conversation, then an end."""
    for _ in range(12_000):  # polled: neither server has a hook for "all clients are in"
        if connected() >= expected:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # let the last handshakes settle before timing starts
    period = 1.0 / rate
    start = time.perf_counter()
    for seq in range(1, tokens + 1):
        # One stamp per round: every conversation's token exists from this moment, so each
        # server's latency includes all the work of sending the round, whatever its order.
        stamp = time.time_ns()
        for cid in cids:
            await send(cid, seq, stamp)
        await asyncio.sleep(max(0.0, start + seq * period - time.perf_counter()))
    for cid in cids:
        await send(cid, tokens + 1, None)


# --- the StudyRAG server -----------------------------------------------------------------
def serve_studyrag(port: int, clients: int, cids: list[str], tokens: int, rate: float) -> None:
    import uvicorn
    from fastapi import FastAPI

    from studyrag.api.generations import Generation, GenerationHub
    from studyrag.api.routes import ws
    from studyrag.api.runtime import ChatRuntime
    from studyrag.api.ws.manager import WebSocketManager
    from studyrag.auth.quotas import Limits
    from studyrag.backends.broker.memory import MemoryBroker
    from studyrag.config import APISettings, Settings

    settings = Settings(
        data_dir="/tmp/studyrag-bench-unused",
        api=APISettings(
            ws_max_clients_per_address=clients * 2, ws_max_clients_per_conversation=clients
        ),
    )

    class Conversations:
        async def get(self, conversation_id: str, **_: Any) -> None:
            """Every conversation exists: the bench measures transport only."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = MemoryBroker()
        hub = GenerationHub(chat=None, conversations=Conversations(), broker=broker)  # type: ignore[arg-type]
        manager = WebSocketManager(broker=broker, hub=hub, settings=settings)
        await manager.start()
        settings.api.rate_limit_per_minute = 0  # fan-out is measured, not the limiter
        app.state.services = SimpleNamespace(
            conversations=Conversations(),
            settings=settings,
            limits=Limits.open(settings, usage=None, multi_user=False),
        )
        app.state.chat_runtime = ChatRuntime(broker=broker, hub=hub, ws=manager)

        gens: dict[str, Generation] = {}

        async def send(cid: str, seq: int, stamp: int | None) -> None:
            # The hub's own path for an answer's events (what start_answer and its task do),
            # without an engine: reserve and announce the answer, then append its events.
            gen = gens.get(cid)
            if gen is None:
                gen = gens[cid] = Generation(gen_id=f"g-{cid}", conversation_id=cid, local=True)
                gen.message_id = f"m-{cid}"
                hub._running[cid] = gen
                hub._gens[gen.id] = gen
                hub._announce(gen)
            if stamp is None:
                data = {"message": {"id": f"m-{cid}"}, "conversation": {"id": cid}, "metadata": {}}
                await hub._append(gen, "done", data)
                hub._finish(gen, "complete")
            else:
                await hub._append(gen, "token", chunk(cid, seq, stamp))

        count = lambda: manager.stats()["connections"]  # noqa: E731
        publisher = asyncio.create_task(
            publish_when_ready(count, clients, tokens, rate, send, cids)
        )
        yield
        publisher.cancel()
        await manager.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(ws.router)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        backlog=4096,
    )
    uvicorn.Server(config).run()


# --- the bare `websockets` server --------------------------------------------------------
def serve_bare(port: int, clients: int, cids: list[str], tokens: int, rate: float) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    rooms: dict[str, set[ServerConnection]] = defaultdict(set)

    async def handler(connection: ServerConnection) -> None:
        assert connection.request is not None
        cid = connection.request.path.rsplit("/", 1)[-1]
        rooms[cid].add(connection)
        await connection.send(json.dumps({"type": "connected"}))
        try:
            await connection.wait_closed()
        finally:
            rooms[cid].discard(connection)

    async def send(cid: str, seq: int, stamp: int | None) -> None:
        if stamp is None:
            frame = {"type": "stream_end", "message_id": f"m-{cid}", "message": {}, "metadata": {}}
        else:
            frame = {"type": "stream_chunk", **chunk(cid, seq, stamp)}
        broadcast(rooms[cid], json.dumps(frame, separators=(",", ":")))

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, backlog=4096):
            count = lambda: sum(len(r) for r in rooms.values())  # noqa: E731
            await publish_when_ready(count, clients, tokens, rate, send, cids)
            await asyncio.Future()

    asyncio.run(main())


# --- the clients -------------------------------------------------------------------------
async def run_clients(port: int, pid: int, cids: list[str], per: int) -> dict[str, Any]:
    latencies: list[float] = []
    received = 0
    ready = 0
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    all_ready = asyncio.Event()
    total = len(cids) * per

    async def one(cid: str) -> None:
        nonlocal received, ready
        async with limit:
            connection = await websockets.connect(
                f"ws://127.0.0.1:{port}/ws/chat/{cid}", open_timeout=60, max_size=None
            )
            json.loads(await connection.recv())  # connected
        ready += 1
        if ready == total:
            all_ready.set()
        try:
            async for raw in connection:
                # No JSON parsing: the client's own CPU would blur the servers' latency.
                text = str(raw)
                at = text.find(DELTA)
                if at >= 0:
                    sent = int(text[at + len(DELTA) : text.index('"', at + len(DELTA))])
                    latencies.append((time.time_ns() - sent) / 1e9)
                    received += 1
                elif '"stream_end"' in text:
                    return
        finally:
            await connection.close()

    tasks = [asyncio.create_task(one(cid)) for cid in cids for _ in range(per)]
    await asyncio.wait_for(all_ready.wait(), timeout=300)
    cpu0, t0, mine0 = cpu_seconds(pid), time.perf_counter(), cpu_seconds(os.getpid())
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=600)
    cpu1, t1, mine1 = cpu_seconds(pid), time.perf_counter(), cpu_seconds(os.getpid())
    return {
        "frames_received": received,
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3) if latencies else None,
        "server_cpu_seconds": round(cpu1 - cpu0, 3),
        "server_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "client_cpu_seconds": round(mine1 - mine0, 3),
        "wall_seconds": round(t1 - t0, 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(kind: str, args: argparse.Namespace, cids: list[str]) -> dict[str, Any]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "bench.ws_fanout", "--serve", kind, "--port", str(port),
        "--clients", str(args.clients), "--conversations", str(args.conversations),
        "--tokens", str(args.tokens), "--rate", str(args.rate),
    ]  # fmt: skip
    server = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.dirname(__file__)))
    pin(server.pid, client=False)
    try:
        wait_for_port(port, server, f"the {kind} server")
        per = args.clients // args.conversations
        result = asyncio.run(run_clients(port, server.pid, cids, per))
    finally:
        server.terminate()
        server.wait(timeout=30)
    expected = args.clients * args.tokens
    result["frames_expected"] = expected
    print(f"{kind:9s} {result}")
    if result["frames_received"] != expected:
        raise RuntimeError(f"{kind}: {result['frames_received']} of {expected} frames arrived")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="tokens/s per conversation")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=["studyrag", "bare"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    raise_fd_limit(args.clients * 2 + 256)
    cids = [f"c{i:04d}" for i in range(args.conversations)]
    if args.serve == "studyrag":
        serve_studyrag(args.port, args.clients, cids, args.tokens, args.rate)
        return
    if args.serve == "bare":
        serve_bare(args.port, args.clients, cids, args.tokens, args.rate)
        return

    pin(os.getpid(), client=True)
    runs: dict[str, list[dict[str, Any]]] = {"studyrag": [], "bare": []}
    for r in range(args.rounds):
        order = ["bare", "studyrag"] if r % 2 == 0 else ["studyrag", "bare"]
        for kind in order:
            runs[kind].append(measure(kind, args, cids))

    def med(kind: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[kind]))

    ratio = med("studyrag", "p99_ms") / med("bare", "p99_ms")
    write_result(
        "ws_fanout",
        {
            "clients": args.clients,
            "conversations": args.conversations,
            "tokens_per_conversation": args.tokens,
            "rate_per_conversation": args.rate,
            "frames_per_second": args.rate * args.clients,
            "runs": runs,
            "median": {
                kind: {k: med(kind, k) for k in ("p50_ms", "p99_ms", "server_cpu_percent")}
                for kind in runs
            },
            "p99_ratio": round(ratio, 3),
            "target_p99_ratio": 1.5,
            "meets_target": ratio <= 1.5,
        },
    )
    print(f"p99 ratio studyrag/bare = {ratio:.2f} (target ≤ 1.5)")


if __name__ == "__main__":
    main()
