"""Two real `studyrag serve` workers sharing Redis, PostgreSQL and a Chroma server.

The topology of deploy/ without Docker: every answer is visible from both workers, a stop
sent to either halts it where it runs, an SSE client moves between workers without loss or
duplicate, an upload to one is ingested by whichever worker takes its job (procrastinate on
PostgreSQL, originals in a shared directory) and shows on the other's notebook socket, a
worker killed mid-ingestion leaves its job to the other, and a worker killed mid-answer
leaves the partial answer stored (incomplete) while the other keeps serving. Real models
(MiniLM, SmolLM2 through llama.cpp) throughout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    data_dir: Path
    env: dict[str, str]

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
    return Worker(name, port, proc, log, data_dir, env)


def _restart(worker: Worker) -> None:
    """Start a stopped (killed) worker again on its data dir, in place."""
    fresh = _start(worker.name, worker.data_dir, worker.env, worker.log)
    worker.port, worker.proc = fresh.port, fresh.proc
    _wait_healthy(worker)


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
            # Any worker ingests any upload: one originals directory for both.
            "STUDYRAG_INGEST__FILES_DIR": str(root / "shared-files"),
            "STUDYRAG_JOBS__RUNNER": "procrastinate",
            # A killed worker's job goes to the other within seconds, not the default 30 s.
            "STUDYRAG_JOBS__HEARTBEAT_SECONDS": "1",
            "STUDYRAG_JOBS__STALLED_AFTER_SECONDS": "4",
            "STUDYRAG_JOBS__RETRY_WAIT_SECONDS": "1",
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
        # SmolLM2 may end an answer on its own (end of text, a loop cut short) before B's
        # requests arrive on a loaded machine; such an answer tests nothing: ask again.
        for _attempt in range(3):
            cid = await _conversation(http_a)
            async with _ws(a, cid) as on_a:
                await on_a.send({"type": "message", "content": LONG_QUESTION, "max_tokens": 160})
                await on_a.until("stream_chunk")
                # B has no client of this conversation: it finds the answer through its lease.
                busy, detail = await asyncio.gather(
                    http_b.post(
                        "/api/chat/message", json={"message": QUESTION, "conversation_id": cid}
                    ),
                    http_b.get(f"/api/chat/conversations/{cid}"),
                )
                stopped = await http_b.post(f"/api/chat/conversations/{cid}/stop")
                frames = await on_a.stream()
            end = frames[-1]
            assert stopped.status_code == 200, stopped.text
            if stopped.json()["stopped"] or end["metadata"].get("stopped"):
                break
            assert busy.status_code in (200, 409), busy.text  # ended before B's requests
        else:
            raise AssertionError("three answers ended on their own before a stop reached them")
    assert busy.status_code == 409 and busy.json()["error_code"] == "CHAT_007", busy.text
    assert detail.json()["generation"]["state"] == "running"
    assert stopped.json()["stopped"] is True
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


class NotebookSocket:
    """A real client of /ws/notebooks/{id} that keeps every event."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection
        self.events: list[dict[str, Any]] = []

    async def until(self, test: Any, within: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            raw = await asyncio.wait_for(self.connection.recv(), deadline - time.monotonic())
            event = json.loads(raw)
            self.events.append(event)
            if test(event):
                return dict(event)


@asynccontextmanager
async def _notebook_ws(worker: Worker, notebook_id: str) -> AsyncIterator[NotebookSocket]:
    url = f"ws://127.0.0.1:{worker.port}/ws/notebooks/{notebook_id}"
    async with websockets.connect(url) as connection:
        sock = NotebookSocket(connection)
        ready = await sock.until(lambda e: True, within=30)
        assert ready["type"] == "ready", ready
        yield sock


def _completed(document_id: str) -> Any:
    return lambda e: (
        e.get("type") == "document_updated"
        and e.get("document_id") == document_id
        and e.get("status") in ("completed", "failed", "cancelled")
    )


async def _notebook(http: httpx.AsyncClient, name: str) -> str:
    response = await http.post("/api/notebooks", json={"name": name})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _upload(http: httpx.AsyncClient, notebook_id: str, name: str, text: str) -> Any:
    response = await http.post(
        f"/api/notebooks/{notebook_id}/documents", files=[("files", (name, text.encode()))]
    )
    assert response.status_code == 202, response.text
    return response.json()


TOPICS = {
    "glaciers.md": "# Glaciers\nA cirque glacier carves a bowl-shaped hollow called a corrie.",
    "volcanoes.md": "# Volcanoes\nA caldera forms when a magma chamber empties and collapses.",
    "rivers.md": "# Rivers\nAn oxbow lake forms when a meander of a river is cut off.",
    "deserts.md": "# Deserts\nA yardang is a ridge that wind erosion sculpts from bedrock.",
}


async def test_uploads_to_a_are_ingested_by_either_worker_and_shown_on_b(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with (
        httpx.AsyncClient(base_url=a.base, timeout=120) as http_a,
        httpx.AsyncClient(base_url=b.base, timeout=120) as http_b,
    ):
        for http in (http_a, http_b):
            health = (await http.get("/health")).json()
            assert health["jobs"]["runner"] == "procrastinate", health
        notebook_id = await _notebook(http_a, f"Geography {uuid.uuid4().hex[:6]}")
        async with _notebook_ws(b, notebook_id) as on_b:
            # One job per upload: the queue hands each to whichever worker is free.
            accepted = [
                await _upload(http_a, notebook_id, name, text) for name, text in TOPICS.items()
            ]
            ids = {a["documents"][0]["document_id"] for a in accepted}
            finals: dict[str, dict[str, Any]] = {}

            def all_final(event: dict[str, Any]) -> bool:
                for document_id in ids:
                    if _completed(document_id)(event):
                        finals[document_id] = event
                return set(finals) == ids

            await on_b.until(all_final, within=180)
        added = {e["document"]["id"] for e in on_b.events if e.get("type") == "document_added"}
        assert added == ids  # B's socket saw each upload to A arrive
        assert {e["status"] for e in finals.values()} == {"completed"}, finals
        for job in accepted:
            state = (await http_b.get(f"/api/jobs/{job['job_id']}")).json()
            assert state["status"] == "completed", state
        found = await http_b.post(
            "/api/search",
            json={"query": "oxbow lake meander", "notebook_id": notebook_id, "mode": "lexical"},
        )
        assert found.status_code == 200, found.text
        assert found.json()["results"][0]["filename"] == "rivers.md"


def _long_notes(paragraphs: int) -> str:
    """A document whose ingestion takes seconds here (about 100 chunks for 800 paragraphs)."""
    words = (
        "sediment basin delta erosion terrace alluvial gravel moraine quartz river valley "
        "slope cliff glacier dune"
    ).split()
    lines = ["# Field notes"]
    for i in range(paragraphs):
        body = " ".join(words[(i * 7 + j) % len(words)] for j in range(40))
        lines.append(f"## Site {i}\nObservation {i} of the survey: {body}.")
    return "\n\n".join(lines)


async def _worker_running_a_job(workers: tuple[Worker, Worker], document_id: str) -> Worker:
    """The worker whose job is processing `document_id` (asserted not finished yet)."""
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(timeout=10) as probe:
        while True:
            assert time.monotonic() < deadline, "no worker started the job"
            for worker in workers:
                health = (await probe.get(f"{worker.base}/health")).json()
                if health["jobs"]["running"]:
                    doc = (await probe.get(f"{worker.base}/api/documents/{document_id}")).json()
                    assert doc["status"] in ("queued", "processing"), doc
                    if doc["status"] == "processing":
                        return worker
            await asyncio.sleep(0.05)


async def test_a_cancel_sent_to_one_worker_stops_the_document_the_other_is_ingesting(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with httpx.AsyncClient(base_url=a.base, timeout=120) as http_a:
        notebook_id = await _notebook(http_a, f"Cancel {uuid.uuid4().hex[:6]}")
        accepted = await _upload(http_a, notebook_id, "long-survey.md", _long_notes(800))
    document_id = accepted["documents"][0]["document_id"]
    running = await _worker_running_a_job(workers, document_id)
    other = b if running is a else a
    async with (
        httpx.AsyncClient(base_url=other.base, timeout=120) as http,
        _notebook_ws(other, notebook_id) as sock,
    ):
        cancelled = await http.post(f"/api/documents/{document_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        # The worker that runs it stops at its next step boundary and rolls it back.
        final = await sock.until(_completed(document_id), within=120)
        assert final["status"] == "cancelled", final
        detail = (await http.get(f"/api/documents/{document_id}")).json()
        assert detail["status"] == "cancelled" and detail["chunk_count"] == 0, detail
        found = await http.post(
            "/api/search",
            json={"query": "survey observation of the site", "notebook_id": notebook_id},
        )
        assert found.status_code in (200, 422), found.text
        assert not [r for r in found.json().get("results", []) if r["document_id"] == document_id]


async def test_a_worker_killed_mid_ingestion_leaves_the_job_to_the_other(
    workers: tuple[Worker, Worker],
) -> None:
    a, b = workers
    async with httpx.AsyncClient(base_url=a.base, timeout=120) as http_a:
        notebook_id = await _notebook(http_a, f"Survey {uuid.uuid4().hex[:6]}")
        accepted = await _upload(http_a, notebook_id, "survey.md", _long_notes(800))
    document_id = accepted["documents"][0]["document_id"]
    job_id = accepted["job_id"]
    # Whichever worker took the job is killed while the document is being processed.
    running = await _worker_running_a_job(workers, document_id)
    other = b if running is a else a
    running.proc.send_signal(signal.SIGKILL)
    running.proc.wait(timeout=30)
    try:
        async with httpx.AsyncClient(base_url=other.base, timeout=120) as http:
            async with _notebook_ws(other, notebook_id) as sock:
                # The survivor finds the silent worker's job within the stall window, takes
                # back the half-done document and ingests it.
                final = await sock.until(_completed(document_id), within=240)
            assert final["status"] == "completed", final
            detail = (await http.get(f"/api/documents/{document_id}")).json()
            assert detail["status"] == "completed" and detail["chunk_count"] > 0
            indexes = [c["index"] for c in detail["chunks"]]
            # Nothing the dead worker stored is left twice.
            assert indexes == list(range(detail["chunk_count"])), indexes[:20]
            job = (await http.get(f"/api/jobs/{job_id}")).json()
            assert job["status"] == "completed", job
            found = await http.post(
                "/api/search",
                json={"query": "survey observation of the site", "notebook_id": notebook_id},
            )
            hits = {r["document_id"] for r in found.json()["results"]}
            assert hits == {document_id}, found.text
        log = running.log.read_text() + other.log.read_text()
        assert "stalled on a silent worker; queued again" in log
    finally:
        # The tests after this one run on two workers again.
        await asyncio.to_thread(_restart, running)


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
