"""Two real `studyrag serve` workers sharing Redis, PostgreSQL and a Chroma server.

The topology of deploy/ without Docker: every answer is visible from both workers, a stop
sent to either halts it where it runs, an SSE client moves between workers without loss or
duplicate, and a worker killed mid-answer leaves the partial answer stored (incomplete) while
the other keeps serving. Real models (MiniLM, SmolLM2 through llama.cpp) throughout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets

from tests.api.conftest import NOTES, SSEEvent, WSClient, chunks, sse_events
from tests.conftest import free_port
from tests.contracts.test_sql_store import PG_ADMIN, _pg_available
from tests.contracts.test_vector_store import running_chroma
from tests.e2e.test_durable_jobs import EXE

pytestmark = pytest.mark.slow

REDIS_URL = "redis://127.0.0.1:6379/0"
LONG_QUESTION = "Explain in detail how photosynthesis works and what chlorophyll absorbs."
QUESTION = "Why do leaves look green? What does chlorophyll absorb?"


def _redis_reachable() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except (redis.exceptions.RedisError, OSError):
        return False


@contextmanager
def _pg_database() -> Iterator[str]:
    import asyncpg

    if not asyncio.run(_pg_available()):
        pytest.fail("PostgreSQL is not reachable at 127.0.0.1:5432: start it (database `test`)")
    name = f"studyrag_workers_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Worker:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, conversation_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat/{conversation_id}"


def _start(name: str, data_dir: Path, env: dict[str, str], log: Path) -> Worker:
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [EXE, "serve", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Worker(name, port, proc, log)


def _wait_healthy(worker: Worker) -> None:
    deadline = time.monotonic() + 240
    while True:
        assert worker.proc.poll() is None, worker.log.read_text()[-3000:]
        try:
            if httpx.get(f"{worker.base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"worker {worker.name} did not start"
        time.sleep(0.2)


def _stop(worker: Worker) -> None:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, Worker]]:
    if not _redis_reachable():
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start redis-server")
    root = tmp_path_factory.mktemp("workers")
    with _pg_database() as pg_url, running_chroma(root / "chroma") as (chroma_url, _):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYRAG_")}
        env |= {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False",
            "STUDYRAG_DATABASE__URL": pg_url,
            "STUDYRAG_VECTORS__URL": chroma_url,
            "STUDYRAG_BROKER__URL": REDIS_URL,
            # This run's keys and channels only: other runs share the same Redis.
            "STUDYRAG_BROKER__NAMESPACE": f"test-{uuid.uuid4().hex[:10]}",
            "STUDYRAG_LLM__PROVIDER": "llamacpp",
            "STUDYRAG_LLM__MAX_TOKENS": "160",
            "STUDYRAG_LLM__N_THREADS": "1",
            "STUDYRAG_CHAT__REWRITE_FOLLOWUPS": "false",
            "STUDYRAG_API__RATE_LIMIT_PER_MINUTE": "0",
        }
        # Both load their models at once; one migrates the shared database first.
        a = _start("A", root / "a", env, root / "a.log")
        _wait_healthy(a)
        b = _start("B", root / "b", env, root / "b.log")
        try:
            _wait_healthy(b)
            with httpx.Client(base_url=a.base, timeout=120) as http:
                done = http.post(
                    "/api/documents", files={"file": ("plants.md", NOTES.encode(), "text/markdown")}
                )
                assert done.status_code == 201 and done.json()["status"] == "completed", done.text
            yield a, b
        finally:
            _stop(b)
            _stop(a)


@asynccontextmanager
async def _ws(worker: Worker, conversation_id: str) -> AsyncIterator[WSClient]:
    async with websockets.connect(worker.ws_url(conversation_id)) as connection:
        client = WSClient(connection)
        hello = await client.recv()
        assert hello["type"] == "connected", hello
        client.client_id = hello["client_id"]
        yield client


async def _conversation(http: httpx.AsyncClient) -> str:
    response = await http.post("/api/chat/conversations", json={})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _ids(events: list[SSEEvent]) -> list[int]:
    return [int((e.id or "x:0").split(":")[1]) for e in events]


async def test_clients_on_both_workers_get_the_whole_ordered_stream(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with httpx.AsyncClient(base_url=a.base, timeout=120) as http_a:
        cid = await _conversation(http_a)
        async with _ws(a, cid) as on_a, _ws(b, cid) as on_b:
            # Typing crosses workers too.
            await on_b.send({"type": "typing", "is_typing": True})
            typing = await on_a.until("typing", within=20)
            assert typing["client_id"] == on_b.client_id and typing["is_typing"] is True
            await on_a.send({"type": "message", "content": QUESTION, "max_tokens": 24})
            here, there = await on_a.stream(), await on_b.stream()
    assert here[-1]["type"] == there[-1]["type"] == "stream_end", (here[-1], there[-1])
    assert chunks(here) == chunks(there) and chunks(here)
    assert [seq for seq, _ in chunks(there)] == list(range(1, len(chunks(there)) + 1))
    assert [f["type"] for f in here] == [f["type"] for f in there]
    assert here[-1]["message"]["id"] == there[-1]["message"]["id"]
    assert here[-1]["message"]["status"] == "complete"


async def test_stop_sent_to_b_halts_the_answer_running_on_a(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with (
        httpx.AsyncClient(base_url=a.base, timeout=120) as http_a,
        httpx.AsyncClient(base_url=b.base, timeout=120) as http_b,
    ):
        cid = await _conversation(http_a)
        async with _ws(a, cid) as on_a:
            await on_a.send({"type": "message", "content": LONG_QUESTION, "max_tokens": 160})
            await on_a.until("stream_chunk")
            # B has no client of this conversation: it finds the answer through its lease.
            detail = (await http_b.get(f"/api/chat/conversations/{cid}")).json()
            assert detail["generation"]["state"] == "running"
            busy = await http_b.post(
                "/api/chat/message", json={"message": QUESTION, "conversation_id": cid}
            )
            assert busy.status_code == 409 and busy.json()["error_code"] == "CHAT_007"
            stopped = await http_b.post(f"/api/chat/conversations/{cid}/stop")
            assert stopped.status_code == 200 and stopped.json()["stopped"] is True
            frames = await on_a.stream()
        end = frames[-1]
    assert end["type"] == "stream_end" and end["metadata"]["stopped"] is True
    streamed = "".join(delta for _, delta in chunks(on_a.frames))
    assert stopped.json()["message"]["status"] == "incomplete"
    assert stopped.json()["message"]["content"] == end["message"]["content"]
    assert streamed.startswith(end["message"]["content"].strip()[:20])
    assert (chunks(on_a.frames)[-1][0]) < 160  # halted well before its token budget


async def test_sse_client_dropping_from_a_resumes_on_b_without_loss_or_duplicate(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with (
        httpx.AsyncClient(base_url=a.base, timeout=120) as http_a,
        httpx.AsyncClient(base_url=b.base, timeout=120) as http_b,
    ):
        cid = await _conversation(http_a)
        first: list[SSEEvent] = []
        body = {"message": LONG_QUESTION, "max_tokens": 60}
        async with http_a.stream("POST", f"/api/chat/stream/{cid}", json=body) as response:
            assert response.status_code == 200
            async for event in sse_events(response):
                first.append(event)
                if sum(e.event == "token" for e in first) >= 3:
                    break  # the client drops here
        last_id = first[-1].id
        assert last_id is not None
        # B never had a client of this answer: it replays from the answer's stream.
        rest: list[SSEEvent] = []
        async with http_b.stream(
            "GET", f"/api/chat/stream/{cid}", headers={"Last-Event-ID": last_id}
        ) as response:
            assert response.status_code == 200
            async for event in sse_events(response):
                rest.append(event)
        everything = first + rest
        assert _ids(everything) == list(range(1, len(everything) + 1))  # no gap, no repeat
        assert {e.id.split(":")[0] for e in everything if e.id} == {last_id.split(":")[0]}
        assert everything[0].event == "start" and everything[-1].event == "done"
        seqs = [e.data["seq"] for e in everything if e.event == "token"]
        assert seqs == list(range(1, len(seqs) + 1))
        # The same answer replayed whole from A equals the two halves joined.
        async with http_a.stream("GET", f"/api/chat/stream/{cid}") as response:
            whole = [e async for e in sse_events(response)]
        assert [(e.id, e.event) for e in whole] == [(e.id, e.event) for e in everything]
        stored = (await http_b.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
        assert stored[-1]["status"] == "complete"


async def test_worker_killed_mid_answer_leaves_it_stored_incomplete_and_b_serving(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with (
        httpx.AsyncClient(base_url=a.base, timeout=120) as http_a,
        httpx.AsyncClient(base_url=b.base, timeout=120) as http_b,
    ):
        cid = await _conversation(http_a)
        async with _ws(a, cid) as on_a, _ws(b, cid) as on_b:
            await on_a.send({"type": "message", "content": LONG_QUESTION, "max_tokens": 160})
            for _ in range(4):
                await on_b.until("stream_chunk")
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(timeout=30)
            # A's client loses its connection: an error, not a silent end.
            with pytest.raises(websockets.ConnectionClosedError):
                while True:
                    await on_a.recv(within=30)
            # B's client is told the answer is lost once A's lease lapses.
            error = await on_b.until("error", within=60)
        assert error["error_code"] == "CHAT_012", error
        seen = "".join(delta for _, delta in chunks(on_b.frames))
        assert seen
        stored = (await http_b.get(f"/api/chat/conversations/{cid}/messages")).json()["items"]
        answer = stored[-1]
        assert answer["role"] == "assistant" and answer["status"] == "incomplete"
        assert answer["metadata"]["lost"] is True
        # What was stored is what the stream held when A died: at least what B's client saw.
        assert answer["content"].startswith(seen) and answer["content"]
        # B keeps serving, in the same conversation (the dead worker's lease is gone).
        again = await http_b.post(
            "/api/chat/message", json={"message": QUESTION, "conversation_id": cid, "max_tokens": 8}
        )
        assert again.status_code == 200, again.text
        assert again.json()["message"]["status"] == "complete"
        health = (await http_b.get("/health")).json()
        assert health["status"] == "ok" and health["broker"]["status"] == "ok"
