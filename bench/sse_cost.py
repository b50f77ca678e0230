"""SSE cost per token: GET /api/chat/stream against a bare Starlette StreamingResponse.

Usage: python -m bench.sse_cost [--tokens 20000] [--rounds 3]

The server runs in its own process on 127.0.0.1 (pinned to one CPU when there are two);
this process reads the streams with httpx. StudyRAG's side is the production path end to
end — the real route, GenerationHub (owned task, buffer, broker publish) and sse-starlette
— fed by a synthetic engine that yields one token per event-loop turn, like a fast model
stream. The bare side streams the same bytes from a StreamingResponse fed by a queue.
Two modes: `live` (tokens produced while streaming) and `replay` (a finished answer read
back whole, as after a reconnect). Figures: server CPU µs per token and tokens/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import httpx

from bench.common import wait_for_port, write_result
from bench.ws_fanout import cpu_seconds, free_port, pin

SEP = "\r\n"  # sse-starlette's default line separator, used by the bare side too


def sse_bytes(event_id: int, event: str, data: dict[str, Any]) -> bytes:
    """One SSE event as sse-starlette writes it."""
    body = json.dumps(data, ensure_ascii=False)
    return f"id: {event_id}{SEP}event: {event}{SEP}data: {body}{SEP}{SEP}".encode()


def serve(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from starlette.responses import StreamingResponse

    from studyrag.api.generations import GenerationHub
    from studyrag.api.routes import sse
    from studyrag.api.runtime import ChatRuntime
    from studyrag.auth.quotas import Limits
    from studyrag.backends.broker.memory import MemoryBroker
    from studyrag.chat.engine import DoneEvent, SourcesEvent, StartEvent, TokenEvent
    from studyrag.config import LLMSettings, Settings

    # The per-request max_tokens is capped by the server's; the synthetic engine uses it as n.
    settings = Settings(data_dir="/tmp/studyrag-bench-unused", llm=LLMSettings(max_tokens=10**7))

    class Conversations:
        async def get(self, conversation_id: str, **_: Any) -> Any:
            """Every conversation exists: the bench measures transport only."""
            return SimpleNamespace(metadata={})

    class SyntheticEngine:
        """Yields start, sources, `max_tokens` tokens (one per loop turn) and done."""

        async def stream_message(
            self, message: str, *, conversation_id: str, max_tokens: int, **_: Any
        ) -> AsyncIterator[Any]:
            conversation = {"id": conversation_id}
            yield StartEvent(conversation, {"id": "u"}, f"m-{conversation_id}")
            yield SourcesEvent([])
            for seq in range(1, max_tokens + 1):
                await asyncio.sleep(0)
                yield TokenEvent(seq, " token")
            yield DoneEvent({"id": f"m-{conversation_id}"}, conversation, {})

        async def drain(self) -> None:
            """Nothing is written."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        broker = MemoryBroker()
        hub = GenerationHub(chat=SyntheticEngine(), conversations=Conversations(), broker=broker)  # type: ignore[arg-type]
        await hub.start()
        settings.api.rate_limit_per_minute = 0  # fan-out is measured, not the limiter
        app.state.services = SimpleNamespace(
            conversations=Conversations(),
            settings=settings,
            limits=Limits.open(settings, usage=None, multi_user=False),
        )
        app.state.chat_runtime = ChatRuntime(broker=broker, hub=hub, ws=None)  # type: ignore[arg-type]
        yield
        await hub.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(sse.router)

    @app.get("/bare/live")
    async def bare_live(n: int) -> StreamingResponse:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def produce() -> None:
            queue.put_nowait(sse_bytes(1, "start", {"message_id": "m"}))
            queue.put_nowait(sse_bytes(2, "sources", {"sources": []}))
            for seq in range(1, n + 1):
                await asyncio.sleep(0)
                queue.put_nowait(sse_bytes(seq + 2, "token", {"seq": seq, "delta": " token"}))
            queue.put_nowait(sse_bytes(n + 3, "done", {"message": {"id": "m"}}))
            queue.put_nowait(None)

        async def body() -> AsyncIterator[bytes]:
            producer = asyncio.create_task(produce())
            try:
                while (item := await queue.get()) is not None:
                    yield item
            finally:
                producer.cancel()

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/bare/replay")
    async def bare_replay(n: int) -> StreamingResponse:
        events = [sse_bytes(1, "start", {"message_id": "m"}), sse_bytes(2, "sources", {})]
        events += [
            sse_bytes(seq + 2, "token", {"seq": seq, "delta": " token"}) for seq in range(1, n + 1)
        ]
        events.append(sse_bytes(n + 3, "done", {"message": {"id": "m"}}))

        async def body() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        return StreamingResponse(body(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def read(
    http: httpx.AsyncClient, url: str, pid: int, body: dict[str, Any] | None = None
) -> dict[str, float]:
    """Stream `url` to the end (POSTing `body` if given); count tokens; CPU and wall time."""
    tokens = 0
    tail = b""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    async with http.stream("POST" if body else "GET", url, json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_bytes():
            joined = tail + chunk
            tokens += joined.count(b"event: token")
            tail = joined[-16:]
            tokens -= tail.count(b"event: token")
    tokens += tail.count(b"event: token")
    cpu1, t1 = cpu_seconds(pid), time.perf_counter()
    return {"tokens": tokens, "cpu_s": cpu1 - cpu0, "wall_s": t1 - t0}


async def run(port: int, pid: int, n: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
        for r in range(rounds):
            cid = f"bench{r}"
            urls = {
                # Asking is a POST (its body below); attaching a GET.
                "studyrag_live": f"/api/chat/stream/{cid}",
                # Attaching without a message replays the finished answer.
                "studyrag_replay": f"/api/chat/stream/{cid}",
                "bare_live": f"/bare/live?n={n}",
                "bare_replay": f"/bare/replay?n={n}",
            }
            order = list(urls) if r % 2 == 0 else ["bare_live", "bare_replay", *list(urls)[:2]]
            for name in order:
                ask = {"message": "go", "max_tokens": n} if name == "studyrag_live" else None
                result = await read(http, urls[name], pid, ask)
                if result["tokens"] != n:
                    raise RuntimeError(f"{name}: {result['tokens']} of {n} tokens arrived")
                runs.setdefault(name, []).append(result)
                print(f"{name:16s} {result}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.serve:
        serve(args.port)
        return
    port = free_port()
    cmd = [sys.executable, "-m", "bench.sse_cost", "--serve", "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.dirname(__file__)))
    pin(server.pid, client=False)
    pin(os.getpid(), client=True)
    try:
        wait_for_port(port, server, "the bench server")
        runs = asyncio.run(run(port, server.pid, args.tokens, args.rounds))
    finally:
        server.terminate()
        server.wait(timeout=30)

    summary: dict[str, dict[str, float]] = {}
    for name, results in runs.items():
        cpu = statistics.median(r["cpu_s"] for r in results)
        wall = statistics.median(r["wall_s"] for r in results)
        summary[name] = {
            "server_cpu_us_per_token": round(cpu / args.tokens * 1e6, 2),
            "tokens_per_second": round(args.tokens / wall),
        }
    ratios = {
        mode: round(
            summary[f"studyrag_{mode}"]["server_cpu_us_per_token"]
            / summary[f"bare_{mode}"]["server_cpu_us_per_token"],
            2,
        )
        for mode in ("live", "replay")
    }
    write_result(
        "sse_cost",
        {"tokens_per_stream": args.tokens, "runs": runs, "median": summary, "cpu_ratio": ratios},
    )
    for name, figures in summary.items():
        print(f"{name:16s} {figures}")
    print(f"CPU per token, StudyRAG ÷ bare: {ratios}")


if __name__ == "__main__":
    main()
